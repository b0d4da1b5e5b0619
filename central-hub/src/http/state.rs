//! What every HQ API handler is given: the pools, the store, the report context, the token
//! checker; the wall clock.

use std::sync::Arc;

use axum::http::StatusCode;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgPool};

use crate::http::auth::Auth;
pub use crate::http::auth::Scope;
use crate::http::context::ReportCtx;
use crate::http::error::ApiError;
use crate::ingest::PgHubStore;

#[derive(Clone, Debug)]
pub struct ApiState {
    /// The hub's own (write) pool: releases, edits and master data go through it.
    pub pool: PgPool,
    /// The reporting connection (`--read-database-url`, role `mes_reporting`): cross-site
    /// reads and reports, never the sync path.
    pub read_pool: Option<PgPool>,
    pub store: PgHubStore,
    pub reports: Arc<ReportCtx>,
    /// Bearer tokens: lookups on the read side, unknown ones remembered, failures limited
    /// per client address ([`crate::http::auth`]).
    pub auth: Arc<Auth>,
}

impl ApiState {
    /// The reporting pool, or `503` saying what needs it (`what` is "reports", "cross-site
    /// reads").
    pub fn read_pool(&self, what: &str) -> Result<&PgPool, ApiError> {
        self.read_pool.as_ref().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("{what} need --read-database-url (role mes_reporting)"),
            )
        })
    }
}

impl ApiState {
    /// Runs `sql` on the reporting connection inside a transaction (behind PgBouncer an
    /// unnamed statement is parsed and executed on one server connection only within one)
    /// and decodes its typed rows. `503` without a reporting connection.
    pub async fn read_all<R>(&self, sql: &'static str) -> Result<Vec<R>, ApiError>
    where
        R: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let pool = self.read_pool("cross-site reads")?;
        let mut tx = crate::db::begin(pool, crate::db::PoolRole::Read)
            .await
            .map_err(ApiError::internal)?;
        let rows = crate::db::query_as::<R>(sql)
            .fetch_all(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
        // A read-only transaction: a failed commit loses nothing, but says the connection
        // broke under us, so the rows are not trusted.
        tx.commit().await.map_err(ApiError::internal)?;
        Ok(rows)
    }
}

/// The wall clock, read here at the edge of the API (the model crates take time as input).
pub fn now() -> shared_model::Timestamp {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    shared_model::Timestamp::from_micros(micros)
}
