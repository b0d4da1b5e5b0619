//! Support code for the workspace's system tests: the layering rules read from
//! `cargo metadata`, the PostgreSQL harness ([`pg`]), the HQ fixture ([`hq`]) and the
//! headless browser of the UI tests ([`browser`]). Later: the simulator and the chaos harness.

pub mod browser;
pub mod hq;
pub mod layering;
pub mod pg;
