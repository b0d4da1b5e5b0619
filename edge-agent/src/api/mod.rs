//! The local HTTP API. Requests land here: [`router`] maps every path to its handler module
//! (`events`, `work_orders`) or to the small handlers below (health, metrics, sync status).

pub mod error;
pub mod events;
mod json;
pub mod work_orders;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use shared_model::{EventId, Timestamp};
use tokio::sync::Notify;

pub use error::ApiError;

use crate::store::{Store, keys};

/// Largest request body.
pub const BODY_BYTES_MAX: usize = 1 << 20;

/// Where the agent gets the time; a test or simulator can substitute its own.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> Timestamp;
}

#[derive(Debug)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        Timestamp::from_micros(micros)
    }
}

#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    /// Hashes of keys already seen valid; a miss asks the database, since the CLI may have
    /// created a key while the agent runs.
    known_keys: Arc<Mutex<HashSet<Vec<u8>>>>,
    /// Woken when the outbox grows, for the sync client.
    pub outbox_notify: Arc<Notify>,
    pub connected: Arc<std::sync::atomic::AtomicBool>,
}

impl AppState {
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            known_keys: Arc::default(),
            outbox_notify: Arc::default(),
            connected: Arc::default(),
        }
    }

    pub fn now(&self) -> Timestamp {
        self.clock.now()
    }

    pub fn new_event_id(&self) -> EventId {
        // uuid's v7 generator keeps ids monotonic within a process even within a millisecond.
        EventId::new(uuid::Uuid::now_v7())
            .unwrap_or_else(|_| EventId::from_parts(self.now().as_millis().max(0) as u64, [0; 10]))
    }

    /// Wakes the sync client. `notify_one` stores a permit when nobody waits, so a write
    /// between two waits is not missed.
    pub fn notify_outbox(&self) {
        self.outbox_notify.notify_one();
    }
}

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/sync/status", get(sync_status))
        .route("/api/v1/conflicts", get(conflicts))
        .route("/api/v1/events", post(events::post_events))
        .route(
            "/api/v1/work-orders",
            get(work_orders::list).post(work_orders::create),
        )
        .route("/api/v1/work-orders/{id}", get(work_orders::get_one))
        .route("/api/v1/work-orders/{id}/{action}", post(work_orders::act))
        .layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .route("/health", get(health))
        .merge(api)
        .fallback(|| async { ApiError::not_found("no such path") })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = match req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str)
    {
        Some("/health") => "/health",
        Some("/metrics") => "/metrics",
        Some("/api/v1/sync/status") => "/api/v1/sync/status",
        Some("/api/v1/conflicts") => "/api/v1/conflicts",
        Some("/api/v1/events") => "/api/v1/events",
        Some("/api/v1/work-orders") => "/api/v1/work-orders",
        Some("/api/v1/work-orders/{id}") => "/api/v1/work-orders/{id}",
        Some("/api/v1/work-orders/{id}/{action}") => "/api/v1/work-orders/{id}/{action}",
        _ => "other",
    };
    let started = Instant::now();
    let response = next.run(req).await;
    state.store.metrics().record_request(
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn require_key(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let key = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| req.headers().get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .map(str::to_owned);
    let Some(key) = key.filter(|k| !k.is_empty() && k.len() <= 128) else {
        return ApiError::unauthorized().into_response();
    };
    let hash = keys::hash(&key);
    let cached = state
        .known_keys
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&hash);
    if !cached {
        match state.store.read(move |c| keys::exists(c, &key)).await {
            Ok(true) => {
                state
                    .known_keys
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(hash);
            }
            Ok(false) => return ApiError::unauthorized().into_response(),
            Err(e) => return ApiError::from(e).into_response(),
        }
    }
    next.run(req).await
}

/// Reads a JSON body: `413` over [`BODY_BYTES_MAX`], `415` for another content type, `400`
/// for anything that is not JSON.
pub(crate) async fn read_json_body(
    headers: &HeaderMap,
    body: axum::body::Body,
) -> Result<Value, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("");
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !essence.eq_ignore_ascii_case("application/json") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("the body must be application/json, not {ct:?}"),
            )
            .closing());
        }
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is over the {BODY_BYTES_MAX} bytes accepted"),
        )
        .closing()
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > BODY_BYTES_MAX as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, BODY_BYTES_MAX)
        .await
        .map_err(|_| too_large())?;
    if bytes.is_empty() {
        return Err(ApiError::malformed(
            "the body is empty; a JSON object is expected",
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| ApiError::malformed(format!("not valid JSON: {e}")))
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let p = state.store.pending().await?;
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.store.metrics().render(p.events, p.changes),
    )
        .into_response())
}

async fn sync_status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let p = state.store.pending().await?;
    let last = state.store.meta("last_sync_at").await?;
    Ok(Json(json!({
        "site_id": state.store.site().as_str(),
        "connected": state.connected.load(std::sync::atomic::Ordering::Relaxed),
        "pending_events": p.events,
        "pending_changes": p.changes,
        "last_sync_at": last,
    })))
}

/// Business conflicts found after merges (e.g. HQ cancelled what the site completed).
async fn conflicts(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let list = state.store.read(crate::records::open_conflicts).await?;
    Ok(Json(json!({ "conflicts": list })))
}
