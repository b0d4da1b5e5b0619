//! The HQ dashboard at `/`: one HTML page, a stylesheet and a script, compiled into the binary
//! (no CDN, no build step). The page calls the reporting API with the token the user gives it.
//!
//! The page keeps an API token in the browser, so it allows nothing but its own origin: no
//! inline script, no foreign source, no framing (`service_kit::static_page::CSP`).

use axum::Router;
use service_kit::static_page::{self, Page};

const PAGE: Page = Page {
    index: include_str!("../assets/dashboard/index.html"),
    script: include_str!("../assets/dashboard/app.js"),
    style: include_str!("../assets/dashboard/app.css"),
};

/// `GET /`, `/assets/app.js`, `/assets/app.css`.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    static_page::router(PAGE)
}
