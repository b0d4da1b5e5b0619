//! The HQ API's axum router, on top of the handlers (`crate::api`, `crate::reports`) and the
//! HTTP layer (`crate::http`): every `/api/v1` route, the bearer-token gate in front of them
//! ([`require_token`]) and the body limit. `/api/v1/openapi.json` ([`openapi`]) is outside the
//! gate.

pub mod openapi;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};

use crate::api::{BODY_BYTES_MAX, conflicts, master_data, sites, work_orders};
use crate::http::auth::{Denied, FAILURE_WINDOW, FAILURES_PER_ADDRESS_MAX};
use crate::http::cache::Admit;
use crate::http::error::ApiError;
use crate::http::state::ApiState;

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/api/v1/sites", get(sites::sites))
        .route(
            "/api/v1/sites/{site}/work-orders",
            post(work_orders::release),
        )
        .route("/api/v1/work-orders/{id}", patch(work_orders::edit))
        .route("/api/v1/conflicts", get(conflicts::conflicts))
        .route("/api/v1/work-orders", get(work_orders::list_work_orders))
        .route(
            "/api/v1/reports/genealogy/{lot}",
            get(crate::reports::handler::genealogy),
        )
        .route(
            "/api/v1/reports/{report}",
            get(crate::reports::handler::report),
        )
        .route(
            "/api/v1/master-data/{kind}",
            put(master_data::put_master_data),
        )
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(axum::extract::DefaultBodyLimit::max(BODY_BYTES_MAX))
        .route(
            "/api/v1/openapi.json",
            get(crate::routes::openapi::serve_document),
        )
        .with_state(state)
}

/// Lets a request in with its token's [`crate::http::auth::Scope`] (as an extension), or
/// answers `401`, `429` (too many failures from the address, or too many requests with the
/// token) or `503`.
async fn require_token(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0);
    let (scope, hash) = match state.auth.authenticate(req.headers(), peer).await {
        Ok(known) => known,
        Err(denied) => return refusal(denied).into_response(),
    };
    let token_id: String = hash.iter().take(12).map(|b| format!("{b:02x}")).collect();
    if let Admit::No(retry) = state.reports.shared.admit(&token_id).await {
        return ApiError::too_many(
            "rate_limited",
            format!(
                "more than {} requests per second with this token; retry after {retry} s",
                state.reports.shared.rate_per_second
            ),
            retry,
            false,
        )
        .into_response();
    }
    req.extensions_mut().insert(scope);
    next.run(req).await
}

fn refusal(denied: Denied) -> ApiError {
    match denied {
        Denied::Missing => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a bearer token is required (central-hub api-token create)",
        ),
        Denied::Unknown => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unknown or revoked token",
        ),
        Denied::TooMany(retry) => ApiError::too_many(
            "too_many_failures",
            format!(
                "more than {FAILURES_PER_ADDRESS_MAX} failed authentications from this address in {} s; retry after {retry} s",
                FAILURE_WINDOW.as_secs()
            ),
            retry,
            true,
        ),
        Denied::Unavailable(e) => ApiError::internal(e),
    }
}
