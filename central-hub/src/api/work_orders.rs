//! Work orders from HQ: the list with due dates and an at-risk flag
//! (`GET /api/v1/work-orders`), releases (`POST /api/v1/sites/{site}/work-orders`) and edits or
//! cancellations (`PATCH /api/v1/work-orders/{id}`). A release or an edit is one Automerge
//! change on the hub's copy of the order, sent down on the site's down log.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT, ScalarValue};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use shared_model::work_order::{WorkOrder, WorkOrderAction, WorkOrderState};
use shared_model::{MaterialId, SiteId, Timestamp, WorkOrderId};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};
use sync_protocol::message::{DownItem, RecordChange, RecordId};
use sync_protocol::records::{WorkOrderView, read_view, write_all};

use crate::http::auth::Scope;
use crate::http::cached::micro_cached;
use crate::http::error::ApiError;
use crate::http::state::ApiState;
use crate::http::wire::rfc3339;
use crate::ingest::load_record;

/// Most work orders one list returns.
pub const WORK_ORDER_LIST_MAX: i64 = 1_000;
/// Orders one list returns unless `limit` says otherwise.
pub const WORK_ORDER_LIST_DEFAULT: i64 = 100;

// Fields in wire order, alphabetical (see crate::http::wire).
/// One work order in the list.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkOrderRow {
    /// Open, due within 24 hours and short of its planned quantity.
    pub at_risk: bool,
    pub due: Option<String>,
    pub good: i64,
    pub id: String,
    pub material: String,
    pub planned_quantity: i64,
    pub priority: i32,
    pub remaining: i64,
    pub scrap: i64,
    pub site: String,
    pub state: String,
}

impl<'r> FromRow<'r, PgRow> for WorkOrderRow {
    fn from_row(r: &'r PgRow) -> Result<Self, sqlx::Error> {
        let planned: i64 = r.try_get("planned_quantity")?;
        let good: i64 = r.try_get("good_count")?;
        Ok(Self {
            at_risk: r.try_get("at_risk")?,
            due: rfc3339(r.try_get("due")?),
            good,
            id: r.try_get("id")?,
            material: r.try_get("material")?,
            planned_quantity: planned,
            priority: r.try_get("priority")?,
            remaining: (planned - good).max(0),
            scrap: r.try_get("scrap_count")?,
            site: r.try_get("site_id")?,
            state: r.try_get("state")?,
        })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WorkOrderList {
    pub work_orders: Vec<WorkOrderRow>,
}

/// A checked list request.
#[derive(Debug, PartialEq)]
struct ListQuery {
    sites: Vec<String>,
    open_only: bool,
    limit: i64,
}

fn parse_list_query(scope: &Scope, raw: Option<&str>) -> Result<ListQuery, ApiError> {
    let mut q = ListQuery {
        sites: Vec::new(),
        open_only: true,
        limit: WORK_ORDER_LIST_DEFAULT,
    };
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*k {
            "site" => {
                for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let id = SiteId::new(s)
                        .map_err(|e| ApiError::bad_request("site", format!("{s:?}: {e}")))?;
                    if !scope.allows(&id) {
                        return Err(ApiError::forbidden());
                    }
                    q.sites.push(id.as_str().to_owned());
                }
            }
            "state" => {
                q.open_only = match &*v {
                    "open" => true,
                    "all" => false,
                    other => {
                        return Err(ApiError::bad_request(
                            "state",
                            format!("{other:?}: use open or all"),
                        ));
                    }
                }
            }
            "limit" => {
                q.limit = v
                    .parse::<i64>()
                    .ok()
                    .filter(|l| (1..=WORK_ORDER_LIST_MAX).contains(l))
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "limit",
                            format!("limit must be 1..={WORK_ORDER_LIST_MAX}"),
                        )
                    })?;
            }
            other => {
                return Err(ApiError::bad_request(
                    "query",
                    format!("unknown parameter {other:?}"),
                ));
            }
        }
    }
    if let Some(own) = &scope.site
        && q.sites.is_empty()
    {
        q.sites.push(own.as_str().to_owned());
    }
    Ok(q)
}

/// `$4` is [`open_states`]: an order is at risk only while open.
const LIST_SQL: &str =
    "SELECT site_id, id, state, material, planned_quantity, good_count, scrap_count, due, priority,
                state = ANY($4)
                  AND due IS NOT NULL AND planned_quantity > good_count
                  AND due < now() + interval '24 hours' AS at_risk
         FROM work_orders
         WHERE (cardinality($1::text[]) = 0 OR site_id = ANY($1))
           AND (NOT $2 OR state = ANY($4))
         ORDER BY at_risk DESC, due NULLS LAST, priority, id
         LIMIT $3";

/// The stored names of the states an order is open in (neither ended nor aborted), from the
/// state machine rather than spelled out in SQL.
fn open_states() -> Vec<&'static str> {
    WorkOrderState::ALL
        .iter()
        .filter(|s| !s.is_terminal())
        .map(|s| s.as_str())
        .collect()
}

#[utoipa::path(get, path = "/api/v1/work-orders",
    summary = "work orders with due dates and an at-risk flag",
    params(("site" = Option<Vec<String>>, Query, description = "repeatable or comma-separated"),
           ("state" = Option<String>, Query, description = "open (default) or all"),
           ("limit" = Option<i64>, Query, description = "1 to 1000, default 100")),
    responses((status = 200, description = "work orders", body = WorkOrderList)))]
/// `GET /api/v1/work-orders`: open orders (or all) with their due dates and an at-risk flag.
pub async fn list_work_orders(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let key = format!(
        "api-work-orders|{:?}|{}",
        scope.site,
        raw.as_deref().unwrap_or("")
    );
    micro_cached(&state.reports, &key, async {
        let q = parse_list_query(&scope, raw.as_deref())?;
        let pool = state.read_pool("cross-site reads")?;
        let mut tx = crate::db::begin(pool, crate::db::PoolRole::Read)
            .await
            .map_err(ApiError::internal)?;
        if let Some(own) = &scope.site {
            crate::http::context::scope_to_site(&mut tx, own)
                .await
                .map_err(ApiError::internal)?;
        }
        let work_orders = crate::db::query_as::<WorkOrderRow>(LIST_SQL)
            .bind(&q.sites)
            .bind(q.open_only)
            .bind(q.limit)
            .bind(open_states())
            .fetch_all(&mut *tx)
            .await
            .map_err(ApiError::internal)?;
        // Nothing was written: a failed commit of this read-only transaction loses nothing,
        // but it says the connection broke under us, so it is an error like any other.
        tx.commit().await.map_err(ApiError::internal)?;
        debug_assert!(work_orders.len() as i64 <= q.limit);
        Ok(WorkOrderList { work_orders })
    })
    .await
}

/// The body of a release.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Release {
    id: Option<String>,
    material: String,
    planned_quantity: u32,
    due: Option<String>,
    priority: Option<u8>,
    erp_ref: Option<String>,
    notes: Option<String>,
    routing_version: Option<u32>,
}

fn parse_due(due: Option<&str>) -> Result<Option<Timestamp>, ApiError> {
    due.map(|d| Timestamp::parse_rfc3339(d).map_err(|e| ApiError::invalid("due", e.to_string())))
        .transpose()
}

async fn publish_change(
    state: &ApiState,
    site: &SiteId,
    record: RecordId,
    doc: &mut AutoCommit,
) -> Result<(), ApiError> {
    doc.commit();
    let bytes = doc
        .get_last_local_change()
        .ok_or_else(|| ApiError::internal("automerge produced no change"))?
        .raw_bytes()
        .to_vec();
    let change = RecordChange::new(record, bytes).map_err(ApiError::internal)?;
    state
        .store
        .publish(site, &DownItem::RecordChange(change))
        .await
        .map_err(ApiError::internal)?;
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/sites/{site}/work-orders",
    summary = "release a work order to a site (hq:write)",
    params(("site" = String, Path, description = "site id")),
    request_body = Release,
    responses((status = 201, description = "released: the work order as the site will see it", body = Object)))]
/// `POST /api/v1/sites/{site}/work-orders`: releases a new work order to a site, an Automerge
/// document in state `allowed_to_start`.
pub async fn release(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(site): Path<String>,
    body: Result<Json<Release>, JsonRejection>,
) -> Result<(StatusCode, Json<WorkOrderView>), ApiError> {
    let site = SiteId::new(site).map_err(|e| ApiError::not_found(e.to_string()))?;
    scope.require_write(&site)?;
    let Json(r) = body.map_err(|e| ApiError::invalid_body(&e))?;
    let id = match r.id {
        Some(id) => id,
        None => format!(
            "{site}-WO-{}",
            &uuid::Uuid::now_v7().simple().to_string()[..16]
        ),
    };
    if !id.starts_with(&format!("{site}-")) {
        return Err(ApiError::invalid("id", format!("must start with {site}-")));
    }
    let order = WorkOrder {
        id: WorkOrderId::new(id).map_err(|e| ApiError::invalid("id", e.to_string()))?,
        site_id: site.clone(),
        erp_ref: r.erp_ref,
        material: MaterialId::new(r.material)
            .map_err(|e| ApiError::invalid("material", e.to_string()))?,
        routing_version: r.routing_version.unwrap_or(1),
        planned_quantity: r.planned_quantity,
        due: parse_due(r.due.as_deref())?,
        priority: r.priority.unwrap_or(5),
        state: WorkOrderState::AllowedToStart,
        actual_start: None,
        actual_end: None,
        operations: Vec::new(),
        notes: r.notes.unwrap_or_default(),
        good_count: 0,
        scrap_count: 0,
    };
    order.validate().map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            e.to_string(),
        )
    })?;
    let record = RecordId::work_order(&order.id);
    if load_record(&state.pool, &site, &record)
        .await
        .map_err(ApiError::internal)?
        .is_some()
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("work order {} already exists", order.id),
        ));
    }
    let view = WorkOrderView {
        order,
        work_unit: None,
    };
    let mut doc = AutoCommit::new();
    write_all(&mut doc, &view).map_err(ApiError::internal)?;
    publish_change(&state, &site, record, &mut doc).await?;
    Ok((StatusCode::CREATED, Json(view)))
}

/// The body of an edit.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    planned_quantity: Option<u32>,
    due: Option<String>,
    priority: Option<u8>,
    notes: Option<String>,
    /// `true` cancels the order (ISA-95 Aborted).
    cancel: Option<bool>,
}

#[utoipa::path(patch, path = "/api/v1/work-orders/{id}",
    summary = "HQ edit or cancel of a work order (hq:write)",
    params(("id" = String, Path, description = "work order id")),
    request_body = Edit,
    responses((status = 200, description = "edited: the work order as the site will see it", body = Object)))]
/// `PATCH /api/v1/work-orders/{id}`: HQ re-plans, re-prioritises or cancels an order.
pub async fn edit(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    body: Result<Json<Edit>, JsonRejection>,
) -> Result<Json<WorkOrderView>, ApiError> {
    let not_found = || ApiError::not_found(format!("work order {id} not found"));
    let wo = WorkOrderId::new(id.clone()).map_err(|_| not_found())?;
    let site = id
        .split_once('-')
        .and_then(|(s, _)| SiteId::new(s).ok())
        .ok_or_else(not_found)?;
    scope.require_write(&site)?;
    let Json(e) = body.map_err(|e| ApiError::invalid_body(&e))?;
    let record = RecordId::work_order(&wo);
    let bytes = load_record(&state.pool, &site, &record)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(not_found)?;
    let mut doc = AutoCommit::load(&bytes).map_err(ApiError::internal)?;
    let current = read_view(&doc).map_err(ApiError::internal)?;
    let am = |r: Result<(), automerge::AutomergeError>| r.map_err(ApiError::internal);
    if let Some(q) = e.planned_quantity {
        if q == 0 || q > shared_model::work_order::PLANNED_QUANTITY_MAX {
            return Err(ApiError::invalid(
                "planned_quantity",
                "must be 1 to 10,000,000",
            ));
        }
        am(doc.put(ROOT, "planned_quantity", u64::from(q)))?;
    }
    if let Some(due) = parse_due(e.due.as_deref())? {
        am(doc.put(ROOT, "due", due.as_micros()))?;
    }
    if let Some(p) = e.priority {
        if p > shared_model::work_order::PRIORITY_MAX {
            return Err(ApiError::invalid("priority", "must be 0 to 9"));
        }
        am(doc.put(ROOT, "priority", u64::from(p)))?;
    }
    if let Some(n) = e.notes {
        am(doc.put(ROOT, "notes", n))?;
    }
    if e.cancel == Some(true) {
        let next = current
            .order
            .state
            .apply(WorkOrderAction::Abort)
            .map_err(|t| {
                ApiError::new(StatusCode::CONFLICT, "illegal_transition", t.to_string())
            })?;
        am(doc.put(ROOT, "state", next.as_str()))?;
        let now = crate::http::state::now();
        am(doc.put(ROOT, "actual_end", ScalarValue::Int(now.as_micros())))?;
    }
    publish_change(&state, &site, record, &mut doc).await?;
    Ok(Json(read_view(&doc).map_err(ApiError::internal)?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn wire_order() {
        crate::http::wire::assert_wire_order(&WorkOrderList {
            work_orders: vec![WorkOrderRow {
                at_risk: true,
                due: None,
                good: 1,
                id: "S-WO-1".into(),
                material: "M".into(),
                planned_quantity: 2,
                priority: 5,
                remaining: 1,
                scrap: 0,
                site: "S".into(),
                state: "running".into(),
            }],
        });
    }

    #[test]
    fn list_queries() {
        let hq = Scope {
            write: false,
            site: None,
        };
        let own = Scope {
            write: false,
            site: Some(SiteId::new("SITE_A").unwrap()),
        };
        let q = parse_list_query(&hq, Some("site=SITE_A,SITE_B&state=all&limit=5")).unwrap();
        assert_eq!(
            q,
            ListQuery {
                sites: vec!["SITE_A".into(), "SITE_B".into()],
                open_only: false,
                limit: 5
            }
        );
        assert_eq!(parse_list_query(&own, None).unwrap().sites, vec!["SITE_A"]);
        for (scope, raw, status) in [
            (&own, "site=SITE_B", StatusCode::FORBIDDEN),
            (&hq, "limit=0", StatusCode::BAD_REQUEST),
            (&hq, "limit=1001", StatusCode::BAD_REQUEST),
            (&hq, "state=closed", StatusCode::BAD_REQUEST),
            (&hq, "colour=red", StatusCode::BAD_REQUEST),
        ] {
            assert_eq!(
                parse_list_query(scope, Some(raw)).unwrap_err().status(),
                status,
                "{raw}"
            );
        }
    }
}
