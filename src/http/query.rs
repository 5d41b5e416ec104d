//! The query API: `GET /prospects/{id}`, `GET /funnel`, `GET /signals`, `GET /rules` and `GET /forecast`, answered by the pipeline thread
//! (`pipeline::query`). Personal data: served only when `http.query_api` is on, behind a bearer
//! token when one is set (required beyond loopback), emails only with `http.show_emails`.
//!
//! Statuses: 200 with the answer; 401 without the right token; 404 for a prospect its shard does
//! not hold; 421 (Misdirected Request) with the owning partition when that shard is not on this
//! instance; 503 with `Retry-After` while the shard restores, while this instance holds no shard
//! (joining or rebalancing), before the pipeline knows its partitions, or when the pipeline does
//! not answer in time.

// A handler's refusal is the response it returns; boxing it would only add an allocation.
#![allow(clippy::result_large_err)]

use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use subtle::ConstantTimeEq;

use super::{Health, QueryApi};
use crate::core::Span;
use crate::pipeline::query::{Answer, BreakdownAnswer, Question, Unanswered};
use crate::pipeline::status::ShardState;

/// How long a question may wait for the pipeline (one polled batch, or a blocking checkpoint).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

fn unavailable(why: &str) -> Response {
    let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, json!({ "error": why }));
    r.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
    r
}

/// The API's settings if the request may use it, or the refusal.
fn authorized<'a>(h: &'a Health, headers: &HeaderMap) -> Result<&'a QueryApi, Response> {
    let Some(api) = &h.query else { return Err(reply(StatusCode::NOT_FOUND, json!({ "error": "query API off" }))) };
    if let Some(token) = &api.token {
        // The scheme name is case-insensitive (RFC 9110, section 11.1).
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map_or("", |(_, t)| t.trim());
        if !bool::from(given.as_bytes().ct_eq(token.as_bytes())) {
            let mut r = reply(StatusCode::UNAUTHORIZED, json!({ "error": "a valid bearer token is required" }));
            r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return Err(r);
        }
    }
    Ok(api)
}

async fn ask(api: &QueryApi, question: Question) -> Result<Answer, Response> {
    let answer = match api.queries.ask(question) {
        Ok(a) => a,
        Err(Unanswered::Busy) => return Err(unavailable("too many queries waiting")),
        Err(Unanswered::Stopped) => return Err(unavailable("the pipeline is not running")),
    };
    match tokio::time::timeout(ANSWER_TIMEOUT, answer).await {
        Ok(Ok(a)) => Ok(a),
        Ok(Err(_)) => Err(unavailable("the pipeline is not running")),
        Err(_) => Err(unavailable("the pipeline did not answer in time")),
    }
}

/// `GET /prospects/{id}`.
pub(super) async fn prospect(State(h): State<Health>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    let api = match authorized(&h, &headers) {
        Ok(api) => api,
        Err(r) => return r,
    };
    let Some(partition) = api.queries.partition_of(&id) else {
        return unavailable("the pipeline has not joined its group yet");
    };
    let shards = h.status.snapshot();
    if shards.is_empty() {
        return unavailable("this instance holds no shard yet (joining the group or rebalancing)");
    }
    if shards.iter().any(|s| s.partition == partition && s.state == ShardState::Restoring) {
        return unavailable("the prospect's shard is restoring");
    }
    match ask(api, Question::Prospect(id.clone())).await {
        Err(r) => r,
        Ok(Answer::Prospect(mut a)) => {
            if !api.show_emails {
                a.view.email = None;
            }
            reply(StatusCode::OK, serde_json::to_value(&a).unwrap_or_default())
        }
        Ok(Answer::Unknown { partition }) => {
            reply(StatusCode::NOT_FOUND, json!({ "error": "unknown prospect", "partition": partition }))
        }
        Ok(Answer::NotHere { partition }) => not_here(&h.status, partition, &id),
        Ok(Answer::Funnel(_) | Answer::Forecast(_) | Answer::Breakdown(_) | Answer::UnknownDimension { .. }) => {
            reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": "wrong answer" }))
        }
    }
}

/// The `by` parameter of a query string, decoded.
fn by_of(query: Option<&str>) -> Option<String> {
    url::form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == "by").map(|(_, v)| v.into_owned())
}

/// One dimension's breakdown over the shards held; a 400 naming the journey's dimensions for one
/// it does not have.
async fn breakdown(api: &QueryApi, by: String) -> Result<Box<BreakdownAnswer>, Response> {
    match ask(api, Question::Breakdown(by.clone())).await? {
        Answer::Breakdown(b) => Ok(b),
        Answer::UnknownDimension { known } => Err(reply(
            StatusCode::BAD_REQUEST,
            json!({
                "error": format!(
                    "by: the journey has no breakdown dimension `{}`; use one of its [breakdowns] names",
                    by.chars().take(64).collect::<String>()
                ),
                "dimensions": known,
            }),
        )),
        _ => Err(reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": "wrong answer" }))),
    }
}

/// 421 naming the partition and, when the group's membership topic says, the instance holding
/// it and its URL (also as `Location`: the same path there).
fn not_here(status: &crate::pipeline::status::Status, partition: i32, id: &str) -> Response {
    let owner = status.membership().owner_of(partition);
    let location = owner.as_ref().and_then(|m| m.url.as_deref()).map(|url| {
        let path: String = url::form_urlencoded::byte_serialize(id.as_bytes()).collect();
        format!("{}/prospects/{}", url.trim_end_matches('/'), path.replace('+', "%20"))
    });
    let mut r = reply(
        StatusCode::MISDIRECTED_REQUEST,
        json!({
            "error": "this instance does not hold the prospect's partition",
            "partition": partition,
            "owner": owner.as_ref().map(|m| json!({ "instance": m.instance, "url": m.url })),
            "location": location,
        }),
    );
    if let Some(l) = location.and_then(|l| header::HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert(header::LOCATION, l);
    }
    r
}

/// `GET /funnel`: the funnel of the shards this instance holds (sums; add instances' answers).
/// `GET /funnel?by=<dimension>`: the same split by a `[breakdowns]` dimension.
pub(super) async fn funnel(State(h): State<Health>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let api = match authorized(&h, &headers) {
        Ok(api) => api,
        Err(r) => return r,
    };
    if let Some(by) = by_of(query.as_deref()) {
        return match breakdown(api, by).await {
            Ok(b) => reply(StatusCode::OK, serde_json::to_value(&b).unwrap_or_default()),
            Err(r) => r,
        };
    }
    match ask(api, Question::Funnel).await {
        Err(r) => r,
        Ok(Answer::Funnel(f)) => reply(StatusCode::OK, serde_json::to_value(&f).unwrap_or_default()),
        Ok(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": "wrong answer" })),
    }
}

/// `GET /signals`: which signals predict a sale, over the shards this instance holds (the
/// funnel's signal table, sorted by lift, with the outcomes it is measured against).
/// `GET /signals?by=<dimension>`: the same per value of a `[breakdowns]` dimension.
pub(super) async fn signals(State(h): State<Health>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let api = match authorized(&h, &headers) {
        Ok(api) => api,
        Err(r) => return r,
    };
    if let Some(by) = by_of(query.as_deref()) {
        return match breakdown(api, by).await {
            Ok(b) => {
                let r = &b.breakdown;
                let values: Vec<serde_json::Value> = r
                    .values
                    .iter()
                    .chain([&r.other, &r.none])
                    .map(|v| {
                        json!({ "value": v.value, "outcomes": v.outcomes, "small_sample": v.small_sample, "signals": v.signals })
                    })
                    .collect();
                reply(StatusCode::OK, json!({ "shards": b.shards, "dimension": r.dimension, "values": values }))
            }
            Err(r) => r,
        };
    }
    match ask(api, Question::Funnel).await {
        Err(r) => r,
        Ok(Answer::Funnel(f)) => reply(
            StatusCode::OK,
            json!({ "shards": f.shards, "outcomes": f.funnel.outcomes, "signals": f.funnel.signals }),
        ),
        Ok(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": "wrong answer" })),
    }
}

/// `GET /rules`: how accurate each hot rule is, over the shards this instance holds: precision,
/// capture and lead time against outcomes within `[insight] alert_horizon_days`, and the win
/// rate by score band.
pub(super) async fn rules(State(h): State<Health>, headers: HeaderMap) -> Response {
    let api = match authorized(&h, &headers) {
        Ok(api) => api,
        Err(r) => return r,
    };
    match ask(api, Question::Funnel).await {
        Err(r) => r,
        Ok(Answer::Funnel(f)) => reply(
            StatusCode::OK,
            json!({
                "shards": f.shards,
                "alert_horizon_days": f.alert_horizon_days,
                "outcomes": f.funnel.outcomes,
                "rules": f.funnel.rules,
                "score_bands": f.funnel.score_bands,
                "time_buckets_secs": f.funnel.time_buckets_secs,
            }),
        ),
        Ok(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": "wrong answer" })),
    }
}

/// `GET /forecast[?horizon_days=N]` (default 30): wins expected within the horizon from the open
/// prospects of the shards held, at their latest watermark, and the same forecast made one
/// horizon earlier scored against what happened since (`core::forecast`).
pub(super) async fn forecast(State(h): State<Health>, headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    let api = match authorized(&h, &headers) {
        Ok(api) => api,
        Err(r) => return r,
    };
    let days = match query.as_deref().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("horizon_days="))) {
        None => 30.0,
        Some(v) => match v.parse::<f64>() {
            Ok(d) if d.is_finite() && d > 0.0 && d <= 3650.0 => d,
            _ => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": "horizon_days: a positive number of days, at most 3650" }),
                );
            }
        },
    };
    match ask(api, Question::Forecast(Span::from_days(days))).await {
        Err(r) => r,
        Ok(Answer::Forecast(f)) => reply(StatusCode::OK, serde_json::to_value(&f).unwrap_or_default()),
        Ok(_) => reply(StatusCode::INTERNAL_SERVER_ERROR, json!({ "error": "wrong answer" })),
    }
}
