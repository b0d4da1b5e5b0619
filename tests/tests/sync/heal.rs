//! The failover drill (issue 22): edges sync into a primary whose asynchronous replica falls
//! behind; the primary is killed with `kill -9`; the replica is promoted and a hub starts on
//! it. The replica never received the last events the hub acknowledged, nor the last HQ
//! release: the edges notice the new database generation, find what it lacks and send it
//! again, and the release comes back from the edge that holds it. Real PostgreSQL clusters,
//! real QUIC with mutual TLS, real SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use central_hub::db::sites::add_site;
use central_hub::ingest::PgHubStore;
use central_hub::pki::Ca;
use central_hub::serve::{self, ServeConfig};
use shared_model::SiteId;
use sqlx::PgPool;
use sync_protocol::message::{DownItem, RecordChange, RecordId, RecordKind};
use system_tests::edge::{edge_config, good_parts, order_at, record};
use system_tests::hq::{init_logs, serve_config, temp_dir, wait_for};
use system_tests::pg::{PrivateCluster, TestDb};

const SITES: [&str; 2] = ["SITE_A", "SITE_B"];
/// Events per site the replica receives, then events per site only the primary gets.
const KEPT: u64 = 300;
const LOST: u64 = 200;

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

fn hub_config(db: &TestDb, state_dir: &std::path::Path, quic: &str) -> ServeConfig {
    ServeConfig {
        quic_listen: quic.parse().unwrap(),
        server_names: vec!["127.0.0.1".into(), "localhost".into()],
        ..serve_config(db, state_dir)
    }
}

/// A release of `id` to `site` as HQ publishes it (one Automerge change in the down log).
fn release(site: &SiteId, id: &str) -> DownItem {
    use automerge::transaction::Transactable;
    let mut doc = automerge::AutoCommit::new();
    let view = sync_protocol::records::WorkOrderView {
        order: shared_model::work_order::WorkOrder::released(
            shared_model::WorkOrderId::new(id).unwrap(),
            site.clone(),
            shared_model::MaterialId::new("BRACKET-7").unwrap(),
            40,
        ),
        work_unit: None,
    };
    sync_protocol::records::write_all(&mut doc, &view).unwrap();
    doc.put(automerge::ROOT, "notes", "released before the failover")
        .unwrap();
    doc.commit();
    DownItem::RecordChange(
        RecordChange::new(
            RecordId::new(RecordKind::WorkOrder, id).unwrap(),
            doc.get_last_local_change().unwrap().raw_bytes().to_vec(),
        )
        .unwrap(),
    )
}

/// `kill -9` of the cluster's postmaster: no shutdown checkpoint, no goodbye to anyone.
fn kill_9(cluster: &PrivateCluster) {
    let pid_file = cluster.data_dir().join("postmaster.pid");
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap_or_else(|e| panic!("{}: {e}", pid_file.display()));
    let pid: i32 = pid.lines().next().unwrap().trim().parse().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_lagging_replica_loses_no_acknowledged_event() {
    init_logs();
    let primary = PrivateCluster::start(false).expect("a private primary");
    let replica = primary.start_replica().expect("a streaming replica");
    let db = primary.server().fresh_database().await;
    db.migrate().await;
    let on_replica = |url: &str| primary.url_on(&replica, url);
    let admin = central_hub::db::connect(&db.admin_url).await.unwrap();
    let state_dir = temp_dir("heal-hub");
    let ca = Ca::load_or_create(&state_dir).unwrap();
    for s in SITES {
        let site = SiteId::new(s).unwrap();
        add_site(&admin, &site, "Plant", "EU", "UTC").await.unwrap();
        sqlx::query("SELECT mes_ensure_partitions($1, '2026-11-01', 0)")
            .bind(s)
            .execute(&admin)
            .await
            .unwrap();
        ca.write_site_bundle(&site, &state_dir.join("sites").join(s))
            .unwrap();
    }

    let port = free_udp_port();
    let hub_addr = format!("127.0.0.1:{port}");
    let hub = serve::start(hub_config(&db, &state_dir, &hub_addr))
        .await
        .unwrap();
    let mut edges = Vec::new();
    for (i, s) in SITES.iter().enumerate() {
        let dir = temp_dir(&format!("heal-edge-{i}"));
        let mut cfg = edge_config(s, &dir, &hub_addr, &state_dir.join("sites").join(s));
        // The events are dated November 2026: a retention counted from today's date must
        // not prune them (the drill is about what the hub lost, not the edge).
        cfg.retention_days = 36_500;
        edges.push((
            SiteId::new(*s).unwrap(),
            edge_agent::server::start(cfg).await.unwrap(),
            dir,
        ));
    }
    // Event ids do not name their site: each site's come from its own millisecond range.
    let id_ms = |i: usize| 1_795_000_000_000 + i as u64 * 10_000_000;
    for (i, (site, edge, _)) in edges.iter().enumerate() {
        record(edge, good_parts(site, id_ms(i), 0..KEPT)).await;
    }
    let total_kept = KEPT as i64 * SITES.len() as i64;
    wait_for(
        "the first events at the hub",
        Duration::from_secs(60),
        || async { count(&admin, "SELECT count(*) FROM events").await == total_kept },
    )
    .await;

    // The replica replays all of that, then its WAL receiver is cut off: from now on it is
    // an asynchronous replica behind its primary.
    let replica_root = central_hub::db::connect(&on_replica(&primary.admin_url))
        .await
        .unwrap();
    system_tests::pg::wait_replayed(&admin, &replica_root).await;
    system_tests::pg::cut_off(&replica_root, &admin).await;

    // What only the primary will have: more events (acknowledged to the edges, which keep
    // them only for their retention) and an HQ release that reached site A.
    for (i, (site, edge, _)) in edges.iter().enumerate() {
        record(edge, good_parts(site, id_ms(i), KEPT..KEPT + LOST)).await;
    }
    let total = total_kept + LOST as i64 * SITES.len() as i64;
    wait_for(
        "every event at the primary",
        Duration::from_secs(60),
        || async { count(&admin, "SELECT count(*) FROM events").await == total },
    )
    .await;
    for (_, edge, _) in &edges {
        wait_for(
            "the edge's outbox to drain",
            Duration::from_secs(30),
            || async { edge.state.store.pending().await.unwrap().events == 0 },
        )
        .await;
    }
    let site_a = edges[0].0.clone();
    let hq = PgHubStore::new(central_hub::db::connect(&db.hub_url).await.unwrap());
    hq.publish(&site_a, &release(&site_a, "SITE_A-WO-LOST"))
        .await
        .unwrap();
    wait_for("the release at site A", Duration::from_secs(30), || async {
        order_at(&edges[0].1, "SITE_A-WO-LOST").await.is_some()
    })
    .await;

    // The primary dies; the replica is promoted; a hub starts on it where the old one was.
    // (The old hub instance goes first: in-process, its QUIC socket would otherwise stay
    // bound while its sessions wait on the dead primary.)
    hub.stop().await.unwrap();
    let failed_at = Instant::now();
    kill_9(&primary);
    replica.promote().expect("promote the replica");
    let promoted = TestDb {
        name: db.name.clone(),
        admin_url: on_replica(&db.admin_url),
        hub_url: on_replica(&db.hub_url),
        reporting_url: on_replica(&db.reporting_url),
    };
    let admin = central_hub::db::connect(&promoted.admin_url).await.unwrap();
    let lost_before = total - count(&admin, "SELECT count(*) FROM events").await;
    assert!(
        lost_before >= LOST as i64 * SITES.len() as i64,
        "the replica should lack what was written after it was cut off: lacks {lost_before}"
    );
    let orders_before = count(
        &admin,
        "SELECT count(*) FROM work_orders WHERE id = 'SITE_A-WO-LOST'",
    )
    .await;
    assert_eq!(orders_before, 0, "the release was lost with the primary");
    // The old instance's UDP socket goes when its connections have drained: retry the bind.
    let deadline = Instant::now() + Duration::from_secs(15);
    let hub = loop {
        match serve::start(hub_config(&promoted, &state_dir, &hub_addr)).await {
            Ok(hub) => break hub,
            Err(e) if Instant::now() < deadline => {
                eprintln!("hub on the promoted replica not started yet: {e:#}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("the hub on the promoted replica: {e:#}"),
        }
    };

    wait_for(
        "every acknowledged event back at the hub",
        Duration::from_secs(120),
        || async { count(&admin, "SELECT count(*) FROM events").await == total },
    )
    .await;
    let converged = failed_at.elapsed();
    wait_for(
        "both sites' heal reports",
        Duration::from_secs(60),
        || async {
            count(
                &admin,
                "SELECT count(*) FROM sites WHERE heal_generation = 2",
            )
            .await
                == SITES.len() as i64
        },
    )
    .await;
    wait_for(
        "the release back from site A",
        Duration::from_secs(60),
        || async {
            count(
                &admin,
                "SELECT count(*) FROM work_orders WHERE id = 'SITE_A-WO-LOST'",
            )
            .await
                == 1
        },
    )
    .await;
    let duplicates = count(
        &admin,
        "SELECT count(*) - count(DISTINCT event_id) FROM events",
    )
    .await;
    assert_eq!(duplicates, 0, "every event exactly once");
    let resent = count(&admin, "SELECT sum(heal_resent)::bigint FROM sites").await;
    let unrecoverable = count(
        &admin,
        "SELECT sum(heal_unrecoverable_events)::bigint FROM sites",
    )
    .await;
    let search = count(&admin, "SELECT sum(heal_search_bytes)::bigint FROM sites").await;
    assert_eq!(
        resent, lost_before,
        "each edge resent exactly what the hub lacked"
    );
    assert_eq!(unrecoverable, 0);
    eprintln!(
        "failover drill: events lost before healing {lost_before}, re-sent {resent}, lost after \
         healing {}, unrecoverable {unrecoverable}, search {search} bytes, converged {converged:?} \
         after the kill",
        total - count(&admin, "SELECT count(*) FROM events").await
    );

    for (_, edge, dir) in edges {
        edge.stop().await.unwrap();
        let _ = std::fs::remove_dir_all(dir);
    }
    hub.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(state_dir);
}
