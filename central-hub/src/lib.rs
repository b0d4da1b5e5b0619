//! The central hub: stateless instances in front of partitioned PostgreSQL.
//!
//! * [`db`]: the schema and migrations ([`db::schema`]), transactions, site admin and the
//!   helpers every statement goes through; [`ingest`]: the `sync_protocol::store::HubStore`
//!   implementation on PostgreSQL with row-level security; [`rollup`]: the reporting rollups,
//!   their decisions pure.
//!
//! * [`sync`]: the QUIC sync server; [`api`]: the HQ API and [`auth`] its bearer tokens;
//!   [`reports`]: the reporting API with
//!   its cache and rate limits; [`serve`]: one hub instance; [`pki`]: the CA and certificates.

pub mod api;
pub mod auth;
pub mod certs;
pub mod dashboard;
pub mod db;
pub mod enroll;
pub mod ingest;
pub mod memo;
pub mod metrics;
pub mod pki;
pub mod reports;
pub mod rollup;
pub mod serve;
pub mod sync;
pub mod telemetry;
