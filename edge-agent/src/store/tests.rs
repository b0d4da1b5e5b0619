//! Store tests on real SQLite files: schema versioning, group commit isolation, retention
//! that never prunes an unsynced event, keys and PINs. The `EdgeStore` implementation driven
//! by the real sync sessions is tested in `crate::sync_store`, work order edits in
//! `crate::records`.

use std::sync::Arc;

use shared_model::{Event, Timestamp};
use sync_protocol::store::EdgeStore;

use super::fixture::*;
use super::*;

/// The store holds `n` events, and all `n` wait in the outbox.
async fn assert_events_held(store: &Store, n: u64) {
    assert_eq!(count_events(store), n as i64);
    assert_eq!(store.pending().await.unwrap().events, n);
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
    let (_dir, store) = open("group");
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
    assert_events_held(&store, 199).await;
    store.close();
}

#[tokio::test]
async fn resent_event_ids_are_stored_once() {
    let (_dir, store) = open("dup");
    let e = event(1, T0);
    let first = store_events(&store, vec![e.clone()]).await;
    let again = store_events(&store, vec![e.clone(), e]).await;
    assert!(matches!(first, EventsOutcome::Stored { new: 1, .. }));
    assert!(matches!(again, EventsOutcome::Stored { new: 0, .. }));
    assert_events_held(&store, 1).await;
    store.close();
}

#[tokio::test]
async fn retention_prunes_only_acknowledged_old_events() {
    let (_dir, store) = open("prune");
    let old = Timestamp::from_millis(1_000_000_000_000);
    store_events(&store, (0..10).map(|n| event(n, old)).collect()).await;
    // The hub acked the first 4 outbox entries.
    store.ack_outbox(4).await.unwrap();
    // Everything is ancient, but only acked events may go.
    let pruned = store.prune_acked_before(i64::MAX).await.unwrap();
    assert_eq!(pruned, 4);
    assert_events_held(&store, 6).await;
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
    let (_dir, store) = open("prune-order");
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
