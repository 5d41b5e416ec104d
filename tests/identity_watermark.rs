//! The event-time watermark across partitions (`Progress` records of the identity topic) and
//! the expiry gate it drives, in process: shards reading a backlog at very different paces
//! (one a month of event time behind the others) give `replay --partitions N`'s expired count,
//! merges and people once the gate is on, and not without it; records delivered at once (as
//! replay delivers them) make the gate change nothing; an idle partition does not stop expiry;
//! a restored shard relearns the table and expires nothing by sweep until it has.

mod payloads;

use std::collections::VecDeque;
use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::ids::kafka_partition;
use microfunnel::core::time::parse_rfc3339;
use microfunnel::core::xpart::{UNBOUNDED, XRecord};
use microfunnel::core::{Engine, Event, Journey, Output, Ts};
use microfunnel::replay::End;
use payloads::seg;

#[path = "support/cluster.rs"]
mod cluster;
use cluster::{engines, on};

/// The trial's spans: anonymous `aware` visitors leave after 3 days.
const RETENTION: &str =
    "\n[retention]\nafter_days = 10\n[retention.stages]\naware = 4\n[retention.anonymous]\naware = 3\n";

fn journey() -> Arc<Journey> {
    cluster::resolving(RETENTION)
}

fn generated(prospects: u64, seed: u64, days: f64, j: &Journey) -> Vec<String> {
    use microfunnel::traffic::Options as Gen;
    let opts = Gen {
        prospects,
        seed,
        days,
        segment_share: 1.0,
        malformed_share: 0.0,
        out_of_order_share: 0.0,
        ..Gen::default()
    };
    cluster::generated(opts, j)
}

fn replay(j: &Arc<Journey>, lines: &[String], partitions: u32, end: Ts) -> Vec<Engine> {
    cluster::replay_shards(j, lines, partitions, if end.is_none() { End::Stay } else { End::Until(end) })
}

/// What the trial compared: expired people, merges, and the people (`resolved` digests).
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    expired: u64,
    merged: u64,
    resolved: u64,
}

fn outcome(shards: &[Engine]) -> Outcome {
    Outcome {
        expired: shards.iter().map(|e| e.stats().expired).sum(),
        merged: shards.iter().map(|e| e.identity_stats().merged).sum(),
        resolved: shards.iter().fold(0u64, |a, e| a.wrapping_add(e.resolved_digest())),
    }
}

fn inputs(j: &Journey, lines: &[String], partitions: u32) -> Vec<VecDeque<Event<'static>>> {
    let mut inputs: Vec<VecDeque<Event<'static>>> = (0..partitions).map(|_| VecDeque::new()).collect();
    for l in lines {
        if let Some((_, Ok(ev))) = microfunnel::codec::decode_each(l.as_bytes(), j, &Limits::default()).next() {
            let p = kafka_partition(ev.prospect.as_bytes(), partitions) as usize;
            inputs[p].push_back(ev.into_owned());
        }
    }
    inputs
}

/// Shards reading their backlog each at its own pace, as instances started over topics that
/// already hold traffic: at each step a shard is drawn with probability proportional to its
/// pace and takes, of its next input and the head of its identity partition, the earlier (the
/// identity partition whenever it has a record and the inputs are done: a shard does not wait
/// for records not sent yet). With `progress`, each shard publishes its progress every 16 of
/// its steps and at each step once its inputs are done (idle); the engine sends only what says
/// something new. At the end every shard is advanced to `end` (as replay's `--until`) and the
/// topic drained.
fn paced(j: &Arc<Journey>, lines: &[String], paces: &[u64], seed: u64, progress: bool, end: Ts) -> Vec<Engine> {
    let partitions = paces.len() as u32;
    let mut shards = engines(j, partitions);
    let mut inputs = inputs(j, lines, partitions);
    let mut topic: Vec<VecDeque<XRecord>> = (0..partitions).map(|_| VecDeque::new()).collect();
    let (mut out, mut rng, mut steps) = (Vec::new(), seed, vec![0u64; partitions as usize]);
    let collect = |e: &mut Engine, topic: &mut Vec<VecDeque<XRecord>>| {
        for (q, r) in e.take_identity_records() {
            topic[q as usize].push_back(r);
        }
    };
    loop {
        let live: Vec<usize> =
            (0..partitions as usize).filter(|&p| !inputs[p].is_empty() || !topic[p].is_empty()).collect();
        if live.is_empty() {
            break;
        }
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let total: u64 = live.iter().map(|&p| paces[p]).sum();
        let mut draw = (rng >> 33) % total;
        let mut p = live[0];
        for &q in &live {
            if draw < paces[q] {
                p = q;
                break;
            }
            draw -= paces[q];
        }
        cluster::step(&mut shards[p], &mut inputs[p], &mut topic[p], true, &mut out);
        collect(&mut shards[p], &mut topic);
        steps[p] += 1;
        let idle = inputs[p].is_empty();
        if progress && (idle || steps[p] % 16 == 0) {
            shards[p].publish_progress(idle, false, &mut out);
            collect(&mut shards[p], &mut topic);
        }
        if progress && idle && topic.iter().all(VecDeque::is_empty) && inputs.iter().all(VecDeque::is_empty) {
            // Everyone done: each says so once more, so every table hears that all are idle.
            for e in shards.iter_mut() {
                if e.publish_progress(true, false, &mut out) {
                    collect(e, &mut topic);
                }
            }
        }
    }
    for e in shards.iter_mut() {
        e.advance_to(end, &mut out);
        collect(e, &mut topic);
    }
    while let Some(p) = (0..partitions as usize).find(|&p| !topic[p].is_empty()) {
        let r = topic[p].pop_front().unwrap();
        shards[p].apply_identity_record(r, &mut out);
        collect(&mut shards[p], &mut topic);
    }
    if progress {
        assert!(shards.iter().all(|e| e.expiry_horizon() == Some(UNBOUNDED)), "every shard idle at the end");
        assert!(shards.iter().all(|e| e.expiries_waiting() == 0));
    }
    shards
}

fn end_of(lines: &[String], j: &Arc<Journey>) -> Ts {
    replay(j, lines, 1, Ts::NONE)[0].max_event_time()
}

/// The trial's scenario in process: 600 generated people over 60 days, anonymous `aware`
/// visitors leaving after 3 days, three partitions each reading its backlog at its own pace,
/// one ten times slower than the others (over a month of event time behind them at its
/// worst). Without the gate shards expire visitors before the link from their sign-up arrives
/// from the slow shard (more expired, fewer merges, other people than replay: 763 against 662
/// and 131 against 213 at the first seed); with it, exactly replay's, for every seed (a person
/// a shard expired on contact, by an event of its own past the due, while a transfer caused
/// before that was still in flight from the slow shard, takes that transfer as the merge it
/// was, not folding it into the person's next life).
#[test]
fn shards_a_month_apart_expire_and_merge_as_replay_with_the_gate() {
    let j = journey();
    let lines = generated(600, 11, 60.0, &j);
    let end = end_of(&lines, &j);
    let oracle = outcome(&replay(&j, &lines, 3, end));
    assert!(oracle.expired > 100 && oracle.merged > 100, "{oracle:?}");
    let mut differed = 0;
    for (seed, paces) in [(1, [1, 10, 10]), (2, [10, 1, 10]), (3, [10, 10, 1]), (4, [1, 3, 30])] {
        let gated = outcome(&paced(&j, &lines, &paces, seed, true, end));
        let ungated = outcome(&paced(&j, &lines, &paces, seed, false, end));
        assert_eq!(gated, oracle, "seed {seed}, paces {paces:?}");
        differed += usize::from(ungated != oracle);
    }
    assert_eq!(differed, 4, "without the gate the paces change the outcome (the fault this gate cures)");
}

/// Replay delivers identity records at once, in event-time order: every record an input at
/// `t` causes reaches its partition before any shard's watermark passes `t`. So the gate never
/// holds an expiry there that replay would decide otherwise: shards whose records are
/// delivered at once, publishing their progress after every input, end exactly as replay
/// (which sends no progress), on 3 and 5 partitions.
#[test]
fn records_delivered_at_once_make_the_gate_change_nothing() {
    let j = journey();
    let lines = generated(300, 5, 45.0, &j);
    let end = end_of(&lines, &j);
    for partitions in [3u32, 5] {
        let mut shards = engines(&j, partitions);
        let mut topic: VecDeque<(u32, XRecord)> = VecDeque::new();
        let mut out = Vec::new();
        for l in &lines {
            let Some((_, Ok(ev))) = microfunnel::codec::decode_each(l.as_bytes(), &j, &Limits::default()).next() else {
                continue;
            };
            let p = kafka_partition(ev.prospect.as_bytes(), partitions) as usize;
            shards[p].apply(&ev, &mut out);
            topic.extend(shards[p].take_identity_records());
            for e in shards.iter_mut() {
                e.publish_progress(false, false, &mut out);
                topic.extend(e.take_identity_records());
            }
            // Identity records first by event time, as replay drains them; progress at once.
            while !topic.is_empty() {
                let k = (0..topic.len()).min_by_key(|&k| (topic[k].1.ts(), topic[k].0)).unwrap();
                let (q, r) = topic.remove(k).unwrap();
                shards[q as usize].apply_identity_record(r, &mut out);
                topic.extend(shards[q as usize].take_identity_records());
            }
        }
        // Inputs done: every shard idle, said until every table knows it.
        let mut quiet = false;
        while !quiet {
            quiet = true;
            for e in shards.iter_mut() {
                quiet &= !e.publish_progress(true, false, &mut out);
                topic.extend(e.take_identity_records());
            }
            while let Some((q, r)) = topic.pop_front() {
                shards[q as usize].apply_identity_record(r, &mut out);
                topic.extend(shards[q as usize].take_identity_records());
            }
        }
        assert!(shards.iter().all(|e| e.expiry_horizon() == Some(UNBOUNDED)));
        for e in shards.iter_mut() {
            e.advance_to(end, &mut out);
            topic.extend(e.take_identity_records());
        }
        while let Some((q, r)) = topic.pop_front() {
            shards[q as usize].apply_identity_record(r, &mut out);
            topic.extend(shards[q as usize].take_identity_records());
        }
        assert_eq!(outcome(&shards), outcome(&replay(&j, &lines, partitions, end)), "{partitions} partitions");
    }
}

fn expired(out: &[Output]) -> usize {
    out.iter().filter(|o| matches!(o, Output::Expired { .. })).count()
}

/// Exchanges progress until nothing new is said: every shard publishes, the records are
/// delivered, again until quiet.
fn settle(shards: &mut [Engine], idle: &[bool], out: &mut Vec<Output>) {
    for _ in 0..10 {
        if !cluster::progress_round(shards, idle, out) {
            return;
        }
    }
    panic!("progress did not settle");
}

/// An anonymous visitor on partition 0 whose due shard 0's watermark passed: it waits while a
/// partition has not reported, or reports no watermark and is not idle (it may hold a
/// backlog); once that partition says it is idle (its inputs caught up, no traffic at all), it
/// expires.
#[test]
fn an_idle_partition_does_not_stop_expiry() {
    let j = journey();
    let mut shards = engines(&j, 3);
    let mut out = Vec::new();
    let (visitor, other) = (on(0, "anon-v"), on(1, "anon-w"));
    let apply = |shards: &mut [Engine], p: usize, line: String, out: &mut Vec<Output>| {
        let ev = microfunnel::codec::decode(line.as_bytes(), &j, &Limits::default()).unwrap();
        shards[p].apply(&ev, out);
    };
    apply(&mut shards, 0, seg("page", "", None, &visitor, "m-1", "2026-03-01T10:00:00Z", None), &mut out);
    apply(&mut shards, 1, seg("page", "", None, &other, "m-2", "2026-03-20T10:00:00Z", None), &mut out);
    for e in shards.iter_mut() {
        e.gate_expiry();
    }
    // Shard 0's watermark well past the visitor's due (3 days): held, nothing reported yet.
    shards[0].advance_to(parse_rfc3339("2026-03-10T00:00:00Z").unwrap(), &mut out);
    shards[1].advance_to(parse_rfc3339("2026-03-20T00:00:00Z").unwrap(), &mut out);
    assert_eq!((expired(&out), shards[0].expiries_waiting()), (0, 1));
    assert_eq!(shards[0].expiry_horizon(), Some(Ts::NONE));
    // Shards 0 and 1 read; shard 2 holds nothing and has not caught up: no watermark, waits.
    settle(&mut shards, &[false, false, false], &mut out);
    assert_eq!(shards[0].expiry_horizon(), Some(Ts::NONE), "shard 2 reports no watermark");
    assert_eq!((expired(&out), shards[0].expiries_waiting()), (0, 1));
    // Shard 2 caught up with its (empty) inputs: idle, left out of the minimum.
    settle(&mut shards, &[false, false, true], &mut out);
    assert_eq!(expired(&out), 1, "{out:?}");
    assert_eq!(shards[0].expiries_waiting(), 0);
    assert!(shards[0].find(&visitor).is_none());
    assert_eq!(shards[0].expiry_horizon(), Some(shards[0].watermark().min(shards[1].watermark())));
}

/// Three gated shards, each with an anonymous visitor of `prefix` (message `{m}-{p}`) seen on
/// 2026-03-01 and its clock advanced to 2026-03-10, past the visitor's due; no progress sent.
fn visitors_behind(j: &Arc<Journey>, prefix: &str, m: &str, out: &mut Vec<Output>) -> (Vec<Engine>, Vec<String>) {
    let mut shards = engines(j, 3);
    let ids: Vec<String> = (0..3).map(|p| on(p, prefix)).collect();
    let at = |t: &str| parse_rfc3339(t).unwrap();
    for e in shards.iter_mut() {
        e.gate_expiry();
    }
    for (p, id) in ids.iter().enumerate() {
        let line = seg("page", "", None, id, &format!("{m}-{p}"), "2026-03-01T10:00:00Z", None);
        let ev = microfunnel::codec::decode(line.as_bytes(), j, &Limits::default()).unwrap();
        shards[p].apply(&ev, out);
        shards[p].advance_to(at("2026-03-10T00:00:00Z"), out);
    }
    (shards, ids)
}

/// A shard restored from its snapshot knows nothing of the others' progress (soft state): it
/// expires nothing by sweep until every partition reported. Its progress record asks (it has
/// not heard from everyone), which makes the others publish again at once although they have
/// nothing new to say, so it relearns the table; then it expires what is due.
#[test]
fn a_restored_shard_relearns_the_table_before_it_expires_by_sweep() {
    let j = journey();
    let mut out = Vec::new();
    let (mut shards, ids) = visitors_behind(&j, "anon-r", "m", &mut out);
    let at = |t: &str| parse_rfc3339(t).unwrap();
    // Shard 0 restored from a snapshot before any progress reached it.
    let mut bytes = Vec::new();
    shards[0].encode_state(&mut bytes);
    settle(&mut shards, &[false; 3], &mut out);
    assert_eq!(expired(&out), 3, "every visitor expired once the tables were complete");
    shards[0] = cluster::restore(&j, &bytes, 0);
    out.clear();
    shards[0].advance_to(at("2026-03-11T00:00:00Z"), &mut out);
    assert_eq!(shards[0].expiry_horizon(), Some(Ts::NONE));
    assert_eq!((expired(&out), shards[0].expiries_waiting()), (0, 1));
    // The others have nothing new to say...
    for e in shards.iter_mut().skip(1) {
        assert!(!e.publish_progress(false, false, &mut out));
    }
    // ...until the restored shard asks.
    assert!(shards[0].publish_progress(false, false, &mut out));
    let asked = shards[0].take_identity_records();
    assert!(asked.iter().all(|(_, r)| matches!(r, XRecord::Progress { asking: true, seen, .. } if seen.is_none())));
    for (q, r) in asked {
        shards[q as usize].apply_identity_record(r, &mut out);
    }
    for p in 1..3 {
        assert!(shards[p].publish_progress(false, false, &mut out), "shard {p} answers");
        for (q, r) in shards[p].take_identity_records() {
            shards[q as usize].apply_identity_record(r, &mut out);
        }
    }
    assert!(shards[0].progress_table().is_some_and(|t| t.complete()));
    assert_eq!((expired(&out), shards[0].expiries_waiting()), (1, 0), "{out:?}");
    assert!(shards[0].find(&ids[0]).is_none());
}

/// A shard restored after its inputs ended (a rebalance that moved it once everything was
/// read): its expiries behind the watermark were held as soft state where it ran before, and
/// no input will arrive to pop its heap; the horizon that moves when the others answer must
/// fire them.
#[test]
fn a_restored_shard_with_no_input_left_expires_once_the_horizon_moves() {
    let j = journey();
    let mut out = Vec::new();
    let (mut shards, ids) = visitors_behind(&j, "anon-q", "q", &mut out);
    assert_eq!(shards[0].expiries_waiting(), 1, "held: no progress yet");
    let mut bytes = Vec::new();
    shards[0].encode_state(&mut bytes);
    shards[0] = cluster::restore(&j, &bytes, 0);
    out.clear();
    // No advance: the restored shard's inputs are all read. Every shard publishes, idle.
    settle(&mut shards, &[true; 3], &mut out);
    assert_eq!(expired(&out), 3, "{out:?}");
    assert!(shards[0].find(&ids[0]).is_none());
}
