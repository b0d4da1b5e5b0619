//! `GET /ready`: the write database, the read database and its replication lag.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;
use sqlx::PgPool;

use super::HttpState;

/// Replication lag of the read database in seconds: 0 on a primary, and 0 on a replica that
/// has replayed everything it received (an idle primary must not look like lag).
const REPLICATION_LAG_SQL: &str = "SELECT pg_is_in_recovery() AS replica,
    (CASE WHEN NOT pg_is_in_recovery() THEN 0
          WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
          ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
     END)::float8 AS lag";

/// The rows of `sql` on the read database, timed as `what`.
pub(super) async fn read_rows(
    pool: &PgPool,
    what: &'static str,
    sql: &'static str,
) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
    crate::db::timed(
        what,
        crate::db::fetch_all_in_tx(pool, crate::db::PoolRole::Read, crate::db::query(sql)),
    )
    .await
}

/// `(is a replica, lag seconds)` of the read database.
pub(super) async fn replication_lag(pool: &PgPool) -> Result<(bool, f64), sqlx::Error> {
    use sqlx::Row as _;
    let rows = read_rows(pool, "replication_lag", REPLICATION_LAG_SQL).await?;
    let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
    Ok((
        row.try_get("replica")?,
        row.try_get::<f64, _>("lag")?.max(0.0),
    ))
}

/// Ready when the write database answers: that is what sync and the HQ writes need. The read
/// database (often a replica) is reported beside it with its replication lag, but does not
/// take the instance out of the load balancer: sync keeps working while a replica is down.
pub(super) async fn ready(State(s): State<HttpState>) -> impl IntoResponse {
    let read = match &s.read_pool {
        None => json!({"configured": false}),
        Some(pool) => match replication_lag(pool).await {
            Ok((replica, lag)) => json!({
                "configured": true, "ok": true, "replica": replica,
                "replication_lag_seconds": lag,
            }),
            Err(e) => json!({"configured": true, "ok": false, "error": e.to_string()}),
        },
    };
    match crate::db::timed("ready", sqlx::raw_sql("SELECT 1").execute(&s.pool)).await {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({"status": "ready", "read_database": read})),
        ),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "error": e.to_string(), "read_database": read})),
        ),
    }
}
