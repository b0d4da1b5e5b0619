//! Support code for the workspace's system tests: the layering rules read from
//! `cargo metadata`, the PostgreSQL harness ([`pg`]) and the HQ fixture ([`hq`]). Later: the simulator and the
//! chaos harness.

pub mod hq;
pub mod layering;
pub mod pg;
