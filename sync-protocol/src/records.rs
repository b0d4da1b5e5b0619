//! Shared records as Automerge documents: the document layout of each record kind, used by
//! both the edge (SQLite) and the hub (PostgreSQL), so the two read and write the same fields.
//!
//! A work order is one document whose root map holds one scalar per field (`state`,
//! `planned_quantity`, `due` as microseconds, ...). Field-level merge is what makes concurrent
//! offline edits on both sides survive: HQ re-planning the quantity and the site starting the
//! order touch different keys.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT, ReadDoc, ScalarValue};
use serde::{Deserialize, Serialize};
use shared_model::work_order::{WorkOrder, WorkOrderState};
use shared_model::{EquipmentId, MaterialId, SiteId, Timestamp, WorkOrderId};

mod scan;
pub use scan::{CHANGE_OPS_MAX, CHANGE_PREDS_MAX, ChangeShape, ScanError, scan_change};

/// Most operations a record's document may hold, its whole history counted (every value ever
/// written stays in the document). A work order gathers a few hundred over its life; the cap
/// bounds what loading, merging and saving one record costs, whatever a peer sends.
pub const DOC_OPS_MAX: u64 = 10 * CHANGE_OPS_MAX;
/// Largest saved document of one record (4 MiB: four of the largest changes the wire carries).
pub const DOC_BYTES_MAX: usize = 4 * crate::message::CHANGE_BYTES_MAX;

/// Why a document could not be read or written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DocError {
    #[error("automerge: {0}")]
    Automerge(String),
    #[error("work-order document lacks a valid {0}")]
    Field(&'static str),
    /// The bytes are not a well-formed change (refused before automerge decodes them).
    #[error("{0}")]
    Malformed(String),
    /// A change or the document it would make is over a named limit: the session closes with
    /// `limit_exceeded` and nothing is written.
    #[error("{0}")]
    Limit(String),
}

impl DocError {
    /// True when a limit refused the change (as opposed to malformed bytes).
    pub fn is_limit(&self) -> bool {
        matches!(self, DocError::Limit(_))
    }
}

impl From<ScanError> for DocError {
    fn from(e: ScanError) -> Self {
        match e {
            ScanError::TooMany { .. } => DocError::Limit(e.to_string()),
            ScanError::NotAChange | ScanError::Malformed(_) => DocError::Malformed(e.to_string()),
        }
    }
}

/// Decodes a change that came from another node. The change is scanned first
/// ([`scan_change`]): only a plain change chunk (magic, checksum, type 1) is what an edge or the
/// hub sends (`Change::raw_bytes`), and one announcing more than [`CHANGE_OPS_MAX`] operations
/// or [`CHANGE_PREDS_MAX`] predecessors is refused before automerge materialises them (a
/// 79-byte change announcing 2^40 operations made `Change::from_bytes` spin for hours). Bundles
/// and compressed chunks are refused too: a 67-byte bundle made automerge 0.12 allocate 2 GiB
/// (fuzz/findings/), and a compressed chunk could inflate far beyond the frame limit.
/// automerge 0.12 also panics on some malformed bytes (fuzz fixtures `change_ingest/crash-199f…`,
/// `crash-a81d…`): caught and refused here.
pub fn decode_untrusted(bytes: &[u8]) -> Result<automerge::Change, DocError> {
    let shape = scan_change(bytes)?;
    let bytes = bytes.to_vec();
    let change = match std::panic::catch_unwind(move || automerge::Change::from_bytes(bytes)) {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(DocError::Malformed(format!(
                "the change does not decode: {e}"
            )));
        }
        Err(_) => {
            return Err(DocError::Malformed(
                "the change is malformed (the Automerge library could not decode it)".into(),
            ));
        }
    };
    // The scan's count is automerge's for every change automerge can decode; a difference
    // would mean the scan misreads the format, so the change is not trusted either way.
    if change.len() as u64 != shape.ops {
        return Err(DocError::Malformed(format!(
            "the change holds {} operations where its columns announce {}",
            change.len(),
            shape.ops
        )));
    }
    Ok(change)
}

/// Applies changes that came from another node. automerge 0.12 panics on some malformed
/// changes instead of returning an error (found by the `change_ingest` fuzz target; the
/// crasher is `fuzz/fixtures/change_ingest/`): such a change is refused like any invalid one
/// rather than taking the session or the process down. Changes that would take the document
/// past [`DOC_OPS_MAX`] operations are refused before they are applied (a merge is the costly
/// part: ~0.2 s for 10,000 operations in a release build). After a refusal the document must be
/// dropped, not saved — every caller loads it afresh per change and aborts on error.
pub fn apply_untrusted(
    doc: &mut AutoCommit,
    changes: Vec<automerge::Change>,
) -> Result<(), DocError> {
    // A re-sent change the document already has adds nothing, so a document at the cap still
    // accepts it. A change still waiting for its dependencies is counted as if it applied.
    let before = doc.stats().num_ops;
    let mut incoming = 0u64;
    for c in &changes {
        if doc.get_change_by_hash(&c.hash()).is_none() {
            incoming = incoming.saturating_add(c.len() as u64);
        }
    }
    if before.saturating_add(incoming) > DOC_OPS_MAX {
        return Err(DocError::Limit(format!(
            "the record would hold {} operations, more than {DOC_OPS_MAX}",
            before.saturating_add(incoming)
        )));
    }
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| doc.apply_changes(changes))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(DocError::Automerge(e.to_string())),
        Err(_) => Err(DocError::Malformed(
            "the change is malformed (the Automerge library could not apply it)".into(),
        )),
    }
}

/// Saves a document merged from another node's changes, refusing one over [`DOC_BYTES_MAX`].
pub fn save_checked(doc: &mut AutoCommit) -> Result<Vec<u8>, DocError> {
    let bytes = doc.save();
    if bytes.len() > DOC_BYTES_MAX {
        return Err(DocError::Limit(format!(
            "the record would be {} bytes saved, more than {DOC_BYTES_MAX}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// A work order as the API shows it: the shared record plus where it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkOrderView {
    #[serde(flatten)]
    pub order: WorkOrder,
    pub work_unit: Option<EquipmentId>,
}

pub fn am(e: automerge::AutomergeError) -> DocError {
    DocError::Automerge(e.to_string())
}

pub fn put_opt_ts(doc: &mut AutoCommit, key: &str, t: Option<Timestamp>) -> Result<(), DocError> {
    match t {
        Some(t) => doc.put(ROOT, key, t.as_micros()),
        None => doc.put(ROOT, key, ScalarValue::Null),
    }
    .map_err(am)
}

pub fn put_opt_str(doc: &mut AutoCommit, key: &str, s: Option<&str>) -> Result<(), DocError> {
    match s {
        Some(s) => doc.put(ROOT, key, s),
        None => doc.put(ROOT, key, ScalarValue::Null),
    }
    .map_err(am)
}

pub fn write_all(doc: &mut AutoCommit, v: &WorkOrderView) -> Result<(), DocError> {
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
    // The routing snapshot is one value (postcard bytes): it is written at release and then
    // only by the site, so field-level merge inside it buys nothing.
    let ops = postcard::to_stdvec(&o.operations).map_err(|_| DocError::Field("operations"))?;
    doc.put(ROOT, "operations", ScalarValue::Bytes(ops))
        .map_err(am)?;
    put_opt_str(doc, "work_unit", v.work_unit.as_ref().map(|w| w.as_str()))
}

fn scalar(doc: &AutoCommit, key: &str) -> Result<Option<ScalarValue>, DocError> {
    Ok(doc
        .get(ROOT, key)
        .map_err(am)?
        .and_then(|(v, _)| v.as_scalar().cloned())
        .filter(|s| !matches!(s, ScalarValue::Null)))
}

fn get_str(doc: &AutoCommit, key: &str) -> Result<Option<String>, DocError> {
    Ok(scalar(doc, key)?.and_then(|s| s.as_str().map(str::to_owned)))
}

fn get_u64(doc: &AutoCommit, key: &str) -> Result<Option<u64>, DocError> {
    Ok(scalar(doc, key)?.and_then(|s| s.as_u64().or_else(|| s.as_i64().map(|v| v.max(0) as u64))))
}

fn get_ts(doc: &AutoCommit, key: &str) -> Result<Option<Timestamp>, DocError> {
    Ok(scalar(doc, key)?
        .and_then(|s| s.as_i64().or_else(|| s.as_u64().map(|v| v as i64)))
        .map(Timestamp::from_micros))
}

fn corrupt(what: &'static str) -> DocError {
    DocError::Field(what)
}

/// Reads a work order back out of its document, validating every field like input.
pub fn read_view(doc: &AutoCommit) -> Result<WorkOrderView, DocError> {
    let text = |k: &'static str| get_str(doc, k)?.ok_or_else(|| corrupt(k));
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
        operations: match scalar(doc, "operations")? {
            Some(ScalarValue::Bytes(b)) => {
                postcard::from_bytes(&b).map_err(|_| corrupt("operations"))?
            }
            _ => Vec::new(),
        },
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

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn view() -> WorkOrderView {
        WorkOrderView {
            order: WorkOrder {
                erp_ref: Some("4500012345".into()),
                routing_version: 2,
                due: Some(Timestamp::from_millis(1_795_000_000_000)),
                priority: 3,
                notes: "first article to QA".into(),
                ..WorkOrder::released(
                    WorkOrderId::new("SITE_001-WO-1").unwrap(),
                    SiteId::new("SITE_001").unwrap(),
                    MaterialId::new("BRACKET-7").unwrap(),
                    500,
                )
            },
            work_unit: Some(EquipmentId::new("PRESS-01").unwrap()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::view;
    use super::*;
    use automerge::ActorId;

    #[test]
    fn a_work_order_round_trips_through_its_document() {
        let mut doc = AutoCommit::new();
        write_all(&mut doc, &view()).unwrap();
        assert_eq!(read_view(&doc).unwrap(), view());
        let reloaded = AutoCommit::load(&doc.save()).unwrap();
        assert_eq!(read_view(&reloaded).unwrap(), view());
    }

    /// HQ re-plans the quantity while the site starts the order, offline: after exchanging
    /// changes both copies are equal and hold both edits.
    #[test]
    fn concurrent_edits_of_different_fields_both_survive() {
        let mut hq = AutoCommit::new().with_actor(ActorId::random());
        write_all(&mut hq, &view()).unwrap();
        hq.commit();
        let mut site = AutoCommit::load(&hq.save())
            .unwrap()
            .with_actor(ActorId::random());
        hq.put(ROOT, "planned_quantity", 800u64).unwrap();
        hq.commit();
        site.put(ROOT, "state", WorkOrderState::Running.as_str())
            .unwrap();
        site.commit();
        let from_hq = hq.get_changes(&[]);
        let from_site = site.get_changes(&[]);
        site.apply_changes(from_hq).unwrap();
        hq.apply_changes(from_site).unwrap();
        assert_eq!(hq.get_heads(), site.get_heads());
        let merged = read_view(&hq).unwrap();
        assert_eq!(merged.order.planned_quantity, 800);
        assert_eq!(merged.order.state, WorkOrderState::Running);
        assert_eq!(read_view(&site).unwrap(), merged);
    }

    /// A record's document is capped: a change that would take it past DOC_OPS_MAX
    /// operations is refused as over a limit (a re-sent change it already has is not), and a
    /// document over DOC_BYTES_MAX does not save.
    #[test]
    fn a_document_over_its_caps_is_refused() {
        let mut src = AutoCommit::new().with_actor(ActorId::random());
        let mut changes = Vec::new();
        for round in 0..=(DOC_OPS_MAX / CHANGE_OPS_MAX) {
            for i in 0..CHANGE_OPS_MAX {
                src.put(ROOT, format!("k{i}"), round).unwrap();
            }
            src.commit();
            changes.push(src.get_last_local_change().unwrap().raw_bytes().to_vec());
        }
        let (last, within) = changes.split_last().unwrap();
        let mut doc = AutoCommit::new();
        let mut slowest = std::time::Duration::ZERO;
        for c in within {
            let started = std::time::Instant::now();
            let change = decode_untrusted(c).unwrap();
            apply_untrusted(&mut doc, vec![change]).unwrap();
            slowest = slowest.max(started.elapsed());
        }
        println!("slowest decode+merge of a {CHANGE_OPS_MAX}-op change: {slowest:?}");
        assert_eq!(doc.stats().num_ops, DOC_OPS_MAX);
        let again = decode_untrusted(within.last().unwrap()).unwrap();
        apply_untrusted(&mut doc, vec![again]).unwrap();
        let over = apply_untrusted(&mut doc, vec![decode_untrusted(last).unwrap()]).unwrap_err();
        assert!(over.is_limit(), "{over}");
        // Refused before it was applied: the document is as it was.
        assert_eq!(doc.stats().num_ops, DOC_OPS_MAX);

        // Five values of 900 KiB that do not compress: over 4 MiB saved.
        let mut big = AutoCommit::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for k in 0..5 {
            let bytes: Vec<u8> = (0..900 * 1024)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            big.put(ROOT, format!("b{k}"), ScalarValue::Bytes(bytes))
                .unwrap();
        }
        let refused = save_checked(&mut big).unwrap_err();
        assert!(refused.is_limit(), "{refused}");
        let mut small = AutoCommit::new();
        write_all(&mut small, &view()).unwrap();
        assert_eq!(save_checked(&mut small).unwrap(), small.save());
    }

    #[test]
    fn a_document_missing_fields_is_an_error() {
        let mut doc = AutoCommit::new();
        doc.put(ROOT, "id", "SITE_001-WO-1").unwrap();
        assert_eq!(read_view(&doc), Err(DocError::Field("site_id")));
    }
}

/// Compares a peer's heads of a record with our document (`None` when we do not have the
/// record): which of our changes the peer lacks, and whether it knows changes we lack. Both
/// ends of a repair use this, so they agree on what "lacks" means.
pub fn compare_heads(
    doc: Option<&mut AutoCommit>,
    peer: &crate::message::RecordHeads,
) -> Result<crate::store::HeadsComparison, DocError> {
    use automerge::ChangeHash;
    let Some(doc) = doc else {
        return Ok(crate::store::HeadsComparison {
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
        .map(|c| crate::message::RecordChange::new(peer.record.clone(), c.raw_bytes().to_vec()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DocError::Automerge)?;
    Ok(crate::store::HeadsComparison {
        missing_at_peer,
        unknown_here,
        our_heads: doc.get_heads().into_iter().map(|h| h.0).collect(),
    })
}

/// Business conflicts a merge left in a work-order document: Automerge keeps concurrent
/// values of a field side by side, and two concurrent states that contradict each other (HQ
/// cancelled what the site completed) must go to a person, not be settled by whichever value
/// Automerge happens to show. Returns one description per contradicting pair.
pub fn state_conflicts(doc: &AutoCommit) -> Result<Vec<String>, DocError> {
    let values: Vec<WorkOrderState> = doc
        .get_all(ROOT, "state")
        .map_err(am)?
        .into_iter()
        .filter_map(|(v, _)| {
            v.as_scalar()
                .and_then(|s| s.as_str())
                .and_then(WorkOrderState::parse)
        })
        .collect();
    let mut out = Vec::new();
    for (i, a) in values.iter().enumerate() {
        for b in &values[i + 1..] {
            if shared_model::work_order::concurrent_state_conflict(*a, *b) {
                let (x, y) = if a.as_str() <= b.as_str() {
                    (a, b)
                } else {
                    (b, a)
                };
                out.push(format!(
                    "concurrent edits left the order both {} and {}",
                    x.as_str(),
                    y.as_str()
                ));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

#[cfg(test)]
mod conflict_tests {
    use super::*;
    use automerge::ActorId;

    /// HQ cancels while the site, offline, completes: after the merge the conflict is found on
    /// both copies, and a merge of compatible edits finds none.
    #[test]
    fn cancel_against_complete_is_a_conflict_on_both_sides() {
        let mut base = AutoCommit::new().with_actor(ActorId::random());
        base.put(ROOT, "state", "running").unwrap();
        base.commit();
        let mut hq = AutoCommit::load(&base.save())
            .unwrap()
            .with_actor(ActorId::random());
        let mut site = AutoCommit::load(&base.save())
            .unwrap()
            .with_actor(ActorId::random());
        assert!(state_conflicts(&hq).unwrap().is_empty());
        hq.put(ROOT, "state", "aborted").unwrap();
        hq.commit();
        site.put(ROOT, "state", "ended").unwrap();
        site.commit();
        let (h, s) = (hq.get_changes(&[]), site.get_changes(&[]));
        hq.apply_changes(s).unwrap();
        site.apply_changes(h).unwrap();
        let expected = vec!["concurrent edits left the order both aborted and ended".to_owned()];
        assert_eq!(state_conflicts(&hq).unwrap(), expected);
        assert_eq!(state_conflicts(&site).unwrap(), expected);
        // A later edit that settles the state resolves it in the document.
        hq.put(ROOT, "state", "ended").unwrap();
        hq.commit();
        assert!(state_conflicts(&hq).unwrap().is_empty());
    }
}
