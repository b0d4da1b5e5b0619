//! The QUIC sync server: TLS 1.3 with required client certificates, ALPN per protocol major
//! version, one `HubSession` per connection driven against the Postgres store.
//!
//! The site of a connection comes only from its verified client certificate. Admission has
//! three stages, each bounded, so that no peer can hold a slot another site needs:
//!
//! 1. An Initial from an address not yet validated is answered with a QUIC Retry and no state
//!    (a spoofed source never sees the token, so it costs the hub one packet).
//! 2. A validated peer's TLS handshake runs under a handshake slot ([`HANDSHAKES_MAX`] in all,
//!    [`HANDSHAKES_PER_SOURCE_MAX`] per source address) for at most [`HANDSHAKE_TIMEOUT`].
//! 3. Only a finished handshake with a verified certificate takes a connection slot
//!    ([`CONNECTIONS_MAX`]); a site holds at most [`SITE_CONNECTIONS_MAX`] of them (a newer
//!    connection replaces the site's oldest), and must open its stream within
//!    [`ACCEPT_STREAM_TIMEOUT`].
//!
//! Each session's memory is bounded by the protocol limits (frame size, window, transmit
//! queue) and a fixed read buffer. A bad frame closes that session with an error frame and is
//! counted; other sessions are not affected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::{Connection, Endpoint, Incoming, TransportConfig};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use rustls::server::WebPkiClientVerifier;
use shared_model::{SiteId, Timestamp};
use sync_io::{Clock, End, Flow, PumpConfig};
use sync_protocol::close_code;
use sync_protocol::driver::drive_hub;
use sync_protocol::message::{ErrorCode, RenewOutcome};
use sync_protocol::session::{CloseReason, HubSession, SessionConfig};
use sync_protocol::store::HubStore as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, watch};

use crate::certs::Admission;
use crate::ingest::PgHubStore;
use crate::pki::{Ca, CertFacts, site_from_cert};

/// Connections per hub instance past their handshake (a session each, or about to be).
pub const CONNECTIONS_MAX: usize = 1_024;
/// Live connections of one site per hub instance: its session plus one more (a reconnect
/// after a network blip while the old connection has not timed out yet, or `edge-agent
/// doctor`'s probe beside the running agent). A further one replaces the oldest.
pub const SITE_CONNECTIONS_MAX: usize = 2;
/// TLS handshakes in progress per hub instance (validated addresses only).
pub const HANDSHAKES_MAX: usize = 512;
/// TLS handshakes in progress from one source (an IPv4 address, an IPv6 /64): one host
/// cannot take every handshake slot. Above the 50 at once of a fleet reconnecting from behind
/// one NAT in `bench-fleet`.
pub const HANDSHAKES_PER_SOURCE_MAX: usize = 64;
/// Longest TLS handshake: a peer that stalls half-way gives its slot back after this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the edge's stream after the handshake; the edge opens it at once.
pub const ACCEPT_STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Connection attempts quinn holds before the accept loop decides on them (it decides at
/// once: retry, refuse or start the handshake).
pub const INCOMING_MAX: usize = 4_096;
/// Bytes quinn buffers per undecided connection attempt, and for all of them together.
pub const INCOMING_BUFFER_BYTES: u64 = 64 * 1024;
pub const INCOMING_BUFFER_BYTES_TOTAL: u64 = 8 << 20;
/// Bytes read from a stream at a time: the per-connection read buffer.
pub use sync_io::READ_BUFFER_BYTES;
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

/// Why the hub turned a connection attempt away or closed a connection before its session:
/// the `reason` label of `mes_sync_connections_refused_total` (a fixed set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Every handshake slot of the instance was taken.
    HandshakeLimit,
    /// The source address already had its share of handshakes in progress.
    SourceLimit,
    /// The handshake did not finish within [`HANDSHAKE_TIMEOUT`].
    HandshakeTimeout,
    /// The handshake failed (bad certificate, wrong ALPN, the peer went away).
    HandshakeFailed,
    /// Every connection slot of the instance was taken.
    ConnectionLimit,
    /// A CA-signed certificate that names no valid site.
    Unauthorized,
    /// No stream within [`ACCEPT_STREAM_TIMEOUT`].
    StreamTimeout,
}

impl Refusal {
    pub const ALL: [Refusal; 7] = [
        Refusal::HandshakeLimit,
        Refusal::SourceLimit,
        Refusal::HandshakeTimeout,
        Refusal::HandshakeFailed,
        Refusal::ConnectionLimit,
        Refusal::Unauthorized,
        Refusal::StreamTimeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::HandshakeLimit => "handshake_limit",
            Refusal::SourceLimit => "source_limit",
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::HandshakeFailed => "handshake_failed",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::Unauthorized => "unauthorized",
            Refusal::StreamTimeout => "stream_timeout",
        }
    }
}

/// Counters the hub's `/metrics` shows.
#[derive(Debug, Default)]
pub struct SyncMetrics {
    /// Connections holding a connection slot (past the handshake).
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    /// Site certificates renewed over sync sessions, and renewals refused.
    pub certificates_renewed: AtomicU64,
    pub renewals_refused: AtomicU64,
    /// Refused at the connection limit (also in `refused` as `connection_limit`).
    pub connections_refused: AtomicU64,
    /// TLS handshakes in progress.
    pub handshakes_open: AtomicU64,
    /// Initials answered with a Retry (address not validated yet).
    pub retries: AtomicU64,
    /// Connections closed because a newer one of their site took their place.
    pub sessions_replaced: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    pub sessions_failed: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub events_ingested: AtomicU64,
}

impl SyncMetrics {
    /// Attempts turned away or closed for `reason` so far.
    pub fn refused(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize].load(Ordering::Relaxed)
    }

    fn refuse(&self, reason: Refusal) {
        self.refused[reason as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// Decrements a gauge when dropped, so every exit path of a task counts itself out.
struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    fn up(g: &'a AtomicU64) -> Self {
        g.fetch_add(1, Ordering::Relaxed);
        Self(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The source a handshake is counted against: the IPv4 address, or the IPv6 /64 (one host
/// owns a whole /64).
fn source_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// Handshakes in progress, in all and per source.
#[derive(Debug, Default)]
struct Handshakes {
    inner: std::sync::Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One handshake's place in [`Handshakes`], given back when dropped.
struct HandshakeSlot {
    owner: Arc<Handshakes>,
    source: IpAddr,
}

impl Handshakes {
    fn begin(self: &Arc<Self>, ip: IpAddr) -> Result<HandshakeSlot, Refusal> {
        let source = source_key(ip);
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_source) = &mut *g;
        if *total >= HANDSHAKES_MAX {
            return Err(Refusal::HandshakeLimit);
        }
        let n = by_source.entry(source).or_insert(0);
        if *n >= HANDSHAKES_PER_SOURCE_MAX {
            return Err(Refusal::SourceLimit);
        }
        *n += 1;
        *total += 1;
        Ok(HandshakeSlot {
            owner: self.clone(),
            source,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut g = self.owner.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (total, by_source) = &mut *g;
        *total -= 1;
        if let Some(n) = by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.source);
            }
        }
    }
}

#[derive(Debug)]
struct Live {
    id: u64,
    replaced: Arc<Notify>,
    /// Its session has been welcomed (it owns the site's `connected` flag).
    established: bool,
}

/// The live connections of each site on this instance, oldest first: at most
/// [`SITE_CONNECTIONS_MAX`] each.
#[derive(Debug, Default)]
pub struct SiteConnections {
    sites: std::sync::Mutex<HashMap<SiteId, Vec<Live>>>,
    next_id: AtomicU64,
}

/// A connection's place among its site's live connections, given back when dropped.
struct SiteSlot {
    owner: Arc<SiteConnections>,
    site: SiteId,
    id: u64,
    /// Notified when a newer connection of the site took this place.
    replaced: Arc<Notify>,
}

impl SiteConnections {
    /// Live connections of `site` on this instance.
    pub fn live(&self, site: &SiteId) -> usize {
        self.sites
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(site)
            .map_or(0, Vec::len)
    }

    /// Takes a place for a new connection of `site`; at the cap the site's oldest connection
    /// loses its place at once (it is told to close) so the count never exceeds the cap.
    /// Returns whether one was replaced.
    fn admit(self: &Arc<Self>, site: &SiteId) -> (SiteSlot, bool) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let replaced = Arc::new(Notify::new());
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let live = sites.entry(site.clone()).or_default();
        let mut evicted = false;
        while live.len() >= SITE_CONNECTIONS_MAX {
            // `notify_one` keeps the wake-up for a task not waiting yet.
            live.remove(0).replaced.notify_one();
            evicted = true;
        }
        live.push(Live {
            id,
            replaced: replaced.clone(),
            established: false,
        });
        drop(sites);
        (
            SiteSlot {
                owner: self.clone(),
                site: site.clone(),
                id,
                replaced,
            },
            evicted,
        )
    }
}

impl SiteSlot {
    fn set_established(&self) {
        let mut sites = self.owner.sites.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = sites
            .get_mut(&self.site)
            .and_then(|v| v.iter_mut().find(|l| l.id == self.id))
        {
            l.established = true;
        }
    }

    /// Whether another live connection of the site has a welcomed session: then that one owns
    /// the site's `connected` flag and this one must not clear it when it ends.
    fn other_established(&self) -> bool {
        let sites = self.owner.sites.lock().unwrap_or_else(|p| p.into_inner());
        sites
            .get(&self.site)
            .is_some_and(|v| v.iter().any(|l| l.id != self.id && l.established))
    }
}

impl Drop for SiteSlot {
    fn drop(&mut self) {
        let mut sites = self.owner.sites.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(v) = sites.get_mut(&self.site) {
            v.retain(|l| l.id != self.id);
            if v.is_empty() {
                sites.remove(&self.site);
            }
        }
    }
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
    config
        .max_incoming(INCOMING_MAX)
        .incoming_buffer_size(INCOMING_BUFFER_BYTES)
        .incoming_buffer_size_total(INCOMING_BUFFER_BYTES_TOTAL);
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

/// What every connection task shares.
struct Shared {
    store: PgHubStore,
    /// Signs the certificates edges renew over their sessions.
    ca: Arc<Ca>,
    config: SessionConfig,
    metrics: Arc<SyncMetrics>,
    signals: Arc<DownSignals>,
    permits: Arc<Semaphore>,
    sites: Arc<SiteConnections>,
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
    let shared = Arc::new(Shared {
        store,
        ca,
        config,
        metrics: metrics.clone(),
        signals,
        permits: Arc::new(Semaphore::new(CONNECTIONS_MAX)),
        sites: Arc::new(SiteConnections::default()),
    });
    let handshakes = Arc::new(Handshakes::default());
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.changed() => None,
        };
        let Some(incoming) = incoming else { break };
        // An address that has not proved it receives our packets gets a Retry and no state:
        // a spoofed Initial costs one packet, never a handshake or a connection slot.
        if !incoming.remote_address_validated() {
            metrics.retries.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            continue;
        }
        let slot = match handshakes.begin(incoming.remote_address().ip()) {
            Ok(slot) => slot,
            Err(reason) => {
                metrics.refuse(reason);
                incoming.refuse();
                continue;
            }
        };
        let (shared, shutdown) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(incoming, slot, &shared, shutdown).await {
                tracing::info!(error = %e, "sync connection ended");
            }
        });
    }
    endpoint.close(0u32.into(), b"shutting down");
    endpoint.wait_idle().await;
}

/// Runs the TLS handshake under its slot and deadline; the connection and its site.
async fn handshake(
    incoming: Incoming,
    slot: HandshakeSlot,
    metrics: &SyncMetrics,
) -> Result<(Connection, SiteId, CertFacts), String> {
    let _in_progress = Gauge::up(&metrics.handshakes_open);
    let connecting = incoming.accept().map_err(|e| {
        metrics.refuse(Refusal::HandshakeFailed);
        e.to_string()
    })?;
    // Dropping an unfinished `Connecting` closes it, which frees quinn's state too.
    let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => {
            metrics.refuse(Refusal::HandshakeFailed);
            return Err(format!("handshake: {e}"));
        }
        Err(_) => {
            metrics.refuse(Refusal::HandshakeTimeout);
            return Err(format!("no handshake within {HANDSHAKE_TIMEOUT:?}"));
        }
    };
    drop(slot);
    let site = conn
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| "no client certificate".to_owned())
        .and_then(|certs| {
            let leaf = certs.first().ok_or("empty client certificate chain")?;
            let site = site_from_cert(leaf).map_err(|e| e.to_string())?;
            let facts = CertFacts::from_der(leaf).map_err(|e| e.to_string())?;
            Ok((site, facts))
        });
    match site {
        Ok((site, facts)) => Ok((conn, site, facts)),
        Err(e) => {
            metrics.refuse(Refusal::Unauthorized);
            conn.close(close_code::UNAUTHORIZED.into(), e.as_bytes());
            Err(e)
        }
    }
}

async fn set_connected(
    store: &PgHubStore,
    site: &SiteId,
    connected: bool,
    agent: Option<&str>,
    cert_serial: Option<&str>,
) {
    let result = crate::db::update_site(
        store.pool(),
        site,
        "UPDATE sites SET connected = $2, last_seen_at = now(),
             agent_version = coalesce($3, agent_version),
             cert_serial = coalesce($4, cert_serial) WHERE site_id = $1",
        |q| q.bind(connected).bind(agent).bind(cert_serial),
    )
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
    slot: HandshakeSlot,
    shared: &Shared,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), String> {
    let Shared {
        store,
        ca: _,
        config,
        metrics,
        signals,
        permits,
        sites,
    } = shared;
    let (conn, site, cert) = handshake(incoming, slot, metrics).await?;
    // A connection slot only for a finished handshake with a verified certificate.
    let Ok(_permit): Result<OwnedSemaphorePermit, _> = permits.clone().try_acquire_owned() else {
        metrics.connections_refused.fetch_add(1, Ordering::Relaxed);
        metrics.refuse(Refusal::ConnectionLimit);
        crate::metrics::FRAMES_REJECTED.add(&["connection_limit"], 1);
        conn.close(
            close_code::BUSY.into(),
            b"the hub instance is at its connection limit; reconnect later",
        );
        return Err(format!("{site}: refused at the connection limit"));
    };
    let _open = Gauge::up(&metrics.connections_open);
    metrics.connections_total.fetch_add(1, Ordering::Relaxed);
    let (place, evicted) = sites.admit(&site);
    if evicted {
        tracing::info!(site = %site, "a newer connection replaces the site's oldest");
    }
    let replaced_message = format!("replaced by a newer connection of site {site}");
    let stream = tokio::select! {
        s = tokio::time::timeout(ACCEPT_STREAM_TIMEOUT, conn.accept_bi()) => s,
        () = place.replaced.notified() => {
            metrics.sessions_replaced.fetch_add(1, Ordering::Relaxed);
            conn.close(close_code::REPLACED.into(), replaced_message.as_bytes());
            return Err(format!("{site}: {replaced_message}"));
        }
    };
    let stream = match stream {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => {
            metrics.refuse(Refusal::StreamTimeout);
            conn.close(
                close_code::STREAM_TIMEOUT.into(),
                format!("no stream within {ACCEPT_STREAM_TIMEOUT:?}").as_bytes(),
            );
            return Err(format!(
                "{site}: no stream within {ACCEPT_STREAM_TIMEOUT:?}"
            ));
        }
    };
    let clock = Clock::start();
    let now = || clock.now();
    let mut session = HubSession::new(config.clone(), site.clone(), wall_now(), now());
    // The certificate is checked against the registry before anything of the edge's is read:
    // one query per connection, no cache, so a revocation refuses the next connection.
    match crate::certs::admit(store.pool(), &site, &cert).await {
        Ok(Admission::Allowed) => {}
        Ok(Admission::Refused(why)) => session.close(now(), ErrorCode::Unauthorized, why),
        Err(e) => session.close(now(), ErrorCode::Internal, format!("database: {e}")),
    }
    tracing::info!(site = %site, serial = %cert.serial, remote = %conn.remote_address(), "sync connection");
    let mut down_poll = tokio::time::interval(DOWN_POLL_INTERVAL);
    down_poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut side = HubSide {
        shared,
        site: &site,
        cert: &cert,
        place: &place,
        down_wake: signals.subscribe(&site),
        down_poll,
        shutdown: &mut shutdown,
        ticks: 0,
        connected: false,
        generation_told: None,
    };
    let pump_config = PumpConfig {
        fallback_timeout: IDLE_TIMEOUT,
        group_read_bytes_max: GROUP_READ_BYTES_MAX,
    };
    let end = sync_io::pump(&mut side, &mut session, stream, clock, pump_config).await;
    let connected = side.connected;
    // A failed stream or a finished one ends the connection like a closed session: the edge
    // reconnects and resends whatever was not acked.
    let replaced = match end {
        End::Stopped => true,
        End::Closed | End::PeerFinished | End::Read(_) | End::Write(_) => false,
    };
    if replaced {
        metrics.sessions_replaced.fetch_add(1, Ordering::Relaxed);
        tracing::info!(site = %site, "{replaced_message}");
        conn.close(close_code::REPLACED.into(), replaced_message.as_bytes());
    }
    // The newest welcomed session of the site owns its `connected` flag.
    if connected && !place.other_established() {
        set_connected(store, &site, false, None, None).await;
    }
    conn.close(close_code::DONE.into(), b"");
    Ok(())
}

/// The hub's part of a connection: the PostgreSQL store, metrics, the site's `connected`
/// flag, renewals signed by the CA, down-sync wake-ups and revocation checks, around the
/// shared session pump.
struct HubSide<'a> {
    shared: &'a Shared,
    site: &'a SiteId,
    cert: &'a CertFacts,
    place: &'a SiteSlot,
    down_wake: watch::Receiver<u64>,
    down_poll: tokio::time::Interval,
    shutdown: &'a mut watch::Receiver<bool>,
    /// Down polls so far, for the revocation check every [`REVOCATION_CHECK_TICKS`].
    ticks: u64,
    /// The session was welcomed: it set the site's `connected` flag.
    connected: bool,
    /// The database generation the edge was told (it heals): checked with the revocation.
    generation_told: Option<sync_protocol::message::HubGeneration>,
}

impl sync_io::Side for HubSide<'_> {
    type Session = HubSession;
    type Wake = HubWake;

    async fn drive(&mut self, session: &mut HubSession, now: Duration) {
        let Shared {
            store, ca, metrics, ..
        } = self.shared;
        match drive_hub(session, store, now).await {
            Ok(report) => {
                metrics
                    .events_ingested
                    .fetch_add(report.events_ingested, Ordering::Relaxed);
                if report.generation_told.is_some() {
                    self.generation_told = report.generation_told;
                }
                if report.connected {
                    self.connected = true;
                    self.place.set_established();
                    set_connected(store, self.site, true, None, Some(&self.cert.serial)).await;
                }
                if let Some(csr) = report.renewal_request {
                    // The site is the session's (its TLS certificate's), never the CSR's.
                    let outcome =
                        crate::certs::renew(store.pool(), ca, self.site, self.cert, &csr).await;
                    let counter = match outcome {
                        RenewOutcome::Issued { .. } => &metrics.certificates_renewed,
                        RenewOutcome::Refused { .. } => &metrics.renewals_refused,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    if let Err(e) = session.send_renewal(now, outcome) {
                        tracing::warn!(site = %self.site, error = %e, "cannot answer the renewal");
                    }
                }
            }
            Err(e) => {
                metrics.sessions_failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(site = %self.site, error = %e, "sync store failure; session closed");
            }
        }
    }

    async fn wake(&mut self) -> HubWake {
        tokio::select! {
            _ = self.down_wake.changed() => HubWake::DownGrew,
            _ = self.down_poll.tick() => HubWake::PollTick,
            _ = self.shutdown.changed() => HubWake::Shutdown,
            () = self.place.replaced.notified() => HubWake::Replaced,
        }
    }

    async fn on_wake(&mut self, session: &mut HubSession, wake: HubWake, now: Duration) -> Flow {
        match wake {
            HubWake::DownGrew => session.down_available(),
            HubWake::PollTick => {
                session.down_available();
                self.ticks += 1;
                // A revoked site or certificate, or an expired certificate, is cut off within
                // seconds, not at its next reconnect.
                if self.ticks.is_multiple_of(REVOCATION_CHECK_TICKS)
                    && session.is_established()
                    && let Some(why) = still_allowed(&self.shared.store, self.site, self.cert).await
                {
                    session.close(now, ErrorCode::Unauthorized, why);
                }
                // The database went back in time under this session (a failover behind
                // PgBouncer, a restore): the edge heals only at a session's start, so end this
                // one and let it reconnect.
                if self.ticks.is_multiple_of(REVOCATION_CHECK_TICKS)
                    && let Some(told) = self.generation_told
                    && let Ok(Some(current)) = self.shared.store.generation().await
                    && (current.system_id, current.timeline) != (told.system_id, told.timeline)
                {
                    tracing::warn!(
                        site = %self.site,
                        generation = current.number,
                        "the database changed generation under a session: closing it so the edge heals"
                    );
                    session.close(
                        now,
                        ErrorCode::ShuttingDown,
                        "the hub's database went back in time: reconnect to heal",
                    );
                }
            }
            HubWake::Shutdown => session.close(now, ErrorCode::ShuttingDown, "hub shutting down"),
            // Only between two store calls: whatever was acked is committed, and whatever
            // was not is sent again by the edge (ingest is idempotent).
            HubWake::Replaced => return Flow::Stop,
        }
        Flow::Continue
    }

    fn on_closed(&mut self, session: &HubSession) {
        if let Some(CloseReason::Local { code, message }) = session.close_reason() {
            if *code != ErrorCode::ShuttingDown && *code != ErrorCode::Timeout {
                self.shared
                    .metrics
                    .protocol_errors
                    .fetch_add(1, Ordering::Relaxed);
                crate::metrics::FRAMES_REJECTED.add(&[reason_name(*code)], 1);
            }
            tracing::info!(site = %self.site, ?code, %message, "session closed by the hub");
        }
    }
}

/// What woke a hub session besides the edge.
#[derive(Debug)]
enum HubWake {
    /// The site's down-sync log grew (a `NOTIFY` from any hub instance).
    DownGrew,
    /// The down poll's tick: the fallback for a lost notification, and the clock of the
    /// revocation checks.
    PollTick,
    /// The hub is shutting down.
    Shutdown,
    /// A newer connection of the site took this one's place.
    Replaced,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_site_keeps_at_most_its_cap_and_the_oldest_is_replaced() {
        let sites = Arc::new(SiteConnections::default());
        let a = SiteId::new("SITE_A").unwrap();
        let b = SiteId::new("SITE_B").unwrap();
        let (first, evicted) = sites.admit(&a);
        assert!(!evicted);
        let (second, evicted) = sites.admit(&a);
        assert!(!evicted);
        let (_b, evicted) = sites.admit(&b);
        assert!(!evicted, "another site's connections do not count");
        let (third, evicted) = sites.admit(&a);
        assert!(evicted);
        assert_eq!(sites.live(&a), SITE_CONNECTIONS_MAX);
        // The oldest was told (the wake-up is kept until it waits) and is no longer counted.
        assert!(
            futures_util::FutureExt::now_or_never(first.replaced.notified()).is_some(),
            "the oldest was not told"
        );
        assert!(futures_util::FutureExt::now_or_never(second.replaced.notified()).is_none());
        drop(first);
        assert_eq!(sites.live(&a), SITE_CONNECTIONS_MAX);
        // The connected flag belongs to the newest welcomed session.
        third.set_established();
        assert!(second.other_established());
        assert!(!third.other_established());
        drop(second);
        drop(third);
        assert_eq!(sites.live(&a), 0);
        assert!(
            !sites
                .sites
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&a)
        );
    }

    #[test]
    fn handshakes_are_bounded_in_all_and_per_source() {
        let h = Arc::new(Handshakes::default());
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let mut held: Vec<_> = (0..HANDSHAKES_PER_SOURCE_MAX)
            .map(|_| h.begin(one).ok().unwrap())
            .collect();
        assert_eq!(h.begin(one).err(), Some(Refusal::SourceLimit));
        // The same IPv6 /64 is one source; a mapped IPv4 address is that address.
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(h.begin(mapped).err(), Some(Refusal::SourceLimit));
        assert_eq!(
            source_key("2001:db8::1".parse().unwrap()),
            source_key("2001:db8::ffff:2".parse().unwrap())
        );
        assert_ne!(
            source_key("2001:db8::1".parse().unwrap()),
            source_key("2001:db8:0:1::1".parse().unwrap())
        );
        let mut n = 0u32;
        while held.len() < HANDSHAKES_MAX {
            n += 1;
            held.push(h.begin(IpAddr::from(n.to_be_bytes())).ok().unwrap());
        }
        assert_eq!(
            h.begin("198.51.100.7".parse().unwrap()).err(),
            Some(Refusal::HandshakeLimit)
        );
        held.pop();
        assert!(h.begin("198.51.100.7".parse().unwrap()).is_ok());
        drop(held);
        assert_eq!(h.inner.lock().unwrap_or_else(|p| p.into_inner()).0, 0);
        assert!(
            h.inner
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .1
                .is_empty()
        );
    }
}
