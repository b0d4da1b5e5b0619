//! Readings into a real store file: the memory commits with the events, so a reading
//! delivered twice or replayed after a restart counts once.

use std::sync::Arc;

use shared_model::work_order::{WorkOrder, WorkOrderAction};
use shared_model::{EquipmentId, MaterialId, WorkOrderId};

use super::*;
use crate::connectors::config::parse;
use crate::store::fixture::{T0, count_events, open, site};
use crate::store::open_write_connection;

fn spec() -> Arc<ConnectorSpec> {
    let mut specs = parse(&crate::connectors::config::tests::mqtt_file("p", "")).unwrap();
    Arc::new(specs.remove(0))
}

fn reading(tag: usize, v: i64, at: i64) -> Reading {
    Reading {
        tag,
        value: TagValue::Int(v),
        source_time: Some(T0.saturating_add_micros(at)),
    }
}

fn good_total(store: &Store) -> (u64, Option<String>) {
    let c = rusqlite::Connection::open(store.path()).unwrap();
    let mut total = 0;
    let mut order = None;
    let mut stmt = c
        .prepare("SELECT body FROM events WHERE kind = 'production_count'")
        .unwrap();
    for body in stmt
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .map(Result::unwrap)
    {
        let e = crate::store::decode_event(&body).unwrap();
        if let EventBody::ProductionCount(p) = e.body {
            total += u64::from(p.good);
            order = p.work_order.map(|w| w.to_string());
        }
    }
    (total, order)
}

#[tokio::test]
async fn deltas_commit_with_the_memory_and_a_replay_counts_once() {
    let (_dir, store) = open("connector-commit");
    let sink = Sink::new(store.clone(), spec());
    let now = T0.saturating_add_micros(10_000_000);
    // Baseline, then +5, then a rollover of +16.
    let batch = vec![
        reading(0, 65_000, 1),
        reading(0, 65_005, 2),
        reading(0, 5, 3),
    ];
    let c = sink.commit(batch, now).await.unwrap();
    assert_eq!(c.events, 2);
    assert_eq!(good_total(&store).0, 5 + 536);
    // The last reading again (a re-read after a reconnect) with a fresh sink (a restart):
    // nothing moves.
    let again = Sink::new(store.clone(), spec());
    let c = again.commit(vec![reading(0, 5, 3)], now).await.unwrap();
    assert_eq!(c.events, 0);
    assert_eq!(good_total(&store).0, 541);
    // A reset is counted from zero and leaves a notice.
    let c = again.commit(vec![reading(0, 3, 4)], now).await.unwrap();
    assert_eq!(c.notices.len(), 1, "{c:?}");
    assert_eq!(good_total(&store).0, 544);
    let conn = open_write_connection(store.path()).unwrap();
    let n = notices(&conn, "line1", 10).unwrap();
    assert_eq!(n.len(), 1);
    assert!(n[0].2.contains("counter reset from 5 to 3"), "{n:?}");
}

#[tokio::test]
async fn counts_go_to_the_running_order_of_the_unit() {
    let (_dir, store) = open("connector-order");
    let id = WorkOrderId::new("SITE_001-WO-1").unwrap();
    {
        let conn = open_write_connection(store.path()).unwrap();
        let actor = automerge::ActorId::random();
        let view = crate::records::WorkOrderView {
            order: WorkOrder::released(
                id.clone(),
                site(),
                MaterialId::new("BRACKET-7").unwrap(),
                100,
            ),
            work_unit: None,
        };
        crate::records::create(&conn, &view, &actor).unwrap();
        crate::records::transition(
            &conn,
            &id,
            WorkOrderAction::Start,
            Some(EquipmentId::new("PRESS-01").unwrap()),
            T0,
            &actor,
        )
        .unwrap();
    }
    let sink = Sink::new(store.clone(), spec());
    sink.commit(vec![reading(0, 10, 1), reading(0, 12, 2)], T0)
        .await
        .unwrap();
    assert_eq!(good_total(&store), (2, Some(id.to_string())));
}

#[tokio::test]
async fn a_lost_link_makes_the_state_unknown_once_and_the_next_value_is_recorded() {
    let (_dir, store) = open("connector-unknown");
    let sink = Sink::new(store.clone(), spec());
    assert_eq!(
        sink.commit(vec![reading(1, 1, 1)], T0)
            .await
            .unwrap()
            .events,
        1
    );
    assert_eq!(sink.mark_unknown(None, T0).await.unwrap().events, 1);
    // Twice down is one unknown.
    assert_eq!(sink.mark_unknown(None, T0).await.unwrap().events, 0);
    // Back up, still running: recorded, since the last thing known is "unknown".
    assert_eq!(
        sink.commit(vec![reading(1, 1, 2)], T0)
            .await
            .unwrap()
            .events,
        1
    );
    assert_eq!(count_events(&store), 3);
}

#[tokio::test]
async fn a_value_a_tag_cannot_mean_is_rejected_and_stores_nothing() {
    let (_dir, store) = open("connector-reject");
    let sink = Sink::new(store.clone(), spec());
    let c = sink
        .commit(
            vec![Reading {
                tag: 0,
                value: TagValue::Text("lots".into()),
                source_time: None,
            }],
            T0,
        )
        .await
        .unwrap();
    assert_eq!(c.events, 0);
    assert_eq!(c.rejected.len(), 1);
    assert_eq!(count_events(&store), 0);
}

/// Older values of a counter delivered again would read as a jump or a rollover; a broker's
/// redelivery of messages already committed is recognised by digest instead, and only when
/// the broker marks it as a redelivery (so two equal messages are still two).
#[tokio::test]
async fn a_redelivered_message_already_committed_is_skipped() {
    let (_dir, store) = open("connector-redelivery");
    let sink = Sink::new(store.clone(), spec());
    let now = T0.saturating_add_micros(10_000_000);
    let msg = |v: i64, pkid: u16, redelivered: bool| Delivery {
        digest: Some(Delivery::digest_of(
            "p/good",
            pkid,
            v.to_string().as_bytes(),
        )),
        redelivered,
        readings: vec![reading(0, v, 0)],
    };
    let first = vec![
        msg(65_000, 1, false),
        msg(65_010, 2, false),
        msg(65_530, 3, false),
        msg(4, 4, false),
    ];
    let c = sink.deliver(first, now).await.unwrap();
    assert_eq!((c.events, good_total(&store).0), (3, 540));
    // The edge died before its PUBACKs: the broker sends them all again, marked DUP.
    let c = sink
        .deliver(
            vec![
                msg(65_000, 1, true),
                msg(65_010, 2, true),
                msg(65_530, 3, true),
                msg(4, 4, true),
                msg(9, 5, false),
            ],
            now,
        )
        .await
        .unwrap();
    assert_eq!((c.duplicates, c.events), (4, 1));
    assert_eq!(good_total(&store).0, 545);
}
