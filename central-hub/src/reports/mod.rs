//! The reporting API (`docs/reports.md`): cross-site KPIs from rollups, as JSON or CSV, cached
//! per data version and rate limited per token.
//!
//! One file per report (`oee.rs`, `production.rs`, `scrap.rs`, `downtime_pareto.rs`,
//! `on_time.rs`, `wip.rs`), each a [`spec::ReportSpec`], listed once in [`registry`]; the
//! genealogy walk (`genealogy.rs`) has a path of its own. [`handler`] answers the requests
//! (cache, single flight, read transaction, statement timeout); [`table`] renders; [`sql`]
//! holds what the statements share; [`params`] checks the query string. The response cache with
//! the per-token rate limit and what report requests share are `crate::http::{cache, context}`,
//! below the handlers of both this module and `crate::api`.

pub mod downtime_pareto;
pub mod genealogy;
pub mod handler;
pub mod oee;
pub mod on_time;
pub mod params;
pub mod production;
pub mod registry;
pub mod scrap;
pub mod spec;
pub mod sql;
pub mod table;
pub mod wip;

pub use crate::http::context::{ReportCtx, STATEMENT_TIMEOUT_DEFAULT, scope_to_site};
