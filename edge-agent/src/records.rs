//! Shared records as Automerge documents: one document per work order.
//!
//! HQ and the site edit the same order while disconnected (HQ re-plans quantity and due date,
//! the site starts and completes it); Automerge merges both. Each local edit commits one
//! Automerge change, which goes to the outbox in the same SQLite transaction as the saved
//! document and the materialized `work_orders` row. The actor id is random per process start:
//! a persisted actor reused after a lost commit would produce duplicate sequence numbers.

use std::sync::OnceLock;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, Change, ChangeHash, ROOT, ReadDoc, ScalarValue};
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use shared_model::work_order::{WorkOrder, WorkOrderAction, WorkOrderState};
use shared_model::{EquipmentId, MaterialId, SiteId, Timestamp, WorkOrderId};
use sync_protocol::message::{RecordChange, RecordHeads, RecordId, RecordKind};
use sync_protocol::store::HeadsComparison;

use crate::store::StoreError;

fn actor() -> ActorId {
    static ACTOR: OnceLock<ActorId> = OnceLock::new();
    ACTOR.get_or_init(ActorId::random).clone()
}

pub fn kind_str(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::WorkOrder => "work_order",
        RecordKind::NonConformance => "non_conformance",
        RecordKind::LotHold => "lot_hold",
    }
}

pub fn parse_kind(s: &str) -> Result<RecordKind, StoreError> {
    match s {
        "work_order" => Ok(RecordKind::WorkOrder),
        "non_conformance" => Ok(RecordKind::NonConformance),
        "lot_hold" => Ok(RecordKind::LotHold),
        other => Err(StoreError::Corrupt(format!(
            "unknown record kind {other:?}"
        ))),
    }
}

/// A work order as the API shows it: the shared record plus where it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkOrderView {
    #[serde(flatten)]
    pub order: WorkOrder,
    pub work_unit: Option<EquipmentId>,
}

fn am(e: automerge::AutomergeError) -> StoreError {
    StoreError::Corrupt(format!("automerge: {e}"))
}

fn put_opt_ts(doc: &mut AutoCommit, key: &str, t: Option<Timestamp>) -> Result<(), StoreError> {
    match t {
        Some(t) => doc.put(ROOT, key, t.as_micros()),
        None => doc.put(ROOT, key, ScalarValue::Null),
    }
    .map_err(am)
}

fn put_opt_str(doc: &mut AutoCommit, key: &str, s: Option<&str>) -> Result<(), StoreError> {
    match s {
        Some(s) => doc.put(ROOT, key, s),
        None => doc.put(ROOT, key, ScalarValue::Null),
    }
    .map_err(am)
}

fn write_all(doc: &mut AutoCommit, v: &WorkOrderView) -> Result<(), StoreError> {
    let o = &v.order;
    doc.put(ROOT, "id", o.id.as_str()).map_err(am)?;
    doc.put(ROOT, "site_id", o.site_id.as_str()).map_err(am)?;
    put_opt_str(doc, "erp_ref", o.erp_ref.as_deref())?;
    doc.put(ROOT, "material", o.material.as_str()).map_err(am)?;
    doc.put(ROOT, "routing_version", u64::from(o.routing_version))
        .map_err(am)?;
    doc.put(ROOT, "planned_quantity", u64::from(o.planned_quantity))
        .map_err(am)?;
    put_opt_ts(doc, "due", o.due)?;
    doc.put(ROOT, "priority", u64::from(o.priority))
        .map_err(am)?;
    doc.put(ROOT, "state", o.state.as_str()).map_err(am)?;
    put_opt_ts(doc, "actual_start", o.actual_start)?;
    put_opt_ts(doc, "actual_end", o.actual_end)?;
    doc.put(ROOT, "notes", o.notes.as_str()).map_err(am)?;
    doc.put(ROOT, "good_count", o.good_count).map_err(am)?;
    doc.put(ROOT, "scrap_count", o.scrap_count).map_err(am)?;
    put_opt_str(doc, "work_unit", v.work_unit.as_ref().map(|w| w.as_str()))
}

fn scalar(doc: &AutoCommit, key: &str) -> Result<Option<ScalarValue>, StoreError> {
    Ok(doc
        .get(ROOT, key)
        .map_err(am)?
        .and_then(|(v, _)| v.as_scalar().cloned())
        .filter(|s| !matches!(s, ScalarValue::Null)))
}

fn get_str(doc: &AutoCommit, key: &str) -> Result<Option<String>, StoreError> {
    Ok(scalar(doc, key)?.and_then(|s| s.as_str().map(str::to_owned)))
}

fn get_u64(doc: &AutoCommit, key: &str) -> Result<Option<u64>, StoreError> {
    Ok(scalar(doc, key)?.and_then(|s| s.as_u64().or_else(|| s.as_i64().map(|v| v.max(0) as u64))))
}

fn get_ts(doc: &AutoCommit, key: &str) -> Result<Option<Timestamp>, StoreError> {
    Ok(scalar(doc, key)?
        .and_then(|s| s.as_i64().or_else(|| s.as_u64().map(|v| v as i64)))
        .map(Timestamp::from_micros))
}

fn corrupt(what: &str) -> StoreError {
    StoreError::Corrupt(format!("work-order document lacks a valid {what}"))
}

/// Reads a work order back out of its document, validating every field like input.
fn read_view(doc: &AutoCommit) -> Result<WorkOrderView, StoreError> {
    let text = |k: &str| get_str(doc, k)?.ok_or_else(|| corrupt(k));
    let order = WorkOrder {
        id: WorkOrderId::new(text("id")?).map_err(|_| corrupt("id"))?,
        site_id: SiteId::new(text("site_id")?).map_err(|_| corrupt("site_id"))?,
        erp_ref: get_str(doc, "erp_ref")?,
        material: MaterialId::new(text("material")?).map_err(|_| corrupt("material"))?,
        routing_version: get_u64(doc, "routing_version")?
            .and_then(|v| u32::try_from(v).ok())
            .unwrap_or(1),
        planned_quantity: get_u64(doc, "planned_quantity")?
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| corrupt("planned_quantity"))?,
        due: get_ts(doc, "due")?,
        priority: get_u64(doc, "priority")?
            .and_then(|v| u8::try_from(v).ok())
            .unwrap_or(5),
        state: WorkOrderState::parse(&text("state")?).ok_or_else(|| corrupt("state"))?,
        actual_start: get_ts(doc, "actual_start")?,
        actual_end: get_ts(doc, "actual_end")?,
        operations: Vec::new(),
        notes: get_str(doc, "notes")?.unwrap_or_default(),
        good_count: get_u64(doc, "good_count")?.unwrap_or(0),
        scrap_count: get_u64(doc, "scrap_count")?.unwrap_or(0),
    };
    let work_unit = get_str(doc, "work_unit")?
        .map(EquipmentId::new)
        .transpose()
        .map_err(|_| corrupt("work_unit"))?;
    Ok(WorkOrderView { order, work_unit })
}

fn load(conn: &Connection, record: &RecordId) -> Result<Option<AutoCommit>, StoreError> {
    let bytes: Option<Vec<u8>> = conn
        .prepare_cached("SELECT doc FROM records WHERE record_kind = ?1 AND record_id = ?2")?
        .query_row(params![kind_str(record.kind), record.id()], |r| r.get(0))
        .optional()?;
    bytes
        .map(|b| {
            AutoCommit::load(&b)
                .map(|d| d.with_actor(actor()))
                .map_err(am)
        })
        .transpose()
}

fn save(conn: &Connection, record: &RecordId, doc: &mut AutoCommit) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO records (record_kind, record_id, doc) VALUES (?1, ?2, ?3)
         ON CONFLICT (record_kind, record_id) DO UPDATE SET doc = excluded.doc",
    )?
    .execute(params![kind_str(record.kind), record.id(), doc.save()])?;
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

/// Commits the document's pending local edit and queues the change for the hub.
fn commit_local(
    conn: &Connection,
    record: &RecordId,
    doc: &mut AutoCommit,
) -> Result<(), StoreError> {
    doc.commit();
    let change = doc
        .get_last_local_change()
        .ok_or_else(|| StoreError::Corrupt("automerge produced no change".into()))?;
    let change = RecordChange::new(record.clone(), change.raw_bytes().to_vec()).map_err(|e| {
        StoreError::Invalid {
            field: "work_order".into(),
            message: e,
        }
    })?;
    save(conn, record, doc)?;
    crate::store::outbox_push_change(conn, &change)
}

fn require_equipment(conn: &Connection, w: &EquipmentId) -> Result<(), StoreError> {
    let found: Option<()> = conn
        .prepare_cached(
            "SELECT 1 FROM master WHERE kind = 'equipment' AND key = ?1 AND json IS NOT NULL",
        )?
        .query_row([w.as_str()], |_| Ok(()))
        .optional()?;
    match found {
        Some(()) => Ok(()),
        None => Err(StoreError::UnknownReference {
            index: 0,
            field: "work_unit",
            value: w.to_string(),
        }),
    }
}

/// Creates a work order (a new document). Fails if the id exists.
pub fn create(conn: &Connection, view: &WorkOrderView) -> Result<WorkOrderView, StoreError> {
    let record = RecordId::work_order(&view.order.id);
    if load(conn, &record)?.is_some() {
        return Err(StoreError::AlreadyExists {
            what: "work order",
            id: view.order.id.to_string(),
        });
    }
    let found: Option<()> = conn
        .prepare_cached(
            "SELECT 1 FROM master WHERE kind = 'materials' AND key = ?1 AND json IS NOT NULL",
        )?
        .query_row([view.order.material.as_str()], |_| Ok(()))
        .optional()?;
    if found.is_none() {
        return Err(StoreError::UnknownReference {
            index: 0,
            field: "material",
            value: view.order.material.to_string(),
        });
    }
    if let Some(w) = &view.work_unit {
        let found: Option<()> = conn
            .prepare_cached(
                "SELECT 1 FROM master WHERE kind = 'equipment' AND key = ?1 AND json IS NOT NULL",
            )?
            .query_row([w.as_str()], |_| Ok(()))
            .optional()?;
        if found.is_none() {
            return Err(StoreError::UnknownReference {
                index: 0,
                field: "work_unit",
                value: w.to_string(),
            });
        }
    }
    let mut doc = AutoCommit::new().with_actor(actor());
    write_all(&mut doc, view)?;
    commit_local(conn, &record, &mut doc)?;
    let stored = read_view(&doc)?;
    materialize(conn, &stored)?;
    Ok(stored)
}

/// Applies a state action (start, pause, resume, complete) to a stored order.
pub fn transition(
    conn: &Connection,
    id: &WorkOrderId,
    action: WorkOrderAction,
    work_unit: Option<EquipmentId>,
    now: Timestamp,
) -> Result<WorkOrderView, StoreError> {
    let record = RecordId::work_order(id);
    let mut doc = load(conn, &record)?.ok_or_else(|| StoreError::NotFound {
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
        put_opt_ts(&mut doc, "actual_start", view.order.actual_start)?;
    }
    if view.order.actual_end != before.actual_end {
        put_opt_ts(&mut doc, "actual_end", view.order.actual_end)?;
    }
    if let Some(w) = work_unit {
        put_opt_str(&mut doc, "work_unit", Some(w.as_str()))?;
    }
    commit_local(conn, &record, &mut doc)?;
    let stored = read_view(&doc)?;
    materialize(conn, &stored)?;
    Ok(stored)
}

/// Applies changes from the hub (down-sync or repair); idempotent, as Automerge ignores
/// changes it already has.
pub fn apply_remote(conn: &Connection, changes: &[RecordChange]) -> Result<(), StoreError> {
    for c in changes {
        let mut doc = match load(conn, &c.record)? {
            Some(d) => d,
            None => AutoCommit::new().with_actor(actor()),
        };
        let change = Change::from_bytes(c.bytes().to_vec())
            .map_err(|e| StoreError::Corrupt(format!("change does not decode: {e}")))?;
        doc.apply_changes([change]).map_err(am)?;
        save(conn, &c.record, &mut doc)?;
        // A document whose first changes have not all arrived yet has no readable order;
        // it is materialized once it does.
        if c.record.kind == RecordKind::WorkOrder
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
    // (work_order < non_conformance < lot_hold), which the rank expression reproduces.
    let rank = "CASE record_kind WHEN 'work_order' THEN 0 WHEN 'non_conformance' THEN 1 ELSE 2 END";
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
        let record = RecordId::new(parse_kind(&kind)?, id).map_err(StoreError::Corrupt)?;
        let mut doc = AutoCommit::load(&bytes).map_err(am)?;
        out.push(RecordHeads {
            record,
            heads: hashes(&mut doc),
        });
    }
    Ok(out)
}

pub fn compare_heads(conn: &Connection, peer: &RecordHeads) -> Result<HeadsComparison, StoreError> {
    let Some(mut doc) = load(conn, &peer.record)? else {
        return Ok(HeadsComparison {
            missing_at_peer: Vec::new(),
            unknown_here: !peer.heads.is_empty(),
            our_heads: Vec::new(),
        });
    };
    let peer_heads: Vec<ChangeHash> = peer.heads.iter().map(|h| ChangeHash(*h)).collect();
    let unknown_here = !doc.get_missing_deps(&peer_heads).is_empty();
    // Changes the peer lacks: everything not an ancestor of the heads it has that we know.
    let known: Vec<ChangeHash> = peer_heads
        .iter()
        .filter(|h| doc.get_change_by_hash(h).is_some())
        .copied()
        .collect();
    let missing_at_peer = doc
        .get_changes(&known)
        .into_iter()
        .map(|c| RecordChange::new(peer.record.clone(), c.raw_bytes().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(StoreError::Corrupt)?;
    Ok(HeadsComparison {
        missing_at_peer,
        unknown_here,
        our_heads: hashes(&mut doc),
    })
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

/// Lists orders, most urgent first.
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
