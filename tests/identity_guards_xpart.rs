//! The identity guards (`max_known_ids`, `max_anonymous_ids`) for a group whose ids span
//! partitions: one email shared by many user ids homed on different partitions, decided at the
//! email's home.

mod payloads;

use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::{Engine, Journey};
use microfunnel::replay::{self, End, Options};
use payloads::{crm, seg};

#[path = "support/cluster.rs"]
mod cluster;

fn journey() -> Arc<Journey> {
    cluster::resolving("")
}

struct Run {
    shards: Vec<Engine>,
    lines: Vec<serde_json::Value>,
}

fn replay(lines: &[String], partitions: u32) -> Run {
    let opts = Options { summary_only: false, ..cluster::replay_options(partitions, End::Stay) };
    let (shards, out, err) = cluster::replay_with(&journey(), lines, &opts);
    assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));
    let lines = String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    Run { shards, lines }
}

impl Run {
    fn people(&self) -> u64 {
        self.shards.iter().map(|e| e.census().prospects).sum()
    }

    /// Each live prospect with the ids linked to it, sorted.
    fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut v: Vec<(String, Vec<String>)> = self
            .shards
            .iter()
            .flat_map(|e| {
                e.iter_ids()
                    .filter(|&(ix, _)| !e.prospect(ix).has(microfunnel::core::prospect::REDIRECT))
                    .map(|(_, id)| {
                        let (c, l) = e.linked_ids(id);
                        (c.to_string(), l.into_iter().map(String::from).collect())
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        v.sort();
        v
    }

    fn refused(&self) -> usize {
        self.lines.iter().filter(|l| l["kind"] == "merge_refused").count()
    }
}

/// Ten CRM contacts (known ids) with one email, in event-time order: four may be one person
/// (`max_known_ids` 4), the other six are refused and stay apart.
fn shared_email() -> Vec<String> {
    (0..10)
        .map(|k| {
            crm(
                "meeting_booked",
                &format!("crm-{k}"),
                &format!("e-{k}"),
                &format!("2026-03-05T1{k}:00:00Z"),
                Some("shared@x.example"),
            )
        })
        .collect()
}

/// Sixty anonymous devices of one user (`max_anonymous_ids` 50), each browsing before it
/// signs in.
fn many_devices() -> Vec<String> {
    (0..60)
        .map(|k| {
            let (dev, ts) = (format!("dev-{k}"), format!("2026-03-05T10:{k:02}:00Z"));
            let browse = format!("2026-03-04T10:{k:02}:00Z");
            [
                seg("page", "", None, &dev, &format!("p-{k}"), &browse, None),
                seg("identify", "", Some("usr_1"), &dev, &format!("m-{k}"), &ts, None),
            ]
        })
        .collect::<Vec<_>>()
        .concat()
}

/// The email's home decides, as one partition does: the same four contacts are one person, the
/// same six are refused and stay alone, each refusal emitted once. A contact's home that is not
/// the email's does not join it with the email's person on its own view (where a refused
/// contact that shares its home with another would join it through the email: `crm-6` and
/// `crm-9` on five partitions); it asks the email's home, whose accepted link comes back.
#[test]
fn one_email_shared_by_ids_on_several_partitions_is_refused_at_the_emails_home() {
    use microfunnel::core::ids::kafka_partition;

    let lines = shared_email();
    let one = replay(&lines, 1);
    let accepted = ("crm-0".to_string(), (0..4).map(|k| format!("crm-{k}")).collect::<Vec<_>>());
    let alone: Vec<(String, Vec<String>)> = (4..10).map(|k| (format!("crm-{k}"), vec![format!("crm-{k}")])).collect();
    assert_eq!(one.groups(), [vec![accepted.clone()], alone.clone()].concat());
    assert_eq!(one.refused(), 6);
    assert_eq!(kafka_partition(b"crm-6", 5), kafka_partition(b"crm-9", 5), "two refused contacts share a home");
    for n in [3, 5] {
        let run = replay(&lines, n);
        assert_eq!(run.groups(), one.groups(), "{n} partitions");
        assert_eq!(run.people(), one.people(), "{n} partitions");
        assert_eq!(run.refused(), 6, "{n} partitions");
    }
}

/// In process, the identity topic delivered only after every input (as when the instances
/// holding the contacts run ahead of the identity topic): each contact's home knows nothing of
/// the others when it sees the email, so it would link its contacts with the email, and so with
/// one another, on its own view. It asks the email's home instead: one person of four contacts,
/// six refused (emitted once each), each alone.
#[test]
fn contacts_whose_homes_have_not_heard_from_the_emails_home_are_still_refused_there() {
    use microfunnel::core::Output;

    let mut c = cluster::Cluster::new(journey());
    for line in shared_email() {
        let ev = microfunnel::codec::decode(line.as_bytes(), &c.j, &Limits::default()).unwrap();
        let p = microfunnel::core::ids::kafka_partition(ev.prospect.as_bytes(), cluster::PARTITIONS) as usize;
        c.shards[p].apply(&ev, &mut c.out);
        let records = c.shards[p].take_identity_records();
        c.queue.extend(records);
    }
    c.drain();
    let run = Run { shards: std::mem::take(&mut c.shards), lines: Vec::new() };
    let mut sizes: Vec<usize> = run.groups().iter().map(|(_, ids)| ids.len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 1, 1, 1, 1, 1, 4], "{:#?}", run.groups());
    assert_eq!(c.out.iter().filter(|o| matches!(o, Output::MergeRefused { .. })).count(), 6);
}

/// Sixty devices of one user: its identify calls all reach the user's home, which decides
/// every link, so across partitions the same 50 devices join and the same 10 are refused.
#[test]
fn one_user_with_many_devices_on_several_partitions_is_refused_as_on_one() {
    let lines = many_devices();
    let one = replay(&lines, 1);
    assert_eq!(one.people(), 11, "{:#?}", one.groups());
    assert_eq!(one.refused(), 10);
    for n in [3, 5] {
        let run = replay(&lines, n);
        assert_eq!(run.people(), one.people(), "{n} partitions");
        assert_eq!(run.groups(), one.groups(), "{n} partitions");
        assert_eq!(run.refused(), 10, "{n} partitions");
    }
}

/// Figures for BENCHMARKS.md (not a check; run with `--ignored --nocapture`): identity records
/// and people on 20,000 generated people (`gen --seed 7 --segment-share 1`) on 1 and 4
/// partitions.
#[test]
#[ignore]
fn identity_records_on_generated_traffic() {
    use microfunnel::traffic::{Generator, Options as Gen};
    let j = journey();
    let opts = Gen { prospects: 20_000, seed: 7, segment_share: 1.0, ..Gen::default() };
    let mut g = Generator::new(opts, &j, true).unwrap();
    let (mut line, mut key, mut input) = (Vec::new(), String::new(), Vec::new());
    while g.next_into(&mut line, &mut key).is_some() {
        input.extend_from_slice(&line);
        input.push(b'\n');
    }
    for n in [1u32, 4] {
        let opts = cluster::replay_options(n, End::Stay);
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (shards, _) = replay::run(Arc::clone(&j), &opts, input.as_slice(), &mut out, &mut err).unwrap();
        let sum = |f: fn(&microfunnel::core::engine::XPartStats) -> u64| -> u64 {
            shards.iter().filter_map(|e| e.xpart_stats()).map(f).sum()
        };
        let people: u64 = shards.iter().map(|e| e.census().prospects).sum();
        let refused: u64 = shards.iter().map(|e| e.identity_stats().refused).sum();
        let resolved = shards.iter().fold(0u64, |a, e| a.wrapping_add(e.resolved_digest()));
        eprintln!(
            "{n} partitions: {people} people, {refused} refused, {} links, {} transfers, {} forwards, resolved {resolved:016x}",
            sum(|x| x.links_sent),
            sum(|x| x.transfers_sent),
            sum(|x| x.forwarded)
        );
    }
}
