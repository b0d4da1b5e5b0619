//! The report endpoints: `GET /api/v1/reports/{report}` and
//! `GET /api/v1/reports/genealogy/{lot}`. A request is checked, its sites resolved, then
//! answered from the cache (fresh: `hit`; older than the TTL: `stale`, refreshed in the
//! background by one request), or computed once per cache key (`miss`) in a read transaction
//! with a statement timeout that is cancelled if the client goes away.

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use shared_model::SiteId;
use sqlx::PgPool;

use super::genealogy::{self, GenealogyDoc, LOT_BYTES_MAX};
use super::params::{self, Query};
use super::spec::{ReadTx, Report};
use super::sql::ROWS_MAX;
use super::table::{ReportDoc, render};
use crate::http::auth::Scope;
use crate::http::cache::Cached;
use crate::http::cached::respond;
use crate::http::context::{ReportCtx, scope_to_site};
use crate::http::error::ApiError;
use crate::http::state::{ApiState, now};

fn bad(e: params::ParamError) -> ApiError {
    ApiError::bad_request(e.field, e.message)
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"))
}

/// A read transaction on the reporting connection, each statement limited to the configured
/// `statement_timeout` (transaction-local, safe behind PgBouncer); a site-scoped token's
/// transaction is limited to its site by row-level security as well. The guard cancels the
/// running statement if the caller is dropped before it disarms it (the client went away).
async fn read_tx(
    ctx: &ReportCtx,
    pool: &PgPool,
    scope: &Scope,
) -> Result<(ReadTx, CancelOnDrop), ApiError> {
    use sqlx::Row as _;
    let mut tx = crate::db::begin(pool, crate::db::PoolRole::Read)
        .await
        .map_err(ApiError::internal)?;
    let row = crate::db::query(
        "SELECT set_config('statement_timeout', $1, true), pg_backend_pid() AS pid, now() AS xact_start",
    )
    .bind(format!("{}ms", ctx.statement_timeout.as_millis().max(1)))
    .fetch_one(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    let guard = CancelOnDrop {
        pool: pool.clone(),
        pid: row.try_get("pid").map_err(ApiError::internal)?,
        xact_start: row.try_get("xact_start").map_err(ApiError::internal)?,
        armed: true,
    };
    if let Some(site) = &scope.site {
        scope_to_site(&mut tx, site)
            .await
            .map_err(ApiError::internal)?;
    }
    Ok((tx, guard))
}

/// Ends a report's read transaction. It wrote nothing, so a failed commit loses nothing; but
/// it means the connection broke after the answer was read, and an answer from a connection
/// in an unknown state is not cached or served: it is an internal error like any other.
async fn finish(tx: ReadTx) -> Result<(), ApiError> {
    tx.commit().await.map_err(ApiError::internal)
}

/// Cancels a reporting transaction's running statement when dropped while armed. Dropping a
/// query's future only stops waiting for it: PostgreSQL would go on computing a report
/// nobody reads (for up to the statement timeout) while holding a connection. The cancel
/// names the backend and the transaction's start, so it can never hit a later transaction
/// that reuses the pooled connection.
#[derive(Debug)]
struct CancelOnDrop {
    pool: PgPool,
    pid: i32,
    xact_start: time::OffsetDateTime,
    armed: bool,
}

impl CancelOnDrop {
    /// The statements finished: nothing to cancel.
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (pool, pid, xact_start) = (self.pool.clone(), self.pid, self.xact_start);
        runtime.spawn(async move {
            let cancelled = crate::db::fetch_all_in_tx(
                &pool,
                crate::db::PoolRole::Read,
                crate::db::query(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity
                     WHERE pid = $1 AND xact_start = $2 AND state = 'active'",
                )
                .bind(pid)
                .bind(xact_start),
            )
            .await;
            match cancelled {
                Ok(rows) if !rows.is_empty() => {
                    tracing::info!(pid, "report query cancelled: its client went away")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, pid, "cancelling a report query failed"),
            }
        });
    }
}

/// A report statement's error: one that ran past the statement timeout is the caller's to
/// narrow (503 with words), anything else is internal.
fn query_error(e: sqlx::Error) -> ApiError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("57014")
    {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "report_timeout",
            "the report took longer than the hub's statement timeout \
             (--report-statement-timeout): narrow the date range, the sites or the groups",
        );
    }
    ApiError::internal(e)
}

/// The sites a request covers: those it names (each must exist and be visible to the token),
/// else every site the token may see.
async fn resolve_sites(
    ctx: &ReportCtx,
    pool: &PgPool,
    scope: &Scope,
    asked: &[SiteId],
) -> Result<Vec<String>, ApiError> {
    let known = ctx.known_sites(pool).await.map_err(ApiError::internal)?;
    if asked.is_empty() {
        return Ok(known
            .iter()
            .filter(|s| {
                scope
                    .site
                    .as_ref()
                    .is_none_or(|own| own.as_str() == s.as_str())
            })
            .cloned()
            .collect());
    }
    let mut out = Vec::with_capacity(asked.len());
    for s in asked {
        if !known.iter().any(|k| k == s.as_str()) {
            return Err(ApiError::bad_request("site", format!("unknown site {s}")));
        }
        if !scope.allows(s) {
            return Err(ApiError::forbidden());
        }
        out.push(s.as_str().to_owned());
    }
    out.sort();
    Ok(out)
}

/// `GET /api/v1/reports/{report}`
#[utoipa::path(get, path = "/api/v1/reports/{report}",
    summary = "a cross-site KPI report (docs/reports.md)",
    params(("report" = String, Path, description = "which report"),
           ("from" = Option<String>, Query, description = "RFC 3339 instant or YYYY-MM-DD (local midnight of each site); default to − 7 days"),
           ("to" = Option<String>, Query, description = "RFC 3339 instant or YYYY-MM-DD, exclusive; default now; at most 400 days after from"),
           ("site" = Option<Vec<String>>, Query, description = "repeatable or comma-separated; default every site the token may see"),
           ("group_by" = Option<Vec<String>>, Query, description = "repeatable or comma-separated"),
           ("format" = Option<String>, Query, description = "json or csv, or Accept: text/csv"),
           ("include_planned" = Option<bool>, Query, description = "downtime-pareto: keep planned stops")),
    responses((status = 200, description = "a report table (JSON) or its rows as CSV",
               content((ReportDoc = "application/json"), (String = "text/csv")))))]
pub async fn report(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let report = super::registry::find(&name).ok_or_else(|| {
        let names: Vec<&str> = super::registry::REPORTS.iter().map(|r| r.name()).collect();
        ApiError::bad_request(
            "report",
            format!(
                "unknown report {name:?}; reports are {}, genealogy/{{lot}}",
                names.join(", ")
            ),
        )
    })?;
    let ctx = &state.reports;
    let q = params::parse(
        Some(report.grouping()),
        raw.as_deref(),
        wants_csv(&headers),
        now(),
    )
    .map_err(bad)?;
    let pool = state.read_pool("reports")?;
    let sites = resolve_sites(ctx, pool, &scope, &q.sites).await?;
    let logical = format!("{}|{:?}|{}", report.name(), scope.site, q.cache_key(&sites));
    let key = ctx
        .shared
        .versions_key(&sites)
        .await
        .map(|v| format!("{logical}|{v}"));
    let Some(key) = key else {
        // Redis cannot tell the data versions: answer uncached rather than risk stale data.
        let rendered = compute_report(&state, &scope, report, &sites, &q, Priority::Waited).await?;
        return Ok(respond(rendered, "miss"));
    };
    if let Some(c) = ctx.shared.get(&key).await {
        if c.age() < ctx.shared.ttl {
            return Ok(respond(c, "hit"));
        }
        // Only "now" moved since it was computed (the data versions are in the key): serve it
        // and let one request recompute it in the background.
        let flight = ctx.flight(&key);
        if let Ok(guard) = flight.try_lock_owned()
            && let Ok(permit) = ctx.refreshes.clone().try_acquire_owned()
        {
            let (state, scope, sites, q, key) = (
                state.clone(),
                scope.clone(),
                sites.clone(),
                q.clone(),
                key.clone(),
            );
            tokio::spawn(async move {
                let _guard = (guard, permit);
                match compute_report(&state, &scope, report, &sites, &q, Priority::Background).await
                {
                    Ok(fresh) => state.reports.shared.put(&key, &fresh).await,
                    Err(e) => tracing::warn!(?e, "refreshing a cached report failed"),
                }
            });
        }
        ctx.shared
            .metrics
            .cache_stale
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Ok(respond(c, "stale"));
    }
    let flight = ctx.flight(&key);
    let _computing = flight.lock().await;
    // Whoever held the lock before us may have filled the entry.
    if let Some(c) = ctx.shared.peek(&key).await
        && c.age() < ctx.shared.ttl
    {
        return Ok(respond(c, "hit"));
    }
    let rendered = compute_report(&state, &scope, report, &sites, &q, Priority::Waited).await?;
    ctx.shared.put(&key, &rendered).await;
    Ok(respond(rendered, "miss"))
}

/// Whether someone waits for a computation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Priority {
    Waited,
    /// A refresh of an entry that is being served stale: it may take longer, and must not
    /// take the machine from the requests being answered meanwhile.
    Background,
}

/// Computes a report from the rollups and renders it.
async fn compute_report(
    state: &ApiState,
    scope: &Scope,
    report: &'static dyn Report,
    sites: &[String],
    q: &Query,
    priority: Priority,
) -> Result<Cached, ApiError> {
    let pool = state.read_pool("reports")?;
    let (mut tx, cancel) = read_tx(&state.reports, pool, scope).await?;
    if priority == Priority::Background {
        // One core at most: no parallel workers for a query nobody waits for.
        crate::db::query("SET LOCAL max_parallel_workers_per_gather = 0")
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
    }
    let table = crate::db::timed(report.name(), report.compute(&mut tx, sites, q))
        .await
        .map_err(query_error)?;
    cancel.disarm();
    finish(tx).await?;
    if table.rows.len() > ROWS_MAX {
        return Err(ApiError::bad_request(
            "group_by",
            format!(
                "the answer has {} rows, more than {}: narrow the range, the sites or the groups",
                table.rows.len(),
                ROWS_MAX
            ),
        ));
    }
    Ok(render(report.name(), q, sites, table))
}

/// `GET /api/v1/reports/genealogy/{lot}`
#[utoipa::path(get, path = "/api/v1/reports/genealogy/{lot}",
    summary = "lot genealogy, backward or forward, across sites",
    params(("lot" = String, Path, description = "lot id"),
           ("direction" = Option<String>, Query, description = "backward (default) or forward"),
           ("format" = Option<String>, Query, description = "json or csv, or Accept: text/csv")),
    responses((status = 200, description = "nodes and edges",
               content((GenealogyDoc = "application/json"), (String = "text/csv")))))]
pub async fn genealogy(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(lot): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if lot.is_empty() || lot.len() > LOT_BYTES_MAX {
        return Err(ApiError::bad_request(
            "lot",
            format!("a lot id is 1 to {LOT_BYTES_MAX} bytes"),
        ));
    }
    let ctx = &state.reports;
    let q = params::parse(None, raw.as_deref(), wants_csv(&headers), now()).map_err(bad)?;
    let pool = state.read_pool("reports")?;
    let all_sites = resolve_sites(ctx, pool, &scope, &[]).await?;
    let key = ctx.shared.versions_key(&all_sites).await.map(|v| {
        format!(
            "genealogy|{lot}|{:?}|{:?}|{:?}|{v}",
            scope.site, q.direction, q.format
        )
    });
    if let Some(key) = &key
        && let Some(c) = ctx.shared.get(key).await
    {
        return Ok(respond(c, "hit"));
    }
    let (mut tx, cancel) = read_tx(ctx, pool, &scope).await?;
    let g = crate::db::timed("genealogy", genealogy::walk(&mut tx, &lot, q.direction))
        .await
        .map_err(query_error)?;
    cancel.disarm();
    finish(tx).await?;
    let Some(g) = g else {
        return Err(ApiError::not_found(format!(
            "no movements of lot {lot:?} are known"
        )));
    };
    let rendered = genealogy::render(&lot, q.direction, q.format, g);
    if let Some(key) = &key {
        ctx.shared.put(key, &rendered).await;
    }
    Ok(respond(rendered, "miss"))
}
