//! Identity resolution in the service (`[identity] resolve = true`), against a real Kafka-API
//! broker (Tansu, see `support`) and the service binary killed with SIGKILL in the middle of
//! the traffic: generated Segment and CRM traffic (`gen --segment-share 1`, people identifying
//! themselves, CRM contacts with their emails) and the issue's flow (anonymous browsing and a
//! download, signup with an email, a CRM quote for a contact with that email, a clarification).
//! The restored service, from its snapshot or from the changelog alone, must end, once the
//! identity topic is drained, in the people `replay --partitions 3` gives with the same journey
//! (per-shard `resolved` digests: ids, stages, stage dates, signal counts, look-back marks, last
//! activity; identities resolve across partitions through the identity topic, so what depends
//! on how a shard's inputs and that topic interleave, such as the score's last bits and alerts
//! of people whose ids were still being joined, is not compared) and emit the flow's one
//! alert for the signed-up user.
//! (`[retention]` with identity resolution across partitions: `tests/identity_xpart_service.rs`
//! and `tests/identity_xpart_retention.rs`; with one partition, `tests/retention.rs` restores
//! it.)

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use microfunnel::codec::{Limits, decode_each};
use microfunnel::core::Journey;
use support::*;

const PARTITIONS: usize = 3;
const FINISH: Duration = Duration::from_secs(180);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum From {
    Snapshot,
    Changelog,
}

fn identity_journey(dir: &Path, name: &str) -> PathBuf {
    let b2b = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/journeys/b2b.toml")).unwrap();
    let path = dir.join(format!("{name}-journey.toml"));
    std::fs::write(&path, format!("{b2b}\n[identity]\nresolve = true\n")).unwrap();
    path
}

/// The issue's flow, every id in one shard: `anon-…` browses and downloads, signs up as `usr-…`
/// with an email, contact `crm-…` gets a quote with the same email and asks a clarification.
fn flow() -> Vec<String> {
    let shard = |prefix: &str| key_in_partition(prefix, 1, PARTITIONS as u32);
    let (anon, user, contact) = (shard("anon-"), shard("usr-"), shard("crm-"));
    let seg = |kind: &str, event: &str, user: Option<&str>, id: &str, ts: &str, email: Option<&str>| {
        let user = user.map_or("null".to_string(), |u| format!("\"{u}\""));
        let traits = email.map_or(String::new(), |e| format!(r#","traits":{{"email":"{e}"}}"#));
        let event = if event.is_empty() { String::new() } else { format!(r#","event":"{event}""#) };
        format!(
            r#"{{"type":"{kind}"{event},"userId":{user},"anonymousId":"{anon}","messageId":"{id}","timestamp":"{ts}"{traits}}}"#
        )
    };
    let crm = |kind: &str, id: &str, ts: &str, email: Option<&str>| {
        let email = email.map_or(String::new(), |e| format!(r#","email":"{e}""#));
        format!(r#"{{"event_id":"{id}","prospect_id":"{contact}","source":"crm","type":"{kind}","ts":"{ts}"{email}}}"#)
    };
    vec![
        seg("page", "", None, "flow-1", "2026-01-20T09:00:00Z", None),
        seg("track", "Whitepaper Downloaded", None, "flow-2", "2026-01-20T09:05:00Z", None),
        seg("identify", "", Some(&user), "flow-3", "2026-01-21T10:00:00Z", Some("Ana@Flow.example")),
        crm("quote_sent", "flow-4", "2026-01-23T10:00:00Z", Some("ana@flow.example ")),
        crm("quote_clarification_requested", "flow-5", "2026-01-24T10:00:00Z", None),
    ]
}

/// A score crossed only at a merge, every id in shard 1: `anon2-…` shows 49 points on the web,
/// `usr2-…` 15 in the CRM, then the visitor identifies as the user: the merge alerts (`engaged`,
/// event id `merge:anon2-…`). Web lines, then CRM lines.
fn score_at_merge() -> (Vec<String>, Vec<String>) {
    let shard = |prefix: &str| key_in_partition(prefix, 1, PARTITIONS as u32);
    let (anon, user) = (shard("anon2-"), shard("usr2-"));
    let seg = |kind: &str, event: &str, user: Option<&str>, id: &str, ts: &str| {
        let user = user.map_or("null".to_string(), |u| format!("\"{u}\""));
        let event = if event.is_empty() { String::new() } else { format!(r#","event":"{event}""#) };
        format!(
            r#"{{"type":"{kind}"{event},"userId":{user},"anonymousId":"{anon}","messageId":"{id}","timestamp":"{ts}"}}"#
        )
    };
    let web = vec![
        seg("track", "Demo Requested", None, "merge-1", "2026-01-25T09:00:00Z"),
        seg("track", "Whitepaper Downloaded", None, "merge-2", "2026-01-25T09:05:00Z"),
        seg("track", "Ebook Downloaded", None, "merge-3", "2026-01-25T09:10:00Z"),
        seg("track", "Case Study Downloaded", None, "merge-4", "2026-01-25T09:15:00Z"),
        seg("identify", "", Some(&user), "merge-6", "2026-01-25T11:00:00Z"),
    ];
    let crm = vec![format!(
        r#"{{"event_id":"merge-5","prospect_id":"{user}","source":"crm","type":"meeting_booked","ts":"2026-01-25T10:00:00Z"}}"#
    )];
    (web, crm)
}

/// A line's event time and Kafka key (its first event's prospect, as `gen --brokers` keys it);
/// `None` for a line that does not decode (a malformed one: unkeyed, kept in place).
fn time_and_key(journey: &Journey, line: &str) -> Option<(i64, String)> {
    decode_each(line.as_bytes(), journey, &Limits::default())
        .find_map(|(_, r)| r.ok())
        .map(|e| (e.ts.0, e.prospect.into_owned()))
}

/// The lines of a file (in order) as records, split at event time `cut`: (before, from).
fn split(journey: &Journey, lines: &[String], cut: i64) -> (Vec<In>, Vec<In>) {
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut late = false;
    for l in lines {
        let rec = match time_and_key(journey, l) {
            Some((ts, key)) => {
                late = ts >= cut;
                keyed(&key, l.as_bytes().to_vec())
            }
            None => unkeyed(l.as_bytes().to_vec()),
        };
        if late { after.push(rec) } else { before.push(rec) }
    }
    (before, after)
}

fn kill_9_mid_flow_with_identity(name: &str, from: From) {
    let mut s = setup(name);
    s.kafka.resume_rewind = 0;
    s.http.query_api = true;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    s.journey.path = identity_journey(dir, &s.kafka.group_id);
    let journey = Journey::from_toml_str(&std::fs::read_to_string(&s.journey.path).unwrap()).unwrap();

    // Generated traffic (every web event a Segment call) and the flow, merged by time per file.
    let (gen_web, gen_crm) = gen_per_topic(&s.kafka.group_id, &["--segment-share", "1"]);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap().lines().map(String::from).collect::<Vec<_>>();
    let flow = flow();
    let mut web_lines = read(&gen_web);
    web_lines.extend(flow[..3].iter().cloned());
    let mut crm_lines = read(&gen_crm);
    crm_lines.extend(flow[3..].iter().cloned());
    let (merge_web, merge_crm) = score_at_merge();
    web_lines.extend(merge_web);
    crm_lines.extend(merge_crm);
    let by_time = |lines: &mut Vec<String>| {
        // Stable: a malformed line stays after the line it followed.
        let mut last = i64::MIN;
        let mut keyed: Vec<(i64, usize, String)> = lines
            .drain(..)
            .enumerate()
            .map(|(i, l)| {
                if let Some((ts, _)) = time_and_key(&journey, &l) {
                    last = ts;
                }
                (last, i, l)
            })
            .collect();
        keyed.sort_by_key(|(t, i, _)| (*t, *i));
        lines.extend(keyed.into_iter().map(|(_, _, l)| l));
    };
    by_time(&mut web_lines);
    by_time(&mut crm_lines);
    let web_file = dir.join(format!("{}-web-all.jsonl", s.kafka.group_id));
    let crm_file = dir.join(format!("{}-crm-all.jsonl", s.kafka.group_id));
    std::fs::write(&web_file, web_lines.join("\n") + "\n").unwrap();
    std::fs::write(&crm_file, crm_lines.join("\n") + "\n").unwrap();
    let journey_arg = s.journey.path.display().to_string();
    let oracle = oracle_with(&web_file, &crm_file, PARTITIONS, &["--journey", &journey_arg]);
    let at_merge: Vec<_> = oracle
        .lines
        .iter()
        .filter(|l| l["kind"] == "hot_lead" && l["event_id"].as_str().is_some_and(|e| e.starts_with("merge:anon2-")))
        .collect();
    assert_eq!(at_merge.len(), 1, "the oracle alerts at the merge that crosses the score");
    assert!(oracle.alerts.contains(at_merge[0]["alert_id"].as_str().unwrap()));
    let summary = oracle.lines.iter().find(|l| l["kind"] == "funnel_summary").unwrap();
    assert!(
        summary["stats"]["identity"]["merged"].as_u64().unwrap() > 20,
        "identity merges people: {}",
        summary["stats"]
    );

    // The traffic up to the middle of the flow (after the signup, before the CRM quote),
    // checkpointed; then the process is frozen (SIGSTOP), the rest is produced, and it is
    // killed (SIGKILL) without a chance to checkpoint or leave the group. (Producing the rest
    // while it runs would let it apply web events before CRM events of earlier times that were
    // not produced yet: the merge does not wait for a partition that is caught up.)
    // The first days go first, checkpointed on their own (then the process is killed, the
    // rest before the cut produced, and a new one restores): two restores before the last.
    let cut = microfunnel::core::time::parse_rfc3339("2026-01-22T00:00:00Z").unwrap().0;
    let early = microfunnel::core::time::parse_rfc3339("2026-01-07T00:00:00Z").unwrap().0;
    let (web_before, web_after) = split(&journey, &web_lines, cut);
    let (crm_before, crm_after) = split(&journey, &crm_lines, cut);
    let (web_early, crm_early) = (split(&journey, &web_lines, early).0, split(&journey, &crm_lines, early).0);
    let state = state_dir(&unique(&format!("{name}-state")));
    let w0 = produce(web(&s), &web_early);
    let c0 = produce(crm(&s), &crm_early);
    let svc = Process::start(&s, Some(&state));
    svc.checkpointed(
        end_offsets([(web(&s), w0.as_slice()), (crm(&s), c0.as_slice())]).values().sum(),
        PARTITIONS,
        FINISH,
    );
    svc.kill9();
    let w1 = produce(web(&s), &web_before[web_early.len()..]);
    let c1 = produce(crm(&s), &crm_before[crm_early.len()..]);
    let ends = [(web(&s), w0.as_slice()), (crm(&s), c0.as_slice()), (web(&s), w1.as_slice()), (crm(&s), c1.as_slice())];
    let first: i64 = end_offsets(ends).values().sum();
    let svc = Process::start(&s, Some(&state));
    svc.checkpointed(first, PARTITIONS, FINISH);
    // The signup's identity records went round too (they leave with the checkpoint that covers
    // them, and an email's link goes by the email's partition first): the crash comes after
    // the signup is resolved, in the middle of the flow.
    let watermarks = TopicEnds::identity(&s);
    wait_until(FINISH, "the identity topic drained", || {
        identity_settled(&svc.shards().unwrap_or_default(), &s, first, PARTITIONS, &watermarks)
    });
    svc.freeze();
    let w2 = produce(web(&s), &web_after);
    let c2 = produce(crm(&s), &crm_after);
    svc.kill9();
    let messages: i64 = end_offsets([(web(&s), w2.as_slice()), (crm(&s), c2.as_slice())]).values().sum();
    assert_eq!(messages, (web_lines.len() + crm_lines.len()) as i64);

    let restored_state = match from {
        From::Snapshot => state.clone(),
        From::Changelog => state_dir(&unique(&format!("{name}-empty"))),
    };
    let svc = Process::start(&s, Some(&restored_state));
    let (_, shards) = svc.checkpointed(messages, PARTITIONS, FINISH);
    let restored: Vec<&str> = shards.iter().map(|sh| sh["restored_from"].as_str().unwrap_or_default()).collect();
    let expected = match from {
        From::Snapshot => ["snapshot", "snapshot+changelog"].as_slice(),
        From::Changelog => ["changelog"].as_slice(),
    };
    assert!(restored.iter().all(|r| expected.contains(r)), "restored from {restored:?}");
    let states = [state.as_path(), restored_state.as_path()];
    let resolved =
        resolved_when_drained(|| svc.shards().unwrap_or_default(), &s, &states, messages, PARTITIONS, FINISH);
    assert_eq!(
        resolved,
        resolved_of(&oracle),
        "every shard's people equal replay's with identity on (log {})",
        svc.log.display()
    );

    // The flow's one alert is for the canonical prospect, the signed-up user.
    let user = flow[2].split("\"userId\":\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let flow_alert = |o: &Out| o.json()["email"] == "ana@flow.example";
    let alerts = read_until(&s.kafka.topics.hot_leads, "the flow's alert", |r| r.iter().any(flow_alert));
    let flow_alerts: BTreeSet<(String, String)> = alerts
        .iter()
        .filter(|o| flow_alert(o))
        .map(Out::json)
        .map(|a| (a["prospect"].as_str().unwrap().to_string(), a["alert_id"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(flow_alerts.len(), 1, "{flow_alerts:?}");
    assert_eq!(flow_alerts.iter().next().unwrap().0, user);
    let oracle_flow: Vec<&serde_json::Value> =
        oracle.lines.iter().filter(|l| l["kind"] == "hot_lead" && l["email"] == "ana@flow.example").collect();
    assert_eq!(oracle_flow.len(), 1);
    assert_eq!(oracle_flow[0]["alert_id"].as_str().unwrap(), flow_alerts.iter().next().unwrap().1);
    // Any linked id answers with the canonical prospect, and the answer lists them all.
    let anon = flow[0].split("\"anonymousId\":\"").nth(1).unwrap().split('"').next().unwrap().to_string();
    let (code, body) = http_get(svc.addr(), &format!("/prospects/{anon}"));
    assert_eq!(code, 200, "{body}");
    let p: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(p["prospect"], user.as_str(), "{p}");
    let linked: BTreeSet<&str> = p["linked_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert!(linked.contains(anon.as_str()) && linked.contains(user.as_str()) && linked.len() >= 3, "{p}");
    assert!(p["signal_counts"].to_string().contains("content_downloaded"), "the pre-signup download: {p}");
    let m = svc.metrics();
    assert!(total(&m, "microfunnel_prospects_merged_total") > 0.0, "merges after the restore are counted");
}

#[test]
fn with_identity_on_kill_9_mid_flow_restores_replays_state_from_the_snapshot() {
    kill_9_mid_flow_with_identity("identity-snap", From::Snapshot);
}

#[test]
fn with_identity_on_kill_9_mid_flow_restores_replays_state_from_the_changelog_alone() {
    kill_9_mid_flow_with_identity("identity-log", From::Changelog);
}
