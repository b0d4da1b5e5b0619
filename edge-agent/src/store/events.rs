//! Storing events: reference checks, idempotency, and the outbox entry, in the caller's
//! transaction (the writer's savepoint).

use rusqlite::{Connection, OptionalExtension, params};
use shared_model::master::MasterKind;
use shared_model::{Event, EventBody, EventId};

use super::StoreError;

/// What a request to store events came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventsOutcome {
    /// Stored now; `new` of the ids were not present before (the rest were resent ids).
    Stored { ids: Vec<EventId>, new: usize },
    /// The idempotency key was used before: this is the first response, verbatim.
    Replayed(String),
}

/// A reference from an event to master data or a work order, to check before storing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefCheck {
    Equipment,
    WorkOrder,
    Material,
    ReasonCode,
}

fn references(body: &EventBody) -> Vec<(&'static str, RefCheck, String)> {
    let mut refs: Vec<(&'static str, RefCheck, String)> = Vec::new();
    // An absent optional field refers to nothing.
    let mut add = |field, check, value: Option<&str>| {
        refs.extend(value.map(|v| (field, check, v.to_owned())));
    };
    match body {
        EventBody::ProductionCount(p) => {
            add("equipment", RefCheck::Equipment, Some(p.equipment.as_str()));
            add("work_order", RefCheck::WorkOrder, opt_str(&p.work_order));
            add(
                "scrap_reason",
                RefCheck::ReasonCode,
                opt_str(&p.scrap_reason),
            );
        }
        EventBody::EquipmentState(s) => {
            add("equipment", RefCheck::Equipment, Some(s.equipment.as_str()));
            add("reason", RefCheck::ReasonCode, opt_str(&s.reason));
        }
        EventBody::QualitySample(q) => {
            add("equipment", RefCheck::Equipment, opt_str(&q.equipment));
            add("work_order", RefCheck::WorkOrder, opt_str(&q.work_order));
        }
        EventBody::MaterialConsumed(m) | EventBody::MaterialProduced(m) => {
            add("material", RefCheck::Material, Some(m.material.as_str()));
            add("work_order", RefCheck::WorkOrder, opt_str(&m.work_order));
            add("equipment", RefCheck::Equipment, opt_str(&m.equipment));
        }
        EventBody::OperatorClock(c) => add("equipment", RefCheck::Equipment, opt_str(&c.equipment)),
        // A correction's replacement is checked like an event; the corrected id need not be
        // here any more (it may have been pruned after sync).
        EventBody::Correction(c) => {
            if let Some(r) = &c.replacement {
                return references(&r.to_body())
                    .into_iter()
                    .map(|(f, k, v)| (replacement_field(f), k, v))
                    .collect();
            }
        }
    }
    refs
}

/// The text of an optional id.
fn opt_str<T: AsRef<str>>(value: &Option<T>) -> Option<&str> {
    value.as_ref().map(AsRef::as_ref)
}

fn replacement_field(field: &'static str) -> &'static str {
    match field {
        "equipment" => "replacement.equipment",
        "work_order" => "replacement.work_order",
        "scrap_reason" => "replacement.scrap_reason",
        "reason" => "replacement.reason",
        "material" => "replacement.material",
        other => other,
    }
}

fn exists(conn: &Connection, check: RefCheck, value: &str) -> Result<bool, StoreError> {
    let kind = match check {
        RefCheck::WorkOrder => {
            return Ok(conn
                .prepare_cached("SELECT 1 FROM work_orders WHERE id = ?1")?
                .query_row(params![value], |_| Ok(()))
                .optional()?
                .is_some());
        }
        RefCheck::Equipment => MasterKind::Equipment,
        RefCheck::Material => MasterKind::Material,
        RefCheck::ReasonCode => MasterKind::ReasonCode,
    };
    super::master::exists(conn, kind, value)
}

/// Stores validated events with their outbox entries. Everything or nothing: the first
/// unknown reference fails the whole request (the writer's savepoint rolls it back).
pub(crate) fn insert(
    conn: &Connection,
    events: &[Event],
    idempotency_key: Option<&str>,
    now_micros: i64,
    respond: impl FnOnce(&[EventId]) -> String,
) -> Result<EventsOutcome, StoreError> {
    if let Some(key) = idempotency_key
        && let Some(response) = super::idempotency::lookup(conn, key)?
    {
        return Ok(EventsOutcome::Replayed(response));
    }
    for (index, e) in events.iter().enumerate() {
        for (field, check, value) in references(&e.body) {
            if !exists(conn, check, &value)? {
                return Err(StoreError::UnknownReference {
                    index,
                    field,
                    value,
                });
            }
        }
    }
    let mut insert_event = conn.prepare_cached(
        "INSERT OR IGNORE INTO events (event_id, kind, occurred_at, recorded_at, equipment, work_order, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let mut insert_outbox = conn.prepare_cached("INSERT INTO outbox (event_id) VALUES (?1)")?;
    let mut new = 0;
    let mut ids = Vec::with_capacity(events.len());
    for e in events {
        let (equipment, work_order) = index_columns(&e.body);
        let body = postcard::to_stdvec(e)
            .map_err(|err| StoreError::Corrupt(format!("cannot encode event: {err}")))?;
        let id = e.event_id.to_string();
        let inserted = insert_event.execute(params![
            id,
            e.kind().as_str(),
            e.occurred_at.as_micros(),
            e.recorded_at.as_micros(),
            equipment,
            work_order,
            body
        ])?;
        if inserted == 1 {
            insert_outbox.execute([&id])?;
            super::counts::apply(conn, e)?;
            new += 1;
        }
        ids.push(e.event_id);
    }
    if let Some(key) = idempotency_key {
        super::idempotency::remember(conn, key, &respond(&ids), now_micros)?;
    }
    Ok(EventsOutcome::Stored { ids, new })
}

fn index_columns(body: &EventBody) -> (Option<&str>, Option<&str>) {
    match body {
        EventBody::ProductionCount(p) => (
            Some(p.equipment.as_str()),
            p.work_order.as_ref().map(|w| w.as_str()),
        ),
        EventBody::EquipmentState(s) => (Some(s.equipment.as_str()), None),
        EventBody::QualitySample(q) => (
            q.equipment.as_ref().map(|e| e.as_str()),
            q.work_order.as_ref().map(|w| w.as_str()),
        ),
        EventBody::MaterialConsumed(m) | EventBody::MaterialProduced(m) => (
            m.equipment.as_ref().map(|e| e.as_str()),
            m.work_order.as_ref().map(|w| w.as_str()),
        ),
        EventBody::OperatorClock(c) => (c.equipment.as_ref().map(|e| e.as_str()), None),
        EventBody::Correction(_) => (None, None),
    }
}
