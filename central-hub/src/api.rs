//! The hub's HQ API: sites with their sync status, work-order releases and edits, conflicts.
//!
//! Every `/api/v1` request needs a bearer token (`central-hub api-token create`) with a scope:
//! `hq:read` or `hq:write`, HQ-wide or for one site. Writes go through the site-scoped store
//! (row-level security as the hub role); cross-site reads use the reporting connection
//! (`--read-database-url`, role `mes_reporting`), never the sync path.

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT, ScalarValue};
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use shared_model::work_order::{WorkOrder, WorkOrderAction, WorkOrderState};
use shared_model::{MaterialId, SiteId, Timestamp, WorkOrderId};
use sqlx::{PgPool, Row};
use sync_protocol::message::{DownItem, RecordChange, RecordId};
use sync_protocol::records::{WorkOrderView, read_view, write_all};

use std::sync::Arc;
use std::time::Duration;

use crate::db::store::{PgHubStore, load_record};
use crate::reports::ReportCtx;
use crate::reports::cache::Admit;

/// Largest request body of the HQ API.
pub const BODY_BYTES_MAX: usize = 256 * 1024;

#[derive(Clone, Debug)]
pub struct ApiState {
    pub pool: PgPool,
    pub read_pool: Option<PgPool>,
    pub store: PgHubStore,
    pub reports: Arc<ReportCtx>,
    /// Bearer tokens: lookups on the read side, unknown ones remembered, failures limited
    /// per client address (`crate::auth`).
    pub auth: Arc<crate::auth::Auth>,
}

pub use crate::auth::{TOKEN_CACHE_TTL, create_token, list_tokens, revoke_tokens, token_hash};

/// What a token may do.
#[derive(Clone, Debug)]
pub struct Scope {
    pub write: bool,
    pub site: Option<SiteId>,
}

impl Scope {
    pub(crate) fn allows(&self, site: &SiteId) -> bool {
        self.site.as_ref().is_none_or(|s| s == site)
    }
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    field: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            ..Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message)
        }
    }

    /// A bad query parameter: `400` naming it.
    pub(crate) fn bad_request(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field: Some(field),
            ..Self::new(StatusCode::BAD_REQUEST, "bad_parameter", message)
        }
    }

    pub(crate) fn internal(e: impl std::fmt::Display) -> Self {
        tracing::error!(error = %e, "HQ API failure");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }

    pub(crate) fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token's scope does not allow this",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(f) = self.field {
            error["field"] = json!(f);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}

async fn require_token(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    use crate::auth::Denied;
    let peer = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let (scope, hash) = match state.auth.authenticate(req.headers(), peer).await {
        Ok(known) => known,
        Err(Denied::Missing) => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a bearer token is required (central-hub api-token create)",
            )
            .into_response();
        }
        Err(Denied::Unknown) => {
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "unknown or revoked token",
            )
            .into_response();
        }
        Err(Denied::TooMany(retry)) => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"error": {
                    "code": "too_many_failures",
                    "message": format!(
                        "more than {} failed authentications from this address in {} s; retry after {retry} s",
                        crate::auth::FAILURES_PER_ADDRESS_MAX,
                        crate::auth::FAILURE_WINDOW.as_secs()
                    ),
                    "retry_after_seconds": retry,
                }})),
            )
                .into_response();
            if let Ok(v) = header::HeaderValue::from_str(&retry.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            return r;
        }
        Err(Denied::Unavailable(e)) => return ApiError::internal(e).into_response(),
    };
    let token_id: String = hash.iter().take(12).map(|b| format!("{b:02x}")).collect();
    if let Admit::No(retry) = state.reports.shared.admit(&token_id).await {
        let mut r = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "more than {} requests per second with this token; retry after {retry} s",
                state.reports.shared.rate_per_second
            ),
        )
        .into_response();
        if let Ok(v) = header::HeaderValue::from_str(&retry.to_string()) {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return r;
    }
    req.extensions_mut().insert(scope);
    next.run(req).await
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/sites", get(sites))
        .route("/api/v1/sites/{site}/work-orders", post(release))
        .route("/api/v1/work-orders/{id}", patch(edit))
        .route("/api/v1/conflicts", get(conflicts))
        .route("/api/v1/work-orders", get(list_work_orders))
        .route(
            "/api/v1/reports/genealogy/{lot}",
            get(crate::reports::genealogy),
        )
        .route("/api/v1/reports/{report}", get(crate::reports::report))
        .route(
            "/api/v1/master-data/{kind}",
            axum::routing::put(put_master_data),
        )
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .route("/api/v1/openapi.json", get(crate::reports::openapi))
        .with_state(state)
}

/// Most work orders one list returns.
pub const WORK_ORDER_LIST_MAX: i64 = 1_000;

/// `GET /api/v1/work-orders`: open orders (or all) with their due dates and an at-risk flag.
async fn list_work_orders(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
    axum::extract::RawQuery(raw): axum::extract::RawQuery,
) -> Result<axum::response::Response, ApiError> {
    let key = format!(
        "api-work-orders|{:?}|{}",
        scope.site,
        raw.as_deref().unwrap_or("")
    );
    crate::reports::micro_cached(&state.reports, &key, MICRO_CACHE_AGE, async {
        work_orders_uncached(&state, &scope, raw.as_deref()).await
    })
    .await
}

async fn work_orders_uncached(
    state: &ApiState,
    scope: &Scope,
    raw: Option<&str>,
) -> Result<Value, ApiError> {
    let mut sites: Vec<String> = Vec::new();
    let mut open_only = true;
    let mut limit: i64 = 100;
    for (k, v) in form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
        match &*k {
            "site" => {
                for s in v.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let id = SiteId::new(s)
                        .map_err(|e| ApiError::bad_request("site", format!("{s:?}: {e}")))?;
                    if !scope.allows(&id) {
                        return Err(ApiError::forbidden());
                    }
                    sites.push(id.as_str().to_owned());
                }
            }
            "state" => {
                open_only = match &*v {
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
                limit = v
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
        && sites.is_empty()
    {
        sites.push(own.as_str().to_owned());
    }
    let pool = read_pool(state)?;
    let mut tx = pool.begin().await.map_err(ApiError::internal)?;
    if let Some(own) = &scope.site {
        crate::reports::scope_to_site(&mut tx, own)
            .await
            .map_err(ApiError::internal)?;
    }
    let rows = crate::db::query(
        "SELECT site_id, id, state, material, planned_quantity, good_count, scrap_count, due, priority,
                state NOT IN ('ended', 'aborted')
                  AND due IS NOT NULL AND planned_quantity > good_count
                  AND due < now() + interval '24 hours' AS at_risk
         FROM work_orders
         WHERE (cardinality($1::text[]) = 0 OR site_id = ANY($1))
           AND (NOT $2 OR state IN ('not_allowed_to_start', 'allowed_to_start', 'running', 'interrupted'))
         ORDER BY at_risk DESC, due NULLS LAST, priority, id
         LIMIT $3",
    )
    .bind(&sites)
    .bind(open_only)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
    .map_err(ApiError::internal)?;
    let _ = tx.commit().await;
    let orders: Vec<Value> = rows
        .iter()
        .map(|r| {
            let planned: i64 = r.get("planned_quantity");
            let good: i64 = r.get("good_count");
            json!({
                "id": r.get::<String, _>("id"),
                "site": r.get::<String, _>("site_id"),
                "state": r.get::<String, _>("state"),
                "material": r.get::<String, _>("material"),
                "planned_quantity": planned,
                "good": good,
                "scrap": r.get::<i64, _>("scrap_count"),
                "remaining": (planned - good).max(0),
                "due": ts_json(r.get("due")),
                "priority": r.get::<i32, _>("priority"),
                "at_risk": r.get::<bool, _>("at_risk"),
            })
        })
        .collect();
    Ok(json!({ "work_orders": orders }))
}

/// Runs a read on the reporting connection inside a transaction: behind PgBouncer an
/// unnamed statement is parsed and executed on one server connection only within one.
async fn read_rows(
    state: &ApiState,
    q: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
) -> Result<Vec<sqlx::postgres::PgRow>, ApiError> {
    crate::db::fetch_all_in_tx(read_pool(state)?, crate::db::PoolRole::Read, q)
        .await
        .map_err(ApiError::internal)
}

fn read_pool(state: &ApiState) -> Result<&PgPool, ApiError> {
    state.read_pool.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "cross-site reads need --read-database-url (role mes_reporting)",
        )
    })
}

fn ts_json(t: Option<time::OffsetDateTime>) -> Value {
    t.and_then(|t| {
        t.format(&time::format_description::well_known::Rfc3339)
            .ok()
    })
    .map_or(Value::Null, Value::String)
}

/// `GET /api/v1/sites`, answered from a one-second micro-cache: a wall of dashboards must not
/// turn into a query per request, and sync status a second old is still news.
async fn sites(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
) -> Result<axum::response::Response, ApiError> {
    let key = format!("api-sites|{:?}", scope.site);
    crate::reports::micro_cached(&state.reports, &key, MICRO_CACHE_AGE, async {
        sites_uncached(&state, &scope).await
    })
    .await
}

/// How old a micro-cached answer (`/sites`, `/work-orders`) may be.
pub const MICRO_CACHE_AGE: Duration = Duration::from_secs(1);

async fn sites_uncached(state: &ApiState, scope: &Scope) -> Result<Value, ApiError> {
    let rows = read_rows(
        state,
        crate::db::query(
        "SELECT s.site_id, s.name, s.region, s.timezone, s.connected, s.last_seen_at,
                s.agent_version, s.down_acked, s.revoked_at IS NOT NULL AS revoked,
                coalesce((SELECT max(d.cursor) FROM down_log d WHERE d.site_id = s.site_id), 0) AS down_head,
                s.edge_pending_events, s.edge_pending_changes,
                extract(epoch FROM now() - s.edge_oldest_pending_at)::float8 AS lag_seconds,
                s.edge_status_at,
                s.last_event_at
         FROM sites s ORDER BY s.site_id",
    ),
    )
    .await?;
    let sites: Vec<Value> = rows
        .iter()
        .filter(|r| {
            SiteId::new(r.get::<String, _>("site_id"))
                .map(|s| scope.allows(&s))
                .unwrap_or(false)
        })
        .map(|r| {
            let head: i64 = r.get("down_head");
            let acked: i64 = r.get("down_acked");
            json!({
                "site_id": r.get::<String, _>("site_id"),
                "name": r.get::<String, _>("name"),
                "region": r.get::<String, _>("region"),
                "timezone": r.get::<String, _>("timezone"),
                "revoked": r.get::<bool, _>("revoked"),
                "connected": r.get::<bool, _>("connected"),
                "last_seen_at": ts_json(r.get("last_seen_at")),
                "last_event_at": ts_json(r.get("last_event_at")),
                "agent_version": r.get::<Option<String>, _>("agent_version"),
                "down_backlog": (head - acked).max(0),
                "backlog_events": r.get::<Option<i64>, _>("edge_pending_events"),
                "backlog_changes": r.get::<Option<i64>, _>("edge_pending_changes"),
                "lag_seconds": r.get::<Option<f64>, _>("lag_seconds").unwrap_or(0.0).max(0.0),
                "status_reported_at": ts_json(r.get("edge_status_at")),
            })
        })
        .collect();
    Ok(json!({ "sites": sites }))
}

#[derive(Debug, Deserialize)]
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

/// Releases a new work order to a site: an Automerge document in state `allowed_to_start`,
/// sent down on the site's down log.
async fn release(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(site): Path<String>,
    body: Result<Json<Release>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<WorkOrderView>), ApiError> {
    let site = SiteId::new(site)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string()))?;
    if !scope.write || !scope.allows(&site) {
        return Err(ApiError::forbidden());
    }
    let Json(r) = body.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.body_text(),
        )
    })?;
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Edit {
    planned_quantity: Option<u32>,
    due: Option<String>,
    priority: Option<u8>,
    notes: Option<String>,
    /// `true` cancels the order (ISA-95 Aborted).
    cancel: Option<bool>,
}

/// HQ edits an order: re-plan, re-prioritise, or cancel. The edit is one Automerge change on
/// the hub's copy, merged and sent down like a release.
async fn edit(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(id): Path<String>,
    body: Result<Json<Edit>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<WorkOrderView>, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("work order {id} not found"),
        )
    };
    let wo = WorkOrderId::new(id.clone()).map_err(|_| not_found())?;
    let site = id
        .split_once('-')
        .and_then(|(s, _)| SiteId::new(s).ok())
        .ok_or_else(not_found)?;
    if !scope.write || !scope.allows(&site) {
        return Err(ApiError::forbidden());
    }
    let Json(e) = body.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.body_text(),
        )
    })?;
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
        let now = Timestamp::from_micros(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0),
        );
        am(doc.put(ROOT, "actual_end", ScalarValue::Int(now.as_micros())))?;
    }
    publish_change(&state, &site, record, &mut doc).await?;
    Ok(Json(read_view(&doc).map_err(ApiError::internal)?))
}

async fn conflicts(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
) -> Result<Json<Value>, ApiError> {
    let rows = read_rows(
        &state,
        crate::db::query(
            "SELECT id, site_id, record_kind, record_id, description, detected_at
         FROM conflicts WHERE resolved_at IS NULL ORDER BY detected_at DESC LIMIT 1000",
        ),
    )
    .await?;
    let list: Vec<Value> = rows
        .iter()
        .filter(|r| {
            SiteId::new(r.get::<String, _>("site_id"))
                .map(|s| scope.allows(&s))
                .unwrap_or(false)
        })
        .map(|r| {
            json!({
                "id": r.get::<i64, _>("id"),
                "site_id": r.get::<String, _>("site_id"),
                "record_kind": r.get::<String, _>("record_kind"),
                "record_id": r.get::<String, _>("record_id"),
                "description": r.get::<String, _>("description"),
                "detected_at": ts_json(r.get("detected_at")),
            })
        })
        .collect();
    Ok(Json(json!({ "conflicts": list })))
}

/// Uploads master data of one kind (a JSON array of records) and sends it down to the sites.
async fn put_master_data(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(kind): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    use shared_model::master::{
        Equipment, InspectionPlan, MasterKind, MasterRecord, Material, Personnel, ReasonCode,
        RoutingStep, ShiftCalendar,
    };
    if !scope.write || scope.site.is_some() {
        return Err(ApiError::forbidden());
    }
    let kind = crate::db::master::kind_from_path(&kind).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no master-data kind {kind:?}; kinds are materials, routings, reason-codes, equipment, shift-calendars"),
        )
    })?;
    let Json(value) = body.map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.body_text(),
        )
    })?;
    let items = value
        .as_array()
        .ok_or_else(|| ApiError::invalid("body", "must be a JSON array of records"))?;
    if items.len() > crate::db::master::RECORDS_PER_UPLOAD_MAX {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_records",
            format!(
                "at most {} records per upload",
                crate::db::master::RECORDS_PER_UPLOAD_MAX
            ),
        ));
    }
    let mut records = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let parsed = match kind {
            MasterKind::Material => {
                serde_json::from_value::<Material>(item.clone()).map(MasterRecord::Material)
            }
            MasterKind::RoutingStep => {
                serde_json::from_value::<RoutingStep>(item.clone()).map(MasterRecord::RoutingStep)
            }
            MasterKind::ReasonCode => {
                serde_json::from_value::<ReasonCode>(item.clone()).map(MasterRecord::ReasonCode)
            }
            MasterKind::Equipment => {
                serde_json::from_value::<Equipment>(item.clone()).map(MasterRecord::Equipment)
            }
            MasterKind::ShiftCalendar => serde_json::from_value::<ShiftCalendar>(item.clone())
                .map(MasterRecord::ShiftCalendar),
            MasterKind::Personnel => {
                serde_json::from_value::<Personnel>(item.clone()).map(MasterRecord::Personnel)
            }
            MasterKind::InspectionPlan => serde_json::from_value::<InspectionPlan>(item.clone())
                .map(MasterRecord::InspectionPlan),
        };
        let record = parsed.map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("record {i}: {e}"),
            )
        })?;
        record.validate().map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("record {i}: {e}"),
            )
        })?;
        records.push(record);
    }
    let sites: Vec<SiteId> = read_rows(
        &state,
        crate::db::query("SELECT site_id FROM sites WHERE revoked_at IS NULL ORDER BY site_id"),
    )
    .await?
    .iter()
    .filter_map(|r| SiteId::new(r.get::<String, _>(0)).ok())
    .collect();
    let versions = crate::db::master::publish(&state.pool, &sites, &records)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "kind": kind.as_str(),
        "stored": records.len(),
        "sites": sites.len(),
        "versions": versions,
    })))
}
