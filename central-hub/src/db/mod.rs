//! PostgreSQL: schema, connection setup, and the site-scoped store.

pub mod master;
pub mod retention;
pub mod rollup;
pub mod schema;
pub mod store;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{Executor, FromRow, PgPool, Postgres, SqlSafeStr, Transaction};

/// Connections per hub instance unless configured: PgBouncer or `max_connections` bound the
/// total across instances.
pub const POOL_CONNECTIONS_MAX: u32 = 16;

/// The most connections one instance may be configured to open: a typo must not exhaust
/// PgBouncer's `max_client_conn` for every other pod.
pub const POOL_CONNECTIONS_LIMIT: u32 = 1000;

/// How the hub reaches PostgreSQL.
#[derive(Debug, Clone)]
pub struct DbSettings {
    /// Connections per pool (the write pool and the read pool each).
    pub pool_size: u32,
    /// PgBouncer in transaction mode is in front: a server connection belongs to a client
    /// only for one transaction, so named prepared statements (sqlx caches them per
    /// connection) would be looked up on a server that never saw them. With this set the
    /// statement cache is off, and every statement with parameters runs inside a
    /// transaction, where its unnamed parse, bind and execute stay on one server connection.
    pub pgbouncer: bool,
    /// A connection that keeps session state, for LISTEN/NOTIFY (which transaction pooling
    /// cannot carry): PostgreSQL directly or a session-mode PgBouncer database. Without it
    /// the write URL is used, which is right when that URL is PostgreSQL itself.
    pub listen_url: Option<String>,
}

impl Default for DbSettings {
    fn default() -> Self {
        Self {
            pool_size: POOL_CONNECTIONS_MAX,
            pgbouncer: false,
            listen_url: None,
        }
    }
}

/// Opens a pool whose sessions use UTC, so `date_trunc` and month boundaries never depend on
/// the server's configuration.
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    connect_with(url, &DbSettings::default()).await
}

/// [`connect`] with explicit settings (pool size, PgBouncer mode).
pub async fn connect_with(url: &str, settings: &DbSettings) -> Result<PgPool, sqlx::Error> {
    let mut options: PgConnectOptions = url.parse()?;
    if settings.pgbouncer {
        options = options.statement_cache_capacity(0);
        NAMED_STATEMENTS.store(false, Ordering::Relaxed);
    }
    PgPoolOptions::new()
        .max_connections(settings.pool_size.clamp(1, POOL_CONNECTIONS_LIMIT))
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                // PgBouncer tracks TimeZone (a reported parameter) per client and sets it on
                // whichever server connection serves the client, so this holds there too.
                conn.execute("SET TIME ZONE 'UTC'").await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
}

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
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `pool.begin()`, counted in `mes_db_connections_waiting` while it waits for a connection.
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

/// Upper bounds (seconds) of the query-duration histogram's buckets.
pub const QUERY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

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

/// Whether statements may be named and cached per connection. Cleared, for the whole process,
/// by the first pool opened in PgBouncer mode: sqlx names a statement even when its cache is
/// off (and never closes it), and a named statement on a transaction-pooled server connection
/// collides with the next client's statement of the same name (`sqlx_s_1 already exists`).
static NAMED_STATEMENTS: AtomicBool = AtomicBool::new(true);

pub fn named_statements() -> bool {
    NAMED_STATEMENTS.load(Ordering::Relaxed)
}

/// `sqlx::query`, unnamed behind PgBouncer. Every statement of the hub goes through these.
pub fn query<'q>(sql: impl SqlSafeStr) -> Query<'q, Postgres, PgArguments> {
    sqlx::query(sql).persistent(named_statements())
}

/// `sqlx::query_scalar`, unnamed behind PgBouncer.
pub fn query_scalar<'q, O>(sql: impl SqlSafeStr) -> QueryScalar<'q, Postgres, O, PgArguments>
where
    (O,): for<'r> FromRow<'r, PgRow>,
{
    sqlx::query_scalar(sql).persistent(named_statements())
}

/// `sqlx::query_as`, unnamed behind PgBouncer.
pub fn query_as<'q, O>(sql: impl SqlSafeStr) -> QueryAs<'q, Postgres, O, PgArguments>
where
    O: for<'r> FromRow<'r, PgRow>,
{
    sqlx::query_as(sql).persistent(named_statements())
}
