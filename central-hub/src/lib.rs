//! The central hub: stateless instances in front of partitioned PostgreSQL.
//!
//! * [`db`]: the schema and migrations ([`db::schema`]) and the `sync_protocol::store::HubStore`
//!   implementation on PostgreSQL with row-level security ([`db::store`]).
//!
//! The QUIC sync server, the HQ API and reporting, and enrollment arrive with their issues.

pub mod api;
pub mod db;
pub mod pki;
pub mod serve;
pub mod sync;
