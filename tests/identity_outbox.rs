//! The outbox in process: identity records held by each shard (`Engine::hold_identity_records`)
//! and delivered only at checkpoints (`seal_outbox`, `settle_outbox`), as the pipeline does
//! with checkpoints on; and every checkpoint's records delivered a second time one checkpoint
//! later, as a shard restored from that checkpoint sends its outbox again. The receivers drop
//! the duplicates: a `Transfer` by its generation, a `Forward` by its event id, a `Link`
//! changes nothing the second time (a `Forget` twice: `tests/identity_xpart_retention.rs`).
//! The people equal one shard's.

use std::collections::BTreeMap;
use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::ids::kafka_partition;
use microfunnel::core::xpart::XRecord;
use microfunnel::core::{Engine, Journey};

const PARTITIONS: u32 = 3;
const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

fn journey() -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(&format!("{B2B}\n[identity]\nresolve = true\n")).unwrap())
}

fn generated(j: &Journey) -> Vec<String> {
    use microfunnel::traffic::{Generator, Options};
    let opts = Options { prospects: 400, seed: 7, segment_share: 1.0, malformed_share: 0.0, ..Options::default() };
    let mut g = Generator::new(opts, j, true).unwrap();
    let (mut line, mut key, mut lines) = (Vec::new(), String::new(), Vec::new());
    while g.next_into(&mut line, &mut key).is_some() {
        lines.push(String::from_utf8(line.clone()).unwrap());
    }
    // People who keep browsing under their device id after signing up on another partition:
    // those events are forwarded to the user's.
    let home = |prefix: &str, p: u32| {
        (0..).map(|i| format!("{prefix}{i}")).find(|k| kafka_partition(k.as_bytes(), PARTITIONS) == p).unwrap()
    };
    let call = |n: u32, kind: &str, event: &str, user: bool, m: u32| {
        let (anon, id) = (home(&format!("fw{n}-a"), n % PARTITIONS), home(&format!("fw{n}-u"), (n + 1) % PARTITIONS));
        let user = if user { format!("\"{id}\"") } else { "null".to_string() };
        let at = format!("2026-06-{:02}T10:{m:02}:00Z", 1 + n % 28);
        format!(
            r#"{{"type":"{kind}","event":"{event}","userId":{user},"anonymousId":"{anon}","messageId":"fw{n}-{m}","timestamp":"{at}"}}"#
        )
    };
    for n in 0..30 {
        lines.push(call(n, "track", "Whitepaper Downloaded", false, 0));
        lines.push(call(n, "identify", "", true, 1));
    }
    // Once the links went round (other visitors meanwhile).
    lines.extend((0..150).map(|k| {
        format!(r#"{{"type":"page","anonymousId":"other-{k}","messageId":"o-{k}","timestamp":"2026-06-28T11:00:00Z"}}"#)
    }));
    for m in 2..6 {
        lines.extend((0..30).map(|n| call(n, "page", "", false, m)));
    }
    lines
}

fn resolved(shards: &[Engine]) -> u64 {
    shards.iter().fold(0u64, |a, e| a.wrapping_add(e.resolved_digest()))
}

struct Run {
    shards: Vec<Engine>,
    /// Records delivered a second time, by kind.
    again: BTreeMap<&'static str, u64>,
}

/// `lines` over [`PARTITIONS`] shards whose records wait in their outboxes; every `every`
/// lines a checkpoint of every shard delivers them, and with `resend`, the records of the
/// checkpoint before again.
fn run(j: &Arc<Journey>, lines: &[String], every: usize, resend: bool) -> Run {
    let mut shards: Vec<Engine> = (0..PARTITIONS)
        .map(|p| {
            let mut e = Engine::new(Arc::clone(j));
            e.resolve_across(p, PARTITIONS);
            e
        })
        .collect();
    let mut out = Vec::new();
    let mut again = BTreeMap::new();
    let mut previous: Vec<(u32, XRecord)> = Vec::new();
    let mut received = Vec::new();
    let mut checkpoint = |shards: &mut [Engine], again: &mut BTreeMap<&'static str, u64>| {
        let mut durable = Vec::new();
        for e in shards.iter_mut() {
            e.seal_outbox();
            durable.extend_from_slice(e.settle_outbox(true));
        }
        let deliver = |shards: &mut [Engine], records: &[(u32, XRecord)], out: &mut Vec<_>| {
            for (p, r) in records {
                shards[*p as usize].apply_identity_record(r.clone(), out);
                shards[*p as usize].hold_identity_records();
            }
        };
        deliver(shards, &durable, &mut received);
        if resend {
            deliver(shards, &previous, &mut received);
            previous.iter().for_each(|(_, r)| *again.entry(r.kind()).or_insert(0) += 1);
        }
        previous = durable;
    };
    for (n, l) in lines.iter().enumerate() {
        let mut shard = None;
        for (_, ev) in microfunnel::codec::decode_each(l.as_bytes(), j, &Limits::default()) {
            let Ok(ev) = ev else { continue };
            let p = *shard.get_or_insert(kafka_partition(ev.prospect.as_bytes(), PARTITIONS) as usize);
            shards[p].apply(&ev, &mut out);
            shards[p].hold_identity_records();
        }
        if (n + 1) % every == 0 {
            checkpoint(&mut shards, &mut again);
        }
    }
    for _ in 0..10_000 {
        if shards.iter().all(|e| !e.outbox_held()) {
            return Run { shards, again };
        }
        checkpoint(&mut shards, &mut again);
    }
    panic!("the identity records never settle");
}

#[test]
fn records_sent_at_checkpoints_and_sent_again_after_a_restore_give_one_shards_people() {
    let j = journey();
    let lines = generated(&j);
    let one = run(&j, &lines, 1, false);
    let mut single = Engine::new(Arc::clone(&j));
    for l in &lines {
        for (_, ev) in microfunnel::codec::decode_each(l.as_bytes(), &j, &Limits::default()) {
            if let Ok(ev) = ev {
                single.apply(&ev, &mut Vec::new());
            }
        }
    }
    let want = single.resolved_digest();
    assert_eq!(resolved(&one.shards), want, "a checkpoint after every message");
    for every in [7, 50] {
        let held = run(&j, &lines, every, false);
        assert_eq!(resolved(&held.shards), want, "a checkpoint every {every} messages");
        let twice = run(&j, &lines, every, true);
        assert_eq!(resolved(&twice.shards), want, "every checkpoint's records sent again ({every})");
        for kind in ["link", "forward", "transfer"] {
            assert!(twice.again.get(kind).copied().unwrap_or(0) > 10, "{kind}s sent again: {:?}", twice.again);
        }
        let dup: u64 = twice.shards.iter().map(|e| e.xpart_stats().unwrap().transfers_duplicate).sum();
        assert!(dup >= twice.again["transfer"], "every transfer sent again was dropped: {dup}");
        let people: u64 = twice.shards.iter().map(|e| e.census().prospects).sum();
        assert_eq!(people, single.census().prospects);
    }
}
