//! A HubSpot CRM topic through the service, against a real Kafka-API broker (Tansu, see
//! `support`): the web topic carries Segment calls, the CRM topic HubSpot webhook deliveries
//! (`[inputs."<crm>"] format = "hubspot"`) keyed by contact id. Every shard's state, alert and
//! journey event must equal `replay --format segment --format hubspot` of the same two files,
//! the clarification after the quote must be hot, and each bad element dead-lettered alone.

mod support;

use std::time::Duration;

use microfunnel::config::InputSettings;
use serde_json::{Value, json};
use support::*;

const PARTITIONS: usize = 3;
const FINISH: Duration = Duration::from_secs(120);

/// The contact each line of `tests/fixtures/crm/hubspot.jsonl` is about: its Kafka key.
const HUBSPOT_KEYS: [&str; 14] =
    ["901", "901", "901", "901", "901", "901", "902", "904", "903", "901", "901", "901", "901", "902"];

#[test]
fn hubspot_webhooks_on_the_crm_topic_give_what_replay_gives() {
    let mut s = setup("crm-hubspot");
    let crm_topic = crm(&s).to_string();
    s.inputs.insert(crm_topic.clone(), InputSettings { format: "hubspot".into(), ..InputSettings::default() });
    s.inputs.insert(web(&s).to_string(), InputSettings { format: "segment".into(), ..InputSettings::default() });

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let web_file = dir.join(format!("{}-web.jsonl", s.kafka.group_id));
    let web_lines = [
        r#"{"type":"page","name":"Pricing","userId":"901","messageId":"w-1","timestamp":"2026-03-02T08:30:00.000Z"}"#,
        r#"{"type":"track","event":"Whitepaper Downloaded","userId":"904","messageId":"w-2","timestamp":"2026-03-04T11:00:00.000Z"}"#,
    ];
    std::fs::write(&web_file, web_lines.join("\n") + "\n").unwrap();
    let crm_file = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crm/hubspot.jsonl");
    let oracle = oracle_with(&web_file, &crm_file, PARTITIONS, &["--format", "segment", "--format", "hubspot"]);

    let web_at = produce(web(&s), &records(&web_file));
    let text = std::fs::read_to_string(&crm_file).unwrap();
    let crm_records: Vec<In> = text.lines().zip(HUBSPOT_KEYS).map(|(l, k)| keyed(k, l.as_bytes().to_vec())).collect();
    assert_eq!(crm_records.len(), HUBSPOT_KEYS.len());
    let crm_at = produce(&crm_topic, &crm_records);
    let messages: i64 =
        end_offsets([(web(&s), web_at.as_slice()), (crm_topic.as_str(), crm_at.as_slice())]).values().sum();

    let svc = Service::start(&s);
    let alerts = assert_equals_oracle(&svc, &s, &oracle, messages, FINISH);
    let hot: Vec<_> = alerts.iter().map(|a| (a["prospect"].clone(), a["rules"].clone())).collect();
    assert_eq!(hot, [(json!("901"), json!(["clarification_after_quote"]))]);

    let events = read_until(&s.kafka.topics.journey_events, "the oracle's journey events", |r| {
        r.len() >= oracle.journey_events.len()
    });
    let mut got: Vec<String> = events.iter().map(|r| r.json().to_string()).collect();
    got.sort();
    assert_eq!(got, oracle.journey_events);
    let quotes = events.iter().map(Out::json).filter(|e| e["signal"] == "quote_sent" && e["prospect"] == "901").count();
    assert_eq!(quotes, 1, "the retry and the same-stage edit fire nothing");

    let dead = read_until(&s.kafka.topics.dead_letter, "three bad elements", |r| r.len() >= 3);
    let mut reasons: Vec<(String, String)> = dead
        .iter()
        .map(|d| {
            (d.header("microfunnel.reason").unwrap().to_string(), d.header("microfunnel.detail").unwrap().to_string())
        })
        .collect();
    reasons.sort();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert_eq!(reasons[0].0, "unknown_object");
    assert_eq!(reasons[1].0, "unknown_prospect");
    assert!(reasons[1].1.contains("deal 18200420555"), "{reasons:?}");
    assert_eq!(reasons[2].0, "wrong_shape");
    assert!(reasons[2].1.starts_with("batch item 1: "), "{reasons:?}");
    svc.stop().unwrap();
}

/// The CRM memory is checkpointed with the shard: after a graceful restart, the deal's contact
/// link and stage, learnt before it, still make the same-stage edit fire nothing and the win
/// reach the contact, as replay of the whole topic gives, and nothing below the restored position
/// is read again (`tests/crm_persist.rs` does the same after kill -9).
#[test]
fn a_restored_shard_keeps_its_crm_memory() {
    let mut s = setup("crm-restore");
    let crm_topic = crm(&s).to_string();
    s.inputs.insert(crm_topic.clone(), InputSettings { format: "hubspot".into(), ..InputSettings::default() });
    let hubspot = std::fs::read_to_string(
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crm/hubspot.jsonl"),
    )
    .unwrap();
    let line = |n: usize| hubspot.lines().nth(n - 1).unwrap().to_string();
    // Before the restart: contact, deal, association (1), a first stage (2), the quote (3);
    // after it: the same stage set again (5), the win (11).
    let (before, after) = ([line(1), line(2), line(3)], [line(5), line(11)]);
    // One web key per partition, so that every shard checkpoints in both runs.
    let keys: Vec<String> = (0..3).map(|p| key_in_partition("v", p, PARTITIONS as u32)).collect();
    let page =
        |k: &str, at: &str| format!(r#"{{"type":"page","userId":"{k}","messageId":"{k}-{at}","timestamp":"{at}"}}"#);
    let web_before: Vec<String> = keys.iter().map(|k| page(k, "2026-03-02T08:30:00.000Z")).collect();
    let web_after: Vec<String> = keys.iter().map(|k| page(k, "2026-03-07T08:30:00.000Z")).collect();

    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let write = |suffix: &str, lines: Vec<String>| {
        let path = dir.join(format!("{}-{suffix}.jsonl", s.kafka.group_id));
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    };
    let web_file = write("web", web_before.iter().chain(&web_after).cloned().collect());
    let crm_file = write("crm", before.iter().chain(&after).cloned().collect());
    let oracle = oracle_with(&web_file, &crm_file, PARTITIONS, &["--format", "auto", "--format", "hubspot"]);

    let web_records = |lines: &[String]| -> Vec<In> {
        lines.iter().zip(&keys).map(|(l, k)| keyed(k, l.as_bytes().to_vec())).collect()
    };
    let crm_records =
        |lines: &[String]| -> Vec<In> { lines.iter().map(|l| keyed("901", l.as_bytes().to_vec())).collect() };

    let web_at = produce(web(&s), &web_records(&web_before));
    let crm_at = produce(&crm_topic, &crm_records(&before));
    let first: i64 =
        end_offsets([(web(&s), web_at.as_slice()), (crm_topic.as_str(), crm_at.as_slice())]).values().sum();
    let svc = Service::start(&s);
    checkpointed(&svc, first, PARTITIONS, FINISH);
    svc.stop().unwrap();

    // Restored, the shards start where their state ends (no rewind: the second run's messages
    // are produced once it is ready, so they start a record batch of their own).
    s.kafka.resume_rewind = 0;
    let svc = Service::start(&s);
    wait_until(FINISH, "the restored service is ready", || http_get(svc.addr(), "/readyz").0 == 200);
    let web_at = produce(web(&s), &web_records(&web_after));
    let crm_at = produce(&crm_topic, &crm_records(&after));
    // End offsets: the messages of both runs.
    let messages: i64 =
        end_offsets([(web(&s), web_at.as_slice()), (crm_topic.as_str(), crm_at.as_slice())]).values().sum();
    let digests = checkpointed(&svc, messages, PARTITIONS, FINISH);
    assert_eq!(digests, oracle.shards, "every shard's state equals replay's of the whole topics");

    let events = read_until(&s.kafka.topics.journey_events, "the oracle's journey events", |r| {
        r.len() >= oracle.journey_events.len()
    });
    let signals: Vec<(Value, Value)> = events
        .iter()
        .map(Out::json)
        .filter(|e| e["prospect"] == "901" && e["kind"] == "stage_changed")
        .map(|e| (e["signal"].clone(), e["at"].clone()))
        .collect();
    assert_eq!(
        signals,
        [
            (json!("quote_sent"), json!("2026-03-02T09:00:00.000Z")),
            (json!("deal_won"), json!("2026-03-06T15:00:00.000Z"))
        ],
        "no second quote from the edit, and the win linked to its contact"
    );
    let m = svc.metrics().render();
    assert_eq!(total(&m, "microfunnel_events_rejected_total"), 0.0, "nothing dead-lettered (no unknown_prospect)");
    assert_eq!(total(&m, "microfunnel_crm_rebuild_messages_total"), 0.0, "the memory came with the state");
    svc.stop().unwrap();
}
