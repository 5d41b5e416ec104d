//! Identity resolution across partitions when a canonical id flips back: a late sighting makes
//! an id that was already transferred away canonical again (`LinkReason::CanonicalRule`), so its
//! home, which holds a redirect for it, becomes the person's home once more, and a second late
//! sighting flips it back again, transferring the same id a second time. Whatever the number of
//! partitions, and with every transfer delivered twice (the identity topic is at-least-once),
//! the people are those one shard reaches with every event.

mod payloads;

use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::ids::kafka_partition;
use microfunnel::core::xpart::XRecord;
use microfunnel::core::{Engine, Journey, ProspectView};
use microfunnel::replay::{self, End, Options};
use payloads::crm;

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");
const PARTITIONS: u32 = 3;

fn journey() -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(&format!("{B2B}\n[identity]\nresolve = true\n")).unwrap())
}

fn key_in_partition(prefix: &str, suffix: &str, partition: u32) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}{suffix}"))
        .find(|k| kafka_partition(k.as_bytes(), PARTITIONS) == partition)
        .unwrap()
}

/// Two CRM contacts of one person (one email), each homed on its own partition, the email on
/// the third.
struct Ids {
    x: String,
    y: String,
    email: String,
}

fn ids() -> Ids {
    let email = key_in_partition("\0ana", "@x.example", 2)[1..].to_string();
    Ids { x: key_in_partition("crm-x-", "", 0), y: key_in_partition("crm-y-", "", 1), email }
}

/// `y` seen first, then `x` with the same email (`x` folds into `y`); then a late sighting of
/// `x` before `y`'s first (`x` canonical again: `y` folds into `x`), then a later one of `y`
/// before that (`y` canonical again: `x` is transferred a second time), then one more event of
/// `x` (routed to `y`).
fn flips(ids: &Ids) -> Vec<String> {
    let (x, y, e) = (&ids.x, &ids.y, Some(ids.email.as_str()));
    vec![
        crm("meeting_booked", y, "e-1", "2026-03-05T10:00:00Z", e),
        crm("quote_sent", x, "e-2", "2026-03-05T11:00:00Z", e),
        crm("reviewing_with_partners", x, "e-3", "2026-03-05T09:00:00Z", None),
        crm("quote_clarification_requested", y, "e-4", "2026-03-05T08:00:00Z", None),
        crm("reviewing_with_partners", x, "e-5", "2026-03-05T12:00:00Z", None),
    ]
}

fn replay(lines: &[String], partitions: u32) -> Vec<Engine> {
    let opts = Options {
        limits: Limits::default(),
        end: End::Stay,
        digest: false,
        summary_only: true,
        partitions,
        min_sample: 30,
        inputs: Vec::new(),
    };
    let input = lines.join("\n") + "\n";
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (shards, _) = replay::run(journey(), &opts, input.as_bytes(), &mut out, &mut err).unwrap();
    assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));
    shards
}

fn people(shards: &[Engine]) -> u64 {
    shards.iter().map(|e| e.census().prospects).sum()
}

fn resolved(shards: &[Engine]) -> u64 {
    shards.iter().fold(0u64, |a, e| a.wrapping_add(e.resolved_digest()))
}

fn in_stage(shards: &[Engine]) -> Vec<u64> {
    let mut sum = vec![0; shards[0].funnel().in_stage.len()];
    for e in shards {
        for (s, n) in sum.iter_mut().zip(&e.funnel().in_stage) {
            *s += n;
        }
    }
    sum
}

/// The person's prospect wherever it lives (the one that is not a redirect).
fn person(shards: &[Engine], id: &str) -> ProspectView {
    let found: Vec<ProspectView> = shards
        .iter()
        .filter_map(|e| e.find(id).map(|ix| (e, ix)))
        .filter(|(e, ix)| !e.prospect(*ix).has(microfunnel::core::prospect::REDIRECT))
        .map(|(e, ix)| e.view(ix, None))
        .collect();
    assert_eq!(found.len(), 1, "{id} live on {} shards", found.len());
    found.into_iter().next().unwrap()
}

fn same_people(run: &[Engine], one: &[Engine], canonical: &str) {
    assert_eq!(person(run, canonical).signal_counts, person(one, canonical).signal_counts);
    assert_eq!(people(run), people(one));
    assert_eq!(in_stage(run), in_stage(one));
    assert_eq!(resolved(run), resolved(one));
}

#[test]
fn a_canonical_id_that_flips_back_twice_resolves_as_on_one_shard() {
    let ids = ids();
    let lines = flips(&ids);
    let one = replay(&lines, 1);
    assert_eq!(people(&one), 1);
    let counts = person(&one, &ids.y).signal_counts;
    assert_eq!(counts.iter().map(|(_, c)| u32::from(*c)).sum::<u32>(), 5, "{counts:?}");
    // After the first flip alone (x canonical), the same.
    let first = replay(&lines[..3], PARTITIONS);
    same_people(&first, &replay(&lines[..3], 1), &ids.x);
    let run = replay(&lines, PARTITIONS);
    same_people(&run, &one, &ids.y);
    // `x` was transferred twice (each a legitimate transfer, the second not taken for a
    // redelivery of the first), `y` once.
    let stat = |f: fn(&microfunnel::core::engine::XPartStats) -> u64| -> u64 {
        run.iter().map(|e| f(e.xpart_stats().unwrap())).sum()
    };
    assert_eq!(stat(|s| s.transfers_sent), 3);
    assert_eq!(stat(|s| s.transfers_received), 3);
    assert_eq!(stat(|s| s.transfers_duplicate), 0);
}

/// The same flow in process, every identity record delivered as it is sent and every transfer
/// delivered a second time right after and again at the end: nothing is counted twice.
#[test]
fn redelivered_transfers_of_a_flipping_id_fold_once() {
    let ids = ids();
    let j = journey();
    let mut shards: Vec<Engine> = (0..PARTITIONS)
        .map(|p| {
            let mut e = Engine::new(Arc::clone(&j));
            e.resolve_across(p, PARTITIONS);
            e
        })
        .collect();
    let (mut out, mut again) = (Vec::new(), Vec::new());
    for line in flips(&ids) {
        let ev = microfunnel::codec::decode(line.as_bytes(), &j, &Limits::default()).unwrap();
        let p = kafka_partition(ev.prospect.as_bytes(), PARTITIONS) as usize;
        shards[p].apply(&ev, &mut out);
        let mut pending: std::collections::VecDeque<(u32, XRecord)> = shards[p].take_identity_records().into();
        while let Some((p, r)) = pending.pop_front() {
            let p = p as usize;
            if matches!(r, XRecord::Transfer { .. }) {
                again.push((p, r.clone()));
                shards[p].apply_identity_record(r.clone(), &mut out);
                pending.extend(shards[p].take_identity_records());
            }
            shards[p].apply_identity_record(r, &mut out);
            pending.extend(shards[p].take_identity_records());
        }
    }
    for (p, r) in again {
        shards[p].apply_identity_record(r, &mut out);
        assert!(shards[p].take_identity_records().is_empty());
    }
    let one = replay(&flips(&ids), 1);
    same_people(&shards, &one, &ids.y);
    let duplicates: u64 = shards.iter().map(|e| e.xpart_stats().unwrap().transfers_duplicate).sum();
    assert_eq!(duplicates, 6);
}
