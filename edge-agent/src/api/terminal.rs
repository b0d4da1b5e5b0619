//! What the operator terminal reads in one request, the master data it offers in pick lists,
//! the recent counts a supervisor may correct, and conflict resolution.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use serde_json::{Value, json};
use shared_model::master::{MasterKind, MasterRecord};
use shared_model::work_order::WorkOrderState;
use shared_model::{EventBody, EventKind, Timestamp};

use super::json::Obj;
use super::session::{Caller, require_supervisor};
use super::{ApiError, AppState, read_json_body};
use crate::records::{self, WorkOrderView};
use crate::store::{StoreError, counts};

/// Orders shown in a work unit's queue.
pub const QUEUE_MAX: usize = 20;
/// Most master records one list returns.
pub const MASTER_LIST_MAX: usize = 10_000;
/// Most events one recent-events request returns.
pub const RECENT_EVENTS_MAX: usize = 100;

/// A query string that does not fit is a JSON `400` naming the problem, like every other
/// error, not axum's plain-text rejection.
fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|e| {
        ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            e.body_text(),
        )
    })
}

#[derive(Debug, Deserialize)]
pub struct UnitQuery {
    work_unit: String,
}

fn master_json(
    conn: &Connection,
    kind: MasterKind,
    key: &str,
) -> Result<Option<Value>, StoreError> {
    crate::store::master::json(conn, kind, key)?
        .map(|j| serde_json::from_str::<Value>(&j).map_err(|e| StoreError::Corrupt(e.to_string())))
        .transpose()
}

/// A master record's fields without the kind wrapper (`{"equipment": {...}}` → `{...}`).
fn unwrap_record(v: Value) -> Value {
    match v {
        Value::Object(m) if m.len() == 1 => {
            m.into_iter().next().map(|(_, v)| v).unwrap_or(Value::Null)
        }
        other => other,
    }
}

/// The work unit's latest recorded state.
fn current_state(conn: &Connection, unit: &str) -> Result<Option<Value>, StoreError> {
    let body: Option<Vec<u8>> = conn
        .prepare_cached(
            "SELECT body FROM events WHERE equipment = ?1 AND kind = ?2
             ORDER BY occurred_at DESC, event_id DESC LIMIT 1",
        )?
        .query_row([unit, EventKind::EquipmentState.as_str()], |r| r.get(0))
        .optional()?;
    let Some(body) = body else { return Ok(None) };
    let e = crate::store::decode_event(&body)?;
    let EventBody::EquipmentState(s) = &e.body else {
        return Ok(None);
    };
    let reason_name = match &s.reason {
        Some(r) => master_json(conn, MasterKind::ReasonCode, r.as_str())?
            .map(unwrap_record)
            .and_then(|v| v["name"].as_str().map(str::to_owned)),
        None => None,
    };
    Ok(Some(json!({
        "state": s.state.as_str(),
        "reason": s.reason.as_ref().map(|r| r.as_str()),
        "reason_name": reason_name,
        "since": e.occurred_at.to_rfc3339(),
    })))
}

fn with_totals(conn: &Connection, v: &WorkOrderView) -> Result<Value, StoreError> {
    let (good, scrap, rework) = counts::order_totals(conn, v.order.id.as_str())?;
    let mut j = serde_json::to_value(v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    j["good"] = json!(good);
    j["scrap"] = json!(scrap);
    j["rework"] = json!(rework);
    j["material_name"] = master_json(conn, MasterKind::Material, v.order.material.as_str())?
        .map(unwrap_record)
        .map(|m| m["name"].clone())
        .unwrap_or(Value::Null);
    Ok(j)
}

/// The shift instance running now, from this site's shift calendars.
fn current_shift(conn: &Connection, now: Timestamp) -> Result<Option<Value>, StoreError> {
    let mut stmt = conn
        .prepare_cached("SELECT json FROM master WHERE kind = ?1 AND json IS NOT NULL LIMIT 100")?;
    let rows = stmt.query_map([MasterKind::ShiftCalendar.as_str()], |r| {
        r.get::<_, String>(0)
    })?;
    for row in rows {
        let Ok(MasterRecord::ShiftCalendar(c)) = serde_json::from_str::<MasterRecord>(&row?) else {
            continue;
        };
        if let Some(s) = c.shifts.iter().find(|s| s.start <= now && now < s.end) {
            return Ok(Some(json!({
                "calendar": c.name,
                "name": s.name,
                "start": s.start.to_rfc3339(),
                "end": s.end.to_rfc3339(),
            })));
        }
    }
    Ok(None)
}

fn terminal_view(conn: &Connection, unit: &str, now: Timestamp) -> Result<Value, StoreError> {
    let equipment = master_json(conn, MasterKind::Equipment, unit)?
        .map(unwrap_record)
        .ok_or_else(|| StoreError::UnknownReference {
            index: 0,
            field: "work_unit",
            value: unit.to_owned(),
        })?;
    // The active order: running or interrupted on this unit, the most recently started first.
    let active = records::current_order(
        conn,
        unit,
        &[WorkOrderState::Running, WorkOrderState::Interrupted],
    )?;
    let mut queue = records::list(
        conn,
        Some(WorkOrderState::AllowedToStart),
        Some(unit),
        QUEUE_MAX,
    )?;
    if queue.len() < QUEUE_MAX {
        // Released orders without a unit yet may be started here too.
        let unassigned = records::list(conn, Some(WorkOrderState::AllowedToStart), None, 500)?;
        queue.extend(
            unassigned
                .into_iter()
                .filter(|o| o.work_unit.is_none())
                .take(QUEUE_MAX - queue.len()),
        );
    }
    let shift = current_shift(conn, now)?;
    let conflicts: i64 = conn.query_row(
        "SELECT count(*) FROM conflicts WHERE resolved_at IS NULL",
        [],
        |r| r.get(0),
    )?;
    Ok(json!({
        "work_unit": equipment,
        "equipment_state": current_state(conn, unit)?,
        "active": active.as_ref().map(|o| with_totals(conn, o)).transpose()?,
        "queue": queue.iter().map(|o| with_totals(conn, o)).collect::<Result<Vec<_>, _>>()?,
        "open_conflicts": conflicts,
        "shift": shift,
    }))
}

/// `GET /api/v1/terminal?work_unit=PRESS-01`: everything the terminal shows for its station,
/// with the sync state, in one read.
pub async fn snapshot(
    State(state): State<AppState>,
    q: Result<Query<UnitQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let unit = query(q)?.work_unit;
    let now = state.now();
    let mut view = state
        .store
        .read(move |c| terminal_view(c, &unit, now))
        .await?;
    let p = state.store.pending().await?;
    let last = state.store.meta("last_sync_at").await?;
    view["sync"] = json!({
        "connected": state.connected.load(std::sync::atomic::Ordering::Relaxed),
        "hub_configured": state.hub_configured,
        "pending_events": p.events,
        "pending_changes": p.changes,
        "last_sync_at": last,
    });
    // The connectors that read this station's machine: the terminal says "machine link down"
    // while any of them is not up, since counts and states are not arriving then.
    let unit_id = view["work_unit"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let links: Vec<Value> = state
        .connectors
        .snapshots()
        .into_iter()
        .filter(|s| s.equipment.contains(&unit_id))
        .map(|s| {
            let write = s.writes.iter().find(|w| w.equipment == unit_id);
            json!({"connector": s.name, "link": s.link, "since": s.since, "last_error": s.last_error, "last_write": write})
        })
        .collect();
    view["machine_links"] = json!(links);
    view["site_id"] = json!(state.store.site().as_str());
    view["now"] = json!(state.now().to_rfc3339());
    Ok(Json(view))
}

/// `GET /api/v1/master-data/{kind}`: the records of one kind for pick lists. Personnel is not
/// listed: badges are looked up one at a time at login.
pub async fn master_data(
    State(state): State<AppState>,
    Path(kind): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let k = MasterKind::parse(&kind)
        .filter(|k| *k != MasterKind::Personnel)
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no master-data kind {kind:?}; listable: {}",
                MasterKind::ALL
                    .iter()
                    .filter(|k| **k != MasterKind::Personnel)
                    .map(|k| k.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let records = state
        .store
        .read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT json FROM master WHERE kind = ?1 AND json IS NOT NULL ORDER BY key LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![k.as_str(), MASTER_LIST_MAX as i64], |r| {
                r.get::<_, String>(0)
            })?;
            rows.map(|r| {
                let j = r?;
                serde_json::from_str::<Value>(&j)
                    .map(unwrap_record)
                    .map_err(|e| StoreError::Corrupt(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()
        })
        .await?;
    Ok(Json(json!({ "kind": k.as_str(), "records": records })))
}

#[derive(Debug, Deserialize)]
pub struct RecentQuery {
    work_order: Option<String>,
    equipment: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/v1/events?work_order=…&equipment=…&type=…&limit=20`: the newest events still held
/// here, each with the counts in force after corrections (`in_force`) for production counts.
pub async fn recent_events(
    State(state): State<AppState>,
    q: Result<Query<RecentQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = query(q)?;
    let kind = match &q.kind {
        None => None,
        Some(t) => {
            Some(super::events::named_event_kind(t).map_err(|m| ApiError::invalid("type", m))?)
        }
    };
    let limit = q.limit.unwrap_or(20).clamp(1, RECENT_EVENTS_MAX);
    let events = state
        .store
        .read(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT e.body, cc.correction, cc.good, cc.scrap, cc.rework FROM events e
                 LEFT JOIN count_corrections cc ON cc.corrected = e.event_id
                 WHERE (?1 IS NULL OR e.work_order = ?1) AND (?2 IS NULL OR e.equipment = ?2)
                   AND (?3 IS NULL OR e.kind = ?3)
                 ORDER BY e.occurred_at DESC, e.event_id DESC LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![q.work_order, q.equipment, kind.map(|k| k.as_str()), limit as i64],
                |r| {
                    Ok((
                        r.get::<_, Vec<u8>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, Option<i64>>(4)?,
                    ))
                },
            )?;
            let mut out = Vec::new();
            for row in rows {
                let (body, correction, good, scrap, rework) = row?;
                let e = crate::store::decode_event(&body)?;
                let mut j = serde_json::to_value(&e).map_err(|x| StoreError::Corrupt(x.to_string()))?;
                j["type"] = json!(e.kind().as_str());
                if let EventBody::ProductionCount(p) = &e.body {
                    j["in_force"] = match correction {
                        Some(by) => json!({"good": good, "scrap": scrap, "rework": rework, "corrected_by": by}),
                        None => json!({"good": p.good, "scrap": p.scrap, "rework": p.rework}),
                    };
                }
                out.push(j);
            }
            Ok(out)
        })
        .await?;
    Ok(Json(json!({ "events": events })))
}

/// `POST /api/v1/conflicts/{id}/resolve {"state": "ended"}`: a supervisor chooses the state
/// that stands.
pub async fn resolve(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<WorkOrderView>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| ApiError::not_found(format!("no open conflict {id:?}")))?;
    let now: Timestamp = state.now();
    require_supervisor(&caller, now.as_micros())?;
    let value = read_json_body(&headers, body).await?;
    let mut o = Obj::new(&value, "")?;
    let keep: String = o.req("state")?;
    o.finish()?;
    let keep = WorkOrderState::parse(&keep)
        .ok_or_else(|| ApiError::invalid("state", format!("unknown state {keep:?}")))?;
    let actor = state.store.actor().clone();
    let view = state
        .store
        .write(move |c| records::settle_conflict(c, id, keep, &actor))
        .await?;
    state.notify_outbox();
    Ok(Json(view))
}
