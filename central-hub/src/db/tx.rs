//! Transactions and their timing: every transaction of the hub is opened by [`begin`] (counted
//! in `mes_db_connections_waiting` while it waits for a connection) or by [`scoped`] on top of
//! it, and database operations are timed into `mes_db_query_duration_seconds` by [`timed`].

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use shared_model::SiteId;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::Query;
use sqlx::{PgPool, Postgres, Transaction};

/// Tasks waiting for a pooled connection right now, per pool role (sqlx does not count its
/// waiters): `mes_db_connections_waiting`.
#[derive(Debug, Default)]
pub struct Waiting {
    pub write: AtomicI64,
    pub read: AtomicI64,
    pub auth: AtomicI64,
}

pub static WAITING: Waiting = Waiting {
    write: AtomicI64::new(0),
    read: AtomicI64::new(0),
    auth: AtomicI64::new(0),
};

/// Which pool a transaction is taken from, for the waiting gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolRole {
    Write,
    Read,
    /// Token lookups (`crate::auth`): the read pool, or a small pool of their own.
    Auth,
}

struct WaitGuard(&'static AtomicI64);

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let before = self.0.fetch_sub(1, Ordering::Relaxed);
        // Every guard was counted up once before it was made: the gauge never goes negative.
        debug_assert!(before > 0, "connection-waiting gauge went negative");
    }
}

/// `pool.begin()`, counted in `mes_db_connections_waiting` while it waits for a connection.
/// The only place the hub calls `pool.begin()`.
pub async fn begin(
    pool: &PgPool,
    role: PoolRole,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let gauge = match role {
        PoolRole::Write => &WAITING.write,
        PoolRole::Read => &WAITING.read,
        PoolRole::Auth => &WAITING.auth,
    };
    gauge.fetch_add(1, Ordering::Relaxed);
    let _guard = WaitGuard(gauge);
    pool.begin().await
}

/// Begins a write transaction scoped to `site` by row-level security:
/// `set_config('app.current_site_id', site, true)` is transaction-local, so the scope never
/// leaks to the next user of a pooled or PgBouncer connection.
pub async fn scoped(
    pool: &PgPool,
    site: &SiteId,
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = begin(pool, PoolRole::Write).await?;
    crate::db::query("SELECT set_config('app.current_site_id', $1, true)")
        .bind(site.as_str())
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// Updates the site's own status columns in a transaction of their own, scoped to `site`:
/// `sql` names the site `$1` (bound here), `bind` adds the other parameters. The sync server's
/// bookkeeping (connected, acknowledged, the edge's reported backlog) is written this way.
pub async fn update_site<'q>(
    pool: &PgPool,
    site: &'q SiteId,
    sql: &'static str,
    bind: impl FnOnce(Query<'q, Postgres, PgArguments>) -> Query<'q, Postgres, PgArguments>,
) -> Result<(), sqlx::Error> {
    let mut tx = scoped(pool, site).await?;
    bind(crate::db::query(sql).bind(site.as_str()))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Runs one statement in a transaction of its own and returns its rows: behind PgBouncer an
/// unnamed statement is parsed and executed on one server connection only within one.
pub async fn fetch_all_in_tx(
    pool: &PgPool,
    role: PoolRole,
    q: Query<'_, Postgres, PgArguments>,
) -> Result<Vec<PgRow>, sqlx::Error> {
    let mut tx = begin(pool, role).await?;
    let rows = q.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Times one database operation into `mes_db_query_duration_seconds{query}`.
pub async fn timed<T, E>(
    query: &'static str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let start = Instant::now();
    let out = fut.await;
    crate::metrics::QUERIES.observe(query, start.elapsed());
    out
}
