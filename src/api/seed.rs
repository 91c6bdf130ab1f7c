//! The assignment's endpoints, `/send/` and `/messages/`, as the course's clients call them:
//! thin shells over [`ChatService`](crate::service::ChatService).
//!
//! What the course's own template and other students' clients do, and what answers them:
//! - `/send/` by `GET` or `POST` (with or without the trailing slash); its parameters in the
//!   query, or in a form or JSON body;
//! - no `room_name`: the default room (`general`, `--default-room`), for `/send/` and
//!   `/messages/` alike;
//! - `group_room` omitted: a new room is a group room (a private room is asked for with
//!   `group_room=false`); `group_room` as `true/false`, `1/0`, `yes/no`, `on/off`, any case;
//! - an empty message is a message (the course's test plan sends one);
//! - `/messages/?messages_to_get=N`: the newest `N`, oldest first (absent or `N <= 0`:
//!   everything in the room's cache); a room nobody has sent to is `[]`.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, RawQuery, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};

use super::AppState;
use super::auth::Caller;
use super::error::ApiError;
use crate::model::{Alias, ChatMessage, RoomName};
use crate::service::{ChatError, SendMode, SendOutcome, SendRequest};

/// The parameters of `/send/`; every field is checked by hand so each error can say what is
/// wrong.
#[derive(Debug, Default, Deserialize)]
pub struct SendQuery {
    room_name: Option<String>,
    message: Option<String>,
    from_alias: Option<String>,
    to_alias: Option<String>,
    group_room: Option<String>,
    idempotency_key: Option<String>,
}

impl SendQuery {
    /// Takes from `other` what this one lacks (the query wins over the body).
    fn or(self, other: SendQuery) -> SendQuery {
        SendQuery {
            room_name: self.room_name.or(other.room_name),
            message: self.message.or(other.message),
            from_alias: self.from_alias.or(other.from_alias),
            to_alias: self.to_alias.or(other.to_alias),
            group_room: self.group_room.or(other.group_room),
            idempotency_key: self.idempotency_key.or(other.idempotency_key),
        }
    }
}

/// Answer of `/send/` (and of a REST send).
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
    /// The seed's count: the newest `N`; absent or `<= 0`, the whole cache.
    messages_to_get: Option<String>,
    /// This service's count: the newest `limit` (1..1000), from the store beyond the cache.
    limit: Option<String>,
}

/// Refuses text whose percent-encoded bytes are not UTF-8. (The parsers would silently turn them
/// into U+FFFD, storing a text other than the one sent.)
fn check_utf8(raw: Option<&str>) -> Result<(), ApiError> {
    let Some(raw) = raw else { return Ok(()) };
    for pair in raw.split('&') {
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(pair).collect();
        if std::str::from_utf8(&bytes).is_err() {
            let name = pair.split('=').next().unwrap_or_default();
            return Err(ApiError::bad_request(format!(
                "parameter {:?} is not valid percent-encoded UTF-8",
                name.chars().take(40).collect::<String>()
            )));
        }
    }
    Ok(())
}

fn required(value: Option<String>, name: &str) -> Result<String, ApiError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::bad_request(format!("parameter {name} is required")))
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
    RoomName::new(value).map_err(|e| ChatError::from(e).into())
}

fn alias(value: String) -> Result<Alias, ApiError> {
    Alias::new(value).map_err(|e| ChatError::from(e).into())
}

/// The parameters of a `POST /send/` body: a form, or a JSON object whose values are strings,
/// numbers or booleans.
fn body_params(headers: &HeaderMap, body: &Bytes) -> Result<SendQuery, ApiError> {
    if body.is_empty() {
        return Ok(SendQuery::default());
    }
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/json") {
        let object: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("the body is not a JSON object: {e}")))?;
        let text = |key: &str| match object.get(key) {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Null) | None => None,
            Some(other) => Some(other.to_string()),
        };
        return Ok(SendQuery {
            room_name: text("room_name"),
            message: text("message"),
            from_alias: text("from_alias"),
            to_alias: text("to_alias"),
            group_room: text("group_room"),
            idempotency_key: text("idempotency_key"),
        });
    }
    let form =
        std::str::from_utf8(body).map_err(|_| ApiError::bad_request("the body is not UTF-8"))?;
    check_utf8(Some(form))?;
    serde_urlencoded::from_str(form)
        .map_err(|e| ApiError::bad_request(format!("the body is not a form: {e}")))
}

/// `GET /send/?room_name=&message=&from_alias=&to_alias=&group_room=`: sends a message.
/// 200 once stored, 202 once only confirmed by the broker.
pub async fn send(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    query: Result<Query<SendQuery>, QueryRejection>,
) -> Result<(StatusCode, Json<SendResponse>), ApiError> {
    check_utf8(raw.as_deref())?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    send_with(&state, &caller, q).await
}

/// `POST /send/`: the same, with the parameters in the query or in a form or JSON body.
pub async fn send_post(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    query: Result<Query<SendQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<SendResponse>), ApiError> {
    check_utf8(raw.as_deref())?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let q = q.or(body_params(&headers, &body)?);
    send_with(&state, &caller, q).await
}

async fn send_with(
    state: &AppState,
    caller: &Caller,
    q: SendQuery,
) -> Result<(StatusCode, Json<SendResponse>), ApiError> {
    let room_name = match optional(q.room_name) {
        Some(name) => room_name(name)?,
        None => state.service.default_room().clone(),
    };
    let request = SendRequest {
        room_name,
        message: q
            .message
            .ok_or_else(|| ApiError::bad_request("parameter message is required"))?,
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

/// `GET /messages/?room_name=&messages_to_get=&limit=`: the room's newest messages as texts,
/// oldest first; `[]` for a room nobody has sent to.
pub async fn messages(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<Json<Vec<String>>, ApiError> {
    check_utf8(raw.as_deref())?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let room = match optional(q.room_name) {
        Some(name) => room_name(name)?,
        None => state.service.default_room().clone(),
    };
    let whole_number = |v: String, name: &str| {
        v.trim()
            .parse::<i64>()
            .map_err(|_| ApiError::bad_request(format!("{name} must be a whole number")))
    };
    let limit = match (optional(q.limit), optional(q.messages_to_get)) {
        (Some(limit), _) => {
            let limit = whole_number(limit, "limit")?;
            Some(usize::try_from(limit).unwrap_or(0))
        }
        (None, Some(count)) => {
            let count = whole_number(count, "messages_to_get")?;
            // The seed's habit: nothing positive means "all the room holds in its cache".
            usize::try_from(count).ok().filter(|n| *n > 0)
        }
        (None, None) => None,
    };
    match state.service.recent(caller.actor(), &room, limit).await {
        Ok(history) => Ok(Json(history.into_iter().map(|m| m.message).collect())),
        Err(ChatError::RoomNotFound(_)) => Ok(Json(Vec::new())),
        Err(e) => Err(e.into()),
    }
}
