//! A single-page UI compiled into the binary (no CDN, no build step): the page at `/`, its
//! script and stylesheet under `/assets/`, each answered with the same strict headers.
//!
//! The pages allow nothing but their own origin: no inline script, no foreign source, no
//! framing ([`CSP`]). A page that keeps a credential in the browser relies on that.

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// The Content-Security-Policy of every asset.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                       img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// One compiled-in asset with its content type and the page's headers.
pub fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The assets change with the binary only; a short cache keeps upgrades visible.
            (header::CACHE_CONTROL, "public, max-age=300"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// The page's text: HTML, script and stylesheet.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub index: &'static str,
    pub script: &'static str,
    pub style: &'static str,
}

/// `GET /`, `/assets/app.js`, `/assets/app.css`; a caller adds its own further routes.
pub fn router<S: Clone + Send + Sync + 'static>(page: Page) -> Router<S> {
    Router::new()
        .route(
            "/",
            get(move || async move { asset("text/html; charset=utf-8", page.index) }),
        )
        .route(
            "/assets/app.js",
            get(move || async move { asset("text/javascript; charset=utf-8", page.script) }),
        )
        .route(
            "/assets/app.css",
            get(move || async move { asset("text/css; charset=utf-8", page.style) }),
        )
}
