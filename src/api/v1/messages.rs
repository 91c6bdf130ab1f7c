//! Messages: send, history pages by sequence number, search.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{body, room_name};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::seed::SendResponse;
use crate::model::ChatMessage;
use crate::service::{HistoryPage, SendMode, SendOutcome, SendRequest};

/// Body of `POST /api/v1/rooms/{room}/messages`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateMessage {
    /// The text (at most 16 KiB of UTF-8).
    message: String,
    /// Makes retries safe: the same room, sender and key are stored once.
    idempotency_key: Option<String>,
}

/// Query of `GET /api/v1/rooms/{room}/messages`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct PageQuery {
    /// Messages numbered below this (older history).
    before: Option<u64>,
    /// Messages numbered above this (catching up).
    after: Option<u64>,
    /// At most this many (1-1000, default 50).
    limit: Option<usize>,
}

/// Query of `GET /api/v1/rooms/{room}/search`.
#[derive(Debug, Deserialize, IntoParams)]
pub struct SearchQuery {
    /// Text to look for (ASCII letters compared without case).
    q: String,
    /// Only messages whose whole text is `q` (the seed's `find_message`).
    #[serde(default)]
    exact: bool,
    /// At most this many (1-100, default 20).
    limit: Option<usize>,
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// Sends a message to a room the caller is a member of. 201 once stored; 202 once confirmed
/// by the broker only (stored later); 429 over the caller's send rate (nothing was sent).
#[utoipa::path(post, path = "/api/v1/rooms/{room}/messages", request_body = CreateMessage,
    security(("bearer" = [])), params(("room" = String, Path)),
    responses((status = 201, body = SendResponse), (status = 202, body = SendResponse),
        (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 413, body = super::ErrorBody), (status = 415, body = super::ErrorBody),
        (status = 422, description = "idempotency key reused with another text", body = super::ErrorBody),
        (status = 429, description = "rate_limited: the caller sent too many messages too fast",
            body = super::ErrorBody, headers(("Retry-After" = u64, description = "whole seconds to wait before the same request can succeed"))),
        (status = 503, body = super::ErrorBody)))]
pub async fn messages_create(
    State(state): State<AppState>,
    caller: Caller,
    Path(room): Path<String>,
    json: Result<Json<CreateMessage>, JsonRejection>,
) -> Result<(StatusCode, Json<SendResponse>), ApiError> {
    let room = room_name(room)?;
    let me = caller.alias()?.clone();
    let request = body(json)?;
    let send = SendRequest {
        room_name: room,
        message: request.message,
        from_alias: me.clone(),
        to_alias: None,
        group_room: None,
        idempotency_key: request.idempotency_key,
        mode: SendMode::MemberOnly,
    };
    let (status, label, message) = match state.service.send(Some(&me), send).await? {
        SendOutcome::Stored(m) => (StatusCode::CREATED, "stored", m),
        SendOutcome::Accepted(m) => (StatusCode::ACCEPTED, "accepted", m),
    };
    Ok((
        status,
        Json(SendResponse {
            status: label.into(),
            message,
        }),
    ))
}

/// A page of history: the newest messages, or those right `before` / `after` a sequence
/// number. Pages meet without gap or overlap.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/messages", security(("bearer" = [])),
    params(("room" = String, Path), PageQuery),
    responses((status = 200, body = HistoryPage), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody), (status = 403, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody), (status = 503, body = super::ErrorBody)))]
pub async fn messages_index(
    State(state): State<AppState>,
    caller: Caller,
    Path(room): Path<String>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<HistoryPage>, ApiError> {
    let room = room_name(room)?;
    let q = query(q)?;
    let me = caller.alias()?;
    let limit = q.limit.unwrap_or(50);
    Ok(Json(
        state
            .service
            .page(Some(me), &room, q.before, q.after, limit)
            .await?,
    ))
}

/// Messages containing a text, newest first.
#[utoipa::path(get, path = "/api/v1/rooms/{room}/search", security(("bearer" = [])),
    params(("room" = String, Path), SearchQuery),
    responses((status = 200, body = Vec<ChatMessage>), (status = 400, body = super::ErrorBody),
        (status = 401, body = super::ErrorBody), (status = 403, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody), (status = 503, body = super::ErrorBody)))]
pub async fn messages_search(
    State(state): State<AppState>,
    caller: Caller,
    Path(room): Path<String>,
    q: Result<Query<SearchQuery>, QueryRejection>,
) -> Result<Json<Vec<ChatMessage>>, ApiError> {
    let room = room_name(room)?;
    let q = query(q)?;
    let me = caller.alias()?;
    let limit = q.limit.unwrap_or(20);
    Ok(Json(
        state
            .service
            .search(Some(me), &room, &q.q, q.exact, limit)
            .await?,
    ))
}
