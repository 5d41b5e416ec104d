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
