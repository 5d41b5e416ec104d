//! The consume → decode → apply → emit loop, one dedicated thread per instance.
//!
//! Shard `p` is partition number `p` of every (co-partitioned) input topic; it owns one
//! [`Engine`]. Everything CPU-bound runs on this thread, never on the async runtime. librdkafka
//! runs rebalance callbacks inside `poll` on this same thread, so a revoke finds no work in
//! flight: it runs the checkpoint barrier, then drops the shard.
//!
//! The checkpoint (every `commit_interval_ms` or `commit_every_messages`, on revoke and on
//! shutdown), for every shard that changed:
//! 1. flush the producer, so every output so far is acknowledged;
//! 2. capture: encode the changelog records of the prospects changed since the previous
//!    checkpoint (and the state digest) and hand them to the checkpoint writer thread, which
//!    writes them and a checkpoint record to the changelog, waits until the broker acknowledged
//!    them, then writes, fsyncs and renames them as a delta file on the shard's snapshot chain
//!    (and rewrites the chain's base from its files when the deltas have grown);
//! 3. only when every shard of the checkpoint is durable, commit the input offsets it covers.
//!
//! An output the broker refused, or a snapshot that could not be written, stops the commit.
//! Assigning a shard restores its state (snapshot chain, topped up from the changelog) and seeks its
//! inputs to exactly the offsets that state covers.
//!
//! A shard's input partitions are merged by event time ([`merge`]): a delivered message is
//! processed at once only while the shard has nothing buffered and its other inputs are caught
//! up; otherwise librdkafka's message is held in its partition's queue, and after every polled batch each shard
//! takes the queue head with the smallest event time, waiting (bounded) for a partition that
//! has nothing buffered but a possible backlog. Buffered messages are beyond the shard's
//! positions, so a checkpoint never covers them; a revoke drops them and they are read again.
//!
//! Where each part lives: this module holds [`run`] (the loop: poll → route → merge → tick) and
//! the pipeline's `State`, whose methods are spread over the child modules, one role each:
//! - `shard`: one shard's engine, input positions, checkpoint sequence and owed tombstones;
//! - `inputs`: the merge queues (arrival, [`merge::decide`] applied, pause/resume, the cached
//!   high watermarks);
//! - `handle`: one message decoded, applied and emitted, and its hot-path metrics;
//! - `barrier`: the checkpoint (flush, capture, submit to the writer) and the commit decision
//!   (`InFlight::offsets`);
//! - `rebalance`: the consumer context; assign (restore or resume a parked shard) and revoke
//!   (checkpoint, then park);
//! - `tick`: idle advance, funnel records, consumer lag;
//! - `writer`: the checkpoint writer thread (changelog append, then snapshot save);
//! - `restore`: where an assigned shard's state comes from (`restore::plan`) and reading it;
//! - `emit`: outputs to topics; `status`: what HTTP shows of each shard.
//!
//! The stores themselves (snapshot files, the Kafka changelog, in-memory versions of both) are
//! `crate::store`; `tests.rs` drives the barrier, rebalance and idle advance against the
//! in-memory ones, no broker.

mod barrier;
mod emit;
mod handle;
mod identity;
mod inputs;
pub mod merge;
pub mod query;
mod rebalance;
mod restore;
mod shard;
pub mod status;
#[cfg(test)]
mod tests;
mod tick;
mod writer;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};

use crate::codec::{InputSpec, Limits};
use crate::config::Settings;
use crate::core::unmapped::UnmappedNames;
use crate::core::{Journey, Output, Ts};
use crate::kafka::{self, KafkaSetupError, OutputProducer};
use crate::store::{Changelog, FileStore, KafkaChangelog, SnapshotStore};
use crate::telemetry::Metrics;

use barrier::InFlight;
use handle::HotMetrics;
pub use rebalance::{PipelineConsumer, PipelineContext};
use shard::Shard;
use status::{ShardStatus, Status};
use tick::record_lag;
use writer::Writer;

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Setup(#[from] KafkaSetupError),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("{0} output records were not acknowledged; offsets after them were not committed")]
    Undelivered(u64),
    #[error("producer flush did not finish before the deadline; offsets were not committed")]
    FlushTimeout,
    #[error("snapshots of the last checkpoint were not written before the deadline; offsets were not committed")]
    SnapshotTimeout,
    #[error("cannot start the snapshot writer: {0}")]
    Writer(std::io::Error),
}

/// Everything the loop and the rebalance callbacks share. Only this thread touches it; the
/// mutex exists because librdkafka's context must be `Sync`.
struct State {
    settings: Settings,
    journey: Arc<Journey>,
    limits: Limits,
    /// How each input topic is decoded, in `kafka.input_topics` order.
    specs: Vec<InputSpec>,
    producer: Arc<OutputProducer>,
    failed_seen: u64,
    metrics: Metrics,
    shards: BTreeMap<i32, Shard>,
    /// Shards revoked after a successful checkpoint: their state matches the committed offsets,
    /// so if the next assignment gives the partition back (eager rebalancing revokes everything)
    /// they resume instead of starting empty. Dropped when the partition goes elsewhere.
    parked: BTreeMap<i32, Shard>,
    parked_status: BTreeMap<i32, ShardStatus>,
    ready: Arc<AtomicBool>,
    hot: HotMetrics,
    store: Option<Arc<dyn SnapshotStore + Sync>>,
    writer: Option<Writer>,
    changelog: Option<Arc<dyn Changelog>>,
    in_flight: Option<InFlight>,
    status: Status,
    /// Outputs handed to the producer since the last barrier.
    unflushed: bool,
    /// Event names that map to no signal since start (bounded), logged with the funnel records
    /// when new ones arrived (`unmapped_logged`: the count at the last log line).
    unmapped: UnmappedNames,
    unmapped_logged: u64,
    since_barrier: u64,
    last_barrier: Instant,
    outputs: Vec<Output>,
    buf: Vec<u8>,
    /// The input topics as C strings, for `inputs::cached_watermarks`.
    topic_names: Vec<CString>,
    /// Messages buffered for the merge, over all shards.
    buffered: usize,
    /// Questions of the HTTP query API (when it is on).
    queries: Option<query::Inbox>,
    /// The identity topic among the inputs (journey `[identity] resolve`), once the partition
    /// count is known.
    identity: Option<identity::IdentityInput>,
    /// Where the outboxes of durable checkpoints go (the identity topic; a list in tests).
    identity_sink: identity::IdentitySink,
}

impl State {
    /// The state of a pipeline that has no shard yet; starts the checkpoint writer if anything
    /// is persisted.
    fn new(
        settings: &Settings,
        journey: Arc<Journey>,
        h: Handles,
        producer: OutputProducer,
        failed_seen: u64,
        store: Option<Arc<dyn SnapshotStore + Sync>>,
        changelog: Option<Arc<dyn Changelog>>,
    ) -> Result<State, PipelineError> {
        let writer = match (&store, &changelog) {
            (None, None) => None,
            (s, c) => Some(
                Writer::start(
                    s.as_ref().map(|s| Box::new(Arc::clone(s)) as Box<dyn SnapshotStore>),
                    c.clone(),
                    Arc::clone(&journey),
                    settings.checkpoint.rewrite_share,
                )
                .map_err(PipelineError::Writer)?,
            ),
        };
        let l = &settings.limits;
        Ok(State {
            hot: HotMetrics::new(&h.metrics, &journey, &settings.kafka.input_topics),
            journey,
            limits: Limits { max_bytes: l.max_bytes, max_depth: l.max_depth, ..Limits::default() },
            specs: settings.input_specs(),
            producer: Arc::new(producer),
            failed_seen,
            metrics: h.metrics.clone(),
            shards: BTreeMap::new(),
            parked: BTreeMap::new(),
            parked_status: BTreeMap::new(),
            ready: Arc::clone(&h.ready),
            store,
            writer,
            changelog,
            in_flight: None,
            status: h.status.clone(),
            unflushed: false,
            unmapped: UnmappedNames::default(),
            unmapped_logged: 0,
            since_barrier: 0,
            last_barrier: Instant::now(),
            outputs: Vec::with_capacity(64),
            buf: Vec::with_capacity(4096),
            // A name with a NUL byte cannot be subscribed to anyway; its watermarks stay unknown.
            topic_names: settings
                .kafka
                .input_topics
                .iter()
                .map(|t| CString::new(t.as_str()).unwrap_or_default())
                .collect(),
            buffered: 0,
            queries: h.queries,
            identity: None,
            identity_sink: identity::IdentitySink::default(),
            settings: settings.clone(),
        })
    }
}

fn wall_now() -> Ts {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Ts(ms)
}

/// What `run` needs from its caller.
pub struct Handles {
    pub metrics: Metrics,
    pub ready: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
    pub status: Status,
    /// The answering side of the query API (`None`: off).
    pub queries: Option<query::Inbox>,
}

/// The start-time checks that need the brokers: the input topics exist and are co-partitioned,
/// the journey fits their partition count, and the identity and changelog topics (created when
/// missing) have it. `app::start` runs them before it binds the HTTP port, so a refused start
/// holds nothing; [`run`] runs them again (they are idempotent). Returns the partition count.
pub fn check_topics(settings: &Settings, journey: &Journey) -> Result<usize, PipelineError> {
    let k = &settings.kafka;
    // Clients that join and send nothing: librdkafka checks `kafka.client` as `run`'s would.
    let _: rdkafka::producer::BaseProducer = kafka::producer_config(k).create()?;
    let probe: BaseConsumer = kafka::consumer_config(k).create()?;
    let counts = kafka::partition_counts(&probe, &k.input_topics, &k.brokers, Duration::from_secs(10))?;
    let partitions = kafka::check_copartitioned(&counts)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(PipelineError::Writer)?;
    if journey.identity.is_some() {
        rt.block_on(kafka::ensure_identity_topic(k, &k.identity_topic(), partitions))?;
    }
    if settings.checkpoint.changelog {
        rt.block_on(kafka::ensure_changelog(k, &settings.changelog_topic(), partitions))?;
    }
    Ok(partitions)
}

/// Connects, checks the input topics, joins the group and runs until `stop` is set; then
/// flushes, commits and leaves the group. Blocking: call it on a dedicated thread.
pub fn run(mut settings: Settings, journey: Arc<Journey>, h: Handles) -> Result<(), PipelineError> {
    let partitions = check_topics(&settings, &journey)?;
    // With identity resolution the identity topic is one more input of every shard (last).
    let identity_topic = journey.identity.is_some().then(|| settings.kafka.identity_topic());
    let inputs = settings.kafka.input_topics.clone();
    settings.kafka.input_topics.extend(identity_topic.clone());
    let k = &settings.kafka;
    let changelog_topic = settings.checkpoint.changelog.then(|| settings.changelog_topic());
    let (producer, failed) = kafka::producer(k, Some(h.metrics.clone()))?;
    let changelog = match &changelog_topic {
        Some(t) => Some(Arc::new(KafkaChangelog::new(k, Some(h.metrics.clone()), t)?) as Arc<dyn Changelog>),
        None => None,
    };
    let store = (!settings.checkpoint.dir.as_os_str().is_empty()).then(|| {
        Arc::new(FileStore::new(&settings.checkpoint.dir, &k.group_id, settings.checkpoint.keep))
            as Arc<dyn SnapshotStore + Sync>
    });
    let (stop, ready) = (Arc::clone(&h.stop), Arc::clone(&h.ready));
    let metrics = h.metrics.clone();
    let state = State::new(&settings, journey, h, producer, failed.load(Ordering::Acquire), store, changelog)?;
    let consumer = inputs::ConsumerGuard(
        kafka::consumer_config(k).create_with_context(PipelineContext { state: Mutex::new(state) })?,
    );
    // What librdkafka refuses to enqueue (key + value), as the output producer is configured.
    let message_max_bytes = k
        .client
        .get("message.max.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(crate::core::xpart::DEFAULT_MESSAGE_MAX_BYTES);
    if let Some(name) = identity_topic {
        let input = inputs.len();
        consumer.context().lock().identity = Some(identity::IdentityInput {
            input,
            name,
            partitions: partitions as u32,
            message_max_bytes,
            renewal: crate::core::xpart::Renewal::for_commit_interval(Duration::from_millis(
                settings.pipeline.commit_interval_ms,
            )),
            history: settings.pipeline.idle_advance_ms == 0,
        });
    }
    if let Some(inbox) = &consumer.context().lock().queries {
        inbox.set_partitions(partitions);
    }
    let topics: Vec<&str> = k.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(topics = ?k.input_topics, partitions, group = %k.group_id, "joining the group");

    let p = &settings.pipeline;
    let (commit_every, commit_interval) = (p.commit_every_messages, Duration::from_millis(p.commit_interval_ms));
    let funnel_interval = Duration::from_millis(p.funnel_interval_ms);
    let idle = (p.idle_advance_ms > 0).then(|| Duration::from_millis(p.idle_advance_ms));
    let (mut last_funnel, mut last_lag, mut last_idle) = (Instant::now(), Instant::now(), Instant::now());
    let mut last_progress = Instant::now();
    let result = loop {
        if stop.load(Ordering::Acquire) {
            break Ok(());
        }
        // Drain up to a batch of ready messages; the clocks are read once per batch. The state
        // lock is not held across `poll`: rebalance callbacks run inside it and take the lock.
        let (batch, wall) = (Instant::now(), wall_now());
        let mut n = 0u32;
        while n < 512 {
            let timeout = if n == 0 { Duration::from_millis(100) } else { Duration::ZERO };
            match consumer.poll(timeout) {
                Some(Ok(msg)) => {
                    consumer.context().lock().arrive(&consumer, msg, batch, wall);
                    n += 1;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                None => break,
            }
        }
        let mut st = consumer.context().lock();
        st.refresh_watermarks(&consumer);
        st.merge(&consumer, batch, wall);
        let now = Instant::now();
        let took = now.duration_since(batch).as_secs_f64();
        for _ in 0..n {
            st.hot.consume.observe(took);
        }
        st.hot.flush();
        st.producer.poll(Duration::ZERO);
        if st.since_barrier >= commit_every || now.duration_since(st.last_barrier) >= commit_interval {
            let deadline = now + Duration::from_millis(p.shutdown_timeout_ms);
            if let Err(e) = st.checkpoint(&*consumer, CommitMode::Async, deadline, false) {
                break Err(e);
            }
        }
        if let Err(e) = st.poll_checkpoint(&*consumer, CommitMode::Async, None) {
            break Err(e);
        }
        st.answer_queries();
        if let Some(idle) = idle
            && now.duration_since(last_idle) >= Duration::from_secs(1)
        {
            st.advance_idle(idle, now, wall_now());
            last_idle = now;
        }
        if now.duration_since(last_progress) >= Duration::from_secs(1) {
            st.publish_progress(now);
            last_progress = now;
        }
        if now.duration_since(last_funnel) >= funnel_interval {
            st.publish_funnel();
            last_funnel = now;
        }
        drop(st);
        if now.duration_since(last_lag) >= Duration::from_secs(5) {
            record_lag(&consumer, &metrics);
            last_lag = now;
        }
    };
    ready.store(false, Ordering::Release);
    let deadline = Instant::now() + Duration::from_millis(p.shutdown_timeout_ms);
    let closing = {
        let mut st = consumer.context().lock();
        st.publish_funnel();
        st.checkpoint(&*consumer, CommitMode::Sync, deadline, true)
    };
    consumer.unsubscribe();
    drop(consumer);
    tracing::info!("pipeline stopped");
    result.and(closing)
}
