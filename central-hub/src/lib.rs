//! The central hub: stateless instances in front of partitioned PostgreSQL.
//!
//! * [`db`]: the schema and migrations ([`db::schema`]), transactions, site admin and the
//!   helpers every statement goes through; [`ingest`]: the `sync_protocol::store::HubStore`
//!   implementation on PostgreSQL with row-level security; [`rollup`]: the reporting rollups,
//!   their decisions pure.
//!
//! * [`sync`]: the QUIC sync server; [`http`]: the HQ API's layer below the handlers (bearer
//!   tokens, state, error shape, the response cache and rate limits); [`api`]: the HQ API
//!   handlers; [`reports`]: the reporting API, one file per report; [`routes`]: the router and
//!   the OpenAPI document over both; [`serve`]: one hub instance; [`pki`]: the CA and
//!   certificates.

pub mod api;
pub mod certs;
pub mod dashboard;
pub mod db;
pub mod enroll;
pub mod http;
pub mod ingest;
pub mod memo;
pub mod metrics;
pub mod pki;
pub mod reports;
pub mod rollup;
pub mod routes;
pub mod serve;
pub mod sync;
pub mod telemetry;

/// The bearer tokens, at the path the CLI and `serve` have always used.
pub use http::auth;
