//! The service against a real Kafka-API broker (Tansu, see `support`): the whole path from input
//! topics through the consumer group, the engine and the producer to the output topics, the
//! dead-letter topic, the HTTP endpoints, rebalancing and restarts from committed offsets.
//! Every test has its own topics and group.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use microfunnel::core::ids::alert_id;
use microfunnel::core::time::{MS_PER_DAY, parse_rfc3339};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use serde_json::{Value, json};
use support::{
    In, Out, Service, brokers, committed, crm, end_offsets, http_get, keyed, produce, read_until, sample, settings,
    setup, total, unkeyed, wait_until, web,
};

const CONSUMED: &str = "microfunnel_events_consumed_total";
const CLARIFICATION_REASON: &str = "Asked what a quote line means within 14 days of receiving the quote";
const QUOTE_REASON: &str = "Asked for a quote";
const DECIDING_NEXT: &str = "Ask for a date to walk through the quote with every decision maker";

/// Group joins on Tansu take up to half the session timeout; this leaves room for a rebalance.
const JOIN: Duration = Duration::from_secs(30);

// ---- payloads as the sources send them -----------------------------------------------------------

fn segment_page(user: &str, message_id: &str, ts: &str, path: &str) -> Vec<u8> {
    json!({
        "type": "page",
        "name": path.trim_start_matches('/'),
        "properties": {"path": path, "url": format!("https://acme.example{path}"), "referrer": "https://bing.com/"},
        "userId": user,
        "anonymousId": "5d1e0c3a-7b5f-4c2e-9a61-0f4b8e2d7c19",
        "messageId": message_id,
        "timestamp": ts,
        "context": {"ip": "203.0.113.7", "library": {"name": "analytics.js", "version": "5.2.0"}},
    })
    .to_string()
    .into_bytes()
}

fn segment_track(user: &str, event: &str, message_id: &str, ts: &str, email: Option<&str>) -> Vec<u8> {
    let mut context = json!({"page": {"path": "/demo"}, "library": {"name": "analytics.js", "version": "5.2.0"}});
    if let Some(e) = email {
        context["traits"] = json!({"email": e, "company": "Northwind"});
    }
    json!({
        "type": "track",
        "event": event,
        "properties": {"seats": 25, "plan": "growth"},
        "userId": user,
        "messageId": message_id,
        "timestamp": ts,
        "context": context,
    })
    .to_string()
    .into_bytes()
}

fn anonymous_track(anonymous_id: &str, event: &str, message_id: &str, ts: &str) -> Vec<u8> {
    json!({
        "type": "track",
        "event": event,
        "properties": {"title": "The B2B buying-signal playbook"},
        "userId": null,
        "anonymousId": anonymous_id,
        "messageId": message_id,
        "timestamp": ts,
    })
    .to_string()
    .into_bytes()
}

fn anonymous_page(anonymous_id: &str, message_id: &str, ts: &str) -> Vec<u8> {
    json!({
        "type": "page",
        "properties": {"path": "/blog/buying-signals"},
        "userId": null,
        "anonymousId": anonymous_id,
        "messageId": message_id,
        "timestamp": ts,
    })
    .to_string()
    .into_bytes()
}

fn canonical(event_id: &str, prospect: &str, source: &str, kind: &str, ts: &str) -> Vec<u8> {
    json!({
        "event_id": event_id,
        "prospect_id": prospect,
        "source": source,
        "type": kind,
        "ts": ts,
        "properties": {"owner": "k.osei", "deal": {"id": "D-1042", "amount": {"value": 14400, "currency": "USD"}}},
    })
    .to_string()
    .into_bytes()
}

// ---- reading outputs and metrics ------------------------------------------------------------------

fn consumed(svc: &Service) -> f64 {
    total(&svc.metrics().render(), CONSUMED)
}

fn metric(svc: &Service, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(&svc.metrics().render(), name, labels).unwrap_or(0.0)
}

/// Stage changes read from the journey-events topic for one prospect: (from, to, signal, at).
fn stage_changes(records: &[Out], prospect: &str) -> Vec<(Value, Value, Value, Value)> {
    records
        .iter()
        .map(Out::json)
        .filter(|j| j["kind"] == "stage_changed" && j["prospect"] == prospect)
        .map(|j| (j["from"].clone(), j["to"].clone(), j["signal"].clone(), j["at"].clone()))
        .collect()
}

fn with_key<'a>(records: &'a [Out], key: &str) -> Vec<&'a Out> {
    records.iter().filter(|r| r.key.as_deref() == Some(key)).collect()
}

/// The latest funnel record of each shard key, prospects per stage summed over those shards.
fn funnel_in_stage(records: &[Out], group: &str, shards: i32) -> Option<BTreeMap<String, u64>> {
    let mut latest: BTreeMap<String, &Out> = BTreeMap::new();
    for r in records {
        let key = r.key.clone().unwrap_or_default();
        if latest.get(&key).is_none_or(|l| (l.partition, l.offset) < (r.partition, r.offset)) {
            latest.insert(key, r);
        }
    }
    let mut sum = BTreeMap::new();
    for shard in 0..shards {
        let j = latest.get(&format!("{group}/shard-{shard}"))?.json();
        assert_eq!(
            (j["kind"].as_str(), j["group"].as_str(), j["shard"].as_i64()),
            (Some("funnel"), Some(group), Some(shard.into()))
        );
        for st in j["stages"].as_array().expect("stages") {
            *sum.entry(st["stage"].as_str().expect("stage name").to_string()).or_insert(0) +=
                st["prospects"].as_u64().expect("prospects");
        }
    }
    Some(sum)
}

fn stages(expected: &[(&str, u64)]) -> BTreeMap<String, u64> {
    let names = ["aware", "interested", "evaluating", "deciding", "won", "adopting", "advocating", "lost"];
    names.iter().map(|n| (n.to_string(), expected.iter().find(|e| e.0 == *n).map_or(0, |e| e.1))).collect()
}

/// A b2b score: each signal's points halve every 14 days of event time up to `at`.
fn decayed_score(points: &[(f64, &str)], at: &str) -> f64 {
    let at = parse_rfc3339(at).unwrap().0;
    points
        .iter()
        .map(|(w, t)| w * 0.5f64.powf((at - parse_rfc3339(t).unwrap().0) as f64 / (14 * MS_PER_DAY) as f64))
        .sum()
}

// ---- 1 -------------------------------------------------------------------------------------------

#[test]
fn scripted_journey_yields_exact_alert_transitions_and_funnel() {
    let s = setup("journey");
    let svc = Service::start(&s);
    let (dana, visitor) = ("usr_northwind_dana", "anon-3b1f6c2e-9d");

    // The web part of the story first: the two input topics are consumed independently, so the
    // CRM events (later in event time) go in only once the web events are applied.
    let web_events = [
        keyed(dana, segment_page(dana, "ajs-d-1", "2026-03-02T09:00:00.000Z", "/pricing")),
        keyed(
            dana,
            segment_track(
                dana,
                "Demo Requested",
                "ajs-d-2",
                "2026-03-02T09:10:00.000Z",
                Some("Dana.Whitfield@Northwind.Example"),
            ),
        ),
        keyed(visitor, anonymous_page(visitor, "ajs-v-1", "2026-03-03T14:00:00.000Z")),
        keyed(visitor, anonymous_track(visitor, "Whitepaper Downloaded", "ajs-v-2", "2026-03-03T14:05:00.000Z")),
    ];
    produce(web(&s), &web_events);
    wait_until(support::DEADLINE, "the 4 web events are applied", || consumed(&svc) == 4.0);
    let clarification = "sfdc-case-5003X00002Lm9";
    let crm_events = [
        keyed(dana, canonical("sfdc-evt-7001", dana, "crm", "meeting_booked", "2026-03-03T10:00:00Z")),
        keyed(dana, canonical("sfdc-evt-7002", dana, "crm", "quote_sent", "2026-03-04T09:00:00Z")),
        keyed(dana, canonical(clarification, dana, "crm", "quote_clarification_requested", "2026-03-06T09:00:00Z")),
    ];
    produce(crm(&s), &crm_events);

    let hot = read_until(&s.kafka.topics.hot_leads, "Dana's hot lead", |r| !with_key(r, dana).is_empty());
    let leads = with_key(&hot, dana);
    let mut lead = leads[0].json();
    // Score: every signal's points decayed to the clarification; 1 + 25 + 15 + 5 + 20 points
    // stay under the `engaged` threshold of 60, so only `clarification_after_quote` fires.
    let score = decayed_score(
        &[
            (1.0, "2026-03-02T09:00:00Z"),
            (25.0, "2026-03-02T09:10:00Z"),
            (15.0, "2026-03-03T10:00:00Z"),
            (5.0, "2026-03-04T09:00:00Z"),
            (20.0, "2026-03-06T09:00:00Z"),
        ],
        "2026-03-06T09:00:00Z",
    );
    assert!(score < 60.0, "the script must stay under the engaged threshold: {score}");
    let got_score = lead["score"].as_f64().expect("score");
    assert!((got_score - score).abs() < 0.011, "score {got_score}, expected {score:.2}");
    lead.as_object_mut().unwrap().remove("score");
    assert_eq!(
        lead,
        json!({
            "kind": "hot_lead",
            "alert_id": alert_id(dana, "clarification_after_quote", clarification),
            "prospect": dana,
            "email": "dana.whitfield@northwind.example",
            "stage": "deciding",
            "classification": "current_opportunity",
            "rules": ["clarification_after_quote"],
            "reasons": [CLARIFICATION_REASON],
            "next_commitment": DECIDING_NEXT,
            "event_id": clarification,
            "signal": "quote_clarification_requested",
            "at": "2026-03-06T09:00:00.000Z",
        })
    );

    wait_until(support::DEADLINE, "the 3 CRM events are applied", || consumed(&svc) == 7.0);
    // Counted as they were emitted: with every event applied, these are all there will be.
    let m = svc.metrics().render();
    assert_eq!(total(&m, "microfunnel_stage_transitions_total"), 5.0, "{m}");
    assert_eq!(total(&m, "microfunnel_hot_leads_total"), 1.0, "{m}");
    let events = read_until(&s.kafka.topics.journey_events, "5 stage changes", |r| {
        stage_changes(r, dana).len() + stage_changes(r, visitor).len() >= 5
    });
    let t = |from: Value, to: &str, signal: &str, at: &str| (from, json!(to), json!(signal), json!(at));
    assert_eq!(
        stage_changes(&events, dana),
        [
            t(Value::Null, "aware", "page_viewed", "2026-03-02T09:00:00.000Z"),
            t(json!("aware"), "evaluating", "demo_requested", "2026-03-02T09:10:00.000Z"),
            t(json!("evaluating"), "deciding", "quote_sent", "2026-03-04T09:00:00.000Z"),
        ]
    );
    assert_eq!(
        stage_changes(&events, visitor),
        [
            t(Value::Null, "aware", "page_viewed", "2026-03-03T14:00:00.000Z"),
            t(json!("aware"), "interested", "content_downloaded", "2026-03-03T14:05:00.000Z"),
        ]
    );
    for e in &events {
        let j = e.json();
        assert_eq!(e.key.as_deref(), j["prospect"].as_str(), "journey events are keyed by prospect: {j}");
        assert_eq!(j["late"], false, "{j}");
        assert!(j["kind"] == "stage_changed", "no ghosted/stalled: the clarification answered the quote: {j}");
    }

    let group = s.kafka.group_id.clone();
    let want = stages(&[("interested", 1), ("deciding", 1)]);
    read_until(&s.kafka.topics.funnel, "the funnel of both prospects", |r| {
        funnel_in_stage(r, &group, 3).is_some_and(|got| got == want)
    });
    svc.stop().expect("graceful stop");
}

// ---- 2 -------------------------------------------------------------------------------------------

#[test]
fn malformed_inputs_go_to_dead_letter_with_reason_and_origin() {
    let mut s = setup("dead-letter");
    s.limits.max_bytes = 1024;
    let svc = Service::start(&s);
    let p = "acct_9931";
    let huge = json!({
        "type": "page", "userId": p, "messageId": "ajs-big", "timestamp": "2026-03-02T10:00:00Z",
        "properties": {"path": "/pricing", "search": "x".repeat(1500)},
    })
    .to_string();
    // (record, expected reason, a word the detail header must contain); None: a good event.
    let script: Vec<(In, Option<(&str, &str)>)> = vec![
        (keyed(p, canonical("evt-1", p, "web", "page_viewed", "2026-03-02T09:00:00Z")), None),
        (
            keyed(p, r#"{"type":"page","userId":"acct_9931","messageId":"ajs-cut""#).header("trace-id", "t-77"),
            Some(("invalid_json", "JSON")),
        ),
        (keyed(p, huge), Some(("too_large", "1024"))),
        (
            keyed(p, r#"{"event_id":"evt-3","source":"web","type":"page_viewed","ts":"2026-03-02T10:00:00Z"}"#),
            Some(("missing_field", "prospect_id")),
        ),
        (keyed(p, canonical("evt-3b", p, "web", "content_downloaded", "2026-03-02T10:15:00Z")), None),
        (
            keyed(p, canonical("evt-4", p, "web", "page_viewed", "2026-02-30T25:00:00Z")),
            Some(("bad_timestamp", "2026-02-30T25:00:00Z")),
        ),
        (
            keyed(p, canonical("evt-5", p, "web", "deal_won", "2026-03-02T10:30:00Z")),
            Some(("source_mismatch", "deal_won")),
        ),
        (unkeyed("not json at all"), Some(("invalid_json", "JSON"))),
        (keyed(p, canonical("evt-6", p, "web", "demo_requested", "2026-03-02T11:00:00Z")), None),
    ];
    let records: Vec<In> = script.iter().map(|(r, _)| r.clone()).collect();
    let at = produce(web(&s), &records);
    let bad = script.iter().filter(|(_, e)| e.is_some()).count();

    let dlq = read_until(&s.kafka.topics.dead_letter, "every malformed input", |r| r.len() >= bad);
    assert_eq!(dlq.len(), bad);
    for d in &dlq {
        let origin = (
            d.header("microfunnel.source.partition").and_then(|v| v.parse::<i32>().ok()),
            d.header("microfunnel.source.offset").and_then(|v| v.parse::<i64>().ok()),
        );
        let i = at
            .iter()
            .position(|&(p, o)| (Some(p), Some(o)) == origin)
            .unwrap_or_else(|| panic!("dead letter from nowhere we produced: {origin:?}\n{}", support::show(d)));
        let (input, expected) = &script[i];
        let (reason, in_detail) =
            expected.unwrap_or_else(|| panic!("good event {i} was dead-lettered:\n{}", support::show(d)));
        assert_eq!(d.payload, input.payload, "record {i}: the original bytes");
        assert_eq!(d.key, input.key, "record {i}: the original key");
        assert_eq!(d.header("microfunnel.reason"), Some(reason), "record {i}");
        assert_eq!(d.header("microfunnel.source.topic"), Some(web(&s)), "record {i}");
        let detail = d.header("microfunnel.detail").unwrap_or_default();
        assert!(detail.contains(in_detail), "record {i}: detail {detail:?} should mention {in_detail:?}");
        for (k, v) in &input.headers {
            assert_eq!(d.header(k), Some(v.as_str()), "record {i}: original header {k} kept");
        }
    }

    // The good event after the bad ones in the same partition was still applied.
    let events = read_until(&s.kafka.topics.journey_events, "the later demo request", |r| {
        stage_changes(r, p).iter().any(|c| c.1 == "evaluating")
    });
    let changes: Vec<(Value, Value)> = stage_changes(&events, p).into_iter().map(|c| (c.0, c.1)).collect();
    let expected = [(Value::Null, "aware"), (json!("aware"), "interested"), (json!("interested"), "evaluating")];
    assert_eq!(changes, expected.map(|(from, to)| (from, json!(to))));

    // Counted by reason; only the three good events count as consumed; offsets move past them all.
    let ends = end_offsets([(web(&s), at.as_slice())]);
    wait_until(support::DEADLINE, "every input offset is committed", || {
        committed(&s.kafka.group_id, &s.kafka.input_topics) == ends
    });
    let m = svc.metrics().render();
    for (reason, n) in [
        ("invalid_json", 2.0),
        ("too_large", 1.0),
        ("missing_field", 1.0),
        ("bad_timestamp", 1.0),
        ("source_mismatch", 1.0),
    ] {
        assert_eq!(sample(&m, "microfunnel_events_rejected_total", &[("reason", reason)]), Some(n), "{reason}");
    }
    assert_eq!(total(&m, CONSUMED), 3.0, "{m}");
    svc.stop().expect("graceful stop");
}

// ---- 3 -------------------------------------------------------------------------------------------

#[test]
fn metrics_endpoint_reports_the_families_with_values() {
    let s = setup("metrics");
    let svc = Service::start(&s);
    let email = "Priya.Raman@Contoso.Example";
    let ids = ["usr_contoso_priya", "usr_fabrikam_lee", "usr_tailspin_ana", "usr_adatum_omar"];
    let mut records = Vec::new();
    for (n, (id, pages)) in ids.iter().zip([3, 2, 1, 1]).enumerate() {
        for k in 0..pages {
            let ts = format!("2026-03-02T1{n}:0{k}:00.000Z");
            let mut page: Value = serde_json::from_slice(&segment_page(id, &format!("ajs-{id}-{k}"), &ts, "/pricing"))
                .expect("a JSON page call");
            if n == 0 && k == 0 {
                page["context"]["traits"] = json!({"email": email});
            }
            records.push(keyed(id, page.to_string()));
        }
    }
    records.push(keyed(ids[1], segment_track(ids[1], "Quote Requested", "ajs-q-1", "2026-03-02T11:30:00.000Z", None)));
    records.push(keyed(ids[2], "{\"type\":\"page\",\"userId\":"));
    let at = produce(web(&s), &records);

    wait_until(support::DEADLINE, "8 events applied and 1 rejected", || {
        let m = svc.metrics().render();
        total(&m, CONSUMED) == 8.0 && total(&m, "microfunnel_events_rejected_total") == 1.0
    });
    // Gauges follow at the next funnel interval, lag after the next 5-second sample.
    let written: Vec<i32> = at.iter().map(|a| a.0).collect();
    let lag_zero = |m: &str| {
        written.iter().all(|p| {
            sample(m, "microfunnel_consumer_lag", &[("topic", web(&s)), ("partition", &p.to_string())]) == Some(0.0)
        })
    };
    let mut body = String::new();
    wait_until(support::DEADLINE, "stage gauges and lag are reported", || {
        let (status, b) = http_get(svc.addr(), "/metrics");
        body = b;
        // The changelog: a record per changed prospect (4) and a checkpoint record per shard.
        let changelog = sample(&body, "microfunnel_records_sent_total", &[("output", "changelog")]);
        status == 200
            && sample(&body, "microfunnel_prospects", &[("stage", "aware")]) == Some(3.0)
            && lag_zero(&body)
            && changelog >= Some(5.0)
    });
    let m = body.as_str();
    let v = |name: &str, labels: &[(&str, &str)]| {
        sample(m, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?}:\n{m}"))
    };
    assert_eq!(v(CONSUMED, &[("source", "web"), ("signal", "page_viewed")]), 7.0);
    assert_eq!(v(CONSUMED, &[("source", "web"), ("signal", "quote_requested")]), 1.0);
    assert_eq!(v("microfunnel_events_rejected_total", &[("reason", "invalid_json")]), 1.0);
    assert_eq!(v("microfunnel_events_rejected_total", &[("reason", "too_large")]), 0.0);
    assert_eq!(v("microfunnel_stage_transitions_total", &[("from", "new"), ("to", "aware")]), 4.0);
    assert_eq!(v("microfunnel_stage_transitions_total", &[("from", "aware"), ("to", "deciding")]), 1.0);
    assert_eq!(total(m, "microfunnel_stage_transitions_total"), 5.0);
    assert_eq!(v("microfunnel_prospects", &[("stage", "deciding")]), 1.0);
    assert_eq!(v("microfunnel_prospects", &[("stage", "won")]), 0.0);
    assert_eq!(v("microfunnel_prospects_total", &[]), 4.0);
    assert_eq!(v("microfunnel_hot_leads_total", &[]), 1.0);
    let sent = |output: &str| v("microfunnel_records_sent_total", &[("output", output)]);
    assert_eq!(sent("hot_leads"), 1.0);
    assert_eq!(sent("journey_events"), 5.0, "one per stage transition");
    assert_eq!(sent("dead_letter"), 1.0);
    assert!(sent("funnel") >= 3.0, "a funnel record per shard each interval: {m}");
    let latency = "microfunnel_processing_latency_seconds";
    assert_eq!(v(&format!("{latency}_count"), &[("from", "consume")]), 9.0, "every input, rejected ones too");
    assert_eq!(v(&format!("{latency}_count"), &[("from", "event_time")]), 8.0);
    assert_eq!(v(&format!("{latency}_bucket"), &[("from", "consume"), ("le", "+Inf")]), 9.0);
    assert!(v(&format!("{latency}_bucket"), &[("from", "consume"), ("le", "5")]) >= 1.0, "{m}");
    assert!(v(&format!("{latency}_sum"), &[("from", "event_time")]) >= 0.0);
    assert!(v("microfunnel_rebalances_total", &[("kind", "assign")]) >= 1.0);
    assert_eq!(v("microfunnel_shards", &[]), 3.0);
    assert_eq!(v("microfunnel_producer_errors_total", &[]), 0.0);
    assert!(m.contains("# TYPE microfunnel_processing_latency_seconds histogram"), "{m}");
    for secret in ids.iter().copied().chain([email, &email.to_lowercase(), "@"]) {
        assert!(!m.contains(secret), "{secret} must not appear in /metrics");
    }

    assert_eq!(http_get(svc.addr(), "/healthz"), (200, "ok\n".to_string()));
    assert_eq!(http_get(svc.addr(), "/readyz"), (200, "ready\n".to_string()));
    svc.request_stop();
    wait_until(Duration::from_secs(10), "/readyz turns 503 when stopping", || http_get(svc.addr(), "/readyz").0 == 503);
    svc.wait().expect("graceful stop");
}

// ---- 4 -------------------------------------------------------------------------------------------

/// Two events for each of `n` prospects: a page view, then a whitepaper download.
fn batch(tag: &str, n: usize) -> Vec<In> {
    let mut out = Vec::new();
    for i in 0..n {
        let id = format!("usr_{tag}_{i:03}");
        out.push(keyed(&id, segment_page(&id, &format!("ajs-{tag}-{i}-a"), "2026-03-02T09:00:00.000Z", "/")));
        out.push(keyed(
            &id,
            segment_track(&id, "Whitepaper Downloaded", &format!("ajs-{tag}-{i}-b"), "2026-03-02T09:05:00.000Z", None),
        ));
    }
    out
}

#[test]
fn two_instances_split_partitions_and_hand_over_without_skipping() {
    let mut s = setup("handover");
    // No periodic checkpoints: offsets are committed only by the barriers a revoke and a stop
    // run, so a handover that skipped them would replay or lose events.
    s.pipeline.commit_interval_ms = 600_000;
    let (one, two) = (Service::start(&s), Service::start(&s));
    let shards = |svc: &Service| svc.metrics().shards.get();
    wait_until(JOIN, "both instances hold shards", || {
        shards(&one) > 0 && shards(&two) > 0 && shards(&one) + shards(&two) == 3
    });

    let first = batch("first", 30);
    let at_first = produce(web(&s), &first);
    wait_until(support::DEADLINE, "the first batch is applied", || consumed(&one) + consumed(&two) == 60.0);
    let (one_first, two_first) = (consumed(&one), consumed(&two));
    assert!(one_first > 0.0 && two_first > 0.0, "both instances worked: {one_first} + {two_first}");

    let two_metrics = two.metrics();
    two.stop().expect("graceful stop of the second instance");
    wait_until(JOIN, "the survivor holds every shard", || shards(&one) == 3);
    let second = batch("second", 30);
    let at_second = produce(web(&s), &second);
    wait_until(support::DEADLINE, "the second batch is applied", || consumed(&one) + two_first >= 120.0);
    let one_metrics = one.metrics();
    one.stop().expect("graceful stop of the survivor");

    let ends = end_offsets([(web(&s), at_first.as_slice()), (web(&s), at_second.as_slice())]);
    assert_eq!(committed(&s.kafka.group_id, &s.kafka.input_topics), ends, "every input offset is committed");
    let (one_m, two_m) = (one_metrics.render(), two_metrics.render());
    assert_eq!(total(&two_m, CONSUMED), two_first, "the stopped instance consumed nothing more");
    assert_eq!(total(&one_m, CONSUMED) + two_first, 120.0, "each event processed once across both instances");
    for m in [&one_m, &two_m] {
        assert_eq!(total(m, "microfunnel_duplicate_events_total"), 0.0);
        assert!(sample(m, "microfunnel_rebalances_total", &[("kind", "assign")]).unwrap_or(0.0) >= 1.0);
    }
    // The survivor was assigned at least at the group's first generation and after the leave,
    // and gave its partitions back for the second instance's join or leave.
    assert!(sample(&one_m, "microfunnel_rebalances_total", &[("kind", "assign")]).unwrap_or(0.0) >= 2.0);
    assert!(sample(&one_m, "microfunnel_rebalances_total", &[("kind", "revoke")]).unwrap_or(0.0) >= 1.0);
    let new_prospects = |m: &str| sample(m, "microfunnel_stage_transitions_total", &[("from", "new"), ("to", "aware")]);
    assert_eq!(new_prospects(&one_m).unwrap_or(0.0) + new_prospects(&two_m).unwrap_or(0.0), 60.0);

    // One stage change per prospect and step: nothing skipped, nothing applied twice.
    let events = read_until(&s.kafka.topics.journey_events, "120 stage changes", |r| r.len() >= 120);
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in &events {
        let j = e.json();
        let step = (j["prospect"].as_str().unwrap_or_default().to_string(), j["to"].as_str().unwrap_or_default());
        *seen.entry((step.0, step.1.to_string())).or_default() += 1;
    }
    for r in first.iter().chain(&second) {
        let id = r.key.clone().unwrap_or_default();
        for to in ["aware", "interested"] {
            assert_eq!(seen.get(&(id.clone(), to.to_string())), Some(&1), "{id} -> {to}");
        }
    }
}

// ---- 5 -------------------------------------------------------------------------------------------

#[test]
fn graceful_stop_then_restart_resumes_from_committed_offsets() {
    let s = setup("restart");
    let (p1, p2, p3, p4) = ("usr_first_1", "usr_first_2", "usr_first_3", "usr_second_4");
    let first = [
        keyed(p1, segment_page(p1, "ajs-1", "2026-03-02T09:00:00.000Z", "/pricing")),
        keyed(p1, segment_track(p1, "Quote Requested", "ajs-2", "2026-03-02T09:20:00.000Z", None)),
        keyed(p2, segment_page(p2, "ajs-3", "2026-03-02T09:30:00.000Z", "/")),
        keyed(p3, segment_page(p3, "ajs-4", "2026-03-02T09:40:00.000Z", "/")),
        keyed(p3, segment_track(p3, "Ebook Downloaded", "ajs-5", "2026-03-02T09:45:00.000Z", None)),
    ];
    let at_first = produce(web(&s), &first);
    let svc = Service::start(&s);
    wait_until(support::DEADLINE, "the first batch is applied", || consumed(&svc) == 5.0);
    assert_eq!(metric(&svc, "microfunnel_hot_leads_total", &[]), 1.0);
    svc.stop().expect("graceful stop");
    let ends = end_offsets([(web(&s), at_first.as_slice())]);
    assert_eq!(committed(&s.kafka.group_id, &s.kafka.input_topics), ends, "a graceful stop commits what it applied");

    let second = [
        keyed(p4, segment_page(p4, "ajs-6", "2026-03-03T09:00:00.000Z", "/pricing")),
        keyed(p4, segment_track(p4, "Quote Requested", "ajs-7", "2026-03-03T09:10:00.000Z", None)),
        keyed(p2, segment_track(p2, "Ebook Downloaded", "ajs-8", "2026-03-03T09:20:00.000Z", None)),
        keyed(p1, segment_page(p1, "ajs-9", "2026-03-03T09:30:00.000Z", "/docs")),
    ];
    let at_second = produce(web(&s), &second);
    let svc = Service::start(&s);
    let ends = end_offsets([(web(&s), at_first.as_slice()), (web(&s), at_second.as_slice())]);
    wait_until(support::DEADLINE, "the second batch is committed", || {
        committed(&s.kafka.group_id, &s.kafka.input_topics) == ends
    });
    assert_eq!(consumed(&svc), 4.0, "the restarted instance resumed after the first batch");
    assert_eq!(metric(&svc, "microfunnel_hot_leads_total", &[]), 1.0, "only the new quote request alerts");
    svc.stop().expect("graceful stop");

    let leads = read_until(&s.kafka.topics.hot_leads, "both batches' alerts", |r| {
        !with_key(r, p1).is_empty() && !with_key(r, p4).is_empty()
    });
    let mut leads: Vec<Value> = leads.iter().map(Out::json).collect();
    leads.sort_by_key(|l| l["prospect"].as_str().unwrap_or_default().to_string());
    let prospects: Vec<&str> = leads.iter().map(|l| l["prospect"].as_str().unwrap_or_default()).collect();
    assert_eq!(prospects, [p1, p4], "one alert each, the first batch's not raised again");
    for (j, (p, id)) in leads.iter().zip([(p1, "ajs-2"), (p4, "ajs-7")]) {
        assert_eq!(j["alert_id"], alert_id(p, "quote_requested", id));
        assert_eq!(j["reasons"], json!([QUOTE_REASON]));
    }
}

// ---- 6 -------------------------------------------------------------------------------------------

#[test]
fn copartitioning_is_checked() {
    let s = settings("copartition");
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin client");
    let topics =
        [NewTopic::new(web(&s), 3, TopicReplication::Fixed(1)), NewTopic::new(crm(&s), 2, TopicReplication::Fixed(1))];
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in rt.block_on(admin.create_topics(&topics, &opts)).expect("create topics") {
        r.unwrap_or_else(|(t, e)| panic!("create {t}: {e}"));
    }

    // Refused at start, before the HTTP port is bound (`tests/start_refusals.rs`).
    let err = match microfunnel::app::start(s.clone(), support::journey()) {
        Ok(_) => panic!("input topics with 3 and 2 partitions are refused"),
        Err(e) => e.to_string(),
    };
    for part in [format!("{}: 3", web(&s)), format!("{}: 2", crm(&s))] {
        assert!(err.contains(&part), "{err:?} should name {part:?}");
    }
}
