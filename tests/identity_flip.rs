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
use microfunnel::core::{Engine, Journey};
use microfunnel::replay::End;
use payloads::crm;

#[path = "support/cluster.rs"]
mod cluster;
use cluster::{PARTITIONS, engines, in_stage, people, person, resolved, restored_as};

fn journey() -> Arc<Journey> {
    cluster::resolving("")
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
    cluster::replay_clean(&journey(), lines, partitions, End::Stay)
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

/// Shards of an in-process run, with each transfer record as it was delivered.
struct InProcess {
    shards: Vec<Engine>,
    transfers: Vec<(usize, XRecord)>,
}

/// The flow in process: every identity record delivered as it is sent, each transfer a second
/// time right after when `redeliver`.
fn in_process(lines: &[String], redeliver: bool) -> InProcess {
    let j = journey();
    let mut shards = engines(&j, PARTITIONS);
    for e in &mut shards {
        e.track_removals(true);
    }
    let (mut out, mut transfers) = (Vec::new(), Vec::new());
    for line in lines {
        let ev = microfunnel::codec::decode(line.as_bytes(), &j, &Limits::default()).unwrap();
        let p = kafka_partition(ev.prospect.as_bytes(), PARTITIONS) as usize;
        shards[p].apply(&ev, &mut out);
        let mut pending: std::collections::VecDeque<(u32, XRecord)> = shards[p].take_identity_records().into();
        while let Some((p, r)) = pending.pop_front() {
            let p = p as usize;
            if matches!(r, XRecord::Transfer { .. }) {
                transfers.push((p, r.clone()));
                if redeliver {
                    shards[p].apply_identity_record(r.clone(), &mut out);
                    pending.extend(shards[p].take_identity_records());
                }
            }
            shards[p].apply_identity_record(r, &mut out);
            pending.extend(shards[p].take_identity_records());
        }
    }
    InProcess { shards, transfers }
}

fn duplicates(shards: &[Engine]) -> u64 {
    shards.iter().map(|e| e.xpart_stats().unwrap().transfers_duplicate).sum()
}

/// The same flow in process, every transfer delivered a second time right after and again at
/// the end: nothing is counted twice.
#[test]
fn redelivered_transfers_of_a_flipping_id_fold_once() {
    let ids = ids();
    let InProcess { mut shards, transfers } = in_process(&flips(&ids), true);
    let mut out = Vec::new();
    assert_eq!(transfers.len(), 3);
    for (p, r) in transfers {
        shards[p].apply_identity_record(r, &mut out);
        assert!(shards[p].take_identity_records().is_empty());
    }
    let one = replay(&flips(&ids), 1);
    same_people(&shards, &one, &ids.y);
    assert_eq!(duplicates(&shards), 6);
}

/// The generations folded are state: each shard restored from its snapshot, or from its
/// changelog records alone, holds the same state (digests), and a transfer redelivered after the
/// restore still folds nothing.
#[test]
fn transfer_generations_survive_a_restore_from_snapshot_and_from_the_changelog() {
    let ids = ids();
    let InProcess { shards, transfers } = in_process(&flips(&ids), false);
    let j = journey();
    let one = replay(&flips(&ids), 1);
    let restored = |how: &str| -> Vec<Engine> {
        shards.iter().enumerate().map(|(p, live)| restored_as(how, &j, live, p)).collect()
    };
    for how in ["snapshot", "changelog"] {
        let mut shards = restored(how);
        let mut out = Vec::new();
        for (p, r) in transfers.iter().cloned() {
            shards[p].apply_identity_record(r, &mut out);
            assert!(shards[p].take_identity_records().is_empty(), "{how}");
        }
        assert_eq!(duplicates(&shards), 3, "{how}");
        assert_eq!(person(&shards, &ids.y).signal_counts, person(&one, &ids.y).signal_counts, "{how}");
        assert_eq!(resolved(&shards), resolved(&one), "{how}");
    }
}

/// The first transfer of `x` is slow: it arrives after `x` was revived by its late sighting and
/// the person folded into it. Relayed back to `x`'s home, where `x` is live again, it folds into
/// the person there, once (delivered twice).
#[test]
fn a_transfer_that_comes_back_to_its_revived_id_folds_into_it_once() {
    let ids = ids();
    let j = journey();
    let one = replay(&flips(&ids)[..3], 1);
    let mut shards = engines(&j, PARTITIONS);
    let (mut out, mut held) = (Vec::new(), None);
    for line in &flips(&ids)[..3] {
        let ev = microfunnel::codec::decode(line.as_bytes(), &j, &Limits::default()).unwrap();
        let p = kafka_partition(ev.prospect.as_bytes(), PARTITIONS) as usize;
        shards[p].apply(&ev, &mut out);
        let mut pending: std::collections::VecDeque<(u32, XRecord)> = shards[p].take_identity_records().into();
        while let Some((p, r)) = pending.pop_front() {
            if held.is_none() && matches!(r, XRecord::Transfer { .. }) {
                held = Some((p, r));
                continue;
            }
            shards[p as usize].apply_identity_record(r, &mut out);
            pending.extend(shards[p as usize].take_identity_records());
        }
    }
    let (p, r) = held.expect("x was transferred");
    assert!(matches!(&r, XRecord::Transfer { from, .. } if *from == ids.x));
    for _ in 0..2 {
        let mut pending = std::collections::VecDeque::from([(p, r.clone())]);
        while let Some((p, r)) = pending.pop_front() {
            shards[p as usize].apply_identity_record(r, &mut out);
            pending.extend(shards[p as usize].take_identity_records());
        }
    }
    assert_eq!(person(&shards, &ids.x).signal_counts, person(&one, &ids.x).signal_counts);
    assert_eq!(people(&shards), 1);
    assert_eq!(in_stage(&shards), in_stage(&one));
    assert_eq!(resolved(&shards), resolved(&one));
    assert_eq!(duplicates(&shards), 1);
}

/// The two late sightings less than a round trip apart: `y`'s (08:00) reaches `y`'s home before
/// the link that tells it of `x`'s (09:00). There `y` stays canonical (its group's canonical id
/// and size do not change), but the earlier first sighting of `y` is news to `x`'s home, which
/// made `x` canonical: it must be told, or the two homes keep two people.
#[test]
fn an_earlier_sighting_that_changes_no_canonical_id_here_still_reaches_the_other_homes() {
    let ids = ids();
    let j = journey();
    let lines = flips(&ids);
    let mut shards = engines(&j, PARTITIONS);
    let mut out = Vec::new();
    let mut held = std::collections::VecDeque::new();
    let deliver = |shards: &mut [Engine], queue: &mut std::collections::VecDeque<(u32, XRecord)>| {
        let mut out = Vec::new();
        while let Some((p, r)) = queue.pop_front() {
            shards[p as usize].apply_identity_record(r, &mut out);
            queue.extend(shards[p as usize].take_identity_records());
        }
    };
    for (k, line) in lines.iter().enumerate() {
        let ev = microfunnel::codec::decode(line.as_bytes(), &j, &Limits::default()).unwrap();
        let p = kafka_partition(ev.prospect.as_bytes(), PARTITIONS) as usize;
        shards[p].apply(&ev, &mut out);
        let mut sent: std::collections::VecDeque<(u32, XRecord)> = shards[p].take_identity_records().into();
        if k == 2 {
            // `x`'s late sighting: its links are still on their way when `y`'s arrives.
            held = sent;
            continue;
        }
        deliver(&mut shards, &mut sent);
        if k == 3 {
            deliver(&mut shards, &mut held);
        }
    }
    let one = replay(&lines, 1);
    same_people(&shards, &one, &ids.y);
}

/// The identity topic as a log per partition, each shard reading its own from a position.
struct Topic {
    logs: Vec<Vec<XRecord>>,
    pos: Vec<usize>,
}

impl Topic {
    fn new() -> Topic {
        Topic { logs: vec![Vec::new(); PARTITIONS as usize], pos: vec![0; PARTITIONS as usize] }
    }

    fn collect(&mut self, shard: &mut Engine) {
        for (p, r) in shard.take_identity_records() {
            self.logs[p as usize].push(r);
        }
    }

    /// Every shard reads what it has not read, until nothing is left.
    fn drain(&mut self, shards: &mut [Engine]) {
        let mut out = Vec::new();
        loop {
            let Some(p) = (0..shards.len()).find(|&p| self.pos[p] < self.logs[p].len()) else { return };
            let r = self.logs[p][self.pos[p]].clone();
            self.pos[p] += 1;
            shards[p].apply_identity_record(r, &mut out);
            self.collect(&mut shards[p]);
        }
    }
}

/// `x`'s and `y`'s homes die after the first flip, checkpointed before part of it (`x`'s home
/// after `x`'s late sighting, before `y`'s state came back to it; `y`'s home before the link
/// that made `x` canonical); restored from the changelog, they read the identity topic again
/// from their checkpoints, then the rest comes. The same people as one shard.
#[test]
fn homes_restored_mid_flip_give_the_same_people() {
    use microfunnel::store::changelog::{Batch, Fold};
    use std::collections::BTreeMap;

    let ids = ids();
    let j = journey();
    let lines = flips(&ids);
    let mut shards = engines(&j, PARTITIONS);
    let mut topic = Topic::new();
    let apply = |shards: &mut [Engine], topic: &mut Topic, k: usize| {
        let ev = microfunnel::codec::decode(lines[k].as_bytes(), &j, &Limits::default()).unwrap();
        let p = kafka_partition(ev.prospect.as_bytes(), PARTITIONS) as usize;
        shards[p].apply(&ev, &mut Vec::new());
        topic.collect(&mut shards[p]);
    };
    let (px, py) = (
        kafka_partition(ids.x.as_bytes(), PARTITIONS) as usize,
        kafka_partition(ids.y.as_bytes(), PARTITIONS) as usize,
    );
    apply(&mut shards, &mut topic, 0);
    topic.drain(&mut shards);
    apply(&mut shards, &mut topic, 1);
    topic.drain(&mut shards);
    let checkpoint = |e: &Engine| {
        let mut live = e.clone();
        let changed: Vec<_> = live.iter_ids().map(|(ix, _)| ix).collect();
        let mut batch = Batch::default();
        batch.checkpoint(&live, &changed, &[], 1, &BTreeMap::new());
        let mut f = Fold::new(Engine::new(Arc::clone(&j)), BTreeMap::new(), 0);
        for (o, (k, v)) in batch.records().enumerate() {
            f.push(0, o as i64, k, v);
        }
        live.take_changed();
        f.finish().engine
    };
    let at_y = (checkpoint(&shards[py]), topic.pos[py]);
    apply(&mut shards, &mut topic, 2);
    let at_x = (checkpoint(&shards[px]), topic.pos[px]);
    topic.drain(&mut shards);
    // Both homes die and are restored; they read the topic again from their checkpoints.
    for (p, (engine, pos)) in [(px, at_x), (py, at_y)] {
        shards[p] = engine;
        shards[p].resolve_across(p as u32, PARTITIONS);
        topic.pos[p] = pos;
    }
    topic.drain(&mut shards);
    apply(&mut shards, &mut topic, 3);
    topic.drain(&mut shards);
    apply(&mut shards, &mut topic, 4);
    topic.drain(&mut shards);
    let one = replay(&lines, 1);
    same_people(&shards, &one, &ids.y);
}
