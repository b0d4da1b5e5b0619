//! `GET /api/v1/conflicts`: the open merge conflicts the token may see.

use axum::extract::State;
use axum::{Extension, Json};
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};

use crate::http::auth::Scope;
use crate::http::error::ApiError;
use crate::http::state::ApiState;
use crate::http::wire::rfc3339;

/// Most conflicts one answer lists (newest first).
pub const CONFLICTS_MAX: i64 = 1_000;

const SQL: &str = "SELECT id, site_id, record_kind, record_id, description, detected_at
         FROM conflicts WHERE resolved_at IS NULL ORDER BY detected_at DESC LIMIT 1000";

// Fields in wire order, alphabetical (see crate::http::wire).
/// One open conflict, as stored and as answered.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Conflict {
    pub description: String,
    pub detected_at: Option<String>,
    pub id: i64,
    pub record_id: String,
    pub record_kind: String,
    pub site_id: String,
}

impl<'r> FromRow<'r, PgRow> for Conflict {
    fn from_row(r: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            description: r.try_get("description")?,
            detected_at: rfc3339(r.try_get("detected_at")?),
            id: r.try_get("id")?,
            record_id: r.try_get("record_id")?,
            record_kind: r.try_get("record_kind")?,
            site_id: r.try_get("site_id")?,
        })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Conflicts {
    pub conflicts: Vec<Conflict>,
}

#[utoipa::path(get, path = "/api/v1/conflicts", summary = "open merge conflicts",
    responses((status = 200, description = "conflicts", body = Conflicts)))]
pub async fn conflicts(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
) -> Result<Json<Conflicts>, ApiError> {
    let mut conflicts: Vec<Conflict> = state.read_all(SQL).await?;
    conflicts.retain(|c| scope.allows_name(&c.site_id));
    debug_assert!(conflicts.len() as i64 <= CONFLICTS_MAX);
    Ok(Json(Conflicts { conflicts }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_limit_is_the_sql_limit() {
        assert!(super::SQL.ends_with(&format!("LIMIT {}", super::CONFLICTS_MAX)));
    }

    #[test]
    fn wire_order() {
        crate::http::wire::assert_wire_order(&super::Conflicts {
            conflicts: vec![super::Conflict {
                description: "d".into(),
                detected_at: None,
                id: 1,
                record_id: "r".into(),
                record_kind: "k".into(),
                site_id: "S".into(),
            }],
        });
    }
}
