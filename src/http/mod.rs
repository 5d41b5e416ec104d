//! `/metrics`, `/healthz`, `/readyz`. `router()` needs no socket, so it is testable directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::pipeline::status::Status;
use crate::telemetry::Metrics;

/// What the HTTP endpoints report on.
#[derive(Clone)]
pub struct Health {
    pub metrics: Metrics,
    /// Consuming: joined the group, no assigned shard restoring, not shutting down.
    pub ready: Arc<AtomicBool>,
    pub status: Status,
}

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/shards", get(shards))
        .with_state(health)
}

async fn metrics(State(h): State<Health>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], h.metrics.render())
}

async fn readyz(State(h): State<Health>) -> impl IntoResponse {
    if h.ready.load(Ordering::Acquire) && !h.status.restoring() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Each assigned shard: restoring or running, where its state came from, its last checkpoint.
async fn shards(State(h): State<Health>) -> impl IntoResponse {
    let body = serde_json::json!({ "shards": h.status.snapshot() });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string())
}
