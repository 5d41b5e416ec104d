//! An event of an anonymous id that reaches its partition after the link joining it to its
//! user was made on the user's partition, but before that link's record arrived (issue 16): it
//! gets the id's own prospect, folded into the person when the link comes. Replay, whose
//! identity topic is drained after every message, applies it to the person directly. The fold
//! must give what applying it would.

mod payloads;

use std::collections::VecDeque;
use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::ids::kafka_partition;
use microfunnel::core::xpart::XRecord;
use microfunnel::core::{Engine, Journey};
use microfunnel::replay::End;
use payloads::seg;

#[path = "support/cluster.rs"]
mod cluster;
use cluster::{Cluster, PARTITIONS, on, people, person, resolved};

fn journey() -> Arc<Journey> {
    cluster::resolving("")
}

fn replay(j: &Arc<Journey>, lines: &[String], partitions: u32) -> Vec<Engine> {
    cluster::replay_clean(j, lines, partitions, End::Stay)
}

/// Runs `lines` in process: each applied on its partition, the identity topic drained after
/// it, except that the records caused by line `hold` reach `from`'s partition only after line
/// `hold + 1` was applied.
fn in_process(j: &Arc<Journey>, lines: &[String], hold: usize) -> Cluster {
    let mut c = Cluster::new(Arc::clone(j));
    let mut held = VecDeque::new();
    for (k, line) in lines.iter().enumerate() {
        let ev = microfunnel::codec::decode(line.as_bytes(), j, &Limits::default()).unwrap();
        let p = kafka_partition(ev.prospect.as_bytes(), PARTITIONS) as usize;
        c.shards[p].apply(&ev, &mut c.out);
        let records: Vec<(u32, XRecord)> = c.shards[p].take_identity_records();
        if k == hold {
            held.extend(records);
            continue;
        }
        c.queue.extend(records);
        c.drain();
        if k == hold + 1 {
            c.queue.extend(held.drain(..));
            c.drain();
        }
    }
    c
}

/// The user reads a page (aware, 10:00), asks for a quote (deciding, 12:00), then signs up on a
/// device (12:30). A demo request sent from that device at 09:00 (evaluating, before the page)
/// reaches the device's partition after the sign-up, before the link does: it makes the
/// device's own prospect, folded into the person when the link comes. Applied to the person, as
/// replay does (its identity topic drained after every message), it dates `evaluating` 09:00
/// and clears `aware`'s 10:00 (in event-time order the person was past `aware` by then: the rule
/// of `enter_stage`); the fold must do the same, and so must replay when the demo request comes
/// before the sign-up (then replay folds too).
#[test]
fn an_event_before_its_link_folds_as_if_applied_to_the_person() {
    let j = journey();
    let (user, anon) = (on(1, "usr_"), on(0, "anon-"));
    let lines = vec![
        seg("page", "", Some(&user), "dev-u", "m-1", "2026-03-02T10:00:00Z", None),
        seg("track", "Quote Requested", Some(&user), "dev-u", "m-2", "2026-03-02T12:00:00Z", None),
        seg("identify", "", Some(&user), &anon, "m-3", "2026-03-02T12:30:00Z", Some("ana@x.example")),
        seg("track", "Demo Requested", None, &anon, "m-4", "2026-03-02T09:00:00Z", None),
    ];
    let one = replay(&j, &lines, 1);
    let dates: Vec<String> = person(&one, &user).stages_entered.into_iter().map(|(s, _)| s).collect();
    assert_eq!(dates, ["evaluating", "deciding"], "applied to the person, the demo request clears `aware`");
    assert_eq!(resolved(&replay(&j, &lines, PARTITIONS)), resolved(&one));
    let c = in_process(&j, &lines, 2);
    assert_eq!(people(&c.shards), 1);
    assert_eq!(person(&c.shards, &user).stages_entered, person(&one, &user).stages_entered);
    assert_eq!(resolved(&c.shards), resolved(&one));
    // The demo request before the sign-up: replay folds the device's prospect too.
    let swapped = [lines[0].clone(), lines[1].clone(), lines[3].clone(), lines[2].clone()];
    for partitions in [1, PARTITIONS] {
        assert_eq!(resolved(&replay(&j, &swapped, partitions)), resolved(&one), "{partitions} partitions");
    }
}
