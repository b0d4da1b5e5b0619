//! The edge agent: an offline-first SQLite store behind a local JSON API, syncing to the hub.
//!
//! * [`store`]: the SQLite file, its schema migrations, the single writer thread with group
//!   commit and the read-only connections.
//! * [`records`]: work orders as Automerge documents, one per order.
//! * [`api`]: the local HTTP API (axum): where every request lands.
//! * [`master`]: master data import.
//! * [`metrics`]: Prometheus counters and histograms.
//! * [`config`]: flags, environment and TOML configuration of `edge-agent run`.
//! * [`server`]: wiring for `run`: store, API, retention, sync, graceful shutdown.
//! * [`sync_store`]: the sync session's edge store trait on [`store::Store`], above the
//!   outbox, records and master data it combines.
//! * [`sync`]: the QUIC sync client; [`identity`]: its certificate and key, renewed in place.
//! * [`connectors`]: machine data from OPC UA, MQTT / Sparkplug B and Modbus TCP, mapped
//!   to events; [`clock`]: where the agent gets the time.
//! * [`api::ui`]: the operator terminal's page and message catalogs, embedded.
//! * [`install`]: `edge-agent install` (enrollment, files, service); [`doctor`]: the health
//!   check; [`backup`]: online backup and restore.

pub mod api;
pub mod backup;
pub mod clock;
pub mod config;
pub mod connectors;
pub mod doctor;
pub mod identity;
pub mod install;
pub mod master;
pub mod metrics;
pub mod records;
pub mod server;
pub mod store;
pub mod sync;
pub mod sync_store;
