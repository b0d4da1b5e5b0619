//! Support code for the workspace's system tests: the layering rules read from
//! `cargo metadata`, and the PostgreSQL harness ([`pg`]). Later: the simulator and the
//! chaos harness.

pub mod layering;
pub mod pg;
