//! The hub's store: `sync_protocol::store::HubStore` on PostgreSQL ([`PgHubStore`]).
//!
//! Every method opens a transaction, scopes it to the session's site with
//! [`crate::db::scoped`] (row-level security), does its work, and commits before returning:
//! the session acks only after that.
//!
//! * [`events`]: a batch of events in one statement, duplicates skipped, and what was new;
//! * [`sums`]: the production counts and first sightings of the new events, summed in Rust
//!   and written in one statement;
//! * [`records`]: Automerge changes merged into the hub's copy of their record, work orders
//!   materialized, conflicts tracked, the down log appended;
//! * [`gap`]: a site's events summarised over spans of recording time and listed by id, for
//!   finding what the hub lost in a restore or a failover.
//!
//! State changes, material movements and corrections go on to [`crate::rollup`].

mod events;
pub mod gap;
mod records;
mod sums;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use automerge::AutoCommit;
use shared_model::{Event, EventId, SiteId};
use sqlx::{PgPool, Row};
use sync_protocol::gap::{Span, Summary};
use sync_protocol::message::{
    DownItem, ErrorCode, HealReport, HubGeneration, RecordChange, RecordHeads, RecordId,
};
use sync_protocol::store::{DownEntry, HeadsComparison, HubStore, IngestReport};

use crate::db::HubStoreError;
use crate::db::convert::{parse_kind, ts};
use crate::db::scoped;
use crate::rollup::SiteClock;

/// Longest the hub works on a batch's changes on a blocking thread — decoding them, or merging
/// one into its record — before it refuses the batch with `limit_exceeded`. The pre-scan's
/// caps (`records::CHANGE_OPS_MAX`, `DOC_OPS_MAX`) already bound that work to milliseconds in
/// a release build; the deadline is the backstop should automerge still find a slow path, so
/// that no session waits on it and no transaction stays open behind it. (A blocking thread
/// cannot be cancelled: one that overran finishes on its own and its result is dropped.)
pub const CHANGE_WORK_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// Groups of at least this many events are ingested as two concurrent halves (a backlog
/// drain's groups; live traffic comes in small groups and keeps to one connection).
pub const SPLIT_INGEST_MIN: usize = 2_048;

#[derive(Debug, Clone)]
pub struct PgHubStore {
    pool: PgPool,
    /// Each site's time zone, read once: it decides the rollups' hour buckets.
    clocks: Arc<Mutex<HashMap<SiteId, SiteClock>>>,
    /// Groups of at least this many events are ingested as two concurrent halves.
    split_min: usize,
    /// The database's generation, told to healing edges; observed again every few seconds,
    /// so a restore or a failover under a running hub is noticed.
    generation: Arc<crate::db::generation::GenerationWatch>,
}

impl PgHubStore {
    pub fn new(pool: PgPool) -> Self {
        Self {
            generation: Arc::new(crate::db::generation::GenerationWatch::new(pool.clone())),
            pool,
            clocks: Arc::default(),
            split_min: SPLIT_INGEST_MIN,
        }
    }

    /// The store with another threshold for two-halves ingests ([`SPLIT_INGEST_MIN`]): the
    /// rollup oracle sets a small one so that its small random batches take that path too.
    pub fn with_split_ingest_min(mut self, events: usize) -> Self {
        self.split_min = events.max(2);
        self
    }

    /// The site's time zone and how its local hours fall on UTC.
    pub async fn clock(&self, site: &SiteId) -> Result<SiteClock, HubStoreError> {
        if let Some(c) = self.clocks.lock().ok().and_then(|m| m.get(site).cloned()) {
            return Ok(c);
        }
        let mut tx = scoped(&self.pool, site).await?;
        let row = crate::db::query(
            "SELECT timezone,
                    extract(epoch FROM (now() AT TIME ZONE timezone) - (now() AT TIME ZONE 'UTC'))::int8
                        AS offset_seconds
             FROM sites WHERE site_id = $1",
        )
        .bind(site.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        let clock = match row {
            Some(r) => {
                let offset: i64 = r.try_get("offset_seconds")?;
                SiteClock::new(r.try_get("timezone")?, offset)
            }
            None => SiteClock::utc(),
        };
        if let Ok(mut m) = self.clocks.lock() {
            m.insert(site.clone(), clock.clone());
        }
        Ok(clock)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends an item to a site's down log (an HQ release or edit, master data); returns its
    /// cursor. Record changes are merged into the hub's copy in the same transaction.
    pub async fn publish(&self, site: &SiteId, item: &DownItem) -> Result<u64, HubStoreError> {
        // Decoded before the transaction opens, like a site's changes.
        let change = match item {
            DownItem::RecordChange(c) => {
                Some(records::decode_changes(site, std::slice::from_ref(c)).await?)
            }
            DownItem::MasterUpsert { .. } | DownItem::MasterDelete { .. } => None,
        };
        let mut tx = scoped(&self.pool, site).await?;
        if let (DownItem::RecordChange(c), Some(decoded)) = (item, change) {
            for change in decoded {
                records::merge_change(&mut tx, site, c, change, records::Origin::Hq).await?;
            }
        }
        let cursor = records::append_down(&mut tx, site, item).await?;
        tx.commit().await?;
        Ok(cursor)
    }
}

impl HubStore for PgHubStore {
    type Error = HubStoreError;

    fn error_code(e: &HubStoreError) -> ErrorCode {
        match e {
            HubStoreError::ForeignRecord { .. }
            | HubStoreError::ForeignActor { .. }
            | HubStoreError::MisnamedRecord { .. } => ErrorCode::Unauthorized,
            HubStoreError::BadChange { .. } => ErrorCode::MalformedFrame,
            HubStoreError::ChangeOverLimit { .. } => ErrorCode::LimitExceeded,
            HubStoreError::Db(_) | HubStoreError::Corrupt(_) => ErrorCode::Internal,
        }
    }

    async fn ingest_events(
        &self,
        site: &SiteId,
        events: &[Event],
    ) -> Result<IngestReport, HubStoreError> {
        // A large group that can be split is ingested as two halves at once, each in its own
        // transaction on its own connection: PostgreSQL inserts both on two cores, and the
        // second half's rollups wait only for the first's row locks at the end. Either half
        // may commit without the other; the session acks neither until both have, and a
        // re-send skips what one of them already wrote.
        let report = if events.len() >= self.split_min && events::splittable(events) {
            let (a, b) = events.split_at(events.len() / 2);
            let (ra, rb) = tokio::join!(self.ingest_part(site, a), self.ingest_part(site, b));
            let (ra, rb) = (ra?, rb?);
            IngestReport {
                inserted: ra.inserted + rb.inserted,
                duplicates: ra.duplicates + rb.duplicates,
            }
        } else {
            self.ingest_part(site, events).await?
        };
        // Every event offered is either new or a duplicate, never both and never neither: the
        // session acks the whole batch on this report.
        assert_eq!(
            report.inserted + report.duplicates,
            events.len() as u64,
            "ingest report does not account for every event offered"
        );
        Ok(report)
    }

    async fn apply_changes(
        &self,
        site: &SiteId,
        changes: &[RecordChange],
    ) -> Result<(), HubStoreError> {
        // Every change is decoded before the transaction opens.
        let decoded = records::decode_changes(site, changes).await?;
        let mut tx = scoped(&self.pool, site).await?;
        for (c, change) in changes.iter().zip(decoded) {
            records::merge_change(&mut tx, site, c, change, records::Origin::Edge).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn down_after(
        &self,
        site: &SiteId,
        after_cursor: u64,
        limit: usize,
    ) -> Result<Vec<DownEntry>, HubStoreError> {
        let mut tx = scoped(&self.pool, site).await?;
        let rows = crate::db::query(
            "SELECT cursor, item FROM down_log WHERE site_id = $1 AND cursor > $2 ORDER BY cursor LIMIT $3",
        )
        .bind(site.as_str())
        .bind(after_cursor as i64)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.into_iter()
            .map(|r| {
                let cursor: i64 = r.try_get("cursor")?;
                let bytes: Vec<u8> = r.try_get("item")?;
                let item = postcard::from_bytes(&bytes)
                    .map_err(|e| HubStoreError::Corrupt(format!("down log entry {cursor}: {e}")))?;
                Ok(DownEntry {
                    cursor: cursor as u64,
                    item,
                })
            })
            .collect()
    }

    async fn record_down_ack(&self, site: &SiteId, cursor: u64) -> Result<(), HubStoreError> {
        crate::db::update_site(
            &self.pool,
            site,
            "UPDATE sites SET down_acked = greatest(down_acked, $2), last_seen_at = now() WHERE site_id = $1",
            |q| q.bind(cursor as i64),
        )
        .await?;
        Ok(())
    }

    async fn record_edge_status(
        &self,
        site: &SiteId,
        status: sync_protocol::message::EdgeStatus,
    ) -> Result<(), HubStoreError> {
        crate::db::update_site(
            &self.pool,
            site,
            "UPDATE sites SET edge_pending_events = $2, edge_pending_changes = $3,
                 edge_oldest_pending_at = $4, edge_status_at = now(), last_seen_at = now()
             WHERE site_id = $1",
            |q| {
                q.bind(status.pending_events.min(i64::MAX as u64) as i64)
                    .bind(status.pending_changes.min(i64::MAX as u64) as i64)
                    .bind(status.oldest_pending_at.map(ts))
            },
        )
        .await?;
        Ok(())
    }

    async fn generation(&self) -> Result<Option<HubGeneration>, HubStoreError> {
        let g = self.generation.current(std::time::Instant::now()).await?;
        Ok(Some(HubGeneration {
            number: g.number,
            system_id: g.system_id,
            timeline: g.timeline,
            restore_point: g.restore_point,
        }))
    }

    async fn gap_summaries(
        &self,
        site: &SiteId,
        spans: &[Span],
    ) -> Result<Vec<Summary>, HubStoreError> {
        gap::summaries(&self.pool, site, spans).await
    }

    async fn gap_ids(
        &self,
        site: &SiteId,
        span: Span,
        after: Option<EventId>,
        limit: usize,
    ) -> Result<Vec<EventId>, HubStoreError> {
        gap::event_ids_in(&self.pool, site, span, after, limit).await
    }

    async fn record_heal(&self, site: &SiteId, report: &HealReport) -> Result<(), HubStoreError> {
        let lost: u64 = report.unrecoverable.iter().map(|u| u.events).sum();
        let spans = serde_json::Value::Array(
            report
                .unrecoverable
                .iter()
                .map(|u| {
                    serde_json::json!({
                        "from": u.span.from.to_rfc3339(),
                        "to": u.span.to.to_rfc3339(),
                        "events": u.events,
                    })
                })
                .collect(),
        );
        crate::db::update_site(
            &self.pool,
            site,
            "UPDATE sites SET heal_generation = $2, heal_resent = $3,
                 heal_unrecoverable_events = $4, heal_unrecoverable = $5,
                 heal_search_bytes = $6, healed_at = now()
             WHERE site_id = $1",
            |q| {
                q.bind(i32::try_from(report.generation).unwrap_or(i32::MAX))
                    .bind(report.resent.min(i64::MAX as u64) as i64)
                    .bind(lost.min(i64::MAX as u64) as i64)
                    .bind(spans)
                    .bind(report.search_bytes.min(i64::MAX as u64) as i64)
            },
        )
        .await?;
        if lost > 0 {
            tracing::error!(
                site = %site,
                generation = report.generation,
                unrecoverable = lost,
                spans = ?report.unrecoverable,
                "the site's edge no longer holds events this database lost: they cannot be healed"
            );
        } else {
            tracing::info!(site = %site, generation = report.generation, resent = report.resent, "site healed");
        }
        Ok(())
    }

    async fn record_ids_between(
        &self,
        site: &SiteId,
        after: Option<&RecordId>,
        through: Option<&RecordId>,
    ) -> Result<Vec<RecordId>, HubStoreError> {
        let mut tx = scoped(&self.pool, site).await?;
        let rows =
            crate::db::query("SELECT record_kind, record_id FROM records WHERE site_id = $1")
                .bind(site.as_str())
                .fetch_all(&mut *tx)
                .await?;
        tx.commit().await?;
        let mut ids = rows
            .into_iter()
            .map(|r| {
                let kind: String = r.try_get("record_kind")?;
                let id: String = r.try_get("record_id")?;
                RecordId::new(parse_kind(&kind)?, id).map_err(HubStoreError::Corrupt)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // RecordId's order (kind, then id) is the protocol's page order.
        ids.retain(|r| after.is_none_or(|a| r > a) && through.is_none_or(|t| r <= t));
        ids.sort();
        Ok(ids)
    }

    async fn compare_heads(
        &self,
        site: &SiteId,
        peer: &RecordHeads,
    ) -> Result<HeadsComparison, HubStoreError> {
        let doc = load_record(&self.pool, site, &peer.record).await?;
        let mut doc = doc
            .map(|bytes| {
                AutoCommit::load(&bytes).map_err(|e| {
                    HubStoreError::Corrupt(format!("record {}: {e}", peer.record.id()))
                })
            })
            .transpose()?;
        sync_protocol::records::compare_heads(doc.as_mut(), peer)
            .map_err(|e| HubStoreError::Corrupt(format!("record {}: {e}", peer.record.id())))
    }
}

/// The hub's copy of a record's document (for an HQ edit, or to compare heads).
pub async fn load_record(
    pool: &PgPool,
    site: &SiteId,
    record: &RecordId,
) -> Result<Option<Vec<u8>>, HubStoreError> {
    let mut tx = scoped(pool, site).await?;
    let row = records::on_record(
        "SELECT doc FROM records WHERE site_id = $1 AND record_kind = $2 AND record_id = $3",
        site,
        record,
    )
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row.map(|r| r.try_get("doc")).transpose()?)
}
