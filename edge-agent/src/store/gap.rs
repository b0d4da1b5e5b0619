//! The edge's side of finding what a restored hub lost (issue 22, `sync_protocol::gap`).
//!
//! The edge summarises its events over spans of recording time: those it still holds (ids read
//! from `events` and summed in Rust, so the digest is exactly [`event_digest`]) and those its
//! retention pruned, which [`super::outbox::prune`] remembers per hour in `pruned_hours` in the
//! transaction that deletes them. It lists the ids of a span for the hub to compare, and puts
//! events the hub lacks back into the outbox, where the ordinary session sends them again and
//! the hub's idempotent ingest keeps each once.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use shared_model::{EventId, Timestamp};
use sync_protocol::gap::{EdgeSummary, HOUR_MICROS, Span, Summary};

use super::{Store, StoreError};

/// Most spans summarised in one call: each is an index range scan with the read snapshot held,
/// and the protocol compares a bounded fan-out per round.
pub const GAP_SPANS_MAX: usize = 64;
/// Most ids listed or re-queued in one call: a page of ids is one message, and a re-queue is
/// one writer job that must stay short.
pub const GAP_IDS_MAX: usize = 10_000;

/// A stored event id; one that does not parse means the file is corrupt.
fn parse_id(s: &str) -> Result<EventId, StoreError> {
    s.parse()
        .map_err(|e| StoreError::Corrupt(format!("stored event id {s:?}: {e}")))
}

/// A stored summary, checked: a negative count means the file is corrupt.
fn summary_of(events: i64, digest: i64) -> Result<Summary, StoreError> {
    let events = u64::try_from(events)
        .map_err(|_| StoreError::Corrupt(format!("pruned_hours holds {events} events")))?;
    Ok(Summary {
        events,
        // The u64 digest is stored as the i64 with the same bits (SQLite has no unsigned type).
        digest: digest as u64,
    })
}

/// Adds what one prune batch removed, per hour, to `pruned_hours` (called in the transaction
/// that deletes the events). SQLite has no XOR operator: `(a | b) & ~(a & b)` is XOR with
/// bitwise operations only, which never overflow into a REAL as `(a | b) - (a & b)` could.
pub(crate) fn remember_pruned(
    conn: &Connection,
    hours: &BTreeMap<i64, Summary>,
) -> Result<(), StoreError> {
    let mut upsert = conn.prepare_cached(
        "INSERT INTO pruned_hours (hour, events, digest) VALUES (?1, ?2, ?3)
         ON CONFLICT (hour) DO UPDATE SET
             events = events + excluded.events,
             digest = (digest | excluded.digest) & ~(digest & excluded.digest)",
    )?;
    for (hour, s) in hours {
        let events = i64::try_from(s.events)
            .map_err(|_| StoreError::Corrupt(format!("{} events in one hour", s.events)))?;
        upsert.execute(params![hour, events, s.digest as i64])?;
    }
    Ok(())
}

fn check_span_count(spans: usize) -> Result<(), StoreError> {
    if spans > GAP_SPANS_MAX {
        return Err(StoreError::Invalid {
            field: "spans".into(),
            message: format!("{spans} spans asked, at most {GAP_SPANS_MAX} per call"),
        });
    }
    Ok(())
}

fn check_id_count(field: &str, n: usize) -> Result<(), StoreError> {
    if n > GAP_IDS_MAX {
        return Err(StoreError::Invalid {
            field: field.into(),
            message: format!("{n} ids asked, at most {GAP_IDS_MAX} per call"),
        });
    }
    Ok(())
}

/// The held and pruned summaries of each span, on one connection.
///
/// The held events are found by `events_recorded (recorded_at)`, which holds the primary key
/// too, so the scan never touches the event rows (a test checks the plan). Not by
/// `acked = 0`: schema 4 dropped the `(acked, recorded_at)` index, and events acknowledged
/// under schema 3 still carry `acked = 1`, so that condition would hide them from the summary.
pub(crate) fn summaries(conn: &Connection, spans: &[Span]) -> Result<Vec<EdgeSummary>, StoreError> {
    check_span_count(spans.len())?;
    // One read transaction: retention moves events from `events` to `pruned_hours` in one
    // commit, and outside a snapshot a prune between the two scans would count an event twice
    // or not at all.
    let tx = conn.unchecked_transaction()?;
    let mut out = Vec::with_capacity(spans.len());
    {
        let mut held_ids = tx.prepare_cached(HELD_SQL)?;
        let mut pruned = tx.prepare_cached(
            "SELECT events, digest FROM pruned_hours WHERE hour >= ?1 AND hour < ?2",
        )?;
        for span in spans {
            let bounds = params![span.from.as_micros(), span.to.as_micros()];
            let mut s = EdgeSummary::default();
            let mut rows = held_ids.query(bounds)?;
            while let Some(row) = rows.next()? {
                s.held.add(&parse_id(&row.get::<_, String>(0)?)?);
            }
            let mut rows = pruned.query(bounds)?;
            while let Some(row) = rows.next()? {
                s.pruned = s.pruned.combine(summary_of(row.get(0)?, row.get(1)?)?);
            }
            out.push(s);
        }
    }
    tx.commit()?;
    Ok(out)
}

/// The ids of the events a span holds.
const HELD_SQL: &str = "SELECT event_id FROM events WHERE recorded_at >= ?1 AND recorded_at < ?2";

/// Ids of the events held in `span`, ascending (the text form of a UUID sorts as its bytes, as
/// PostgreSQL's `uuid` does), after `after`, at most `limit`.
pub(crate) fn ids_in(
    conn: &Connection,
    span: Span,
    after: Option<EventId>,
    limit: usize,
) -> Result<Vec<EventId>, StoreError> {
    check_id_count("limit", limit)?;
    // Every id sorts after the empty string.
    let after = after.map(|a| a.to_string()).unwrap_or_default();
    let mut stmt = conn.prepare_cached(
        "SELECT event_id FROM events
         WHERE recorded_at >= ?1 AND recorded_at < ?2 AND event_id > ?3
         ORDER BY event_id LIMIT ?4",
    )?;
    let mut rows = stmt.query(params![
        span.from.as_micros(),
        span.to.as_micros(),
        after,
        limit as i64
    ])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        out.push(parse_id(&row.get::<_, String>(0)?)?);
    }
    debug_assert!(out.len() <= limit);
    Ok(out)
}

/// Appends an outbox entry for each id still held and not already waiting; returns how many.
/// Like a new event's entry (`events::insert`) it is only an outbox row: the pending count is
/// read from the outbox at scrape time, the ack removes it by seq, and retention keeps the
/// event until then. Nothing else changes: the event is not new, its counts are in already.
pub(crate) fn requeue(conn: &Connection, ids: &[EventId]) -> Result<u64, StoreError> {
    check_id_count("ids", ids.len())?;
    let mut insert = conn.prepare_cached(
        "INSERT INTO outbox (event_id)
         SELECT ?1 WHERE EXISTS (SELECT 1 FROM events WHERE event_id = ?1)
                     AND NOT EXISTS (SELECT 1 FROM outbox WHERE event_id = ?1)",
    )?;
    let mut queued = 0u64;
    for id in ids {
        queued += insert.execute([id.to_string()])? as u64;
    }
    Ok(queued)
}

/// The end of the newest hour retention pruned from, if it ever pruned.
pub(crate) fn pruned_before(conn: &Connection) -> Result<Option<Timestamp>, StoreError> {
    let newest: Option<i64> = conn
        .query_row("SELECT max(hour) FROM pruned_hours", [], |r| r.get(0))
        .optional()?
        .flatten();
    Ok(newest.map(|h| Timestamp::from_micros(h.saturating_add(HOUR_MICROS))))
}

impl Store {
    /// Per span, the events this edge holds and those its retention pruned (see
    /// [`EdgeSummary`]); at most [`GAP_SPANS_MAX`] spans.
    pub async fn gap_summaries(&self, spans: Vec<Span>) -> Result<Vec<EdgeSummary>, StoreError> {
        check_span_count(spans.len())?;
        self.read(move |c| summaries(c, &spans)).await
    }

    /// Ids of the events held in `span`, ascending, after `after`, at most `limit`
    /// (≤ [`GAP_IDS_MAX`]).
    pub async fn event_ids_in(
        &self,
        span: Span,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<EventId>, StoreError> {
        check_id_count("limit", limit)?;
        self.read(move |c| ids_in(c, span, after, limit)).await
    }

    /// Puts the held events among `ids` (at most [`GAP_IDS_MAX`]) back into the outbox for the
    /// hub, unless they wait there already; returns how many were queued. Ids not held (pruned,
    /// or never here) are skipped: the caller counts them.
    pub async fn requeue_for_hub(&self, ids: Vec<EventId>) -> Result<u64, StoreError> {
        check_id_count("ids", ids.len())?;
        self.write(move |c| requeue(c, &ids)).await
    }

    /// The end of the newest hour of recording time retention pruned from: events recorded
    /// before it may be gone from this edge. `None` when nothing was ever pruned.
    pub async fn pruned_before(&self) -> Result<Option<Timestamp>, StoreError> {
        self.read(pruned_before).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixture::*;
    use sync_protocol::gap::event_digest;
    use sync_protocol::store::EdgeStore;

    const H: i64 = HOUR_MICROS;

    /// Hour `n` after the fixture's `T0` hour, plus `micros`.
    fn at(hour: i64, micros: i64) -> Timestamp {
        Timestamp::from_micros(sync_protocol::gap::hour_start(T0.as_micros()) + hour * H + micros)
    }

    fn span(from: Timestamp, to: Timestamp) -> Span {
        Span { from, to }
    }

    /// Events 0..12, event `n` recorded in hour `n / 4` (so hours 0, 1 and 2 hold four each).
    fn events() -> Vec<shared_model::Event> {
        (0..12)
            .map(|n| event(n, at(n as i64 / 4, n as i64 * 1000)))
            .collect()
    }

    fn ids_of(range: std::ops::Range<u64>) -> Vec<EventId> {
        let all = events();
        range.map(|n| all[n as usize].event_id).collect()
    }

    #[test]
    fn hours_floor_recording_times() {
        for (t, hour) in [
            (0, 0),
            (1, 0),
            (H - 1, 0),
            (H, H),
            (-1, -H),
            (-H, -H),
            (5 * H + 7, 5 * H),
            (i64::MIN, i64::MIN),
            (i64::MAX, i64::MAX - i64::MAX.rem_euclid(H)),
        ] {
            assert_eq!(sync_protocol::gap::hour_start(t), hour, "hour of {t}");
        }
    }

    #[tokio::test]
    async fn held_and_pruned_summaries_per_span() {
        let (_dir, store) = open("gap-sums");
        let all = events();
        store_events(&store, all.clone()).await;
        // The hub acked the first 6 (hour 0 and half of hour 1); retention prunes them.
        store.ack_outbox(6).await.unwrap();
        assert_eq!(store.prune_acked_before(i64::MAX).await.unwrap(), 6);

        let spans = vec![
            span(at(0, 0), at(1, 0)),
            span(at(1, 0), at(2, 0)),
            span(at(2, 0), at(3, 0)),
            span(at(0, 0), at(3, 0)),
            span(at(5, 0), at(6, 0)),
            // Half-open: `to` is excluded, `from` included (event 8 is at hour 2 + 8 ms).
            span(at(2, 8_000), at(2, 9_000)),
            // Inverted: empty on both sides.
            span(at(3, 0), at(0, 0)),
        ];
        let got = store.gap_summaries(spans).await.unwrap();
        let sum = |r: std::ops::Range<u64>| ids_of(r).iter().collect::<Summary>();
        let expected = [
            (Summary::default(), sum(0..4)),
            // Hour 1 still holds 6 and 7; 4 and 5 went, counted in the hour they started in.
            (sum(6..8), sum(4..6)),
            (sum(8..12), Summary::default()),
            (sum(6..12), sum(0..6)),
            (Summary::default(), Summary::default()),
            (sum(8..9), Summary::default()),
            (Summary::default(), Summary::default()),
        ];
        assert_eq!(got.len(), expected.len());
        for (i, (g, (held, pruned))) in got.iter().zip(expected).enumerate() {
            assert_eq!((g.held, g.pruned), (held, pruned), "span {i}");
        }
        assert_eq!(got[3].total(), sum(0..12));
        assert_eq!(got[3].total().events, 12);
        store.close();
    }

    #[tokio::test]
    async fn too_many_spans_or_ids_are_refused() {
        let (_dir, store) = open("gap-limits");
        let s = span(at(0, 0), at(1, 0));
        assert_eq!(
            store
                .gap_summaries(vec![s; GAP_SPANS_MAX])
                .await
                .unwrap()
                .len(),
            GAP_SPANS_MAX
        );
        for err in [
            store
                .gap_summaries(vec![s; GAP_SPANS_MAX + 1])
                .await
                .unwrap_err(),
            store
                .event_ids_in(s, None, GAP_IDS_MAX + 1)
                .await
                .unwrap_err(),
            store
                .requeue_for_hub(vec![ids_of(0..1)[0]; GAP_IDS_MAX + 1])
                .await
                .unwrap_err(),
        ] {
            assert!(matches!(err, StoreError::Invalid { .. }), "{err}");
            assert!(err.to_string().contains("at most"), "{err}");
        }
        store.close();
    }

    /// Paging through a span returns each of its ids once, ascending, and nothing outside it.
    #[tokio::test]
    async fn id_pages_cover_a_span_once_in_order() {
        let (_dir, store) = open("gap-ids");
        store_events(&store, events()).await;
        let s = span(at(1, 0), at(3, 0));
        let mut got = Vec::new();
        let mut after = None;
        loop {
            let page = store.event_ids_in(s, after, 3).await.unwrap();
            assert!(page.len() <= 3);
            let Some(last) = page.last() else { break };
            after = Some(*last);
            got.extend(page);
        }
        let mut expected = ids_of(4..12);
        expected.sort();
        assert_eq!(got, expected);
        assert!(got.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(store.event_ids_in(s, None, 0).await.unwrap(), vec![]);
        store.close();
    }

    /// Re-queued events go back into the outbox once, are sent and acked like new ones, and
    /// are kept by retention until that ack; ids not held are skipped.
    #[tokio::test]
    async fn requeued_events_are_sent_again_once() {
        let (_dir, store) = open("gap-requeue");
        store_events(&store, events()).await;
        store.ack_outbox(12).await.unwrap();
        assert_eq!(store.pending().await.unwrap().events, 0);
        // Events 0..4 pruned; the hub asks for 2..6 (2 and 3 are gone), 5 twice, and an id
        // this edge never had.
        let stranger = EventId::from_parts(1_700_000_000_000, [9; 10]);
        let first_seq = {
            // Prune only hour 0.
            assert_eq!(
                store
                    .prune_acked_before(at(1, 0).as_micros())
                    .await
                    .unwrap(),
                4
            );
            let mut ask = ids_of(2..6);
            ask.push(ids_of(5..6)[0]);
            ask.push(stranger);
            assert_eq!(store.requeue_for_hub(ask).await.unwrap(), 2);
            // Already waiting: not queued again.
            assert_eq!(store.requeue_for_hub(ids_of(4..6)).await.unwrap(), 0);
            12
        };
        assert_eq!(store.pending().await.unwrap().events, 2);
        let entries = store.outbox_after(first_seq, 100).await.unwrap();
        let sent: Vec<EventId> = entries
            .iter()
            .map(|e| match &e.item {
                sync_protocol::store::OutboxItem::Event(ev) => ev.event_id,
                other => panic!("expected an event, got {other:?}"),
            })
            .collect();
        assert_eq!(sent, ids_of(4..6));
        // Waiting again, they are not pruned, and retention stops at them.
        assert_eq!(store.prune_acked_before(i64::MAX).await.unwrap(), 0);
        store.ack_outbox(entries.last().unwrap().seq).await.unwrap();
        assert_eq!(store.pending().await.unwrap().events, 0);
        assert_eq!(store.prune_acked_before(i64::MAX).await.unwrap(), 8);
        store.close();
    }

    /// Retention records what it pruned per hour in its own transaction, across batches and
    /// runs, and `pruned_before` is the end of the newest pruned hour.
    #[tokio::test]
    async fn prune_remembers_pruned_hours() {
        let (_dir, store) = open("gap-pruned-hours");
        assert_eq!(store.pruned_before().await.unwrap(), None);
        let all = events();
        store_events(&store, all.clone()).await;
        store.ack_outbox(12).await.unwrap();
        // First everything before hour 1 + 5 ms (events 0..6), then the rest.
        assert_eq!(
            store
                .prune_acked_before(at(1, 5_001).as_micros())
                .await
                .unwrap(),
            6
        );
        assert_eq!(store.pruned_before().await.unwrap(), Some(at(2, 0)));
        assert_eq!(store.prune_acked_before(i64::MAX).await.unwrap(), 6);
        assert_eq!(store.pruned_before().await.unwrap(), Some(at(3, 0)));

        let c = rusqlite::Connection::open(store.path()).unwrap();
        let rows: Vec<(i64, i64, i64)> = c
            .prepare("SELECT hour, events, digest FROM pruned_hours ORDER BY hour")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let expected: Vec<(i64, i64, i64)> = (0..3)
            .map(|h| {
                let ids = ids_of(h * 4..h * 4 + 4);
                let digest = ids.iter().fold(0u64, |d, id| d ^ event_digest(id));
                (at(h as i64, 0).as_micros(), 4, digest as i64)
            })
            .collect();
        // Hour 1 was pruned in two runs: its row is the combination of both.
        assert_eq!(rows, expected);
        assert_eq!(count_events(&store), 0);
        store.close();
    }

    /// A prune larger than one batch (`PRUNE_BATCH_ROWS`) still adds every event to its hour.
    #[tokio::test]
    async fn prune_batches_add_up_in_pruned_hours() {
        let (_dir, store) = open("gap-prune-batches");
        let n = crate::store::PRUNE_BATCH_ROWS as u64 + 300;
        let evs: Vec<_> = (0..n)
            .map(|i| {
                let mut e = event(i, at((i % 3) as i64, i as i64));
                e.event_id = EventId::from_parts(1_795_000_000_000 + i, {
                    let mut r = [0u8; 10];
                    r[..8].copy_from_slice(&i.to_be_bytes());
                    r
                });
                e
            })
            .collect();
        let expected: Summary = evs.iter().map(|e| &e.event_id).collect();
        store_events(&store, evs).await;
        store.ack_outbox(n).await.unwrap();
        assert_eq!(store.prune_acked_before(i64::MAX).await.unwrap(), n);
        let got = store
            .gap_summaries(vec![span(at(-1, 0), at(4, 0))])
            .await
            .unwrap();
        assert_eq!(got[0].held, Summary::default());
        assert_eq!(got[0].pruned, expected);
        store.close();
    }

    /// The held scan is served by `events_recorded` alone (a covering index range scan), never
    /// by a full scan of the events.
    #[tokio::test]
    async fn the_held_scan_uses_the_recording_time_index() {
        let (_dir, store) = open("gap-plan");
        let c = rusqlite::Connection::open(store.path()).unwrap();
        let plan: Vec<String> = c
            .prepare(&format!("EXPLAIN QUERY PLAN {HELD_SQL}"))
            .unwrap()
            .query_map(params![0, 1], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            plan,
            vec![
                "SEARCH events USING COVERING INDEX events_recorded (recorded_at>? AND recorded_at<?)"
                    .to_owned()
            ],
            "{plan:?}"
        );
        store.close();
    }
}
