//! The local HTTP API. Requests land here: [`router`] maps every path to its handler module
//! (`events`, `work_orders`) or to the small handlers below (health, metrics, sync status).

pub mod connectors;
pub mod error;
pub mod events;
mod json;
pub mod session;
pub mod terminal;
pub mod ui;
pub mod work_orders;

use std::collections::HashMap;
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

pub use crate::clock::{Clock, SystemClock};

use crate::store::{Store, keys};

/// How long a key seen valid is trusted without reading the store again: `edge-agent api-key
/// revoke` takes effect in a running agent within this time.
pub const KEY_RECHECK_MICROS: i64 = 2_000_000;
/// Most valid keys remembered (they are few; the bound is for safety).
const KEYS_CACHED_MAX: usize = 1_000;

/// Largest request body.
pub const BODY_BYTES_MAX: usize = 1 << 20;
/// Largest too-large body still read to its end before the 413 (see [`read_json_body`]).
pub const BODY_DRAIN_BYTES_MAX: usize = 4 << 20;

#[derive(Clone, Debug)]
pub struct AppState {
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    /// Hashes of keys seen valid, with when (clock microseconds): trusted for
    /// [`KEY_RECHECK_MICROS`], then read again, since the CLI may have created or revoked a
    /// key while the agent runs.
    known_keys: Arc<Mutex<HashMap<Vec<u8>, i64>>>,
    /// Woken when the outbox grows, for the sync client.
    pub outbox_notify: Arc<Notify>,
    pub connected: Arc<std::sync::atomic::AtomicBool>,
    /// Badge sessions of the terminals.
    pub sessions: Arc<session::Sessions>,
    /// Whether a hub is configured at all (a standalone edge shows no "offline" alarm).
    pub hub_configured: bool,
    /// The certificate the sync client presents (after a renewal, the new one).
    pub certificate: Arc<std::sync::RwLock<Option<crate::identity::CertInfo>>>,
    /// Certificates renewed by this process.
    pub certificate_renewals: Arc<std::sync::atomic::AtomicU64>,
    /// The machine connectors (none until the server starts them).
    pub connectors: Arc<crate::connectors::ConnectorSet>,
}

impl AppState {
    pub fn new(store: Store, clock: Arc<dyn Clock>) -> Self {
        Self {
            connectors: crate::connectors::ConnectorSet::new(store.clone(), clock.clone(), None),
            store,
            clock,
            known_keys: Arc::default(),
            outbox_notify: Arc::default(),
            connected: Arc::default(),
            sessions: Arc::default(),
            hub_configured: false,
            certificate: Arc::default(),
            certificate_renewals: Arc::default(),
        }
    }

    /// The certificate the sync client presents, if it syncs.
    pub fn certificate(&self) -> Option<crate::identity::CertInfo> {
        self.certificate
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether an API key is one the CLI created and nobody revoked (a valid one is trusted
    /// for [`KEY_RECHECK_MICROS`]).
    pub async fn key_is_valid(&self, key: String) -> Result<bool, ApiError> {
        let hash = keys::hash(&key);
        let now = self.now().as_micros();
        // A clock that went back makes the entry stale rather than trusted for longer.
        let fresh = |at: i64| (0..KEY_RECHECK_MICROS).contains(&(now - at));
        if self
            .known_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&hash)
            .is_some_and(|at| fresh(*at))
        {
            return Ok(true);
        }
        let valid = self.store.read(move |c| keys::exists(c, &key)).await?;
        let mut known = self.known_keys.lock().unwrap_or_else(|p| p.into_inner());
        if valid {
            if known.len() >= KEYS_CACHED_MAX && !known.contains_key(&hash) {
                known.retain(|_, at| fresh(*at));
                if known.len() >= KEYS_CACHED_MAX {
                    known.clear();
                }
            }
            known.insert(hash, now);
        } else {
            known.remove(&hash);
        }
        Ok(valid)
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

/// Every API route with its metrics label (the route pattern).
const ROUTES: &[&str] = &[
    "/health",
    "/metrics",
    "/api/v1/session",
    "/api/v1/session/supervisor",
    "/api/v1/sync/status",
    "/api/v1/conflicts",
    "/api/v1/conflicts/{id}/resolve",
    "/api/v1/connectors",
    "/api/v1/connectors/reload",
    "/api/v1/events",
    "/api/v1/terminal",
    "/api/v1/master-data/{kind}",
    "/api/v1/work-orders",
    "/api/v1/work-orders/{id}",
    "/api/v1/work-orders/{id}/{action}",
];

pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route("/metrics", get(metrics))
        .route(
            "/api/v1/session",
            get(session::current).delete(session::logout),
        )
        .route(
            "/api/v1/session/supervisor",
            post(session::raise).delete(session::lower),
        )
        .route("/api/v1/sync/status", get(sync_status))
        .route("/api/v1/conflicts", get(conflicts))
        .route("/api/v1/conflicts/{id}/resolve", post(terminal::resolve))
        .route("/api/v1/connectors", get(connectors::list))
        .route("/api/v1/connectors/reload", post(connectors::reload))
        .route(
            "/api/v1/events",
            get(terminal::recent_events).post(events::post_events),
        )
        .route("/api/v1/terminal", get(terminal::snapshot))
        .route("/api/v1/master-data/{kind}", get(terminal::master_data))
        .route(
            "/api/v1/work-orders",
            get(work_orders::list).post(work_orders::create),
        )
        .route("/api/v1/work-orders/{id}", get(work_orders::get_one))
        .route("/api/v1/work-orders/{id}/{action}", post(work_orders::act))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            session::authenticate,
        ));
    // Open: the health check, the badge login, and the terminal's page and assets.
    let open = Router::new()
        .route("/health", get(health))
        .route("/api/v1/session", post(session::login));
    Router::new()
        .merge(open)
        .merge(api)
        .merge(ui::router())
        .fallback(|| async { ApiError::not_found("no such path") })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    let route = matched
        .and_then(|m| ROUTES.iter().find(|r| **r == m))
        .copied()
        .unwrap_or(if matched.is_some() { "ui" } else { "other" });
    let started = Instant::now();
    let response = next.run(req).await;
    state.store.metrics().record_request(
        route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
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
    if let Some(n) = declared.filter(|n| *n > BODY_BYTES_MAX as u64) {
        // A body a little too large is read and dropped, so the client sending it gets the
        // 413 instead of a reset connection; a far larger one is refused unread.
        if n <= BODY_DRAIN_BYTES_MAX as u64
            && axum::body::to_bytes(body, BODY_DRAIN_BYTES_MAX)
                .await
                .is_ok()
        {
            return Err(ApiError {
                close_connection: false,
                ..too_large()
            });
        }
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
    let scraped = crate::metrics::Scraped {
        pending_events: p.events,
        pending_changes: p.changes,
        terminal_sessions: state.sessions.len(),
        certificate_expiry_seconds: state
            .certificate()
            .map(|cert| cert.not_after - state.now().as_micros().div_euclid(1_000_000)),
        certificate_renewals: state
            .certificate_renewals
            .load(std::sync::atomic::Ordering::Relaxed),
    };
    Ok((
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state
            .store
            .metrics()
            .render(scraped, &connector_figures(&state)),
    )
        .into_response())
}

fn connector_figures(state: &AppState) -> Vec<crate::metrics::ConnectorFigures> {
    state
        .connectors
        .snapshots()
        .into_iter()
        .map(|s| crate::metrics::ConnectorFigures {
            up: s.link == crate::connectors::Link::Up,
            messages: s.messages,
            events: s.events,
            rejected: s.rejected,
            dropped: s.dropped,
            reconnects: s.reconnects,
            lag_seconds: s.lag_seconds,
            name: s.name,
        })
        .collect()
}

async fn sync_status(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let p = state.store.pending().await?;
    let last = state.store.meta("last_sync_at").await?;
    // The last heal of the hub (after its database went back in time): shown as stored; a
    // record that does not parse is shown as absent rather than failing the status.
    let heal: Option<crate::sync_store::HealRecord> = state
        .store
        .meta(crate::sync_store::LAST_HEAL)
        .await?
        .and_then(|j| serde_json::from_str(&j).ok());
    Ok(Json(json!({
        "site_id": state.store.site().as_str(),
        "connected": state.connected.load(std::sync::atomic::Ordering::Relaxed),
        "pending_events": p.events,
        "pending_changes": p.changes,
        "last_sync_at": last,
        "last_heal": heal,
        "certificate": state.certificate().map(|c| json!({
            "serial": c.serial,
            "not_after": shared_model::Timestamp::from_micros(c.not_after.saturating_mul(1_000_000)),
            "renew_at": shared_model::Timestamp::from_micros(c.renew_at().saturating_mul(1_000_000)),
        })),
    })))
}

/// Business conflicts found after merges (e.g. HQ cancelled what the site completed).
async fn conflicts(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let list = state.store.read(crate::records::open_conflicts).await?;
    Ok(Json(json!({ "conflicts": list })))
}
