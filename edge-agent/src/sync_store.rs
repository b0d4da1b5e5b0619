//! The store's side of the sync session: `sync-protocol`'s [`EdgeStore`] trait on [`Store`].
//! It sits above the tables it combines (the outbox, work order records, master data, the
//! down cursor) so that none of them has to know about the others.

use rusqlite::{Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use shared_model::{EventId, Timestamp};
use sync_protocol::gap::{self, EdgeSummary, Span};
use sync_protocol::message::{
    DownBatch, DownItem, ErrorCode, HealReport, HubGeneration, RecordChange, RecordHeads, RecordId,
};
use sync_protocol::store::{EdgeStore, GenerationSeen, HeadsComparison, IdsCompared, OutboxEntry};

use crate::records;
use crate::store::gap::GAP_IDS_MAX;
use crate::store::outbox::{ack, read_after};
use crate::store::{Store, StoreError, master};

/// `meta` key: the hub generation last healed against, `system_id:timeline`.
const HUB_GENERATION: &str = "hub_generation";
/// `meta` key: the last heal's report (JSON, [`HealRecord`]).
pub const LAST_HEAL: &str = "last_heal";

fn generation_key(g: &HubGeneration) -> String {
    format!("{}:{}", g.system_id, g.timeline)
}

/// The hour-aligned window of every recording time this edge holds or remembers pruning.
fn heal_window(conn: &Connection) -> Result<Option<Span>, StoreError> {
    let (first, last): (Option<i64>, Option<i64>) = conn.query_row(
        "SELECT min(t), max(t) FROM (
             SELECT min(recorded_at) AS t FROM events UNION ALL
             SELECT max(recorded_at) FROM events UNION ALL
             SELECT min(hour) FROM pruned_hours UNION ALL
             SELECT max(hour) FROM pruned_hours)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(first
        .zip(last)
        .map(|(f, l)| gap::window(Timestamp::from_micros(f), Timestamp::from_micros(l))))
}

/// One span the hub lost for good, as the edge keeps and shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LostSpan {
    pub from: Timestamp,
    pub to: Timestamp,
    pub events: u64,
}

/// The last heal, as `GET /api/v1/sync/status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealRecord {
    pub generation: u32,
    pub timeline: u32,
    pub resent: u64,
    pub unrecoverable_events: u64,
    pub unrecoverable: Vec<LostSpan>,
    pub search_bytes: u64,
}

impl HealRecord {
    fn new(g: &HubGeneration, r: &HealReport) -> HealRecord {
        HealRecord {
            generation: g.number,
            timeline: g.timeline,
            resent: r.resent,
            unrecoverable_events: r.unrecoverable.iter().map(|u| u.events).sum(),
            unrecoverable: r
                .unrecoverable
                .iter()
                .map(|u| LostSpan {
                    from: u.span.from,
                    to: u.span.to,
                    events: u.events,
                })
                .collect(),
            search_bytes: r.search_bytes,
        }
    }
}

fn down_cursor(conn: &Connection) -> Result<u64, StoreError> {
    let v: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'down_cursor'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    v.map_or(Ok(0), |s| {
        s.parse()
            .map_err(|_| StoreError::Corrupt(format!("down cursor {s:?} is not a number")))
    })
}

/// Applies a down batch whose record changes were decoded beforehand (`decoded`, in item
/// order), with its cursor, in the writer's transaction.
fn apply_down(
    conn: &Connection,
    batch: &DownBatch,
    decoded: Vec<records::RemoteChange>,
) -> Result<(), StoreError> {
    let mut decoded = decoded.into_iter();
    for item in &batch.items {
        match item {
            DownItem::RecordChange(c) => {
                let change = decoded.next().ok_or_else(|| {
                    StoreError::Corrupt(format!("no decoded change for {}", c.record.id()))
                })?;
                records::apply_decoded(conn, vec![change])?
            }
            DownItem::MasterUpsert { version, record } => master::upsert(conn, *version, record)?,
            DownItem::MasterDelete { version, kind, key } => {
                master::delete(conn, *version, *kind, key)?
            }
        }
    }
    let current = down_cursor(conn)?;
    conn.execute(
        "INSERT INTO meta (key, value) VALUES ('down_cursor', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [current.max(batch.cursor).to_string()],
    )?;
    Ok(())
}

impl EdgeStore for Store {
    type Error = StoreError;

    fn error_code(e: &StoreError) -> ErrorCode {
        match e {
            StoreError::ChangeRefused {
                over_limit: true, ..
            } => ErrorCode::LimitExceeded,
            StoreError::ChangeRefused { .. } => ErrorCode::MalformedFrame,
            _ => ErrorCode::Internal,
        }
    }

    async fn outbox_after(
        &self,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        self.read(move |c| read_after(c, after_seq, limit)).await
    }

    async fn ack_outbox(&self, up_to_seq: u64) -> Result<(), StoreError> {
        self.write(move |c| ack(c, up_to_seq)).await
    }

    async fn down_cursor(&self) -> Result<u64, StoreError> {
        self.read(down_cursor).await
    }

    async fn apply_down(&self, batch: &DownBatch) -> Result<(), StoreError> {
        // Decoded before the job reaches the writer: see `records::decode_remote`.
        let changes = batch
            .items
            .iter()
            .filter_map(|i| match i {
                DownItem::RecordChange(c) => Some(c.clone()),
                _ => None,
            })
            .collect();
        let decoded = records::decode_remote(changes).await?;
        let batch = batch.clone();
        self.write(move |c| apply_down(c, &batch, decoded)).await
    }

    async fn heads_page(
        &self,
        after: Option<&RecordId>,
        limit: usize,
    ) -> Result<Vec<RecordHeads>, StoreError> {
        let after = after.cloned();
        self.read(move |c| records::heads_page(c, after.as_ref(), limit))
            .await
    }

    async fn compare_heads(&self, peer: &RecordHeads) -> Result<HeadsComparison, StoreError> {
        let peer = peer.clone();
        self.read(move |c| records::compare_heads(c, &peer)).await
    }

    async fn apply_repair(&self, changes: &[RecordChange]) -> Result<(), StoreError> {
        let decoded = records::decode_remote(changes.to_vec()).await?;
        // A repair follows a restore: the records come back with the totals this site had
        // reported before its disk was lost, and a later pause must not report less.
        let orders: Vec<String> = changes
            .iter()
            .filter(|ch| ch.record.kind == sync_protocol::message::RecordKind::WorkOrder)
            .map(|ch| ch.record.id().to_owned())
            .collect();
        self.write(move |c| {
            records::apply_decoded(c, decoded)?;
            crate::store::counts::at_least_these_records(c, Some(&orders))?;
            Ok(())
        })
        .await
    }

    async fn note_generation(
        &self,
        generation: &HubGeneration,
    ) -> Result<GenerationSeen, StoreError> {
        let pair = generation_key(generation);
        match self.meta(HUB_GENERATION).await? {
            None => {
                // First contact (or an edge older than healing): nothing to compare with.
                self.set_meta(HUB_GENERATION, pair).await?;
                Ok(GenerationSeen::Known)
            }
            Some(known) if known == pair => Ok(GenerationSeen::Known),
            Some(_) => Ok(GenerationSeen::Changed {
                window: self.read(heal_window).await?,
            }),
        }
    }

    async fn gap_summaries(&self, spans: &[Span]) -> Result<Vec<EdgeSummary>, StoreError> {
        Store::gap_summaries(self, spans.to_vec()).await
    }

    async fn heal_ids(
        &self,
        span: Span,
        after: Option<EventId>,
        through: Option<EventId>,
        hub_ids: &[EventId],
    ) -> Result<IdsCompared, StoreError> {
        let hub: std::collections::HashSet<&EventId> = hub_ids.iter().collect();
        let mut found = IdsCompared::default();
        let mut missing = Vec::new();
        let mut cursor = after;
        // The edge may hold many more ids than the hub between two of the hub's: page.
        loop {
            let page = self.event_ids_in(span, cursor, GAP_IDS_MAX).await?;
            let full = page.len() == GAP_IDS_MAX;
            for id in &page {
                if through.is_some_and(|t| *id > t) {
                    break;
                }
                found.held += 1;
                if !hub.contains(id) {
                    missing.push(*id);
                }
            }
            match page.last() {
                Some(last) if full && through.is_none_or(|t| *last < t) => cursor = Some(*last),
                _ => break,
            }
        }
        found.missing = missing.len() as u64;
        for chunk in missing.chunks(GAP_IDS_MAX) {
            self.requeue_for_hub(chunk.to_vec()).await?;
        }
        Ok(found)
    }

    async fn healed(
        &self,
        generation: &HubGeneration,
        report: &HealReport,
    ) -> Result<(), StoreError> {
        let record = HealRecord::new(generation, report);
        let json = serde_json::to_string(&record)
            .map_err(|e| StoreError::Corrupt(format!("heal report: {e}")))?;
        let key = generation_key(generation);
        self.write(move |c| {
            for (k, v) in [(HUB_GENERATION, key), (LAST_HEAL, json)] {
                c.execute(
                    "INSERT INTO meta (key, value) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    [k, v.as_str()],
                )?;
            }
            Ok(())
        })
        .await?;
        if report.unrecoverable.is_empty() {
            tracing::info!(
                generation = report.generation,
                resent = report.resent,
                "healed the hub after its database went back in time"
            );
        } else {
            tracing::warn!(
                generation = report.generation,
                resent = report.resent,
                unrecoverable = ?report.unrecoverable,
                "the hub lost events this edge no longer holds (pruned by retention)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shared_model::Timestamp;
    use sync_protocol::driver::{drive_edge, drive_hub};
    use sync_protocol::memory::{MemoryHubStore, exchange_frames};
    use sync_protocol::message::DownItem;
    use sync_protocol::session::{EdgeSession, HubSession, SessionConfig};
    use sync_protocol::store::EdgeStore;

    use super::*;
    use crate::store::fixture::*;

    /// The SQLite store behind the real edge session, against the in-memory hub: events and
    /// work-order changes go up and leave the outbox only when acked; an HQ change to the same
    /// work order comes down, merges, and is materialized.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_store_syncs_through_the_sessions() {
        let (_dir, store) = open("sync");
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
        automerge::transaction::Transactable::put(
            &mut hq,
            automerge::ROOT,
            "planned_quantity",
            250u64,
        )
        .unwrap();
        hq.commit();
        let change = hq.get_last_local_change().unwrap().raw_bytes().to_vec();
        hub.publish(
            &site(),
            DownItem::RecordChange(
                sync_protocol::message::RecordChange::new(record, change).unwrap(),
            ),
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
            if !exchange_frames(&mut edge, &mut hub_session, now) {
                break;
            }
        }
        assert!(edge.is_established() && !edge.is_closed());
        assert_eq!(hub.events(&site()).len(), 25);
        let pending = store.pending().await.unwrap();
        assert_eq!((pending.events, pending.changes), (0, 0));
        // The merge kept the site's state and took HQ's quantity.
        let merged = store.work_order("SITE_001-WO-1").await.unwrap().unwrap();
        assert_eq!(merged.order.planned_quantity, 250);
        assert_eq!(merged.order.state, created.order.state);
        assert_eq!(store.down_cursor().await.unwrap(), hub.down_head(&site()));
        assert!(store.meta("last_sync_at").await.unwrap().is_some());
        store.close();
    }

    /// The SQLite store heals a hub whose database went back in time: the hub (in memory here;
    /// `tests/tests/sync/heal.rs` runs real PostgreSQL) forgets what was recorded after hour
    /// 2 and names a new generation; the edge finds exactly those events and sends them again;
    /// what its retention already pruned (hour 1 to 2) is reported as lost, to the hour. The
    /// generation is remembered only after the heal: the next session starts none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hub_that_went_back_in_time_is_healed_from_the_sqlite_store() {
        use sync_protocol::message::HubGeneration;
        let (_dir, store) = open("heal");
        const HOUR: i64 = 3_600_000_000;
        // 600 events over 6 hours, one every 36 s, ending before the hub's clock (T0).
        let first = T0.saturating_add_micros(-7 * HOUR);
        let at = |n: u64| first.saturating_add_micros(n as i64 * 36_000_000);
        store_events(&store, (0..600).map(|n| event(n, at(n))).collect()).await;
        let hub = MemoryHubStore::new();
        let generation = |number, timeline| HubGeneration {
            number,
            system_id: 7_441_234_567_890_123_456,
            timeline,
            restore_point: None,
        };
        hub.set_generation(Some(generation(1, 1)));
        async fn sessions(store: &Store) -> (EdgeSession, HubSession) {
            let cfg = SessionConfig::default();
            let cursor = store.down_cursor().await.unwrap();
            (
                EdgeSession::new(cfg.clone(), cursor, Duration::ZERO),
                HubSession::new(cfg, site(), T0, Duration::ZERO),
            )
        }
        async fn run(
            edge: &mut EdgeSession,
            hub_session: &mut HubSession,
            store: &Store,
            hub: &MemoryHubStore,
        ) {
            let now = Duration::ZERO;
            for _ in 0..2_000 {
                drive_edge(edge, store, now).await.unwrap();
                drive_hub(hub_session, hub, now).await.unwrap();
                if !exchange_frames(edge, hub_session, now) {
                    return;
                }
            }
            panic!("the sessions did not settle");
        }
        let (mut e, mut h) = sessions(&store).await;
        run(&mut e, &mut h, &store, &hub).await;
        assert_eq!(hub.events(&site()).len(), 600);
        assert_eq!(store.pending().await.unwrap().events, 0);

        // Retention forgets hour 0 to 2; the hub is restored to hour 1.
        let pruned = store
            .prune_acked_before(first.saturating_add_micros(2 * HOUR).as_micros())
            .await
            .unwrap();
        assert_eq!(pruned, 200);
        let lost = hub.lose_events_recorded_since(&site(), first.saturating_add_micros(HOUR));
        assert_eq!(lost, 500);
        hub.set_generation(Some(generation(2, 2)));

        let (mut e, mut h) = sessions(&store).await;
        run(&mut e, &mut h, &store, &hub).await;
        assert_eq!(hub.events(&site()).len(), 500, "hours 2 to 6 are back");
        let reports = hub.heal_reports(&site());
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].resent, 400);
        let gone: u64 = reports[0].unrecoverable.iter().map(|u| u.events).sum();
        assert_eq!(gone, 100, "hour 1 to 2 was pruned and lost: said so");
        let record: HealRecord =
            serde_json::from_str(&store.meta(LAST_HEAL).await.unwrap().unwrap()).unwrap();
        assert_eq!((record.generation, record.unrecoverable_events), (2, 100));

        let (mut e, mut h) = sessions(&store).await;
        run(&mut e, &mut h, &store, &hub).await;
        assert_eq!(hub.heal_reports(&site()).len(), 1, "no second heal");
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
                include_bytes!("../../fuzz/fixtures/change_ingest/bomb-ops-2e40"),
            ),
            (
                "bomb-preds-2e40",
                include_bytes!("../../fuzz/fixtures/change_ingest/bomb-preds-2e40"),
            ),
        ];
        for (name, bomb) in bombs {
            let (_dir, store) = open("bomb");
            let record = |id: &str| RecordId::new(RecordKind::WorkOrder, id).unwrap();
            let mut doc = automerge::AutoCommit::new();
            automerge::transaction::Transactable::put(
                &mut doc,
                automerge::ROOT,
                "state",
                "running",
            )
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
                if !exchange_frames(&mut edge, &mut hub_session, now) {
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
}
