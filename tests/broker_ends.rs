//! The test harness's end of a partition ([`support::TopicEnds`]) against the local broker: the
//! offset after the last acknowledged record, after batches of several records, where the
//! broker's reported high watermark (`ListOffsets`) can stop short of a batch's last records.
//! The identity tests wait on it ("the identity topic is drained"): a wait satisfied by a
//! short watermark reads a checkpoint that has not seen the last records yet.

mod support;

use rdkafka::consumer::Consumer;
use std::time::Duration;
use support::*;

#[test]
fn the_end_of_a_partition_is_its_last_acknowledged_record_after_batches_of_several() {
    let s = setup("ends");
    let topic = web(&s).to_string();
    let ends = TopicEnds::new(&topic);
    let listed = watermarks_consumer();
    let key = key_in_partition("k", 0, 3);
    let (mut end, mut short) = (0i64, 0);
    for i in 0..60 {
        // One batch of up to 7 records (the producer lingers), as the service sends records.
        let batch: Vec<In> =
            (0..i % 7 + 1).map(|j| keyed(&key, format!("{{\"batch\":{i},\"record\":{j}}}").into_bytes())).collect();
        end = produce(&topic, &batch).iter().map(|&(_, offset)| offset + 1).max().unwrap().max(end);
        assert_eq!(ends.ends()[&0], end, "batch {i}");
        short += usize::from(listed.fetch_watermarks(&topic, 0, Duration::from_secs(5)).unwrap().1 < end);
    }
    eprintln!("the listed high watermark stopped short of the end after {short} of 60 batches");
}

/// What the identity tests compare a shard's position with once every horizon settled: the
/// end of the records that move people ([`TopicEnds::people_ends`], here any record that is
/// not a `progress` record). The reader reads from the beginning, a few fetch cycles per call:
/// until it has read to the end ([`TopicEnds::read_to`]) the people ends are a prefix, and
/// nothing may be taken as drained (a long topic of large records takes several calls).
#[test]
fn the_end_of_the_records_that_move_people_counts_only_once_read_to_the_end() {
    let s = setup("people-ends");
    let topic = web(&s).to_string();
    let key = key_in_partition("k", 0, 3);
    let big = vec![b'x'; 100_000];
    produce(&topic, &(0..500).map(|_| keyed(&key, big.clone())).collect::<Vec<_>>());
    let end = produce(&topic, &[keyed(&key, b"not a progress record".to_vec())])[0].1 + 1;
    let ends = TopicEnds::new(&topic);
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut calls = 0;
    loop {
        let all = ends.ends();
        calls += 1;
        assert_eq!(all[&0], end, "the end itself");
        if ends.read_to(&all) {
            assert_eq!(ends.people_ends()[&0], end, "read to the end: the last record that moves people");
            break;
        }
        assert!(ends.people_ends().get(&0).is_none_or(|&e| e < end), "a prefix while not read to the end");
        assert!(std::time::Instant::now() < deadline, "read to the end within {DEADLINE:?}");
    }
    eprintln!("read to the end after {calls} calls");
}
