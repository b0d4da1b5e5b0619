//! Public-API tests of `sync-protocol`, in one binary to keep link time down.
//!
//! * `golden`: every v1 message against byte fixtures, so the wire format cannot drift.
//! * `props`: property tests: round trips, arbitrary bytes never panic the decoder or a
//!   session, and two sessions over a lossy-free but arbitrarily chunked pipe converge.
//! * `heal`: a hub that went back in time gets back what it lost from the edge.
//! * `sessions`: a data-driven table of peer misbehaviour and the error each one earns.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod golden;
mod harness;
mod heal;
mod props;
mod samples;
mod sessions;
