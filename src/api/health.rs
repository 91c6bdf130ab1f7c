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

/// `GET /readyz`: 200 only when the broker and the store both answer, this instance can make
/// message ids, and every room's consumer works; else 503 saying what does not (the rooms that
/// cannot be stored by name, at most 20).
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let ready = state.service.readiness().await;
    let stalled: Vec<&str> = ready
        .rooms_not_stored
        .iter()
        .map(|(r, _)| r.as_str())
        .collect();
    if ready.ready() {
        return (
            StatusCode::OK,
            Json(json!({
                "status": "ready", "broker": true, "store": true, "ids": true,
                "rooms_not_stored": [],
            })),
        );
    }
    let mut down: Vec<String> = [("broker", ready.broker), ("store", ready.store)]
        .into_iter()
        .filter(|(_, up)| !up)
        .map(|(name, _)| format!("unavailable: {name}"))
        .collect();
    if !ready.ids {
        down.push("no instance number to make message ids with".into());
    }
    if !stalled.is_empty() {
        let named: Vec<&str> = stalled.iter().take(20).copied().collect();
        down.push(format!(
            "{} rooms cannot be stored: {}{}",
            stalled.len(),
            named.join(", "),
            if stalled.len() > named.len() {
                ", ..."
            } else {
                ""
            }
        ));
    }
    let body = json!({
        "error": { "code": "not_ready", "message": down.join("; ") },
        "broker": ready.broker,
        "store": ready.store,
        "ids": ready.ids,
        "rooms_not_stored": stalled,
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
