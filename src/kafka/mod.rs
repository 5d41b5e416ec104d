//! Kafka edges: client configuration from settings, topic checks and creation, the producer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::Kafka;
use crate::telemetry::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error("kafka client: {0}")]
    Client(#[from] rdkafka::error::KafkaError),
    #[error(
        "input topic `{topic}` does not exist on {brokers}; create it (`microfunnel create-topics`) or fix kafka.input_topics"
    )]
    MissingTopic { topic: String, brokers: String },
    #[error(
        "input topics are not co-partitioned ({counts}); a shard is one partition number of every input topic, so give them the same partition count"
    )]
    NotCoPartitioned { counts: String },
    #[error(
        "changelog topic `{topic}` has {found} partitions but the inputs have {expected}; shard p's state lives in changelog partition p, so delete it (state is rebuilt from snapshots or by replay) or set checkpoint.changelog_topic to a new name"
    )]
    Changelog { topic: String, found: usize, expected: usize },
    #[error(
        "identity topic `{topic}` has {found} partitions but the inputs have {expected}; partition p carries what shard p must do, so delete it once every instance is stopped (nothing in it outlives a drained pipeline) or set kafka.identity_topic to a new name"
    )]
    IdentityTopic { topic: String, found: usize, expected: usize },
    #[error("creating topic `{topic}`: {reason}")]
    CreateTopic { topic: String, reason: String },
}

/// Settings every client shares: brokers, then the user's librdkafka pass-through.
pub fn base_config(k: &Kafka) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &k.brokers);
    c.set_log_level(RDKafkaLogLevel::Warning);
    for (key, value) in &k.client {
        c.set(key, value);
    }
    c
}

/// Consumer: manual offset handling (microfunnel commits after its outputs are acknowledged).
pub fn consumer_config(k: &Kafka) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("group.id", &k.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", k.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", (k.session_timeout_ms / 3).max(500).to_string())
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "100");
    merge(c, base_config(k))
}

/// Producer: acknowledged by all in-sync replicas, retried, ordered per partition.
pub fn producer_config(k: &Kafka) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("max.in.flight.requests.per.connection", "1");
    merge(c, base_config(k))
}

/// The output producer's settings: as [`producer_config`], with delivery reports for failures
/// only. The barrier learns that outputs are acknowledged from `flush` (nothing left in flight)
/// and counts refusals; a report per acknowledged output would be work for nothing.
///
/// `linger.ms` is 50 (Kafka Streams uses 100): an alert reaches its topic at most 50 ms later,
/// in fewer and larger compressed batches (a quarter less CPU in the producer's thread in the
/// end-to-end bench). The checkpoint barrier does not wait for it: [`flush`] sends lingering
/// records at once.
pub fn output_producer_config(k: &Kafka) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("delivery.report.only.error", "true");
    let mut c = merge(c, producer_config(k));
    if !k.client.contains_key("linger.ms") && !k.client.contains_key("queue.buffering.max.ms") {
        c.set("linger.ms", "50");
    }
    c
}

/// `ours` then `theirs` (the user's settings win).
fn merge(mut ours: ClientConfig, theirs: ClientConfig) -> ClientConfig {
    for (k, v) in theirs.config_map().iter() {
        ours.set(*k, *v);
    }
    ours.set_log_level(RDKafkaLogLevel::Warning);
    ours
}

/// Partition counts of `topics`; fails naming a missing topic.
pub fn partition_counts<C: ConsumerContext>(
    consumer: &BaseConsumer<C>,
    topics: &[String],
    brokers: &str,
    timeout: Duration,
) -> Result<Vec<(String, usize)>, KafkaSetupError> {
    let mut out = Vec::new();
    for t in topics {
        let md = consumer.fetch_metadata(Some(t), timeout)?;
        let topic = md.topics().iter().find(|m| m.name() == t);
        match topic {
            Some(m) if m.error().is_none() && !m.partitions().is_empty() => out.push((t.clone(), m.partitions().len())),
            _ => return Err(KafkaSetupError::MissingTopic { topic: t.clone(), brokers: brokers.to_string() }),
        }
    }
    Ok(out)
}

/// Refuses input topics whose partition counts differ; returns the common count.
pub fn check_copartitioned(counts: &[(String, usize)]) -> Result<usize, KafkaSetupError> {
    let first = counts.first().map_or(0, |c| c.1);
    if counts.iter().any(|c| c.1 != first) {
        let counts = counts.iter().map(|(t, n)| format!("{t}: {n}")).collect::<Vec<_>>().join(", ");
        return Err(KafkaSetupError::NotCoPartitioned { counts });
    }
    Ok(first)
}

/// Creates the input and output topics with `k.partitions` partitions (existing ones are kept).
pub async fn create_topics(k: &Kafka) -> Result<Vec<String>, KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = base_config(k).create()?;
    let mut names: Vec<&str> = k.input_topics.iter().map(String::as_str).collect();
    names.extend(
        [&k.topics.hot_leads, &k.topics.journey_events, &k.topics.funnel, &k.topics.dead_letter].map(String::as_str),
    );
    // The identity topic (delete policy, the broker's default: its records are commands).
    let identity = k.identity_topic();
    names.push(&identity);
    let mut topics: Vec<NewTopic<'_>> =
        names.iter().map(|n| NewTopic::new(n, k.partitions, TopicReplication::Fixed(k.replication))).collect();
    // Each instance's held partitions (`members.rs`): one partition, the last record per
    // instance kept.
    let members = crate::members::topic(&k.group_id);
    topics.push(NewTopic::new(&members, 1, TopicReplication::Fixed(k.replication)).set("cleanup.policy", "compact"));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let mut created = Vec::new();
    for r in admin.create_topics(&topics, &opts).await? {
        match r {
            Ok(t) => created.push(t),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(KafkaSetupError::CreateTopic { topic: t, reason: e.to_string() }),
        }
    }
    Ok(created)
}

/// Creates the compacted changelog topic with `partitions` partitions if it is missing, and
/// refuses one whose partition count differs (its partition p holds shard p's state).
pub async fn ensure_changelog(k: &Kafka, topic: &str, partitions: usize) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = base_config(k).create()?;
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(k.replication))
        .set("cleanup.policy", "compact");
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics([&new], &opts).await? {
        match r {
            Ok(_) => tracing::info!(topic, partitions, "changelog topic created (compacted)"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(KafkaSetupError::CreateTopic { topic: t, reason: e.to_string() }),
        }
    }
    let md = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let found = md.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
    if found != partitions {
        return Err(KafkaSetupError::Changelog { topic: topic.to_string(), found, expected: partitions });
    }
    Ok(())
}

/// Creates the identity topic with `partitions` partitions (delete policy) if it is missing,
/// and refuses one whose partition count differs (its partition p is shard p's).
pub async fn ensure_identity_topic(k: &Kafka, topic: &str, partitions: usize) -> Result<(), KafkaSetupError> {
    let admin: AdminClient<DefaultClientContext> = base_config(k).create()?;
    let new = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(k.replication));
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in admin.create_topics([&new], &opts).await? {
        match r {
            Ok(_) => tracing::info!(topic, partitions, "identity topic created"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => return Err(KafkaSetupError::CreateTopic { topic: t, reason: e.to_string() }),
        }
    }
    let md = admin.inner().fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let found = md.topics().iter().find(|t| t.name() == topic).map_or(0, |t| t.partitions().len());
    if found != partitions {
        return Err(KafkaSetupError::IdentityTopic { topic: topic.to_string(), found, expected: partitions });
    }
    Ok(())
}

/// Counts delivery failures so the checkpoint barrier can refuse to commit past them, and
/// remembers the last acknowledged changelog offset per partition (the checkpoint position).
pub struct DeliveryContext {
    pub failed: Arc<AtomicU64>,
    pub metrics: Option<Metrics>,
    pub changelog_topic: Option<String>,
    pub changelog: Mutex<BTreeMap<i32, ChangelogAcks>>,
}

/// Delivery reports of one changelog partition so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangelogAcks {
    /// Highest acknowledged offset (-1: none).
    pub last: i64,
    pub delivered: u64,
    pub failed: u64,
}

impl DeliveryContext {
    /// Delivery reports of changelog partition `partition` so far.
    pub fn changelog_acks(&self, partition: i32) -> ChangelogAcks {
        let acks = self.changelog.lock().unwrap_or_else(|p| p.into_inner());
        acks.get(&partition).copied().unwrap_or(ChangelogAcks { last: -1, delivered: 0, failed: 0 })
    }
}

impl ClientContext for DeliveryContext {}

impl ProducerContext for DeliveryContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Some(t) = &self.changelog_topic {
            let (m, ok) = match result {
                Ok(m) => (m, true),
                Err((_, m)) => (m, false),
            };
            if m.topic() == t {
                let mut acks = self.changelog.lock().unwrap_or_else(|p| p.into_inner());
                let e = acks.entry(m.partition()).or_insert(ChangelogAcks { last: -1, delivered: 0, failed: 0 });
                if ok {
                    e.last = e.last.max(m.offset());
                    e.delivered += 1;
                } else {
                    e.failed += 1;
                }
            }
        }
        if let Err((e, _)) = result {
            self.failed.fetch_add(1, Ordering::AcqRel);
            if let Some(m) = &self.metrics {
                m.producer_errors.inc();
            }
            match &self.changelog_topic {
                Some(topic) => tracing::error!(error = %e, topic, "changelog record not acknowledged by the broker"),
                None => tracing::error!(error = %e, "output record not acknowledged by the broker"),
            }
        }
    }
}

pub type OutputProducer = BaseProducer<DeliveryContext>;

/// The producer of outputs (alerts, journey events, funnel records, dead letters); reports
/// failures only ([`output_producer_config`]).
pub fn producer(k: &Kafka, metrics: Option<Metrics>) -> Result<(OutputProducer, Arc<AtomicU64>), KafkaSetupError> {
    create_producer(output_producer_config(k), metrics, None)
}

/// A producer of changelog records (`store::KafkaChangelog`): with `marker`, one that reports
/// every acknowledgement (for the checkpoint record, whose offset is the checkpoint's position);
/// without, one that reports failures only (for prospect records).
pub fn changelog_producer(
    k: &Kafka,
    metrics: Option<Metrics>,
    topic: &str,
    marker: bool,
) -> Result<OutputProducer, KafkaSetupError> {
    let config = if marker { producer_config(k) } else { output_producer_config(k) };
    Ok(create_producer(config, metrics, Some(topic.to_string()))?.0)
}

fn create_producer(
    config: ClientConfig,
    metrics: Option<Metrics>,
    changelog_topic: Option<String>,
) -> Result<(OutputProducer, Arc<AtomicU64>), KafkaSetupError> {
    let failed = Arc::new(AtomicU64::new(0));
    let ctx = DeliveryContext {
        failed: Arc::clone(&failed),
        metrics,
        changelog_topic,
        changelog: Mutex::new(BTreeMap::new()),
    };
    let p = config.create_with_context(ctx)?;
    Ok((p, failed))
}

/// Sends a record, waiting for queue space instead of dropping it; false if it could not be
/// enqueued at all (counted and logged).
pub fn send(producer: &OutputProducer, mut record: BaseRecord<'_, [u8], [u8]>) -> bool {
    loop {
        match producer.send(record) {
            Ok(()) => return true,
            Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                serve_and_nap(producer);
            }
            Err((e, r)) => {
                // Not retriable here (e.g. message too large): count it; the barrier refuses to
                // commit past it, so the input is reprocessed after a restart.
                tracing::error!(error = %e, topic = r.topic, "cannot enqueue output record");
                producer.context().failed.fetch_add(1, Ordering::AcqRel);
                if let Some(m) = &producer.context().metrics {
                    m.producer_errors.inc();
                }
                return false;
            }
        }
    }
}

/// Serves the delivery reports that are ready, without blocking, then sleeps briefly.
///
/// Waiting inside `BaseProducer::poll` instead would burn the CPU: rust-rdkafka polls until its
/// whole timeout has passed and hands librdkafka the time left in whole milliseconds, so the
/// last, sub-millisecond part of every timeout is a loop of zero-timeout polls (with a 1 ms
/// timeout, all of it; profiled at 5% of the service's CPU while checkpoints waited for acks).
pub fn serve_and_nap(producer: &OutputProducer) {
    producer.poll(Duration::ZERO);
    std::thread::sleep(NAP);
}

/// How long a wait for acknowledgements sleeps between checks.
const NAP: Duration = Duration::from_micros(200);

/// Flushes until everything sent is acknowledged or `timeout` passes. For producers that report
/// failures only (outputs, changelog records): a producer with success reports never empties
/// until they are served, so wait for its reports instead.
///
/// Not `Producer::flush`: rust-rdkafka's version calls `rd_kafka_flush` with a zero timeout, then
/// waits in `BaseProducer::poll` for up to 100 ms, which, with no reports to serve, lasts the
/// whole 100 ms (and its last millisecond spins). Here `rd_kafka_flush` itself waits, in steps:
/// it sleeps until the broker acknowledged everything and, while it waits, sends what lingers
/// without waiting for `linger.ms`. Between steps, failure reports are served (they hold
/// librdkafka's message count up until they are).
pub fn flush(producer: &OutputProducer, timeout: Duration) -> Result<(), rdkafka::error::KafkaError> {
    use rdkafka::error::KafkaError;
    use rdkafka::types::RDKafkaRespErr;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let step = deadline.saturating_duration_since(std::time::Instant::now()).min(FLUSH_STEP);
        // SAFETY: the handle is `producer`'s own, alive for the whole call (borrowed), and
        // `rd_kafka_flush` may be called from any thread.
        let err = unsafe { rdkafka::bindings::rd_kafka_flush(producer.client().native_ptr(), step.as_millis() as i32) };
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR => return Ok(()),
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__TIMED_OUT => {}
            e => return Err(KafkaError::Flush(e.into())),
        }
        producer.poll(Duration::ZERO);
        if std::time::Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
    }
}

/// The longest single wait of [`flush`] before it serves reports and checks its deadline.
const FLUSH_STEP: Duration = Duration::from_millis(10);
