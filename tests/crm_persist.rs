//! The CRM memory as checkpointed shard state, against a real Kafka-API broker (Tansu, see
//! `support`) and the service binary killed with SIGKILL. The restored shard starts its CRM
//! topic at its checkpointed position and reads nothing below it
//! (`microfunnel_crm_rebuild_messages_total` stays 0: the messages before the kill are beyond
//! its start offset, as if retention had deleted them; Tansu does not implement DeleteRecords),
//! so it can know the deal's stage and contact only from its checkpoint: the snapshot and
//! changelog, or the changelog alone. The same-stage edit must then fire nothing, the win must
//! reach the contact, and every shard's state must equal `replay` of the whole topics.

mod support;

use std::time::Duration;

use microfunnel::config::InputSettings;
use serde_json::{Value, json};
use support::*;

const PARTITIONS: usize = 3;
const FINISH: Duration = Duration::from_secs(120);

/// Where the restored service finds its state.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum From {
    /// The snapshot directory of the killed process (and the changelog).
    Snapshot,
    /// A new, empty snapshot directory: the changelog alone.
    Changelog,
}

fn hubspot_line(n: usize) -> String {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/crm/hubspot.jsonl");
    std::fs::read_to_string(path).unwrap().lines().nth(n - 1).unwrap().to_string()
}

fn kill_9_then_restore_without_reading_the_crm_topic(name: &str, from: From) {
    let mut s = setup(name);
    s.kafka.resume_rewind = 0;
    let crm_topic = crm(&s).to_string();
    s.inputs.insert(crm_topic.clone(), InputSettings { format: "hubspot".into(), ..InputSettings::default() });
    // Before the kill: contact and deal created and associated (1), a first stage (2), the quote
    // (3); after it: the same stage set again (5), the win (11).
    let (before, after) = ([hubspot_line(1), hubspot_line(2), hubspot_line(3)], [hubspot_line(5), hubspot_line(11)]);
    // One web key per partition, so that every shard checkpoints in both runs.
    let keys: Vec<String> = (0..PARTITIONS as u32).map(|p| key_in_partition("v", p, PARTITIONS as u32)).collect();
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

    let state = state_dir(&unique(&format!("{name}-state")));
    let web_at = produce(web(&s), &web_records(&web_before));
    let crm_at = produce(&crm_topic, &crm_records(&before));
    let first: i64 =
        end_offsets([(web(&s), web_at.as_slice()), (crm_topic.as_str(), crm_at.as_slice())]).values().sum();
    let svc = Process::start(&s, Some(&state));
    svc.checkpointed(first, PARTITIONS, FINISH);
    svc.kill9();

    let restored_state = match from {
        From::Snapshot => state.clone(),
        From::Changelog => state_dir(&unique(&format!("{name}-empty"))),
    };
    let svc = Process::start(&s, Some(&restored_state));
    wait_until(FINISH, "the restored service is ready", || {
        TcpListenerProbe::ready(svc.addr()) && http_get(svc.addr(), "/readyz").0 == 200
    });
    let web_at = produce(web(&s), &web_records(&web_after));
    let crm_at = produce(&crm_topic, &crm_records(&after));
    let messages: i64 =
        end_offsets([(web(&s), web_at.as_slice()), (crm_topic.as_str(), crm_at.as_slice())]).values().sum();
    let (digests, shards) = svc.checkpointed(messages, PARTITIONS, FINISH);
    let restored: Vec<&str> = shards.iter().map(|sh| sh["restored_from"].as_str().unwrap_or_default()).collect();
    let expected = match from {
        From::Snapshot => "snapshot",
        From::Changelog => "changelog",
    };
    assert!(restored.iter().all(|r| *r == expected), "restored from {restored:?}");
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
    let m = svc.metrics();
    assert_eq!(total(&m, "microfunnel_events_rejected_total"), 0.0, "nothing dead-lettered (no unknown_prospect)");
    assert_eq!(
        total(&m, "microfunnel_crm_rebuild_messages_total"),
        0.0,
        "nothing below the restored position was read: the memory came from the checkpoint"
    );
}

/// `GET` needs a listener; the process binds its port some time after it starts.
struct TcpListenerProbe;

impl TcpListenerProbe {
    fn ready(addr: std::net::SocketAddr) -> bool {
        std::net::TcpStream::connect(addr).is_ok()
    }
}

#[test]
fn after_kill_9_the_crm_memory_comes_back_from_the_snapshot_without_reading_the_crm_topic_again() {
    kill_9_then_restore_without_reading_the_crm_topic("crm-persist-snap", From::Snapshot);
}

#[test]
fn after_kill_9_the_crm_memory_comes_back_from_the_changelog_alone_without_reading_the_crm_topic_again() {
    kill_9_then_restore_without_reading_the_crm_topic("crm-persist-log", From::Changelog);
}

/// Deal 777 linked to contact 901 and put in `contractsent` before the generated traffic, won
/// after it.
const EARLY_DEAL: &str = r#"[{"eventId":1,"subscriptionId":2214413,"portalId":62515001,"occurredAt":1767254400000,"subscriptionType":"deal.associationChange","attemptNumber":0,"associationType":"DEAL_TO_CONTACT","fromObjectId":777,"toObjectId":901,"associationRemoved":false},{"eventId":2,"subscriptionId":2214409,"portalId":62515001,"occurredAt":1767254460000,"subscriptionType":"deal.propertyChange","attemptNumber":0,"objectId":777,"propertyName":"dealstage","propertyValue":"contractsent"}]"#;
const LATE_WIN: &str = r#"[{"eventId":3,"subscriptionId":2214409,"portalId":62515001,"occurredAt":1772323200000,"subscriptionType":"deal.propertyChange","attemptNumber":0,"objectId":777,"propertyName":"dealstage","propertyValue":"closedwon"}]"#;

/// `gen --crm-format hubspot` traffic between an early deal and its late win, with a CRM memory
/// limit far below what the CRM objects need (`[crm] max_entries = 20` for about 90 entries):
/// the early deal's link is evicted, so its win is refused `unknown_prospect` (unbounded, it
/// reaches contact 901). The service, on one partition, evicts exactly as many entries as
/// replay, refuses the same win, and ends in replay's state with replay's alerts.
#[test]
fn a_bounded_crm_memory_evicts_the_same_entries_in_the_service_as_in_replay() {
    let mut s = settings("crm-bound");
    s.kafka.partitions = 1;
    create_topics(&s);
    let crm_topic = crm(&s).to_string();
    s.inputs.insert(crm_topic.clone(), InputSettings { format: "hubspot".into(), ..InputSettings::default() });
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let b2b =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/journeys/b2b.toml"))
            .unwrap();
    let bounded = b2b.replace("max_entries = 200000", "max_entries = 20");
    assert_ne!(bounded, b2b, "the shipped journey sets [crm] max_entries");
    let journey_file = dir.join(format!("{}-journey.toml", s.kafka.group_id));
    std::fs::write(&journey_file, bounded).unwrap();
    s.journey.path = journey_file.clone();

    let (web_file, gen_crm) = gen_per_topic(&s.kafka.group_id, &["--crm-format", "hubspot"]);
    let crm_file = dir.join(format!("{}-crm-all.jsonl", s.kafka.group_id));
    let generated = std::fs::read_to_string(&gen_crm).unwrap();
    std::fs::write(&crm_file, format!("{EARLY_DEAL}\n{generated}{LATE_WIN}\n")).unwrap();
    let summary = |journey: &str| {
        let o =
            oracle_with(&web_file, &crm_file, 1, &["--journey", journey, "--format", "auto", "--format", "hubspot"]);
        let summary = o.lines.iter().find(|l| l["kind"] == "funnel_summary").expect("a summary").clone();
        (o, summary)
    };
    let (_, unbounded) = summary("b2b");
    assert_eq!(unbounded["stats"]["crm_memory"]["evicted"], 0);
    assert!(unbounded["stats"]["rejected_by_reason"].get("unknown_prospect").is_none(), "{unbounded}");
    let (oracle, bounded) = summary(&journey_file.display().to_string());
    let evicted = bounded["stats"]["crm_memory"]["evicted"].as_u64().unwrap();
    assert!(evicted > 20, "the limit is reached many times: {bounded}");
    assert_eq!(bounded["stats"]["rejected_by_reason"]["unknown_prospect"], 1, "the win's link was evicted");

    produce(&crm_topic, &[keyed("901", EARLY_DEAL)]);
    let out = bin()
        .args(["gen", "--prospects", "300", "--days", "28", "--seed", "5", "--quiet", "--crm-format", "hubspot"])
        .args(["--brokers", brokers(), "--web-topic", web(&s), "--crm-topic", &crm_topic])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    produce(&crm_topic, &[keyed("901", LATE_WIN)]);
    let lines = |p: &std::path::Path| std::fs::read_to_string(p).unwrap().lines().count() as i64;
    let messages = lines(&web_file) + lines(&crm_file);

    let state = state_dir(&unique("crm-bound-state"));
    let svc = Process::start(&s, Some(&state));
    let (digests, _) = svc.checkpointed(messages, 1, FINISH);
    // One partition: replay writes only the total digest line.
    let total_digest = oracle.lines.iter().find(|l| l["kind"] == "digest").expect("a digest line");
    assert_eq!(digests[&0], total_digest["digest"].as_str().unwrap(), "the service's state equals replay's");
    let alerts = read_until(&s.kafka.topics.hot_leads, "the oracle's alerts", |r| r.len() >= oracle.alerts.len());
    let ids: std::collections::BTreeSet<String> =
        alerts.iter().map(|a| a.json()["alert_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, oracle.alerts);
    let m = svc.metrics();
    assert_eq!(total(&m, "microfunnel_crm_memory_evicted_total"), evicted as f64);
    assert_eq!(sample(&m, "microfunnel_events_rejected_total", &[("reason", "unknown_prospect")]), Some(1.0));
}
