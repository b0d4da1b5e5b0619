//! Support code for the workspace's system tests: the layering rules read from
//! `cargo metadata`. Later: the Postgres harness, the simulator and the chaos harness.

pub mod layering;
