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
use crate::service::ChatError;

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
    let rooms = state.service.rooms().rooms();
    Ok(Json(
        rooms
            .iter()
            .filter(|r| r.is_member(me))
            .map(|r| r.meta())
            .collect(),
    ))
}

/// Creates a room owned by the caller.
#[utoipa::path(post, path = "/api/v1/rooms", request_body = CreateRoom, security(("bearer" = [])),
    responses(
        (status = 201, body = RoomMeta),
        (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody),
        (status = 409, description = "the room exists, or the name is an alias", body = super::ErrorBody),
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
    let room = state
        .service
        .create_room(&name, request.group_room, &me, member)
        .await?;
    Ok((StatusCode::CREATED, Json(room.meta())))
}

/// A room the caller is a member of.
#[utoipa::path(get, path = "/api/v1/rooms/{room}", security(("bearer" = [])),
    params(("room" = String, Path)),
    responses((status = 200, body = RoomMeta), (status = 403, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody)))]
pub async fn rooms_show(
    State(state): State<AppState>,
    caller: Caller,
    Path(room): Path<String>,
) -> Result<Json<RoomMeta>, ApiError> {
    let room = room_name(room)?;
    caller.must_be_member(&state, &room, true)?;
    Ok(Json(state.service.room(&room)?.meta()))
}

/// Deletes a room (its owner only): its queue, exchange, history.
#[utoipa::path(delete, path = "/api/v1/rooms/{room}", security(("bearer" = [])),
    params(("room" = String, Path)),
    responses((status = 204), (status = 403, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody)))]
pub async fn rooms_delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(room): Path<String>,
) -> Result<StatusCode, ApiError> {
    let room = room_name(room)?;
    let me = caller.alias()?;
    if &state.service.room(&room)?.owner_alias() != me {
        return Err(ChatError::Forbidden(format!("only the owner may delete {room}")).into());
    }
    state.service.delete_room(&room).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Adds a member to a group room (the seed's `add_group_member`, which binds the member's
/// inbox queue). Anyone may join; members may add others.
#[utoipa::path(post, path = "/api/v1/rooms/{room}/members", request_body = AddMember,
    security(("bearer" = [])), params(("room" = String, Path)),
    responses((status = 200, body = RoomMeta), (status = 403, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn members_add(
    State(state): State<AppState>,
    caller: Caller,
    Path(room): Path<String>,
    json: Result<Json<AddMember>, JsonRejection>,
) -> Result<Json<RoomMeta>, ApiError> {
    let room = room_name(room)?;
    let me = caller.alias()?;
    let new = alias(body(json)?.alias)?;
    if &new != me {
        caller.must_be_member(&state, &room, true)?;
    }
    state.service.add_member(&room, &new).await?;
    Ok(Json(state.service.room(&room)?.meta()))
}

/// Removes a member from a group room (the seed's `remove_group_member`): a member may leave,
/// the owner may remove anyone else.
#[utoipa::path(delete, path = "/api/v1/rooms/{room}/members/{alias}", security(("bearer" = [])),
    params(("room" = String, Path), ("alias" = String, Path)),
    responses((status = 200, body = RoomMeta), (status = 403, body = super::ErrorBody),
        (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody)))]
pub async fn members_remove(
    State(state): State<AppState>,
    caller: Caller,
    Path((room, member)): Path<(String, String)>,
) -> Result<Json<RoomMeta>, ApiError> {
    let room = room_name(room)?;
    let member = alias(member)?;
    let me = caller.alias()?;
    let chat_room = state.service.room(&room)?;
    if &member != me && &chat_room.owner_alias() != me {
        return Err(ChatError::Forbidden(format!(
            "only {member} or the owner of {room} may remove {member}"
        ))
        .into());
    }
    chat_room
        .remove_group_member(&member)
        .await
        .map_err(ChatError::from)?;
    Ok(Json(chat_room.meta()))
}
