//! [`ReportCtx`]: what the report handlers (and the micro-cached HQ answers) share across
//! requests — the response cache and rate limiter, single flight per cache key, the list of
//! sites, the background-refresh budget and the statement timeout.

use std::sync::Arc;

use shared_model::SiteId;
use sqlx::{PgPool, Postgres, Transaction};

use super::cache::Shared;

/// Everything the report handlers share.
#[derive(Debug)]
pub struct ReportCtx {
    pub shared: Shared,
    /// One computation per cache key at a time: when an entry expires under load, the
    /// requests that miss together wait for the first one instead of all querying.
    inflight: crate::memo::Flights<String>,
    /// The registered sites, read at most every [`SITES_TTL`]: every report names them.
    sites: Arc<crate::memo::Memo<(), Arc<Vec<String>>>>,
    /// Background refreshes of stale entries running at once: they share the read pool with
    /// the requests that must query, so they may take only part of it.
    pub(crate) refreshes: Arc<tokio::sync::Semaphore>,
    /// Longest one report statement may run.
    pub(crate) statement_timeout: std::time::Duration,
}

/// Most background refreshes at once. One: on a small box a refresh of the heaviest reports
/// takes a core for up to seconds, and several at once (each also with parallel workers)
/// took both cores from the requests being answered from the cache (p99 spikes of ~1 s every
/// cache TTL in `bench-reports`). Stale entries are served meanwhile, up to
/// [`super::cache::STALE_TTLS`].
const REFRESHES_MAX: usize = 1;

/// How long the list of registered sites is reused (a new site shows up in reports after it).
pub const SITES_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Most distinct keys being computed at once before the single-flight table is trimmed.
const INFLIGHT_MAX: usize = 10_000;

/// How long one report statement may run unless `--report-statement-timeout` says otherwise:
/// the slowest cold report measured at 30M events took 3.2 s (docs/benchmarks.md).
pub const STATEMENT_TIMEOUT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(20);

impl ReportCtx {
    pub fn new(shared: Shared) -> Self {
        Self {
            shared,
            inflight: crate::memo::Flights::new(INFLIGHT_MAX),
            sites: Arc::new(crate::memo::Memo::new(SITES_TTL, 1)),
            refreshes: Arc::new(tokio::sync::Semaphore::new(REFRESHES_MAX)),
            statement_timeout: STATEMENT_TIMEOUT_DEFAULT,
        }
    }

    /// The same with another limit on each report statement's run time.
    pub fn with_statement_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.statement_timeout = timeout;
        self
    }

    /// Every registered site, sorted (reused for [`SITES_TTL`]).
    pub async fn known_sites(&self, pool: &PgPool) -> Result<Arc<Vec<String>>, sqlx::Error> {
        let pool = pool.clone();
        let lookup = move |()| {
            let pool = pool.clone();
            async move {
                let mut tx = crate::db::begin(&pool, crate::db::PoolRole::Read).await?;
                let list = crate::db::query_scalar("SELECT site_id FROM sites ORDER BY site_id")
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok::<_, sqlx::Error>(Arc::new(list))
            }
        };
        self.sites.get((), lookup).await
    }

    /// The lock that serializes computations of `key`.
    pub fn flight(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inflight.lock_of(&key.to_owned())
    }
}

/// The listener of data versions ([`super::cache::listen`]) needs only the cache.
impl AsRef<Shared> for ReportCtx {
    fn as_ref(&self) -> &Shared {
        &self.shared
    }
}

/// Limits a reporting transaction to one site by row-level security: the role whose policies
/// filter on `app.report_site`, both transaction-local (safe behind PgBouncer).
pub async fn scope_to_site(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
) -> Result<(), sqlx::Error> {
    crate::db::query("SET LOCAL ROLE mes_reporting_site")
        .execute(&mut **tx)
        .await?;
    crate::db::query("SELECT set_config('app.report_site', $1, true)")
        .bind(site.as_str())
        .execute(&mut **tx)
        .await?;
    Ok(())
}
