//! Flips across partitions under `[retention]` (issue 16): a person whose state comes home to
//! its own id after its due passed leaves at once, as a folded one does; a redirect revived by
//! an event (a new prospect) makes room at the prospect cap first, as a new id does.

mod payloads;

use std::collections::VecDeque;
use std::sync::Arc;

use microfunnel::core::ids::kafka_partition;
use microfunnel::core::time::parse_rfc3339;
use microfunnel::core::xpart::XRecord;
use microfunnel::core::{Engine, Journey, Output};
use microfunnel::replay::End;
use payloads::{crm, seg};

#[path = "support/cluster.rs"]
mod cluster;
use cluster::{Cluster, PARTITIONS, on, people, resolved};

fn journey(retention: &str) -> Arc<Journey> {
    cluster::resolving(retention)
}

/// Contacts `x` (partition 0) and `y` (partition 1) of one person, and its email (partition 2).
fn contacts() -> (String, String, String) {
    let email = (0..)
        .map(|i| format!("ana{i}@x.example"))
        .find(|e| kafka_partition(format!("\0{e}").as_bytes(), PARTITIONS) == 2)
        .unwrap();
    (on(0, "crm-x-"), on(1, "crm-y-"), email)
}

fn expired(out: &[Output]) -> usize {
    out.iter().filter(|o| matches!(o, Output::Expired { .. })).count()
}

fn replay(j: &Arc<Journey>, lines: &[String], partitions: u32, end: End) -> Vec<Engine> {
    cluster::replay_clean(j, lines, partitions, end)
}

/// Delivers the queued records and those they cause, holding back the first `Transfer` of
/// `from`, which is returned.
fn drain_holding(c: &mut Cluster, from: &str) -> Option<(u32, XRecord)> {
    let mut held = None;
    let mut pending: VecDeque<(u32, XRecord)> = std::mem::take(&mut c.queue);
    while let Some((p, r)) = pending.pop_front() {
        if held.is_none() && matches!(&r, XRecord::Transfer { from: f, .. } if f == from) {
            held = Some((p, r));
            continue;
        }
        c.shards[p as usize].apply_identity_record(r, &mut c.out);
        pending.extend(c.shards[p as usize].take_identity_records());
    }
    held
}

/// `y` is seen first (a Segment `group` call: no signal, so no prospect) with the email; `x`
/// books a meeting, then a `group` call of `x` with the same email folds `x` into `y` (the call,
/// forwarded to `y`, applies nothing: `y` still has no prospect), and that transfer is held
/// back; then a `group`
/// call of `x` dated before `y`'s makes `x` canonical again without an event reviving it (a
/// `group` call applies nothing). Returns the lines and the held transfer, which `y`'s home
/// relays back to `x`'s, where `x` is still a redirect: the person comes home to its own id.
fn coming_home(c: &mut Cluster) -> (Vec<String>, (u32, XRecord)) {
    let (x, y, email) = contacts();
    let lines = vec![
        seg("group", "", Some(&y), "anon-g-1", "m-1", "2026-03-05T08:00:00Z", Some(&email)),
        crm("meeting_booked", &x, "e-1", "2026-03-05T09:30:00Z", None),
        seg("group", "", Some(&x), "anon-g-2", "m-2", "2026-03-05T10:00:00Z", Some(&email)),
        seg("group", "", Some(&x), "anon-g-2", "m-3", "2026-03-05T07:00:00Z", None),
    ];
    for l in &lines[..2] {
        c.send(l);
    }
    c.apply(&lines[2]);
    let held = drain_holding(c, &x).expect("x was transferred to y");
    assert!(c.shards[0].redirect_ids().contains(&x), "x is a redirect on its home");
    c.apply(&lines[3]);
    c.drain();
    let e = &c.shards[0];
    assert!(e.prospect(e.find(&x).unwrap()).has(microfunnel::core::prospect::REDIRECT), "no event revived x");
    (lines, held)
}

/// The transfer comes home to `x` while `x`'s due is still ahead: `x` is the person again, with
/// its state, as on one shard.
#[test]
fn a_person_coming_home_to_its_own_id_is_the_person_of_one_shard() {
    let j = journey("\n[retention]\nafter_days = 10\n");
    let mut c = Cluster::new(Arc::clone(&j));
    let (lines, held) = coming_home(&mut c);
    c.queue.push_back(held);
    c.drain();
    let (x, _, _) = contacts();
    let e = &c.shards[0];
    assert!(!e.prospect(e.find(&x).unwrap()).has(microfunnel::core::prospect::REDIRECT), "x holds the person");
    let one = replay(&j, &lines, 1, End::Stay);
    assert_eq!(people(&c.shards), 1);
    assert_eq!(people(&c.shards), people(&one));
    assert_eq!(resolved(&c.shards), resolved(&one));
    assert_eq!(expired(&c.out), 0);
}

/// The same, but `x`'s home's watermark passed the person's due (its quote plus 10 days) before
/// the state came home: the person leaves at once, as a transfer folded into another id does
/// (and as on one shard whose time reached the same point), instead of staying until the next
/// time its shard's watermark moves.
#[test]
fn a_person_coming_home_after_its_due_leaves_at_once() {
    let j = journey("\n[retention]\nafter_days = 10\n");
    let mut c = Cluster::new(Arc::clone(&j));
    let (lines, held) = coming_home(&mut c);
    c.advance(0, "2026-03-20T00:00:00Z");
    c.drain();
    assert_eq!(expired(&c.out), 0, "x's home held no person before the state came");
    c.queue.push_back(held);
    c.drain();
    assert_eq!(expired(&c.out), 1, "{:?}", c.out);
    assert_eq!(people(&c.shards), 0);
    let one = replay(&j, &lines, 1, End::Until(parse_rfc3339("2026-03-20T00:00:00Z").unwrap()));
    assert_eq!(people(&one), 0);
    assert_eq!(one[0].stats().expired, 1);
    assert_eq!(c.shards.iter().map(|e| e.stats().expired).sum::<u64>(), 1);
    let in_stage: u64 = c.shards.iter().flat_map(|e| e.funnel().in_stage.iter()).sum();
    assert_eq!(in_stage, 0, "out of the funnel");
}

/// At `[retention] max_prospects_per_shard = 2`: `x`'s home holds two other people when a late
/// sighting of `x` (an event dated before `y`'s first) revives `x`'s redirect, a new prospect.
/// It makes room first (the least recently active leaves), so the shard never holds more than
/// its cap, in replay across partitions and in process with the topic held back.
#[test]
fn a_revived_redirect_makes_room_at_the_cap() {
    let j = journey("\n[retention]\nmax_prospects_per_shard = 2\n");
    let (x, y, email) = contacts();
    let (f0, f1, f2) = (on(0, "f0-"), on(0, "f1-"), on(0, "f2-"));
    let lines = vec![
        crm("meeting_booked", &f0, "e-1", "2026-03-04T10:00:00Z", None),
        crm("meeting_booked", &f1, "e-2", "2026-03-04T11:00:00Z", None),
        crm("meeting_booked", &y, "e-3", "2026-03-05T10:00:00Z", Some(&email)),
        // `x` is new at the cap: `f0` leaves; then `x` folds into `y` (a redirect here).
        crm("quote_sent", &x, "e-4", "2026-03-05T11:00:00Z", Some(&email)),
        crm("meeting_booked", &f2, "e-5", "2026-03-05T11:30:00Z", None),
        // The late sighting: `x` canonical again, its redirect revived (`f1` must leave).
        crm("reviewing_with_partners", &x, "e-6", "2026-03-05T09:00:00Z", None),
    ];
    let p0 = |shards: &[Engine]| shards[0].census().prospects;
    // Replay across partitions (the topic drained after each line).
    let run = replay(&j, &lines, PARTITIONS, End::Stay);
    assert_eq!(p0(&run), 2, "x's home at its cap");
    assert_eq!(run[0].stats().evicted, 2, "f0 and f1 evicted");
    assert!(run[0].find(&f2).is_some() && run[0].find(&f1).is_none());
    // In process, checking the cap right after the revival, before the person's state comes.
    let mut c = Cluster::new(Arc::clone(&j));
    for l in &lines[..5] {
        c.send(l);
    }
    assert_eq!(p0(&c.shards), 2);
    assert_eq!(c.shards[0].redirect_ids(), vec![x.clone()]);
    c.apply(&lines[5]);
    assert_eq!(p0(&c.shards), 2, "the revival made room first");
    assert_eq!(c.shards[0].stats().evicted, 2);
    let e = &c.shards[0];
    assert!(!e.prospect(e.find(&x).unwrap()).has(microfunnel::core::prospect::REDIRECT), "x revived");
    c.drain();
    assert_eq!(p0(&c.shards), 2);
    assert_eq!(resolved(&c.shards), resolved(&run));
}
