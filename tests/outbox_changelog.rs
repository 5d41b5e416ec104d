//! The outbox through the real changelog topic (Tansu, `KafkaChangelog`): a checkpoint whose
//! outbox takes more than the producer's `message.max.bytes` is written in parts, appended
//! durably, and read back whole by a restore; the next checkpoint's tombstones empty it.
//! (Before the parts, `append` failed to enqueue the single outbox record, for good.)

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use microfunnel::core::engine::outbox::outbox_part;
use microfunnel::core::xpart::{DEFAULT_MESSAGE_MAX_BYTES, XRecord};
use microfunnel::core::{Engine, Journey, Ts};
use microfunnel::store::changelog::{Fold, Folded};
use microfunnel::store::{Batch, Changelog, KafkaChangelog};

fn journey() -> Arc<Journey> {
    let b2b = include_str!("../deploy/journeys/b2b.toml");
    Arc::new(Journey::from_toml_str(&format!("{b2b}\n[identity]\nresolve = true\n")).unwrap())
}

/// Shard 0's changelog partition read from its start.
fn read(changelog: &KafkaChangelog, journey: &Arc<Journey>) -> Folded {
    let mut fold = Fold::empty(journey);
    let mut reader = changelog.open(0).unwrap();
    reader.read(None, &mut |offset, key, value| fold.push(0, offset, key, value)).unwrap();
    fold.finish()
}

#[test]
fn an_outbox_past_message_max_bytes_goes_through_the_real_changelog_in_parts_and_reads_back() {
    let settings = support::settings("outbox-changelog");
    let topic = support::unique("outbox-changelog");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(microfunnel::kafka::ensure_changelog(&settings.kafka, &topic, 3)).unwrap();
    let changelog = KafkaChangelog::new(&settings.kafka, None, &topic).unwrap();
    let journey = journey();
    let mut engine = Engine::new(Arc::clone(&journey));
    engine.resolve_across(0, 3);
    // 3,000 forgets of three 200-byte identifiers each: about 1.9 MB.
    let records: Vec<(u32, XRecord)> = (0..3000)
        .map(|n| {
            let ids = (0..3).map(|k| format!("{k}-{n:0>198}")).collect();
            (1 + n % 2, XRecord::Forget { ids, ts: Ts(i64::from(n)) })
        })
        .collect();
    let (held, bytes) = {
        engine.restore_outbox(records.clone(), 1);
        engine.outbox_size()
    };
    assert!(bytes > 3 * DEFAULT_MESSAGE_MAX_BYTES / 2, "{held} records, {bytes} bytes");
    let deadline = || Instant::now() + Duration::from_secs(30);
    let positions = |n: i64| BTreeMap::from([("web".to_string(), n)]);

    engine.seal_outbox();
    let mut batch = Batch::default();
    let changed = engine.take_changed();
    batch.checkpoint(&engine, &changed, &[], 1, &positions(1));
    let parts: Vec<usize> = batch.records().filter_map(|(k, _)| outbox_part(k)).collect();
    assert!(parts.len() >= 2, "{parts:?}");
    changelog.append(0, &batch, deadline()).expect("every part fits the producer's message.max.bytes");
    engine.settle_taken(true);
    assert_eq!(engine.settle_outbox(true).len(), records.len());
    let read1 = read(&changelog, &journey);
    assert_eq!(read1.seq, 1);
    assert_eq!(read1.engine.outbox().cloned().collect::<Vec<_>>(), records, "a restore reads every part, in order");

    // The next checkpoint holds nothing: each part gets a tombstone, and a restore sends nothing.
    engine.seal_outbox();
    let changed = engine.take_changed();
    batch.checkpoint(&engine, &changed, &[], 2, &positions(2));
    let tombstones: Vec<_> = batch.records().filter(|(k, _)| outbox_part(k).is_some()).collect();
    assert_eq!(tombstones.len(), parts.len());
    assert!(tombstones.iter().all(|(_, v)| v.is_none()));
    changelog.append(0, &batch, deadline()).unwrap();
    let read2 = read(&changelog, &journey);
    assert_eq!(read2.seq, 2);
    assert_eq!(read2.engine.outbox().count(), 0);
}
