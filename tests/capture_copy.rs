//! A checkpoint's capture as the service takes it: the changed prospects' parts copied on the
//! processing thread (`Engine::copy_changed`), their changelog records encoded and their digests
//! computed from the copy on the writer thread (`Batch::prepend_copied`). Over a generated
//! stream with retention, identity resolution and breakdowns on, every checkpoint's records
//! equal, byte for byte and in order, those the engine encodes itself (`Batch::checkpoint`),
//! and the digests per slot kept from the copies equal the engine's own.

use std::collections::BTreeMap;
use std::sync::Arc;

use microfunnel::codec::{self, Limits};
use microfunnel::core::snapshot::Dec;
use microfunnel::core::{Engine, Journey, PartsCopy, SlotDigests};
use microfunnel::store::Batch;
use microfunnel::traffic::model::Model;
use microfunnel::traffic::{Generator, Options};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");
const CAMPAIGNS: &str = include_str!("../deploy/gen/campaigns.toml");

/// b2b (its breakdowns by campaign and source) with identity resolution and short retention
/// spans, so prospects expire and slots are freed and reused within the stream.
fn journey() -> Arc<Journey> {
    let extra = "\n[identity]\nresolve = true\n\n[retention]\nafter_days = 6\n[retention.stages]\naware = 2\n";
    Arc::new(Journey::from_toml_str(&format!("{B2B}{extra}")).expect("journey loads"))
}

type Records = Vec<(Vec<u8>, Option<Vec<u8>>)>;

fn owned(batch: &Batch) -> Records {
    batch.records().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect()
}

/// What the checkpoints carried, to show the stream exercised every part of a record.
#[derive(Default, Debug)]
struct Seen {
    checkpoints: u32,
    records: usize,
    freed: usize,
    tombstones: usize,
    identity: usize,
    /// Entries copied only for the digest (freed slots, expiring extras).
    digest_only: usize,
    /// Prospect records with each trailer part, by tag ([`tags`]).
    tags: [usize; 6],
}

/// Which trailer parts a changelog prospect record (`P` + layout 1 + tagged parts) carries:
/// 1 older ids or waiting signals, 2 matched hot rules, 3 last signal, 4 breakdown slots,
/// 5 first-shown times.
fn tags(engine: &Engine, value: &[u8], into: &mut [usize; 6]) {
    let rec = engine.decode_changelog_record(&mut Dec::new(&value[1..])).expect("the record decodes");
    let x = &rec.extras;
    into[1] += usize::from(!x.seen.is_empty() || !x.waiting.is_empty());
    into[2] += usize::from(!x.alerted.is_empty());
    into[3] += usize::from(rec.fixed.last_signal != microfunnel::core::prospect::NO_SIGNAL);
    into[4] += usize::from(!rec.slots.is_empty());
    into[5] += usize::from(!rec.shown.is_empty());
}

#[test]
fn records_and_digests_from_the_copied_parts_equal_the_engines_own() {
    let journey = journey();
    let model: Model = toml::from_str(CAMPAIGNS).expect("campaigns model");
    let opts = Options { prospects: 3000, days: 40.0, seed: 11, malformed_share: 0.0, model, ..Options::default() };
    let mut g = Generator::new(opts, &journey, false).expect("generator");
    let mut engine = Engine::new(Arc::clone(&journey));
    engine.track_removals(true);
    let (mut own_digests, mut copy_digests) = (SlotDigests::of(&engine), SlotDigests::of(&engine));
    let (mut own, mut from_copy, mut plain) = (Batch::default(), Batch::default(), Batch::default());
    let (mut copy, mut plain_copy) = (PartsCopy::default(), PartsCopy::default());
    let (mut held, mut freed) = (Vec::new(), Vec::new());
    let (mut line, mut key, mut outs) = (Vec::new(), String::new(), Vec::new());
    let limits = Limits::default();
    let mut seen = Seen::default();
    let mut n = 0u64;
    loop {
        let more = g.next_into(&mut line, &mut key).is_some();
        if more {
            let ev = codec::decode(&line, &journey, &limits).expect("generated events decode");
            engine.apply(&ev, &mut outs);
            outs.clear();
            n += 1;
        }
        if more && !n.is_multiple_of(1500) {
            continue;
        }
        // A checkpoint, as the barrier takes it, and as the engine encodes it itself.
        seen.checkpoints += 1;
        let seq = u64::from(seen.checkpoints);
        engine.take_changed_slots(&mut held, &mut freed);
        let tombstones: Vec<String> = engine.take_removed().into_iter().map(String::from).collect();
        let positions = BTreeMap::from([("web".to_string(), n as i64)]);
        own.checkpoint_digested(&engine, &held, &freed, &tombstones, seq, &positions, &mut own_digests);

        from_copy.checkpoint_tail(&engine, &tombstones, seq, &positions);
        engine.copy_changed(&held, &freed, Some(&copy_digests), &mut copy);
        // The writer's side reads only the copy: the engine moves on first.
        from_copy.prepend_copied(&copy, Some(&mut copy_digests));
        assert_eq!(owned(&from_copy), owned(&own), "checkpoint {seq}: the same records, in the same order");
        assert_eq!(copy_digests.digest(), own_digests.digest(), "checkpoint {seq}: the same digest");
        assert_eq!(copy_digests.digest(), engine.digest(), "checkpoint {seq}: the state's digest");
        assert_eq!(copy_digests.timed(), own_digests.timed(), "checkpoint {seq}: the same slots with extras");

        // Without a snapshot store (changelog only): no digests, the same records.
        plain.checkpoint_tail(&engine, &tombstones, seq, &positions);
        engine.copy_changed(&held, &freed, None, &mut plain_copy);
        plain.prepend_copied(&plain_copy, None);
        assert_eq!(owned(&plain), owned(&own), "checkpoint {seq}: the same records without digests");
        engine.settle_taken(true);

        let records = copy.len() - (0..copy.len()).filter(|&k| !copy.is_record(k)).count();
        assert_eq!(records, held.len());
        seen.records += records;
        seen.digest_only += copy.len() - records;
        seen.freed += freed.len();
        seen.tombstones += tombstones.len();
        for (k, v) in owned(&own) {
            if k.starts_with(b"\0id/") || k.starts_with(b"\0ln/") {
                seen.identity += 1;
            } else if let Some(v) = v.filter(|v| v.first() == Some(&b'P')) {
                tags(&engine, &v, &mut seen.tags);
            }
        }
        if !more {
            break;
        }
    }
    // The stream exercised what a record and a digest read: expiries (freed slots and their
    // tombstones), identity records, slots with expiring extras, each trailer kind.
    assert!(seen.checkpoints >= 10, "{seen:?}");
    assert!(seen.freed > 0 && seen.tombstones > 0, "{seen:?}");
    assert!(seen.identity > 0 && seen.digest_only > 0, "{seen:?}");
    assert!(seen.tags.iter().skip(1).all(|&t| t > 0), "{seen:?}");
    assert!(engine.census().prospects > 0);
}
