//! `central-hub serve`: the QUIC sync server and the HTTP endpoints of one stateless hub
//! instance. Several instances may run against one database.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use sync_protocol::session::SessionConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::db::sites::ensure_partitions;
use crate::ingest::PgHubStore;
use crate::pki::Ca;
use crate::sync::{self, SyncMetrics};

/// How often the coming months' partitions are checked.
pub const PARTITION_INTERVAL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// As the hub role (`mes_hub`): neither owner nor superuser.
    pub database_url: String,
    /// As the reporting role (`mes_reporting`), possibly a read replica: cross-site reads of
    /// the HQ API. Without it those endpoints answer 503.
    pub read_database_url: Option<String>,
    pub quic_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Holds the CA (created on first use).
    pub state_dir: PathBuf,
    /// DNS names and IPs the server certificate is valid for.
    pub server_names: Vec<String>,
    /// The HTTPS enrollment endpoint (`edge-agent install`); none without it.
    pub enroll_listen: Option<SocketAddr>,
    /// With it, `/metrics` is served on this address only (for Prometheus on an internal
    /// network) and the API port answers it 404; without it `/metrics` is on the API port.
    pub metrics_listen: Option<SocketAddr>,
    /// Report cache, rate limits and their shared state.
    pub reports: ReportSettings,
    /// Pool sizes, PgBouncer mode and the LISTEN connection.
    pub db: crate::db::DbSettings,
}

/// Settings of the reporting API's cache and rate limiter (see `docs/reports.md`).
#[derive(Debug, Clone)]
pub struct ReportSettings {
    /// With it, cached reports, site data versions and rate-limit counters live in Redis and
    /// are shared by every hub instance; without it each instance keeps its own.
    pub redis_url: Option<String>,
    /// How long a cached report may be served: reports depend on "now" as well as on data.
    pub cache_ttl: Duration,
    /// Requests per second (and burst) one token may make to `/api/v1`.
    pub rate_limit_per_second: u32,
    /// Longest a report statement may run (`SET LOCAL statement_timeout`); a report that
    /// needs longer is answered 503 `report_timeout` instead of holding a connection.
    pub statement_timeout: Duration,
    /// Proxies (addresses or networks) whose `X-Forwarded-For` names the client whose failed
    /// authentications are counted (`crate::auth`); without them the TCP peer is the client.
    pub trusted_proxies: Vec<crate::auth::Cidr>,
}

impl Default for ReportSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            cache_ttl: Duration::from_secs(10),
            rate_limit_per_second: 50,
            statement_timeout: crate::reports::STATEMENT_TIMEOUT_DEFAULT,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug)]
pub struct Running {
    pub quic_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub enroll_addr: Option<SocketAddr>,
    /// Where `/metrics` is served when it has a listener of its own.
    pub metrics_addr: Option<SocketAddr>,
    metrics_http: Option<JoinHandle<anyhow::Result<()>>>,
    enroll: Option<JoinHandle<()>>,
    pub metrics: Arc<SyncMetrics>,
    shutdown: watch::Sender<bool>,
    quic: JoinHandle<()>,
    listener: JoinHandle<()>,
    versions_listener: JoinHandle<()>,
    http: JoinHandle<anyhow::Result<()>>,
    partitions: JoinHandle<()>,
}

#[derive(Clone, Debug)]
struct HttpState {
    pool: PgPool,
    read_pool: Option<PgPool>,
    auth: Arc<crate::auth::Auth>,
    /// The token lookups' own pool, when there is no read pool to use.
    auth_pool: Option<PgPool>,
    metrics: Arc<SyncMetrics>,
    reports: Arc<crate::http::context::ReportCtx>,
    /// The per-site gauges, computed at most every [`SITE_GAUGES_AGE`].
    site_gauges: Arc<tokio::sync::Mutex<Option<(std::time::Instant, String)>>>,
}

/// How long the per-site gauges of `/metrics` are reused: every pod is scraped every 15 s or
/// so, and the queries behind them read the sites, the orders and the last 15 minutes of
/// events of every site (failed quality samples come from a partial index).
pub const SITE_GAUGES_AGE: Duration = Duration::from_secs(30);

/// Pending connections the HTTP listener queues: a wall of dashboards reconnecting at once
/// (thousands) must not overflow it into SYN retries of seconds. The kernel caps it at
/// `net.core.somaxconn`.
pub const HTTP_BACKLOG: u32 = 4096;

fn http_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(HTTP_BACKLOG)
}

/// Settings most callers leave at their defaults (the CLI exposes them).
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Lifetime of the site certificates this instance issues (enrollment, renewal).
    pub site_cert_validity: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            site_cert_validity: Duration::from_secs(
                crate::pki::SITE_CERT_VALIDITY_DAYS as u64 * 86_400,
            ),
        }
    }
}

pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    start_with(config, ServeOptions::default()).await
}

pub async fn start_with(config: ServeConfig, options: ServeOptions) -> anyhow::Result<Running> {
    if config.db.pgbouncer && config.db.listen_url.is_none() {
        anyhow::bail!(
            "behind PgBouncer in transaction mode LISTEN/NOTIFY needs a session connection: \
             set --listen-database-url (LISTEN_DATABASE_URL) to PostgreSQL itself or to a \
             session-mode PgBouncer database"
        );
    }
    let pool = crate::db::connect_with(&config.database_url, &config.db)
        .await
        .context("connecting to PostgreSQL")?;
    let listen_pool = match &config.db.listen_url {
        Some(url) => crate::db::connect_with(
            url,
            &crate::db::DbSettings {
                pool_size: 2,
                ..crate::db::DbSettings::default()
            },
        )
        .await
        .context("connecting to PostgreSQL for LISTEN")?,
        None => pool.clone(),
    };
    let ca = Arc::new(
        Ca::load_or_create(&config.state_dir)
            .with_context(|| format!("loading the CA in {}", config.state_dir.display()))?
            .with_site_validity(options.site_cert_validity),
    );
    let endpoint = sync::endpoint(&ca, &config.server_names, config.quic_listen)
        .context("starting the QUIC endpoint")?;
    let quic_addr = endpoint.local_addr().context("QUIC address")?;
    let listener = http_listener(config.http_listen)
        .with_context(|| format!("binding {}", config.http_listen))?;
    let http_addr = listener.local_addr().context("HTTP address")?;
    let metrics = Arc::new(SyncMetrics::default());
    let (shutdown, shutdown_rx) = watch::channel(false);
    let read_pool = match &config.read_database_url {
        Some(url) => Some(
            crate::db::connect_with(url, &config.db)
                .await
                .context("connecting to the read database")?,
        ),
        None => None,
    };
    // Token lookups never take a write connection: the read pool, or a small pool of their
    // own on the hub's database.
    let auth_pool = match &read_pool {
        Some(_) => None,
        None => Some(
            crate::db::connect_with(
                &config.database_url,
                &crate::db::DbSettings {
                    pool_size: crate::auth::AUTH_POOL_CONNECTIONS,
                    ..config.db.clone()
                },
            )
            .await
            .context("connecting to PostgreSQL for token lookups")?,
        ),
    };
    let (lookup_pool, lookup_role) = match (&read_pool, &auth_pool) {
        (Some(read), _) => (read.clone(), crate::db::PoolRole::Read),
        (None, Some(own)) => (own.clone(), crate::db::PoolRole::Auth),
        (None, None) => anyhow::bail!("no pool for token lookups"),
    };
    let auth = Arc::new(crate::auth::Auth::new(
        lookup_pool,
        lookup_role,
        pool.clone(),
        config.reports.trusted_proxies.clone(),
    ));
    let store = PgHubStore::new(pool.clone());
    let shared = crate::http::cache::Shared::new(
        config.reports.redis_url.as_deref(),
        config.reports.cache_ttl,
        config.reports.rate_limit_per_second,
    )
    .await
    .context("setting up the report cache")?;
    let reports = Arc::new(
        crate::http::context::ReportCtx::new(shared)
            .with_statement_timeout(config.reports.statement_timeout),
    );
    let versions_listener = tokio::spawn(crate::http::cache::listen(
        listen_pool.clone(),
        reports.clone(),
        shutdown_rx.clone(),
    ));
    let api = crate::routes::router(crate::http::state::ApiState {
        pool: pool.clone(),
        read_pool: read_pool.clone(),
        store: store.clone(),
        reports: reports.clone(),
        auth: auth.clone(),
    });
    let signals = Arc::new(sync::DownSignals::default());
    let down_listener = tokio::spawn(sync::listen_down(
        listen_pool,
        signals.clone(),
        shutdown_rx.clone(),
    ));
    let quic = tokio::spawn(sync::serve(
        endpoint,
        store,
        ca.clone(),
        SessionConfig::default(),
        metrics.clone(),
        signals,
        shutdown_rx.clone(),
    ));
    let partitions = tokio::spawn(partition_loop(pool.clone()));
    let (enroll_addr, enroll) = match config.enroll_listen {
        Some(listen) => {
            let (addr, task) = crate::enroll::start(
                pool.clone(),
                ca,
                &config.server_names,
                listen,
                quic_addr.port(),
                shutdown_rx.clone(),
            )
            .await?;
            (Some(addr), Some(task))
        }
        None => (None, None),
    };
    let http_state = HttpState {
        pool,
        read_pool,
        auth,
        auth_pool,
        metrics: metrics.clone(),
        reports: reports.clone(),
        site_gauges: Arc::default(),
    };
    let mut router = Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready));
    // `/metrics` names every site and its backlog: on its own listener when one is given, so
    // the API port (often public) does not show it.
    let (metrics_addr, metrics_http) = match config.metrics_listen {
        Some(listen) => {
            let metrics_listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("binding the metrics listener {listen}"))?;
            let addr = metrics_listener.local_addr()?;
            let metrics_router = Router::new()
                .route("/metrics", get(metrics_text))
                .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
                .with_state(http_state.clone());
            let mut stop = shutdown_rx.clone();
            let task = tokio::spawn(async move {
                axum::serve(metrics_listener, metrics_router)
                    .with_graceful_shutdown(async move {
                        if let Err(gone) = stop.wait_for(|s| *s).await {
                            // The sender is gone with the instance: stop too.
                            tracing::debug!(%gone, "metrics listener stops without a signal");
                        }
                    })
                    .await
                    .context("serving metrics")
            });
            (Some(addr), Some(task))
        }
        None => {
            router = router.route("/metrics", get(metrics_text));
            (None, None)
        }
    };
    let router = router
        .with_state(http_state)
        .merge(api)
        .merge(crate::dashboard::router())
        .layer(axum::middleware::from_fn(crate::metrics::track));
    let mut http_shutdown = shutdown_rx;
    let http = tokio::spawn(async move {
        // The peer address is what failed authentications are counted by (`crate::auth`).
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            if let Err(gone) = http_shutdown.wait_for(|s| *s).await {
                // The sender is gone with the instance: stop too.
                tracing::debug!(%gone, "HTTP listener stops without a signal");
            }
        })
        .await
        .context("serving HTTP")
    });
    tracing::info!(%quic_addr, %http_addr, ?enroll_addr, ?metrics_addr, "hub started");
    Ok(Running {
        quic_addr,
        http_addr,
        enroll_addr,
        metrics_addr,
        metrics_http,
        enroll,
        metrics,
        shutdown,
        quic,
        listener: down_listener,
        versions_listener,
        http,
        partitions,
    })
}

impl Running {
    pub async fn stop(self) -> anyhow::Result<()> {
        if self.shutdown.send(true).is_err() {
            // Every receiver is gone already: nothing is left to signal.
            tracing::debug!("hub instance stopped before the signal");
        }
        // A task still running after its grace period is aborted, not left behind: dropping
        // a JoinHandle detaches the task, which would keep the endpoint (and its port) alive.
        if let Some(e) = self.enroll {
            let abort = e.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), e)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
        let abort = self.quic.abort_handle();
        if tokio::time::timeout(Duration::from_secs(10), self.quic)
            .await
            .is_err()
        {
            tracing::warn!("QUIC sessions still draining after 10 s; stopping them");
            abort.abort();
        }
        self.listener.abort();
        self.versions_listener.abort();
        self.partitions.abort();
        if let Some(m) = self.metrics_http {
            m.await.context("joining the metrics listener")??;
        }
        self.http.await.context("joining HTTP")?
    }
}

async fn partition_loop(pool: PgPool) {
    loop {
        // The hub role reads only its scoped rows, so it asks the SECURITY DEFINER function
        // per site id it knows from the partition catalogue instead of the sites table.
        let sites: Result<Vec<String>, _> = async {
            let mut tx = crate::db::begin(&pool, crate::db::PoolRole::Write).await?;
            let sites = crate::db::query_scalar(
                "SELECT upper(substr(c.relname, 10)) FROM pg_inherits i
                 JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
                 WHERE p.relname = 'events'",
            )
            .fetch_all(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(sites)
        }
        .await;
        match sites {
            Ok(sites) => {
                let ids: Vec<_> = sites
                    .into_iter()
                    .filter_map(|s| shared_model::SiteId::new(s).ok())
                    .collect();
                match ensure_partitions(&pool, &ids).await {
                    Ok(split) => {
                        for s in split {
                            tracing::info!(site = %s.site, month = %s.month, rows = s.rows,
                                "moved a month out of the site's default partition");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "creating partitions failed; will retry"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing partitions failed; will retry"),
        }
        tokio::time::sleep(PARTITION_INTERVAL).await;
    }
}

/// Replication lag of the read database in seconds: 0 on a primary, and 0 on a replica that
/// has replayed everything it received (an idle primary must not look like lag).
const REPLICATION_LAG_SQL: &str = "SELECT pg_is_in_recovery() AS replica,
    (CASE WHEN NOT pg_is_in_recovery() THEN 0
          WHEN pg_last_wal_receive_lsn() IS NOT DISTINCT FROM pg_last_wal_replay_lsn() THEN 0
          ELSE coalesce(extract(epoch FROM now() - pg_last_xact_replay_timestamp()), 0)
     END)::float8 AS lag";

/// The rows of `sql` on the read database, timed as `what`.
async fn read_rows(
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
async fn replication_lag(pool: &PgPool) -> Result<(bool, f64), sqlx::Error> {
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
async fn ready(State(s): State<HttpState>) -> impl IntoResponse {
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

/// Per-site gauges from the read database: sync status as `/api/v1/sites` shows it, work
/// orders running or paused, failed quality samples of the last 8 hours (one shift; the
/// guide's "quality alerts"), and operators who recorded something in the last 15 minutes.
const SITE_GAUGES_SQL: &str = "SELECT s.site_id, s.connected::int::float8 AS connected,
    coalesce(extract(epoch FROM now() - s.last_seen_at), -1)::float8 AS last_seen,
    coalesce(s.edge_pending_events, 0)::float8 AS backlog,
    greatest(coalesce(extract(epoch FROM now() - s.edge_oldest_pending_at), 0), 0)::float8 AS lag,
    (SELECT count(*) FROM work_orders w
      WHERE w.site_id = s.site_id AND w.state IN ('running', 'interrupted'))::float8 AS orders,
    (SELECT count(*) FROM events e
      WHERE e.site_id = s.site_id AND e.kind = 'quality_sample' AND e.reason = 'out_of_spec'
        AND e.occurred_at > now() - interval '8 hours')::float8 AS quality,
    (SELECT count(DISTINCT e.operator) FROM events e
      WHERE e.site_id = s.site_id AND e.operator IS NOT NULL
        AND e.occurred_at > now() - interval '15 minutes')::float8 AS users,
    coalesce((SELECT extract(epoch FROM max(c.not_after) - now()) FROM certificates c
      WHERE c.site_id = s.site_id AND c.revoked_at IS NULL), 'NaN')::float8 AS cert_expiry
  FROM sites s WHERE s.revoked_at IS NULL ORDER BY s.site_id";

async fn site_gauges(pool: &PgPool) -> Result<String, sqlx::Error> {
    use sqlx::Row as _;
    let rows = read_rows(pool, "site_gauges", SITE_GAUGES_SQL).await?;
    const COLUMNS: [(&str, &str, &str); 8] = [
        (
            "connected",
            "mes_sync_site_connected",
            "1 when the site's edge holds a sync session (any hub instance).",
        ),
        (
            "last_seen",
            "mes_sync_site_last_seen_seconds",
            "Seconds since the site's edge was last seen.",
        ),
        (
            "backlog",
            "mes_sync_backlog_events",
            "Events the site's edge reported as not yet acknowledged.",
        ),
        (
            "lag",
            "mes_sync_lag_seconds",
            "Age of the oldest event the site's edge still holds for the hub.",
        ),
        (
            "orders",
            "mes_work_orders_active",
            "Work orders running or paused.",
        ),
        (
            "quality",
            "mes_quality_alerts_active",
            "Failed quality samples in the last 8 hours.",
        ),
        (
            "users",
            "mes_active_users_by_site",
            "Operators who recorded an event in the last 15 minutes.",
        ),
        (
            "cert_expiry",
            "mes_site_certificate_expiry_seconds",
            "Seconds until the last unrevoked certificate of the site expires (negative: expired); the edge renews at two thirds of the lifetime.",
        ),
    ];
    let mut cols: [Vec<(String, f64)>; 8] = Default::default();
    for r in &rows {
        let site: String = r.try_get("site_id")?;
        for ((column, _, _), samples) in COLUMNS.iter().zip(&mut cols) {
            let v: f64 = r.try_get(*column)?;
            // A site never seen has no age: leave it out rather than report -1 s. A site
            // without a known certificate has no expiry.
            if (*column == "last_seen" && v < 0.0) || v.is_nan() {
                continue;
            }
            samples.push((site.clone(), v));
        }
    }
    let mut out = crate::metrics::Scrape::empty();
    for ((_, name, help), samples) in COLUMNS.iter().zip(cols) {
        out.gauges(name, help, "site", samples);
    }
    Ok(out.text())
}

fn pool_gauges(out: &mut crate::metrics::Scrape, pools: &[(&str, &PgPool)]) {
    let mut active = Vec::new();
    let mut idle = Vec::new();
    let mut limit = Vec::new();
    let mut waiting = Vec::new();
    for (role, pool) in pools {
        let label = (*role).to_owned();
        let size = f64::from(pool.size());
        let free = pool.num_idle() as f64;
        active.push((label.clone(), (size - free).max(0.0)));
        idle.push((label.clone(), free));
        limit.push((
            label.clone(),
            f64::from(pool.options().get_max_connections()),
        ));
        let w = match *role {
            "read" => &crate::db::WAITING.read,
            "auth" => &crate::db::WAITING.auth,
            _ => &crate::db::WAITING.write,
        };
        waiting.push((label, w.load(Ordering::Relaxed).max(0) as f64));
    }
    for (name, help, samples) in [
        (
            "mes_db_connections_active",
            "Pooled connections in use.",
            active,
        ),
        (
            "mes_db_connections_idle",
            "Pooled connections open and idle.",
            idle,
        ),
        (
            "mes_db_connections_waiting",
            "Transactions waiting for a pooled connection.",
            waiting,
        ),
        (
            "mes_db_connections_limit",
            "Most connections the pool opens.",
            limit,
        ),
    ] {
        out.gauges(name, help, "pool", samples);
    }
}

async fn metrics_text(State(s): State<HttpState>) -> impl IntoResponse {
    let m = &s.metrics;
    let mut out = crate::metrics::Scrape::hub();
    let gauges = [
        (
            "mes_sync_edges_connected",
            "Sync sessions open on this instance.",
            &m.connections_open,
        ),
        (
            "hub_sync_connections_open",
            "Open sync connections.",
            &m.connections_open,
        ),
        (
            "mes_sync_handshakes_in_progress",
            "QUIC/TLS handshakes in progress (validated addresses only).",
            &m.handshakes_open,
        ),
    ];
    for (name, help, v) in gauges {
        out.gauge_int(
            name,
            help,
            i64::try_from(v.load(Ordering::Relaxed)).unwrap_or(i64::MAX),
        );
    }
    let r = &s.reports.shared.metrics;
    let a = &s.auth.stats;
    let counters = [
        (
            "mes_sync_events_ingested_total",
            "Events stored (duplicates excluded).",
            &m.events_ingested,
        ),
        (
            "hub_sync_connections_total",
            "Sync connections accepted.",
            &m.connections_total,
        ),
        (
            "hub_sync_connections_refused_total",
            "Connections refused at the limit.",
            &m.connections_refused,
        ),
        (
            "hub_sync_sessions_failed_total",
            "Sessions ended by a store failure.",
            &m.sessions_failed,
        ),
        (
            "hub_sync_protocol_errors_total",
            "Sessions closed for a protocol violation.",
            &m.protocol_errors,
        ),
        (
            "hub_events_ingested_total",
            "Events inserted (duplicates excluded).",
            &m.events_ingested,
        ),
        (
            "mes_sync_retries_total",
            "Connection attempts answered with a QUIC Retry (address not validated yet).",
            &m.retries,
        ),
        (
            "mes_sync_sessions_replaced_total",
            "Connections closed because a newer connection of their site took their place.",
            &m.sessions_replaced,
        ),
        (
            "mes_sync_certificates_renewed_total",
            "Site certificates renewed over sync sessions by this instance.",
            &m.certificates_renewed,
        ),
        (
            "mes_sync_certificate_renewals_refused_total",
            "Certificate renewals this instance refused (bad CSR, too frequent, database).",
            &m.renewals_refused,
        ),
        (
            "mes_report_cache_hits_total",
            "Report requests answered from the cache.",
            &r.cache_hits,
        ),
        (
            "mes_report_cache_misses_total",
            "Report requests computed from the database.",
            &r.cache_misses,
        ),
        (
            "mes_report_cache_stale_total",
            "Cached reports served past their TTL while one request refreshed them.",
            &r.cache_stale,
        ),
        (
            "mes_rate_limited_total",
            "API requests refused with 429.",
            &r.rate_limited,
        ),
        (
            "mes_redis_errors_total",
            "Redis commands that failed or timed out (the request went on without).",
            &r.redis_errors,
        ),
        (
            "mes_api_token_lookups_total",
            "HQ API token lookups that reached the database (read side).",
            &a.lookups,
        ),
        (
            "mes_api_auth_failures_total",
            "HQ API requests refused as unknown, revoked or malformed tokens.",
            &a.unknown,
        ),
        (
            "mes_api_auth_limited_total",
            "HQ API requests refused with 429 for their address' failed authentications.",
            &a.limited,
        ),
    ];
    for (name, help, v) in counters {
        out.counter(name, help, v.load(Ordering::Relaxed));
    }
    out.counters(
        "mes_sync_connections_refused_total",
        "Connection attempts refused, or connections closed before their session, by reason.",
        "reason",
        sync::Refusal::ALL.map(|reason| (reason.name().to_owned(), m.refused(reason))),
    );
    let mut pools = vec![("write", &s.pool)];
    if let Some(read) = &s.read_pool {
        pools.push(("read", read));
    }
    if let Some(auth) = &s.auth_pool {
        pools.push(("auth", auth));
    }
    pool_gauges(&mut out, &pools);
    let mut per_site = String::new();
    if let Some(read) = &s.read_pool {
        match replication_lag(read).await {
            Ok((_, lag)) => out.gauge(
                "mes_db_replication_lag_seconds",
                "Replication lag of the read database (0 on a primary or a caught-up replica).",
                lag,
            ),
            Err(e) => tracing::warn!(error = %e, "replication lag query failed"),
        }
        let mut cached = s.site_gauges.lock().await;
        let fresh = cached
            .as_ref()
            .filter(|(at, _)| at.elapsed() < SITE_GAUGES_AGE)
            .map(|(_, text)| text.clone());
        match fresh {
            Some(text) => per_site = text,
            None => match site_gauges(read).await {
                Ok(text) => {
                    per_site.clone_from(&text);
                    *cached = Some((std::time::Instant::now(), text));
                }
                Err(e) => tracing::warn!(error = %e, "per-site gauges failed"),
            },
        }
    }
    let (hits, misses) = (
        r.cache_hits.load(Ordering::Relaxed),
        r.cache_misses.load(Ordering::Relaxed),
    );
    let rate = if hits + misses > 0 {
        hits as f64 / (hits + misses) as f64
    } else {
        0.0
    };
    out.gauge(
        "mes_cache_hit_rate",
        "Share of report lookups answered from the cache since start.",
        rate,
    );
    out.gauge(
        "mes_cache_miss_rate",
        "Share of report lookups computed from the database since start.",
        if hits + misses > 0 { 1.0 - rate } else { 0.0 },
    );
    out.gauge(
        "mes_report_cache_hit_ratio",
        "Cache hits over lookups since start.",
        rate,
    );
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        out.finish(&per_site),
    )
}
