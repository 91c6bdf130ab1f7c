//! Who is calling: the `Authorization: Bearer <token>` header, checked against the registered
//! aliases. The REST API always identifies its caller this way; the seed endpoints pass the
//! caller (if any) to the service, which requires one unless it runs with `--no-auth`.
//! [`ClientAddr`] is where the request came from: the TCP peer, never a header such as
//! `X-Forwarded-For`, which any client can write.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::AppState;
use super::error::ApiError;
use crate::model::Alias;
use crate::service::ChatError;

/// The authenticated caller, if the request carried a token.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<Alias>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(header) = parts.headers.get(AUTHORIZATION) else {
            return Ok(Caller(None));
        };
        let token = header
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ChatError::Unauthorized("the Authorization header must be `Bearer <token>`".into())
            })?;
        let alias = state.service.auth().authenticate(token.trim()).await?;
        Ok(Caller(Some(alias)))
    }
}

impl Caller {
    /// The caller's alias; 401 without a token.
    pub fn alias(&self) -> Result<&Alias, ApiError> {
        self.0.as_ref().ok_or_else(|| {
            ChatError::Unauthorized(
                "this endpoint needs `Authorization: Bearer <token>` (POST /api/v1/users)".into(),
            )
            .into()
        })
    }

    /// The caller's alias, if the request carried a token.
    pub fn actor(&self) -> Option<&Alias> {
        self.0.as_ref()
    }
}

/// The address of the connection the request came on (`None` when the app is called without a
/// connection, as tests do with `oneshot`). Behind a proxy it is the proxy's address.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        Ok(ClientAddr(peer.map(|ConnectInfo(addr)| addr.ip())))
    }
}
