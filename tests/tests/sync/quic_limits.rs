//! The hub's QUIC admission under attack, over real QUIC with mutual TLS into real PostgreSQL:
//! no flood of half-open handshakes and no certificate opening idle connections takes the
//! slots that other sites need.
//!
//! - 1,024 Initials from 1,024 source addresses that never answer (what spoofed packets look
//!   like): each gets a Retry and nothing else; a real edge agent connects and syncs at once.
//! - 1,024 handshakes from four addresses that do answer the Retry, then stall half-way: they
//!   hold at most their share of handshake slots, the edge is never refused, and every stalled
//!   one gives its slot back after the handshake timeout.
//! - One site's certificate opening 1,024 idle connections: it never holds more than
//!   `SITE_CONNECTIONS_MAX` of them, and another site connects and syncs meanwhile.
//! - A connection that never opens its stream is closed after `ACCEPT_STREAM_TIMEOUT`.
//! - A session replaced by a newer connection of its site loses nothing.
//!
//! The tests run one at a time ([`SERIAL`]): each floods the machine's two cores, and their
//! time bounds are about the hub, not about each other.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use central_hub::pki::Ca;
use central_hub::serve::Running;
use central_hub::sync::{
    ACCEPT_STREAM_TIMEOUT, HANDSHAKE_TIMEOUT, HANDSHAKES_PER_SOURCE_MAX, SITE_CONNECTIONS_MAX,
};
use shared_model::{Event, SiteId};
use sync_protocol::close_code;
use system_tests::edge::{edge_config, good_parts, record};
use system_tests::hq::{Hq, hq, init_logs, temp_dir, text_of, wait_for};

/// Connection attempts of every flood here: the hub's whole connection limit.
const FLOOD: usize = 1_024;
/// Connections the attacker of [`one_certificate_cannot_take_the_slots_of_other_sites`]
/// opens at once (its handshakes stay under the per-source bound).
const FLOOD_CONCURRENCY: usize = 32;
/// Initials sent back to back, then a pause: about 1,000 a second, so the flood reaches the
/// hub instead of overflowing its socket's receive buffer in one burst (the attack needs only
/// ~35 a second).
const FLOOD_WAVE: usize = 32;
const FLOOD_WAVE_PAUSE: Duration = Duration::from_millis(30);
/// Events in a test edge's outbox.
const EDGE_EVENTS: u64 = 200;
/// How long a real edge may take to connect and land its events after a flood: well under
/// the 30 s a stalled handshake held a slot before (the QUIC idle timeout).
const EDGE_SYNC_BOUND: Duration = Duration::from_secs(10);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Takes [`SERIAL`] for the test, then: a migrated database with `sites` registered, their
/// enrollment bundles in `<state_dir>/sites/<SITE>`, and a hub on it.
async fn setup(name: &str, sites: &[&str]) -> (tokio::sync::MutexGuard<'static, ()>, Hq, Running) {
    let serial = SERIAL.lock().await;
    init_logs();
    let with_zones: Vec<(&str, &str)> = sites.iter().map(|s| (*s, "UTC")).collect();
    let h = hq(name, &with_zones).await;
    let ca = Ca::load_or_create(&h.state_dir).unwrap();
    for s in sites {
        ca.write_site_bundle(&SiteId::new(*s).unwrap(), &tls(&h, s))
            .unwrap();
    }
    let hub = h.hub(Default::default()).await;
    (serial, h, hub)
}

fn tls(h: &Hq, site: &str) -> PathBuf {
    h.state_dir.join("sites").join(site)
}

fn events(site: &SiteId, n: u64) -> Vec<Event> {
    good_parts(site, 1_796_000_000_000, 0..n)
}

/// A real edge agent of `site` with `n` events in its outbox, syncing with `hub`.
async fn start_edge(h: &Hq, hub: &Running, site: &str, n: u64) -> edge_agent::server::Running {
    let dir = temp_dir(&format!("edge-{site}"));
    let edge = edge_agent::server::start(edge_config(
        site,
        &dir,
        &hub.quic_addr.to_string(),
        &tls(h, site),
    ))
    .await
    .unwrap();
    let batch = events(&SiteId::new(site).unwrap(), n);
    record(&edge, batch).await;
    edge
}

async fn site_events(h: &Hq, site: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events WHERE site_id = $1")
        .bind(site)
        .fetch_one(&h.admin)
        .await
        .unwrap()
}

/// Waits for `n` events of `site` at the hub; how long it took.
async fn synced_within(h: &Hq, site: &str, n: i64, bound: Duration) -> Duration {
    let start = Instant::now();
    wait_for(
        &format!("{n} events of {site} at the hub"),
        bound,
        || async { site_events(h, site).await == n },
    )
    .await;
    start.elapsed()
}

/// A value of the hub's `/metrics`, by its series (`name` or `name{labels}`).
async fn metric(hub: &Running, series: &str) -> Option<f64> {
    let text =
        text_of(reqwest::Client::new().get(format!("http://{}/metrics", hub.http_addr))).await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The `n`-th loopback source address of a flood: 127.<block>.x.y, a distinct host each.
fn source(block: u8, n: usize) -> SocketAddr {
    let ip = Ipv4Addr::new(127, block, (n / 250) as u8, (n % 250) as u8 + 1);
    SocketAddr::new(IpAddr::V4(ip), 0)
}

/// Whether a datagram is a QUIC v1 Retry (long header, type 3).
fn is_retry(datagram: &[u8]) -> bool {
    datagram
        .first()
        .is_some_and(|b| b & 0x80 != 0 && (b >> 4) & 0x03 == 3)
}

/// A sans-IO QUIC client (quinn-proto) that speaks only as far as the test lets it.
struct RawClient {
    endpoint: quinn_proto::Endpoint,
    config: quinn_proto::ClientConfig,
    conns: Vec<quinn_proto::Connection>,
    index: std::collections::HashMap<quinn_proto::ConnectionHandle, usize>,
}

impl RawClient {
    fn new(h: &Hq, site: &str) -> Self {
        Self {
            endpoint: quinn_proto::Endpoint::new(
                Arc::new(quinn_proto::EndpointConfig::default()),
                None,
                false,
                None,
            ),
            config: edge_agent::sync::client_config(
                &edge_agent::identity::load(&tls(h, site)).unwrap(),
            )
            .unwrap(),
            conns: Vec::new(),
            index: Default::default(),
        }
    }

    /// Starts a connection to `hub` and sends its first Initial from `socket`.
    fn send_initial(&mut self, socket: &UdpSocket, hub: SocketAddr) {
        let (handle, conn) = self
            .endpoint
            .connect(Instant::now(), self.config.clone(), hub, "127.0.0.1")
            .unwrap();
        self.index.insert(handle, self.conns.len());
        self.conns.push(conn);
        let i = self.conns.len() - 1;
        self.transmit(i, socket);
    }

    /// Sends whatever connection `i` has to send.
    fn transmit(&mut self, i: usize, socket: &UdpSocket) {
        let mut buf = Vec::new();
        while let Some(t) = self.conns[i].poll_transmit(Instant::now(), 1, &mut buf) {
            socket.send_to(&buf[..t.size], t.destination).unwrap();
            buf.clear();
        }
    }

    /// What a datagram from the hub means for its connection: a Retry is answered (with an
    /// Initial carrying the token: the address is validated and the handshake starts), any
    /// other packet only tells that the hub answered, and is dropped, so the handshake never
    /// finishes.
    fn receive(&mut self, socket: &UdpSocket, hub: SocketAddr, datagram: &[u8]) -> Option<Heard> {
        let retry = is_retry(datagram);
        let mut out = Vec::new();
        let event = self.endpoint.handle(
            Instant::now(),
            hub,
            None,
            None,
            bytes::BytesMut::from(datagram),
            &mut out,
        );
        let Some(quinn_proto::DatagramEvent::ConnectionEvent(handle, event)) = event else {
            return None;
        };
        let i = self.index[&handle];
        if !retry {
            return Some(Heard::Answer(i));
        }
        self.conns[i].handle_event(event);
        self.transmit(i, socket);
        Some(Heard::Retry(i))
    }
}

enum Heard {
    Retry(usize),
    Answer(usize),
}

/// Connections from a few hosts that answer the hub's Retry and then stall.
struct Stalling {
    client: RawClient,
    sockets: Vec<UdpSocket>,
    /// Per connection: the hub sent a Retry (and it was answered).
    retried: Vec<bool>,
    /// Per connection: the hub answered the Initial with the token (a handshake flight, or a
    /// refusal).
    answered: Vec<bool>,
    /// Per connection: the hub started a handshake without a Retry (the old hub did).
    unvalidated: Vec<bool>,
}

impl Stalling {
    /// Whether the hub has yet to answer connection `i`.
    fn pending(&self, i: usize) -> bool {
        !self.answered[i] && !self.unvalidated[i]
    }

    /// Reads what has arrived, answers Retries, and sends again what is due.
    fn pump(&mut self, hub: SocketAddr) {
        let mut buf = [0u8; 2048];
        for s in &self.sockets {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                match self.client.receive(s, hub, &buf[..n]) {
                    Some(Heard::Retry(i)) => self.retried[i] = true,
                    Some(Heard::Answer(i)) if self.retried[i] => self.answered[i] = true,
                    Some(Heard::Answer(i)) => self.unvalidated[i] = true,
                    None => {}
                }
            }
        }
        let now = Instant::now();
        for i in 0..self.client.conns.len() {
            if self.pending(i)
                && self.client.conns[i]
                    .poll_timeout()
                    .is_some_and(|t| t <= now)
            {
                self.client.conns[i].handle_timeout(now);
                self.client
                    .transmit(i, &self.sockets[i % self.sockets.len()]);
            }
        }
    }
}

fn bind(addr: SocketAddr) -> UdpSocket {
    let s = UdpSocket::bind(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// Spoofed Initials: 1,024 sources that send one Initial each and never answer. Before, each
/// took a connection slot for the 30 s idle timeout and the edge was refused; now each gets a
/// Retry (no state at the hub) and the edge syncs at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_initials_take_no_slot_and_a_real_edge_syncs_at_once() {
    let (_serial, h, hub) = setup("spoofed", &["SITE_A"]).await;
    let mut client = RawClient::new(&h, "SITE_A");
    let sockets: Vec<UdpSocket> = (0..FLOOD).map(|i| bind(source(1, i))).collect();
    let flood = Instant::now();
    for wave in sockets.chunks(FLOOD_WAVE) {
        for s in wave {
            client.send_initial(s, hub.quic_addr);
        }
        std::thread::sleep(FLOOD_WAVE_PAUSE);
    }
    let flood_took = flood.elapsed();
    // The hub has seen them all (it answers each at once).
    tokio::time::sleep(Duration::from_millis(500)).await;

    let edge = start_edge(&h, &hub, "SITE_A", EDGE_EVENTS).await;
    let took = synced_within(&h, "SITE_A", EDGE_EVENTS as i64, EDGE_SYNC_BOUND).await;
    eprintln!(
        "FIGURE spoofed_initials={FLOOD} sent_in_ms={} edge_synced_after_ms={}",
        flood_took.as_millis(),
        took.as_millis()
    );
    // What the sources got back: a Retry, never the start of a handshake.
    let mut buf = [0u8; 2048];
    for s in sockets.iter().step_by(97) {
        let (n, from) = s.recv_from(&mut buf).expect("an answer to the Initial");
        assert_eq!(from, hub.quic_addr);
        assert!(
            is_retry(&buf[..n]),
            "the hub answered a spoofable Initial with a handshake"
        );
    }
    assert!(metric(&hub, "mes_sync_retries_total").await.unwrap() >= FLOOD as f64);
    assert_eq!(
        metric(&hub, "mes_sync_handshakes_in_progress").await,
        Some(0.0)
    );
    assert_eq!(hub.metrics.connections_open.load(Ordering::Relaxed), 1);
    edge.stop().await.unwrap();
    hub.stop().await.unwrap();
}

/// Half-open handshakes from addresses that do answer the Retry: 1,024 from four hosts, each
/// stalled after the hub's first flight. A host holds at most `HANDSHAKES_PER_SOURCE_MAX`
/// handshake slots, the edge is never refused, and each stalled handshake gives its slot back
/// after `HANDSHAKE_TIMEOUT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_hold_their_share_of_slots_for_a_bounded_time() {
    const HOSTS: usize = 4;
    let (_serial, h, hub) = setup("stalled", &["SITE_A"]).await;
    // Waves of FLOOD_WAVE: their Initials, then the answers to their Retries, then a pause,
    // so neither side's socket buffer overflows in one burst. An Initial the hub has not
    // answered is sent again (quinn-proto's own retransmission), as a real client would.
    let mut flood = Stalling {
        client: RawClient::new(&h, "SITE_A"),
        sockets: (0..HOSTS).map(|i| bind(source(2, i))).collect(),
        retried: vec![false; FLOOD],
        answered: vec![false; FLOOD],
        unvalidated: vec![false; FLOOD],
    };
    for s in &flood.sockets {
        s.set_nonblocking(true).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(12);
    // The most handshakes the hub had in progress at once, sampled as the flood goes on.
    let mut held_max = 0.0f64;
    for wave in 0..FLOOD / FLOOD_WAVE {
        let ids = wave * FLOOD_WAVE..(wave + 1) * FLOOD_WAVE;
        for i in ids.clone() {
            flood
                .client
                .send_initial(&flood.sockets[i % HOSTS], hub.quic_addr);
        }
        let wave_end = Instant::now() + FLOOD_WAVE_PAUSE * 10;
        while ids.clone().any(|i| flood.pending(i)) && Instant::now() < wave_end {
            flood.pump(hub.quic_addr);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let now = metric(&hub, "mes_sync_handshakes_in_progress").await;
        held_max = held_max.max(now.unwrap_or(f64::INFINITY));
        tokio::time::sleep(FLOOD_WAVE_PAUSE).await;
    }
    while (0..FLOOD).any(|i| flood.pending(i)) && Instant::now() < deadline {
        flood.pump(hub.quic_addr);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let answered = flood.answered.iter().filter(|a| **a).count();
    let retried = flood.retried.iter().filter(|a| **a).count();
    let unvalidated = flood.unvalidated.iter().filter(|a| **a).count();
    let stalled_at = Instant::now();

    let edge = start_edge(&h, &hub, "SITE_A", EDGE_EVENTS).await;
    let took = synced_within(&h, "SITE_A", EDGE_EVENTS as i64, EDGE_SYNC_BOUND).await;
    assert_eq!(
        unvalidated, 0,
        "handshakes started without address validation"
    );
    // Retransmissions back off (1 s, 2 s, 4 s, ...), so a few whose packets the hub dropped
    // while busy may still be waiting at the deadline.
    assert!(
        retried >= FLOOD - FLOOD / 16,
        "{retried} Initials got a Retry"
    );
    assert!(
        answered >= FLOOD - FLOOD / 8,
        "{answered} Initials with a token got an answer"
    );
    assert!(
        held_max > 0.0 && held_max <= (HOSTS * HANDSHAKES_PER_SOURCE_MAX) as f64,
        "{held_max} handshakes in progress at once from {HOSTS} hosts"
    );
    assert_eq!(
        metric(
            &hub,
            "mes_sync_connections_refused_total{reason=\"handshake_limit\"}"
        )
        .await,
        Some(0.0),
        "a connection was refused for want of a handshake slot"
    );
    let source_refused = metric(
        &hub,
        "mes_sync_connections_refused_total{reason=\"source_limit\"}",
    )
    .await
    .unwrap();
    assert!(source_refused > 0.0, "none refused at the per-source bound");
    // The stalled ones give their slots back.
    wait_for(
        "the stalled handshakes to time out",
        HANDSHAKE_TIMEOUT + Duration::from_secs(5),
        || async { metric(&hub, "mes_sync_handshakes_in_progress").await == Some(0.0) },
    )
    .await;
    let freed_after = stalled_at.elapsed();
    let timed_out = metric(
        &hub,
        "mes_sync_connections_refused_total{reason=\"handshake_timeout\"}",
    )
    .await
    .unwrap();
    assert!(
        timed_out >= held_max,
        "{timed_out} stalled handshakes timed out"
    );
    eprintln!(
        "FIGURE stalled_handshakes={FLOOD} hosts={HOSTS} retried={retried} answered={answered} \
         held_at_most={held_max} timed_out={timed_out} \
         refused_source_limit={source_refused} edge_synced_after_ms={} slots_freed_after_ms={}",
        took.as_millis(),
        freed_after.as_millis()
    );
    edge.stop().await.unwrap();
    hub.stop().await.unwrap();
}

/// One site's certificate opens 1,024 connections and never opens a stream. Before, they held
/// every connection slot for as long as the client kept them alive and no other site could
/// connect; now the site holds at most `SITE_CONNECTIONS_MAX` (each newer one replaces its
/// oldest) and another site's edge syncs meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_certificate_cannot_take_the_slots_of_other_sites() {
    let (_serial, h, hub) = setup("idle", &["SITE_A", "SITE_X"]).await;
    let attacker = edge_agent::sync::client_endpoint(&tls(&h, "SITE_X")).unwrap();
    let flood = Instant::now();
    let mut conns = Vec::with_capacity(FLOOD);
    let mut failed = 0;
    for _ in 0..FLOOD / FLOOD_CONCURRENCY {
        // Started together: quinn's endpoint driver runs the handshakes concurrently.
        let connecting: Vec<_> = (0..FLOOD_CONCURRENCY)
            .map(|_| attacker.connect(hub.quic_addr, "127.0.0.1").unwrap())
            .collect();
        for c in connecting {
            match c.await {
                Ok(c) => conns.push(c),
                Err(_) => failed += 1,
            }
        }
    }
    let flood_took = flood.elapsed();
    let edge = start_edge(&h, &hub, "SITE_A", EDGE_EVENTS).await;
    let took = synced_within(&h, "SITE_A", EDGE_EVENTS as i64, EDGE_SYNC_BOUND).await;
    // The replaced ones are closed by the hub; the close reaches the client within an RTT.
    wait_for(
        "the attacker's connections to be cut to the cap",
        Duration::from_secs(5),
        || async {
            conns.iter().filter(|c| c.close_reason().is_none()).count() <= SITE_CONNECTIONS_MAX
        },
    )
    .await;
    let replaced = conns
        .iter()
        .filter(|c| {
            matches!(c.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(a))
                if a.error_code == close_code::REPLACED.into())
        })
        .count();
    assert!(
        hub.metrics.connections_open.load(Ordering::Relaxed) <= (SITE_CONNECTIONS_MAX + 1) as u64
    );
    assert!(
        replaced >= conns.len() - SITE_CONNECTIONS_MAX - 1,
        "{replaced} of {} connections closed as replaced",
        conns.len()
    );
    eprintln!(
        "FIGURE idle_connections={FLOOD} opened={} failed={failed} in_ms={} replaced={replaced} \
         hub_connections_after={} other_site_synced_after_ms={}",
        conns.len(),
        flood_took.as_millis(),
        hub.metrics.connections_open.load(Ordering::Relaxed),
        took.as_millis()
    );
    edge.stop().await.unwrap();
    attacker.close(0u32.into(), b"");
    hub.stop().await.unwrap();
}

/// A connection that never opens its stream is closed after `ACCEPT_STREAM_TIMEOUT` with the
/// `STREAM_TIMEOUT` close code, and its slot is free again. Before, a client that kept the
/// connection alive held its slot forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_without_a_stream_is_closed_after_the_timeout() {
    let (_serial, h, hub) = setup("nostream", &["SITE_A"]).await;
    let client = edge_agent::sync::client_endpoint(&tls(&h, "SITE_A")).unwrap();
    let conn = client
        .connect(hub.quic_addr, "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    let start = Instant::now();
    let closed = tokio::time::timeout(ACCEPT_STREAM_TIMEOUT * 2, conn.closed())
        .await
        .expect("the idle connection is still open");
    let took = start.elapsed();
    match closed {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(a.error_code, close_code::STREAM_TIMEOUT.into());
        }
        other => panic!("closed with {other:?}"),
    }
    assert!(took >= ACCEPT_STREAM_TIMEOUT - Duration::from_millis(500));
    wait_for("the slot to be free", Duration::from_secs(2), || async {
        hub.metrics.connections_open.load(Ordering::Relaxed) == 0
    })
    .await;
    assert_eq!(
        metric(
            &hub,
            "mes_sync_connections_refused_total{reason=\"stream_timeout\"}"
        )
        .await,
        Some(1.0)
    );
    eprintln!("FIGURE stream_timeout_closed_after_ms={}", took.as_millis());
    client.close(0u32.into(), b"");
    hub.stop().await.unwrap();
}

/// A draining edge's session is replaced by two newer connections of its site (the cap is
/// two): the hub closes it between two store calls with `REPLACED`, the edge reconnects
/// (replacing the oldest of the others) and every event lands exactly once; the site stays
/// marked connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_session_loses_nothing() {
    const BACKLOG: u64 = 20_000;
    let (_serial, h, hub) = setup("replaced", &["SITE_A"]).await;
    let edge = start_edge(&h, &hub, "SITE_A", BACKLOG).await;
    wait_for("the drain to start", Duration::from_secs(20), || async {
        site_events(&h, "SITE_A").await > 0
    })
    .await;
    let others = edge_agent::sync::client_endpoint(&tls(&h, "SITE_A")).unwrap();
    let mut held = Vec::new();
    for _ in 0..SITE_CONNECTIONS_MAX {
        held.push(
            others
                .connect(hub.quic_addr, "127.0.0.1")
                .unwrap()
                .await
                .unwrap(),
        );
    }
    let at_replacement = site_events(&h, "SITE_A").await;
    wait_for(
        "the edge's session to be replaced",
        Duration::from_secs(5),
        || async { metric(&hub, "mes_sync_sessions_replaced_total").await >= Some(1.0) },
    )
    .await;
    synced_within(&h, "SITE_A", BACKLOG as i64, Duration::from_secs(60)).await;
    wait_for("the outbox to drain", Duration::from_secs(10), || async {
        edge.state.store.pending().await.unwrap().events == 0
    })
    .await;
    // The two others never open a stream: closed at the stream timeout, or replaced by the
    // edge's reconnect. The edge's session is the one left, and owns the connected flag.
    wait_for(
        "the idle connections to be gone",
        ACCEPT_STREAM_TIMEOUT + Duration::from_secs(5),
        || async { held.iter().all(|c| c.close_reason().is_some()) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected: bool =
        sqlx::query_scalar("SELECT connected FROM sites WHERE site_id = 'SITE_A'")
            .fetch_one(&h.admin)
            .await
            .unwrap();
    assert!(
        connected,
        "the site's flag was cleared by a connection that ended"
    );
    assert!(edge.state.connected.load(Ordering::Relaxed));
    assert_eq!(site_events(&h, "SITE_A").await, BACKLOG as i64);
    eprintln!(
        "FIGURE replaced_while_draining_at_events={at_replacement} of {BACKLOG}, all landed once"
    );
    edge.stop().await.unwrap();
    others.close(0u32.into(), b"");
    hub.stop().await.unwrap();
}
