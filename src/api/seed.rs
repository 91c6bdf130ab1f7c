//! The assignment's endpoints: `GET /send/` and `GET /messages/`, thin shells over
//! [`ChatService`](crate::service::ChatService).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::model::{Alias, ChatMessage, RoomName};
use crate::service::{SendMode, SendOutcome, SendRequest};

/// Default number of messages `/messages/` returns.
pub const DEFAULT_MESSAGES_LIMIT: usize = 100;

/// Query of `GET /send/`; every field is checked by hand so each error can say what is wrong.
#[derive(Debug, Deserialize)]
pub struct SendQuery {
    room_name: Option<String>,
    message: Option<String>,
    from_alias: Option<String>,
    to_alias: Option<String>,
    group_room: Option<String>,
    idempotency_key: Option<String>,
}

/// Answer of `GET /send/` (and of a REST send).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SendResponse {
    /// `stored` (numbered and saved) or `accepted` (confirmed by the broker, saving pending).
    pub status: String,
    /// The message as the service knows it now.
    pub message: ChatMessage,
}

/// Query of `GET /messages/`.
#[derive(Debug, Deserialize)]
pub struct MessagesQuery {
    room_name: Option<String>,
    limit: Option<String>,
}

/// Refuses a query whose percent-encoded bytes are not UTF-8. (The query parser would silently
/// turn them into U+FFFD, storing a text other than the one sent.)
fn check_utf8(raw: &Option<String>) -> Result<(), ApiError> {
    let Some(raw) = raw else { return Ok(()) };
    for pair in raw.split('&') {
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(pair).collect();
        if std::str::from_utf8(&bytes).is_err() {
            let name = pair.split('=').next().unwrap_or_default();
            return Err(ApiError::bad_request(format!(
                "query parameter {:?} is not valid percent-encoded UTF-8",
                name.chars().take(40).collect::<String>()
            )));
        }
    }
    Ok(())
}

fn required(value: Option<String>, name: &str) -> Result<String, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("query parameter {name} is required")))
}

fn optional(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// The usual spellings of a boolean (HTML forms send `on`), any case.
fn parse_bool(value: &str) -> Result<bool, ApiError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(ApiError::bad_request(format!(
            "group_room must be true/false, 1/0, yes/no or on/off, not {:?}",
            value.chars().take(20).collect::<String>()
        ))),
    }
}

fn room_name(value: String) -> Result<RoomName, ApiError> {
    RoomName::new(value).map_err(|e| crate::service::ChatError::from(e).into())
}

fn alias(value: String) -> Result<Alias, ApiError> {
    Alias::new(value).map_err(|e| crate::service::ChatError::from(e).into())
}

/// `GET /send/?room_name=&message=&from_alias=&to_alias=&group_room=`: sends a message.
/// 200 once stored, 202 once only confirmed by the broker.
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    query: Result<Query<SendQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<SendResponse>), ApiError> {
    check_utf8(&raw)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let request = SendRequest {
        room_name: room_name(required(q.room_name, "room_name")?)?,
        message: q
            .message
            .ok_or_else(|| ApiError::bad_request("query parameter message is required"))?,
        from_alias: alias(required(q.from_alias, "from_alias")?)?,
        to_alias: optional(q.to_alias).map(alias).transpose()?,
        group_room: optional(q.group_room).map(|v| parse_bool(&v)).transpose()?,
        idempotency_key: q.idempotency_key,
        mode: SendMode::CreateOrJoin,
    };
    let (status, label, message) = match state.service.send(caller.actor(), request).await? {
        SendOutcome::Stored(m) => (StatusCode::OK, "stored", m),
        SendOutcome::Accepted(m) => (StatusCode::ACCEPTED, "accepted", m),
    };
    let body = SendResponse {
        status: label.into(),
        message,
    };
    Ok((status, Json(body)))
}

/// `GET /messages/?room_name=&limit=`: the room's newest messages as texts, oldest first.
pub async fn messages(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<Json<Vec<String>>, ApiError> {
    check_utf8(&raw)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let room = room_name(required(q.room_name, "room_name")?)?;
    let limit = match optional(q.limit) {
        None => DEFAULT_MESSAGES_LIMIT,
        Some(v) => v
            .parse()
            .map_err(|_| ApiError::bad_request("limit must be a whole number"))?,
    };
    let history = state.service.history(caller.actor(), &room, limit).await?;
    Ok(Json(history.into_iter().map(|m| m.message).collect()))
}
