//! Liveness and readiness probes, and the Prometheus metrics.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

/// `GET /healthz`: the process is up and serving HTTP.
pub async fn healthz() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 only when both the broker and the store answer; 503 saying which does not.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let ready = state.service.readiness().await;
    if ready.broker && ready.store {
        return (
            StatusCode::OK,
            Json(json!({ "status": "ready", "broker": true, "store": true })),
        );
    }
    let down: Vec<&str> = [("broker", ready.broker), ("store", ready.store)]
        .into_iter()
        .filter(|(_, up)| !up)
        .map(|(name, _)| name)
        .collect();
    let body = json!({
        "error": { "code": "not_ready", "message": format!("unavailable: {}", down.join(", ")) },
        "broker": ready.broker,
        "store": ready.store,
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}

/// `GET /metrics`: Prometheus text exposition of [`crate::metrics`].
pub async fn metrics() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let content_type = (
        axum::http::header::CONTENT_TYPE,
        "text/plain; version=0.0.4",
    );
    ([content_type], crate::metrics::handle().render())
}
