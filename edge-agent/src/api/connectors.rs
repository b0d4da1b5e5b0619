//! `GET /api/v1/connectors` (each connector's link, last value, errors, counts and recent
//! notices) and `POST /api/v1/connectors/reload` (read the config file again; a bad file is
//! refused with its lines and the running connectors keep going).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::session::Caller;
use super::{ApiError, AppState};
use crate::connectors::{self, ReloadError};

/// Notices listed per connector.
const NOTICES_LISTED: usize = 20;

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let snapshots = state.connectors.snapshots();
    let names: Vec<String> = snapshots.iter().map(|s| s.name.clone()).collect();
    let notices = state
        .store
        .read(move |conn| {
            names
                .iter()
                .map(|n| {
                    Ok((
                        connectors::store::notices(conn, n, NOTICES_LISTED)?,
                        connectors::store::writes(conn, n)?,
                    ))
                })
                .collect::<Result<Vec<_>, crate::store::StoreError>>()
        })
        .await?;
    let list: Vec<Value> = snapshots
        .into_iter()
        .zip(notices)
        .map(|(s, (n, writes))| {
            let mut v = serde_json::to_value(&s).unwrap_or(Value::Null);
            // The stored outcomes outlive a restart; the snapshot's are this process's.
            v["writes"] = serde_json::to_value(writes).unwrap_or(Value::Null);
            v["notices"] = n
                .into_iter()
                .map(|(tag, at, message)| json!({"tag": tag, "at": at, "message": message}))
                .collect();
            v
        })
        .collect();
    Ok(Json(json!({ "connectors": list })))
}

pub async fn reload(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    // The plant's wiring is the integrator's business, not a terminal's.
    if !matches!(caller, Caller::Machine) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "reloading connectors needs an API key",
        ));
    }
    match state.connectors.reload().await {
        Ok(r) => Ok(Json(json!({ "reloaded": r }))),
        Err(ReloadError::Invalid { path, errors }) => {
            let mut e = ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_config",
                format!(
                    "{path} was not applied; the running connectors are unchanged: {}",
                    errors
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
            );
            e.details = Some(json!(
                errors
                    .iter()
                    .map(|e| json!({"line": e.line, "message": e.message}))
                    .collect::<Vec<_>>()
            ));
            Err(e)
        }
        Err(ReloadError::NoFile) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_config_file",
            ReloadError::NoFile.to_string(),
        )),
        Err(e @ ReloadError::Read { .. }) => Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "config_unreadable",
            e.to_string(),
        )),
        Err(ReloadError::Store(e)) => Err(e.into()),
    }
}
