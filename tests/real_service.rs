//! The examples of "correct on real traffic" through the service, against a real Kafka-API broker
//! (Tansu, see `support`): Segment calls as trackers send them on the web topic, CRM changes on
//! the CRM topic. Every output and every shard's state must equal `replay` of the same two
//! per-topic files, and each example must give its right result.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const PARTITIONS: usize = 3;
const FINISH: Duration = Duration::from_secs(120);

fn files(name: &str) -> (PathBuf, PathBuf) {
    let web = [
        // 1. a device clock at year 9999 (refused), then a real quote request
        r#"{"type":"page","anonymousId":"anon-y9","messageId":"m-0701","timestamp":"9999-05-28T13:13:23.260Z"}"#,
        // 4. placeholder user ids from three browsers
        r#"{"type":"track","event":"Demo Requested","userId":"undefined","anonymousId":"anon-1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z"}"#,
        // 3. a redelivery after four other events
        r#"{"type":"track","event":"Demo Requested","userId":"usr_d1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z"}"#,
        // 5. a batch envelope, a group call, a camelCase name with a +0000 offset
        r#"{"batch":[{"type":"track","event":"Quote Requested","userId":"usr_e1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z"}]}"#,
        r#"{"type":"track","event":"demoRequested","userId":"usr_e2","messageId":"m-3","timestamp":"2026-03-02T09:00:00.000+0000"}"#,
        r#"{"type":"track","event":"Webinar Registered","userId":"usr_d1","messageId":"m-2","timestamp":"2026-03-02T09:01:00.000Z"}"#,
        r#"{"type":"track","event":"Demo Requested","userId":"undefined","anonymousId":"anon-2","messageId":"m-2","timestamp":"2026-03-02T09:01:00.000Z"}"#,
        r#"{"type":"track","event":"Whitepaper Downloaded","userId":"usr_d1","messageId":"m-3","timestamp":"2026-03-02T09:02:00.000Z"}"#,
        r#"{"type":"track","event":"Webinar Registered","userId":"undefined","anonymousId":"anon-3","messageId":"m-3","timestamp":"2026-03-02T09:02:00.000Z"}"#,
        r#"{"type":"track","event":"Ebook Downloaded","userId":"usr_d1","messageId":"m-4","timestamp":"2026-03-02T09:03:00.000Z"}"#,
        r#"{"type":"page","userId":"usr_d1","messageId":"m-5","timestamp":"2026-03-02T09:04:00.000Z"}"#,
        r#"{"type":"group","userId":"usr_e1","groupId":"acct_1","messageId":"m-2","timestamp":"2026-03-02T09:00:05.000Z"}"#,
        r#"{"type":"track","event":"Demo Requested","userId":"usr_d1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z"}"#,
        r#"{"type":"track","event":"Quote Requested","userId":"usr_7002","messageId":"m-0702","timestamp":"2026-03-02T09:10:00.000Z"}"#,
    ];
    let crm = [
        // 2. a clarification synced before the quote it answers
        r#"{"event_id":"c1","prospect_id":"usr_b1","source":"crm","type":"quote_clarification_requested","ts":"2026-03-03T10:20:00Z"}"#,
        r#"{"event_id":"q1","prospect_id":"usr_b1","source":"crm","type":"quote_sent","ts":"2026-03-03T10:00:00Z"}"#,
        // 6. a lost deal reopened by a new quote
        r#"{"event_id":"l1","prospect_id":"usr_f1","source":"crm","type":"deal_lost","ts":"2026-03-10T09:00:00Z"}"#,
        r#"{"event_id":"q2","prospect_id":"usr_f1","source":"crm","type":"quote_sent","ts":"2026-04-22T09:00:00Z"}"#,
        r#"{"event_id":"c2","prospect_id":"usr_f1","source":"crm","type":"quote_clarification_requested","ts":"2026-04-23T09:00:00Z"}"#,
    ];
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let write = |suffix: &str, lines: &[&str]| {
        let path = dir.join(format!("{name}-{suffix}.jsonl"));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    (write("web", &web), write("crm", &crm))
}

#[test]
fn the_real_traffic_examples_give_their_right_results_through_the_service_as_in_replay() {
    let s = setup("real-traffic");
    let (web_file, crm_file) = files(&s.kafka.group_id);
    let oracle = oracle(&web_file, &crm_file, PARTITIONS);
    let web_at = produce(web(&s), &records(&web_file));
    let crm_at = produce(crm(&s), &records(&crm_file));
    let messages: i64 = end_offsets([(web(&s), web_at.as_slice()), (crm(&s), crm_at.as_slice())]).values().sum();

    let svc = Service::start(&s);
    let alerts = assert_equals_oracle(&svc, &s, &oracle, messages, FINISH);
    let lead = |p: &str| {
        alerts
            .iter()
            .filter(|a| a["prospect"] == p)
            .map(|a| (a["rules"].clone(), a["event_id"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        lead("usr_7002"),
        [(json!(["quote_requested"]), json!("m-0702"))],
        "1: not late after a year-9999 clock"
    );
    assert_eq!(
        lead("usr_b1"),
        [(json!(["clarification_after_quote"]), json!("c1"))],
        "2: the clarification that came first"
    );
    assert!(lead("usr_d1").is_empty(), "3: the redelivery is dropped");
    assert_eq!(lead("usr_e1"), [(json!(["quote_requested"]), json!("m-1"))], "5: the batch's item");
    assert_eq!(lead("usr_f1"), [(json!(["clarification_after_quote"]), json!("c2"))], "6: the reopened deal");

    let events = read_until(&s.kafka.topics.journey_events, "the oracle's journey events", |r| {
        r.len() >= oracle.journey_events.len()
    });
    let mut got: Vec<String> = events.iter().map(|r| r.json().to_string()).collect();
    got.sort();
    assert_eq!(got, oracle.journey_events);
    let stage = |p: &str| -> Vec<(Value, Value)> {
        events
            .iter()
            .map(Out::json)
            .filter(|e| e["prospect"] == p && e["kind"] == "stage_changed")
            .map(|e| (e["from"].clone(), e["to"].clone()))
            .collect()
    };
    assert_eq!(stage("anon-1"), [(Value::Null, json!("evaluating"))], "4: a placeholder user id falls back");
    assert_eq!(stage("anon-3"), [(Value::Null, json!("interested"))]);
    assert!(stage("undefined").is_empty());
    assert_eq!(stage("usr_e2"), [(Value::Null, json!("evaluating"))], "5: camelCase and +0000");
    assert_eq!(stage("usr_f1"), [(Value::Null, json!("lost")), (json!("lost"), json!("deciding"))]);
    assert!(events.iter().all(|e| e.json()["kind"] != "ghosted"), "2: the quote was answered");

    let dead = read_until(&s.kafka.topics.dead_letter, "the year-9999 page view", |r| !r.is_empty());
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].header("microfunnel.reason"), Some("bad_timestamp"));
    assert!(dead[0].header("microfunnel.detail").unwrap().contains("out of range"));

    let m = svc.metrics().render();
    assert_eq!(total(&m, "microfunnel_duplicate_events_total"), 1.0);
    assert_eq!(total(&m, "microfunnel_events_ignored_total"), 1.0, "the group call");
    assert_eq!(total(&m, "microfunnel_reopened_total"), 1.0);
    assert_eq!(total(&m, "microfunnel_events_rejected_total"), 1.0);
    svc.stop().unwrap();
}
