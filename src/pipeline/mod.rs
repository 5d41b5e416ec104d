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
//! 2. capture the engine (an incremental copy into the shard's spare engine: only what changed
//!    since the previous capture) and hand it to the checkpoint writer thread, which writes the
//!    changed prospects and a checkpoint record to the changelog, waits until the broker
//!    acknowledged them, then encodes, writes, fsyncs and renames the snapshot file;
//! 3. only when every shard of the checkpoint is durable, commit the input offsets it covers.
//!
//! An output the broker refused, or a snapshot that could not be written, stops the commit.
//! Assigning a shard restores its state (snapshot, topped up from the changelog) and seeks its
//! inputs to exactly the offsets that state covers.
//!
//! A shard's input partitions are merged by event time ([`merge`]): a delivered message is
//! processed at once only while the shard has nothing buffered and its other inputs are caught
//! up; otherwise it is copied into its partition's queue, and after every polled batch each shard
//! takes the queue head with the smallest event time, waiting (bounded) for a partition that
//! has nothing buffered but a possible backlog. Buffered messages are beyond the shard's
//! positions, so a checkpoint never covers them; a revoke drops them and they are read again.

mod checkpoint;
mod emit;
pub mod merge;
pub mod status;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::local::{LocalHistogram, LocalIntCounter};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::producer::Producer;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::{self, Limits};
use crate::config::Settings;
use crate::core::{Engine, Journey, Output, Source, Ts};
use crate::kafka::{self, KafkaSetupError, OutputProducer};
use crate::snapshot::{FileStore, Pending, SnapshotStore};
use crate::telemetry::Metrics;

use checkpoint::{Job, RestoreEnv, Writer};
use merge::{Decision, Input};
use status::{CheckpointStatus, ShardStatus, Status};

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

/// Metric children resolved once, so the per-event path does no label lookups, and counted
/// locally (no atomic operation per event): [`HotMetrics::flush`] publishes them once per polled
/// batch, so a scrape sees them at most one batch (100 ms) late.
struct HotMetrics {
    /// `[signal][source]`; the last row is `unmapped`.
    consumed: Vec<[LocalIntCounter; 2]>,
    duplicates: LocalIntCounter,
    late: LocalIntCounter,
    ahead: LocalIntCounter,
    conflicts: LocalIntCounter,
    ignored: LocalIntCounter,
    reopened: LocalIntCounter,
    event_time: LocalHistogram,
    consume: LocalHistogram,
}

impl HotMetrics {
    fn new(metrics: &Metrics, journey: &Journey) -> HotMetrics {
        let names = journey.signals.iter().map(|s| s.name.as_str()).chain(std::iter::once("unmapped"));
        let consumed = names
            .map(|n| {
                [Source::Web, Source::Crm]
                    .map(|src| metrics.events_consumed.with_label_values(&[src.as_str(), n]).local())
            })
            .collect();
        HotMetrics {
            consumed,
            duplicates: metrics.duplicates.local(),
            late: metrics.late_events.local(),
            ahead: metrics.events_ahead.local(),
            conflicts: metrics.duplicate_conflicts.local(),
            ignored: metrics.events_ignored.local(),
            reopened: metrics.reopened.local(),
            event_time: metrics.latency.with_label_values(&["event_time"]).local(),
            consume: metrics.latency.with_label_values(&["consume"]).local(),
        }
    }

    fn flush(&self) {
        self.consumed.iter().flatten().for_each(LocalIntCounter::flush);
        self.duplicates.flush();
        self.late.flush();
        self.ahead.flush();
        self.conflicts.flush();
        self.ignored.flush();
        self.reopened.flush();
        self.event_time.flush();
        self.consume.flush();
    }
}

struct Shard {
    engine: Engine,
    last_input: Instant,
    /// Next offset per input topic (index into `kafka.input_topics`), -1 = nothing read yet.
    positions: Vec<i64>,
    /// `positions` at the last completed checkpoint.
    checkpointed: Vec<i64>,
    seq: u64,
    /// Changelog ids to delete (written by a checkpoint that did not finish).
    tombstones: Vec<String>,
    /// Delivered messages not yet processed, for the event-time merge.
    inputs: Inputs,
}

impl Shard {
    fn new(engine: Engine, topics: usize) -> Shard {
        Shard {
            engine,
            last_input: Instant::now(),
            positions: vec![-1; topics],
            checkpointed: vec![-1; topics],
            seq: 0,
            tombstones: Vec::new(),
            inputs: Inputs::new(topics),
        }
    }

    /// What the merge knows of input `t`.
    fn input(&self, t: usize) -> Input {
        let i = &self.inputs;
        match i.queues[t].front() {
            Some(b) => Input::Head { ts: b.ts, seq: b.seq },
            None if i.caught_up(t, self.positions[t]) => Input::CaughtUp,
            None => Input::Behind,
        }
    }

    fn position_map(&self, topics: &[String]) -> BTreeMap<String, i64> {
        topics.iter().zip(&self.positions).filter(|(_, p)| **p >= 0).map(|(t, p)| (t.clone(), *p)).collect()
    }

    fn due(&self) -> bool {
        self.positions != self.checkpointed || self.engine.has_changes() || !self.tombstones.is_empty()
    }
}

/// A delivered message held for the event-time merge, with its merge key.
struct Buffered {
    msg: OwnedMessage,
    /// Event time of the decoded payload; `None` if it does not decode.
    ts: Option<Ts>,
    /// Arrival order within the shard.
    seq: u64,
}

/// One shard's input partitions as the merge sees them, by input topic index.
struct Inputs {
    queues: Vec<VecDeque<Buffered>>,
    /// Next offset after the last delivered message, -1 = none delivered since the assignment.
    delivered: Vec<i64>,
    /// Low and high watermarks librdkafka cached from its last fetch (refreshed once per polled
    /// batch, no network); -1 = unknown.
    low: Vec<i64>,
    high: Vec<i64>,
    paused: Vec<bool>,
    /// Since when the shard waits for a partition with a possible backlog.
    waiting_since: Option<Instant>,
    /// Wait time counted in the metric up to here (`None` once the wait timed out).
    wait_counted: Option<Instant>,
    seq: u64,
}

impl Inputs {
    fn new(topics: usize) -> Inputs {
        Inputs {
            queues: (0..topics).map(|_| VecDeque::new()).collect(),
            delivered: vec![-1; topics],
            low: vec![-1; topics],
            high: vec![-1; topics],
            paused: vec![false; topics],
            waiting_since: None,
            wait_counted: None,
            seq: 0,
        }
    }

    /// Whether input `t`'s next message (after what was delivered, or the shard's position) is
    /// at its high watermark: nothing more to read for now.
    fn caught_up(&self, t: usize, position: i64) -> bool {
        let high = self.high[t];
        high >= 0 && self.delivered[t].max(position).max(self.low[t]) >= high
    }

    fn buffered(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Adds the wait since the last count to the metric.
    fn count_wait(&mut self, now: Instant, metrics: &Metrics) {
        if let Some(from) = self.wait_counted.replace(now) {
            metrics.input_wait_seconds.inc_by(now.saturating_duration_since(from).as_secs_f64());
        }
    }
}

/// The low and high watermarks librdkafka cached for a partition from its last fetch response
/// (no network round trip; rust-rdkafka does not wrap this call). -1 when unknown.
fn cached_watermarks(consumer: &PipelineConsumer, topic: &CStr, partition: i32) -> (i64, i64) {
    let (mut low, mut high) = (-1i64, -1i64);
    // SAFETY: the client handle is valid while `consumer` lives, `topic` is NUL-terminated and
    // outlives the call, and librdkafka only writes the two out-parameters.
    let err = unsafe {
        rdkafka::bindings::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            partition,
            &mut low,
            &mut high,
        )
    };
    if err != rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
        return (-1, -1);
    }
    (low.max(-1), high.max(-1))
}

/// Resumes a partition paused because its merge queue was full. librdkafka fetches again from
/// the next offset not yet delivered; with `kafka.resume_rewind` it is read again from that many
/// offsets before (brokers that answer a fetch from inside a record batch with the next batch, or
/// nothing) and what was delivered already is skipped on arrival. Returns whether it resumed.
fn resume(consumer: &PipelineConsumer, topic: &str, partition: i32, delivered: i64, rewind: i64) -> bool {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    if let Err(e) = consumer.resume(&tpl) {
        tracing::warn!(error = %e, topic, partition, "cannot resume a partition");
        return false;
    }
    if rewind > 0 && delivered >= 0 {
        let from = Offset::Offset((delivered - rewind).max(0));
        if let Err(e) = consumer.seek(topic, partition, from, Duration::ZERO) {
            tracing::warn!(error = %e, topic, partition, "cannot rewind a resumed partition");
        }
    }
    tracing::debug!(topic, partition, "input resumed");
    true
}

/// The merge key of a payload: its (first) event's time, `None` if none decodes. A batch
/// envelope is merged as a whole by its first event, as `replay` does.
fn merge_key(payload: &[u8], journey: &Journey, limits: &Limits) -> Option<Ts> {
    codec::decode_each(payload, journey, limits).find_map(|(_, r)| r.ok()).map(|ev| ev.ts)
}

/// A checkpoint whose snapshots are being written; its offsets are committed when all are done.
struct InFlight {
    started: Instant,
    waiting: BTreeSet<i32>,
    commits: Vec<(i32, Vec<i64>)>,
    failed: bool,
}

/// Everything the loop and the rebalance callbacks share. Only this thread touches it; the
/// mutex exists because librdkafka's context must be `Sync`.
struct State {
    settings: Settings,
    journey: Arc<Journey>,
    limits: Limits,
    producer: Arc<OutputProducer>,
    failed_seen: u64,
    metrics: Metrics,
    shards: BTreeMap<i32, Shard>,
    /// Shards revoked after a successful checkpoint: their state matches the committed offsets,
    /// so if the next assignment gives the partition back (eager rebalancing revokes everything)
    /// they resume instead of starting empty. Dropped when the partition goes elsewhere.
    parked: BTreeMap<i32, Shard>,
    parked_status: BTreeMap<i32, ShardStatus>,
    /// Per shard, the engine of its last capture, reused by the next one.
    spares: BTreeMap<i32, Engine>,
    ready: Arc<AtomicBool>,
    hot: HotMetrics,
    store: Option<Arc<FileStore>>,
    writer: Option<Writer>,
    /// The changelog's topic and producers (used by the checkpoint writer only).
    changelog: Option<Arc<kafka::ChangelogProducers>>,
    in_flight: Option<InFlight>,
    status: Status,
    /// Outputs handed to the producer since the last barrier.
    unflushed: bool,
    since_barrier: u64,
    last_barrier: Instant,
    outputs: Vec<Output>,
    buf: Vec<u8>,
    /// The input topics as C strings, for [`cached_watermarks`].
    topic_names: Vec<CString>,
    /// Messages buffered for the merge, over all shards.
    buffered: usize,
}

pub struct PipelineContext {
    state: Mutex<State>,
}

impl PipelineContext {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic mid-event on this thread; its state is still
        // consistent at event granularity, and the process is exiting anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for PipelineContext {}

impl ConsumerContext for PipelineContext {
    /// Replaces librdkafka's default handling so an assignment starts each partition at the
    /// offsets its restored state covers (not at the group's committed offsets).
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.lock().assign(tpl);
                let r = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = r {
                    tracing::error!(error = %e, "cannot take the assignment");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.lock().revoke(consumer, tpl);
                let r = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = r {
                    tracing::error!(error = %e, "cannot give up the assignment");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "offset commit failed; it is retried at the next checkpoint");
        }
    }
}

pub type PipelineConsumer = BaseConsumer<PipelineContext>;

fn wall_now() -> Ts {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    Ts(ms)
}

impl State {
    /// Applies one message. `batch` and `wall` are read once per polled batch, not per message.
    fn handle(&mut self, msg: &impl Message, batch: Instant, wall: Ts) {
        let p = msg.partition();
        let topic = self.settings.kafka.input_topics.iter().position(|t| t == msg.topic()).unwrap_or(0);
        let State { shards, journey, limits, metrics, outputs, producer, settings, buf, .. } = self;
        let topics = settings.kafka.input_topics.len();
        // Every assigned partition has a shard (restored in `assign`); this is a safety net.
        let shard = shards.entry(p).or_insert_with(|| Shard::new(Engine::new(Arc::clone(journey)), topics));
        shard.last_input = batch;
        // The state already covers everything before its position: a message below it comes from
        // a rewound start (kafka.resume_rewind) or a re-delivered batch, and is skipped.
        if msg.offset() < shard.positions[topic] {
            return;
        }
        if shard.positions[topic] >= 0 && msg.offset() > shard.positions[topic] {
            tracing::debug!(
                partition = p,
                expected = shard.positions[topic],
                got = msg.offset(),
                "input offsets skip ahead"
            );
        }
        shard.positions[topic] = msg.offset() + 1;
        let payload = msg.payload().unwrap_or_default();
        // One event, or each item of a Segment batch; a bad item is dead-lettered on its own.
        for (item, result) in codec::decode_each(payload, journey, limits) {
            match result {
                Err(e) => {
                    metrics.events_rejected.with_label_values(&[e.reason().as_str()]).inc();
                    let detail = match item {
                        Some(k) => format!("batch item {k}: {e}"),
                        None => e.to_string(),
                    };
                    emit::dead_letter(producer, metrics, &settings.kafka.topics.dead_letter, msg, e.reason(), &detail);
                    self.unflushed = true;
                }
                Ok(ev) => {
                    let before = shard.engine.stats().clone();
                    shard.engine.apply(&ev, outputs);
                    let (stats, rejected) = (shard.engine.stats(), before.rejected);
                    // An event the engine refuses (source mismatch, ...) counts as rejected only.
                    if stats.rejected == rejected {
                        let row = ev.signal.map_or(journey.signals.len(), |s| s.0 as usize);
                        self.hot.consumed[row][usize::from(ev.source == Source::Crm)].inc();
                    }
                    let hot = &self.hot;
                    hot.duplicates.inc_by(stats.duplicates - before.duplicates);
                    hot.late.inc_by(stats.late - before.late);
                    hot.ahead.inc_by(stats.ahead - before.ahead);
                    hot.conflicts.inc_by(stats.duplicate_conflicts - before.duplicate_conflicts);
                    hot.ignored.inc_by(stats.ignored - before.ignored);
                    hot.reopened.inc_by(stats.reopened - before.reopened);
                    if !outputs.is_empty() {
                        let ctx = emit::Ctx { producer, topics: &settings.kafka.topics, metrics, journey };
                        for o in outputs.drain(..) {
                            emit::output(&ctx, &shard.engine, &o, Some(msg), buf);
                        }
                        self.unflushed = true;
                    }
                    self.hot.event_time.observe(wall.since(ev.ts).as_secs_f64().max(0.0));
                }
            }
        }
        self.since_barrier += 1;
    }

    /// A message as librdkafka delivered it: processed at once when its shard has nothing
    /// buffered and every other input of the shard is caught up (live traffic), else copied into
    /// its partition's queue for [`State::merge`]. With `pipeline.merge_buffer_messages = 0`,
    /// always processed at once (delivery order).
    fn arrive(&mut self, consumer: &PipelineConsumer, msg: &BorrowedMessage<'_>, batch: Instant, wall: Ts) {
        let limit = self.settings.pipeline.merge_buffer_messages;
        if limit == 0 {
            return self.handle(msg, batch, wall);
        }
        let p = msg.partition();
        let topics = &self.settings.kafka.input_topics;
        let t = topics.iter().position(|x| x == msg.topic()).unwrap_or(0);
        let journey = &self.journey;
        let shard = self.shards.entry(p).or_insert_with(|| Shard::new(Engine::new(Arc::clone(journey)), topics.len()));
        shard.last_input = batch;
        let inputs = &mut shard.inputs;
        // Covered by the state already (kafka.resume_rewind, a re-delivered batch), or queued.
        if msg.offset() < shard.positions[t].max(inputs.delivered[t]) {
            return;
        }
        inputs.delivered[t] = msg.offset() + 1;
        let fast = inputs.queues.iter().all(VecDeque::is_empty)
            && (0..topics.len()).all(|i| i == t || inputs.caught_up(i, shard.positions[i]));
        if fast {
            return self.handle(msg, batch, wall);
        }
        let ts = merge_key(msg.payload().unwrap_or_default(), &self.journey, &self.limits);
        let seq = inputs.seq;
        inputs.seq += 1;
        inputs.queues[t].push_back(Buffered { msg: msg.detach(), ts, seq });
        self.buffered += 1;
        if inputs.queues[t].len() > limit && !inputs.paused[t] {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(msg.topic(), p);
            match consumer.pause(&tpl) {
                Ok(()) => {
                    inputs.paused[t] = true;
                    tracing::debug!(topic = msg.topic(), partition = p, "input paused: merge queue full");
                }
                Err(e) => tracing::warn!(error = %e, topic = msg.topic(), partition = p, "cannot pause a partition"),
            }
        }
    }

    /// Reads the watermarks librdkafka cached for every assigned input partition (once per
    /// polled batch).
    fn refresh_watermarks(&mut self, consumer: &PipelineConsumer) {
        let State { shards, topic_names, .. } = self;
        for (p, shard) in shards.iter_mut() {
            for (t, name) in topic_names.iter().enumerate() {
                let (low, high) = cached_watermarks(consumer, name, *p);
                shard.inputs.low[t] = low;
                shard.inputs.high[t] = high;
            }
        }
    }

    /// Processes buffered messages of every shard in event-time order (see [`merge::decide`])
    /// until each shard is empty or waits for a lagging partition.
    fn merge(&mut self, consumer: &PipelineConsumer, batch: Instant, wall: Ts) {
        if self.buffered == 0 {
            return;
        }
        let now = Instant::now();
        let max_wait = Duration::from_millis(self.settings.pipeline.max_input_wait_ms);
        let limit = self.settings.pipeline.merge_buffer_messages;
        let busy: Vec<i32> = self.shards.iter().filter(|(_, s)| s.inputs.buffered() > 0).map(|(p, _)| *p).collect();
        for p in busy {
            while let Some(shard) = self.shards.get_mut(&p) {
                let heads: Vec<Input> = (0..shard.inputs.queues.len()).map(|t| shard.input(t)).collect();
                let inputs = &mut shard.inputs;
                if !heads.contains(&Input::Behind) {
                    inputs.count_wait(now, &self.metrics);
                    (inputs.waiting_since, inputs.wait_counted) = (None, None);
                }
                let (t, reordered) = match merge::decide(&heads, inputs.waiting_since, now, max_wait) {
                    Decision::Idle => break,
                    Decision::Wait => {
                        if inputs.waiting_since.is_none() {
                            (inputs.waiting_since, inputs.wait_counted) = (Some(now), Some(now));
                        }
                        inputs.count_wait(now, &self.metrics);
                        break;
                    }
                    Decision::Take { input, reordered } => (input, reordered),
                    Decision::TakeAfterTimeout { input, reordered } => {
                        if inputs.wait_counted.is_some() {
                            inputs.count_wait(now, &self.metrics);
                            inputs.wait_counted = None;
                            self.metrics.input_wait_timeouts.inc();
                        }
                        (input, reordered)
                    }
                };
                let Some(b) = inputs.queues[t].pop_front() else { break };
                self.buffered -= 1;
                if inputs.paused[t] && inputs.queues[t].len() < limit / 2 {
                    let topic = &self.settings.kafka.input_topics[t];
                    let rewind = i64::from(self.settings.kafka.resume_rewind);
                    inputs.paused[t] = !resume(consumer, topic, p, inputs.delivered[t], rewind);
                }
                if reordered {
                    self.metrics.input_reordered.inc();
                }
                self.handle(&b.msg, batch, wall);
            }
        }
        self.metrics.input_buffered.set(self.buffered as i64);
    }

    /// Drops a shard's buffered messages (they are beyond its positions and are read again) and
    /// resumes its paused partitions.
    fn drop_inputs(&mut self, consumer: &PipelineConsumer, p: i32) {
        let topics = self.settings.kafka.input_topics.len();
        let Some(shard) = self.shards.get_mut(&p) else { return };
        let inputs = std::mem::replace(&mut shard.inputs, Inputs::new(topics));
        self.buffered -= inputs.buffered();
        for (t, paused) in inputs.paused.iter().enumerate() {
            if *paused {
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(&self.settings.kafka.input_topics[t], p);
                if let Err(e) = consumer.resume(&tpl) {
                    tracing::warn!(error = %e, partition = p, "cannot resume a revoked partition");
                }
            }
        }
        self.metrics.input_buffered.set(self.buffered as i64);
    }

    /// Flushes the producer until everything sent is acknowledged; fails on any refusal.
    fn flush(&mut self, deadline: Instant) -> Result<(), PipelineError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PipelineError::FlushTimeout);
            }
            match kafka::flush(&self.producer, left.min(Duration::from_secs(5))) {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "producer flush not finished yet"),
            }
        }
        self.unflushed = false;
        let failed = self.producer.context().failed.load(Ordering::Acquire);
        if failed > self.failed_seen {
            return Err(PipelineError::Undelivered(failed - self.failed_seen));
        }
        Ok(())
    }

    /// Starts a checkpoint of every shard that changed (module docs); with `wait`, also waits
    /// for its snapshots and commits. Without, the commit happens in [`State::poll_checkpoint`].
    fn checkpoint(
        &mut self,
        consumer: &PipelineConsumer,
        mode: CommitMode,
        deadline: Instant,
        wait: bool,
    ) -> Result<(), PipelineError> {
        if self.in_flight.is_some() {
            if !wait {
                return Ok(());
            }
            self.poll_checkpoint(consumer, CommitMode::Sync, Some(deadline))?;
        }
        let started = Instant::now();
        self.since_barrier = 0;
        self.last_barrier = started;
        let due: Vec<i32> = self.shards.iter().filter(|(_, s)| s.due()).map(|(p, _)| *p).collect();
        if self.unflushed || !due.is_empty() {
            self.flush(deadline)?;
        }
        if due.is_empty() {
            return Ok(());
        }
        let mut flight =
            InFlight { started, waiting: BTreeSet::new(), commits: Vec::with_capacity(due.len()), failed: false };
        let topics = &self.settings.kafka.input_topics;
        for p in due {
            let shard = self.shards.get_mut(&p).expect("due shards exist");
            shard.seq += 1;
            let changed = shard.engine.take_changed();
            flight.commits.push((p, shard.positions.clone()));
            let Some(w) = &self.writer else { continue };
            let what = Pending {
                group: self.settings.kafka.group_id.clone(),
                shard: p,
                seq: shard.seq,
                written_at: wall_now().to_string(),
                positions: shard.position_map(topics),
                changelog: None,
            };
            let changelog = self.changelog.as_ref().map(|producers| checkpoint::ChangelogJob {
                producers: Arc::clone(producers),
                changed,
                tombstones: std::mem::take(&mut shard.tombstones),
                deadline,
            });
            let mut engine = self.spares.remove(&p).unwrap_or_else(|| Engine::new(Arc::clone(&self.journey)));
            shard.engine.capture_into(&mut engine);
            if w.submit(Job { engine, what, changelog, source: shard.engine.lineage() }) {
                flight.waiting.insert(p);
            } else {
                flight.failed = true;
            }
        }
        self.metrics.checkpoint_pause.observe(started.elapsed().as_secs_f64());
        self.in_flight = Some(flight);
        let block = wait.then_some(deadline);
        self.poll_checkpoint(consumer, if wait { CommitMode::Sync } else { mode }, block)
    }

    /// Collects finished snapshot writes; once the in-flight checkpoint is complete, commits its
    /// offsets (or, if a write failed, reports it and commits nothing). With `block`, waits for
    /// completion until that deadline.
    fn poll_checkpoint(
        &mut self,
        consumer: &PipelineConsumer,
        mode: CommitMode,
        block: Option<Instant>,
    ) -> Result<(), PipelineError> {
        let Some(flight) = self.in_flight.as_mut() else { return Ok(()) };
        while !flight.waiting.is_empty() {
            let done = match (&self.writer, block) {
                (None, _) => break,
                (Some(w), None) => match w.done.try_recv() {
                    Ok(d) => d,
                    Err(_) => return Ok(()),
                },
                (Some(w), Some(deadline)) => {
                    match w.done.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(d) => d,
                        Err(_) => {
                            self.in_flight = None;
                            self.metrics.checkpoints.with_label_values(&["failed"]).inc();
                            return Err(PipelineError::SnapshotTimeout);
                        }
                    }
                }
            };
            flight.waiting.remove(&done.shard);
            if self.shards.contains_key(&done.shard) {
                self.spares.insert(done.shard, done.spare);
            }
            match done.result {
                Ok(None) => {}
                Ok(Some(header)) => {
                    let bytes = header.body_len as i64;
                    self.metrics.snapshot_bytes.with_label_values(&[&done.shard.to_string()]).set(bytes);
                    self.status.update(done.shard, |s| {
                        s.checkpoint = Some(CheckpointStatus {
                            seq: header.seq,
                            positions: header.positions.clone(),
                            digest: Some(header.digest.clone()),
                            prospects: header.prospects,
                            snapshot_seconds: done.secs,
                        });
                    });
                    tracing::debug!(shard = done.shard, seq = done.seq, bytes, secs = done.secs, "snapshot written");
                }
                Err(e) => {
                    flight.failed = true;
                    tracing::error!(shard = done.shard, seq = done.seq, error = %e, "CHECKPOINT NOT DURABLE: offsets stay uncommitted until a checkpoint succeeds");
                    // What the changelog did not get is written again next time (if the shard
                    // still holds the engine those prospects belong to).
                    if let Some(shard) = self.shards.get_mut(&done.shard).or_else(|| self.parked.get_mut(&done.shard))
                        && shard.engine.lineage() == done.source
                    {
                        done.changed.iter().for_each(|ix| shard.engine.mark_changed(ix.0));
                        shard.tombstones.extend(done.tombstones);
                    }
                }
            }
        }
        let Some(flight) = self.in_flight.take() else { return Ok(()) };
        if flight.failed {
            self.metrics.checkpoints.with_label_values(&["failed"]).inc();
            return Ok(());
        }
        let topics = &self.settings.kafka.input_topics;
        let mut tpl = TopicPartitionList::new();
        for (p, positions) in &flight.commits {
            for (t, &next) in topics.iter().zip(positions) {
                if next >= 0 {
                    tpl.add_partition_offset(t, *p, Offset::Offset(next))?;
                }
            }
        }
        if tpl.count() > 0 {
            consumer.commit(&tpl, mode)?;
        }
        for (p, positions) in flight.commits {
            if let Some(shard) = self.shards.get_mut(&p).or_else(|| self.parked.get_mut(&p)) {
                shard.checkpointed = positions.clone();
            }
            if self.store.is_none() {
                let positions =
                    topics.iter().zip(&positions).filter(|(_, n)| **n >= 0).map(|(t, n)| (t.clone(), *n)).collect();
                self.status.update(p, |s| {
                    s.checkpoint = Some(CheckpointStatus {
                        seq: s.checkpoint.as_ref().map_or(1, |c| c.seq + 1),
                        positions,
                        digest: None,
                        prospects: s.prospects,
                        snapshot_seconds: 0.0,
                    });
                });
            }
        }
        self.metrics.checkpoints.with_label_values(&["ok"]).inc();
        self.metrics.checkpoint_seconds.observe(flight.started.elapsed().as_secs_f64());
        self.metrics.commit_barrier.observe(flight.started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Restores the shards of a new assignment and points every partition at the offsets its
    /// state covers.
    fn assign(&mut self, tpl: &mut TopicPartitionList) {
        self.metrics.rebalances.with_label_values(&["assign"]).inc();
        self.ready.store(false, Ordering::Release);
        let topics = self.settings.kafka.input_topics.clone();
        let partitions: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        let (mut restored, mut resumed) = (Vec::new(), Vec::new());
        let fresh: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.shards.contains_key(p) && !self.parked.contains_key(p))
            .collect();
        self.metrics.restoring.set(fresh.len() as i64);
        for p in &partitions {
            if self.shards.contains_key(p) {
                continue;
            }
            if let Some(shard) = self.parked.remove(p) {
                resumed.push(*p);
                if let Some(st) = self.parked_status.remove(p) {
                    self.status.set(*p, st);
                }
                self.shards.insert(*p, shard);
                continue;
            }
            let started = Instant::now();
            self.status.set(*p, ShardStatus::restoring(*p));
            let shard = if self.settings.checkpoint.persists() {
                let env = RestoreEnv {
                    settings: &self.settings,
                    journey: &self.journey,
                    store: self.store.as_deref().map(|s| s as &dyn SnapshotStore),
                    changelog: self.changelog.as_ref().map(|c| c.topic.as_str()),
                    metrics: &self.metrics,
                };
                let r = checkpoint::restore(*p, &env);
                let mut shard = Shard::new(r.engine, topics.len());
                for (i, t) in topics.iter().enumerate() {
                    shard.positions[i] = r.positions.get(t).copied().unwrap_or(-1);
                }
                shard.checkpointed = shard.positions.clone();
                shard.seq = r.seq;
                shard.tombstones = r.tombstones;
                for id in &r.rewrite {
                    if let Some(ix) = shard.engine.find(id) {
                        shard.engine.mark_changed(ix.0);
                    }
                }
                restored.push((*p, r.source, shard.engine.len()));
                let restored_checkpoint = (r.source != "none").then(|| CheckpointStatus {
                    seq: r.seq,
                    positions: r.positions.clone(),
                    digest: Some(format!("{:016x}", shard.engine.digest())),
                    prospects: shard.engine.len() as u64,
                    snapshot_seconds: 0.0,
                });
                self.status.update(*p, |s| {
                    s.restored_from = r.source;
                    s.checkpoint = restored_checkpoint;
                });
                // Prime the spare now, while the shard is not processing anyway: the shard's
                // first checkpoint is then an incremental capture too.
                if self.writer.is_some() && !shard.engine.is_empty() {
                    let mut spare = self.spares.remove(p).unwrap_or_else(|| Engine::new(Arc::clone(&self.journey)));
                    shard.engine.capture_into(&mut spare);
                    self.spares.insert(*p, spare);
                }
                shard
            } else {
                Shard::new(Engine::new(Arc::clone(&self.journey)), topics.len())
            };
            let secs = started.elapsed().as_secs_f64();
            self.metrics.restore_seconds.observe(secs);
            self.metrics.restoring.dec();
            let prospects = shard.engine.len() as u64;
            self.status.update(*p, |s| {
                s.state = "running";
                s.restore_seconds = secs;
                s.prospects = prospects;
            });
            self.shards.insert(*p, shard);
        }
        self.parked.clear();
        self.parked_status.clear();
        self.spares.retain(|p, _| partitions.contains(p));
        // Each partition continues where its state ends; no state = from the beginning (replay),
        // unless nothing is persisted at all (then the group's committed offsets, state empty).
        let elements: Vec<(String, i32)> =
            tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        for (t, p) in elements {
            let i = topics.iter().position(|x| *x == t).unwrap_or(0);
            let pos = self.shards.get(&p).map_or(-1, |s| s.positions[i]);
            let offset = match (pos, self.settings.checkpoint.persists()) {
                (n, _) if n >= 0 => Offset::Offset((n - self.settings.kafka.resume_rewind as i64).max(0)),
                (_, true) => Offset::Beginning,
                (_, false) => Offset::Stored,
            };
            if let Err(err) = tpl.set_partition_offset(&t, p, offset) {
                tracing::error!(error = %err, topic = %t, partition = p, "cannot set the start offset");
            }
        }
        self.metrics.restoring.set(0);
        self.metrics.shards.set(self.shards.len() as i64);
        self.ready.store(true, Ordering::Release);
        tracing::info!(restored = ?restored, resumed = ?resumed, "shards assigned");
    }

    /// Checkpoints, then drops the revoked shards (parked, in case the next assignment gives
    /// them back).
    fn revoke(&mut self, consumer: &PipelineConsumer, tpl: &TopicPartitionList) {
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        let deadline = Instant::now() + Duration::from_millis(self.settings.pipeline.shutdown_timeout_ms);
        let checkpointed = match self.checkpoint(consumer, CommitMode::Sync, deadline, true) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "checkpoint on revoke failed; the next owner restores the previous checkpoint");
                false
            }
        };
        let revoked: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        for p in &revoked {
            self.drop_inputs(consumer, *p);
            let status = self.status.remove(*p);
            if let Some(shard) = self.shards.remove(p)
                && checkpointed
            {
                self.parked.insert(*p, shard);
                if let Some(st) = status {
                    self.parked_status.insert(*p, st);
                }
            }
        }
        self.metrics.shards.set(self.shards.len() as i64);
        tracing::info!(partitions = ?revoked, "shards revoked");
    }

    /// Idle shards move their watermark to the wall clock minus the allowed lateness.
    fn advance_idle(&mut self, idle: Duration) {
        let now = wall_now().minus(self.journey.allowed_lateness);
        let State { shards, journey, metrics, outputs, producer, settings, buf, .. } = self;
        for shard in shards.values_mut() {
            // A shard with buffered input is not idle: it waits for a lagging partition.
            if shard.last_input.elapsed() < idle
                || shard.engine.watermark() >= now
                || shard.inputs.queues.iter().any(|q| !q.is_empty())
            {
                continue;
            }
            shard.engine.advance_to(now, outputs);
            if !outputs.is_empty() {
                let ctx = emit::Ctx { producer, topics: &settings.kafka.topics, metrics, journey };
                for o in outputs.drain(..) {
                    emit::output(&ctx, &shard.engine, &o, None::<&OwnedMessage>, buf);
                }
                self.unflushed = true;
            }
        }
    }

    /// Funnel aggregates per shard to the funnel topic; stage gauges summed over shards.
    fn publish_funnel(&mut self) {
        let State { shards, journey, metrics, producer, settings, buf, status, .. } = self;
        let mut per_stage = vec![0i64; journey.stages.len()];
        let mut total = 0i64;
        for (p, shard) in shards.iter() {
            emit::funnel(
                producer,
                metrics,
                &settings.kafka.topics.funnel,
                &settings.kafka.group_id,
                *p,
                &shard.engine,
                buf,
            );
            for (i, n) in shard.engine.funnel().in_stage.iter().enumerate() {
                per_stage[i] += *n as i64;
            }
            total += shard.engine.len() as i64;
            let n = shard.engine.len() as u64;
            status.update(*p, |s| s.prospects = n);
        }
        for (i, st) in journey.stages.iter().enumerate() {
            metrics.prospects.with_label_values(&[&st.name]).set(per_stage[i]);
        }
        metrics.prospects_total.set(total);
        self.unflushed = true;
    }
}

fn record_lag(consumer: &PipelineConsumer, metrics: &Metrics) {
    let Ok(positions) = consumer.position() else { return };
    for e in positions.elements() {
        let Offset::Offset(pos) = e.offset() else { continue };
        if let Ok((_, high)) = consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_millis(500)) {
            let p = e.partition().to_string();
            metrics.consumer_lag.with_label_values(&[e.topic(), &p]).set((high - pos).max(0));
        }
    }
}

/// What `run` needs from its caller.
pub struct Handles {
    pub metrics: Metrics,
    pub ready: Arc<AtomicBool>,
    pub stop: Arc<AtomicBool>,
    pub status: Status,
}

/// Connects, checks the input topics, joins the group and runs until `stop` is set; then
/// flushes, commits and leaves the group. Blocking: call it on a dedicated thread.
pub fn run(settings: Settings, journey: Arc<Journey>, h: Handles) -> Result<(), PipelineError> {
    let k = &settings.kafka;
    let changelog = settings.checkpoint.changelog.then(|| settings.changelog_topic());
    let (producer, failed) = kafka::producer(k, Some(h.metrics.clone()))?;
    let changelog_producers = match &changelog {
        Some(t) => Some(Arc::new(kafka::changelog_producers(k, Some(h.metrics.clone()), t)?)),
        None => None,
    };
    let store = (!settings.checkpoint.dir.as_os_str().is_empty())
        .then(|| Arc::new(FileStore::new(&settings.checkpoint.dir, &k.group_id, settings.checkpoint.keep)));
    let writer = match (&store, &changelog) {
        (None, None) => None,
        (s, _) => Some(
            Writer::start(s.as_ref().map(|s| Box::new(Arc::clone(s)) as Box<dyn SnapshotStore>))
                .map_err(PipelineError::Writer)?,
        ),
    };
    let limits =
        Limits { max_bytes: settings.limits.max_bytes, max_depth: settings.limits.max_depth, ..Limits::default() };
    let state = State {
        hot: HotMetrics::new(&h.metrics, &journey),
        journey,
        limits,
        producer: Arc::new(producer),
        failed_seen: failed.load(Ordering::Acquire),
        metrics: h.metrics.clone(),
        shards: BTreeMap::new(),
        parked: BTreeMap::new(),
        parked_status: BTreeMap::new(),
        spares: BTreeMap::new(),
        ready: Arc::clone(&h.ready),
        store,
        writer,
        changelog: changelog_producers,
        in_flight: None,
        status: h.status.clone(),
        unflushed: false,
        since_barrier: 0,
        last_barrier: Instant::now(),
        outputs: Vec::with_capacity(64),
        buf: Vec::with_capacity(4096),
        // A name with a NUL byte cannot be subscribed to anyway; its watermarks stay unknown.
        topic_names: k.input_topics.iter().map(|t| CString::new(t.as_str()).unwrap_or_default()).collect(),
        buffered: 0,
        settings: settings.clone(),
    };
    let consumer: PipelineConsumer =
        kafka::consumer_config(k).create_with_context(PipelineContext { state: Mutex::new(state) })?;
    let counts = kafka::partition_counts(&consumer, &k.input_topics, &k.brokers, Duration::from_secs(10))?;
    let partitions = kafka::check_copartitioned(&counts)?;
    if let Some(topic) = &changelog {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(PipelineError::Writer)?;
        rt.block_on(kafka::ensure_changelog(k, topic, partitions))?;
    }
    let topics: Vec<&str> = k.input_topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    tracing::info!(topics = ?k.input_topics, partitions, group = %k.group_id, "joining the group");

    let p = &settings.pipeline;
    let (commit_every, commit_interval) = (p.commit_every_messages, Duration::from_millis(p.commit_interval_ms));
    let funnel_interval = Duration::from_millis(p.funnel_interval_ms);
    let idle = (p.idle_advance_ms > 0).then(|| Duration::from_millis(p.idle_advance_ms));
    let (mut last_funnel, mut last_lag, mut last_idle) = (Instant::now(), Instant::now(), Instant::now());
    let result = loop {
        if h.stop.load(Ordering::Acquire) {
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
                    consumer.context().lock().arrive(&consumer, &msg, batch, wall);
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
            if let Err(e) = st.checkpoint(&consumer, CommitMode::Async, deadline, false) {
                break Err(e);
            }
        }
        if let Err(e) = st.poll_checkpoint(&consumer, CommitMode::Async, None) {
            break Err(e);
        }
        if let Some(idle) = idle
            && now.duration_since(last_idle) >= Duration::from_secs(1)
        {
            st.advance_idle(idle);
            last_idle = now;
        }
        if now.duration_since(last_funnel) >= funnel_interval {
            st.publish_funnel();
            last_funnel = now;
        }
        drop(st);
        if now.duration_since(last_lag) >= Duration::from_secs(5) {
            record_lag(&consumer, &h.metrics);
            last_lag = now;
        }
    };
    h.ready.store(false, Ordering::Release);
    let deadline = Instant::now() + Duration::from_millis(p.shutdown_timeout_ms);
    let closing = {
        let mut st = consumer.context().lock();
        st.publish_funnel();
        st.checkpoint(&consumer, CommitMode::Sync, deadline, true)
    };
    consumer.unsubscribe();
    drop(consumer);
    tracing::info!("pipeline stopped");
    result.and(closing)
}
