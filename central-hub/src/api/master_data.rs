//! `PUT /api/v1/master-data/{kind}`: an HQ-wide writer uploads master data of one kind (a JSON
//! array of records); the hub stores it and sends it down to every live site.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::Value;
use shared_model::SiteId;
use shared_model::master::{
    Equipment, InspectionPlan, MasterKind, MasterRecord, Material, Personnel, ReasonCode,
    RoutingStep, ShiftCalendar,
};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};

use crate::http::auth::Scope;
use crate::http::error::ApiError;
use crate::http::state::ApiState;

// Fields in wire order, alphabetical (see crate::http::wire).
/// What an upload stored.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Uploaded {
    #[schema(value_type = String)]
    pub kind: &'static str,
    /// Sites it is sent down to.
    pub sites: usize,
    pub stored: usize,
    /// The version given to each record, in upload order.
    pub versions: Vec<u64>,
}

/// A live site, as the upload sends to it.
struct LiveSite(Option<SiteId>);

impl<'r> FromRow<'r, PgRow> for LiveSite {
    fn from_row(r: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self(SiteId::new(r.try_get::<String, _>(0)?).ok()))
    }
}

/// One record of `kind` from its JSON.
fn parse_record(kind: MasterKind, item: Value) -> Result<MasterRecord, serde_json::Error> {
    Ok(match kind {
        MasterKind::Material => MasterRecord::Material(serde_json::from_value::<Material>(item)?),
        MasterKind::RoutingStep => {
            MasterRecord::RoutingStep(serde_json::from_value::<RoutingStep>(item)?)
        }
        MasterKind::ReasonCode => {
            MasterRecord::ReasonCode(serde_json::from_value::<ReasonCode>(item)?)
        }
        MasterKind::Equipment => {
            MasterRecord::Equipment(serde_json::from_value::<Equipment>(item)?)
        }
        MasterKind::ShiftCalendar => {
            MasterRecord::ShiftCalendar(serde_json::from_value::<ShiftCalendar>(item)?)
        }
        MasterKind::Personnel => {
            MasterRecord::Personnel(serde_json::from_value::<Personnel>(item)?)
        }
        MasterKind::InspectionPlan => {
            MasterRecord::InspectionPlan(serde_json::from_value::<InspectionPlan>(item)?)
        }
    })
}

/// Uploads master data of one kind and sends it down to the sites.
#[utoipa::path(put, path = "/api/v1/master-data/{kind}",
    summary = "upload master data of one kind (hq:write, HQ-wide token)",
    params(("kind" = String, Path, description = "materials, routings, reason-codes, equipment, shift-calendars, personnel, inspection-plans")),
    request_body(content = Vec<Object>, description = "the records of that kind"),
    responses((status = 200, description = "stored and sent down", body = Uploaded)))]
pub async fn put_master_data(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
    Path(kind): Path<String>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Uploaded>, ApiError> {
    if !scope.write || scope.site.is_some() {
        return Err(ApiError::forbidden());
    }
    let kind = crate::db::master::kind_from_path(&kind).ok_or_else(|| {
        ApiError::not_found(format!(
            "no master-data kind {kind:?}; kinds are materials, routings, reason-codes, equipment, shift-calendars"
        ))
    })?;
    let Json(value) = body.map_err(|e| ApiError::invalid_body(&e))?;
    let Value::Array(items) = value else {
        return Err(ApiError::invalid("body", "must be a JSON array of records"));
    };
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
    for (i, item) in items.into_iter().enumerate() {
        let invalid = |e: &dyn std::fmt::Display| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_field",
                format!("record {i}: {e}"),
            )
        };
        let record = parse_record(kind, item).map_err(|e| invalid(&e))?;
        record.validate().map_err(|e| invalid(&e))?;
        records.push(record);
    }
    let sites: Vec<SiteId> = state
        .read_all::<LiveSite>("SELECT site_id FROM sites WHERE revoked_at IS NULL ORDER BY site_id")
        .await?
        .into_iter()
        .filter_map(|s| s.0)
        .collect();
    let versions = crate::db::master::publish(&state.pool, &sites, &records)
        .await
        .map_err(ApiError::internal)?;
    debug_assert_eq!(versions.len(), records.len(), "one version per record");
    Ok(Json(Uploaded {
        kind: kind.as_str(),
        sites: sites.len(),
        stored: records.len(),
        versions,
    }))
}
