//! The HTTP layer (axum): the seed's endpoints, the REST API v1, the health probes and the
//! metrics. Handlers are thin: they
//! parse and validate input, call [`ChatService`], and turn its errors into [`ApiError`]s.

pub mod auth;
pub mod error;
mod health;
pub mod seed;
pub mod v1;
mod web;

use axum::Router;
use axum::routing::get;
use tower_http::trace::TraceLayer;

pub use error::ApiError;

use crate::service::ChatService;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    /// The use cases.
    pub service: ChatService,
}

/// The log span of a request: method and path only. The query is left out because it can hold a
/// token (`/live?token=`) or a message's text.
fn request_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    tracing::info_span!("request", method = %request.method(), path = %request.uri().path())
}

/// The whole HTTP application.
pub fn app(service: ChatService) -> Router {
    Router::new()
        .route("/send", get(seed::send).post(seed::send_post))
        .route("/send/", get(seed::send).post(seed::send_post))
        .route("/messages", get(seed::messages))
        .route("/messages/", get(seed::messages))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(v1::routes())
        .merge(web::routes())
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .with_state(AppState { service })
}
