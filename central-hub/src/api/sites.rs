//! `GET /api/v1/sites`: every site the token may see with its sync status (connected, last
//! seen, down backlog, the edge's reported backlog and lag).

use axum::Extension;
use axum::extract::State;
use axum::response::Response;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};

use crate::http::auth::Scope;
use crate::http::cached::micro_cached;
use crate::http::error::ApiError;
use crate::http::state::ApiState;
use crate::http::wire::rfc3339;

const SQL: &str = "SELECT s.site_id, s.name, s.region, s.timezone, s.connected, s.last_seen_at,
                s.agent_version, s.down_acked, s.revoked_at IS NOT NULL AS revoked,
                coalesce((SELECT max(d.cursor) FROM down_log d WHERE d.site_id = s.site_id), 0) AS down_head,
                s.edge_pending_events, s.edge_pending_changes,
                extract(epoch FROM now() - s.edge_oldest_pending_at)::float8 AS lag_seconds,
                s.edge_status_at,
                s.heal_generation, s.heal_resent, s.heal_unrecoverable_events,
                s.heal_unrecoverable, s.heal_search_bytes, s.healed_at,
                s.last_event_at
         FROM sites s ORDER BY s.site_id";

// Fields in wire order, alphabetical (see crate::http::wire).
/// One site and its sync status.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Site {
    pub agent_version: Option<String>,
    /// What the edge last reported as not yet sent up.
    pub backlog_changes: Option<i64>,
    pub backlog_events: Option<i64>,
    pub connected: bool,
    /// Down-log entries the site has not acknowledged yet.
    pub down_backlog: i64,
    /// The site's last heal after the hub's database went back in time (a restore or a
    /// failover); none while it never had to.
    pub heal: Option<SiteHeal>,
    pub lag_seconds: f64,
    pub last_event_at: Option<String>,
    pub last_seen_at: Option<String>,
    pub name: String,
    pub region: String,
    pub revoked: bool,
    pub site_id: String,
    pub status_reported_at: Option<String>,
    pub timezone: String,
}

/// What a site's edge found the hub's database had lost, and what it could not give back.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SiteHeal {
    /// The database generation the edge healed against (`hub_generations.number`).
    pub generation: i32,
    pub healed_at: Option<String>,
    /// Events the hub lacked that the edge sent again.
    pub resent: i64,
    /// Bytes the search for the gap took (summaries and id lists, both ways).
    pub search_bytes: i64,
    /// Spans of recording time (to the hour) whose events the hub lacks and the edge no
    /// longer holds, with how many: lost for good.
    #[schema(value_type = Vec<Object>)]
    pub unrecoverable: serde_json::Value,
    pub unrecoverable_events: i64,
}

impl<'r> FromRow<'r, PgRow> for Site {
    fn from_row(r: &'r PgRow) -> Result<Self, sqlx::Error> {
        let head: i64 = r.try_get("down_head")?;
        let acked: i64 = r.try_get("down_acked")?;
        Ok(Self {
            agent_version: r.try_get("agent_version")?,
            backlog_changes: r.try_get("edge_pending_changes")?,
            backlog_events: r.try_get("edge_pending_events")?,
            connected: r.try_get("connected")?,
            down_backlog: (head - acked).max(0),
            heal: match r.try_get::<Option<i32>, _>("heal_generation")? {
                None => None,
                Some(generation) => Some(SiteHeal {
                    generation,
                    healed_at: rfc3339(r.try_get("healed_at")?),
                    resent: r.try_get::<Option<i64>, _>("heal_resent")?.unwrap_or(0),
                    search_bytes: r
                        .try_get::<Option<i64>, _>("heal_search_bytes")?
                        .unwrap_or(0),
                    unrecoverable: r
                        .try_get::<Option<serde_json::Value>, _>("heal_unrecoverable")?
                        .unwrap_or(serde_json::Value::Array(Vec::new())),
                    unrecoverable_events: r
                        .try_get::<Option<i64>, _>("heal_unrecoverable_events")?
                        .unwrap_or(0),
                }),
            },
            lag_seconds: r
                .try_get::<Option<f64>, _>("lag_seconds")?
                .unwrap_or(0.0)
                .max(0.0),
            last_event_at: rfc3339(r.try_get("last_event_at")?),
            last_seen_at: rfc3339(r.try_get("last_seen_at")?),
            name: r.try_get("name")?,
            region: r.try_get("region")?,
            revoked: r.try_get("revoked")?,
            site_id: r.try_get("site_id")?,
            status_reported_at: rfc3339(r.try_get("edge_status_at")?),
            timezone: r.try_get("timezone")?,
        })
    }
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Sites {
    pub sites: Vec<Site>,
}

#[utoipa::path(get, path = "/api/v1/sites",
    summary = "sites with per-site sync status (connected, last seen, backlog, lag)",
    responses((status = 200, description = "sites", body = Sites)))]
/// `GET /api/v1/sites`, answered from a one-second micro-cache: a wall of dashboards must not
/// turn into a query per request, and sync status a second old is still news.
pub async fn sites(
    State(state): State<ApiState>,
    Extension(scope): Extension<Scope>,
) -> Result<Response, ApiError> {
    let key = format!("api-sites|{:?}", scope.site);
    micro_cached(&state.reports, &key, async {
        let mut sites: Vec<Site> = state.read_all(SQL).await?;
        sites.retain(|s| scope.allows_name(&s.site_id));
        Ok(Sites { sites })
    })
    .await
}

#[cfg(test)]
mod tests {
    #[test]
    fn wire_order() {
        crate::http::wire::assert_wire_order(&super::Sites {
            sites: vec![super::Site {
                agent_version: None,
                backlog_changes: None,
                backlog_events: Some(1),
                connected: true,
                down_backlog: 0,
                heal: Some(super::SiteHeal {
                    generation: 2,
                    healed_at: None,
                    resent: 1,
                    search_bytes: 10,
                    unrecoverable: serde_json::json!([]),
                    unrecoverable_events: 0,
                }),
                lag_seconds: 0.0,
                last_event_at: None,
                last_seen_at: None,
                name: "n".into(),
                region: "r".into(),
                revoked: false,
                site_id: "S".into(),
                status_reported_at: None,
                timezone: "UTC".into(),
            }],
        });
    }
}
