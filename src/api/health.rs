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

/// Most rooms `/readyz` names (it counts them all).
const ROOMS_NAMED: usize = 100;

/// `GET /readyz`: 200 only when the broker and the store both answer, this instance can make
/// message ids, and every room's consumer on it is subscribed; else 503 saying what does not
/// (how many rooms cannot be stored, naming the first [`ROOMS_NAMED`]).
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let ready = state.service.readiness().await;
    let stalled = ready.rooms_not_stored.len();
    let named: Vec<&str> = ready
        .rooms_not_stored
        .iter()
        .take(ROOMS_NAMED)
        .map(|(r, _)| r.as_str())
        .collect();
    if ready.ready() {
        return (
            StatusCode::OK,
            Json(json!({
                "status": "ready", "broker": true, "store": true, "ids": true,
                "rooms_not_stored": [], "rooms_not_stored_count": 0,
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
    if stalled > 0 {
        let shown = named.iter().take(20).copied().collect::<Vec<_>>();
        let why = &ready.rooms_not_stored[0].1;
        down.push(format!(
            "{stalled} rooms cannot be stored: {}{} ({}: {why})",
            shown.join(", "),
            if stalled > shown.len() { ", ..." } else { "" },
            shown[0],
        ));
    }
    let body = json!({
        "error": { "code": "not_ready", "message": down.join("; ") },
        "broker": ready.broker,
        "store": ready.store,
        "ids": ready.ids,
        "rooms_not_stored": named,
        "rooms_not_stored_count": stalled,
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body))
}

/// `GET /metrics`: Prometheus text exposition of [`crate::metrics`].
pub async fn metrics() -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let content_type = (
        axum::http::header::CONTENT_TYPE,
        "text/plain; version=0.0.4",
    );
    crate::metrics::record_heap();
    ([content_type], crate::metrics::handle().render())
}
