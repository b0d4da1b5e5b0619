//! Who is calling: a machine or gateway with an API key, or a person at a terminal with a
//! badge session. [`authenticate`] decides it for every API path but `/health` and the login
//! itself; anything else gets `401`.
//!
//! Sessions live in memory (a restart asks people to scan their badge again, which is what a
//! terminal does at shift change anyway), hold no secret but their random token, and end after
//! [`SESSION_IDLE_MICROS`] without a request. A supervisor's badge and PIN raise a session for
//! [`SUPERVISOR_MICROS`]: corrections and conflict resolutions need that. Wrong PINs are
//! counted per badge in the store, with locks that grow longer (`store::people`); one PIN is
//! checked at a time, so a burst of parallel guesses cannot pass the lock check together.
//! Neither the login nor the PIN check says whether a badge is a supervisor's.
//!
//! The cookie is `HttpOnly; SameSite=Strict`; in addition a cookie-authenticated request that
//! changes anything must carry the header `X-MES-Terminal`, which a cross-site form cannot set.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Value, json};
use shared_model::BadgeId;
use shared_model::master::Role;

use super::json::Obj;
use super::{ApiError, AppState, read_json_body};
use crate::store::{keys, people};

/// Most sessions kept; the least recently used one goes when a new login would pass it.
pub const SESSIONS_MAX: usize = 2_000;
/// A session unused this long has ended (longer than a shift with its breaks).
pub const SESSION_IDLE_MICROS: i64 = 12 * 3600 * 1_000_000;
/// How long a supervisor's PIN keeps a session raised.
pub const SUPERVISOR_MICROS: i64 = 10 * 60 * 1_000_000;
pub use crate::store::people::{PIN_FAILURES_MAX, PIN_LOCKS_MICROS};
/// The cookie that carries the session token.
pub const COOKIE: &str = "mes_session";
/// The header a terminal's changing requests carry (see the module docs).
pub const TERMINAL_HEADER: &str = "x-mes-terminal";

#[derive(Clone, Debug, Serialize)]
pub struct Supervisor {
    pub badge: BadgeId,
    pub name: String,
    /// Microseconds since the epoch.
    #[serde(skip)]
    pub until: i64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Session {
    pub badge: BadgeId,
    pub name: String,
    /// Never shown: a login must not tell whether a badge is a supervisor's.
    #[serde(skip)]
    pub role: Role,
    #[serde(skip)]
    pub last_seen: i64,
    pub supervisor: Option<Supervisor>,
}

impl Session {
    /// The supervisor standing behind this session now, if any.
    pub fn supervisor_at(&self, now: i64) -> Option<&Supervisor> {
        self.supervisor.as_ref().filter(|s| s.until > now)
    }
}

/// Who made a request; put in the request's extensions by [`authenticate`].
#[derive(Clone, Debug)]
pub enum Caller {
    /// A machine, gateway or integration with an API key.
    Machine,
    /// A person at a terminal.
    Terminal { token: Vec<u8>, session: Session },
}

#[derive(Debug, Default)]
pub struct Sessions {
    by_token: Mutex<HashMap<Vec<u8>, Session>>,
    /// Held while a PIN is checked and its failure recorded (see the module docs).
    pin_turn: tokio::sync::Mutex<()>,
}

impl Sessions {
    fn insert(&self, token: Vec<u8>, session: Session) {
        let mut map = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= SESSIONS_MAX
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.last_seen)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(token, session);
    }

    /// The live session of a token, touched; an idle one is removed.
    fn touch(&self, token: &[u8], now: i64) -> Option<Session> {
        let mut map = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.get_mut(token)?;
        if now - s.last_seen > SESSION_IDLE_MICROS {
            map.remove(token);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    fn update(&self, token: &[u8], f: impl FnOnce(&mut Session)) -> Option<Session> {
        let mut map = self.by_token.lock().unwrap_or_else(|p| p.into_inner());
        let s = map.get_mut(token)?;
        f(s);
        Some(s.clone())
    }

    fn remove(&self, token: &[u8]) {
        self.by_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }

    pub fn len(&self) -> usize {
        self.by_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn cookie_token(headers: &HeaderMap) -> Option<Vec<u8>> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| keys::hash(value.trim()))
}

fn api_key(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "log in with your badge, or send an API key (Authorization: Bearer KEY or X-Api-Key: KEY)",
    )
}

/// The middleware in front of every API path except `/health` and the login.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let caller = match api_key(req.headers()) {
        Some(key) => {
            if key.is_empty() || key.len() > 128 {
                return unauthorized().into_response();
            }
            match state.key_is_valid(key.to_owned()).await {
                Ok(true) => Caller::Machine,
                Ok(false) => return unauthorized().into_response(),
                Err(e) => return e.into_response(),
            }
        }
        None => {
            let Some(token) = cookie_token(req.headers()) else {
                return unauthorized().into_response();
            };
            let Some(session) = state.sessions.touch(&token, state.now().as_micros()) else {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "session_ended",
                    "your session has ended: scan your badge again",
                )
                .into_response();
            };
            if req.method() != Method::GET && !req.headers().contains_key(TERMINAL_HEADER) {
                return ApiError::new(
                    StatusCode::FORBIDDEN,
                    "terminal_header_missing",
                    format!("a terminal's request that changes data must carry {TERMINAL_HEADER}"),
                )
                .into_response();
            }
            Caller::Terminal { token, session }
        }
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

fn session_body(s: &Session, state: &AppState) -> Value {
    let now = state.now().as_micros();
    let sup = s.supervisor_at(now);
    json!({
        "badge": s.badge,
        "name": s.name,
        "site_id": state.store.site().as_str(),
        "supervisor": sup.map(|x| json!({
            "badge": x.badge,
            "name": x.name,
            "seconds_left": (x.until - now) / 1_000_000,
        })),
    })
}

fn set_cookie(value: &str, max_age: i64) -> (header::HeaderName, String) {
    (
        header::SET_COOKIE,
        format!("{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}"),
    )
}

fn read_badge(o: &mut Obj<'_>, field: &'static str) -> Result<BadgeId, ApiError> {
    let badge: String = o.req(field)?;
    BadgeId::new(badge.trim()).map_err(|e| ApiError::invalid(field, e.to_string()))
}

/// `POST /api/v1/session {"badge"}`: badge login.
pub async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let value = read_json_body(&headers, body).await?;
    let mut o = Obj::new(&value, "")?;
    let badge = read_badge(&mut o, "badge")?;
    o.finish()?;
    let site = state.store.site().clone();
    let lookup = badge.clone();
    let person = state
        .store
        .read(move |c| people::person(c, &site, &lookup))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unknown_badge",
                format!(
                    "badge {badge} is not registered at {}; ask your supervisor",
                    state.store.site()
                ),
            )
            .with_field("badge")
        })?;
    let token = crate::store::random_hex(32)?;
    let session = Session {
        badge: person.badge,
        name: person.name,
        role: person.role,
        last_seen: state.now().as_micros(),
        supervisor: None,
    };
    let body = session_body(&session, &state);
    state.sessions.insert(keys::hash(&token), session);
    tracing::info!(badge = %body["badge"], "badge login");
    Ok((
        StatusCode::CREATED,
        [set_cookie(&token, SESSION_IDLE_MICROS / 1_000_000)],
        Json(body),
    )
        .into_response())
}

fn terminal(caller: &Caller) -> Result<(&Vec<u8>, &Session), ApiError> {
    match caller {
        Caller::Terminal { token, session } => Ok((token, session)),
        Caller::Machine => Err(ApiError::not_found(
            "an API key has no terminal session; log in with a badge",
        )),
    }
}

/// `GET /api/v1/session`.
pub async fn current(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let (_, session) = terminal(&caller)?;
    Ok(Json(session_body(session, &state)))
}

/// `DELETE /api/v1/session`: log out.
pub async fn logout(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Response, ApiError> {
    let (token, _) = terminal(&caller)?;
    state.sessions.remove(token);
    Ok((StatusCode::NO_CONTENT, [set_cookie("", 0)]).into_response())
}

/// `POST /api/v1/session/supervisor {"badge", "pin"}`: a supervisor vouches for this session.
pub async fn raise(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let (token, _) = terminal(&caller)?;
    let value = read_json_body(&headers, body).await?;
    let mut o = Obj::new(&value, "")?;
    let badge = read_badge(&mut o, "badge")?;
    let pin: String = o.req("pin")?;
    o.finish()?;
    let now = state.now().as_micros();
    let wrong = |message: String| {
        ApiError::new(StatusCode::UNAUTHORIZED, "wrong_pin", message).with_field("pin")
    };
    let site = state.store.site().clone();
    let b = badge.clone();
    // A badge this site does not know is answered at once, counted nowhere: that a badge is
    // not in the personnel is no secret (the badge login says so), and a flood of made-up
    // badges must cost neither PBKDF2 runs nor rows.
    let Some(person) = state
        .store
        .read(move |c| people::person(c, &site, &b))
        .await?
    else {
        return Err(wrong("badge or PIN wrong".into()));
    };
    let turn = state.sessions.pin_turn.lock().await;
    let b = badge.clone();
    let (locked, ok, had_failures) = state
        .store
        .read(move |c| {
            if let Some(left) = people::pin_locked_for(c, &b, now)? {
                return Ok((Some(left), false, true));
            }
            // Runs PBKDF2 whether or not the badge has a PIN (see `people`).
            let ok = people::verify_pin(c, &b, &pin)?;
            Ok((None, ok, people::has_pin_failures(c, &b)?))
        })
        .await?;
    if let Some(left) = locked {
        let secs = (left + 999_999) / 1_000_000;
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "pin_locked",
            format!("too many wrong PINs for {badge}: try again in {secs} s"),
        )
        .retry_after(secs.max(1) as u64));
    }
    if !(ok && person.role == Role::Supervisor) {
        let b = badge.clone();
        let failure = state
            .store
            .write(move |c| people::record_pin_failure(c, &b, now))
            .await?;
        tracing::warn!(badge = %badge, ?failure, "wrong supervisor PIN");
        return Err(match failure {
            people::PinFailure::TriesLeft(left) => {
                wrong(format!("badge or PIN wrong ({left} tries left)"))
            }
            people::PinFailure::Locked(micros) => wrong(format!(
                "badge or PIN wrong; {badge} is now locked for {} min",
                micros / 60_000_000
            )),
        });
    }
    if had_failures {
        let b = badge.clone();
        state
            .store
            .write(move |c| people::clear_pin_failures(c, &b))
            .await?;
    }
    drop(turn);
    let supervisor = person;
    let session = state
        .sessions
        .update(token, |s| {
            s.supervisor = Some(Supervisor {
                badge: supervisor.badge.clone(),
                name: supervisor.name.clone(),
                until: now + SUPERVISOR_MICROS,
            });
        })
        .ok_or_else(unauthorized)?;
    tracing::info!(supervisor = %supervisor.badge, operator = %session.badge, "supervisor PIN accepted");
    Ok(Json(session_body(&session, &state)))
}

/// `DELETE /api/v1/session/supervisor`: the supervisor steps away.
pub async fn lower(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let (token, _) = terminal(&caller)?;
    let session = state
        .sessions
        .update(token, |s| s.supervisor = None)
        .ok_or_else(unauthorized)?;
    Ok(Json(session_body(&session, &state)))
}

/// For handlers that need a supervisor: machines (API keys) pass; a terminal needs a
/// supervisor's PIN in force. Returns the supervisor's badge for a terminal.
pub fn require_supervisor(caller: &Caller, now: i64) -> Result<Option<BadgeId>, ApiError> {
    match caller {
        Caller::Machine => Ok(None),
        Caller::Terminal { session, .. } => match session.supervisor_at(now) {
            Some(s) => Ok(Some(s.badge.clone())),
            None => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "supervisor_required",
                "this needs a supervisor: tap Supervisor and enter badge and PIN",
            )),
        },
    }
}
