//! The event-time merge of a shard's input partitions, against a real Kafka-API broker (Tansu, see
//! `support`): the web topic's weeks of history are produced entirely before the CRM topic's (a
//! backfill, a connector that starts late), then the service starts with both topics full. Its
//! outputs and per-shard state must equal `replay` of the same two per-topic files, which merges
//! each shard's lines by event time.
//!
//! `MICROFUNNEL_TEST_MERGE_OFF=1` runs the same test with the merge off
//! (`pipeline.merge_buffer_messages = 0`, `pipeline.max_input_wait_ms = 0`): it then fails, as
//! the service did before the merge (the CRM events arrive behind the website's watermark).

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use microfunnel::codec::{Limits, decode};
use serde_json::json;
use support::*;

const PARTITIONS: usize = 3;
/// Joining the group (up to half the session timeout on Tansu) and reading everything.
const FINISH: Duration = Duration::from_secs(120);

fn canonical(id: &str, prospect: &str, source: &str, kind: &str, ts: &str) -> String {
    json!({"event_id": id, "prospect_id": prospect, "source": source, "type": kind, "ts": ts}).to_string()
}

/// `gen`'s traffic as the two topics would receive it, plus a scenario where the order matters:
/// usr_m1 gets a quote and asks about it 20 minutes later, usr_m2's quote is never answered,
/// and both browse the website three weeks later.
fn per_topic_files(name: &str) -> (PathBuf, PathBuf) {
    let (web, crm) = gen_per_topic(name, &[]);
    insert_in_time_order(
        &crm,
        &[
            canonical("m-q1", "usr_m1", "crm", "quote_sent", "2026-01-06T10:00:00Z"),
            canonical("m-c1", "usr_m1", "crm", "quote_clarification_requested", "2026-01-06T10:20:00Z"),
            canonical("m-q2", "usr_m2", "crm", "quote_sent", "2026-01-07T09:00:00Z"),
        ],
    );
    let views: Vec<String> = (0..3)
        .flat_map(|d| {
            let ts = format!("2026-01-{:02}T08:00:00Z", 27 + d);
            [
                canonical(&format!("m-w1-{d}"), "usr_m1", "web", "page_viewed", &ts),
                canonical(&format!("m-w2-{d}"), "usr_m2", "web", "page_viewed", &ts),
            ]
        })
        .collect();
    insert_in_time_order(&web, &views);
    (web, crm)
}

/// Inserts each line (in order) before the first line of the file with a later event time, as a
/// source would have sent it.
fn insert_in_time_order(path: &Path, new: &[String]) {
    let journey = journey();
    let ts = |l: &str| decode(l.as_bytes(), &journey, &Limits::default()).ok().map(|e| e.ts);
    let mut lines: Vec<String> = std::fs::read_to_string(path).unwrap().lines().map(str::to_string).collect();
    for l in new {
        let at = ts(l).unwrap();
        let i = lines.iter().position(|x| ts(x).is_some_and(|t| t > at)).unwrap_or(lines.len());
        lines.insert(i, l.clone());
    }
    std::fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

#[test]
fn a_topic_read_ahead_of_the_other_gives_the_replay_of_both_merged_by_event_time() {
    backfill("merge-backfill", None);
}

/// Queues of 100 messages (each web partition holds about 700): partitions are paused and
/// resumed all along (read again from `kafka.resume_rewind` before on Tansu), same result.
#[test]
fn a_small_merge_buffer_pauses_partitions_and_gives_the_same_result() {
    backfill("merge-paused", Some(100));
}

fn backfill(test: &str, buffer: Option<usize>) {
    let mut s = setup(test);
    if let Some(n) = buffer {
        s.pipeline.merge_buffer_messages = n;
    }
    if std::env::var_os("MICROFUNNEL_TEST_MERGE_OFF").is_some() {
        s.pipeline.merge_buffer_messages = 0;
        s.pipeline.max_input_wait_ms = 0;
    }
    let (web_file, crm_file) = per_topic_files(&s.kafka.group_id);
    let oracle = oracle(&web_file, &crm_file, PARTITIONS);
    let usr_m1_lead = oracle
        .lines
        .iter()
        .find(|v| v["kind"] == "hot_lead" && v["prospect"] == "usr_m1")
        .expect("the oracle alerts on usr_m1's clarification");
    assert_eq!(usr_m1_lead["rules"], json!(["clarification_after_quote"]));
    assert!(oracle.lines.iter().any(|v| v["kind"] == "ghosted" && v["prospect"] == "usr_m2"));

    // The website's history first, all of it; then the CRM's, the same weeks.
    let (web_records, crm_records) = (records(&web_file), records(&crm_file));
    let web_at = produce(web(&s), &web_records);
    let crm_at = produce(crm(&s), &crm_records);
    let ends = end_offsets([(web(&s), web_at.as_slice()), (crm(&s), crm_at.as_slice())]);
    let messages: i64 = ends.values().sum();

    let svc = Service::start(&s);
    let digests = checkpointed(&svc, messages, PARTITIONS, FINISH);
    assert_eq!(digests, oracle.shards, "every shard's state equals the merged replay's");

    let alerts = read_until(&s.kafka.topics.hot_leads, "the oracle's alerts", |r| r.len() >= oracle.alerts.len());
    let emitted: BTreeSet<String> = alerts.iter().map(|r| r.json()["alert_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(emitted, oracle.alerts);
    let m1 = alerts.iter().map(Out::json).find(|j| j["prospect"] == "usr_m1").expect("usr_m1's hot lead");
    assert_eq!(m1["rules"], json!(["clarification_after_quote"]));

    let events = read_until(&s.kafka.topics.journey_events, "the oracle's journey events", |r| {
        r.len() >= oracle.journey_events.len()
    });
    let mut got: Vec<String> = events.iter().map(|r| r.json().to_string()).collect();
    got.sort();
    assert_eq!(got, oracle.journey_events);

    let text = svc.metrics().render();
    assert!(total(&text, "microfunnel_input_reordered_total") > 0.0, "records were taken out of delivery order");
    assert!(total(&text, "microfunnel_input_held_total") > 0.0, "records were held for the merge");
    assert_eq!(total(&text, "microfunnel_input_buffered_messages"), 0.0, "nothing left buffered");
    if buffer.is_some() {
        assert!(total(&text, "microfunnel_input_pauses_total") > 0.0, "partitions were paused");
        // Tansu needs `kafka.resume_rewind`: a resumed partition is read again from before.
        assert!(total(&text, "microfunnel_input_redelivered_total") > 0.0, "records were delivered again");
    }
    svc.stop().unwrap();
}

/// Held messages are librdkafka's own (`inputs::Held`), which must all be destroyed before the
/// consumer is: a service asked to stop while its merge queues hold messages (the gauge says so
/// just before) stops within the deadline, neither hanging nor crashing in librdkafka's teardown,
/// and the next one reads them again and gives the merged replay's result.
#[test]
fn a_service_stopped_with_messages_held_for_the_merge_stops_and_the_next_one_reads_them_again() {
    let mut s = setup("merge-held-stop");
    s.pipeline.merge_buffer_messages = 100;
    let (web_file, crm_file) = per_topic_files(&s.kafka.group_id);
    let oracle = oracle(&web_file, &crm_file, PARTITIONS);
    let (web_records, crm_records) = (records(&web_file), records(&crm_file));
    let web_at = produce(web(&s), &web_records);
    let crm_at = produce(crm(&s), &crm_records);
    let ends = end_offsets([(web(&s), web_at.as_slice()), (crm(&s), crm_at.as_slice())]);
    let messages: i64 = ends.values().sum();

    let svc = Service::start(&s);
    let metrics = svc.metrics();
    wait_until(FINISH, "messages held for the merge", || metrics.input_buffered.get() > 0);
    let (done, stopped) = std::sync::mpsc::channel();
    std::thread::spawn(move || done.send(svc.stop().map_err(|e| e.to_string())));
    let result = stopped.recv_timeout(FINISH).expect("the service stops within the deadline");
    assert_eq!(result, Ok(()));

    let svc = Service::start(&s);
    let digests = checkpointed(&svc, messages, PARTITIONS, FINISH);
    assert_eq!(digests, oracle.shards, "every shard's state equals the merged replay's");
    svc.stop().unwrap();
}

/// A message held for the merge (both topics have a backlog when the service starts, so the
/// shard's first messages wait in its merge queues) and then dead-lettered keeps what a dead
/// letter promises: the original bytes, key and headers, and its origin. Held messages are
/// librdkafka's own (`inputs::Held`), whose key and headers are read only for a dead letter.
#[test]
fn a_held_message_that_is_dead_lettered_keeps_its_bytes_key_headers_and_origin() {
    let s = setup("merge-held-dead-letter");
    let p = "usr_held";
    let web_records = vec![
        keyed(p, canonical("h-1", p, "web", "page_viewed", "2026-03-02T10:00:00Z")),
        keyed(p, r#"{"event_id":"h-2","source":"web","type":"page_viewed","ts":"2026-03-02T10:05:00Z"}"#)
            .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
            .header("origin", "tracker-7"),
        keyed(p, "not json").header("origin", "tracker-8"),
        keyed(p, canonical("h-3", p, "web", "pricing_viewed", "2026-03-02T10:10:00Z")),
    ];
    let crm_records = vec![keyed(p, canonical("h-c", p, "crm", "deal_created", "2026-03-02T09:00:00Z"))];
    let web_at = produce(web(&s), &web_records);
    let crm_at = produce(crm(&s), &crm_records);
    let svc = Service::start(&s);
    let dlq = read_until(&s.kafka.topics.dead_letter, "both bad web records", |r| r.len() >= 2);
    assert_eq!(dlq.len(), 2);
    for (i, expected) in [(1, "missing_field"), (2, "invalid_json")] {
        let (partition, offset) = web_at[i];
        let d = dlq
            .iter()
            .find(|d| d.header("microfunnel.source.offset") == Some(offset.to_string().as_str()))
            .unwrap_or_else(|| panic!("no dead letter for web record {i}"));
        assert_eq!(d.payload, web_records[i].payload, "record {i}: the original bytes");
        assert_eq!(d.key, web_records[i].key, "record {i}: the original key");
        assert_eq!(d.header("microfunnel.reason"), Some(expected), "record {i}");
        assert_eq!(d.header("microfunnel.source.topic"), Some(web(&s)), "record {i}");
        assert_eq!(d.header("microfunnel.source.partition"), Some(partition.to_string().as_str()), "record {i}");
        for (k, v) in &web_records[i].headers {
            assert_eq!(d.header(k), Some(v.as_str()), "record {i}: original header {k} kept");
        }
    }
    let ends = end_offsets([(web(&s), web_at.as_slice()), (crm(&s), crm_at.as_slice())]);
    wait_until(DEADLINE, "every input offset is committed", || {
        committed(&s.kafka.group_id, &s.kafka.input_topics) == ends
    });
    svc.stop().unwrap();
}
