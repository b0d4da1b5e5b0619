//! Edge ↔ hub over QUIC: sync end to end (and the hostile-edge suite), the hub's QUIC
//! admission under attack, real-process chaos, the deterministic simulator, and the site
//! certificates that admit an edge, and the failover drill (`heal`: a promoted lagging replica
//! healed by the edges). One test binary with a module per former test file; run
//! one with `cargo test -p system-tests --test sync <module>::`.

mod certs;
mod chaos;
mod heal;
mod quic_limits;
mod sim;
mod sync_e2e;
