//! The versioned REST API under `/api/v1`: users (register → token), rooms, members, messages
//! with cursor pagination, search, and the OpenAPI description at `/api/v1/openapi.json`. Every
//! endpoint but registration and the description needs `Authorization: Bearer <token>`.

mod live;
mod messages;
mod rooms;
mod users;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use super::AppState;
use super::error::ApiError;
use crate::model::{Alias, RoomName};
use crate::service::ChatError;

/// Largest accepted request body (a message is at most 16 KiB of text).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// The OpenAPI description, generated from the handlers and types.
#[derive(OpenApi)]
#[openapi(
    info(title = "mess-chat", description = "A message-based chat over RabbitMQ and MongoDB."),
    paths(
        users::users_create,
        rooms::rooms_index,
        rooms::rooms_create,
        rooms::rooms_show,
        rooms::rooms_delete,
        rooms::members_add,
        rooms::members_remove,
        messages::messages_create,
        messages::messages_index,
        messages::messages_search,
        live::rooms_live,
    ),
    components(schemas(
        crate::model::ChatMessage,
        crate::model::MessageProperties,
        crate::model::RoomMeta,
        crate::service::HistoryPage,
        ErrorBody,
        ErrorDetail,
    )),
    modifiers(&BearerAuth),
    tags((name = "mess-chat"))
)]
pub struct ApiDoc;

/// Declares the bearer-token scheme the endpoints use.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The shape of every error body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBody {
    error: ErrorDetail,
}

/// What went wrong.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetail {
    /// Stable, machine-readable (`room_not_found`, `unauthorized`, ...).
    code: String,
    /// For a person.
    message: String,
}

/// The `/api/v1` routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/openapi.json", get(openapi_json))
        .route("/api/v1/users", post(users::users_create))
        .route(
            "/api/v1/rooms",
            get(rooms::rooms_index).post(rooms::rooms_create),
        )
        .route(
            "/api/v1/rooms/{room}",
            get(rooms::rooms_show).delete(rooms::rooms_delete),
        )
        .route("/api/v1/rooms/{room}/members", post(rooms::members_add))
        .route(
            "/api/v1/rooms/{room}/members/{alias}",
            delete(rooms::members_remove),
        )
        .route(
            "/api/v1/rooms/{room}/messages",
            get(messages::messages_index).post(messages::messages_create),
        )
        .route(
            "/api/v1/rooms/{room}/search",
            get(messages::messages_search),
        )
        .route("/api/v1/rooms/{room}/live", get(live::rooms_live))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// A JSON body, or a 4xx saying why it is not one: 413 too large, 415 not JSON, and 400 for
/// everything else (malformed JSON, or JSON of the wrong shape).
fn body<T>(json: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    json.map(|Json(v)| v).map_err(|rejection| {
        let (status, code) = match rejection.status().as_u16() {
            413 => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            415 => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            _ => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        ApiError::new(status, code, rejection.body_text())
    })
}

fn room_name(raw: String) -> Result<RoomName, ApiError> {
    Ok(RoomName::new(raw).map_err(ChatError::from)?)
}

fn alias(raw: String) -> Result<Alias, ApiError> {
    Ok(Alias::new(raw).map_err(ChatError::from)?)
}
