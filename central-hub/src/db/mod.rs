//! PostgreSQL: schema, connection setup, and the site-scoped store.

pub mod master;
pub mod rollup;
pub mod schema;
pub mod store;

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Executor, PgPool};

/// Connections per hub instance; PgBouncer or `max_connections` bound the total.
pub const POOL_CONNECTIONS_MAX: u32 = 16;

/// Opens a pool whose sessions use UTC, so `date_trunc` and month boundaries never depend on
/// the server's configuration.
pub async fn connect(url: &str) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    PgPoolOptions::new()
        .max_connections(POOL_CONNECTIONS_MAX)
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(|conn, _meta| {
            Box::pin(async move {
                conn.execute("SET TIME ZONE 'UTC'").await?;
                Ok(())
            })
        })
        .connect_with(options)
        .await
}
