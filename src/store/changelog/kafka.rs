//! The changelog as a Kafka topic: partition p holds shard p's records.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::{Batch, Changelog, ChangelogError, ChangelogReader, Visit};
use crate::config::Kafka;
use crate::kafka::{self, KafkaSetupError, OutputProducer};
use crate::store::ChangelogPosition;
use crate::telemetry::Metrics;

/// Writes through two producers, used by the checkpoint writer only (so the outputs' flush
/// never waits for checkpoint records): `records` for prospect records, reporting failures
/// only, and `marker` for the checkpoint record that closes them, reporting every
/// acknowledgement (its offset is the checkpoint's changelog position). Reads with a consumer
/// of its own per restore, assigned (not subscribed) to the shard's partition.
pub struct KafkaChangelog {
    topic: String,
    records: OutputProducer,
    marker: OutputProducer,
    kafka: Kafka,
    metrics: Option<Metrics>,
}

impl KafkaChangelog {
    pub fn new(k: &Kafka, metrics: Option<Metrics>, topic: &str) -> Result<KafkaChangelog, KafkaSetupError> {
        let records = kafka::changelog_producer(k, metrics.clone(), topic, false)?;
        let marker = kafka::changelog_producer(k, metrics.clone(), topic, true)?;
        Ok(KafkaChangelog { topic: topic.to_string(), records, marker, kafka: k.clone(), metrics })
    }

    fn send(&self, producer: &OutputProducer, shard: i32, key: &[u8], value: Option<&[u8]>) -> bool {
        let record = BaseRecord::<[u8], [u8]>::to(&self.topic).partition(shard).key(key);
        let record = match value {
            Some(v) => record.payload(v),
            None => record,
        };
        kafka::send(producer, record)
    }
}

impl Changelog for KafkaChangelog {
    fn topic(&self) -> &str {
        &self.topic
    }

    /// The prospect records go through a producer that reports failures only: once it is flushed
    /// with no new failure, all of them are in the log. Then the checkpoint record goes through
    /// the marker producer, whose report carries its offset, past every prospect record of the
    /// checkpoint: the position after it is the checkpoint's changelog position.
    fn append(&self, shard: i32, batch: &Batch, deadline: Instant) -> Result<ChangelogPosition, ChangelogError> {
        let Some(last) = batch.len().checked_sub(1) else {
            return Err(ChangelogError::Enqueue { shard });
        };
        let failed_before = self.records.context().failed.load(Ordering::Acquire);
        let mut sent = 0u64;
        for i in 0..last {
            let (key, value) = batch.record(i);
            if !self.send(&self.records, shard, key, value) {
                return Err(ChangelogError::Enqueue { shard });
            }
            sent += 1;
        }
        if let Some(m) = &self.metrics {
            m.sent.changelog.inc_by(sent);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if kafka::flush(&self.records, left).is_err() {
            return Err(ChangelogError::Deadline { shard });
        }
        let failed = self.records.context().failed.load(Ordering::Acquire) - failed_before;
        if failed > 0 {
            return Err(ChangelogError::Refused { shard, count: failed });
        }
        let before = self.marker.context().changelog_acks(shard);
        let (key, value) = batch.record(last);
        if !self.send(&self.marker, shard, key, value) {
            return Err(ChangelogError::Enqueue { shard });
        }
        if let Some(m) = &self.metrics {
            m.sent.changelog.inc();
        }
        loop {
            let now = self.marker.context().changelog_acks(shard);
            if now.failed > before.failed {
                return Err(ChangelogError::CheckpointRefused { shard });
            }
            if now.delivered > before.delivered {
                return Ok(ChangelogPosition { topic: self.topic.clone(), next: now.last + 1 });
            }
            if Instant::now() >= deadline {
                return Err(ChangelogError::Deadline { shard });
            }
            // Serves the marker producer's delivery reports (only the writer thread polls it).
            kafka::serve_and_nap(&self.marker);
        }
    }

    fn open(&self, shard: i32) -> Result<Box<dyn ChangelogReader + '_>, ChangelogError> {
        let unreadable = |e: KafkaError| ChangelogError::Unreadable { shard, reason: e.to_string() };
        let consumer: BaseConsumer<QuietEof> = kafka::base_config(&self.kafka)
            .set("group.id", format!("{}-restore", self.kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .create_with_context(QuietEof)
            .map_err(unreadable)?;
        // The end is the broker's high watermark, as everywhere in Kafka.
        let (low, high) = consumer.fetch_watermarks(&self.topic, shard, Duration::from_secs(10)).map_err(unreadable)?;
        Ok(Box::new(Reader { consumer, topic: &self.topic, shard, low, high }))
    }
}

struct Reader<'a> {
    consumer: BaseConsumer<QuietEof>,
    topic: &'a str,
    shard: i32,
    low: i64,
    high: i64,
}

/// How long a restore may read one partition.
const READ_DEADLINE: Duration = Duration::from_secs(600);

impl ChangelogReader for Reader<'_> {
    fn extent(&self) -> (i64, i64) {
        (self.low, self.high)
    }

    fn read(&mut self, from: Option<i64>, visit: &mut Visit<'_>) -> Result<(), ChangelogError> {
        let shard = self.shard;
        let unreadable = |e: KafkaError| ChangelogError::Unreadable { shard, reason: e.to_string() };
        let mut tpl = TopicPartitionList::new();
        let offset = from.map_or(Offset::Beginning, Offset::Offset);
        tpl.add_partition_offset(self.topic, shard, offset).map_err(unreadable)?;
        self.consumer.assign(&tpl).map_err(unreadable)?;
        let deadline = Instant::now() + READ_DEADLINE;
        loop {
            if Instant::now() > deadline {
                return Err(unreadable(KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut)));
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                None => continue,
                Some(Err(KafkaError::PartitionEOF(_))) => return Ok(()),
                Some(Err(e)) => tracing::warn!(shard, error = %e, "reading the changelog"),
                Some(Ok(m)) => visit(m.offset(), m.key().unwrap_or_default(), m.payload()),
            }
        }
    }
}

/// The reader's client context: reaching the end of the partition is how a restore knows it is
/// done, not an error worth a log line.
struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_))
            && error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF)
        {
            tracing::error!(error = %error, reason, "changelog reader");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}
