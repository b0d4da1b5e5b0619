//! The QUIC sync server: TLS 1.3 with required client certificates, ALPN per protocol major
//! version, one `HubSession` per connection driven against the Postgres store.
//!
//! The site of a connection comes only from its verified client certificate. A connection
//! limit bounds the number of sessions; each session's memory is bounded by the protocol
//! limits (frame size, window, transmit queue) and a fixed read buffer. A bad frame closes
//! that session with an error frame and is counted; other sessions are not affected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quinn::{Endpoint, Incoming, TransportConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use shared_model::{SiteId, Timestamp};
use sync_protocol::driver::drive_hub;
use sync_protocol::message::{ErrorCode, RenewOutcome};
use sync_protocol::session::{CloseReason, HubSession, SessionConfig};
use tokio::sync::{Semaphore, watch};

use crate::certs::Admission;
use crate::db::store::{PgHubStore, scoped};
use crate::pki::{Ca, CertFacts, site_from_cert};

/// Concurrent connections per hub instance.
pub const CONNECTIONS_MAX: usize = 1_024;
/// Bytes read from a stream at a time: the per-connection read buffer.
pub const READ_BUFFER_BYTES: usize = 64 * 1024;
/// Most bytes taken from the stream before the session's work is driven: about
/// `INGEST_EVENTS_MAX` typical events (84 bytes each on the wire).
const GROUP_READ_BYTES_MAX: usize = 1 << 20;
/// QUIC flow-control window per connection: room for the session's batches in flight
/// (16 × 2,048 events × 84 bytes ≈ 2.75 MB), so a draining edge never waits on the window
/// while the hub ingests. Buffers fill only as data arrives; 1,024 connections × 3 MiB bounds
/// what the hub can be made to hold.
const STREAM_WINDOW_BYTES: u32 = 3 << 20;
/// How often a connected session looks for new down-sync entries even without a wake-up: the
/// fallback when a notification was lost (the listener reconnecting, say).
pub const DOWN_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The PostgreSQL channel on which every hub instance hears "SITE has new down-sync entries".
pub const DOWN_CHANNEL: &str = "mes_down";
/// Down polls between two checks that the site is still allowed (5 × 1 s).
pub const REVOCATION_CHECK_TICKS: u64 = 5;
/// QUIC idle timeout; the edge pings every 10 s.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("tls: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("pki: {0}")]
    Pki(#[from] crate::pki::PkiError),
    #[error("pem: {0}")]
    Pem(String),
    #[error("quic: {0}")]
    Quic(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Wake-ups for connected sessions when their site's down log grows, fed by PostgreSQL
/// `NOTIFY` so a release made through any hub instance reaches the edge at once. A watch
/// channel per site never loses a wake-up between two waits.
#[derive(Debug, Default)]
pub struct DownSignals {
    sites: std::sync::Mutex<std::collections::HashMap<String, watch::Sender<u64>>>,
}

impl DownSignals {
    pub fn subscribe(&self, site: &SiteId) -> watch::Receiver<u64> {
        self.sites
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(site.as_str().to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    pub fn signal(&self, site: &str) {
        if let Some(tx) = self
            .sites
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(site)
        {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes every session (after the listener reconnected and may have missed some).
    pub fn signal_all(&self) {
        for tx in self
            .sites
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// Listens for down-log notifications until `shutdown`; reconnects after errors.
pub async fn listen_down(
    pool: sqlx::PgPool,
    signals: Arc<DownSignals>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "down-log listener cannot connect; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shutdown.changed() => return,
                }
            }
        };
        if let Err(e) = listener.listen(DOWN_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        signals.signal_all();
        loop {
            tokio::select! {
                n = listener.recv() => match n {
                    Ok(n) => signals.signal(n.payload()),
                    Err(e) => {
                        tracing::warn!(error = %e, "down-log listener lost; reconnecting");
                        break;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// The `reason` label of `mes_sync_frames_rejected_total`.
pub fn reason_name(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::UnsupportedVersion => "unsupported_version",
        ErrorCode::MalformedFrame => "malformed_frame",
        ErrorCode::FrameTooLarge => "frame_too_large",
        ErrorCode::UnknownMessageType => "unknown_message_type",
        ErrorCode::UnexpectedMessage => "unexpected_message",
        ErrorCode::InvalidEvent => "invalid_event",
        ErrorCode::SiteMismatch => "site_mismatch",
        ErrorCode::WindowExceeded => "window_exceeded",
        ErrorCode::SequenceViolation => "sequence_violation",
        ErrorCode::LimitExceeded => "limit_exceeded",
        ErrorCode::Timeout => "timeout",
        ErrorCode::Internal => "internal",
        ErrorCode::Unauthorized => "unauthorized",
        ErrorCode::ShuttingDown => "shutting_down",
        ErrorCode::Other(_) => "other",
    }
}

/// Counters the hub's `/metrics` shows.
#[derive(Debug, Default)]
pub struct SyncMetrics {
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
    pub sessions_failed: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub events_ingested: AtomicU64,
    /// Site certificates renewed over sync sessions, and renewals refused.
    pub certificates_renewed: AtomicU64,
    pub renewals_refused: AtomicU64,
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds the QUIC server endpoint with a fresh server certificate from the CA.
pub fn endpoint(
    ca: &Ca,
    server_names: &[String],
    listen: std::net::SocketAddr,
) -> Result<Endpoint, ServerError> {
    let issued = ca.issue_server(server_names)?;
    let cert = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes())
        .map_err(|e| ServerError::Pem(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(|e| ServerError::Pem(e.to_string()))?;
    let ca_cert = CertificateDer::from_pem_slice(ca.cert_pem().as_bytes())
        .map_err(|e| ServerError::Pem(e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), ring()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![cert], key)?;
    tls.alpn_protocols = vec![sync_protocol::ALPN_V1.to_vec()];
    // No 0-RTT: early data is replayable and every message is an authenticated write.
    tls.max_early_data_size = 0;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| ServerError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = TransportConfig::default();
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.stream_receive_window(STREAM_WINDOW_BYTES.into());
    transport.receive_window(STREAM_WINDOW_BYTES.into());
    transport.max_idle_timeout(Some(
        IDLE_TIMEOUT
            .try_into()
            .map_err(|_| ServerError::Quic("idle timeout out of range".into()))?,
    ));
    config.transport_config(Arc::new(transport));
    Ok(Endpoint::server(config, listen)?)
}

fn wall_now() -> Timestamp {
    Timestamp::from_micros(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0),
    )
}

/// Accepts connections until `shutdown` turns true, then closes them with `shutting_down`.
/// `ca` signs the certificates edges renew over their sessions.
pub async fn serve(
    endpoint: Endpoint,
    store: PgHubStore,
    ca: Arc<Ca>,
    config: SessionConfig,
    metrics: Arc<SyncMetrics>,
    signals: Arc<DownSignals>,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.changed() => None,
        };
        let Some(incoming) = incoming else { break };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
            crate::metrics::FRAMES_REJECTED.add(&["connection_limit"], 1);
            incoming.refuse();
            continue;
        };
        let (store, config, metrics, shutdown) = (
            store.clone(),
            config.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        let (signals, ca) = (signals.clone(), ca.clone());
        tokio::spawn(async move {
            metrics.connections_open.fetch_add(1, Ordering::Relaxed);
            metrics.connections_total.fetch_add(1, Ordering::Relaxed);
            if let Err(e) =
                connection(incoming, &store, &ca, config, &metrics, &signals, shutdown).await
            {
                tracing::info!(error = %e, "sync connection ended");
            }
            metrics.connections_open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
    endpoint.wait_idle().await;
}

async fn set_connected(
    store: &PgHubStore,
    site: &SiteId,
    connected: bool,
    agent: Option<&str>,
    cert_serial: Option<&str>,
) {
    let result = async {
        let mut tx = scoped(store.pool(), site).await?;
        crate::db::query(
            "UPDATE sites SET connected = $2, last_seen_at = now(),
                 agent_version = coalesce($3, agent_version),
                 cert_serial = coalesce($4, cert_serial) WHERE site_id = $1",
        )
        .bind(site.as_str())
        .bind(connected)
        .bind(agent)
        .bind(cert_serial)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }
    .await;
    if let Err(e) = result {
        tracing::warn!(site = %site, error = %e, "could not update site status");
    }
}

/// Whether a live session must end now: its certificate expired, or it or its site was
/// revoked (a database error keeps the session: the check runs again in 5 s).
async fn still_allowed(store: &PgHubStore, site: &SiteId, cert: &CertFacts) -> Option<String> {
    if time::OffsetDateTime::now_utc() >= cert.not_after {
        return Some(format!(
            "certificate {} expired at {}: reconnect with the renewed one",
            cert.serial, cert.not_after
        ));
    }
    match crate::certs::still_valid(store.pool(), site, &cert.serial).await {
        Ok(Admission::Allowed) => None,
        Ok(Admission::Refused(why)) => Some(why),
        Err(e) => {
            tracing::warn!(site = %site, error = %e, "revocation check failed; will retry");
            None
        }
    }
}

async fn connection(
    incoming: Incoming,
    store: &PgHubStore,
    ca: &Ca,
    config: SessionConfig,
    metrics: &SyncMetrics,
    signals: &DownSignals,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let conn = incoming.await.map_err(|e| e.to_string())?;
    let certs = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or("no client certificate")?;
    let leaf = certs.first().ok_or("empty client certificate chain")?;
    let site = site_from_cert(leaf).map_err(|e| e.to_string())?;
    let cert = CertFacts::from_der(leaf).map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
    let origin = Instant::now();
    let now = || origin.elapsed();
    let mut session = HubSession::new(config, site.clone(), wall_now(), now());
    // The certificate is checked against the registry before anything of the edge's is read:
    // one query per connection, no cache, so a revocation refuses the next connection.
    match crate::certs::admit(store.pool(), &site, &cert).await {
        Ok(Admission::Allowed) => {}
        Ok(Admission::Refused(why)) => session.close(now(), ErrorCode::Unauthorized, why),
        Err(e) => session.close(now(), ErrorCode::Internal, format!("database: {e}")),
    }
    tracing::info!(site = %site, serial = %cert.serial, remote = %conn.remote_address(), "sync connection");
    let mut buf = vec![0u8; READ_BUFFER_BYTES];
    let mut out = Vec::with_capacity(READ_BUFFER_BYTES);
    let mut down_wake = signals.subscribe(&site);
    let mut down_poll = tokio::time::interval(DOWN_POLL_INTERVAL);
    down_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut connected = false;
    let mut ticks: u64 = 0;
    loop {
        match drive_hub(&mut session, store, now()).await {
            Ok(report) => {
                metrics
                    .events_ingested
                    .fetch_add(report.events_ingested, Ordering::Relaxed);
                if report.connected {
                    connected = true;
                    set_connected(store, &site, true, None, Some(&cert.serial)).await;
                }
                if let Some(csr) = report.renewal_request {
                    // The site is the session's (its TLS certificate's), never the CSR's.
                    let outcome = crate::certs::renew(store.pool(), ca, &site, &cert, &csr).await;
                    let counter = match outcome {
                        RenewOutcome::Issued { .. } => &metrics.certificates_renewed,
                        RenewOutcome::Refused { .. } => &metrics.renewals_refused,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = session.send_renewal(now(), outcome) {
                        tracing::warn!(site = %site, error = %e, "cannot answer the renewal");
                    }
                }
            }
            Err(e) => {
                metrics.sessions_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(site = %site, error = %e, "sync store failure; session closed");
            }
        }
        out.clear();
        while let Some(frame) = session.poll_transmit() {
            out.extend_from_slice(&frame);
        }
        if !out.is_empty() && send.write_all(&out).await.is_err() {
            break;
        }
        if session.is_closed() {
            if let Some(CloseReason::Local { code, message }) = session.close_reason() {
                if *code != ErrorCode::ShuttingDown && *code != ErrorCode::Timeout {
                    metrics.protocol_errors.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::FRAMES_REJECTED.add(&[reason_name(*code)], 1);
                }
                tracing::info!(site = %site, ?code, %message, "session closed by the hub");
            }
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
            break;
        }
        let deadline = session
            .poll_timeout()
            .map(|t| origin + t)
            .unwrap_or_else(|| Instant::now() + IDLE_TIMEOUT);
        tokio::select! {
            r = recv.read(&mut buf) => match r {
                Ok(Some(n)) => {
                    session.handle_stream_bytes(now(), &buf[..n]);
                    // Take in whatever else has already arrived, without waiting, so that a
                    // backlog's consecutive batches reach the store together: one ingest
                    // (one commit) per group instead of one per 2,048-event frame. `read` is
                    // cancel-safe, so a poll that finds nothing loses nothing.
                    let mut taken = n;
                    while taken < GROUP_READ_BYTES_MAX && !session.is_closed() {
                        match futures_util::FutureExt::now_or_never(recv.read(&mut buf)) {
                            Some(Ok(Some(m))) => {
                                session.handle_stream_bytes(now(), &buf[..m]);
                                taken += m;
                            }
                            // The end or an error shows up again at the next `select!`.
                            Some(Ok(None) | Err(_)) | None => break,
                        }
                    }
                }
                Ok(None) | Err(_) => break,
            },
            () = tokio::time::sleep_until(deadline.into()) => session.handle_timeout(now()),
            _ = down_wake.changed() => session.down_available(),
            _ = down_poll.tick() => {
                session.down_available();
                ticks += 1;
                // A revoked site or certificate, or an expired certificate, is cut off within
                // seconds, not at its next reconnect.
                if ticks.is_multiple_of(REVOCATION_CHECK_TICKS)
                    && session.is_established()
                    && let Some(why) = still_allowed(store, &site, &cert).await
                {
                    session.close(now(), ErrorCode::Unauthorized, why);
                }
            }
            _ = shutdown.changed() => session.close(now(), ErrorCode::ShuttingDown, "hub shutting down"),
        }
    }
    if connected {
        set_connected(store, &site, false, None, None).await;
    }
    conn.close(0u32.into(), b"");
    Ok(())
}
