//! `edge-agent run`: open the store, serve the API, sync with the hub when one is configured,
//! prune in the background, and shut down gracefully on SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, AppState, Clock, SystemClock};
use crate::config::RunConfig;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::sync::{self, HubTarget};

/// How often retention runs.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

/// A started agent: its HTTP address, its state, and the handle to stop it.
#[derive(Debug)]
pub struct Running {
    pub http_addr: SocketAddr,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    http: JoinHandle<anyhow::Result<()>>,
    sync: Option<JoinHandle<()>>,
    retention: JoinHandle<()>,
    reloads: JoinHandle<()>,
    _lock: crate::backup::AgentLock,
}

/// Opens the store, binds the API and starts sync; returns once everything runs.
pub async fn start(config: RunConfig) -> anyhow::Result<Running> {
    start_with_clock(config, Arc::new(SystemClock)).await
}

/// [`start`] with the agent's clock given: what events are stamped with, and what decides
/// when the certificate is renewed (tests move it).
pub async fn start_with_clock(config: RunConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Running> {
    // One agent per data directory; `restore` checks the same lock.
    let lock = crate::backup::lock(&config.data_dir)?;
    let metrics = Arc::new(Metrics::default());
    let store = Store::open(&config.data_dir, config.site.clone(), metrics)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let mut state = AppState::new(store.clone(), clock.clone());
    state.hub_configured = config.hub.is_some();
    state.connectors = crate::connectors::ConnectorSet::new(
        store.clone(),
        clock.clone(),
        config.config_file.clone(),
    );
    if config.config_file.is_some() {
        // A bad connector table stops the start with its lines, as a bad flag would.
        let started = state
            .connectors
            .reload()
            .await
            .context("starting the machine connectors")?;
        if !started.started.is_empty() {
            tracing::info!(connectors = ?started.started, "machine connectors started");
        }
    }
    let listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding {}", config.http_listen))?;
    let http_addr = listener.local_addr().context("reading the bound address")?;
    let (shutdown, shutdown_rx) = watch::channel(false);
    let sync = match &config.hub {
        Some(address) => {
            // Missing enrollment files are a startup error, not an endless retry loop.
            let setup = || {
                format!(
                    "setting up sync with {address}: enroll the agent or point --tls-dir at its files"
                )
            };
            let identity = crate::identity::load(&config.tls_dir).with_context(setup)?;
            let endpoint = sync::bind().with_context(setup)?;
            // A certificate the client cannot present is a startup error too.
            sync::client_config(&identity).with_context(setup)?;
            let target = HubTarget {
                address: address.clone(),
                tls_dir: config.tls_dir.clone(),
            };
            Some(tokio::spawn(sync::run(
                state.clone(),
                endpoint,
                target,
                Default::default(),
                identity,
                shutdown_rx.clone(),
            )))
        }
        None => None,
    };
    let reloads = tokio::spawn(reload_on_hangup(state.connectors.clone()));
    let retention = tokio::spawn(retention_loop(
        store.clone(),
        clock,
        i64::from(config.retention_days) * 86_400 * 1_000_000,
    ));
    let mut http_shutdown = shutdown_rx;
    let router = api::router(state.clone());
    let http = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                // An error means the sender is gone, which is a shutdown too.
                http_shutdown.wait_for(|stop| *stop).await.ok();
            })
            .await
            .context("serving HTTP")
    });
    tracing::info!(site = %config.site, %http_addr, hub = ?config.hub, "edge agent started");
    Ok(Running {
        http_addr,
        state,
        shutdown,
        http,
        sync,
        retention,
        reloads,
        _lock: lock,
    })
}

impl Running {
    /// Stops accepting requests, lets in-flight ones finish, closes the sync session, and
    /// lets the writer commit what it holds.
    pub async fn stop(self) -> anyhow::Result<()> {
        // An error means every receiver is gone: nothing is left to stop.
        self.shutdown.send(true).ok();
        let http = self.http.await.context("joining the HTTP server")?;
        if let Some(sync) = self.sync {
            match tokio::time::timeout(Duration::from_secs(5), sync).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the sync task ended abnormally"),
                Err(_) => tracing::warn!("the sync session did not close within 5 s"),
            }
        }
        self.retention.abort();
        self.reloads.abort();
        // Connectors finish their commits (and acknowledge what they committed) before the
        // writer closes.
        self.state.connectors.shutdown().await;
        let store = self.state.store.clone();
        tokio::task::spawn_blocking(move || store.close())
            .await
            .context("closing the store")?;
        http
    }
}

/// `edge-agent run`: start, announce, wait for a signal, stop.
pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let running = start(config).await?;
    // The one line tests and installers wait for: the store is open and the socket bound.
    println!("edge-agent listening on http://{}", running.http_addr);
    service_kit::process::shutdown_signal("agent").await;
    running.stop().await?;
    tracing::info!("edge agent stopped");
    Ok(())
}

/// SIGHUP reloads the connectors from the config file; a bad file is logged with its lines
/// and changes nothing.
async fn reload_on_hangup(connectors: Arc<crate::connectors::ConnectorSet>) {
    #[cfg(unix)]
    {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for SIGHUP; reload connectors through the API");
                return;
            }
        };
        while hup.recv().await.is_some() {
            match connectors.reload().await {
                Ok(r) => {
                    tracing::info!(started = ?r.started, stopped = ?r.stopped, unchanged = ?r.unchanged, "connectors reloaded")
                }
                Err(e) => {
                    tracing::error!(error = %e, "connector reload refused; the running connectors are unchanged")
                }
            }
        }
    }
    #[cfg(not(unix))]
    std::future::pending::<()>().await;
}

async fn retention_loop(store: Store, clock: Arc<dyn Clock>, window_micros: i64) {
    loop {
        let now = clock.now().as_micros();
        if let Err(e) = store.prune_idempotency_keys(now).await {
            tracing::warn!(error = %e, "forgetting old idempotency keys failed; will retry");
        }
        let cutoff = now.saturating_sub(window_micros);
        match store.prune_acked_before(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "retention removed acknowledged events"),
            Err(e) => tracing::warn!(error = %e, "retention failed; will retry"),
        }
        tokio::time::sleep(PRUNE_INTERVAL).await;
    }
}
