//! The disaster drills of issue 22, with real PostgreSQL clusters, real pgBackRest, real QUIC
//! with mutual TLS and real SQLite edges:
//!
//! - failover: edges sync into a primary whose asynchronous replica falls behind; the primary
//!   is killed with `kill -9`; the replica is promoted and a hub starts on it;
//! - restore: a base backup and the WAL archive are taken while edges sync; the primary is
//!   destroyed; pgBackRest restores it to a point in time in the middle; a hub starts on it.
//!
//! Either way the database lost events the hub had acknowledged and an HQ release: the edges
//! notice the new database generation, find what it lacks and send exactly that again, and the
//! release comes back from the edge that holds it.

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
use system_tests::pgbackrest::{Backed, BackupKind, RestoreTarget};

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

/// A hub on the drill's database with [`SITES`] registered, and an edge per site syncing to
/// it over QUIC.
struct Plant {
    state_dir: std::path::PathBuf,
    hub_addr: String,
    hub: Option<serve::Running>,
    edges: Vec<(SiteId, edge_agent::server::Running, std::path::PathBuf)>,
}

/// Event ids do not name their site: each site's come from its own millisecond range.
fn id_ms(site: usize) -> u64 {
    1_795_000_000_000 + site as u64 * 10_000_000
}

impl Plant {
    async fn start(db: &TestDb, admin: &PgPool, name: &str) -> Plant {
        let state_dir = temp_dir(&format!("{name}-hub"));
        let ca = Ca::load_or_create(&state_dir).unwrap();
        for s in SITES {
            let site = SiteId::new(s).unwrap();
            add_site(admin, &site, "Plant", "EU", "UTC").await.unwrap();
            sqlx::query("SELECT mes_ensure_partitions($1, '2026-11-01', 0)")
                .bind(s)
                .execute(admin)
                .await
                .unwrap();
            ca.write_site_bundle(&site, &state_dir.join("sites").join(s))
                .unwrap();
        }
        let hub_addr = format!("127.0.0.1:{}", free_udp_port());
        let hub = serve::start(hub_config(db, &state_dir, &hub_addr))
            .await
            .unwrap();
        let mut edges = Vec::new();
        for (i, s) in SITES.iter().enumerate() {
            let dir = temp_dir(&format!("{name}-edge-{i}"));
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
        Plant {
            state_dir,
            hub_addr,
            hub: Some(hub),
            edges,
        }
    }

    /// Every site records good parts `ns`; returns when all are at the hub (`admin` counts
    /// `total` events) and every outbox is empty: the hub acknowledged them.
    async fn record(&self, ns: std::ops::Range<u64>, admin: &PgPool, total: i64) {
        for (i, (site, edge, _)) in self.edges.iter().enumerate() {
            record(edge, good_parts(site, id_ms(i), ns.clone())).await;
        }
        wait_for("the events at the hub", Duration::from_secs(60), || async {
            count(admin, "SELECT count(*) FROM events").await == total
        })
        .await;
        for (_, edge, _) in &self.edges {
            wait_for(
                "the edge's outbox to drain",
                Duration::from_secs(30),
                || async { edge.state.store.pending().await.unwrap().events == 0 },
            )
            .await;
        }
    }

    /// HQ releases `id` to site A (through the hub's store, on `db`) and it reaches the edge.
    async fn release_to_a(&self, db: &TestDb, id: &str) {
        let site_a = self.edges[0].0.clone();
        let hq = PgHubStore::new(central_hub::db::connect(&db.hub_url).await.unwrap());
        hq.publish(&site_a, &release(&site_a, id)).await.unwrap();
        wait_for("the release at site A", Duration::from_secs(30), || async {
            order_at(&self.edges[0].1, id).await.is_some()
        })
        .await;
    }

    /// The hub instance goes (in-process, its QUIC socket would otherwise stay bound while
    /// its sessions wait on a dead database).
    async fn stop_hub(&mut self) {
        if let Some(hub) = self.hub.take() {
            hub.stop().await.unwrap();
        }
    }

    /// A hub on `db` where the old one was, retrying the bind while the old socket drains.
    async fn start_hub(&mut self, db: &TestDb) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match serve::start(hub_config(db, &self.state_dir, &self.hub_addr)).await {
                Ok(hub) => {
                    self.hub = Some(hub);
                    return;
                }
                Err(e) if Instant::now() < deadline => {
                    eprintln!("hub not started yet: {e:#}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("the hub on the recovered database: {e:#}"),
            }
        }
    }

    /// Waits until the hub on `admin` holds `total` events, both sites reported their heal and
    /// the release `id` is back; checks exactly-once and that each edge resent exactly what
    /// was lost; prints the drill's figures.
    async fn healed(&self, what: &str, admin: &PgPool, total: i64, lost_before: i64, id: &str) {
        let started = Instant::now();
        wait_for(
            "every acknowledged event back at the hub",
            Duration::from_secs(120),
            || async { count(admin, "SELECT count(*) FROM events").await == total },
        )
        .await;
        let converged = started.elapsed();
        wait_for(
            "both sites' heal reports",
            Duration::from_secs(60),
            || async {
                count(
                    admin,
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
            || async { release_count(admin, id).await == 1 },
        )
        .await;
        let duplicates = count(
            admin,
            "SELECT count(*) - count(DISTINCT event_id) FROM events",
        )
        .await;
        assert_eq!(duplicates, 0, "every event exactly once");
        let resent = count(admin, "SELECT sum(heal_resent)::bigint FROM sites").await;
        let unrecoverable = count(
            admin,
            "SELECT sum(heal_unrecoverable_events)::bigint FROM sites",
        )
        .await;
        let search = count(admin, "SELECT sum(heal_search_bytes)::bigint FROM sites").await;
        assert_eq!(
            resent, lost_before,
            "each edge resent exactly what the hub lacked"
        );
        assert_eq!(unrecoverable, 0);
        eprintln!(
            "{what}: events lost before healing {lost_before}, re-sent {resent}, lost after \
             healing {}, unrecoverable {unrecoverable}, search {search} bytes, converged \
             {converged:?} after the hub started on the recovered database",
            total - count(admin, "SELECT count(*) FROM events").await
        );
    }

    async fn stop(mut self) {
        for (_, edge, dir) in self.edges.drain(..) {
            edge.stop().await.unwrap();
            let _ = std::fs::remove_dir_all(dir);
        }
        self.stop_hub().await;
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// The database's `db` with its URLs pointed at another cluster (a promoted replica, a
/// restored copy on another port).
fn moved(db: &TestDb, from: &str, to: &str) -> TestDb {
    let m = |u: &str| u.replace(from, to);
    TestDb {
        name: db.name.clone(),
        admin_url: m(&db.admin_url),
        hub_url: m(&db.hub_url),
        reporting_url: m(&db.reporting_url),
    }
}

async fn release_count(admin: &PgPool, id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM work_orders WHERE id = $1")
        .bind(id)
        .fetch_one(admin)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_lagging_replica_loses_no_acknowledged_event() {
    init_logs();
    let primary = PrivateCluster::start(false).expect("a private primary");
    let replica = primary.start_replica().expect("a streaming replica");
    let db = primary.server().fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url).await.unwrap();
    let mut plant = Plant::start(&db, &admin, "failover").await;
    let total_kept = KEPT as i64 * SITES.len() as i64;
    plant.record(0..KEPT, &admin, total_kept).await;

    // The replica replays all of that, then its WAL receiver is cut off: from now on it is
    // an asynchronous replica behind its primary.
    let replica_root = central_hub::db::connect(&primary.url_on(&replica, &primary.admin_url))
        .await
        .unwrap();
    system_tests::pg::wait_replayed(&admin, &replica_root).await;
    system_tests::pg::cut_off(&replica_root, &admin).await;

    // What only the primary will have: more events (acknowledged to the edges, which keep
    // them only for their retention) and an HQ release that reached site A.
    let total = total_kept + LOST as i64 * SITES.len() as i64;
    plant.record(KEPT..KEPT + LOST, &admin, total).await;
    plant.release_to_a(&db, "SITE_A-WO-LOST").await;

    // The primary dies; the replica is promoted; a hub starts on it where the old one was.
    plant.stop_hub().await;
    kill_9(&primary);
    replica.promote().expect("promote the replica");
    let promoted = moved(
        &db,
        &format!(":{}/", primary.port()),
        &format!(":{}/", replica.port()),
    );
    let admin = central_hub::db::connect(&promoted.admin_url).await.unwrap();
    let lost_before = total - count(&admin, "SELECT count(*) FROM events").await;
    assert!(
        lost_before >= LOST as i64 * SITES.len() as i64,
        "the replica should lack what was written after it was cut off: lacks {lost_before}"
    );
    assert_eq!(
        release_count(&admin, "SITE_A-WO-LOST").await,
        0,
        "lost with the primary"
    );
    plant.start_hub(&promoted).await;
    plant
        .healed(
            "failover drill",
            &admin,
            total,
            lost_before,
            "SITE_A-WO-LOST",
        )
        .await;
    plant.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_point_in_time_restore_is_healed_by_the_edges() {
    init_logs();
    let mut backed = Backed::start().expect("a cluster archiving to pgBackRest");
    let cluster = backed.cluster().unwrap();
    let old_port = cluster.port();
    let db = cluster.server().fresh_database().await;
    db.migrate().await;
    let admin = central_hub::db::connect(&db.admin_url).await.unwrap();
    let mut plant = Plant::start(&db, &admin, "restore").await;
    let per_site = |n: u64| n as i64 * SITES.len() as i64;
    plant.record(0..KEPT, &admin, per_site(KEPT)).await;
    backed.backup(BackupKind::Full).expect("a full backup");
    // pgBackRest restores a point in time from a backup that stopped before it (to the
    // second): the target is a clear second after the backup.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let half = KEPT + LOST / 2;
    plant.record(KEPT..half, &admin, per_site(half)).await;
    let target: String = sqlx::query_scalar(
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // After the target: more events and an HQ release, acknowledged and archived, then lost.
    let total = per_site(KEPT + LOST);
    plant.record(half..KEPT + LOST, &admin, total).await;
    plant.release_to_a(&db, "SITE_A-WO-LATE").await;
    backed
        .switch_wal_and_wait_archived()
        .await
        .expect("the WAL in the archive");

    plant.stop_hub().await;
    admin.close().await;
    backed.destroy().expect("destroy the primary");
    let timings = backed
        .restore(&RestoreTarget::Time(target.clone()))
        .await
        .expect("restore to the target");
    let new_port = backed.cluster().unwrap().port();
    let restored = moved(&db, &format!(":{old_port}/"), &format!(":{new_port}/"));
    let admin = central_hub::db::connect(&restored.admin_url).await.unwrap();
    let lost_before = total - count(&admin, "SELECT count(*) FROM events").await;
    assert_eq!(
        lost_before,
        per_site(KEPT + LOST - half),
        "restored to the target"
    );
    assert_eq!(
        release_count(&admin, "SITE_A-WO-LATE").await,
        0,
        "released after the target"
    );
    eprintln!(
        "restore drill: pgbackrest restore {:?}, replay and promotion {:?}, to {target}",
        timings.restore, timings.start
    );
    plant.start_hub(&restored).await;
    plant
        .healed(
            "restore drill",
            &admin,
            total,
            lost_before,
            "SITE_A-WO-LATE",
        )
        .await;
    plant.stop().await;
}
