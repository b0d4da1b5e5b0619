//! The QUIC sync client: connects to the hub with the site's client certificate, drives an
//! `EdgeSession` against the SQLite store, and reconnects with capped exponential backoff and
//! jitter after any failure. Cursors live in the store, so every connection resumes where the
//! last one stopped.
//!
//! It also renews the certificate (`crate::identity`): once two thirds of its lifetime have
//! passed by the agent's clock, it sends a CSR for a new key over the session, puts the hub's
//! certificate and the key in place atomically, and reconnects at once with them (after the
//! batches in flight are acknowledged, at most [`RECONNECT_DRAIN_MAX`]); the first session
//! with the new certificate makes the hub revoke the old one. No restart, no backoff.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use quinn::{Endpoint, TransportConfig};
use rustls::pki_types::ServerName;
use sync_io::{Clock, End, Flow, PumpConfig};
use sync_protocol::driver::drive_edge;
use sync_protocol::message::{ErrorCode, RenewOutcome};
use sync_protocol::session::{CloseReason, EdgeEvent, EdgeSession, SessionConfig};
use sync_protocol::store::EdgeStore;
use tokio::sync::watch;

use crate::api::AppState;
use crate::identity::{CertInfo, Identity};

/// First retry delay after a failed connection.
pub const RETRY_DELAY_MIN: Duration = Duration::from_millis(250);
/// Longest retry delay: a WAN back after hours is used within half a minute.
pub const RETRY_DELAY_MAX: Duration = Duration::from_secs(30);
/// QUIC keep-alive: below NAT timeouts and the hub's 30 s idle timeout.
pub const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Bytes read from the stream at a time.
pub use sync_io::READ_BUFFER_BYTES;
/// Outbox polls between two status reports to the hub (5 × 1 s).
pub const STATUS_EVERY_TICKS: u64 = 5;
/// Safety net for a missed outbox notification.
pub const OUTBOX_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// After a refused or failed renewal, the next attempt waits this long (the hub allows one a
/// minute per site; the certificate has a third of its lifetime left).
pub const RENEW_RETRY_AFTER: Duration = Duration::from_secs(10 * 60);
/// After a renewal the session ends once its batches in flight are acknowledged, or after
/// this long anyway (the rest is resent on the next connection, ingest is idempotent).
pub const RECONNECT_DRAIN_MAX: Duration = Duration::from_secs(2);
/// The `meta` key holding the certificate the running agent uses (`CertInfo` as JSON), for
/// `edge-agent doctor`.
pub const META_CERTIFICATE: &str = "sync_certificate";

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
    #[error("{0}")]
    Identity(#[from] crate::identity::IdentityError),
}

/// Where the hub is and how to prove who we are.
#[derive(Debug, Clone)]
pub struct HubTarget {
    /// `host:port` as configured.
    pub address: String,
    /// Directory with `ca.crt.pem`, `client.crt.pem`, `client.key.pem` from enrollment.
    pub tls_dir: PathBuf,
}

/// Builds the client endpoint with the TLS directory's certificate as its default; fails
/// early (at startup) when enrollment files are missing.
pub fn client_endpoint(tls_dir: &Path) -> Result<Endpoint, SyncError> {
    let identity = crate::identity::load(tls_dir)?;
    let mut endpoint = bind()?;
    endpoint.set_default_client_config(client_config(&identity)?);
    Ok(endpoint)
}

/// A client endpoint without a default configuration: every connection brings its own
/// ([`client_config`]), so a renewed certificate is used without a new endpoint.
pub fn bind() -> Result<Endpoint, SyncError> {
    let bind: SocketAddr = "0.0.0.0:0"
        .parse()
        .map_err(|_| SyncError::Quic("bind address".into()))?;
    Endpoint::client(bind).map_err(|e| SyncError::Quic(e.to_string()))
}

/// The QUIC client configuration presenting `identity`.
pub fn client_config(identity: &Identity) -> Result<quinn::ClientConfig, SyncError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let ca = identity.ca()?;
    let cert = identity.certificate()?;
    let key = identity.private_key()?;
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

/// The certificate the running agent syncs with, and when it may next try to renew it.
#[derive(Debug)]
pub struct Renewal {
    pub identity: Identity,
    /// After a refused or failed attempt: not before this time (µs, the agent's clock).
    retry_at_micros: Option<i64>,
}

impl Renewal {
    pub fn new(identity: Identity) -> Self {
        Self {
            identity,
            retry_at_micros: None,
        }
    }

    fn due(&self, now: shared_model::Timestamp) -> bool {
        self.identity
            .renewal_due(now.as_micros().div_euclid(1_000_000))
            && self.retry_at_micros.is_none_or(|t| now.as_micros() >= t)
    }

    fn failed(&mut self, now: shared_model::Timestamp) {
        self.retry_at_micros = Some(
            now.as_micros()
                .saturating_add(RENEW_RETRY_AFTER.as_micros() as i64),
        );
    }
}

/// Shows the certificate the agent now uses: in the sync status and metrics, and in the
/// store's `meta` for `edge-agent doctor`.
pub async fn announce_certificate(state: &AppState, info: &CertInfo) {
    *state.certificate.write().unwrap_or_else(|p| p.into_inner()) = Some(info.clone());
    let json = serde_json::to_string(info).unwrap_or_default();
    if let Err(e) = state.store.set_meta(META_CERTIFICATE, json).await {
        tracing::warn!(error = %e, "cannot record the certificate in use for doctor");
    }
}

/// Runs until `shutdown` turns true: connect, sync, and back off after failures. After a
/// renewal it reconnects at once with the new certificate.
pub async fn run(
    state: AppState,
    endpoint: Endpoint,
    target: HubTarget,
    config: SessionConfig,
    identity: Identity,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut renewal = Renewal::new(identity);
    announce_certificate(&state, &renewal.identity.info).await;
    let mut delay = RETRY_DELAY_MIN;
    loop {
        if *shutdown.borrow() {
            break;
        }
        let started = Instant::now();
        let renewed = match connect_and_sync(
            &state,
            &endpoint,
            &target,
            config.clone(),
            &mut renewal,
            &mut shutdown,
        )
        .await
        {
            Ok(renewed) => {
                tracing::info!("sync connection closed");
                renewed
            }
            Err(e) => {
                tracing::warn!(error = %e, hub = %target.address, "sync connection failed");
                false
            }
        };
        state.connected.store(false, Ordering::Relaxed);
        if renewed {
            // Straight back with the new certificate: no backoff, no gap worth the name.
            delay = RETRY_DELAY_MIN;
            continue;
        }
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

/// Splits `host:port` (IPv6 in brackets) into the TLS server name and resolves the address.
async fn resolve(address: &str) -> Result<(SocketAddr, String), SyncError> {
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
    Ok((addr, host))
}

/// One connection. `Ok(true)` when it ended to use a renewed certificate.
async fn connect_and_sync(
    state: &AppState,
    endpoint: &Endpoint,
    target: &HubTarget,
    config: SessionConfig,
    renewal: &mut Renewal,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<bool, SyncError> {
    let (addr, host) = resolve(&target.address).await?;
    let server_name = ServerName::try_from(host.clone())
        .map_err(|_| SyncError::Tls(format!("{host} is not a valid server name")))?;
    let conn = endpoint
        .connect_with(
            client_config(&renewal.identity)?,
            addr,
            &server_name.to_str(),
        )
        .map_err(|e| SyncError::Quic(e.to_string()))?
        .await
        .map_err(|e| SyncError::Quic(e.to_string()))?;
    let stream = conn
        .open_bi()
        .await
        .map_err(|e| SyncError::Quic(e.to_string()))?;
    let clock = Clock::start();
    let mut session = EdgeSession::new(config, state.store.down_cursor().await?, clock.now());
    let mut side = EdgeSide {
        state,
        target,
        renewal,
        shutdown,
        outbox_poll: tokio::time::interval(OUTBOX_POLL_INTERVAL),
        ticks: 0,
        repairing: false,
        renewal_key: None,
        reconnect_since: None,
    };
    let pump_config = PumpConfig {
        fallback_timeout: KEEP_ALIVE,
        group_read_bytes_max: 0,
    };
    match sync_io::pump(&mut side, &mut session, stream, clock, pump_config).await {
        End::Closed => {
            conn.close(sync_protocol::close_code::DONE.into(), b"");
            Ok(side.reconnect_since.is_some())
        }
        // The edge side never stops the pump itself: it closes the session instead.
        End::Stopped => Ok(side.reconnect_since.is_some()),
        End::PeerFinished => Err(SyncError::Quic("the hub finished the stream".into())),
        End::Read(e) => Err(SyncError::Quic(e.to_string())),
        End::Write(e) => Err(SyncError::Quic(e.to_string())),
    }
}

/// The edge's part of a connection: the SQLite store, the operator's sync status, repair after
/// a restore and certificate renewal, around the shared session pump.
struct EdgeSide<'a> {
    state: &'a AppState,
    target: &'a HubTarget,
    renewal: &'a mut Renewal,
    shutdown: &'a mut watch::Receiver<bool>,
    outbox_poll: tokio::time::Interval,
    /// Outbox polls so far, for the status report every [`STATUS_EVERY_TICKS`].
    ticks: u64,
    /// A repair runs on this session (the store was restored from a backup).
    repairing: bool,
    /// The key of a renewal asked on this session, until the hub answers.
    renewal_key: Option<String>,
    /// A renewed certificate is in place: end this session to use it.
    reconnect_since: Option<Instant>,
}

/// What woke the edge's session besides the hub.
#[derive(Debug)]
enum EdgeWake {
    /// The API or a connector recorded something: the outbox may have grown.
    OutboxGrew,
    /// The outbox poll's tick: the safety net for a missed notification, and the clock of
    /// the status reports.
    PollTick,
    /// The agent is shutting down (or lost the sender of the signal).
    Shutdown,
}

impl sync_io::Side for EdgeSide<'_> {
    type Session = EdgeSession;
    type Wake = EdgeWake;

    async fn drive(&mut self, session: &mut EdgeSession, now: Duration) {
        let (state, store) = (self.state, &self.state.store);
        match drive_edge(session, store, now).await {
            Ok(report) => {
                if let Some(g) = report.heal_started {
                    tracing::warn!(
                        generation = g.number,
                        timeline = g.timeline,
                        "the hub's database went back in time (a restore or a failover): looking for the events it lost"
                    );
                }
                if let Some(outcome) = report.renewal
                    && let Some(info) = renewed(
                        state,
                        self.target,
                        self.renewal,
                        self.renewal_key.take(),
                        outcome,
                    )
                    .await
                {
                    tracing::info!(serial = %info.serial, "renewed certificate in place; reconnecting with it");
                    self.reconnect_since = Some(Instant::now());
                }
                if report.connected {
                    state.connected.store(true, Ordering::Relaxed);
                    tracing::info!(hub = %self.target.address, "connected to the hub");
                    // After a restore, compare every record with the hub's copy.
                    if matches!(store.meta(crate::backup::REPAIR_PENDING).await, Ok(Some(_))) {
                        tracing::info!("store restored from a backup: repairing against the hub");
                        session.start_repair();
                        self.repairing = true;
                    }
                    // The hub learns the backlog at once, then every few seconds.
                    if let Ok(status) = store.sync_status().await {
                        session.send_status(now, status);
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "store failure during sync; reconnecting"),
        }
        if session.can_renew() && self.reconnect_since.is_none() && self.renewal.due(state.now()) {
            self.request_renewal(session, now);
        }
        if let Some(since) = self.reconnect_since
            && !session.is_closed()
            && (session.inflight_batches() == 0 || since.elapsed() >= RECONNECT_DRAIN_MAX)
        {
            session.close(
                now,
                ErrorCode::ShuttingDown,
                "reconnecting with the renewed certificate",
            );
        }
        if self.repairing && !session.repair_in_progress() {
            self.repairing = false;
            match store.delete_meta(crate::backup::REPAIR_PENDING).await {
                Ok(()) => tracing::info!("repair finished"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot clear the repair mark; will repair again")
                }
            }
        }
    }

    async fn wake(&mut self) -> EdgeWake {
        tokio::select! {
            () = self.state.outbox_notify.notified() => EdgeWake::OutboxGrew,
            _ = self.outbox_poll.tick() => EdgeWake::PollTick,
            // A dropped sender is a shutdown too.
            _ = self.shutdown.changed() => EdgeWake::Shutdown,
        }
    }

    async fn on_wake(&mut self, session: &mut EdgeSession, wake: EdgeWake, now: Duration) -> Flow {
        match wake {
            EdgeWake::OutboxGrew => session.outbox_grew(),
            EdgeWake::PollTick => {
                session.outbox_grew();
                self.ticks += 1;
                if self.ticks.is_multiple_of(STATUS_EVERY_TICKS) {
                    match self.state.store.sync_status().await {
                        Ok(status) => session.send_status(now, status),
                        Err(e) => tracing::warn!(error = %e, "cannot read the outbox status"),
                    }
                }
            }
            EdgeWake::Shutdown => {
                session.close(now, ErrorCode::ShuttingDown, "edge agent shutting down");
            }
        }
        Flow::Continue
    }

    fn on_closed(&mut self, session: &EdgeSession) {
        if let Some(reason) = session.close_reason() {
            tracing::info!(?reason, "sync session closed");
        }
    }
}

impl EdgeSide<'_> {
    /// Two thirds of the certificate's lifetime have passed: ask the hub for a new one.
    fn request_renewal(&mut self, session: &mut EdgeSession, now: Duration) {
        match crate::identity::new_key_and_csr() {
            Ok((key, csr)) => match session.request_renewal(now, csr) {
                Ok(()) => {
                    tracing::info!(serial = %self.renewal.identity.info.serial, "two thirds of the certificate's lifetime passed: renewing it");
                    self.renewal_key = Some(key);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot ask for a renewal");
                    self.renewal.failed(self.state.now());
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot make a key pair for the renewal");
                self.renewal.failed(self.state.now());
            }
        }
    }
}

/// Takes the hub's answer to a renewal: checks the certificate (this site, the key made for
/// it, not expired), writes it with its key atomically and makes it the identity of the next
/// connection. `Some` when that happened; otherwise the old certificate stays and the next
/// attempt waits [`RENEW_RETRY_AFTER`].
async fn renewed(
    state: &AppState,
    target: &HubTarget,
    renewal: &mut Renewal,
    key: Option<String>,
    outcome: RenewOutcome,
) -> Option<CertInfo> {
    let now = state.now();
    let certificate_pem = match outcome {
        RenewOutcome::Issued { certificate_pem } => certificate_pem,
        RenewOutcome::Refused { message } => {
            tracing::warn!(%message, "the hub refused to renew the certificate; trying again later");
            renewal.failed(now);
            return None;
        }
    };
    let Some(key) = key else {
        renewal.failed(now);
        return None;
    };
    let check = || -> Result<(), String> {
        let info = CertInfo::from_pem(certificate_pem.as_bytes())
            .ok_or("the renewed certificate does not parse")?;
        if info.common_name != renewal.identity.info.common_name {
            return Err(format!(
                "the renewed certificate is for {}, not {}",
                info.common_name, renewal.identity.info.common_name
            ));
        }
        if info.not_after <= now.as_micros().div_euclid(1_000_000) {
            return Err("the renewed certificate has already expired".into());
        }
        Ok(())
    };
    if let Err(e) = check() {
        tracing::warn!(error = %e, "renewed certificate refused; keeping the current one");
        renewal.failed(now);
        return None;
    }
    let (dir, ca) = (target.tls_dir.clone(), renewal.identity.ca_pem.clone());
    let written = tokio::task::spawn_blocking(move || {
        crate::identity::install_renewed(&dir, ca, &key, &certificate_pem)
    })
    .await;
    match written {
        Ok(Ok(identity)) => {
            let info = identity.info.clone();
            renewal.identity = identity;
            renewal.retry_at_micros = None;
            state.certificate_renewals.fetch_add(1, Ordering::Relaxed);
            announce_certificate(state, &info).await;
            Some(info)
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot write the renewed certificate; keeping the current one");
            renewal.failed(now);
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "writing the renewed certificate failed");
            renewal.failed(now);
            None
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
        let (addr, host) = resolve(address).await?;
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
        let mut out = Vec::new();
        loop {
            sync_io::transmit(&mut session, &mut send, &mut out)
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            while let Some(event) = session.poll_event() {
                match event {
                    EdgeEvent::Connected {
                        site_id, hub_time, ..
                    } => {
                        let round_trip = started.elapsed();
                        session.close(origin.elapsed(), ErrorCode::ShuttingDown, "probe done");
                        // The probe has its answer: telling the hub why it goes is a courtesy,
                        // and a hub that is already gone changes nothing.
                        if sync_io::transmit(&mut session, &mut send, &mut out)
                            .await
                            .is_ok()
                        {
                            send.finish().ok();
                        }
                        conn.close(sync_protocol::close_code::DONE.into(), b"probe done");
                        return Ok(Probe {
                            site_id,
                            hub_time,
                            round_trip,
                        });
                    }
                    EdgeEvent::Closed(reason) => {
                        let (code, message) = match reason {
                            CloseReason::Local { code, message }
                            | CloseReason::Remote { code, message } => (code, message),
                        };
                        return Err(ProbeError::Refused { code, message });
                    }
                    // The probe closes at the welcome, before any of this work is asked for.
                    EdgeEvent::NeedOutbox { .. }
                    | EdgeEvent::Acked { .. }
                    | EdgeEvent::DownBatch(_)
                    | EdgeEvent::NeedHeads { .. }
                    | EdgeEvent::PeerHeads { .. }
                    | EdgeEvent::RepairChanges { .. }
                    | EdgeEvent::Renewal(_)
                    | EdgeEvent::Generation(_)
                    | EdgeEvent::NeedGapSummaries { .. }
                    | EdgeEvent::CompareGapIds { .. }
                    | EdgeEvent::Healed { .. } => {}
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
