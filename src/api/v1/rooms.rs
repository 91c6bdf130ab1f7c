//! Rooms and members: `/api/v1/rooms[/{room}[/members[/{alias}]]]`.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;

use super::{alias, body, room_name};
use crate::api::AppState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::model::RoomMeta;
use crate::service::Creation;

/// Body of `POST /api/v1/rooms`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateRoom {
    /// The room's name.
    name: String,
    /// A group room (members join later) or a private room (exactly the caller and `member`).
    #[serde(default)]
    group_room: bool,
    /// The other member of a private room.
    member: Option<String>,
}

/// Body of `POST /api/v1/rooms/{room}/members`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct AddMember {
    /// The alias to add (yourself, to join).
    alias: String,
}

/// The caller's rooms.
#[utoipa::path(get, path = "/api/v1/rooms", security(("bearer" = [])),
    responses((status = 200, body = Vec<RoomMeta>), (status = 401, body = super::ErrorBody)))]
pub async fn rooms_index(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<RoomMeta>>, ApiError> {
    let me = caller.alias()?;
    Ok(Json(state.service.rooms_of(me).await?))
}

/// Creates a room owned by the caller. Creating the same room again (same kind, owner and, for
/// a private room, member) answers 200 with it, so a retry is safe. An alias owns at most a
/// quota of rooms (403 `quota_exceeded`), and creates them at a limited rate (429).
#[utoipa::path(post, path = "/api/v1/rooms", request_body = CreateRoom, security(("bearer" = [])),
    responses(
        (status = 201, body = RoomMeta), (status = 200, description = "the same room existed already", body = RoomMeta),
        (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody),
        (status = 403, description = "quota_exceeded: the caller owns its quota of rooms", body = super::ErrorBody),
        (status = 409, description = "a different room of that name exists", body = super::ErrorBody),
        (status = 413, body = super::ErrorBody), (status = 415, body = super::ErrorBody),
        (status = 429, description = "rate_limited: the caller created too many rooms too fast",
            body = super::ErrorBody, headers(("Retry-After" = u64, description = "whole seconds to wait before the same request can succeed"))),
        (status = 503, body = super::ErrorBody),
    ))]
pub async fn rooms_create(
    State(state): State<AppState>,
    caller: Caller,
    json: Result<Json<CreateRoom>, JsonRejection>,
) -> Result<(StatusCode, Json<RoomMeta>), ApiError> {
    let me = caller.alias()?.clone();
    let request = body(json)?;
    let name = room_name(request.name)?;
    let member = request.member.map(alias).transpose()?;
    let created = state
        .service
        .create_room(&me, &name, request.group_room, member)
        .await?;
    Ok(match created {
        Creation::Created(meta) => (StatusCode::CREATED, Json(meta)),
        Creation::Existing(meta) => (StatusCode::OK, Json(meta)),
    })
}

/// A room the caller is a member of.
#[utoipa::path(get, path = "/api/v1/rooms/{room}", security(("bearer" = [])),
    params(("room" = String, Path)),
    responses((status = 200, body = RoomMeta), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
pub async fn rooms_show(
    State(state): State<AppState>,
    caller: Caller,
    Path(room): Path<String>,
) -> Result<Json<RoomMeta>, ApiError> {
    let room = room_name(room)?;
    let me = caller.alias()?;
    Ok(Json(state.service.room_meta(me, &room).await?))
}

/// Deletes a room (its owner only): its queue, exchange, history.
#[utoipa::path(delete, path = "/api/v1/rooms/{room}", security(("bearer" = [])),
    params(("room" = String, Path)),
    responses((status = 204), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 503, body = super::ErrorBody)))]
pub async fn rooms_delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(room): Path<String>,
) -> Result<StatusCode, ApiError> {
    let room = room_name(room)?;
    let me = caller.alias()?;
    state.service.delete_room(me, &room).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds a member to a group room (the seed's `add_group_member`, which binds the member's
/// inbox queue). Anyone may join; members may add others.
#[utoipa::path(post, path = "/api/v1/rooms/{room}/members", request_body = AddMember,
    security(("bearer" = [])), params(("room" = String, Path)),
    responses((status = 200, body = RoomMeta), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 409, body = super::ErrorBody), (status = 413, body = super::ErrorBody),
        (status = 415, body = super::ErrorBody), (status = 503, body = super::ErrorBody)))]
pub async fn members_add(
    State(state): State<AppState>,
    caller: Caller,
    Path(room): Path<String>,
    json: Result<Json<AddMember>, JsonRejection>,
) -> Result<Json<RoomMeta>, ApiError> {
    let room = room_name(room)?;
    let me = caller.alias()?;
    let new = alias(body(json)?.alias)?;
    Ok(Json(state.service.add_member(me, &room, &new).await?))
}

/// Removes a member from a group room (the seed's `remove_group_member`): a member may leave,
/// the owner may remove anyone else.
#[utoipa::path(delete, path = "/api/v1/rooms/{room}/members/{alias}", security(("bearer" = [])),
    params(("room" = String, Path), ("alias" = String, Path)),
    responses((status = 200, body = RoomMeta), (status = 401, body = super::ErrorBody),
        (status = 403, body = super::ErrorBody), (status = 404, body = super::ErrorBody),
        (status = 409, body = super::ErrorBody), (status = 503, body = super::ErrorBody)))]
pub async fn members_remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((room, member)): Path<(String, String)>,
) -> Result<Json<RoomMeta>, ApiError> {
    let room = room_name(room)?;
    let member = alias(member)?;
    let me = caller.alias()?;
    Ok(Json(state.service.remove_member(me, &room, &member).await?))
}
