//! Support code for the workspace's system tests: the layering rules read from
//! `cargo metadata`, the PostgreSQL harness ([`pg`]) and pgBackRest over it ([`pgbackrest`]),
//! the HQ fixture ([`hq`]) and the headless browser of the UI tests ([`browser`]) and the
//! deterministic simulator ([`sim`]). Later: the chaos harness.

/// `Debug` for fixtures that hold handles (servers, clients, tasks) with nothing to show:
/// the type's name.
macro_rules! opaque_debug {
    ($($t:ty),+) => {$(
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t)).finish_non_exhaustive()
            }
        }
    )+};
}

pub mod benchout;
pub mod browser;
pub mod clock;
pub mod connectors;
pub mod demo;
pub mod edge;
pub mod hq;
pub mod layering;
pub mod line;
pub mod pg;
pub mod pgbackrest;
pub mod pgbouncer;
pub mod procs;
pub mod requests;
pub mod rng;
pub mod sim;
