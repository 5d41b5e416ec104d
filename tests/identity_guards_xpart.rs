//! The identity guards (`max_known_ids`, `max_anonymous_ids`) for a group whose ids span
//! partitions: one email shared by many user ids homed on different partitions.

mod payloads;

use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::{Engine, Journey};
use microfunnel::replay::{self, End, Options};
use payloads::{crm, seg};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

fn journey() -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(&format!("{B2B}\n[identity]\nresolve = true\n")).unwrap())
}

struct Run {
    shards: Vec<Engine>,
    lines: Vec<serde_json::Value>,
}

fn replay(lines: &[String], partitions: u32) -> Run {
    let opts = Options {
        limits: Limits::default(),
        end: End::Stay,
        digest: false,
        summary_only: false,
        partitions,
        min_sample: 30,
        inputs: Vec::new(),
    };
    let input = lines.join("\n") + "\n";
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (shards, _) = replay::run(journey(), &opts, input.as_bytes(), &mut out, &mut err).unwrap();
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

/// The email's home refuses as one partition does: the same four contacts are one person, no
/// refused contact joins them, and every refusal is emitted. What differs: each contact's home
/// links it with the email before the email's home decides, so refused contacts that share a
/// home partition join one another there through the email (on five partitions `crm-6` and
/// `crm-9`; on one partition, and on three, every refused contact stays alone).
#[test]
fn one_email_shared_by_ids_on_several_partitions_is_refused_at_the_emails_home() {
    use microfunnel::core::ids::kafka_partition;

    let lines = shared_email();
    let one = replay(&lines, 1);
    let accepted = ("crm-0".to_string(), (0..4).map(|k| format!("crm-{k}")).collect::<Vec<_>>());
    let alone: Vec<(String, Vec<String>)> = (4..10).map(|k| (format!("crm-{k}"), vec![format!("crm-{k}")])).collect();
    assert_eq!(one.groups(), [vec![accepted.clone()], alone.clone()].concat());
    assert_eq!(one.refused(), 6);
    for n in [3, 5] {
        let run = replay(&lines, n);
        let groups = run.groups();
        assert_eq!(groups[0], accepted, "{n} partitions");
        for (_, ids) in &groups[1..] {
            let homes: Vec<u32> = ids.iter().map(|id| kafka_partition(id.as_bytes(), n)).collect();
            assert!(ids.iter().all(|id| !accepted.1.contains(id)), "{n} partitions: {groups:?}");
            assert!(homes.iter().all(|&h| h == homes[0]), "{n} partitions: {groups:?}");
        }
        assert!(run.refused() >= 6, "{n} partitions: {} refusals", run.refused());
        if n == 3 {
            assert_eq!(groups, one.groups());
        } else {
            assert!(groups.contains(&("crm-6".to_string(), vec!["crm-6".to_string(), "crm-9".to_string()])));
        }
    }
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
