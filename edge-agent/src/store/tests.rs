//! Store tests on real SQLite files: schema versioning, group commit isolation, retention
//! that never prunes an unsynced event, and the `EdgeStore` implementation driven by the real
//! sync sessions against the in-memory hub.

use std::sync::Arc;
use std::time::Duration;

use shared_model::event::ProductionCount;
use shared_model::{EquipmentId, Event, EventBody, EventId, SiteId, Timestamp};
use sync_protocol::driver::{drive_edge, drive_hub};
use sync_protocol::memory::MemoryHubStore;
use sync_protocol::message::DownItem;
use sync_protocol::session::{EdgeSession, HubSession, SessionConfig};
use sync_protocol::store::EdgeStore;

use super::*;
use crate::master;

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "edge-store-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const T0: Timestamp = Timestamp::from_millis(1_795_000_000_000);

fn site() -> SiteId {
    SiteId::new("SITE_001").unwrap()
}

fn open(dir: &TempDir) -> Store {
    let store = Store::open(&dir.0, site(), Arc::new(Metrics::default())).unwrap();
    let mut conn = open_write_connection(store.path()).unwrap();
    let md: master::MasterFile = serde_json::from_str(
        r#"{"equipment":[{"id":"SITE_001","parent":null,"level":"site","name":"Plant","class":"site"},
                          {"id":"PRESS-01","parent":"SITE_001","level":"work_unit","name":"Press","class":"press"}],
            "materials":[{"id":"BRACKET-7","name":"Bracket","unit":"pcs","tracking":"lot"}]}"#,
    )
    .unwrap();
    master::import(&mut conn, &md.into_records()).unwrap();
    store
}

fn event(n: u64, recorded_at: Timestamp) -> Event {
    Event {
        event_id: EventId::from_parts(1_795_000_000_000 + n, [n as u8; 10]),
        site_id: site(),
        occurred_at: recorded_at,
        recorded_at,
        operator: None,
        body: EventBody::ProductionCount(ProductionCount {
            equipment: EquipmentId::new("PRESS-01").unwrap(),
            work_order: None,
            good: 1,
            scrap: 0,
            rework: 0,
            scrap_reason: None,
        }),
    }
}

async fn store_events(store: &Store, events: Vec<Event>) -> EventsOutcome {
    store
        .write(move |c| insert_events(c, &events, None, 0, |_| String::new()))
        .await
        .unwrap()
}

fn count_events(store: &Store) -> i64 {
    let c = rusqlite::Connection::open(store.path()).unwrap();
    c.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn a_newer_schema_is_refused_with_a_clear_message() {
    let dir = TempDir::new("schema");
    let path = dir.0.join(DB_FILE);
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", schema::SCHEMA_VERSION + 1)
            .unwrap();
    }
    let err = Store::open(&dir.0, site(), Arc::new(Metrics::default())).unwrap_err();
    assert!(matches!(err, StoreError::SchemaTooNew { .. }), "{err}");
    assert!(err.to_string().contains("upgrade edge-agent"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_commit_and_a_failing_job_rolls_back_alone() {
    let dir = TempDir::new("group");
    let store = open(&dir);
    let mut tasks = Vec::new();
    for n in 0..200u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            if n == 77 {
                // Writes a row, then fails: its savepoint must roll the row back.
                store
                    .write(move |c| {
                        insert_events(c, &[event(n, T0)], None, 0, |_| String::new())?;
                        Err::<(), _>(StoreError::Invalid {
                            field: "x".into(),
                            message: "planned failure".into(),
                        })
                    })
                    .await
                    .map(|_| ())
            } else {
                store_events(&store, vec![event(n, T0)]).await;
                Ok(())
            }
        }));
    }
    let mut failures = 0;
    for t in tasks {
        if t.await.unwrap().is_err() {
            failures += 1;
        }
    }
    assert_eq!(failures, 1);
    assert_eq!(count_events(&store), 199);
    assert_eq!(store.pending().await.unwrap().events, 199);
    store.close();
}

#[tokio::test]
async fn resent_event_ids_are_stored_once() {
    let dir = TempDir::new("dup");
    let store = open(&dir);
    let e = event(1, T0);
    let first = store_events(&store, vec![e.clone()]).await;
    let again = store_events(&store, vec![e.clone(), e]).await;
    assert!(matches!(first, EventsOutcome::Stored { new: 1, .. }));
    assert!(matches!(again, EventsOutcome::Stored { new: 0, .. }));
    assert_eq!(count_events(&store), 1);
    assert_eq!(store.pending().await.unwrap().events, 1);
    store.close();
}

#[tokio::test]
async fn retention_prunes_only_acknowledged_old_events() {
    let dir = TempDir::new("prune");
    let store = open(&dir);
    let old = Timestamp::from_millis(1_000_000_000_000);
    store_events(&store, (0..10).map(|n| event(n, old)).collect()).await;
    // The hub acked the first 4 outbox entries.
    store.ack_outbox(4).await.unwrap();
    // Everything is ancient, but only acked events may go.
    let pruned = store.prune_acked_before(i64::MAX).await.unwrap();
    assert_eq!(pruned, 4);
    assert_eq!(count_events(&store), 6);
    assert_eq!(store.pending().await.unwrap().events, 6);
    // The unacked ones are still sendable, in order.
    let entries = store.outbox_after(0, 100).await.unwrap();
    assert_eq!(entries.len(), 6);
    assert!(entries.windows(2).all(|w| w[0].seq < w[1].seq));
    // Acked but recent events stay until they age out.
    store
        .store_recent_and_ack(event(50, Timestamp::from_millis(i64::MAX / 2000)))
        .await;
    assert_eq!(store.prune_acked_before(old.as_micros()).await.unwrap(), 0);
    store.close();
}

/// Retention stops at the oldest event still waiting for the hub: an acknowledged event
/// recorded after it is kept until it is acknowledged too (so a long outage's unsent events
/// are not scanned again by every prune batch); the waiting one is never pruned.
#[tokio::test]
async fn retention_waits_for_the_oldest_unsent_event() {
    let dir = TempDir::new("prune-order");
    let store = open(&dir);
    let later = Timestamp::from_millis(1_000_000_100_000);
    let earlier = Timestamp::from_millis(1_000_000_000_000);
    store_events(&store, vec![event(1, later)]).await;
    let acked = store.outbox_after(0, 10).await.unwrap()[0].seq;
    store.ack_outbox(acked).await.unwrap();
    // Recorded earlier (a clock set back), stored later: waiting in the outbox.
    store_events(&store, vec![event(2, earlier)]).await;
    assert_eq!(store.prune_acked_before(i64::MAX).await.unwrap(), 0);
    assert_eq!(count_events(&store), 2);
    let waiting = store.outbox_after(acked, 10).await.unwrap();
    assert_eq!(waiting.len(), 1);
    store.ack_outbox(waiting[0].seq).await.unwrap();
    assert_eq!(store.prune_acked_before(i64::MAX).await.unwrap(), 2);
    store.close();
}

/// A database written by schema 3, which marked acknowledged events with `acked = 1` and
/// dropped their outbox entries, upgrades to schema 4 (acknowledged = left the outbox) and its
/// retention still removes exactly the acknowledged old events.
#[tokio::test]
async fn retention_after_the_upgrade_from_the_acked_flag_keeps_unsynced_events() {
    let dir = TempDir::new("upgrade");
    let path = dir.0.join(DB_FILE);
    let old = Timestamp::from_millis(1_000_000_000_000);
    {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        schema::migrate_to(&mut c, 3).unwrap();
        for n in 0..10u64 {
            let e = event(n, old);
            let body = postcard::to_stdvec(&e).unwrap();
            // Schema 3's ack: events 0..4 acked and out of the outbox, 4..10 waiting.
            c.execute(
                "INSERT INTO events (event_id, kind, occurred_at, recorded_at, equipment, body, acked)
                 VALUES (?1, 'production_count', ?2, ?2, 'PRESS-01', ?3, ?4)",
                rusqlite::params![e.event_id.to_string(), old.as_micros(), body, i64::from(n < 4)],
            )
            .unwrap();
            if n >= 4 {
                c.execute(
                    "INSERT INTO outbox (event_id) VALUES (?1)",
                    [e.event_id.to_string()],
                )
                .unwrap();
            }
        }
    }
    let store = Store::open(&dir.0, site(), Arc::new(Metrics::default())).unwrap();
    assert_eq!(store.pending().await.unwrap().events, 6);
    assert_eq!(store.prune_acked_before(i64::MAX).await.unwrap(), 4);
    assert_eq!(count_events(&store), 6);
    let waiting = store.outbox_after(0, 100).await.unwrap();
    assert_eq!(waiting.len(), 6);
    // Acknowledging them now (schema 4) makes them prunable too.
    store.ack_outbox(waiting.last().unwrap().seq).await.unwrap();
    assert_eq!(store.prune_acked_before(i64::MAX).await.unwrap(), 6);
    assert_eq!(count_events(&store), 0);
    store.close();
}

impl Store {
    async fn store_recent_and_ack(&self, e: Event) {
        store_events(self, vec![e]).await;
        let last = self
            .outbox_after(0, 1000)
            .await
            .unwrap()
            .last()
            .unwrap()
            .seq;
        self.ack_outbox(last).await.unwrap();
    }
}

/// The SQLite store behind the real edge session, against the in-memory hub: events and
/// work-order changes go up and leave the outbox only when acked; an HQ change to the same
/// work order comes down, merges, and is materialized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_syncs_through_the_sessions() {
    let dir = TempDir::new("sync");
    let store = open(&dir);
    store_events(&store, (0..25).map(|n| event(n, T0)).collect()).await;
    let view = crate::records::WorkOrderView {
        order: shared_model::work_order::WorkOrder::released(
            shared_model::WorkOrderId::new("SITE_001-WO-1").unwrap(),
            site(),
            shared_model::MaterialId::new("BRACKET-7").unwrap(),
            100,
        ),
        work_unit: None,
    };
    let actor = store.actor().clone();
    let created = store
        .write(move |c| crate::records::create(c, &view, &actor))
        .await
        .unwrap();
    assert_eq!(store.pending().await.unwrap().changes, 1);

    // HQ edits the same order: a change made on a copy of the document, as the hub would.
    let hub = MemoryHubStore::new();
    let record = sync_protocol::message::RecordId::work_order(&created.order.id);
    let doc_bytes: Vec<u8> = store
        .read(|c| Ok(c.query_row("SELECT doc FROM records", [], |r| r.get(0))?))
        .await
        .unwrap();
    let mut hq = automerge::AutoCommit::load(&doc_bytes).unwrap();
    automerge::transaction::Transactable::put(&mut hq, automerge::ROOT, "planned_quantity", 250u64)
        .unwrap();
    hq.commit();
    let change = hq.get_last_local_change().unwrap().raw_bytes().to_vec();
    hub.publish(
        &site(),
        DownItem::RecordChange(sync_protocol::message::RecordChange::new(record, change).unwrap()),
    );

    let cfg = SessionConfig {
        limits: sync_protocol::session::Limits {
            batch_items_max: 10,
            inflight_batches_max: 2,
            ..Default::default()
        },
        ..SessionConfig::default()
    };
    let now = Duration::ZERO;
    let mut edge = EdgeSession::new(cfg.clone(), store.down_cursor().await.unwrap(), now);
    let mut hub_session = HubSession::new(cfg, site(), T0, now);
    for _ in 0..1_000 {
        drive_edge(&mut edge, &store, now).await.unwrap();
        drive_hub(&mut hub_session, &hub, now).await.unwrap();
        let mut moved = false;
        while let Some(f) = edge.poll_transmit() {
            hub_session.handle_frame(now, &f);
            moved = true;
        }
        while let Some(f) = hub_session.poll_transmit() {
            edge.handle_frame(now, &f);
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert!(edge.is_established() && !edge.is_closed());
    assert_eq!(hub.events(&site()).len(), 25);
    let pending = store.pending().await.unwrap();
    assert_eq!((pending.events, pending.changes), (0, 0));
    // The merge kept the site's state and took HQ's quantity.
    let merged = store
        .read(|c| crate::records::get(c, "SITE_001-WO-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(merged.order.planned_quantity, 250);
    assert_eq!(merged.order.state, created.order.state);
    assert_eq!(store.down_cursor().await.unwrap(), hub.down_head(&site()));
    assert!(store.meta("last_sync_at").await.unwrap().is_some());
    store.close();
}

/// Changes from the hub that are bombs: 79 bytes announcing 2^40 operations (automerge 0.12's
/// decode spun for hours on it, in the writer thread, holding every local write) and one
/// operation with 2^40 predecessors. In a down batch behind a good change, and in a repair:
/// each is refused within 100 ms with a `limit_exceeded` error frame to the hub, nothing of
/// the batch is written (not the good change either, nor the cursor), and the writer goes on
/// serving local writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_bombs_from_the_hub_are_refused_and_write_nothing() {
    use sync_protocol::message::{ErrorCode, RecordChange, RecordId, RecordKind};
    let bombs: [(&str, &[u8]); 2] = [
        (
            "bomb-ops-2e40",
            include_bytes!("../../../fuzz/fixtures/change_ingest/bomb-ops-2e40"),
        ),
        (
            "bomb-preds-2e40",
            include_bytes!("../../../fuzz/fixtures/change_ingest/bomb-preds-2e40"),
        ),
    ];
    for (name, bomb) in bombs {
        let dir = TempDir::new("bomb");
        let store = open(&dir);
        let record = |id: &str| RecordId::new(RecordKind::WorkOrder, id).unwrap();
        let mut doc = automerge::AutoCommit::new();
        automerge::transaction::Transactable::put(&mut doc, automerge::ROOT, "state", "running")
            .unwrap();
        doc.commit();
        let good = RecordChange::new(
            record("SITE_001-WO-1"),
            doc.get_last_local_change().unwrap().raw_bytes().to_vec(),
        )
        .unwrap();
        let bomb = RecordChange::new(record("SITE_001-WO-2"), bomb.to_vec()).unwrap();
        let hub = MemoryHubStore::new();
        hub.publish(&site(), DownItem::RecordChange(good));
        hub.publish(&site(), DownItem::RecordChange(bomb.clone()));

        let cfg = SessionConfig::default();
        let now = Duration::ZERO;
        let mut edge = EdgeSession::new(cfg.clone(), 0, now);
        let mut hub_session = HubSession::new(cfg, site(), Timestamp::from_millis(0), now);
        let mut refused = None;
        let mut hub_saw = None;
        for _ in 0..100 {
            let started = std::time::Instant::now();
            if let Err(e) = drive_edge(&mut edge, &store, now).await {
                refused = Some((e.to_string(), started.elapsed()));
            }
            let report = drive_hub(&mut hub_session, &hub, now).await.unwrap();
            hub_saw = hub_saw.or(report.closed);
            let mut moved = false;
            while let Some(f) = edge.poll_transmit() {
                hub_session.handle_frame(now, &f);
                moved = true;
            }
            while let Some(f) = hub_session.poll_transmit() {
                edge.handle_frame(now, &f);
                moved = true;
            }
            if !moved {
                break;
            }
        }
        let report = drive_hub(&mut hub_session, &hub, now).await.unwrap();
        hub_saw = hub_saw.or(report.closed);
        let (message, took) = refused.unwrap_or_else(|| panic!("{name}: not refused"));
        println!("{name}: refused by the edge in {took:?}: {message}");
        assert!(took < Duration::from_millis(100), "{name}: {took:?}");
        assert!(message.contains("refused"), "{name}: {message}");
        assert_eq!(
            hub_saw.map(|r| r.code()),
            Some(ErrorCode::LimitExceeded),
            "{name}"
        );
        assert_eq!(store.down_cursor().await.unwrap(), 0, "{name}");
        let records: i64 = store
            .read(|c| Ok(c.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?))
            .await
            .unwrap();
        assert_eq!(records, 0, "{name}: a refused batch wrote records");
        // A repair carrying the bomb is refused the same way.
        let err = store.apply_repair(&[bomb]).await.unwrap_err();
        assert_eq!(
            Store::error_code(&err),
            ErrorCode::LimitExceeded,
            "{name}: {err}"
        );
        // The writer is free: a local write commits at once.
        let started = std::time::Instant::now();
        store_events(&store, vec![event(1, T0)]).await;
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(count_events(&store), 1);
        store.close();
    }
}

/// A local edit that would take a work order past `DOC_OPS_MAX` operations (which the hub
/// would refuse, stalling the outbox behind it) is refused with 422-style `Invalid`, and
/// nothing of it is stored or queued.
#[test]
fn a_local_edit_past_the_record_cap_is_refused() {
    use automerge::ReadDoc;
    use automerge::transaction::Transactable;
    use shared_model::WorkOrderId;
    use shared_model::work_order::{WorkOrder, WorkOrderAction};
    use sync_protocol::records::{CHANGE_OPS_MAX, DOC_OPS_MAX};

    let dir = TempDir::new("cap");
    let store = open(&dir);
    let conn = open_write_connection(store.path()).unwrap();
    let actor = automerge::ActorId::random();
    let id = WorkOrderId::new("SITE_001-WO-7").unwrap();
    let view = crate::records::WorkOrderView {
        order: WorkOrder::released(
            id.clone(),
            site(),
            shared_model::MaterialId::new("BRACKET-7").unwrap(),
            10,
        ),
        work_unit: None,
    };
    crate::records::create(&conn, &view, &actor).unwrap();
    let saved: Vec<u8> = conn
        .query_row("SELECT doc FROM records", [], |r| r.get(0))
        .unwrap();
    // The order's history filled up to the cap, as synced edits would have.
    let mut full = automerge::AutoCommit::load(&saved).unwrap();
    let room = DOC_OPS_MAX - full.stats().num_ops;
    for i in 0..room {
        full.put(automerge::ROOT, format!("x{}", i % 100), i)
            .unwrap();
        if (i + 1) % CHANGE_OPS_MAX == 0 {
            full.commit();
        }
    }
    full.commit();
    assert_eq!(full.stats().num_ops, DOC_OPS_MAX);
    conn.execute("UPDATE records SET doc = ?1", [full.save()])
        .unwrap();
    let queued = outbox::pending(&conn).unwrap().changes;
    let err = crate::records::transition(&conn, &id, WorkOrderAction::Start, None, T0, &actor)
        .unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid { message, .. } if message.contains("history is full")),
        "{err}"
    );
    assert_eq!(outbox::pending(&conn).unwrap().changes, queued);
    let after: Vec<u8> = conn
        .query_row("SELECT doc FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(after, full.save());
}

/// HQ cancels an order the site completed while apart: the merge shows the conflict, and a
/// supervisor's choice settles it with one new edit (which is queued for the hub).
#[test]
fn a_supervisor_settles_a_state_conflict() {
    use automerge::transaction::Transactable;
    use shared_model::WorkOrderId;
    use shared_model::work_order::{WorkOrder, WorkOrderAction, WorkOrderState};
    use sync_protocol::message::{RecordChange, RecordId};

    let dir = TempDir::new("settle");
    let store = open(&dir);
    let conn = open_write_connection(store.path()).unwrap();
    let actor = automerge::ActorId::random();
    let id = WorkOrderId::new("SITE_001-WO-9").unwrap();
    let order = WorkOrder::released(
        id.clone(),
        site(),
        shared_model::MaterialId::new("BRACKET-7").unwrap(),
        10,
    );
    let view = crate::records::WorkOrderView {
        order,
        work_unit: None,
    };
    crate::records::create(&conn, &view, &actor).unwrap();
    let record = RecordId::work_order(&id);
    let saved: Vec<u8> = conn
        .query_row(
            "SELECT doc FROM records WHERE record_id = ?1",
            [id.as_str()],
            |r| r.get(0),
        )
        .unwrap();
    // HQ, from the released order, cancels it.
    let mut hq = automerge::AutoCommit::load(&saved)
        .unwrap()
        .with_actor(automerge::ActorId::random());
    hq.put(automerge::ROOT, "state", "aborted").unwrap();
    hq.commit();
    let cancel = hq.get_last_local_change().unwrap().raw_bytes().to_vec();
    // The site, meanwhile, starts and completes it.
    for a in [WorkOrderAction::Start, WorkOrderAction::Complete] {
        crate::records::transition(&conn, &id, a, None, T0, &actor).unwrap();
    }
    crate::records::apply_remote(&conn, &[RecordChange::new(record, cancel).unwrap()]).unwrap();
    let open_conflicts = crate::records::open_conflicts(&conn).unwrap();
    assert_eq!(open_conflicts.len(), 1, "{open_conflicts:?}");
    let conflict = open_conflicts[0]["id"].as_i64().unwrap();
    let pending_before = outbox::pending(&conn).unwrap().changes;

    // Only one of the conflicting states may be chosen.
    let err = crate::records::settle_conflict(&conn, conflict, WorkOrderState::Running, &actor)
        .unwrap_err();
    assert!(
        err.to_string().contains("aborted, ended") || err.to_string().contains("ended, aborted"),
        "{err}"
    );
    let settled =
        crate::records::settle_conflict(&conn, conflict, WorkOrderState::Ended, &actor).unwrap();
    assert_eq!(settled.order.state, WorkOrderState::Ended);
    assert!(crate::records::open_conflicts(&conn).unwrap().is_empty());
    assert_eq!(outbox::pending(&conn).unwrap().changes, pending_before + 1);
    // A settled conflict cannot be settled again.
    assert!(matches!(
        crate::records::settle_conflict(&conn, conflict, WorkOrderState::Ended, &actor),
        Err(StoreError::NotFound { .. })
    ));
    drop(conn);
    store.close();
}

/// Keys made under schema 4 stay valid after the upgrade to schema 5 and can then be revoked;
/// a revoked key is no longer valid and is listed with the time of its revocation.
#[test]
fn keys_of_schema_4_survive_the_upgrade_and_can_be_revoked() {
    let dir = TempDir::new("keys-upgrade");
    let path = dir.0.join(DB_FILE);
    let key = {
        let mut c = rusqlite::Connection::open(&path).unwrap();
        schema::migrate_to(&mut c, 4).unwrap();
        let key = "edge_old";
        c.execute(
            "INSERT INTO api_keys (hash, name, created_at) VALUES (?1, 'old', 5)",
            rusqlite::params![keys::hash(key)],
        )
        .unwrap();
        key
    };
    let c = open_write_connection(&path).unwrap();
    assert!(keys::exists(&c, key).unwrap());
    let new = keys::create(&c, "old", 6).unwrap();
    assert_eq!(
        keys::revoke(&c, "old", 7).unwrap(),
        2,
        "both keys named old"
    );
    assert_eq!(
        keys::revoke(&c, "old", 8).unwrap(),
        0,
        "nothing live is left"
    );
    assert!(!keys::exists(&c, key).unwrap());
    assert!(!keys::exists(&c, &new).unwrap());
    let list = keys::list(&c).unwrap();
    assert_eq!(list.len(), 2);
    assert!(
        list.iter()
            .all(|k| k.revoked_at == Some(7) && k.name == "old")
    );
    assert_eq!(list[0].created_at, 5);
}

/// Wrong PINs, at the store: five lock, each lock longer than the one before up to 4 h, a lock
/// that ran out starts the count again, a right PIN clears, a quiet day forgets.
#[test]
fn wrong_pins_lock_longer_each_time() {
    use people::{PIN_LOCKS_MICROS, PinFailure};
    let dir = TempDir::new("pins");
    let c = open_write_connection(&dir.0.join(DB_FILE)).unwrap();
    let badge = shared_model::BadgeId::new("S1").unwrap();
    let mut now = 1_000_000_000_000;
    for lock in 0..6 {
        assert_eq!(people::pin_locked_for(&c, &badge, now).unwrap(), None);
        for left in (1..=4).rev() {
            assert_eq!(
                people::record_pin_failure(&c, &badge, now).unwrap(),
                PinFailure::TriesLeft(left)
            );
        }
        let length = PIN_LOCKS_MICROS[lock.min(3)];
        assert_eq!(
            people::record_pin_failure(&c, &badge, now).unwrap(),
            PinFailure::Locked(length)
        );
        assert_eq!(
            people::pin_locked_for(&c, &badge, now + 1).unwrap(),
            Some(length - 1)
        );
        now += length;
    }
    people::clear_pin_failures(&c, &badge).unwrap();
    assert!(!people::has_pin_failures(&c, &badge).unwrap());
    for _ in 0..4 {
        people::record_pin_failure(&c, &badge, now).unwrap();
    }
    // A day later the four wrong PINs are forgotten.
    now += people::PIN_FAILURES_FORGET_MICROS;
    assert_eq!(
        people::record_pin_failure(&c, &badge, now).unwrap(),
        PinFailure::TriesLeft(4)
    );
}
