//! The store's side of the sync session: `sync-protocol`'s [`EdgeStore`] trait on [`Store`].
//! It sits above the tables it combines (the outbox, work order records, master data, the
//! down cursor) so that none of them has to know about the others.

use rusqlite::{Connection, OptionalExtension};
use sync_protocol::message::{DownBatch, DownItem, ErrorCode, RecordChange, RecordHeads, RecordId};
use sync_protocol::store::{EdgeStore, HeadsComparison, OutboxEntry};

use crate::records;
use crate::store::outbox::{ack, read_after};
use crate::store::{Store, StoreError, master};

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
