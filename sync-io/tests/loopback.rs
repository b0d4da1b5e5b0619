//! Proves the shared pump end to end: an edge session and a hub session, each pumped by
//! `sync_io::pump` over real QUIC on loopback against the in-memory stores, move an outbox to
//! the hub and a down-sync item to the edge, and both ends see the session close cleanly when
//! the edge ends it. The side hooks are the smallest possible (drive the store, stop on
//! nothing), so what is exercised is the loop itself: reads, writes, timers and close.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shared_model::event::{ClockAction, OperatorClock};
use shared_model::{BadgeId, Event, EventBody, EventId, SiteId, Timestamp};
use sync_io::{Clock, End, PumpConfig, Side};
use sync_protocol::driver::{drive_edge, drive_hub};
use sync_protocol::memory::{MemoryEdgeStore, MemoryHubStore};
use sync_protocol::message::{DownItem, ErrorCode};
use sync_protocol::{CloseReason, EdgeSession, HubSession, SessionConfig};

const T0: Timestamp = Timestamp::from_millis(1_795_000_000_000);
const EVENTS: u64 = 50;

fn site() -> SiteId {
    SiteId::new("SITE_001").expect("site id")
}

/// Operators clocking in and out: any event will do, the pump never looks inside.
fn event(n: u64) -> Event {
    let action = if n.is_multiple_of(2) {
        ClockAction::In
    } else {
        ClockAction::Out
    };
    let badge = BadgeId::new(format!("B-{n:04}")).expect("badge id");
    Event {
        event_id: EventId::from_parts(1_795_000_000_000 + n, [n as u8; 10]),
        site_id: site(),
        occurred_at: T0,
        recorded_at: T0.saturating_add_micros(1_500),
        operator: Some(badge.clone()),
        body: EventBody::OperatorClock(OperatorClock {
            badge,
            action,
            equipment: None,
        }),
    }
}

/// Drives its session against an in-memory store, with no wake-ups of its own. The edge's
/// closes the session once the hub acked the whole outbox and it applied the down-sync item.
struct Driven<'a, St>(&'a St);

impl Side for Driven<'_, MemoryEdgeStore> {
    type Session = EdgeSession;
    type Wake = ();

    async fn drive(&mut self, session: &mut EdgeSession, now: Duration) {
        drive_edge(session, self.0, now).await.expect("edge store");
        if session.is_established() && self.0.pending() == 0 && self.0.current_down_cursor() > 0 {
            session.close(now, ErrorCode::ShuttingDown, "done");
        }
    }
}

impl Side for Driven<'_, MemoryHubStore> {
    type Session = HubSession;
    type Wake = ();

    async fn drive(&mut self, hub: &mut HubSession, now: Duration) {
        drive_hub(hub, self.0, now).await.expect("hub store");
    }
}

fn endpoints() -> (quinn::Endpoint, quinn::Endpoint) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
    let cert = issued.cert.der().clone();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(issued.signing_key.serialize_der().into());
    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server cert");
    server_tls.alpn_protocols = vec![sync_protocol::ALPN_V1.to_vec()];
    let server_config = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls).expect("quic server"),
    ));
    let any: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let server = quinn::Endpoint::server(server_config, any).expect("server endpoint");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![sync_protocol::ALPN_V1.to_vec()];
    let mut client = quinn::Endpoint::client(any).expect("client endpoint");
    client.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls).expect("quic client"),
    )));
    (server, client)
}

#[tokio::test]
async fn both_ends_pumped_over_quic_sync_and_close_cleanly() {
    let (server, client) = endpoints();
    let addr = server.local_addr().expect("local addr");
    let hub_store = MemoryHubStore::new();
    hub_store.publish(
        &site(),
        DownItem::RecordChange(
            sync_protocol::message::RecordChange::new(
                sync_protocol::message::RecordId::new(
                    sync_protocol::message::RecordKind::WorkOrder,
                    "WO-1",
                )
                .expect("record id"),
                vec![1, 2, 3],
            )
            .expect("change"),
        ),
    );
    let edge_store = MemoryEdgeStore::new();
    for n in 0..EVENTS {
        edge_store.record_event(event(n));
    }
    // Small batches, so the outbox takes several windows' worth of round trips.
    let mut config = SessionConfig::default();
    config.limits.batch_items_max = 4;
    config.limits.inflight_batches_max = 2;
    let pump_config = PumpConfig {
        fallback_timeout: Duration::from_secs(10),
        group_read_bytes_max: 1 << 20,
    };

    let hub = async {
        let conn = server
            .accept()
            .await
            .expect("incoming")
            .await
            .expect("handshake");
        let stream = conn.accept_bi().await.expect("stream");
        let clock = Clock::start();
        let mut session = HubSession::new(
            config.clone(),
            site(),
            T0.saturating_add_micros(1_000_000),
            clock.now(),
        );
        let mut side = Driven(&hub_store);
        let end = sync_io::pump(&mut side, &mut session, stream, clock, pump_config).await;
        (end, session.close_reason().cloned())
    };
    let edge = async {
        let conn = client
            .connect(addr, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let stream = conn.open_bi().await.expect("stream");
        let clock = Clock::start();
        let mut session = EdgeSession::new(config.clone(), 0, clock.now());
        let mut side = Driven(&edge_store);
        let end = sync_io::pump(&mut side, &mut session, stream, clock, pump_config).await;
        conn.close(sync_protocol::close_code::DONE.into(), b"");
        (end, session.close_reason().cloned())
    };
    let ((hub_end, hub_reason), (edge_end, edge_reason)) =
        tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(hub, edge) })
            .await
            .expect("the session finished in time");

    assert!(matches!(edge_end, End::Closed), "edge ended {edge_end:?}");
    assert_eq!(
        edge_reason,
        Some(CloseReason::Local {
            code: ErrorCode::ShuttingDown,
            message: "done".into()
        })
    );
    assert!(matches!(hub_end, End::Closed), "hub ended {hub_end:?}");
    assert_eq!(
        hub_reason,
        Some(CloseReason::Remote {
            code: ErrorCode::ShuttingDown,
            message: "done".into()
        })
    );
    assert_eq!(hub_store.events(&site()).len(), EVENTS as usize);
    assert_eq!(edge_store.pending(), 0);
    assert_eq!(edge_store.current_down_cursor(), 1);
}
