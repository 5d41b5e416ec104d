//! The event-time watermark across partitions in the service: TWO instances of one consumer
//! group against a real Kafka-API broker (Tansu, see `support`) started over input topics that
//! already hold two months of generated traffic (every shard starts from a backlog and reads it
//! at its own pace), with identity resolution across three partitions and `[retention]`
//! (anonymous `aware` visitors leave after 3 days). The shards exchange their progress on the
//! identity topic (`Progress` records) and hold back expiry sweeps until every partition has
//! passed the due, so the expired people, the merges and the people equal
//! `replay --partitions 3`'s (without the gate: 766 expired against 645, 77 merges against
//! 198, other people). Then the instance holding partition 1 is killed with SIGKILL: the
//! survivor's restored shards relearn the progress table (they ask, the others answer) and
//! the people stay replay's.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::*;

const PARTITIONS: u32 = 3;
const LIMIT: Duration = Duration::from_secs(240);

/// Distinct journey events of `kind` in `lines` (a re-executed output is the same line).
fn distinct(lines: impl Iterator<Item = Value>, kind: &str) -> usize {
    lines.filter(|l| l["kind"] == kind).map(|l| l.to_string()).collect::<BTreeSet<_>>().len()
}

#[test]
fn two_instances_over_a_backlog_expire_and_merge_as_replay() {
    let mut s = setup("wmark-backlog");
    s.kafka.resume_rewind = 0;
    let retention = "[retention]\nafter_days = 10\n[retention.stages]\naware = 4\n[retention.anonymous]\naware = 3\n";
    resolving_journey(&mut s, retention);
    let journey_arg = s.journey.path.display().to_string();
    let (web_file, crm_file) = gen_segment(&s.kafka.group_id, "600", "60");
    let oracle = oracle_with(&web_file, &crm_file, PARTITIONS as usize, &["--journey", &journey_arg]);
    let (expired, merged) =
        (distinct(oracle.lines.iter().cloned(), "expired"), distinct(oracle.lines.iter().cloned(), "prospect_merged"));
    assert!(expired > 200 && merged > 100, "{expired} expired, {merged} merged");

    // The whole backlog in the topics before any instance starts: every shard starts from it
    // (a partition read to its end counts as idle, so a backlog produced to a running service
    // whose partitions were idle is late traffic for the others: README "Retention").
    let mut messages = 0i64;
    for (topic, file) in [(web(&s).to_string(), &web_file), (crm(&s).to_string(), &crm_file)] {
        let lines: Vec<In> = records(file);
        messages += lines.len() as i64;
        produce(&topic, &lines);
    }
    let (state_a, state_b) = (state_dir(&unique("wmark-a")), state_dir(&unique("wmark-b")));
    let mut instances = vec![Process::start(&s, Some(&state_a)), Process::start(&s, Some(&state_b))];
    let states = [state_a.as_path(), state_b.as_path()];
    // Caught up: every shard idle and told so by every other, nothing held back.
    let resolved = resolved_at_rest(&instances, &s, &states, messages, PARTITIONS as usize, LIMIT);

    // Expired and merged people: the counters of both instances (no instance has stopped or
    // died yet, so nothing was executed twice).
    let m: String = instances.iter().map(Process::metrics).collect();
    let service = expired_and_merged(&m);
    assert_eq!(service, (expired, merged), "expired and merged, against replay's");
    assert_eq!(resolved, resolved_of(&oracle), "logs {} {}", instances[0].log.display(), instances[1].log.display());

    // Progress records went out, and were a small part of the identity topic.
    let sent = total(&m, "microfunnel_identity_records_sent_total");
    let progress: f64 = samples(&m, "microfunnel_identity_records_sent_total")
        .iter()
        .filter(|(l, _)| l.get("kind").map(String::as_str) == Some("progress"))
        .map(|(_, v)| v)
        .sum();
    assert!(progress > 0.0 && progress < sent, "progress records {progress} of {sent}");
    // Each instance reports the outbox of the shards it holds, and only those.
    for i in &instances {
        let held: BTreeSet<String> = held(i).iter().map(|p| p.to_string()).collect();
        let m = i.metrics();
        for name in ["microfunnel_identity_outbox_records", "microfunnel_identity_outbox_bytes"] {
            let series: BTreeSet<String> =
                samples(&m, name).into_iter().filter_map(|(l, _)| l.get("shard").cloned()).collect();
            assert_eq!(series, held, "{name}");
        }
    }

    // kill -9 of the instance holding partition 1: the survivor restores its shards, which
    // know nothing of the others' progress (soft state) until they ask and are answered; then
    // every horizon is unbounded again and the people are replay's.
    kill9_holder_of(&mut instances, 1, &s, PARTITIONS as usize, LIMIT);
    let again = resolved_at_rest(&instances, &s, &states, messages, PARTITIONS as usize, LIMIT);
    assert_eq!(again, resolved_of(&oracle), "log {}", instances[0].log.display());
}
