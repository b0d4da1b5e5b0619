//! Operating the system: backups and point-in-time restore with pgBackRest, the hub behind
//! PgBouncer and a replica, partition retirement and the operational metrics, the deployment
//! material, the hub binary's logs and traces, the demo the README runs, and the benchmark
//! tools. One test binary with a module per former test file;
//! run one with `cargo test -p system-tests --test ops <module>::`.

mod backup;
mod bench_smoke;
mod demo;
mod deploy;
mod line;
mod ops;
mod telemetry;
