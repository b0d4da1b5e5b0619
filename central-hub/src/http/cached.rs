//! Answers from the response cache ([`crate::reports::cache`]): how a cached entry becomes a
//! response (`x-cache: hit|miss|stale`), and the one-second micro-cache of the small, hot HQ
//! answers (`/sites`, `/work-orders`).

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::http::cache::{self, Cached};
use crate::http::context::ReportCtx;
use crate::http::error::ApiError;
use crate::http::wire::json_bytes;

/// How old a micro-cached answer (`/sites`, `/work-orders`) may be.
pub const MICRO_CACHE_AGE: Duration = Duration::from_secs(1);

/// A cached (or just computed) entry as the response; `how` is `hit`, `miss` or `stale`.
pub fn respond(c: Cached, how: &'static str) -> Response {
    let mut r = (StatusCode::OK, c.body).into_response();
    if let Ok(v) = HeaderValue::from_str(&c.content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut()
        .insert("x-cache", HeaderValue::from_static(how));
    r
}

/// A JSON entry computed now.
pub fn json_entry<T: Serialize>(value: &T) -> Cached {
    Cached {
        content_type: "application/json".into(),
        body: json_bytes(value).into(),
        computed_ms: cache::unix_ms(),
    }
}

/// Answers from the cache when an entry for `key` is younger than [`MICRO_CACHE_AGE`], else
/// computes it once (concurrent requests wait for that one) and caches it. For small, hot,
/// uncached answers (`/sites`, `/work-orders`) where a second of staleness is harmless.
pub async fn micro_cached<T, F>(
    ctx: &ReportCtx,
    key: &str,
    compute: F,
) -> Result<Response, ApiError>
where
    T: Serialize,
    F: std::future::Future<Output = Result<T, ApiError>>,
{
    if let Some(c) = ctx.shared.peek(key).await
        && c.age() < MICRO_CACHE_AGE
    {
        return Ok(respond(c, "hit"));
    }
    let flight = ctx.flight(key);
    let _computing = flight.lock().await;
    if let Some(c) = ctx.shared.peek(key).await
        && c.age() < MICRO_CACHE_AGE
    {
        return Ok(respond(c, "hit"));
    }
    let c = json_entry(&compute.await?);
    ctx.shared.put(key, &c).await;
    Ok(respond(c, "miss"))
}
