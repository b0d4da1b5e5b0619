//! The hub at its own boundary: its PostgreSQL store, the HQ API with its credentials and
//! limits, the reports against their oracle, and the dashboard in a browser. One test binary
//! (one link of hub and edge) with a module per former test file; run one with
//! `cargo test -p system-tests --test hub <module>::`.

mod credentials;
mod dashboard;
mod gap;
mod generation;
mod hub_store;
mod report_limits;
mod reports_api;
mod reports_oracle;
