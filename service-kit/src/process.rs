//! The process around a service: its one tokio runtime and the signal that stops it.

use anyhow::Context;

/// The multi-threaded runtime a binary runs its command on (I/O and timers enabled).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM. A signal that cannot be watched is
/// logged and waits forever, so the other one still stops the service (and a failure to watch
/// Ctrl-C does not stop it at once). `service` names the binary in those warnings.
pub async fn shutdown_signal(service: &str) {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %e, "cannot watch for Ctrl-C; stop the {service} with SIGTERM");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch for SIGTERM; stop the {service} with Ctrl-C");
                std::future::pending::<()>().await;
            }
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
