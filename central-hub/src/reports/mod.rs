//! The reporting API (`docs/reports.md`): cross-site KPIs from rollups, as JSON or CSV, cached
//! per data version and rate limited per token.

pub mod cache;
pub mod openapi;
pub mod params;
pub mod sql;

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{Map, Value, json};
use shared_model::{SiteId, Timestamp};
use sqlx::{PgPool, Postgres, Transaction};

use crate::api::{ApiError, ApiState, Scope};
use cache::{Cached, Shared};
use params::{Direction, Format, Query, Report};
use sql::SqlRow;

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
    refreshes: Arc<tokio::sync::Semaphore>,
    /// Longest one report statement may run.
    statement_timeout: std::time::Duration,
}

/// Most background refreshes at once. One: on a small box a refresh of the heaviest reports
/// takes a core for up to seconds, and several at once (each also with parallel workers)
/// took both cores from the requests being answered from the cache (p99 spikes of ~1 s every
/// cache TTL in `bench-reports`). Stale entries are served meanwhile, up to [`cache::STALE_TTLS`].
const REFRESHES_MAX: usize = 1;

/// How long the list of registered sites is reused (a new site shows up in reports after it).
pub const SITES_TTL: std::time::Duration = std::time::Duration::from_secs(5);

/// Most distinct keys being computed at once before the single-flight table is trimmed.
const INFLIGHT_MAX: usize = 10_000;

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

    async fn known_sites(&self, pool: &PgPool) -> Result<Arc<Vec<String>>, ApiError> {
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
        self.sites.get((), lookup).await.map_err(ApiError::internal)
    }

    /// The lock that serializes computations of `key`.
    fn flight(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.inflight.lock_of(&key.to_owned())
    }

    async fn cached(&self, key: &str) -> Option<Cached> {
        self.shared.get(key).await
    }
}

/// The wall clock, read here at the edge of the API (the model crates take time as input).
pub fn now() -> Timestamp {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp::from_micros(micros)
}

fn bad(e: params::ParamError) -> ApiError {
    ApiError::bad_request(e.field, e.message)
}

fn wants_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/csv"))
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

/// How long one report statement may run unless `--report-statement-timeout` says otherwise:
/// the slowest cold report measured at 30M events took 3.2 s (docs/benchmarks.md).
pub const STATEMENT_TIMEOUT_DEFAULT: std::time::Duration = std::time::Duration::from_secs(20);

/// A read transaction on the reporting connection, each statement limited to the configured
/// `statement_timeout` (transaction-local, safe behind PgBouncer); a site-scoped token's
/// transaction is limited to its site by row-level security as well. The guard cancels the
/// running statement if the caller is dropped before it disarms it (the client went away).
async fn read_tx(
    ctx: &ReportCtx,
    pool: &PgPool,
    scope: &Scope,
) -> Result<(Transaction<'static, Postgres>, CancelOnDrop), ApiError> {
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
    let known = ctx.known_sites(pool).await?;
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

fn respond(c: Cached, how: &'static str) -> Response {
    let mut r = (StatusCode::OK, c.body).into_response();
    if let Ok(v) = HeaderValue::from_str(&c.content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut()
        .insert("x-cache", HeaderValue::from_static(how));
    r
}

fn ratio(num: f64, den: f64) -> Value {
    if den > 0.0 {
        json!(num / den)
    } else {
        Value::Null
    }
}

fn int(v: f64) -> Value {
    json!(v.round() as i64)
}

/// A finished table: column names, rows, and a total.
struct Table {
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    total: Value,
}

fn key_values(row: &SqlRow) -> Vec<Value> {
    row.keys
        .iter()
        .map(|k| k.clone().map_or(Value::Null, Value::String))
        .collect()
}

fn group_columns(q: &Query) -> Vec<String> {
    q.groups.iter().map(|g| g.as_str().to_owned()).collect()
}

fn oee_measures(ppt: f64, stop: f64, ideal: f64, good: f64, scrap: f64) -> Vec<Value> {
    let run = (ppt - stop).max(0.0);
    let total = good + scrap;
    let a = if ppt > 0.0 { Some(run / ppt) } else { None };
    let p = if run > 0.0 { Some(ideal / run) } else { None };
    let q = if total > 0.0 {
        Some(good / total)
    } else {
        None
    };
    let oee = match (a, p, q) {
        (Some(a), Some(p), Some(q)) => json!(a * p * q),
        // With no run time at all, OEE is simply good × ideal / PPT = 0 when PPT > 0.
        _ if ppt > 0.0 => json!(ideal * if total > 0.0 { good / total } else { 0.0 } / ppt),
        _ => Value::Null,
    };
    vec![
        json!(ppt / 1e6),
        json!(run / 1e6),
        json!(stop / 1e6),
        json!(ideal / 1e6),
        int(good),
        int(scrap),
        int(total),
        a.map_or(Value::Null, |v| json!(v)),
        p.map_or(Value::Null, |v| json!(v)),
        q.map_or(Value::Null, |v| json!(v)),
        oee,
    ]
}

const OEE_COLUMNS: [&str; 11] = [
    "planned_production_seconds",
    "run_seconds",
    "stop_seconds",
    "ideal_seconds",
    "good",
    "scrap",
    "total_count",
    "availability",
    "performance",
    "quality",
    "oee",
];

fn table_of(
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    total_cols: &[&str],
    total: Vec<Value>,
) -> Table {
    let mut t = Map::new();
    for (c, v) in total_cols.iter().zip(total) {
        t.insert((*c).to_owned(), v);
    }
    Table {
        columns,
        rows,
        total: Value::Object(t),
    }
}

fn sum_col(rows: &[SqlRow], i: usize) -> f64 {
    rows.iter().map(|r| r.values[i]).sum()
}

async fn compute(
    report: Report,
    tx: &mut Transaction<'static, Postgres>,
    sites: &[String],
    q: &Query,
) -> Result<Table, sqlx::Error> {
    let mut columns = group_columns(q);
    Ok(match report {
        Report::Oee => {
            let rows = sql::oee(tx, sites, q).await?;
            columns.extend(OEE_COLUMNS.iter().map(|s| (*s).to_owned()));
            let out = rows
                .iter()
                .map(|r| {
                    let v = &r.values;
                    let mut cells = key_values(r);
                    cells.extend(oee_measures(v[0], v[1], v[2], v[3], v[4]));
                    cells
                })
                .collect();
            let s: Vec<f64> = (0..5).map(|i| sum_col(&rows, i)).collect();
            table_of(
                columns,
                out,
                &OEE_COLUMNS,
                oee_measures(s[0], s[1], s[2], s[3], s[4]),
            )
        }
        Report::Production => {
            let rows = sql::production(tx, sites, q).await?;
            let measures = |good: f64, scrap: f64| {
                vec![
                    int(good),
                    int(scrap),
                    int(good + scrap),
                    ratio(scrap, good + scrap),
                ]
            };
            let cols = ["good", "scrap", "total_count", "scrap_rate"];
            columns.extend(cols.iter().map(|s| (*s).to_owned()));
            let out = rows
                .iter()
                .map(|r| {
                    let mut cells = key_values(r);
                    cells.extend(measures(r.values[0], r.values[1]));
                    cells
                })
                .collect();
            let total = measures(sum_col(&rows, 0), sum_col(&rows, 1));
            table_of(columns, out, &cols, total)
        }
        Report::Scrap => {
            let mut rows = sql::scrap(tx, sites, q).await?;
            let n = q.groups.len();
            // Within each group: scrap descending, then reason.
            rows.sort_by(|a, b| {
                a.keys[..n]
                    .cmp(&b.keys[..n])
                    .then(b.values[0].total_cmp(&a.values[0]))
                    .then(a.keys[n].cmp(&b.keys[n]))
            });
            columns.extend(["reason", "scrap", "share"].iter().map(|s| (*s).to_owned()));
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let group_total: f64 = rows
                    .iter()
                    .filter(|o| o.keys[..n] == r.keys[..n])
                    .map(|o| o.values[0])
                    .sum();
                let mut cells = key_values(r);
                cells.push(int(r.values[0]));
                cells.push(ratio(r.values[0], group_total));
                out.push(cells);
            }
            let unfiltered = Query {
                groups: Vec::new(),
                ..q.clone()
            };
            let totals = sql::production(tx, sites, &unfiltered).await?;
            let (good, scrap) = (sum_col(&totals, 0), sum_col(&totals, 1));
            table_of(
                columns,
                out,
                &["good", "scrap", "scrap_rate"],
                vec![int(good), int(scrap), ratio(scrap, good + scrap)],
            )
        }
        Report::DowntimePareto => {
            let mut rows = sql::pareto(tx, sites, q).await?;
            let n = q.groups.len();
            rows.sort_by(|a, b| {
                a.keys[..n]
                    .cmp(&b.keys[..n])
                    .then(b.values[0].total_cmp(&a.values[0]))
                    .then(match (&a.keys[n], &b.keys[n]) {
                        (Some(x), Some(y)) => x.cmp(y),
                        (Some(_), None) => std::cmp::Ordering::Less,
                        (None, Some(_)) => std::cmp::Ordering::Greater,
                        (None, None) => std::cmp::Ordering::Equal,
                    })
            });
            columns.extend(
                [
                    "reason",
                    "reason_name",
                    "loss_category",
                    "seconds",
                    "stops",
                    "share",
                    "cumulative_share",
                ]
                .iter()
                .map(|s| (*s).to_owned()),
            );
            let mut out = Vec::with_capacity(rows.len());
            let mut cumulative = 0.0;
            let mut last_group: Option<&[Option<String>]> = None;
            for r in &rows {
                if last_group != Some(&r.keys[..n]) {
                    cumulative = 0.0;
                    last_group = Some(&r.keys[..n]);
                }
                let group_total: f64 = rows
                    .iter()
                    .filter(|o| o.keys[..n] == r.keys[..n])
                    .map(|o| o.values[0])
                    .sum();
                cumulative += r.values[0];
                let mut cells = key_values(r);
                cells.push(json!(r.values[0] / 1e6));
                cells.push(int(r.values[1]));
                cells.push(ratio(r.values[0], group_total));
                cells.push(ratio(cumulative, group_total));
                out.push(cells);
            }
            table_of(
                columns,
                out,
                &["seconds", "stops"],
                vec![json!(sum_col(&rows, 0) / 1e6), int(sum_col(&rows, 1))],
            )
        }
        Report::OnTime => {
            let rows = sql::on_time(tx, sites, q).await?;
            let cols = ["due", "on_time", "late", "open", "on_time_rate"];
            columns.extend(cols.iter().map(|s| (*s).to_owned()));
            let measures = |v: &[f64]| {
                vec![
                    int(v[0]),
                    int(v[1]),
                    int(v[2]),
                    int(v[3]),
                    ratio(v[1], v[0]),
                ]
            };
            let out = rows
                .iter()
                .map(|r| {
                    let mut cells = key_values(r);
                    cells.extend(measures(&r.values));
                    cells
                })
                .collect();
            let s: Vec<f64> = (0..4).map(|i| sum_col(&rows, i)).collect();
            table_of(columns, out, &cols, measures(&s))
        }
        Report::Wip => {
            let rows = sql::wip(tx, sites, q).await?;
            columns.extend(sql::WIP_MEASURES.iter().map(|s| (*s).to_owned()));
            let out = rows
                .iter()
                .map(|r| {
                    let mut cells = key_values(r);
                    cells.extend(r.values.iter().map(|v| int(*v)));
                    cells
                })
                .collect();
            // Lots are counted once even when several groups share them, so the total asks again.
            let ungrouped = Query {
                groups: Vec::new(),
                ..q.clone()
            };
            let all = sql::wip(tx, sites, &ungrouped).await?;
            let total = (0..sql::WIP_MEASURES.len())
                .map(|i| int(sum_col(&all, i)))
                .collect();
            table_of(columns, out, &sql::WIP_MEASURES, total)
        }
    })
}

fn csv_field(v: &Value) -> String {
    let s = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn csv(columns: &[String], rows: &[Vec<Value>]) -> Vec<u8> {
    let mut out = String::new();
    out.push_str(
        &columns
            .iter()
            .map(|c| csv_field(&Value::String(c.clone())))
            .collect::<Vec<_>>()
            .join(","),
    );
    out.push_str("\r\n");
    for r in rows {
        out.push_str(&r.iter().map(csv_field).collect::<Vec<_>>().join(","));
        out.push_str("\r\n");
    }
    out.into_bytes()
}

fn render(report: &str, q: &Query, sites: &[String], t: Table) -> Cached {
    match q.format {
        Format::Csv => Cached {
            content_type: "text/csv; charset=utf-8".into(),
            body: csv(&t.columns, &t.rows).into(),
            computed_ms: cache::unix_ms(),
        },
        Format::Json => {
            let rows: Vec<Value> = t
                .rows
                .into_iter()
                .map(|cells| {
                    let mut m = Map::new();
                    for (c, v) in t.columns.iter().zip(cells) {
                        m.insert(c.clone(), v);
                    }
                    Value::Object(m)
                })
                .collect();
            let body = json!({
                "report": report,
                "from": q.from.to_json(),
                "to": q.to.to_json(),
                "sites": sites,
                "group_by": q.groups.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
                "columns": t.columns,
                "rows": rows,
                "total": t.total,
                "generated_at": now().to_rfc3339(),
            });
            Cached {
                content_type: "application/json".into(),
                body: serde_json::to_vec(&body).unwrap_or_default().into(),
                computed_ms: cache::unix_ms(),
            }
        }
    }
}

fn read_pool(state: &ApiState) -> Result<&PgPool, ApiError> {
    state.read_pool.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "reports need --read-database-url (role mes_reporting)",
        )
    })
}

/// `GET /api/v1/reports/{report}`
pub async fn report(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(name): Path<String>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let report = Report::parse(&name).ok_or_else(|| {
        ApiError::bad_request(
            "report",
            format!(
                "unknown report {name:?}; reports are oee, production, scrap, downtime-pareto, on-time, wip, genealogy/{{lot}}"
            ),
        )
    })?;
    let ctx = &state.reports;
    let q = params::parse(Some(report), raw.as_deref(), wants_csv(&headers), now()).map_err(bad)?;
    let pool = read_pool(&state)?;
    let sites = resolve_sites(ctx, pool, &scope, &q.sites).await?;
    let logical = format!(
        "{}|{:?}|{}",
        report.as_str(),
        scope.site,
        q.cache_key(&sites)
    );
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
    if let Some(c) = ctx.cached(&key).await {
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
    report: Report,
    sites: &[String],
    q: &Query,
    priority: Priority,
) -> Result<Cached, ApiError> {
    let pool = read_pool(state)?;
    let (mut tx, cancel) = read_tx(&state.reports, pool, scope).await?;
    if priority == Priority::Background {
        // One core at most: no parallel workers for a query nobody waits for.
        crate::db::query("SET LOCAL max_parallel_workers_per_gather = 0")
            .execute(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
    }
    let table = crate::db::timed(report.as_str(), compute(report, &mut tx, sites, q))
        .await
        .map_err(query_error)?;
    cancel.disarm();
    let _ = tx.commit().await;
    if table.rows.len() > sql::ROWS_MAX {
        return Err(ApiError::bad_request(
            "group_by",
            format!(
                "the answer has {} rows, more than {}: narrow the range, the sites or the groups",
                table.rows.len(),
                sql::ROWS_MAX
            ),
        ));
    }
    Ok(render(report.as_str(), q, sites, table))
}

/// Longest lot id accepted in a path.
const LOT_BYTES_MAX: usize = 100;

/// `GET /api/v1/reports/genealogy/{lot}`
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
    let pool = read_pool(&state)?;
    let all_sites = resolve_sites(ctx, pool, &scope, &[]).await?;
    let key = ctx.shared.versions_key(&all_sites).await.map(|v| {
        format!(
            "genealogy|{lot}|{:?}|{:?}|{:?}|{v}",
            scope.site, q.direction, q.format
        )
    });
    if let Some(key) = &key
        && let Some(c) = ctx.cached(key).await
    {
        return Ok(respond(c, "hit"));
    }
    let (mut tx, cancel) = read_tx(ctx, pool, &scope).await?;
    let g = crate::db::timed("genealogy", sql::genealogy(&mut tx, &lot, q.direction))
        .await
        .map_err(query_error)?;
    cancel.disarm();
    let _ = tx.commit().await;
    let Some(g) = g else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no movements of lot {lot:?} are known"),
        ));
    };
    let direction = match q.direction {
        Direction::Backward => "backward",
        Direction::Forward => "forward",
    };
    let edge_columns: Vec<String> = [
        "from_lot",
        "to_lot",
        "work_order",
        "site",
        "quantity",
        "depth",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let edge_rows: Vec<Vec<Value>> = g
        .edges
        .iter()
        .map(|e| {
            vec![
                json!(e.from_lot),
                json!(e.to_lot),
                json!(e.work_order),
                json!(e.site),
                json!(e.quantity),
                json!(e.depth),
            ]
        })
        .collect();
    let rendered = match q.format {
        Format::Csv => Cached {
            content_type: "text/csv; charset=utf-8".into(),
            body: csv(&edge_columns, &edge_rows).into(),
            computed_ms: cache::unix_ms(),
        },
        Format::Json => {
            let mut nodes = vec![json!({"lot": lot, "material": g.root_material, "depth": 0})];
            for (l, material) in &g.materials {
                if l == &lot {
                    continue;
                }
                let depth = g
                    .edges
                    .iter()
                    .filter(|e| &e.to_lot == l)
                    .map(|e| e.depth)
                    .min()
                    .unwrap_or(0);
                nodes.push(json!({"lot": l, "material": material, "depth": depth}));
            }
            let edges: Vec<Value> = edge_rows
                .into_iter()
                .map(|cells| {
                    let mut m = Map::new();
                    for (c, v) in edge_columns.iter().zip(cells) {
                        m.insert(c.clone(), v);
                    }
                    Value::Object(m)
                })
                .collect();
            Cached {
                content_type: "application/json".into(),
                body: serde_json::to_vec(&json!({
                    "lot": lot, "direction": direction, "nodes": nodes, "edges": edges,
                    "truncated": g.edges.len() as i64 >= sql::GENEALOGY_EDGES_MAX,
                }))
                .unwrap_or_default()
                .into(),
                computed_ms: cache::unix_ms(),
            }
        }
    };
    if let Some(key) = &key {
        ctx.shared.put(key, &rendered).await;
    }
    Ok(respond(rendered, "miss"))
}

/// Answers from the cache when an entry for `key` is younger than `max_age`, else computes
/// it once (concurrent requests wait for that one) and caches it. For small, hot, uncached
/// answers (`/sites`, `/work-orders`) where a second of staleness is harmless.
pub async fn micro_cached<F>(
    ctx: &ReportCtx,
    key: &str,
    max_age: std::time::Duration,
    compute: F,
) -> Result<Response, ApiError>
where
    F: std::future::Future<Output = Result<Value, ApiError>>,
{
    if let Some(c) = ctx.shared.peek(key).await
        && c.age() < max_age
    {
        return Ok(respond(c, "hit"));
    }
    let flight = ctx.flight(key);
    let _computing = flight.lock().await;
    if let Some(c) = ctx.shared.peek(key).await
        && c.age() < max_age
    {
        return Ok(respond(c, "hit"));
    }
    let value = compute.await?;
    let c = Cached {
        content_type: "application/json".into(),
        body: serde_json::to_vec(&value).unwrap_or_default().into(),
        computed_ms: cache::unix_ms(),
    };
    ctx.shared.put(key, &c).await;
    Ok(respond(c, "miss"))
}

/// `GET /api/v1/openapi.json`
pub async fn openapi() -> Json<Value> {
    Json(openapi::document())
}
