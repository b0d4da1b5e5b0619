//! The hub's PostgreSQL store on a real server, through the role the hub runs as.
//!
//! Proves: migrations are repeatable and refuse a newer schema; the hub role is neither owner
//! nor superuser; events land once, in their site's month partition (or its DEFAULT partition
//! when out of range), with the rollup counting each event once; row-level security confines
//! a transaction to its site; record changes are refused outside the site's key space or with
//! another site's Automerge actor, writing nothing; and an edge's real SQLite store syncs
//! through the real sessions into this store; and its database sockets do not wait for
//! delayed ACKs (`TCP_NODELAY`, vendor/README.md).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use automerge::transaction::Transactable;
use central_hub::db::scoped;
use central_hub::db::sites::{add_site, ensure_partitions, split_default};
use central_hub::db::{connect, schema};
use central_hub::ingest::PgHubStore;
use edge_agent::metrics::Metrics;
use edge_agent::store::Store;
use shared_model::event::ProductionCount;
use shared_model::{EquipmentId, Event, EventBody, EventId, SiteId, Timestamp};
use sqlx::{Executor, PgPool, Row};
use sync_protocol::driver::{drive_edge, drive_hub};
use sync_protocol::message::{DownItem, RecordChange, RecordId, RecordKind};
use sync_protocol::session::{EdgeSession, HubSession, SessionConfig};
use sync_protocol::store::{EdgeStore, HubStore};
use system_tests::clock;
use system_tests::pg::{TestDb, server};

fn site(s: &str) -> SiteId {
    SiteId::new(s).unwrap()
}

fn count_event(site_id: &SiteId, n: u64, occurred_at: Timestamp, good: u32) -> Event {
    Event {
        event_id: EventId::from_parts(1_795_000_000_000 + n, [n as u8; 10]),
        site_id: site_id.clone(),
        occurred_at,
        recorded_at: occurred_at,
        operator: None,
        body: EventBody::ProductionCount(ProductionCount {
            equipment: EquipmentId::new("PRESS-01").unwrap(),
            work_order: None,
            good,
            scrap: 1,
            rework: 0,
            scrap_reason: None,
        }),
    }
}

/// A migrated database with SITE_A and SITE_B, and a pool as the hub role.
async fn setup() -> (TestDb, PgPool, PgHubStore) {
    let db = server().await.fresh_database().await;
    db.migrate().await;
    let admin = connect(&db.admin_url).await.unwrap();
    for s in ["SITE_A", "SITE_B"] {
        add_site(&admin, &site(s), "Plant", "EU", "UTC")
            .await
            .unwrap();
    }
    let hub = connect(&db.hub_url).await.unwrap();
    (db, admin, PgHubStore::new(hub))
}

const NOV_2026: Timestamp = Timestamp::from_millis(1_795_000_000_000); // 2026-11-17

#[tokio::test]
async fn migrations_are_repeatable_and_refuse_a_newer_schema() {
    let (_db, admin, _) = setup().await;
    assert_eq!(
        schema::migrate(&admin).await.unwrap(),
        schema::SCHEMA_VERSION
    );
    admin
        .execute("INSERT INTO schema_migrations (version) VALUES (9999)")
        .await
        .unwrap();
    let err = schema::migrate(&admin).await.unwrap_err();
    assert!(err.to_string().contains("upgrade central-hub"), "{err}");
}

#[tokio::test]
async fn the_hub_role_is_neither_owner_nor_superuser() {
    let (_db, admin, _) = setup().await;
    let row = sqlx::query(
        "SELECT rolsuper, rolbypassrls, (SELECT tableowner FROM pg_tables WHERE tablename = 'events') AS owner
         FROM pg_roles WHERE rolname = 'mes_hub'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert!(!row.get::<bool, _>("rolsuper"));
    assert!(!row.get::<bool, _>("rolbypassrls"));
    assert_ne!(row.get::<String, _>("owner"), "mes_hub");
}

#[tokio::test]
async fn events_land_once_in_their_partitions_with_the_rollup_counted_once() {
    let (_db, admin, store) = setup().await;
    let a = site("SITE_A");
    // Dated from the clock: the hub keeps month partitions from the current month on.
    let now = clock::now();
    let far_future = Timestamp::parse_rfc3339("2099-05-01T00:00:00Z").unwrap();
    let long_ago = Timestamp::parse_rfc3339("2001-01-01T00:00:00Z").unwrap();
    let mut events: Vec<Event> = (0..100).map(|n| count_event(&a, n, now, 10)).collect();
    events.push(count_event(&a, 100, far_future, 10));
    events.push(count_event(&a, 101, long_ago, 10));
    let first = store.ingest_events(&a, &events).await.unwrap();
    assert_eq!((first.inserted, first.duplicates), (102, 0));
    // The same batch again (a lost ack): nothing new.
    let again = store.ingest_events(&a, &events).await.unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 102));
    assert_eq!(
        partition_counts(&admin).await,
        vec![
            (clock::month_partition("SITE_A", now), 100),
            ("events_p_site_a_default".to_owned(), 2),
        ]
    );
    let rollup = || async {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT sum(good)::int8, sum(scrap)::int8 FROM production_hourly",
        )
        .fetch_one(&admin)
        .await
        .unwrap()
    };
    assert_eq!(rollup().await, (1020, 102), "rollup counted duplicates");

    // The partition task moves each month out of DEFAULT into its own partition, where
    // retention can archive it; a re-send still finds every event.
    let split = ensure_partitions(&admin, std::slice::from_ref(&a))
        .await
        .unwrap();
    let moved: Vec<(String, i64)> = split
        .iter()
        .map(|s| (s.month.to_string(), s.rows))
        .collect();
    assert_eq!(
        moved,
        vec![("2001-01-01".to_owned(), 1), ("2099-05-01".to_owned(), 1)]
    );
    let mut expected = vec![
        ("events_p_site_a_200101".to_owned(), 1),
        (clock::month_partition("SITE_A", now), 100),
        ("events_p_site_a_209905".to_owned(), 1),
    ];
    expected.sort();
    assert_eq!(partition_counts(&admin).await, expected);
    let again = store.ingest_events(&a, &events).await.unwrap();
    assert_eq!((again.inserted, again.duplicates), (0, 102));
    assert_eq!(rollup().await, (1020, 102));
    // Nothing left to move.
    assert_eq!(split_default(&admin, &a).await.unwrap(), vec![]);
}

/// Rows per partition of `events`, by partition name.
async fn partition_counts(admin: &PgPool) -> Vec<(String, i64)> {
    let rows = sqlx::query(
        "SELECT tableoid::regclass::text AS part, count(*) AS n FROM events GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(admin)
    .await
    .unwrap();
    rows.iter().map(|r| (r.get("part"), r.get("n"))).collect()
}

/// A month moved out of DEFAULT while the site's edge keeps sending: ingests that arrive
/// during the move wait for it and then land in the new partition, none lost or doubled,
/// and another site's ingest is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_moves_out_of_default_while_events_keep_arriving() {
    let (db, admin, store) = setup().await;
    let (a, b) = (site("SITE_A"), site("SITE_B"));
    // A backlog from before the site's first partition (a fixed past month: always past).
    let march = Timestamp::parse_rfc3339("2024-03-10T06:00:00Z").unwrap();
    let backlog: Vec<Event> = (0..500)
        .map(|n| count_event(&a, n, march.saturating_add_micros(n as i64 * 1_000_000), 1))
        .collect();
    store.ingest_events(&a, &backlog).await.unwrap();
    assert_eq!(
        partition_counts(&admin).await,
        vec![("events_p_site_a_default".to_owned(), 500)]
    );

    // The move runs in a transaction held open while more events arrive.
    let mover = connect(&db.hub_url).await.unwrap();
    let mut tx = mover.begin().await.unwrap();
    let moved: i64 =
        sqlx::query_scalar("SELECT sum(moved)::int8 FROM mes_split_default('SITE_A', 12)")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(moved, 500);
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let store = store.clone();
        let a = a.clone();
        writers.push(tokio::spawn(async move {
            // Each writer sends its own events of the month being moved, then re-sends the
            // backlog's first events (duplicates).
            let mine: Vec<Event> = (0..50)
                .map(|n| {
                    let n = 10_000 + w * 100 + n;
                    count_event(&a, n, march.saturating_add_micros(n as i64 * 1_000), 1)
                })
                .collect();
            let fresh = store.ingest_events(&a, &mine).await.unwrap();
            let dup = store
                .ingest_events(&a, &backlog_head(&a, march))
                .await
                .unwrap();
            (fresh.inserted, dup.duplicates)
        }));
    }
    // Another site is not held up by SITE_A's move.
    let other = count_event(&b, 90_000, clock::now(), 3);
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), store.ingest_events(&b, &[other]))
        .await
        .expect("SITE_B's ingest waited for SITE_A's move")
        .unwrap();
    let other_took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        writers.iter().all(|w| !w.is_finished()),
        "SITE_A's writers did not wait for the move"
    );
    tx.commit().await.unwrap();
    for w in writers {
        assert_eq!(w.await.unwrap(), (50, 10));
    }
    assert_eq!(
        partition_counts(&admin).await,
        vec![
            ("events_p_site_a_202403".to_owned(), 700),
            (clock::month_partition("SITE_B", clock::now()), 1),
        ]
    );
    let distinct: i64 = sqlx::query_scalar("SELECT count(DISTINCT event_id) FROM events")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(distinct, 701);
    let good: i64 = sqlx::query_scalar(
        "SELECT sum(good)::int8 FROM production_hourly WHERE site_id = 'SITE_A'",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(good, 700, "rollup after the move");
    println!("SITE_B's ingest during SITE_A's move took {other_took:?}");
}

/// The first ten events of the backlog in `a_month_moves_out_of_default…`.
fn backlog_head(a: &SiteId, march: Timestamp) -> Vec<Event> {
    (0..10)
        .map(|n| count_event(a, n, march.saturating_add_micros(n as i64 * 1_000_000), 1))
        .collect()
}

#[tokio::test]
async fn row_level_security_confines_a_transaction_to_its_site() {
    let (db, _admin, store) = setup().await;
    let (a, b) = (site("SITE_A"), site("SITE_B"));
    store
        .ingest_events(&a, &[count_event(&a, 1, NOV_2026, 5)])
        .await
        .unwrap();
    store
        .ingest_events(&b, &[count_event(&b, 2, NOV_2026, 7)])
        .await
        .unwrap();
    let hub = connect(&db.hub_url).await.unwrap();
    // Scoped to A: only A's rows, in every site-scoped table.
    let mut tx = scoped(&hub, &a).await.unwrap();
    for table in ["events", "production_hourly", "sites"] {
        let sites: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT site_id::text FROM {table}"
        )))
        .fetch_all(&mut *tx)
        .await
        .unwrap();
        assert_eq!(sites, vec!["SITE_A".to_owned()], "{table}");
    }
    // Writing B's row from A's scope is refused by the policy's WITH CHECK.
    let err = sqlx::query("INSERT INTO down_log (site_id, item) VALUES ('SITE_B', '\\x00')")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    drop(tx);
    // Unscoped, the hub role sees nothing at all.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&hub)
        .await
        .unwrap();
    assert_eq!(n, 0);
    // And it cannot read a partition directly, around the parent's policies.
    let err = sqlx::query("SELECT count(*) FROM events_p_site_b")
        .fetch_one(&hub)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
}

fn work_order_change(id: &str, actor: &automerge::ActorId, quantity: u64) -> RecordChange {
    let mut doc = automerge::AutoCommit::new().with_actor(actor.clone());
    doc.put(automerge::ROOT, "planned_quantity", quantity)
        .unwrap();
    doc.commit();
    RecordChange::new(
        RecordId::new(RecordKind::WorkOrder, id).unwrap(),
        doc.get_last_local_change().unwrap().raw_bytes().to_vec(),
    )
    .unwrap()
}

#[tokio::test]
async fn foreign_records_and_actors_are_refused_and_write_nothing() {
    let (_db, admin, store) = setup().await;
    let (a, b) = (site("SITE_A"), site("SITE_B"));
    let actor_a = automerge::ActorId::random();
    store
        .apply_changes(&a, &[work_order_change("SITE_A-WO-1", &actor_a, 10)])
        .await
        .unwrap();
    // B names A's work order: refused.
    let foreign = store
        .apply_changes(
            &b,
            &[work_order_change(
                "SITE_A-WO-1",
                &automerge::ActorId::random(),
                1,
            )],
        )
        .await
        .unwrap_err();
    assert!(foreign.to_string().contains("another site"), "{foreign}");
    // B reuses A's actor on its own record: refused, and the record is not created.
    let reused = store
        .apply_changes(&b, &[work_order_change("SITE_B-WO-9", &actor_a, 1)])
        .await
        .unwrap_err();
    assert!(
        reused.to_string().contains("bound to another site"),
        "{reused}"
    );
    // A whole work order whose document names another order of the site, or another site,
    // than the record it is sent as: refused, nothing written (its row would otherwise be
    // materialized over the named order's).
    let misnamed = |doc_id: &str, doc_site: &str| {
        let view = sync_protocol::records::WorkOrderView {
            order: shared_model::work_order::WorkOrder::released(
                shared_model::WorkOrderId::new(doc_id).unwrap(),
                site(doc_site),
                shared_model::MaterialId::new("BRACKET-7").unwrap(),
                5,
            ),
            work_unit: None,
        };
        let mut doc = automerge::AutoCommit::new().with_actor(automerge::ActorId::random());
        sync_protocol::records::write_all(&mut doc, &view).unwrap();
        doc.commit();
        RecordChange::new(
            RecordId::new(RecordKind::WorkOrder, "SITE_A-WO-7").unwrap(),
            doc.get_last_local_change().unwrap().raw_bytes().to_vec(),
        )
        .unwrap()
    };
    for (doc_id, doc_site, field) in [
        ("SITE_A-WO-1", "SITE_A", "names id \"SITE_A-WO-1\""),
        ("SITE_A-WO-7", "SITE_B", "names site_id \"SITE_B\""),
    ] {
        let err = store
            .apply_changes(&a, &[misnamed(doc_id, doc_site)])
            .await
            .unwrap_err();
        assert!(err.to_string().contains(field), "{err}");
        assert_eq!(
            <PgHubStore as HubStore>::error_code(&err),
            sync_protocol::message::ErrorCode::Unauthorized
        );
    }
    // The document that names itself is taken.
    store
        .apply_changes(&a, &[misnamed("SITE_A-WO-7", "SITE_A")])
        .await
        .unwrap();
    let records: Vec<String> = sqlx::query_scalar("SELECT record_id FROM records ORDER BY 1")
        .fetch_all(&admin)
        .await
        .unwrap();
    assert_eq!(
        records,
        vec!["SITE_A-WO-1".to_owned(), "SITE_A-WO-7".to_owned()]
    );
    let orders: Vec<(String, i64)> =
        sqlx::query_as("SELECT id, planned_quantity FROM work_orders ORDER BY 1")
            .fetch_all(&admin)
            .await
            .unwrap();
    assert_eq!(orders, vec![("SITE_A-WO-7".to_owned(), 5)]);
}

/// The hub's saved Automerge document of record `id`.
async fn record_doc(admin: &PgPool, id: &str) -> Vec<u8> {
    sqlx::query_scalar("SELECT doc FROM records WHERE record_id = $1")
        .bind(id)
        .fetch_one(admin)
        .await
        .unwrap()
}

/// Asserts that the store refused with `LimitExceeded`.
fn assert_limit_exceeded(err: &central_hub::db::HubStoreError) {
    assert_eq!(
        PgHubStore::error_code(err),
        sync_protocol::message::ErrorCode::LimitExceeded,
        "{err}"
    );
}

/// Automerge bombs in a batch behind a good change (79 bytes announcing 2^40 operations, or
/// one operation with 2^40 predecessors): the hub's store refuses the batch with
/// `limit_exceeded` within 100 ms and writes nothing — not the good change, not even its
/// actor's binding, since every change is decoded before the transaction opens. HQ cannot
/// publish one either. A record holding `DOC_OPS_MAX` operations refuses a change that would
/// grow it, and still takes a re-sent change it already has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_bombs_and_records_over_their_cap_are_refused_and_write_nothing() {
    use sync_protocol::records::{CHANGE_OPS_MAX, DOC_OPS_MAX};
    let (_db, admin, store) = setup().await;
    let a = site("SITE_A");
    let actor = automerge::ActorId::random();
    let bombs: [&[u8]; 2] = [
        include_bytes!("../../../fuzz/fixtures/change_ingest/bomb-ops-2e40"),
        include_bytes!("../../../fuzz/fixtures/change_ingest/bomb-preds-2e40"),
    ];
    for bomb in bombs {
        let bomb = RecordChange::new(
            RecordId::new(RecordKind::WorkOrder, "SITE_A-WO-2").unwrap(),
            bomb.to_vec(),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let err = store
            .apply_changes(
                &a,
                &[work_order_change("SITE_A-WO-1", &actor, 10), bomb.clone()],
            )
            .await
            .unwrap_err();
        let took = started.elapsed();
        assert!(took < Duration::from_millis(100), "{took:?}");
        assert_limit_exceeded(&err);
        let err = store
            .publish(&a, &DownItem::RecordChange(bomb))
            .await
            .unwrap_err();
        assert_limit_exceeded(&err);
    }
    let written: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM records) + (SELECT count(*) FROM actors)
              + (SELECT count(*) FROM down_log) + (SELECT count(*) FROM work_orders)",
    )
    .fetch_one(&admin)
    .await
    .unwrap();
    assert_eq!(written, 0, "a refused batch wrote rows");

    // A record at the cap, as the hub would have saved it after ten changes of
    // CHANGE_OPS_MAX operations (written directly: merging them one by one takes long).
    store
        .apply_changes(&a, &[work_order_change("SITE_A-WO-1", &actor, 10)])
        .await
        .unwrap();
    let mut full = automerge::AutoCommit::new().with_actor(actor.clone());
    for i in 0..DOC_OPS_MAX {
        full.put(automerge::ROOT, format!("k{}", i % 1_000), i)
            .unwrap();
        if (i + 1) % CHANGE_OPS_MAX == 0 {
            full.commit();
        }
    }
    let saved = full.save();
    sqlx::query(
        "INSERT INTO records (site_id, record_kind, record_id, doc)
         VALUES ('SITE_A', 'work_order', 'SITE_A-WO-3', $1)",
    )
    .bind(&saved)
    .execute(&admin)
    .await
    .unwrap();
    let record = RecordId::new(RecordKind::WorkOrder, "SITE_A-WO-3").unwrap();
    let resent = full.get_last_local_change().unwrap().raw_bytes().to_vec();
    full.put(automerge::ROOT, "k0", 1u64).unwrap();
    full.commit();
    let growing = full.get_last_local_change().unwrap().raw_bytes().to_vec();
    let err = store
        .apply_changes(&a, &[RecordChange::new(record.clone(), growing).unwrap()])
        .await
        .unwrap_err();
    assert_limit_exceeded(&err);
    assert!(err.to_string().contains("operations"), "{err}");
    store
        .apply_changes(&a, &[RecordChange::new(record, resent).unwrap()])
        .await
        .unwrap();
    let stored = record_doc(&admin, "SITE_A-WO-3").await;
    let mut stored = automerge::AutoCommit::load(&stored).unwrap();
    assert_eq!(
        stored.get_heads(),
        automerge::AutoCommit::load(&saved).unwrap().get_heads()
    );
}

#[tokio::test]
async fn down_log_is_per_site_and_acks_are_kept() {
    let (_db, admin, store) = setup().await;
    let (a, b) = (site("SITE_A"), site("SITE_B"));
    let item = |n| DownItem::MasterDelete {
        version: n,
        kind: shared_model::master::MasterKind::Material,
        key: format!("M{n}"),
    };
    let c1 = store.publish(&a, &item(1)).await.unwrap();
    let _ = store.publish(&b, &item(2)).await.unwrap();
    let c3 = store.publish(&a, &item(3)).await.unwrap();
    let entries = store.down_after(&a, 0, 100).await.unwrap();
    assert_eq!(
        entries.iter().map(|e| e.cursor).collect::<Vec<_>>(),
        vec![c1, c3]
    );
    assert_eq!(store.down_after(&a, c1, 100).await.unwrap().len(), 1);
    store.record_down_ack(&a, c3).await.unwrap();
    let acked: i64 = sqlx::query_scalar("SELECT down_acked FROM sites WHERE site_id = 'SITE_A'")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(acked as u64, c3);
}

/// The sessions' clock in the tests that join an edge store to this one: it does not move.
const NOW: Duration = Duration::ZERO;

/// An edge's SQLite store of site `a` in a fresh directory named after `name`.
fn edge_store(name: &str, a: &SiteId) -> (std::path::PathBuf, Store) {
    let dir = std::env::temp_dir().join(format!("mes-{name}-{}", uuid::Uuid::now_v7().simple()));
    let edge = Store::open(&dir, a.clone(), std::sync::Arc::new(Metrics::default())).unwrap();
    (dir, edge)
}

/// A new edge session over `edge` and a hub session for site `a`, with default settings.
async fn sessions(edge: &Store, a: &SiteId) -> (EdgeSession, HubSession) {
    let cfg = SessionConfig::default();
    let e = EdgeSession::new(cfg.clone(), edge.down_cursor().await.unwrap(), NOW);
    (e, HubSession::new(cfg, a.clone(), NOV_2026, NOW))
}

/// Hands every frame either session has to send to the other; whether any moved.
fn exchange(e: &mut EdgeSession, h: &mut HubSession) -> bool {
    let mut moved = false;
    while let Some(f) = e.poll_transmit() {
        h.handle_frame(NOW, &f);
        moved = true;
    }
    while let Some(f) = h.poll_transmit() {
        e.handle_frame(NOW, &f);
        moved = true;
    }
    moved
}

/// Drives both sessions over their stores and exchanges their frames until none move
/// (at most 1,000 rounds).
async fn sync_until_quiet(e: &mut EdgeSession, edge: &Store, h: &mut HubSession, hub: &PgHubStore) {
    for _ in 0..1_000 {
        drive_edge(e, edge, NOW).await.unwrap();
        drive_hub(h, hub, NOW).await.unwrap();
        if !exchange(e, h) {
            break;
        }
    }
}

/// The edge's SQLite store and this Postgres store, joined by the real sessions (frames
/// passed in memory instead of over QUIC): events and a work order go up, an HQ edit comes
/// down, both copies end with the same Automerge heads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_store_syncs_into_postgres_through_the_sessions() {
    let (_db, admin, hub) = setup().await;
    let a = site("SITE_A");
    let (dir, edge) = edge_store("edge", &a);
    {
        let mut c = edge_agent::store::open_write_connection(edge.path()).unwrap();
        let md: edge_agent::master::MasterFile = serde_json::from_str(
            r#"{"equipment":[{"id":"SITE_A","parent":null,"level":"site","name":"P","class":"site"},
                              {"id":"PRESS-01","parent":"SITE_A","level":"work_unit","name":"P1","class":"press"}],
                "materials":[{"id":"BRACKET-7","name":"Bracket","unit":"pcs","tracking":"lot"}]}"#,
        )
        .unwrap();
        edge_agent::master::import(&mut c, &md.into_records()).unwrap();
    }
    let events: Vec<Event> = (0..300).map(|n| count_event(&a, n, NOV_2026, 1)).collect();
    edge.write(move |c| edge_agent::store::insert_events_for_tests(c, &events))
        .await
        .unwrap();
    let view = sync_protocol::records::WorkOrderView {
        order: shared_model::work_order::WorkOrder::released(
            shared_model::WorkOrderId::new("SITE_A-WO-1").unwrap(),
            a.clone(),
            shared_model::MaterialId::new("BRACKET-7").unwrap(),
            100,
        ),
        work_unit: None,
    };
    let actor = edge.actor().clone();
    edge.write(move |c| edge_agent::records::create(c, &view, &actor))
        .await
        .unwrap();

    let (mut edge_session, mut hub_session) = sessions(&edge, &a).await;
    sync_until_quiet(&mut edge_session, &edge, &mut hub_session, &hub).await;
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE site_id = 'SITE_A'")
        .fetch_one(&admin)
        .await
        .unwrap();
    assert_eq!(n, 300);
    let pending = edge.pending().await.unwrap();
    assert_eq!((pending.events, pending.changes), (0, 0));

    // HQ re-plans the order on the hub's copy; the edit flows down and merges.
    let doc = record_doc(&admin, "SITE_A-WO-1").await;
    let mut hq = automerge::AutoCommit::load(&doc).unwrap();
    hq.put(automerge::ROOT, "planned_quantity", 250u64).unwrap();
    hq.commit();
    let change = RecordChange::new(
        RecordId::new(RecordKind::WorkOrder, "SITE_A-WO-1").unwrap(),
        hq.get_last_local_change().unwrap().raw_bytes().to_vec(),
    )
    .unwrap();
    hub.publish(&a, &DownItem::RecordChange(change))
        .await
        .unwrap();
    hub_session.down_available();
    sync_until_quiet(&mut edge_session, &edge, &mut hub_session, &hub).await;
    let at_edge = edge
        .read(|c| edge_agent::records::get(c, "SITE_A-WO-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(at_edge.order.planned_quantity, 250);
    let hub_qty: i64 =
        sqlx::query_scalar("SELECT planned_quantity FROM work_orders WHERE id = 'SITE_A-WO-1'")
            .fetch_one(&admin)
            .await
            .unwrap();
    assert_eq!(hub_qty, 250);
    edge.close();
    let _ = std::fs::remove_dir_all(dir);
}

/// Repair between the real stores: the edge holds a change the hub never got (its outbox entry
/// lost with an old backup) and the hub holds one the edge never got (not in any down log);
/// a heads exchange through the sessions leaves both documents with the same heads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_heals_divergent_sqlite_and_postgres_copies() {
    let (_db, admin, hub) = setup().await;
    let a = site("SITE_A");
    let (dir, edge) = edge_store("repair", &a);
    // A common ancestor at both ends: one change, applied at the hub and the edge.
    let base = work_order_change("SITE_A-WO-3", &automerge::ActorId::random(), 5);
    hub.apply_changes(&a, std::slice::from_ref(&base))
        .await
        .unwrap();
    let b2 = base.clone();
    edge.write(move |c| edge_agent::records::apply_remote(c, &[b2]))
        .await
        .unwrap();
    // Diverge: each side gets a change the other will never be sent.
    let record = RecordId::new(RecordKind::WorkOrder, "SITE_A-WO-3").unwrap();
    let fork = |quantity: u64| {
        let mut d = automerge::AutoCommit::new();
        d.apply_changes([automerge::Change::from_bytes(base.bytes().to_vec()).unwrap()])
            .unwrap();
        d.put(automerge::ROOT, "planned_quantity", quantity)
            .unwrap();
        d.commit();
        RecordChange::new(
            record.clone(),
            d.get_last_local_change().unwrap().raw_bytes().to_vec(),
        )
        .unwrap()
    };
    let at_edge = fork(7);
    let at_hub = fork(9);
    edge.write(move |c| edge_agent::records::apply_remote(c, &[at_edge]))
        .await
        .unwrap();
    hub.apply_changes(&a, &[at_hub]).await.unwrap();

    let heads = |bytes: Vec<u8>| automerge::AutoCommit::load(&bytes).unwrap().get_heads();
    let hub_doc = || record_doc(&admin, "SITE_A-WO-3");
    let edge_doc = || async {
        edge.read(|c| {
            Ok(c.query_row(
                "SELECT doc FROM records WHERE record_id = 'SITE_A-WO-3'",
                [],
                |r| r.get::<_, Vec<u8>>(0),
            )?)
        })
        .await
        .unwrap()
    };
    assert_ne!(heads(hub_doc().await), heads(edge_doc().await));

    let (mut e, mut h) = sessions(&edge, &a).await;
    let mut repair_started = false;
    for i in 0..1_000 {
        drive_edge(&mut e, &edge, NOW).await.unwrap();
        drive_hub(&mut h, &hub, NOW).await.unwrap();
        if e.is_established() && !repair_started {
            e.start_repair();
            repair_started = true;
            continue;
        }
        let moved = exchange(&mut e, &mut h);
        if !moved && repair_started && !e.repair_in_progress() {
            eprintln!("settled after {i} rounds");
            break;
        }
    }
    assert!(!e.is_closed(), "{:?}", e.close_reason());
    let (hh, eh) = (heads(hub_doc().await), heads(edge_doc().await));
    assert_eq!(hh, eh);
    assert_eq!(hh.len(), 2, "both branches kept");
    edge.close();
    let _ = std::fs::remove_dir_all(dir);
}

/// The hub's database sockets have `TCP_NODELAY` (vendor/README.md: sqlx 0.9.0 dropped it).
/// Without it, a message whose last TCP segment is short waits for PostgreSQL's delayed ACK of
/// the segments before it: ~40 ms on Linux. A parameter of 1.5 loopback segments (MSS 65,483)
/// leaves such a short tail on every query, once the connection is past its first exchanges
/// (Linux acknowledges those at once): without the option most of them stall, with it none.
#[tokio::test]
async fn database_queries_do_not_wait_for_delayed_acks() {
    let db = server().await.fresh_database().await;
    let url: sqlx::postgres::PgConnectOptions = db.admin_url.parse().unwrap();
    assert!(
        !url.get_host().starts_with('/'),
        "this test needs PostgreSQL over TCP, not a Unix socket ({})",
        url.get_host()
    );
    let pool = connect(&db.admin_url).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let payload = vec![7u8; 98_000];
    for _ in 0..20 {
        let _: i32 = sqlx::query_scalar("SELECT length($1::bytea)")
            .bind(&payload)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
    }
    let mut took = Vec::new();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let n: i32 = sqlx::query_scalar("SELECT length($1::bytea)")
            .bind(&payload)
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        took.push(started.elapsed());
        assert_eq!(n, 98_000);
    }
    // Without TCP_NODELAY about half of them stall (measured: 8 of 15 at 42-45 ms, the rest
    // under 6 ms); with it none should. A few slow ones are allowed for a busy machine.
    let stalled = took
        .iter()
        .filter(|t| **t >= Duration::from_millis(35))
        .count();
    assert!(
        stalled <= 3,
        "{stalled} of {} queries took 35 ms or more ({took:?}): the database socket waits for \
         delayed ACKs, so TCP_NODELAY is off (is the sqlx-core patch in Cargo.toml gone?)",
        took.len()
    );
}
