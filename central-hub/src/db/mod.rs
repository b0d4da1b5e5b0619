//! PostgreSQL: connection setup, the statement helpers every query of the hub goes through,
//! and the pieces the rest of the hub builds on.
//!
//! * [`schema`]: tables, row-level security and migrations; [`tx`]: transactions
//!   ([`begin`], [`scoped`]) and their timing; [`error`]: the store's error type;
//!   [`convert`]: instants and record kinds as columns; [`channels`]: NOTIFY channels.
//! * [`sites`]: registering sites and their partitions; [`master`]: HQ master data;
//!   [`retention`]: archiving and dropping old months; [`generation`]: which history of the
//!   data this is (a restore or failover starts a new one).
//!
//! The `HubStore` implementation is `crate::ingest`, the reporting rollups `crate::rollup`;
//! both use this module, and nothing here uses them (no import circle).

pub mod channels;
pub mod convert;
pub mod error;
pub mod generation;
pub mod master;
pub mod retention;
pub mod schema;
pub mod sites;
pub mod tx;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::query::{Query, QueryAs, QueryScalar};
use sqlx::{ConnectOptions as _, Connection as _, Executor, FromRow, PgPool, Postgres, SqlSafeStr};

pub use error::HubStoreError;
pub use tx::{PoolRole, WAITING, Waiting, begin, fetch_all_in_tx, scoped, timed, update_site};

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
    probe(&options).await?;
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

/// Opens and closes one connection before the pool is made, so that a server that is down
/// or unreachable fails start-up at once with its cause ("connection refused" at that
/// address). The pool itself retries a failed connect until its acquire timeout and then
/// reports only `pool timed out while waiting for an open connection`, ten seconds later.
async fn probe(options: &PgConnectOptions) -> Result<(), sqlx::Error> {
    let conn = options.connect().await.map_err(|e| match e {
        sqlx::Error::Io(io) => sqlx::Error::Io(std::io::Error::new(
            io.kind(),
            format!(
                "connecting to PostgreSQL at {}:{}: {io}",
                options.get_host(),
                options.get_port()
            ),
        )),
        other => other,
    })?;
    // The probe has done its work once it connected; a failed goodbye is no start-up error.
    if let Err(e) = conn.close().await {
        tracing::debug!(error = %e, "closing the probe connection");
    }
    Ok(())
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
