//! `POST /api/v1/events`: facts from machines, gateways and the terminal.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use shared_model::event::{
    Correction, EquipmentStateChange, MaterialMovement, OperatorClock, ProductionCount,
    QualitySample, Replacement,
};
use shared_model::{Event, EventBody, EventId, EventKind, Timestamp};

use super::error::ApiError;
use super::json::Obj;
use super::session::{Caller, require_supervisor};
use super::{AppState, read_json_body};
use crate::store::{EventsOutcome, insert_events};

/// Most events in one request; bigger batches belong in several requests.
pub const EVENTS_PER_REQUEST_MAX: usize = 1_000;
/// Longest idempotency key.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 128;

/// Reads the type-specific fields of an event object.
fn body(o: &mut Obj<'_>, kind: EventKind) -> Result<EventBody, ApiError> {
    Ok(match kind {
        EventKind::ProductionCount => EventBody::ProductionCount(ProductionCount {
            equipment: o.req("equipment")?,
            work_order: o.opt("work_order")?,
            good: o.opt("good")?.unwrap_or(0),
            scrap: o.opt("scrap")?.unwrap_or(0),
            rework: o.opt("rework")?.unwrap_or(0),
            scrap_reason: o.opt("scrap_reason")?,
        }),
        EventKind::EquipmentState => EventBody::EquipmentState(EquipmentStateChange {
            equipment: o.req("equipment")?,
            state: o.req("state")?,
            reason: o.opt("reason")?,
        }),
        EventKind::OperatorClock => EventBody::OperatorClock(OperatorClock {
            badge: o.req("badge")?,
            action: o.req("action")?,
            equipment: o.opt("equipment")?,
        }),
        EventKind::QualitySample => {
            let characteristic = o.req("characteristic")?;
            let value: f64 = o.req("value")?;
            let lower_limit: Option<f64> = o.opt("lower_limit")?;
            let upper_limit: Option<f64> = o.opt("upper_limit")?;
            // Without an explicit verdict, the limits decide; without limits, it passes.
            let computed =
                lower_limit.is_none_or(|l| value >= l) && upper_limit.is_none_or(|u| value <= u);
            EventBody::QualitySample(QualitySample {
                equipment: o.opt("equipment")?,
                work_order: o.opt("work_order")?,
                lot: o.opt("lot")?,
                characteristic,
                value,
                lower_limit,
                upper_limit,
                pass: o.opt("pass")?.unwrap_or(computed),
            })
        }
        EventKind::MaterialConsumed | EventKind::MaterialProduced => {
            let m = MaterialMovement {
                lot: o.req("lot")?,
                material: o.req("material")?,
                quantity: o.req("quantity")?,
                work_order: o.opt("work_order")?,
                equipment: o.opt("equipment")?,
            };
            if kind == EventKind::MaterialConsumed {
                EventBody::MaterialConsumed(m)
            } else {
                EventBody::MaterialProduced(m)
            }
        }
        EventKind::Correction => {
            let corrects = o.req("corrects")?;
            let replacement = match o.raw("replacement") {
                None => None,
                Some(v) => {
                    let path = o.path("replacement");
                    let mut r = Obj::new(v, &path)?;
                    let kind = event_kind(&mut r)?;
                    let b = body(&mut r, kind)?;
                    r.finish()?;
                    Some(match b {
                        EventBody::ProductionCount(x) => Replacement::ProductionCount(x),
                        EventBody::EquipmentState(x) => Replacement::EquipmentState(x),
                        EventBody::QualitySample(x) => Replacement::QualitySample(x),
                        EventBody::MaterialConsumed(x) => Replacement::MaterialConsumed(x),
                        EventBody::MaterialProduced(x) => Replacement::MaterialProduced(x),
                        EventBody::OperatorClock(x) => Replacement::OperatorClock(x),
                        EventBody::Correction(_) => {
                            return Err(ApiError::invalid(
                                format!("{path}.type"),
                                "a correction cannot be replaced by a correction",
                            ));
                        }
                    })
                }
            };
            EventBody::Correction(Correction {
                corrects,
                replacement,
                note: o.opt("note")?.unwrap_or_default(),
            })
        }
    })
}

fn event_kind(o: &mut Obj<'_>) -> Result<EventKind, ApiError> {
    let t: String = o.req("type")?;
    named_event_kind(&t).map_err(|m| {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown_type", m)
            .with_field(o.path("type"))
    })
}

/// An event type by its API name; the error names every known type.
pub(super) fn named_event_kind(t: &str) -> Result<EventKind, String> {
    EventKind::parse(t).ok_or_else(|| {
        format!(
            "unknown event type {t:?}; known: {}",
            EventKind::ALL.map(EventKind::as_str).join(", ")
        )
    })
}

/// Reads and validates one event object at `path` ("" for a single-event body).
fn parse_event(state: &AppState, v: &Value, path: &str, now: Timestamp) -> Result<Event, ApiError> {
    let mut o = Obj::new(v, path)?;
    let kind = event_kind(&mut o)?;
    let body = body(&mut o, kind)?;
    let event_id: Option<EventId> = o.opt("event_id")?;
    let occurred_at: Option<Timestamp> = o.opt("occurred_at")?;
    let operator = o.opt("operator")?;
    o.finish()?;
    let event = Event {
        event_id: event_id.unwrap_or_else(|| state.new_event_id()),
        site_id: state.store.site().clone(),
        occurred_at: occurred_at.unwrap_or(now),
        recorded_at: now,
        operator,
        body,
    };
    event.validate(now).map_err(|e| {
        let field = e.field.strip_prefix("body.").unwrap_or(&e.field).to_owned();
        let field = if path.is_empty() {
            field
        } else {
            format!("{path}.{field}")
        };
        ApiError::invalid(field, e.problem.to_string())
    })?;
    Ok(event)
}

/// The request's `Idempotency-Key`, checked.
pub fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|k| !k.is_empty() && k.len() <= IDEMPOTENCY_KEY_BYTES_MAX)
            .map(|k| Some(k.to_owned()))
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_header",
                    format!(
                        "Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_BYTES_MAX} visible ASCII characters"
                    ),
                )
            }),
    }
}

pub async fn post_events(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let idempotency_key = idempotency_key(&headers)?;
    let value = read_json_body(&headers, body).await?;
    let now = state.now();
    // One event, or {"events": [...]}; field paths follow the shape the sender used.
    let (events, batched) = match value.get("events") {
        Some(list) if value.get("type").is_none() => {
            let items = list
                .as_array()
                .ok_or_else(|| ApiError::invalid("events", "must be an array"))?;
            if items.len() > EVENTS_PER_REQUEST_MAX {
                return Err(ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_many_events",
                    format!(
                        "{} events in one request, at most {EVENTS_PER_REQUEST_MAX}",
                        items.len()
                    ),
                ));
            }
            if items.is_empty() {
                return Err(ApiError::invalid("events", "must hold at least one event"));
            }
            if let Some(extra) = value
                .as_object()
                .and_then(|m| m.keys().find(|k| k.as_str() != "events"))
            {
                return Err(ApiError::invalid(extra.clone(), "is not a known field"));
            }
            let events = items
                .iter()
                .enumerate()
                .map(|(i, v)| parse_event(&state, v, &format!("events[{i}]"), now))
                .collect::<Result<Vec<_>, _>>()?;
            (events, true)
        }
        _ => (vec![parse_event(&state, &value, "", now)?], false),
    };
    // At a terminal the logged-in person is the operator, whatever the body says, and a
    // correction is the supervisor's.
    let mut events = events;
    if let Caller::Terminal { session, .. } = &caller {
        let now_micros = now.as_micros();
        for e in &mut events {
            let badge = if e.kind() == EventKind::Correction {
                require_supervisor(&caller, now_micros)?.unwrap_or_else(|| session.badge.clone())
            } else {
                session.badge.clone()
            };
            e.operator = Some(badge);
        }
    }
    let count = events.len();
    let outcome = state
        .store
        .write(move |conn| {
            insert_events(
                conn,
                &events,
                idempotency_key.as_deref(),
                now.as_micros(),
                |ids| response_body(ids).to_string(),
            )
        })
        .await
        .map_err(|e| {
            ApiError::from_store(e, |i, f| {
                if batched {
                    format!("events[{i}].{f}")
                } else {
                    f.to_owned()
                }
            })
        })?;
    match outcome {
        EventsOutcome::Stored { ids, new } => {
            state.store.metrics().events_stored.add(new as u64);
            tracing::debug!(count, new, "events stored");
            state.notify_outbox();
            Ok((StatusCode::CREATED, axum::Json(response_body(&ids))).into_response())
        }
        EventsOutcome::Replayed(body) => Ok((
            StatusCode::CREATED,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()),
    }
}

fn response_body(ids: &[EventId]) -> Value {
    json!({ "event_ids": ids.iter().map(|i| i.to_string()).collect::<Vec<_>>() })
}
