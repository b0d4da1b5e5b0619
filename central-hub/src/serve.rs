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

use crate::db::store::{PgHubStore, ensure_partitions};
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
    /// Report cache, rate limits and their shared state.
    pub reports: ReportSettings,
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
}

impl Default for ReportSettings {
    fn default() -> Self {
        Self {
            redis_url: None,
            cache_ttl: Duration::from_secs(10),
            rate_limit_per_second: 50,
        }
    }
}

#[derive(Debug)]
pub struct Running {
    pub quic_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub enroll_addr: Option<SocketAddr>,
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
    metrics: Arc<SyncMetrics>,
    reports: Arc<crate::reports::ReportCtx>,
}

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

pub async fn start(config: ServeConfig) -> anyhow::Result<Running> {
    let pool = crate::db::connect(&config.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    let ca = Ca::load_or_create(&config.state_dir)
        .with_context(|| format!("loading the CA in {}", config.state_dir.display()))?;
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
            crate::db::connect(url)
                .await
                .context("connecting to the read database")?,
        ),
        None => None,
    };
    let store = PgHubStore::new(pool.clone());
    let shared = crate::reports::cache::Shared::new(
        config.reports.redis_url.as_deref(),
        config.reports.cache_ttl,
        config.reports.rate_limit_per_second,
    )
    .await
    .context("setting up the report cache")?;
    let reports = Arc::new(crate::reports::ReportCtx::new(shared));
    let versions_listener = tokio::spawn(crate::reports::cache::listen(
        pool.clone(),
        reports.clone(),
        shutdown_rx.clone(),
    ));
    let api = crate::api::router(crate::api::ApiState {
        pool: pool.clone(),
        read_pool,
        store: store.clone(),
        reports: reports.clone(),
        tokens: Arc::default(),
    });
    let signals = Arc::new(sync::DownSignals::default());
    let down_listener = tokio::spawn(sync::listen_down(
        pool.clone(),
        signals.clone(),
        shutdown_rx.clone(),
    ));
    let quic = tokio::spawn(sync::serve(
        endpoint,
        store,
        SessionConfig::default(),
        metrics.clone(),
        signals,
        shutdown_rx.clone(),
    ));
    let partitions = tokio::spawn(partition_loop(pool.clone()));
    let (enroll_addr, enroll) = match config.enroll_listen {
        Some(listen) => {
            let ca =
                Arc::new(Ca::load_or_create(&config.state_dir).with_context(|| {
                    format!("loading the CA in {}", config.state_dir.display())
                })?);
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
    let router = Router::new()
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(HttpState {
            pool,
            metrics: metrics.clone(),
            reports: reports.clone(),
        })
        .merge(api)
        .merge(crate::dashboard::router());
    let mut http_shutdown = shutdown_rx;
    let http = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                let _ = http_shutdown.wait_for(|s| *s).await;
            })
            .await
            .context("serving HTTP")
    });
    tracing::info!(%quic_addr, %http_addr, ?enroll_addr, "hub started");
    Ok(Running {
        quic_addr,
        http_addr,
        enroll_addr,
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
        let _ = self.shutdown.send(true);
        if let Some(e) = self.enroll {
            let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.quic).await;
        self.listener.abort();
        self.versions_listener.abort();
        self.partitions.abort();
        self.http.await.context("joining HTTP")?
    }
}

async fn partition_loop(pool: PgPool) {
    loop {
        // The hub role reads only its scoped rows, so it asks the SECURITY DEFINER function
        // per site id it knows from the partition catalogue instead of the sites table.
        let sites: Result<Vec<String>, _> = sqlx::query_scalar(
            "SELECT upper(substr(c.relname, 10)) FROM pg_inherits i
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
             WHERE p.relname = 'events'",
        )
        .fetch_all(&pool)
        .await;
        match sites {
            Ok(sites) => {
                let ids: Vec<_> = sites
                    .into_iter()
                    .filter_map(|s| shared_model::SiteId::new(s).ok())
                    .collect();
                if let Err(e) = ensure_partitions(&pool, &ids).await {
                    tracing::warn!(error = %e, "creating partitions failed; will retry");
                }
            }
            Err(e) => tracing::warn!(error = %e, "listing partitions failed; will retry"),
        }
        tokio::time::sleep(PARTITION_INTERVAL).await;
    }
}

async fn ready(State(s): State<HttpState>) -> impl IntoResponse {
    match sqlx::query("SELECT 1").execute(&s.pool).await {
        Ok(_) => (StatusCode::OK, Json(json!({"status": "ready"}))),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "error": e.to_string()})),
        ),
    }
}

async fn metrics_text(State(s): State<HttpState>) -> impl IntoResponse {
    let m = &s.metrics;
    let mut out = String::new();
    for (name, help, kind, v) in [
        (
            "hub_sync_connections_open",
            "Open sync connections.",
            "gauge",
            &m.connections_open,
        ),
        (
            "hub_sync_connections_total",
            "Sync connections accepted.",
            "counter",
            &m.connections_total,
        ),
        (
            "hub_sync_connections_refused_total",
            "Connections refused at the limit.",
            "counter",
            &m.connections_refused,
        ),
        (
            "hub_sync_sessions_failed_total",
            "Sessions ended by a store failure.",
            "counter",
            &m.sessions_failed,
        ),
        (
            "hub_sync_protocol_errors_total",
            "Sessions closed for a protocol violation.",
            "counter",
            &m.protocol_errors,
        ),
        (
            "hub_events_ingested_total",
            "Events inserted (duplicates excluded).",
            "counter",
            &m.events_ingested,
        ),
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
            v.load(Ordering::Relaxed)
        ));
    }
    let r = &s.reports.shared.metrics;
    for (name, help, v) in [
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
    ] {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}\n",
            v.load(Ordering::Relaxed)
        ));
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
    out.push_str(&format!(
        "# HELP mes_report_cache_hit_ratio Cache hits over lookups since start.\n# TYPE mes_report_cache_hit_ratio gauge\nmes_report_cache_hit_ratio {rate}\n"
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
