//! Shared records as Automerge documents: one document per work order.
//!
//! HQ and the site edit the same order while disconnected (HQ re-plans quantity and due date,
//! the site starts and completes it); Automerge merges both. Each local edit commits one
//! Automerge change, which goes to the outbox in the same SQLite transaction as the saved
//! document and the materialized `work_orders` row. The actor id is the store's, random per
//! open: a persisted actor reused after a lost commit would produce duplicate sequence numbers.

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT, ReadDoc};
use rusqlite::{Connection, OptionalExtension, params};
use shared_model::master::{MasterKind, MasterRecord};
use shared_model::work_order::{OperationProgress, WorkOrderAction, WorkOrderState};
use shared_model::{EquipmentId, Timestamp, WorkOrderId};
use sync_protocol::message::{RecordChange, RecordHeads, RecordId, RecordKind};
use sync_protocol::store::HeadsComparison;

use crate::store::{Store, StoreError, parse_record_kind};

pub use sync_protocol::records::WorkOrderView;
use sync_protocol::records::{DocError, put_opt_str, put_opt_ts, read_view as read_doc, write_all};

fn am(e: automerge::AutomergeError) -> StoreError {
    StoreError::Corrupt(format!("automerge: {e}"))
}

fn doc_err(e: DocError) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn read_view(doc: &AutoCommit) -> Result<WorkOrderView, StoreError> {
    read_doc(doc).map_err(doc_err)
}

fn load(
    conn: &Connection,
    record: &RecordId,
    actor: &ActorId,
) -> Result<Option<AutoCommit>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT doc FROM records WHERE record_kind = ?1 AND record_id = ?2")?
        .query_row(params![record.kind.as_str(), record.id()], |r| r.get(0))
        .optional()?;
    bytes
        .map(|b| {
            AutoCommit::load(&b)
                .map(|d| d.with_actor(actor.clone()))
                .map_err(am)
        })
        .transpose()
}

fn save_bytes(conn: &Connection, record: &RecordId, bytes: &[u8]) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO records (record_kind, record_id, doc) VALUES (?1, ?2, ?3)
         ON CONFLICT (record_kind, record_id) DO UPDATE SET doc = excluded.doc",
    )?
    .execute(params![record.kind.as_str(), record.id(), bytes])?;
    Ok(())
}

fn materialize(conn: &Connection, v: &WorkOrderView) -> Result<(), StoreError> {
    let json = serde_json::to_string(v)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode work order: {e}")))?;
    conn.prepare_cached(
        "INSERT INTO work_orders (id, state, work_unit, priority, due, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (id) DO UPDATE SET state = excluded.state, work_unit = excluded.work_unit,
           priority = excluded.priority, due = excluded.due, json = excluded.json",
    )?
    .execute(params![
        v.order.id.as_str(),
        v.order.state.as_str(),
        v.work_unit.as_ref().map(|w| w.as_str()),
        v.order.priority,
        v.order.due.map(|d| d.as_micros()),
        json
    ])?;
    Ok(())
}

/// Records the business conflicts the document shows now, and resolves the ones it no longer
/// shows (a later edit settled the state). Same rules as the hub's, so both sides list the
/// same conflicts once they hold the same document.
fn record_conflicts(
    conn: &Connection,
    record: &RecordId,
    doc: &AutoCommit,
) -> Result<(), StoreError> {
    if record.kind != RecordKind::WorkOrder {
        return Ok(());
    }
    let current = sync_protocol::records::state_conflicts(doc).map_err(doc_err)?;
    const NOW: &str = "CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)";
    let open: Vec<(i64, String)> = {
        let mut stmt = conn.prepare_cached(
            "SELECT id, description FROM conflicts
             WHERE record_kind = ?1 AND record_id = ?2 AND resolved_at IS NULL",
        )?;
        let rows = stmt.query_map(params![record.kind.as_str(), record.id()], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    for (id, description) in open {
        if !current.contains(&description) {
            conn.execute(
                &format!("UPDATE conflicts SET resolved_at = {NOW} WHERE id = ?1"),
                [id],
            )?;
        }
    }
    for description in current {
        conn.execute(
            &format!(
                "INSERT OR IGNORE INTO conflicts (record_kind, record_id, description, detected_at)
                 VALUES (?1, ?2, ?3, {NOW})"
            ),
            params![record.kind.as_str(), record.id(), description],
        )?;
    }
    Ok(())
}

/// Open conflicts, newest first.
pub fn open_conflicts(conn: &Connection) -> Result<Vec<serde_json::Value>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, record_kind, record_id, description, detected_at FROM conflicts
         WHERE resolved_at IS NULL ORDER BY detected_at DESC LIMIT 1000",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(serde_json::json!({
            "id": r.get::<_, i64>(0)?,
            "record_kind": r.get::<_, String>(1)?,
            "record_id": r.get::<_, String>(2)?,
            "description": r.get::<_, String>(3)?,
            "detected_at": Timestamp::from_micros(r.get::<_, i64>(4)?).to_rfc3339(),
        }))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Commits the document's pending local edit, queues the change for the hub and materializes
/// the order: the order as stored.
fn commit_local(
    conn: &Connection,
    record: &RecordId,
    doc: &mut AutoCommit,
) -> Result<WorkOrderView, StoreError> {
    doc.commit();
    // The hub refuses a record past DOC_OPS_MAX operations or DOC_BYTES_MAX bytes; an edit
    // that would take it there is refused here rather than queued to stall the outbox.
    let ops = doc.stats().num_ops;
    if ops > sync_protocol::records::DOC_OPS_MAX {
        return Err(StoreError::Invalid {
            field: "work_order".into(),
            message: format!(
                "the work order's history is full ({ops} operations, at most {}): create a new order",
                sync_protocol::records::DOC_OPS_MAX
            ),
        });
    }
    let change = doc
        .get_last_local_change()
        .ok_or_else(|| StoreError::Corrupt("automerge produced no change".into()))?;
    let change = RecordChange::new(record.clone(), change.raw_bytes().to_vec()).map_err(|e| {
        StoreError::Invalid {
            field: "work_order".into(),
            message: e,
        }
    })?;
    let bytes = sync_protocol::records::save_checked(doc).map_err(|e| StoreError::Invalid {
        field: "work_order".into(),
        message: e.to_string(),
    })?;
    save_bytes(conn, record, &bytes)?;
    record_conflicts(conn, record, doc)?;
    crate::store::outbox_push_change(conn, &change)?;
    let stored = read_view(doc)?;
    materialize(conn, &stored)?;
    Ok(stored)
}

fn routing_snapshot(
    conn: &Connection,
    material: &shared_model::MaterialId,
    version: u32,
) -> Result<Vec<OperationProgress>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT json FROM master WHERE kind = ?2 AND key LIKE ?1 ESCAPE '\\' AND json IS NOT NULL",
    )?;
    let prefix = format!(
        "{}@{version}#",
        material.as_str().replace('%', "\\%").replace('_', "\\_")
    );
    let rows = stmt.query_map(
        params![format!("{prefix}%"), MasterKind::RoutingStep.as_str()],
        |r| r.get::<_, String>(0),
    )?;
    let mut ops = Vec::new();
    for row in rows {
        let record: MasterRecord = serde_json::from_str(&row?)
            .map_err(|e| StoreError::Corrupt(format!("routing: {e}")))?;
        if let MasterRecord::RoutingStep(step) = record {
            ops.push(OperationProgress {
                seq: step.seq,
                operation_code: step.operation_code,
                work_center_class: step.work_center_class,
                ideal_cycle_time_ms: step.ideal_cycle_time_ms,
                good: 0,
                scrap: 0,
                done: false,
            });
        }
    }
    ops.sort_by_key(|o| o.seq);
    Ok(ops)
}

fn require_equipment(conn: &Connection, w: &EquipmentId) -> Result<(), StoreError> {
    if crate::store::master::exists(conn, MasterKind::Equipment, w.as_str())? {
        Ok(())
    } else {
        Err(StoreError::UnknownReference {
            index: 0,
            field: "work_unit",
            value: w.to_string(),
        })
    }
}

/// Creates a work order (a new document). Fails if the id exists.
pub fn create(
    conn: &Connection,
    view: &WorkOrderView,
    actor: &ActorId,
) -> Result<WorkOrderView, StoreError> {
    let record = RecordId::work_order(&view.order.id);
    if load(conn, &record, actor)?.is_some() {
        return Err(StoreError::AlreadyExists {
            what: "work order",
            id: view.order.id.to_string(),
        });
    }
    if !crate::store::master::exists(conn, MasterKind::Material, view.order.material.as_str())? {
        return Err(StoreError::UnknownReference {
            index: 0,
            field: "material",
            value: view.order.material.to_string(),
        });
    }
    if let Some(w) = &view.work_unit {
        require_equipment(conn, w)?;
    }
    // Snapshot the routing into the order, so later routing changes do not rewrite it.
    let mut view = view.clone();
    if view.order.operations.is_empty() {
        view.order.operations =
            routing_snapshot(conn, &view.order.material, view.order.routing_version)?;
    }
    let mut doc = AutoCommit::new().with_actor(actor.clone());
    write_all(&mut doc, &view).map_err(doc_err)?;
    commit_local(conn, &record, &mut doc)
}

/// Applies a state action (start, pause, resume, complete) to a stored order.
pub fn transition(
    conn: &Connection,
    id: &WorkOrderId,
    action: WorkOrderAction,
    work_unit: Option<EquipmentId>,
    now: Timestamp,
    actor: &ActorId,
) -> Result<WorkOrderView, StoreError> {
    let record = RecordId::work_order(id);
    let mut doc = load(conn, &record, actor)?.ok_or_else(|| StoreError::NotFound {
        what: "work order",
        id: id.to_string(),
    })?;
    if let Some(w) = &work_unit {
        require_equipment(conn, w)?;
    }
    let mut view = read_view(&doc)?;
    let before = view.order.clone();
    view.order.transition(action, now)?;
    doc.put(ROOT, "state", view.order.state.as_str())
        .map_err(am)?;
    if view.order.actual_start != before.actual_start {
        put_opt_ts(&mut doc, "actual_start", view.order.actual_start).map_err(doc_err)?;
    }
    if view.order.actual_end != before.actual_end {
        put_opt_ts(&mut doc, "actual_end", view.order.actual_end).map_err(doc_err)?;
    }
    if let Some(w) = work_unit {
        put_opt_str(&mut doc, "work_unit", Some(w.as_str())).map_err(doc_err)?;
    }
    // Pausing and completing carry the terminal's totals into the shared record, so HQ sees
    // progress without a document change per count.
    if matches!(action, WorkOrderAction::Pause | WorkOrderAction::Complete) {
        let (good, scrap, _) = crate::store::counts::order_totals(conn, id.as_str())?;
        let (good, scrap) = (good.max(0) as u64, scrap.max(0) as u64);
        if good != before.good_count {
            doc.put(ROOT, "good_count", good).map_err(am)?;
        }
        if scrap != before.scrap_count {
            doc.put(ROOT, "scrap_count", scrap).map_err(am)?;
        }
    }
    commit_local(conn, &record, &mut doc)
}

/// A supervisor settles a state conflict by choosing which of the concurrent states stands:
/// one new edit that overwrites them all, which resolves the conflict here and, once synced,
/// at the hub.
pub fn settle_conflict(
    conn: &Connection,
    conflict: i64,
    keep: WorkOrderState,
    actor: &ActorId,
) -> Result<WorkOrderView, StoreError> {
    let row: Option<(String, String)> = conn
        .prepare_cached(
            "SELECT record_kind, record_id FROM conflicts WHERE id = ?1 AND resolved_at IS NULL",
        )?
        .query_row([conflict], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    let not_found = || StoreError::NotFound {
        what: "open conflict",
        id: conflict.to_string(),
    };
    let (kind, id) = row.ok_or_else(not_found)?;
    if parse_record_kind(&kind)? != RecordKind::WorkOrder {
        return Err(not_found());
    }
    let id = WorkOrderId::new(id).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let record = RecordId::work_order(&id);
    let mut doc = load(conn, &record, actor)?.ok_or_else(not_found)?;
    let states: Vec<String> = doc
        .get_all(ROOT, "state")
        .map_err(am)?
        .into_iter()
        .filter_map(|(v, _)| v.as_scalar().and_then(|s| s.as_str()).map(str::to_owned))
        .collect();
    if !states.iter().any(|s| s == keep.as_str()) {
        return Err(StoreError::Invalid {
            field: "state".into(),
            message: format!(
                "choose one of the conflicting states: {}",
                states.join(", ")
            ),
        });
    }
    doc.put(ROOT, "state", keep.as_str()).map_err(am)?;
    commit_local(conn, &record, &mut doc)
}

/// Longest the edge spends decoding the changes of one down batch or repair on a blocking
/// thread before it refuses them. The writer thread never decodes a change: a hostile one
/// would hold every local write behind it. The pre-scan (`records::CHANGE_OPS_MAX`) bounds a
/// decode to milliseconds; the deadline is the backstop. (A blocking thread cannot be
/// cancelled: one that overran finishes on its own and its result is dropped.)
pub const CHANGE_DECODE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// A change from the hub that passed `records::decode_untrusted`, with its record.
#[derive(Debug)]
pub struct RemoteChange {
    pub record: RecordId,
    pub change: automerge::Change,
}

/// A change refused as the store's error: over a limit, or malformed.
fn refused(record: &RecordId, e: DocError) -> StoreError {
    StoreError::ChangeRefused {
        record: record.id().to_owned(),
        over_limit: e.is_limit(),
        reason: e.to_string(),
    }
}

fn decode_one(c: &RecordChange) -> Result<RemoteChange, StoreError> {
    let change =
        sync_protocol::records::decode_untrusted(c.bytes()).map_err(|e| refused(&c.record, e))?;
    Ok(RemoteChange {
        record: c.record.clone(),
        change,
    })
}

/// Decodes changes from the hub on a blocking thread with [`CHANGE_DECODE_DEADLINE`], off
/// the async workers and off the writer; the writer then only merges ([`apply_decoded`]).
pub async fn decode_remote(changes: Vec<RecordChange>) -> Result<Vec<RemoteChange>, StoreError> {
    if changes.is_empty() {
        return Ok(Vec::new());
    }
    // The pre-scan is linear in the bytes and never calls automerge: a bomb is refused here,
    // without waiting for a blocking thread.
    for c in &changes {
        sync_protocol::records::scan_change(c.bytes()).map_err(|e| refused(&c.record, e.into()))?;
    }
    let first = changes[0].record.id().to_owned();
    let work = tokio::task::spawn_blocking(move || changes.iter().map(decode_one).collect());
    match tokio::time::timeout(CHANGE_DECODE_DEADLINE, work).await {
        Ok(Ok(decoded)) => decoded,
        Ok(Err(join)) => Err(StoreError::ChangeRefused {
            record: first,
            reason: format!("decoding failed: {join}"),
            over_limit: false,
        }),
        Err(_) => Err(StoreError::ChangeRefused {
            record: first,
            reason: format!("decoding took longer than {CHANGE_DECODE_DEADLINE:?}"),
            over_limit: true,
        }),
    }
}

/// Applies changes from the hub (down-sync or repair), decoding them here: for tests and
/// callers already off the async workers. The sync path decodes with [`decode_remote`] first.
pub fn apply_remote(conn: &Connection, changes: &[RecordChange]) -> Result<(), StoreError> {
    let decoded = changes
        .iter()
        .map(decode_one)
        .collect::<Result<Vec<_>, _>>()?;
    apply_decoded(conn, decoded)
}

/// Merges decoded changes from the hub into their records; idempotent, as Automerge ignores
/// changes it already has. A record that would grow past `records::DOC_OPS_MAX` operations or
/// `DOC_BYTES_MAX` bytes is refused (`StoreError::ChangeRefused`) and the caller's savepoint
/// rolls back whatever this call wrote.
pub fn apply_decoded(conn: &Connection, changes: Vec<RemoteChange>) -> Result<(), StoreError> {
    // Remote changes are applied, never authored here: any actor will do for the handle.
    let actor = ActorId::random();
    for RemoteChange { record, change } in changes {
        let mut doc = match load(conn, &record, &actor)? {
            Some(d) => d,
            None => AutoCommit::new(),
        };
        sync_protocol::records::apply_untrusted(&mut doc, vec![change])
            .map_err(|e| refused(&record, e))?;
        let bytes =
            sync_protocol::records::save_checked(&mut doc).map_err(|e| refused(&record, e))?;
        save_bytes(conn, &record, &bytes)?;
        record_conflicts(conn, &record, &doc)?;
        // A document whose first changes have not all arrived yet has no readable order;
        // it is materialized once it does.
        if record.kind == RecordKind::WorkOrder
            && let Ok(view) = read_view(&doc)
        {
            materialize(conn, &view)?;
        }
    }
    Ok(())
}

fn hashes(doc: &mut AutoCommit) -> Vec<[u8; 32]> {
    doc.get_heads().into_iter().map(|h| h.0).collect()
}

pub fn heads_page(
    conn: &Connection,
    after: Option<&RecordId>,
    limit: usize,
) -> Result<Vec<RecordHeads>, StoreError> {
    // Records are ordered like RecordId's Ord: by kind, then id. The kinds sort in enum order
    // (work_order < non_conformance < lot_hold), which the rank expression reproduces: `ALL`
    // is in declaration order, so a kind's index there is its discriminant.
    let rank = format!(
        "CASE record_kind {} END",
        RecordKind::ALL
            .iter()
            .map(|k| format!("WHEN '{}' THEN {}", k.as_str(), *k as i64))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let sql = format!(
        "SELECT record_kind, record_id, doc FROM records
         WHERE ({rank}, record_id) > (?1, ?2) ORDER BY {rank}, record_id LIMIT ?3"
    );
    let (after_rank, after_id) = match after {
        Some(r) => (r.kind as i64, r.id().to_owned()),
        None => (-1, String::new()),
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params![after_rank, after_id, limit as i64], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, Vec<u8>>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, id, bytes) = row?;
        let record = RecordId::new(parse_record_kind(&kind)?, id).map_err(StoreError::Corrupt)?;
        let mut doc = AutoCommit::load(&bytes).map_err(am)?;
        out.push(RecordHeads {
            record,
            heads: hashes(&mut doc),
        });
    }
    Ok(out)
}

pub fn compare_heads(conn: &Connection, peer: &RecordHeads) -> Result<HeadsComparison, StoreError> {
    let mut doc = load(conn, &peer.record, &ActorId::random())?;
    sync_protocol::records::compare_heads(doc.as_mut(), peer).map_err(doc_err)
}

/// Reads one order from the materialized table.
pub fn get(conn: &Connection, id: &str) -> Result<Option<WorkOrderView>, StoreError> {
    let json: Option<String> = conn
        .prepare_cached("SELECT json FROM work_orders WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?;
    json.map(|j| {
        serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(format!("work order {id}: {e}")))
    })
    .transpose()
}

impl Store {
    /// One order from the materialized table, read off the writer's thread ([`get`]).
    pub async fn work_order(&self, id: &str) -> Result<Option<WorkOrderView>, StoreError> {
        let id = id.to_owned();
        self.read(move |c| get(c, &id)).await
    }
}

/// Lists orders, most urgent first.
/// The order a unit works on: the most recently started of its orders in the first of `states`
/// that has one. The terminal shows running-else-interrupted; machine counts go to the running
/// order only, as the terminal records them.
pub fn current_order(
    conn: &Connection,
    unit: &str,
    states: &[WorkOrderState],
) -> Result<Option<WorkOrderView>, StoreError> {
    for state in states {
        let mut found = list(conn, Some(*state), Some(unit), 50)?;
        found.sort_by_key(|o| std::cmp::Reverse(o.order.actual_start));
        if let Some(o) = found.into_iter().next() {
            return Ok(Some(o));
        }
    }
    Ok(None)
}

pub fn list(
    conn: &Connection,
    state: Option<WorkOrderState>,
    work_unit: Option<&str>,
    limit: usize,
) -> Result<Vec<WorkOrderView>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT json FROM work_orders
         WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR work_unit = ?2)
         ORDER BY priority, due IS NULL, due, id LIMIT ?3",
    )?;
    let rows = stmt.query_map(
        params![state.map(|s| s.as_str()), work_unit, limit as i64],
        |r| r.get::<_, String>(0),
    )?;
    rows.map(|r| {
        let j = r?;
        serde_json::from_str(&j).map_err(|e| StoreError::Corrupt(format!("work order: {e}")))
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixture::*;
    use crate::store::{open_write_connection, outbox};

    /// A store in its own directory `dir_name`, its write connection, and work order `id`
    /// (released, 10 BRACKET-7) created there by a new actor: the order's id, that actor and
    /// the record's stored document.
    fn released(
        dir_name: &str,
        id: &str,
    ) -> (TempDir, Store, Connection, WorkOrderId, ActorId, Vec<u8>) {
        let (dir, store) = open(dir_name);
        let conn = open_write_connection(store.path()).unwrap();
        let id = WorkOrderId::new(id).unwrap();
        let actor = ActorId::random();
        let view = WorkOrderView {
            order: shared_model::work_order::WorkOrder::released(
                id.clone(),
                site(),
                shared_model::MaterialId::new("BRACKET-7").unwrap(),
                10,
            ),
            work_unit: None,
        };
        create(&conn, &view, &actor).unwrap();
        let saved = conn
            .query_row(
                "SELECT doc FROM records WHERE record_id = ?1",
                [id.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        (dir, store, conn, id, actor, saved)
    }

    /// A local edit that would take a work order past `DOC_OPS_MAX` operations (which the hub
    /// would refuse, stalling the outbox behind it) is refused with 422-style `Invalid`, and
    /// nothing of it is stored or queued.
    #[test]
    fn a_local_edit_past_the_record_cap_is_refused() {
        use automerge::ReadDoc;
        use automerge::transaction::Transactable;
        use sync_protocol::records::{CHANGE_OPS_MAX, DOC_OPS_MAX};

        let (_dir, _store, conn, id, actor, saved) = released("cap", "SITE_001-WO-7");
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
        use sync_protocol::message::{RecordChange, RecordId};

        let (_dir, store, conn, id, actor, saved) = released("settle", "SITE_001-WO-9");
        let record = RecordId::work_order(&id);
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
            err.to_string().contains("aborted, ended")
                || err.to_string().contains("ended, aborted"),
            "{err}"
        );
        let settled =
            crate::records::settle_conflict(&conn, conflict, WorkOrderState::Ended, &actor)
                .unwrap();
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
}
