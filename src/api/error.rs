//! `ApiError`: the one error type of the HTTP layer. Every error leaves as
//! `{"error": {"code": "...", "message": "..."}}` with the status that fits; internal errors are
//! logged here and say little to the client. A rate-limited request (429) also carries a
//! `Retry-After` header, in whole seconds.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::service::ChatError;

/// An HTTP error: status, stable machine-readable code, human-readable message.
#[derive(Debug)]
pub struct ApiError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A stable code clients can match on (`room_not_found`, `message_too_large`, ...).
    pub code: &'static str,
    /// What was wrong, for a person.
    pub message: String,
    /// Seconds to wait before trying again, sent as `Retry-After` (rate limits).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 with code `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// Any status and code.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            ChatError::BadRequest(_) => (S::BAD_REQUEST, "bad_request"),
            ChatError::InvalidName(_) => (S::BAD_REQUEST, "invalid_name"),
            ChatError::MessageTooLarge(_) => (S::PAYLOAD_TOO_LARGE, "message_too_large"),
            ChatError::Unauthorized(_) => (S::UNAUTHORIZED, "unauthorized"),
            ChatError::Forbidden(_) => (S::FORBIDDEN, "forbidden"),
            ChatError::RoomNotFound(_) => (S::NOT_FOUND, "room_not_found"),
            ChatError::NotAMember { .. } => (S::FORBIDDEN, "not_a_member"),
            ChatError::PrivateRoomFull { .. } => (S::FORBIDDEN, "private_room_full"),
            ChatError::KindConflict { .. } => (S::CONFLICT, "room_kind_conflict"),
            ChatError::NameTaken(_) => (S::CONFLICT, "name_taken"),
            ChatError::Conflict(_) => (S::CONFLICT, "conflict"),
            ChatError::NameClash(_) => (S::CONFLICT, "name_clash"),
            ChatError::IdempotencyKeyReused { .. } => {
                (S::UNPROCESSABLE_ENTITY, "idempotency_key_reused")
            }
            ChatError::RateLimited { .. } => (S::TOO_MANY_REQUESTS, "rate_limited"),
            ChatError::QuotaExceeded(_) => (S::FORBIDDEN, "quota_exceeded"),
            ChatError::Unavailable(_) => (S::SERVICE_UNAVAILABLE, "unavailable"),
            ChatError::Misconfigured(_) => (S::SERVICE_UNAVAILABLE, "misconfigured"),
            ChatError::Internal(_) | ChatError::Legacy(_) => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        let message = match &e {
            ChatError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error; see the service log".to_string()
            }
            ChatError::Unavailable(_) => format!("{e}; try again shortly"),
            _ => e.to_string(),
        };
        let mut error = Self::new(status, code, message);
        if let ChatError::RateLimited { retry_after, .. } = &e {
            error.retry_after = Some(retry_after.as_secs().max(1));
        }
        error
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// Answer for unknown paths.
pub async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// Answer for a known path with the wrong method.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method",
    )
}
