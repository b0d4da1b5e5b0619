//! The QUIC sync client: connects to the hub with the site's client certificate, drives an
//! `EdgeSession` against the SQLite store, and reconnects with capped exponential backoff and
//! jitter after any failure. Cursors live in the store, so every connection resumes where the
//! last one stopped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quinn::{Endpoint, TransportConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use sync_protocol::driver::drive_edge;
use sync_protocol::message::ErrorCode;
use sync_protocol::session::{EdgeSession, SessionConfig};
use sync_protocol::store::EdgeStore;
use tokio::sync::watch;

use crate::api::AppState;

/// First retry delay after a failed connection.
pub const RETRY_DELAY_MIN: Duration = Duration::from_millis(250);
/// Longest retry delay: a WAN back after hours is used within half a minute.
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(30);
/// QUIC keep-alive: below NAT timeouts and the hub's 30 s idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Bytes read from the stream at a time.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Outbox polls between two status reports to the hub (5 × 1 s).
pub const STATUS_EVERY_TICKS: u64 = 5;
/// Safety net for a missed outbox notification.
pub const OUTBOX_POLL_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
    #[error("cannot resolve hub address {0}")]
    Resolve(String),
    #[error("quic: {0}")]
    Quic(String),
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// Where the hub is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct HubTarget {
    /// `host:port` as configured.
    pub address: String,
    /// Directory with `ca.crt.pem`, `client.crt.pem`, `client.key.pem` from enrollment.
    pub tls_dir: PathBuf,
}

fn read(path: &Path) -> Result<Vec<u8>, SyncError> {
    std::fs::read(path).map_err(|source| SyncError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Builds the client endpoint; fails early (at startup) when enrollment files are missing.
pub fn client_endpoint(tls_dir: &Path) -> Result<Endpoint, SyncError> {
    let config = client_config(tls_dir)?;
    let bind: SocketAddr = "0.0.0.0:0"
        .parse()
        .map_err(|_| SyncError::Quic("bind address".into()))?;
    let mut endpoint = Endpoint::client(bind).map_err(|e| SyncError::Quic(e.to_string()))?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// The QUIC client configuration of the site in `tls_dir`: TLS 1.3 with its certificate,
/// the CA as the only root, ALPN, keep-alive and idle timeout.
pub fn client_config(tls_dir: &Path) -> Result<quinn::ClientConfig, SyncError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = CertificateDer::from_pem_slice(&read(&tls_dir.join("ca.crt.pem"))?)
        .map_err(|e| SyncError::Tls(format!("ca.crt.pem: {e}")))?;
    let cert = CertificateDer::from_pem_slice(&read(&tls_dir.join("client.crt.pem"))?)
        .map_err(|e| SyncError::Tls(format!("client.crt.pem: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(&read(&tls_dir.join("client.key.pem"))?)
        .map_err(|e| SyncError::Tls(format!("client.key.pem: {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(ca)
        .map_err(|e| SyncError::Tls(format!("ca.crt.pem: {e}")))?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| SyncError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(vec![cert], key)
        .map_err(|e| SyncError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![sync_protocol::ALPN_V1.to_vec()];
    // Never 0-RTT: replayable early data is no place for writes.
    tls.enable_early_data = false;
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| SyncError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = TransportConfig::default();
    transport.keep_alive_interval(Some(KEEP_ALIVE));
    transport.max_idle_timeout(Some(
        Duration::from_secs(30)
            .try_into()
            .map_err(|_| SyncError::Quic("idle timeout out of range".into()))?,
    ));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// A small jitter source: the sub-second clock, mixed. Backoff jitter only has to keep many
/// sites from reconnecting in lockstep, not be unpredictable.
fn jitter(max: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mixed = u64::from(nanos).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    let max_ms = max.as_millis().max(1) as u64;
    Duration::from_millis(mixed % max_ms)
}

/// Runs until `shutdown` turns true: connect, sync, and back off after failures.
pub async fn run(
    state: AppState,
    endpoint: Endpoint,
    target: HubTarget,
    config: SessionConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut delay = RETRY_DELAY_MIN;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let started = Instant::now();
        match connect_and_sync(&state, &endpoint, &target, config.clone(), &mut shutdown).await {
            Ok(()) => tracing::info!("sync connection closed"),
            Err(e) => tracing::warn!(error = %e, hub = %target.address, "sync connection failed"),
        }
        state.connected.store(false, Ordering::Relaxed);
        // A connection that lived a while resets the backoff.
        if started.elapsed() > RETRY_DELAY_MAX {
            delay = RETRY_DELAY_MIN;
        }
        let wait = delay + jitter(delay / 2 + Duration::from_millis(1));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // A dropped sender is a shutdown too; without this the loop would spin.
            changed = shutdown.changed() => if changed.is_err() { break },
        }
        delay = (delay * 2).min(RETRY_DELAY_MAX);
    }
    endpoint.close(0u32.into(), b"shutting down");
    endpoint.wait_idle().await;
}

async fn connect_and_sync(
    state: &AppState,
    endpoint: &Endpoint,
    target: &HubTarget,
    config: SessionConfig,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), SyncError> {
    let addr = tokio::net::lookup_host(&target.address)
        .await
        .map_err(|_| SyncError::Resolve(target.address.clone()))?
        .next()
        .ok_or_else(|| SyncError::Resolve(target.address.clone()))?;
    let host = target
        .address
        .rsplit_once(':')
        .map_or(target.address.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| SyncError::Tls(format!("{host} is not a valid server name")))?;
    let conn = endpoint
        .connect(addr, &server_name.to_str())
        .map_err(|e| SyncError::Quic(e.to_string()))?
        .await
        .map_err(|e| SyncError::Quic(e.to_string()))?;
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| SyncError::Quic(e.to_string()))?;
    let store = &state.store;
    let origin = Instant::now();
    let now = || origin.elapsed();
    let mut session = EdgeSession::new(config, store.down_cursor().await?, now());
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut out = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut outbox_poll = tokio::time::interval(OUTBOX_POLL_INTERVAL);
    let mut ticks: u64 = 0;
    let mut repairing = false;
    loop {
        match drive_edge(&mut session, store, now()).await {
            Ok(report) => {
                if report.connected {
                    state.connected.store(true, Ordering::Relaxed);
                    tracing::info!(hub = %target.address, "connected to the hub");
                    // After a restore, compare every record with the hub's copy.
                    if matches!(store.meta(crate::backup::REPAIR_PENDING).await, Ok(Some(_))) {
                        tracing::info!("store restored from a backup: repairing against the hub");
                        session.start_repair();
                        repairing = true;
                    }
                    // The hub learns the backlog at once, then every few seconds.
                    if let Ok(status) = store.sync_status().await {
                        session.send_status(now(), status);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "store failure during sync; reconnecting"),
        }
        if repairing && !session.repair_in_progress() {
            repairing = false;
            match store.delete_meta(crate::backup::REPAIR_PENDING).await {
                Ok(()) => tracing::info!("repair finished"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot clear the repair mark; will repair again")
                }
            }
        }
        out.clear();
        while let Some(frame) = session.poll_transmit() {
            out.extend_from_slice(&frame);
        }
        if !out.is_empty() {
            send.write_all(&out)
                .await
                .map_err(|e| SyncError::Quic(e.to_string()))?;
        }
        if session.is_closed() {
            if let Some(reason) = session.close_reason() {
                tracing::info!(?reason, "sync session closed");
            }
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
            conn.close(0u32.into(), b"");
            return Ok(());
        }
        let deadline = session
            .poll_timeout()
            .map(|t| origin + t)
            .unwrap_or_else(|| Instant::now() + KEEP_ALIVE);
        tokio::select! {
            r = recv.read(&mut buf) => match r {
                Ok(Some(n)) => session.handle_stream_bytes(now(), &buf[..n]),
                Ok(None) => return Err(SyncError::Quic("the hub finished the stream".into())),
                Err(e) => return Err(SyncError::Quic(e.to_string())),
            },
            () = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(now()),
            () = state.outbox_notify.notified() => session.outbox_grew(),
            _ = outbox_poll.tick() => {
                session.outbox_grew();
                ticks += 1;
                if ticks.is_multiple_of(STATUS_EVERY_TICKS) {
                    match store.sync_status().await {
                        Ok(status) => session.send_status(now(), status),
                        Err(e) => tracing::warn!(error = %e, "cannot read the outbox status"),
                    }
                }
            }
            _ = shutdown.changed() => session.close(now(), ErrorCode::ShuttingDown, "edge agent shutting down"),
        }
    }
}

/// What a probe of the hub found: it accepted this site and told its time.
#[derive(Debug, Clone)]
pub struct Probe {
    pub site_id: shared_model::SiteId,
    pub hub_time: shared_model::Timestamp,
    pub round_trip: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0}")]
    Setup(#[from] SyncError),
    #[error("no answer from {address} over QUIC (UDP) within {secs} s")]
    NoAnswer { address: String, secs: u64 },
    #[error("QUIC connection to {address} failed: {message}")]
    Connect { address: String, message: String },
    #[error("the hub refused the session: {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
}

/// Connects with the enrollment files, says hello and waits for the hub's welcome, then
/// closes: what `edge-agent doctor` and `install` use to prove sync will work (UDP open,
/// certificate accepted, site not revoked) and to read the hub's clock.
pub async fn probe(tls_dir: &Path, address: &str, timeout: Duration) -> Result<Probe, ProbeError> {
    let endpoint = client_endpoint(tls_dir)?;
    let started = Instant::now();
    let no_answer = || ProbeError::NoAnswer {
        address: address.to_owned(),
        secs: timeout.as_secs(),
    };
    let result = tokio::time::timeout(timeout, async {
        let addr = tokio::net::lookup_host(address)
            .await
            .map_err(|_| SyncError::Resolve(address.to_owned()))?
            .next()
            .ok_or_else(|| SyncError::Resolve(address.to_owned()))?;
        let host = address
            .rsplit_once(':')
            .map_or(address, |(h, _)| h)
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let connect_err = |e: String| ProbeError::Connect {
            address: address.to_owned(),
            message: e,
        };
        let conn = endpoint
            .connect(addr, &host)
            .map_err(|e| connect_err(e.to_string()))?
            .await
            .map_err(|e| match e {
                quinn::ConnectionError::TimedOut => no_answer(),
                other => connect_err(other.to_string()),
            })?;
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| connect_err(e.to_string()))?;
        let origin = Instant::now();
        let mut session = EdgeSession::new(SessionConfig::default(), 0, Duration::ZERO);
        let mut buf = vec![0u8; READ_BUFFER_BYTES];
        loop {
            let mut out = Vec::new();
            while let Some(frame) = session.poll_transmit() {
                out.extend_from_slice(&frame);
            }
            if !out.is_empty() {
                send.write_all(&out)
                    .await
                    .map_err(|e| connect_err(e.to_string()))?;
            }
            while let Some(event) = session.poll_event() {
                match event {
                    sync_protocol::EdgeEvent::Connected {
                        site_id, hub_time, ..
                    } => {
                        let round_trip = started.elapsed();
                        session.close(origin.elapsed(), ErrorCode::ShuttingDown, "probe done");
                        let mut out = Vec::new();
                        while let Some(frame) = session.poll_transmit() {
                            out.extend_from_slice(&frame);
                        }
                        let _ = send.write_all(&out).await;
                        let _ = send.finish();
                        conn.close(0u32.into(), b"probe done");
                        return Ok(Probe {
                            site_id,
                            hub_time,
                            round_trip,
                        });
                    }
                    sync_protocol::EdgeEvent::Closed(reason) => {
                        let (code, message) = match reason {
                            sync_protocol::CloseReason::Local { code, message }
                            | sync_protocol::CloseReason::Remote { code, message } => {
                                (code, message)
                            }
                        };
                        return Err(ProbeError::Refused { code, message });
                    }
                    _ => {}
                }
            }
            match recv.read(&mut buf).await {
                Ok(Some(n)) => session.handle_stream_bytes(origin.elapsed(), &buf[..n]),
                Ok(None) => {
                    return Err(connect_err("the hub closed the stream".into()));
                }
                Err(quinn::ReadError::ConnectionLost(
                    quinn::ConnectionError::ApplicationClosed(c),
                )) => {
                    return Err(ProbeError::Refused {
                        code: ErrorCode::Unauthorized,
                        message: String::from_utf8_lossy(&c.reason).into_owned(),
                    });
                }
                Err(e) => return Err(connect_err(e.to_string())),
            }
        }
    })
    .await;
    endpoint.close(0u32.into(), b"");
    match result {
        Ok(r) => r,
        Err(_) => Err(no_answer()),
    }
}
