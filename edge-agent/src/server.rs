//! `edge-agent run`: open the store, serve the API, prune in the background, shut down
//! gracefully on SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;

use crate::api::{self, AppState, Clock, SystemClock};
use crate::config::RunConfig;
use crate::metrics::Metrics;
use crate::store::Store;

/// How often retention runs.
pub const PRUNE_INTERVAL: Duration = Duration::from_secs(3600);

pub async fn run(config: RunConfig) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::default());
    let store = Store::open(&config.data_dir, config.site.clone(), metrics)
        .with_context(|| format!("opening the store in {}", config.data_dir.display()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let state = AppState::new(store.clone(), clock.clone());
    let listener = TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("binding {}", config.http_listen))?;
    let addr = listener.local_addr().context("reading the bound address")?;
    if config.hub.is_some() {
        tracing::warn!("--hub is set but the sync client is not built yet; running standalone");
    }
    let retention = tokio::spawn(retention_loop(
        store.clone(),
        clock,
        i64::from(config.retention_days) * 86_400 * 1_000_000,
    ));
    // The one line tests and installers wait for: the store is open and the socket bound.
    println!("edge-agent listening on http://{addr}");
    tracing::info!(site = %config.site, %addr, "edge agent started");
    axum::serve(listener, api::router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .context("serving HTTP")?;
    retention.abort();
    // In-flight requests have finished; let the writer commit what it holds, then exit.
    tokio::task::spawn_blocking(move || store.close())
        .await
        .context("closing the store")?;
    tracing::info!("edge agent stopped");
    Ok(())
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

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown requested");
}
