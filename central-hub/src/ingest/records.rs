//! Record changes (Automerge) merged into the hub's copy of their record: decoded off the
//! async workers and before any transaction opens ([`decode_changes`]), then, per change,
//! the actor bound to the site, the record locked and merged, the document checked to name
//! itself, the row written, a work order's conflicts tracked and its row materialized
//! ([`merge_change`]). Also the down log's append ([`append_down`]).

use automerge::AutoCommit;
use shared_model::SiteId;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{Postgres, Row as _, Transaction};
use sync_protocol::message::{DownItem, RecordChange, RecordId, RecordKind};
use sync_protocol::records::{WorkOrderView, read_view};

use super::CHANGE_WORK_DEADLINE;
use crate::db::HubStoreError;
use crate::db::channels::{notify_data, notify_down};
use crate::db::convert::{kind_str, ts};

/// Who sent a change: an edge's changes are checked for site isolation (the change's actor
/// must be bound to the site); HQ's own edits are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    Edge,
    Hq,
}

/// Appends an item to the site's down log and wakes its sessions; returns the cursor.
pub(super) async fn append_down(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    item: &DownItem,
) -> Result<u64, HubStoreError> {
    let bytes = postcard::to_stdvec(item)
        .map_err(|e| HubStoreError::Corrupt(format!("cannot encode down item: {e}")))?;
    let cursor: i64 = crate::db::query_scalar(
        "INSERT INTO down_log (site_id, item) VALUES ($1, $2) RETURNING cursor",
    )
    .bind(site.as_str())
    .bind(bytes)
    .fetch_one(&mut **tx)
    .await?;
    notify_down(tx, site).await?;
    Ok(cursor as u64)
}

/// A refused change as the store's error: over a limit, or malformed.
fn change_error(record: &str, e: sync_protocol::records::DocError) -> HubStoreError {
    let (record, reason) = (record.to_owned(), e.to_string());
    if e.is_limit() {
        HubStoreError::ChangeOverLimit { record, reason }
    } else {
        HubStoreError::BadChange { record, reason }
    }
}

/// Runs Automerge work on a blocking thread, never on the async workers that serve the other
/// sites' sessions, and gives up on it after [`CHANGE_WORK_DEADLINE`].
async fn off_workers<T: Send + 'static>(
    record: &str,
    what: &str,
    work: impl FnOnce() -> Result<T, HubStoreError> + Send + 'static,
) -> Result<T, HubStoreError> {
    match tokio::time::timeout(CHANGE_WORK_DEADLINE, tokio::task::spawn_blocking(work)).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(HubStoreError::BadChange {
            record: record.to_owned(),
            reason: format!("{what} failed: {join}"),
        }),
        Err(_) => Err(HubStoreError::ChangeOverLimit {
            record: record.to_owned(),
            reason: format!("{what} took longer than {CHANGE_WORK_DEADLINE:?}"),
        }),
    }
}

/// Checks a batch's records against the site's key space and decodes its changes (the
/// pre-scan, then automerge), on a blocking thread with a deadline and before any transaction
/// is open: a hostile change costs no connection, no lock and no async worker.
pub(super) async fn decode_changes(
    site: &SiteId,
    changes: &[RecordChange],
) -> Result<Vec<automerge::Change>, HubStoreError> {
    for c in changes {
        if !c.record.id().starts_with(&format!("{site}-")) {
            return Err(HubStoreError::ForeignRecord {
                site: site.to_string(),
                record: c.record.id().to_owned(),
            });
        }
    }
    // The pre-scan is linear in the bytes (1 MiB at most) and never calls automerge, so it
    // runs right here: a bomb is refused without waiting for a blocking thread.
    for c in changes {
        sync_protocol::records::scan_change(c.bytes())
            .map_err(|e| change_error(c.record.id(), e.into()))?;
    }
    let first = changes.first().map_or("", |c| c.record.id()).to_owned();
    let changes = changes.to_vec();
    let decoded: Vec<automerge::Change> = off_workers(&first, "decoding the changes", move || {
        changes
            .iter()
            .map(|c| {
                sync_protocol::records::decode_untrusted(c.bytes())
                    .map_err(|e| change_error(c.record.id(), e))
            })
            .collect()
    })
    .await?;
    Ok(decoded)
}

/// What merging a change into a record's document produced, computed off the async workers.
struct Merged {
    doc: Vec<u8>,
    /// A work order's open state conflicts (empty for other kinds).
    conflicts: Vec<String>,
    /// A work order's fields, to materialize its row.
    view: Option<WorkOrderView>,
}

/// Merges one decoded change into the hub's copy of its record (the record is already known
/// to be in the site's key space: [`decode_changes`]).
pub(super) async fn merge_change(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    c: &RecordChange,
    change: automerge::Change,
    origin: Origin,
) -> Result<(), HubStoreError> {
    let record = &c.record;
    match origin {
        Origin::Edge => bind_actor(tx, site, &change).await?,
        Origin::Hq => {}
    }
    let existing = lock_record(tx, site, record).await?;
    let merged = merge_doc(record, existing, change).await?;
    if let Some(v) = &merged.view {
        check_names_itself(record, site, v)?;
    }
    write_record(tx, site, record, &merged.doc).await?;
    match record.kind {
        RecordKind::WorkOrder => track_conflicts(tx, site, record, &merged.conflicts).await?,
        RecordKind::NonConformance | RecordKind::LotHold => {}
    }
    // Work orders feed the on-time, WIP and product reports.
    notify_data(tx, Some(site)).await?;
    if let Some(v) = &merged.view {
        materialize_work_order(tx, site, v).await?;
    }
    Ok(())
}

/// Binds the change's Automerge actor to the site on first sight, and refuses an actor bound
/// to another site: one site cannot write under another's actor.
async fn bind_actor(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    change: &automerge::Change,
) -> Result<(), HubStoreError> {
    let actor = change.actor_id().to_bytes().to_vec();
    crate::db::query(
        "INSERT INTO actors (actor_id, site_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(&actor)
    .bind(site.as_str())
    .execute(&mut **tx)
    .await?;
    // Row-level security hides another site's binding: not seeing the row we just tried
    // to insert means the actor is taken.
    let bound: Option<String> =
        crate::db::query_scalar("SELECT site_id FROM actors WHERE actor_id = $1")
            .bind(&actor)
            .fetch_optional(&mut **tx)
            .await?;
    if bound.as_deref() != Some(site.as_str()) {
        return Err(HubStoreError::ForeignActor {
            actor: change.actor_id().to_hex_string(),
        });
    }
    Ok(())
}

/// The record's stored document, its row locked until the transaction ends (the merged
/// document replaces it).
async fn lock_record(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    record: &RecordId,
) -> Result<Option<Vec<u8>>, HubStoreError> {
    let row = on_record(
        "SELECT doc FROM records WHERE site_id = $1 AND record_kind = $2 AND record_id = $3 FOR UPDATE",
        site,
        record,
    )
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| r.try_get("doc")).transpose()?)
}

/// A statement on one record's rows: `$1` is the site, `$2` the record's kind, `$3` its id;
/// the caller binds any further parameters.
pub(super) fn on_record<'q>(
    sql: &'static str,
    site: &'q SiteId,
    record: &'q RecordId,
) -> Query<'q, Postgres, PgArguments> {
    crate::db::query(sql)
        .bind(site.as_str())
        .bind(kind_str(record.kind))
        .bind(record.id())
}

/// Merges the change into the document. The merge runs while the row is locked (it must: the
/// saved document replaces the row), but on a blocking thread and bounded: the change passed
/// the pre-scan, the document is capped (DOC_OPS_MAX, DOC_BYTES_MAX), and the deadline ends
/// the transaction regardless.
async fn merge_doc(
    record: &RecordId,
    existing: Option<Vec<u8>>,
    change: automerge::Change,
) -> Result<Merged, HubStoreError> {
    let id = record.id().to_owned();
    let is_work_order = match record.kind {
        RecordKind::WorkOrder => true,
        RecordKind::NonConformance | RecordKind::LotHold => false,
    };
    off_workers(record.id(), "merging the change", move || {
        let corrupt =
            |e: &dyn std::fmt::Display| HubStoreError::Corrupt(format!("record {id}: {e}"));
        let mut doc = match existing {
            Some(bytes) => AutoCommit::load(&bytes).map_err(|e| corrupt(&e))?,
            None => AutoCommit::new(),
        };
        sync_protocol::records::apply_untrusted(&mut doc, vec![change])
            .map_err(|e| change_error(&id, e))?;
        let saved =
            sync_protocol::records::save_checked(&mut doc).map_err(|e| change_error(&id, e))?;
        let (conflicts, view) = if is_work_order {
            let conflicts =
                sync_protocol::records::state_conflicts(&doc).map_err(|e| corrupt(&e))?;
            (conflicts, read_view(&doc).ok())
        } else {
            (Vec::new(), None)
        };
        Ok(Merged {
            doc: saved,
            conflicts,
            view,
        })
    })
    .await
}

/// A work order's document names itself: it must name the record it arrives under and the
/// session's site, or its row would be materialized over another order's (nothing is written:
/// the transaction is rolled back with the error).
fn check_names_itself(
    record: &RecordId,
    site: &SiteId,
    v: &WorkOrderView,
) -> Result<(), HubStoreError> {
    let misnamed = |field, found: String| HubStoreError::MisnamedRecord {
        record: record.id().to_owned(),
        field,
        found,
    };
    if v.order.id.as_str() != record.id() {
        return Err(misnamed("id", v.order.id.to_string()));
    }
    if &v.order.site_id != site {
        return Err(misnamed("site_id", v.order.site_id.to_string()));
    }
    Ok(())
}

async fn write_record(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    record: &RecordId,
    doc: &[u8],
) -> Result<(), HubStoreError> {
    on_record(
        "INSERT INTO records (site_id, record_kind, record_id, doc) VALUES ($1, $2, $3, $4)
         ON CONFLICT (site_id, record_kind, record_id) DO UPDATE SET doc = excluded.doc, updated_at = now()",
        site,
        record,
    )
    .bind(doc)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A conflict the document no longer shows (a later edit settled the state, or it was only
/// an intermediate step of a batch) is resolved; the current ones are open.
async fn track_conflicts(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    record: &RecordId,
    conflicts: &[String],
) -> Result<(), HubStoreError> {
    on_record(
        "UPDATE conflicts SET resolved_at = now()
         WHERE site_id = $1 AND record_kind = $2 AND record_id = $3 AND resolved_at IS NULL
           AND NOT (description = ANY($4))",
        site,
        record,
    )
    .bind(conflicts)
    .execute(&mut **tx)
    .await?;
    for description in conflicts {
        on_record(
            "INSERT INTO conflicts (site_id, record_kind, record_id, description)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (site_id, record_kind, record_id, description) WHERE resolved_at IS NULL
             DO NOTHING",
            site,
            record,
        )
        .bind(description)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The `work_orders` row the reports read, from the merged document.
async fn materialize_work_order(
    tx: &mut Transaction<'static, Postgres>,
    site: &SiteId,
    v: &WorkOrderView,
) -> Result<(), HubStoreError> {
    let o = &v.order;
    crate::db::query(
        "INSERT INTO work_orders (site_id, id, state, material, planned_quantity, due, priority,
                                  good_count, scrap_count, actual_start, actual_end)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (site_id, id) DO UPDATE SET state = excluded.state, material = excluded.material,
             planned_quantity = excluded.planned_quantity, due = excluded.due,
             priority = excluded.priority, good_count = excluded.good_count,
             scrap_count = excluded.scrap_count, actual_start = excluded.actual_start,
             actual_end = excluded.actual_end, updated_at = now()",
    )
    .bind(site.as_str())
    .bind(o.id.as_str())
    .bind(o.state.as_str())
    .bind(o.material.as_str())
    .bind(i64::from(o.planned_quantity))
    .bind(o.due.map(ts))
    .bind(i32::from(o.priority))
    .bind(o.good_count as i64)
    .bind(o.scrap_count as i64)
    .bind(o.actual_start.map(ts))
    .bind(o.actual_end.map(ts))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
