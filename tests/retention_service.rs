//! Retention in the service against a real broker (Tansu): prospects leave as in `replay` (the
//! oracle: same digests, same `expired` journey events), the changelog carries their tombstones,
//! an instance restored from the changelog alone no longer holds them, and the prospect cap
//! holds under a generated run with more prospects than it.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use microfunnel::config::Settings;
use microfunnel::core::Journey;
use serde_json::Value;
use support::*;

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");
const PARTITIONS: i32 = 3;
const FINISH: Duration = Duration::from_secs(180);

/// One input topic (a shard's input order is the file's), 3 partitions.
fn setup_one_topic(test: &str) -> Settings {
    let mut s = settings(test);
    s.kafka.input_topics = vec![format!("{}-events", s.kafka.group_id)];
    s.kafka.partitions = PARTITIONS;
    create_topics(&s);
    s
}

/// The journey (b2b plus `extra`), and the file `replay` reads it from.
fn journey_file(name: &str, extra: &str) -> (Arc<Journey>, PathBuf) {
    let text = format!("{B2B}{extra}");
    let path = std::env::temp_dir().join(format!("{}.toml", unique(name)));
    std::fs::write(&path, &text).unwrap();
    (Arc::new(Journey::from_toml_str(&text).unwrap()), path)
}

/// `gen` traffic (`prospects` over 60 days) in one file.
fn generate(name: &str, prospects: u64) -> PathBuf {
    let file = std::env::temp_dir().join(format!("{}.jsonl", unique(name)));
    let st = bin()
        .args(["gen", "--prospects", &prospects.to_string(), "--days", "60", "--seed", "11", "--quiet", "--out"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(st.success());
    file
}

/// The `expired` journey events as `(prospect, at, reason)`.
fn expiries<'a>(lines: impl IntoIterator<Item = &'a Value>) -> BTreeSet<(String, String, String)> {
    lines
        .into_iter()
        .filter(|v| v["kind"] == "expired")
        .map(|v| {
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            (s("prospect"), s("at"), s("reason"))
        })
        .collect()
}

fn expired_total(svc: &Service, reason: &str) -> u64 {
    svc.metrics().prospects_expired.with_label_values(&[reason]).get()
}

#[test]
fn prospects_expire_as_in_replay_are_tombstoned_and_stay_gone_after_a_changelog_restore() {
    let mut s = setup_one_topic("retention");
    s.http.query_api = true;
    s.http.token = TOKEN.to_string();
    let (journey, path) =
        journey_file("retention", "\n[retention]\nafter_days = 10\n[retention.stages]\naware = 2\ndeciding = 1\n");
    let file = generate("retention", 400);
    // Our own case first: one visitor per partition, a day before the generated traffic,
    // checkpointed before anything else is produced, so their records are in the changelog
    // before the traffic that follows expires them (tombstones).
    let own: Vec<String> = (0..PARTITIONS as u32).map(|p| key_in_partition("gone-", p, PARTITIONS as u32)).collect();
    let mut text: String = own
        .iter()
        .map(|id| {
            format!(
                "{{\"event_id\":\"own-{id}\",\"prospect_id\":\"{id}\",\"source\":\"web\",\"type\":\"page_viewed\",\"ts\":\"2026-01-04T00:00:00Z\"}}\n"
            )
        })
        .collect();
    text.push_str(&std::fs::read_to_string(&file).unwrap());
    std::fs::write(&file, text).unwrap();
    let oracle = oracle_one(&file, &path);
    let expected = expiries(&oracle.lines);
    assert!(expected.len() > 100, "the run expires prospects: {}", expected.len());
    assert!(own.iter().all(|id| expected.iter().any(|(p, _, _)| p == id)), "our visitors expire in the first half");

    let records = records(&file);
    let half = records.len() / 2;
    let topic = s.kafka.input_topics[0].clone();
    produce(&topic, &records[..own.len()]);
    let a = Service::start_with(&s, Arc::clone(&journey));
    checkpointed(&a, own.len() as i64, PARTITIONS as usize, FINISH);
    produce(&topic, &records[own.len()..half]);
    checkpointed(&a, half as i64, PARTITIONS as usize, FINISH);
    let first = expired_total(&a, "retention");
    assert!(first > 0, "the first half already expires prospects");
    a.stop().unwrap();

    // Tombstones in the changelog: each for a prospect that expired.
    let changelog = s.changelog_topic();
    let held = records_held(&changelog);
    let log = read_until(&changelog, "the whole changelog", |r| r.len() as i64 >= held);
    let tombstoned: BTreeSet<String> =
        log.iter().filter(|o| o.payload.is_empty()).filter_map(|o| o.key.clone()).collect();
    let expired_ids: BTreeSet<String> = expected.iter().map(|(p, _, _)| p.clone()).collect();
    assert!(tombstoned.is_subset(&expired_ids), "tombstones only for expired prospects");
    assert!(tombstoned.len() as u64 * 2 >= first, "{} tombstones for {first} expiries", tombstoned.len());

    // Without the snapshots the second instance restores from the changelog alone: a state
    // that still held the expired prospects would not end with replay's digests.
    std::fs::remove_dir_all(&s.checkpoint.dir).unwrap();
    let b = Service::start_with(&s, Arc::clone(&journey));
    wait_until(FINISH, "restored from the changelog", || {
        let (_, body) = http_get(b.addr(), "/shards");
        let v: Value = serde_json::from_str(&body).unwrap();
        let shards = v["shards"].as_array().cloned().unwrap_or_default();
        shards.len() == PARTITIONS as usize && shards.iter().all(|sh| sh["restored_from"] == "changelog")
    });
    // Prospects whose record the changelog held before their tombstone (the last record of
    // their key): a restore that ignored tombstones would still hold them.
    let mut last: std::collections::BTreeMap<&str, (bool, bool)> = Default::default();
    for o in &log {
        let Some(k) = o.key.as_deref() else { continue };
        let e = last.entry(k).or_insert((false, false));
        e.0 |= !o.payload.is_empty();
        e.1 = o.payload.is_empty();
    }
    let dropped: Vec<&str> = last.iter().filter(|(_, (written, gone))| *written && *gone).map(|(k, _)| *k).collect();
    assert!(own.iter().all(|id| dropped.contains(&id.as_str())), "our visitors were written, then tombstoned");
    let live = last.iter().find(|(k, (_, gone))| !*gone && !k.starts_with('\0')).map(|(k, _)| *k).unwrap();
    assert_eq!(get_prospect(b.addr(), live), 200, "{live} is held");
    for id in dropped.iter().take(30) {
        let status = get_prospect(b.addr(), id);
        assert_eq!(status, 404, "{id} is gone after the restore");
    }
    produce(&topic, &records[half..]);
    assert_equals_oracle(&b, &s, &oracle, records.len() as i64, FINISH);
    assert_eq!(first + expired_total(&b, "retention"), expected.len() as u64, "counted once each");

    let events = read_until(&s.kafka.topics.journey_events, "every expiry", |r| {
        r.iter().filter(|o| o.json()["kind"] == "expired").count() >= expected.len()
    });
    let json: Vec<Value> = events.iter().map(Out::json).collect();
    assert_eq!(expiries(&json), expected, "the service's expired events are replay's");
    b.stop().unwrap();
}

/// Anonymous visitors leave after their own span (`[retention.anonymous]`) while known prospects
/// stay for theirs, in the service as in replay, also after a restore from the changelog alone
/// in the middle of the run (the anonymous flag travels in the changelog records).
#[test]
fn anonymous_visitors_expire_as_in_replay_across_a_changelog_restore() {
    let s = setup_one_topic("retention-anonymous");
    let (journey, path) =
        journey_file("retention-anonymous", "\n[retention]\nafter_days = 365\n[retention.anonymous]\naware = 2\n");
    let file = generate("retention-anonymous", 400);
    let oracle = oracle_one(&file, &path);
    let expected = expiries(&oracle.lines);
    // Segment calls' ids: an `anonymousId` without a `userId` is an anonymous visitor's. (Known
    // prospects, 365 days, cannot expire within the run's 60 days.)
    let (mut anonymous, mut known) = (BTreeSet::new(), BTreeSet::new());
    for line in std::fs::read_to_string(&file).unwrap().lines() {
        // Malformed lines (the generator's share of them) are rejected: they name nobody.
        let Ok(v) = serde_json::from_str::<Value>(line) else { continue };
        match (v["userId"].as_str().filter(|u| !u.is_empty()), v["anonymousId"].as_str()) {
            (Some(u), _) => known.insert(u.to_string()),
            (None, Some(a)) => anonymous.insert(a.to_string()),
            _ => false,
        };
    }
    assert!(expected.len() > 50, "anonymous visitors leave: {}", expected.len());
    for (id, _, _) in &expected {
        assert!(anonymous.contains(id) && !known.contains(id), "{id} expired, and it is no anonymous visitor");
    }

    let records = records(&file);
    let half = records.len() / 2;
    let topic = s.kafka.input_topics[0].clone();
    produce(&topic, &records[..half]);
    let a = Service::start_with(&s, Arc::clone(&journey));
    checkpointed(&a, half as i64, PARTITIONS as usize, FINISH);
    let first = expired_total(&a, "retention");
    a.stop().unwrap();
    // The second instance restores from the changelog alone: a restore that lost the flag would
    // keep the anonymous visitors for the known span, and its digests would not be replay's.
    std::fs::remove_dir_all(&s.checkpoint.dir).unwrap();
    let b = Service::start_with(&s, Arc::clone(&journey));
    produce(&topic, &records[half..]);
    assert_equals_oracle(&b, &s, &oracle, records.len() as i64, FINISH);
    assert_eq!(first + expired_total(&b, "retention"), expected.len() as u64, "counted once each");
    let events = read_until(&s.kafka.topics.journey_events, "every expiry", |r| {
        r.iter().filter(|o| o.json()["kind"] == "expired").count() >= expected.len()
    });
    let json: Vec<Value> = events.iter().map(Out::json).collect();
    assert_eq!(expiries(&json), expected, "the service's expired events are replay's");
    b.stop().unwrap();
}

const TOKEN: &str = "retention-test-token";

/// `GET /prospects/{id}` with the query API's bearer token: the status.
fn get_prospect(addr: std::net::SocketAddr, id: &str) -> u16 {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "GET /prospects/{id} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap()
}

/// How many records `topic` holds (high minus low watermark, over its partitions).
fn records_held(topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let c: BaseConsumer = rdkafka::ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let parts: Vec<i32> = md.topics()[0].partitions().iter().map(|p| p.id()).collect();
    parts.iter().map(|&p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).map(|(l, h)| h - l).unwrap()).sum()
}

/// The oracle (`replay --partitions 3 --no-advance --digest`) over one file, on a journey file:
/// its digests per shard, alert ids and output lines.
fn oracle_one(file: &std::path::Path, journey: &std::path::Path) -> Oracle {
    let out = bin()
        .args(["replay", "--partitions", &PARTITIONS.to_string(), "--no-advance", "--digest", "--journey"])
        .arg(journey)
        .arg(file)
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut o = Oracle { shards: Default::default(), alerts: BTreeSet::new(), journey_events: Vec::new(), lines };
    for v in &o.lines {
        match v["kind"].as_str().unwrap() {
            "hot_lead" => {
                o.alerts.insert(v["alert_id"].as_str().unwrap().to_string());
            }
            "digest" => {
                if let Some(p) = v["partition"].as_i64() {
                    o.shards.insert(p, v["digest"].as_str().unwrap().to_string());
                }
            }
            _ => {}
        }
    }
    o
}

#[test]
fn the_prospect_cap_holds_under_a_generated_run_with_more_prospects_than_it() {
    let s = setup_one_topic("retention-cap");
    let (journey, path) = journey_file("retention-cap", "\n[retention]\nmax_prospects_per_shard = 64\n");
    let file = generate("retention-cap", 600);
    let oracle = oracle_one(&file, &path);
    let evicted = expiries(&oracle.lines).iter().filter(|(_, _, r)| r == "capacity").count() as u64;
    assert!(evicted > 200, "the run needs room: {evicted} evictions");

    let records = records(&file);
    produce(&s.kafka.input_topics[0], &records);
    let svc = Service::start_with(&s, journey);
    assert_equals_oracle(&svc, &s, &oracle, records.len() as i64, FINISH);
    assert_eq!(expired_total(&svc, "capacity"), evicted);
    assert_eq!(expired_total(&svc, "retention"), 0);
    let (_, body) = http_get(svc.addr(), "/shards");
    let v: Value = serde_json::from_str(&body).unwrap();
    for sh in v["shards"].as_array().unwrap() {
        assert!(sh["prospects"].as_u64().unwrap() <= 64, "{sh}");
    }
    svc.stop().unwrap();
}
