//! `central-hub serve`: the QUIC sync server and the HTTP endpoints of one stateless hub
//! instance. Several instances may run against one database.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use sync_protocol::session::SessionConfig;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ingest::PgHubStore;
use crate::pki::Ca;
use crate::sync::{self, SyncMetrics};

mod partitions;
mod ready;
mod scrape;

use partitions::partition_loop;
use ready::ready;
use scrape::metrics_text;

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
    let Pools {
        pool,
        listen_pool,
        read_pool,
        auth_pool,
    } = Pools::connect(&config).await?;
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
            let (addr, task) =
                spawn_metrics_listener(listen, http_state.clone(), shutdown_rx.clone()).await?;
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
    let http = spawn_http(listener, router, shutdown_rx);
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

/// The instance's connection pools.
struct Pools {
    /// As `mes_hub`: sync, ingest and the HQ API's writes.
    pool: PgPool,
    /// LISTEN's session connections (`--listen-database-url`, else `pool`).
    listen_pool: PgPool,
    /// As `mes_reporting`, possibly a replica.
    read_pool: Option<PgPool>,
    /// Token lookups' own small pool when there is no read pool: they never take a write
    /// connection.
    auth_pool: Option<PgPool>,
}

impl Pools {
    async fn connect(config: &ServeConfig) -> anyhow::Result<Self> {
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
        let read_pool = match &config.read_database_url {
            Some(url) => Some(
                crate::db::connect_with(url, &config.db)
                    .await
                    .context("connecting to the read database")?,
            ),
            None => None,
        };
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
        Ok(Self {
            pool,
            listen_pool,
            read_pool,
            auth_pool,
        })
    }
}

/// The HTTP API, dashboard, `/health`, `/ready` (and `/metrics` without a listener of their
/// own) on the instance's listener, stopped with the instance.
fn spawn_http(
    listener: tokio::net::TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        // The peer address is what failed authentications are counted by (`crate::auth`).
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            if let Err(gone) = stop.wait_for(|s| *s).await {
                // The sender is gone with the instance: stop too.
                tracing::debug!(%gone, "HTTP listener stops without a signal");
            }
        })
        .await
        .context("serving HTTP")
    })
}

/// `/metrics` (and `/health`) on a listener of their own, stopped with the instance.
async fn spawn_metrics_listener(
    listen: SocketAddr,
    http_state: HttpState,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, JoinHandle<anyhow::Result<()>>)> {
    let metrics_listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the metrics listener {listen}"))?;
    let addr = metrics_listener.local_addr()?;
    let metrics_router = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/health", get(|| async { Json(json!({"status": "ok"})) }))
        .with_state(http_state);
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
    Ok((addr, task))
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
