//! The outbox (what waits for the hub's ack) and retention. The `sync-protocol` edge store
//! trait on top of them is [`crate::sync_store`].

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use shared_model::EventId;
use sync_protocol::gap::Summary;
use sync_protocol::message::{RecordChange, RecordId};
use sync_protocol::store::{OutboxEntry, OutboxItem};

use super::{Store, StoreError, parse_record_kind};

/// Outbox depth by kind, for the sync status and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingCounts {
    pub events: u64,
    pub changes: u64,
}

/// Rows removed per retention transaction, so pruning never holds the writer for long.
pub(crate) const PRUNE_BATCH_ROWS: i64 = 5_000;

pub(crate) fn pending(conn: &Connection) -> Result<PendingCounts, StoreError> {
    let (events, changes): (i64, i64) = conn.query_row(
        "SELECT count(event_id), count(change) FROM outbox",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(PendingCounts {
        events: events as u64,
        changes: changes as u64,
    })
}

/// Adds a record change to the outbox (called in the same transaction as the record write).
pub(crate) fn push_change(conn: &Connection, change: &RecordChange) -> Result<(), StoreError> {
    conn.prepare_cached("INSERT INTO outbox (record_kind, record_id, change) VALUES (?1, ?2, ?3)")?
        .execute(params![
            change.record.kind.as_str(),
            change.record.id(),
            change.bytes()
        ])?;
    Ok(())
}

pub(crate) fn read_after(
    conn: &Connection,
    after_seq: u64,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT o.seq, e.body, o.record_kind, o.record_id, o.change
         FROM outbox o LEFT JOIN events e ON e.event_id = o.event_id
         WHERE o.seq > ?1 ORDER BY o.seq LIMIT ?2",
    )?;
    let rows = stmt.query_map(params![after_seq as i64, limit as i64], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, Option<Vec<u8>>>(1)?,
            r.get::<_, Option<String>>(2)?,
            r.get::<_, Option<String>>(3)?,
            r.get::<_, Option<Vec<u8>>>(4)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, body, kind, id, change) = row?;
        let item = match (body, kind, id, change) {
            (Some(body), _, _, _) => OutboxItem::Event(super::decode_event(&body)?),
            (None, Some(kind), Some(id), Some(change)) => {
                let record =
                    RecordId::new(parse_record_kind(&kind)?, id).map_err(StoreError::Corrupt)?;
                OutboxItem::Change(RecordChange::new(record, change).map_err(StoreError::Corrupt)?)
            }
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "outbox entry {seq} has neither an event nor a change"
                )));
            }
        };
        // The session frames entries in this order and acks by the highest seq sent: the
        // rows must come strictly increasing, after `after_seq`.
        debug_assert!(
            seq as u64 > out.last().map_or(after_seq, |e: &OutboxEntry| e.seq),
            "outbox seq {seq} out of order"
        );
        out.push(OutboxEntry {
            seq: seq as u64,
            item,
        });
    }
    debug_assert!(out.len() <= limit);
    Ok(out)
}

/// Drops the acknowledged outbox entries: an event is acknowledged once it has left the outbox
/// (schema 4; one range delete instead of a rewrite of every acknowledged event).
pub(crate) fn ack(conn: &Connection, up_to_seq: u64) -> Result<(), StoreError> {
    // An ack names a seq this outbox handed out (AUTOINCREMENT keeps the highest ever in
    // `sqlite_sequence`); anything past it is a bug in the session above.
    #[cfg(debug_assertions)]
    {
        let highest: Option<i64> = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'",
                [],
                |r| r.get(0),
            )
            .optional()?;
        debug_assert!(
            up_to_seq <= highest.unwrap_or(0) as u64,
            "ack up to {up_to_seq} past the highest outbox seq {highest:?}"
        );
    }
    conn.prepare_cached("DELETE FROM outbox WHERE seq <= ?1")?
        .execute([up_to_seq as i64])?;
    conn.prepare_cached(
        "INSERT INTO meta (key, value) VALUES ('last_sync_at', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute([])?;
    Ok(())
}

/// Deletes up to [`PRUNE_BATCH_ROWS`] events recorded before `cutoff_micros` that the hub
/// acknowledged (that have left the outbox). An event still in the outbox is never pruned,
/// whatever its age. The scan stops at the recording time of the oldest event waiting in the
/// outbox: after weeks offline the old unsent events would otherwise be scanned again, with the
/// writer held, by every batch; acknowledged events recorded after that one wait for it.
///
/// What goes is added to `pruned_hours` in the same transaction (see [`super::gap`]): after a
/// hub restore the edge must still know how many events it sent per hour, and their digest, to
/// tell the events it can heal from those it cannot.
pub(crate) fn prune(conn: &Connection, cutoff_micros: i64) -> Result<usize, StoreError> {
    let batch: Vec<(String, i64)> = conn
        .prepare_cached(
            "SELECT event_id, recorded_at FROM events
            WHERE recorded_at < min(?1, coalesce(
                    (SELECT e.recorded_at + 1 FROM outbox o JOIN events e ON e.event_id = o.event_id
                     ORDER BY o.seq LIMIT 1), ?1))
              AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.event_id = events.event_id)
            LIMIT ?2",
        )?
        .query_map(params![cutoff_micros, PRUNE_BATCH_ROWS], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    debug_assert!(batch.len() as i64 <= PRUNE_BATCH_ROWS);
    let mut hours: BTreeMap<i64, Summary> = BTreeMap::new();
    let mut delete = conn.prepare_cached("DELETE FROM events WHERE event_id = ?1")?;
    for (id, recorded_at) in &batch {
        let event_id: EventId = id
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("stored event id {id:?}: {e}")))?;
        hours
            .entry(sync_protocol::gap::hour_start(*recorded_at))
            .or_default()
            .add(&event_id);
        // The row was selected in this transaction, on the writer: nobody else deletes it. Were
        // it gone, its hour would count an event it never lost; the savepoint rolls back.
        if delete.execute([id])? != 1 {
            return Err(StoreError::Corrupt(format!(
                "event {id} vanished during its prune"
            )));
        }
    }
    super::gap::remember_pruned(conn, &hours)?;
    Ok(batch.len())
}

/// How long an idempotency key is remembered: a client retries within minutes, not days.
pub(crate) const IDEMPOTENCY_KEY_MICROS_MAX: i64 = 24 * 3600 * 1_000_000;

pub(crate) fn prune_idempotency(conn: &Connection, now_micros: i64) -> Result<usize, StoreError> {
    Ok(conn.execute(
        "DELETE FROM idempotency WHERE created_at < ?1",
        [now_micros.saturating_sub(IDEMPOTENCY_KEY_MICROS_MAX)],
    )?)
}

impl Store {
    pub async fn pending(&self) -> Result<PendingCounts, StoreError> {
        self.read(pending).await
    }

    /// The outbox's depth and the age of its oldest event, for the hub's per-site status.
    pub async fn sync_status(&self) -> Result<sync_protocol::message::EdgeStatus, StoreError> {
        self.read(|c| {
            let p = pending(c)?;
            let oldest: Option<i64> = c
                .query_row(
                    "SELECT e.recorded_at FROM outbox o JOIN events e ON e.event_id = o.event_id
                     ORDER BY o.seq LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(sync_protocol::message::EdgeStatus {
                pending_events: p.events,
                pending_changes: p.changes,
                oldest_pending_at: oldest.map(shared_model::Timestamp::from_micros),
            })
        })
        .await
    }

    /// Forgets idempotency keys older than a day.
    pub async fn prune_idempotency_keys(&self, now_micros: i64) -> Result<usize, StoreError> {
        self.write(move |c| prune_idempotency(c, now_micros)).await
    }

    /// Runs retention until nothing older than `cutoff_micros` is left; returns rows removed.
    pub async fn prune_acked_before(&self, cutoff_micros: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let n = self.write(move |c| prune(c, cutoff_micros)).await?;
            total += n as u64;
            if (n as i64) < PRUNE_BATCH_ROWS {
                self.metrics().events_pruned.add(total);
                return Ok(total);
            }
        }
    }
}
