//! `ApiError`: every refusal and failure of the HQ API as one JSON shape,
//! `{"error": {"code", "message", "field"?, "id"?, …}}`.
//!
//! An internal failure (the database, Automerge) is logged with a fresh id and answered with
//! that id only: its text may name tables, constraints or connection details a client has no
//! business seeing, and the id is what an operator greps the log for.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

// Fields in alphabetical order: the order the answers had when they were written with `json!`
// (serde_json's map is sorted), kept byte for byte.
/// What a client reads under `error`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    #[schema(value_type = String)]
    pub code: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub field: Option<&'static str>,
    /// The id an internal failure was logged under.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub message: String,
    /// With `429 too_many_failures`: the same as `Retry-After`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

/// The whole error document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorDoc {
    pub error: ErrorBody,
}

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// Sent as `Retry-After` (seconds).
    retry_after: Option<u64>,
}

/// What an internal failure's message says to the client (the cause is in the log).
pub const INTERNAL_MESSAGE: &str = "internal error";

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                code,
                field: None,
                id: None,
                message: message.into(),
                retry_after_seconds: None,
            },
            retry_after: None,
        }
    }

    /// A bad field of a request body: `422` naming it.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_field(field)
    }

    /// A bad query parameter: `400` naming it.
    pub fn bad_request(field: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_parameter", message).with_field(field)
    }

    /// A request body that is not the JSON the handler takes.
    pub fn invalid_body(e: &axum::extract::rejection::JsonRejection) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.body_text(),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// A failure that is not the caller's: logged with a fresh id, answered `503` with the id
    /// and none of the cause's text.
    pub fn internal(e: impl std::fmt::Display) -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        tracing::error!(error_id = %id, error = %e, "HQ API failure");
        let mut err = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            INTERNAL_MESSAGE,
        );
        err.body.id = Some(id);
        err
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "the token's scope does not allow this",
        )
    }

    /// `429` with `Retry-After`; `in_body` also puts the seconds in the body.
    pub fn too_many(code: &'static str, message: String, retry: u64, in_body: bool) -> Self {
        let mut err = Self::new(StatusCode::TOO_MANY_REQUESTS, code, message);
        err.retry_after = Some(retry);
        if in_body {
            err.body.retry_after_seconds = Some(retry);
        }
        err
    }

    fn with_field(mut self, field: &'static str) -> Self {
        self.body.field = Some(field);
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut r = (self.status, Json(ErrorDoc { error: self.body })).into_response();
        if let Some(retry) = self.retry_after
            && let Ok(v) = HeaderValue::from_str(&retry.to_string())
        {
            r.headers_mut().insert(header::RETRY_AFTER, v);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    async fn body_of(e: ApiError) -> (StatusCode, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn an_internal_error_names_its_id_and_not_its_cause() {
        let cause =
            sqlx::Error::Protocol("relation \"api_tokens\" does not exist at 10.0.0.5:5432".into());
        let (status, v) = body_of(ApiError::internal(cause)).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v["error"]["code"], "unavailable");
        assert_eq!(v["error"]["message"], INTERNAL_MESSAGE);
        let id = v["error"]["id"].as_str().unwrap();
        assert_eq!(id.len(), 32, "{id}");
        let text = v.to_string();
        for leak in ["api_tokens", "relation", "5432", "10.0.0.5"] {
            assert!(!text.contains(leak), "{leak} leaked: {text}");
        }
        let (_, again) = body_of(ApiError::internal("x")).await;
        assert_ne!(again["error"]["id"], v["error"]["id"], "ids are fresh");
    }

    #[tokio::test]
    async fn other_errors_keep_their_shape() {
        let (status, v) = body_of(ApiError::bad_request("from", "nope")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            v.to_string(),
            r#"{"error":{"code":"bad_parameter","field":"from","message":"nope"}}"#
        );
        crate::http::wire::assert_wire_order(&ErrorDoc {
            error: ErrorBody {
                code: "c",
                field: Some("f"),
                id: Some("i".into()),
                message: "m".into(),
                retry_after_seconds: Some(1),
            },
        });
    }
}
