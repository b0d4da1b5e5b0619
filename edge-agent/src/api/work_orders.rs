//! Work orders: create, list, get, and the state actions of the operator terminal.

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use shared_model::work_order::{WorkOrder, WorkOrderAction, WorkOrderState};
use shared_model::{EquipmentId, WorkOrderId};

use super::error::ApiError;
use super::json::Obj;
use super::{AppState, read_json_body};
use crate::records::{self, WorkOrderView};
use crate::store::{StoreError, idempotency};

/// Most orders one list request returns.
pub const LIST_LIMIT_MAX: usize = 500;

pub async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<WorkOrderView>), ApiError> {
    let value = read_json_body(&headers, body).await?;
    let mut o = Obj::new(&value, "")?;
    let site = state.store.site().clone();
    let id: WorkOrderId = match o.opt::<WorkOrderId>("id")? {
        // Work-order ids are global: the hub accepts a site's orders only in its key space.
        Some(id) if !id.as_str().starts_with(&format!("{site}-")) => {
            return Err(ApiError::invalid(
                "id",
                format!("must start with {site}- (work-order ids are global across sites)"),
            ));
        }
        Some(id) => id,
        None => {
            let n = uuid::Uuid::now_v7().simple().to_string();
            WorkOrderId::new(format!("{site}-WO-{}", &n[..16]))
                .map_err(|e| ApiError::invalid("id", e.to_string()))?
        }
    };
    let order = WorkOrder {
        id,
        site_id: site,
        erp_ref: o.opt("erp_ref")?,
        material: o.req("material")?,
        routing_version: o.opt("routing_version")?.unwrap_or(1),
        planned_quantity: o.req("planned_quantity")?,
        due: o.opt("due")?,
        priority: o.opt("priority")?.unwrap_or(5),
        state: WorkOrderState::AllowedToStart,
        actual_start: None,
        actual_end: None,
        operations: Vec::new(),
        notes: o.opt("notes")?.unwrap_or_default(),
        good_count: 0,
        scrap_count: 0,
    };
    let work_unit: Option<EquipmentId> = o.opt("work_unit")?;
    o.finish()?;
    order
        .validate()
        .map_err(|e| ApiError::invalid(e.field, e.problem.to_string()))?;
    let view = WorkOrderView { order, work_unit };
    let actor = state.store.actor().clone();
    let stored = state
        .store
        .write(move |c| records::create(c, &view, &actor))
        .await?;
    state.notify_outbox();
    Ok((StatusCode::CREATED, Json(stored)))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    work_unit: Option<String>,
    limit: Option<usize>,
}

pub async fn list(
    State(state): State<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let status = q
        .status
        .map(|s| {
            WorkOrderState::parse(&s).ok_or_else(|| {
                ApiError::invalid(
                    "status",
                    format!(
                        "unknown status {s:?}; known: {}",
                        WorkOrderState::ALL.map(|s| s.as_str()).join(", ")
                    ),
                )
            })
        })
        .transpose()?;
    let limit = q.limit.unwrap_or(100).clamp(1, LIST_LIMIT_MAX);
    let work_unit = q.work_unit;
    let orders = state
        .store
        .read(move |c| records::list(c, status, work_unit.as_deref(), limit))
        .await?;
    Ok(Json(json!({ "work_orders": orders })))
}

pub async fn get_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<WorkOrderView>, ApiError> {
    state
        .store
        .work_order(&id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(format!("work order {id} not found")))
}

pub async fn act(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let action = match action.as_str() {
        "start" => WorkOrderAction::Start,
        "pause" => WorkOrderAction::Pause,
        "resume" => WorkOrderAction::Resume,
        "complete" => WorkOrderAction::Complete,
        other => {
            return Err(ApiError::not_found(format!(
                "no action {other:?}; actions are start, pause, resume, complete"
            )));
        }
    };
    let id = WorkOrderId::new(id.clone())
        .map_err(|_| ApiError::not_found(format!("work order {id} not found")))?;
    // The body is optional; `start` may name the work unit.
    let declared_empty = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .is_some_and(|v| v == "0");
    let work_unit: Option<EquipmentId> = if declared_empty {
        None
    } else {
        match read_json_body(&headers, body).await {
            Ok(v) => {
                let mut o = Obj::new(&v, "")?;
                let w = o.opt("work_unit")?;
                o.finish()?;
                w
            }
            Err(e) if e.code == "malformed_json" && e.message.contains("empty") => None,
            Err(e) => return Err(e),
        }
    };
    // A repeated tap with the same key gets the first answer instead of a 409 for an order
    // that already moved on. Keys are namespaced, so an events key cannot answer here.
    let key = super::events::idempotency_key(&headers)?
        .map(|k| format!("work-order:{id}:{}:{k}", action.as_str()));
    let now = state.now();
    let actor = state.store.actor().clone();
    let response = state
        .store
        .write(move |c| {
            if let Some(k) = &key
                && let Some(previous) = idempotency::lookup(c, k)?
            {
                return Ok((previous, None));
            }
            let view = records::transition(c, &id, action, work_unit, now, &actor)?;
            let json = serde_json::to_string(&view)
                .map_err(|e| StoreError::Corrupt(format!("cannot encode work order: {e}")))?;
            if let Some(k) = &key {
                idempotency::remember(c, k, &json, now.as_micros())?;
            }
            Ok((json, Some(view)))
        })
        .await?;
    let (response, view) = response;
    state.notify_outbox();
    // The machine hears of the order it now runs (a replayed answer sent it already).
    if action == WorkOrderAction::Start
        && let Some(v) = view
        && let Some(unit) = &v.work_unit
    {
        state
            .connectors
            .order_started(crate::connectors::OrderStart {
                equipment: unit.clone(),
                order_id: v.order.id.clone(),
                material: v.order.material.clone(),
                planned_quantity: v.order.planned_quantity,
                at: now,
            });
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        response,
    )
        .into_response())
}
