//! Running totals of good, scrap and rework per work order, kept in the same transaction as
//! the events, so the terminal shows an order's progress without summing its history (and
//! still knows it after retention pruned the acknowledged events).
//!
//! A correction replaces the counts of the production event it names: the totals lose what
//! was in force for that event and gain the replacement's. As at the hub, the latest
//! correction wins ([`correction_supersedes`]), and corrections of corrections are ignored.
//! Totals cover events stored since schema version 3.

use rusqlite::{Connection, OptionalExtension, params};
use shared_model::event::{ProductionCount, Replacement, correction_supersedes};
use shared_model::{Event, EventBody, EventId, EventKind};

use super::StoreError;

/// good, scrap, rework of one production count, and its order.
type Counts = (Option<String>, i64, i64, i64);

/// Totals of one order: (good, scrap, rework).
pub fn order_totals(conn: &Connection, work_order: &str) -> Result<(i64, i64, i64), StoreError> {
    Ok(conn
        .prepare_cached("SELECT good, scrap, rework FROM order_counts WHERE work_order = ?1")?
        .query_row([work_order], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?
        .unwrap_or((0, 0, 0)))
}

fn add(conn: &Connection, c: &Counts, sign: i64) -> Result<(), StoreError> {
    let (Some(order), good, scrap, rework) = c else {
        return Ok(());
    };
    conn.prepare_cached(
        "INSERT INTO order_counts (work_order, good, scrap, rework) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (work_order) DO UPDATE SET good = good + excluded.good,
           scrap = scrap + excluded.scrap, rework = rework + excluded.rework",
    )?
    .execute(params![order, sign * good, sign * scrap, sign * rework])?;
    Ok(())
}

fn of_count(p: &ProductionCount) -> Counts {
    (
        p.work_order.as_ref().map(|w| w.to_string()),
        i64::from(p.good),
        i64::from(p.scrap),
        i64::from(p.rework),
    )
}

/// The counts an event contributes, if it is a production count. Every kind is named, so a new
/// event type has to decide here whether it counts.
fn of_body(body: &EventBody) -> Option<Counts> {
    match body {
        EventBody::ProductionCount(p) => Some(of_count(p)),
        EventBody::EquipmentState(_)
        | EventBody::QualitySample(_)
        | EventBody::MaterialConsumed(_)
        | EventBody::MaterialProduced(_)
        | EventBody::Correction(_)
        | EventBody::OperatorClock(_) => None,
    }
}

/// Applies one newly stored event to the totals.
pub(crate) fn apply(conn: &Connection, e: &Event) -> Result<(), StoreError> {
    match &e.body {
        EventBody::ProductionCount(p) => add(conn, &of_count(p), 1),
        EventBody::Correction(c) => {
            let corrected = c.corrects.to_string();
            let in_force: Option<(EventId, Counts)> = conn
                .prepare_cached(
                    "SELECT correction, work_order, good, scrap, rework FROM count_corrections
                     WHERE corrected = ?1",
                )?
                .query_row([&corrected], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
                    ))
                })
                .optional()?
                .map(|(by, counts)| {
                    by.parse::<EventId>()
                        .map(|by| (by, counts))
                        .map_err(|err| StoreError::Corrupt(format!("count correction {by}: {err}")))
                })
                .transpose()?;
            let before = match in_force {
                // A later correction already stands: this older one changes nothing.
                Some((by, _)) if correction_supersedes(by, e.event_id) => return Ok(()),
                Some((_, counts)) => counts,
                None => {
                    let body: Option<Vec<u8>> = conn
                        .prepare_cached("SELECT body FROM events WHERE event_id = ?1")?
                        .query_row([&corrected], |r| r.get(0))
                        .optional()?;
                    // Not held here (pruned, or another kind of event): nothing to adjust.
                    let Some(body) = body else { return Ok(()) };
                    match of_body(&super::decode_event(&body)?.body) {
                        Some(counts) => counts,
                        None => return Ok(()),
                    }
                }
            };
            let after = match &c.replacement {
                Some(Replacement::ProductionCount(p)) => of_count(p),
                // A void (or a replacement of another kind) leaves nothing counted.
                None
                | Some(
                    Replacement::EquipmentState(_)
                    | Replacement::QualitySample(_)
                    | Replacement::MaterialConsumed(_)
                    | Replacement::MaterialProduced(_)
                    | Replacement::OperatorClock(_),
                ) => (before.0.clone(), 0, 0, 0),
            };
            add(conn, &before, -1)?;
            add(conn, &after, 1)?;
            conn.prepare_cached(
                "INSERT INTO count_corrections (corrected, correction, work_order, good, scrap, rework)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (corrected) DO UPDATE SET correction = excluded.correction,
                   work_order = excluded.work_order, good = excluded.good,
                   scrap = excluded.scrap, rework = excluded.rework",
            )?
            .execute(params![
                corrected,
                e.event_id.to_string(),
                after.0,
                after.1,
                after.2,
                after.3
            ])?;
            Ok(())
        }
        EventBody::EquipmentState(_)
        | EventBody::QualitySample(_)
        | EventBody::MaterialConsumed(_)
        | EventBody::MaterialProduced(_)
        | EventBody::OperatorClock(_) => Ok(()),
    }
}

/// Rebuilds every order's totals from the stored events, in the order they were stored, with
/// the same rule as [`apply`] (after a restore: a backup written before schema 3 kept no
/// totals). Totals never go below what was kept before: events pruned by retention count in
/// the kept totals but can no longer be recounted. Returns the orders touched.
pub fn recompute(conn: &Connection) -> Result<usize, StoreError> {
    let kept: Vec<(String, i64, i64, i64)> = conn
        .prepare("SELECT work_order, good, scrap, rework FROM order_counts")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    conn.execute_batch("DELETE FROM order_counts; DELETE FROM count_corrections;")?;
    {
        let mut stmt = conn.prepare(
            "SELECT body FROM events WHERE kind IN (?1, ?2) ORDER BY recorded_at, event_id",
        )?;
        let mut rows = stmt.query([
            EventKind::ProductionCount.as_str(),
            EventKind::Correction.as_str(),
        ])?;
        while let Some(row) = rows.next()? {
            let body: Vec<u8> = row.get(0)?;
            apply(conn, &super::decode_event(&body)?)?;
        }
    }
    for (order, good, scrap, rework) in &kept {
        at_least(conn, order, *good, *scrap, *rework)?;
    }
    Ok(
        conn.query_row("SELECT count(*) FROM order_counts", [], |r| {
            r.get::<_, i64>(0)
        })? as usize,
    )
}

/// Raises each order's totals to at least the good and scrap counts its shared record carries
/// (a restored store, repaired against the hub: the record holds what this site reported at
/// its last pause or completion, including counts whose events were lost with the disk, and
/// a later pause must not report less). Returns the orders raised.
pub fn at_least_the_records(conn: &Connection) -> Result<usize, StoreError> {
    at_least_these_records(conn, None)
}

/// [`at_least_the_records`] for the named orders only (`None`: every order).
pub fn at_least_these_records(
    conn: &Connection,
    ids: Option<&[String]>,
) -> Result<usize, StoreError> {
    let orders: Vec<(String, String)> = conn
        .prepare("SELECT id, json FROM work_orders")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .filter(|r| match (ids, r) {
            (Some(ids), Ok((id, _))) => ids.contains(id),
            _ => true,
        })
        .collect::<Result<_, _>>()?;
    let mut raised = 0;
    for (id, json) in orders {
        let v: sync_protocol::records::WorkOrderView = serde_json::from_str(&json)
            .map_err(|e| StoreError::Corrupt(format!("work order {id}: {e}")))?;
        let (good, scrap, rework) = order_totals(conn, &id)?;
        let (g, s) = (
            i64::try_from(v.order.good_count).unwrap_or(i64::MAX),
            i64::try_from(v.order.scrap_count).unwrap_or(i64::MAX),
        );
        if g > good || s > scrap {
            at_least(conn, &id, g, s, rework)?;
            raised += 1;
        }
    }
    Ok(raised)
}

fn at_least(
    conn: &Connection,
    order: &str,
    good: i64,
    scrap: i64,
    rework: i64,
) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO order_counts (work_order, good, scrap, rework) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (work_order) DO UPDATE SET good = max(good, excluded.good),
           scrap = max(scrap, excluded.scrap), rework = max(rework, excluded.rework)",
    )?
    .execute(params![order, good, scrap, rework])?;
    Ok(())
}
