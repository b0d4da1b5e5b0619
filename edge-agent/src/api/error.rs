//! The API's error type: every failure is a status and a JSON body
//! `{"error": {"code", "message", "field"?, "retry_after_seconds"?}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// The request body was not read to its end: the connection must close, or the client's
    /// next request on it would be read from the middle of this one's body.
    pub close_connection: bool,
    /// Seconds after which a refused request may be tried again: the `Retry-After` header and
    /// `retry_after_seconds` in the body.
    pub retry_after: Option<u64>,
    /// Structured detail for the caller's program (e.g. each refused line of a config file).
    pub details: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            close_connection: false,
            retry_after: None,
            details: None,
        }
    }

    pub fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub fn closing(mut self) -> Self {
        self.close_connection = true;
        self
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_field(field)
    }

    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed_json", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "an API key is required: Authorization: Bearer KEY or X-Api-Key: KEY",
        )
    }

    /// Maps a store error; `field_of` turns a batch index and field into the request's path.
    pub fn from_store(e: StoreError, field_of: impl Fn(usize, &str) -> String) -> Self {
        match e {
            StoreError::UnknownReference {
                index,
                field,
                ref value,
            } => Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_reference",
                format!("{field} {value:?} is not in the master data of this site"),
            )
            .with_field(field_of(index, field)),
            StoreError::NotFound { .. } => Self::not_found(e.to_string()),
            StoreError::AlreadyExists { .. } => {
                Self::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            StoreError::IllegalTransition(t) => {
                Self::new(StatusCode::CONFLICT, "illegal_transition", t.to_string())
            }
            StoreError::Invalid { field, message } => Self::invalid(field, message),
            StoreError::Closed => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the agent is shutting down",
            ),
            StoreError::Sqlite(ref x)
                if x.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) =>
            {
                tracing::error!(error = %e, "disk full: writes are refused until space returns");
                Self::new(
                    StatusCode::INSUFFICIENT_STORAGE,
                    "disk_full",
                    "the edge's disk is full: nothing of this request was stored; free space on the agent's data disk (it keeps running and takes writes again as soon as there is room)",
                )
            }
            StoreError::Io(ref x) if x.kind() == std::io::ErrorKind::StorageFull => Self::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "disk_full",
                "the edge's disk is full: nothing of this request was stored; free space on the agent's data disk",
            ),
            other => {
                tracing::error!(error = %other, "store failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("the local store could not commit: {other}"),
                )
            }
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::from_store(e, |_, f| f.to_owned())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(f) = self.field {
            error["field"] = json!(f);
        }
        if let Some(r) = self.retry_after {
            error["retry_after_seconds"] = json!(r);
        }
        if let Some(d) = self.details {
            error["details"] = d;
        }
        let mut response = (self.status, Json(json!({ "error": error }))).into_response();
        if let Some(r) = self.retry_after {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(r),
            );
        }
        if self.close_connection {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        response
    }
}
