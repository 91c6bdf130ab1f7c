//! `POST /api/v1/users`: register an alias, get its token.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{alias, body};
use crate::api::AppState;
use crate::api::auth::ClientAddr;
use crate::api::error::ApiError;

/// Body of `POST /api/v1/users`.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateUser {
    /// The alias to register (1-64 of `A-Za-z0-9_-`, starting with a letter or digit).
    alias: String,
}

/// A registered alias and its token (shown this once).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct UserCreated {
    /// The alias.
    pub alias: String,
    /// Send as `Authorization: Bearer <token>`.
    pub token: String,
}

/// Registers an alias and returns its bearer token. Registrations are rate-limited per client
/// address (429 with `Retry-After`).
#[utoipa::path(post, path = "/api/v1/users", request_body = CreateUser,
    responses(
        (status = 201, body = UserCreated),
        (status = 400, body = super::ErrorBody),
        (status = 409, description = "the alias is registered already", body = super::ErrorBody),
        (status = 413, body = super::ErrorBody), (status = 415, body = super::ErrorBody),
        (status = 429, description = "too many registrations from this address",
            body = super::ErrorBody, headers(("Retry-After" = u64, description = "whole seconds to wait before the same request can succeed"))),
        (status = 503, body = super::ErrorBody),
    ))]
pub async fn users_create(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    json: Result<Json<CreateUser>, JsonRejection>,
) -> Result<(StatusCode, Json<UserCreated>), ApiError> {
    let alias = alias(body(json)?.alias)?;
    let token = state.service.register(&alias, client).await?;
    let created = UserCreated {
        alias: alias.to_string(),
        token,
    };
    Ok((StatusCode::CREATED, Json(created)))
}
