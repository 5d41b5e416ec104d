//! `/metrics`, `/healthz`, `/readyz`, `/shards`, and, when `http.query_api` is on, the query API
//! (`query.rs`). `router()` needs no socket, so it is testable directly.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::pipeline::query::Queries;
use crate::pipeline::status::Status;
use crate::telemetry::Metrics;

mod query;

/// What the HTTP endpoints report on.
#[derive(Clone)]
pub struct Health {
    pub metrics: Metrics,
    /// Consuming: joined the group, no assigned shard restoring, not shutting down.
    pub ready: Arc<AtomicBool>,
    pub status: Status,
    /// The query API (`None`: off).
    pub query: Option<QueryApi>,
}

/// The query API's settings and its channel to the pipeline.
#[derive(Clone)]
pub struct QueryApi {
    pub queries: Queries,
    /// Required bearer token (`None`: none required).
    pub token: Option<Arc<str>>,
    pub show_emails: bool,
}

pub fn router(health: Health) -> Router {
    let mut r = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/shards", get(shards));
    if health.query.is_some() {
        r = r
            .route("/prospects/{id}", get(query::prospect))
            .route("/funnel", get(query::funnel))
            .route("/signals", get(query::signals))
            .route("/rules", get(query::rules))
            .route("/forecast", get(query::forecast));
    }
    r.with_state(health)
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

/// Each assigned shard: restoring or running, where its state came from, its last checkpoint;
/// and the group's instances as `<group>.members` names them (with the query API on).
async fn shards(State(h): State<Health>) -> impl IntoResponse {
    let members = h.status.membership();
    let body = serde_json::json!({
        "instance": &*members.instance,
        "shards": h.status.snapshot(),
        "members": members.members(),
    });
    ([(header::CONTENT_TYPE, "application/json")], body.to_string())
}
