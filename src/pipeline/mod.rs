//! The consume → decode → apply → emit loop, one dedicated thread per instance.
//!
//! Shard `p` is partition number `p` of every (co-partitioned) input topic; it owns one
//! [`Engine`]. Everything CPU-bound runs on this thread, never on the async runtime. librdkafka
//! runs rebalance callbacks inside `poll` on this same thread, so a revoke finds no work in
//! flight: it runs the checkpoint barrier, then drops the shard.
//!
//! The checkpoint barrier (every `commit_interval_ms` or `commit_every_messages`, on revoke and
//! on shutdown): flush the producer so every output so far is acknowledged, then commit the
//! input offsets those outputs cover. An output the broker refused stops the commit, so its
//! input is processed again after a restart (at-least-once; alert ids are deterministic).

mod emit;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{Histogram, IntCounter};
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use crate::codec::{self, Limits};
use crate::config::Settings;
use crate::core::{Engine, Journey, Output, Source, Ts};
use crate::kafka::{self, KafkaSetupError, OutputProducer};
use crate::telemetry::Metrics;

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
}

/// Metric children resolved once, so the per-event path does no label lookups.
struct HotMetrics {
    /// `[signal][source]`; the last row is `unmapped`.
    consumed: Vec<[IntCounter; 2]>,
    event_time: Histogram,
    consume: Histogram,
}

impl HotMetrics {
    fn new(metrics: &Metrics, journey: &Journey) -> HotMetrics {
        let names = journey.signals.iter().map(|s| s.name.as_str()).chain(std::iter::once("unmapped"));
        let consumed = names
            .map(|n| {
                [Source::Web, Source::Crm].map(|src| metrics.events_consumed.with_label_values(&[src.as_str(), n]))
            })
            .collect();
        HotMetrics {
            consumed,
            event_time: metrics.latency.with_label_values(&["event_time"]),
            consume: metrics.latency.with_label_values(&["consume"]),
        }
    }
}

struct Shard {
    engine: Engine,
    last_input: Instant,
}

/// Everything the loop and the rebalance callbacks share. Only this thread touches it; the
/// mutex exists because librdkafka's context must be `Sync`.
struct State {
    settings: Settings,
    journey: Arc<Journey>,
    limits: Limits,
    producer: OutputProducer,
    failed_seen: u64,
    metrics: Metrics,
    shards: BTreeMap<i32, Shard>,
    /// Shards revoked after a successful checkpoint: their state matches the committed offsets,
    /// so if the next assignment gives the partition back (eager rebalancing revokes everything)
    /// they resume instead of starting empty. Dropped when the partition goes elsewhere.
    parked: BTreeMap<i32, Shard>,
    ready: Arc<AtomicBool>,
    /// Next offset to commit per (input topic index, partition), for messages processed since
    /// the last barrier.
    pending: BTreeMap<(usize, i32), i64>,
    hot: HotMetrics,
    /// Outputs handed to the producer since the last barrier.
    unflushed: bool,
    since_barrier: u64,
    last_barrier: Instant,
    outputs: Vec<Output>,
    buf: Vec<u8>,
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
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut st = self.lock();
            st.metrics.rebalances.with_label_values(&["revoke"]).inc();
            let deadline = Instant::now() + Duration::from_millis(st.settings.pipeline.shutdown_timeout_ms);
            let checkpointed = match st.barrier(consumer, CommitMode::Sync, deadline) {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(error = %e, "checkpoint on revoke failed; the next owner reprocesses from the last commit");
                    false
                }
            };
            let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
            for p in &revoked {
                if let Some(shard) = st.shards.remove(p)
                    && checkpointed
                {
                    st.parked.insert(*p, shard);
                }
            }
            st.pending.retain(|(_, p), _| !revoked.contains(p));
            st.metrics.shards.set(st.shards.len() as i64);
            tracing::info!(partitions = ?revoked, "shards revoked");
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut st = self.lock();
                st.metrics.rebalances.with_label_values(&["assign"]).inc();
                let (mut added, mut resumed) = (Vec::new(), Vec::new());
                for e in tpl.elements() {
                    let p = e.partition();
                    if st.shards.contains_key(&p) {
                        continue;
                    }
                    let shard = match st.parked.remove(&p) {
                        Some(parked) => {
                            resumed.push(p);
                            parked
                        }
                        None => {
                            added.push(p);
                            Shard { engine: Engine::new(Arc::clone(&st.journey)), last_input: Instant::now() }
                        }
                    };
                    st.shards.insert(p, shard);
                }
                st.parked.clear();
                st.metrics.shards.set(st.shards.len() as i64);
                st.ready.store(true, Ordering::Release);
                tracing::info!(new = ?added, resumed = ?resumed, "shards assigned");
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
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
    fn handle(&mut self, msg: &BorrowedMessage<'_>, batch: Instant, wall: Ts) {
        let p = msg.partition();
        let State { shards, journey, limits, metrics, outputs, producer, settings, buf, .. } = self;
        let shard =
            shards.entry(p).or_insert_with(|| Shard { engine: Engine::new(Arc::clone(journey)), last_input: batch });
        shard.last_input = batch;
        let payload = msg.payload().unwrap_or_default();
        match codec::decode(payload, journey, limits) {
            Err(e) => {
                metrics.events_rejected.with_label_values(&[e.reason().as_str()]).inc();
                emit::dead_letter(producer, &settings.kafka.topics.dead_letter, msg, e.reason(), &e.to_string());
                self.unflushed = true;
            }
            Ok(ev) => {
                let stats = shard.engine.stats();
                let (dups, late, rejected) = (stats.duplicates, stats.late, stats.rejected);
                shard.engine.apply(&ev, outputs);
                // An event the engine refuses (source mismatch, ...) counts as rejected only.
                if shard.engine.stats().rejected == rejected {
                    let row = ev.signal.map_or(journey.signals.len(), |s| s.0 as usize);
                    self.hot.consumed[row][usize::from(ev.source == Source::Crm)].inc();
                }
                metrics.duplicates.inc_by(shard.engine.stats().duplicates - dups);
                metrics.late_events.inc_by(shard.engine.stats().late - late);
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
        let topic = self.settings.kafka.input_topics.iter().position(|t| t == msg.topic()).unwrap_or(0);
        self.pending.insert((topic, p), msg.offset() + 1);
        self.since_barrier += 1;
    }

    /// Flush → (snapshot, issue 5) → commit. Commits nothing if any output was refused.
    fn barrier(
        &mut self,
        consumer: &PipelineConsumer,
        mode: CommitMode,
        deadline: Instant,
    ) -> Result<(), PipelineError> {
        let started = Instant::now();
        if self.unflushed || !self.pending.is_empty() {
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
        }
        if !self.pending.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for ((topic, p), next) in &self.pending {
                tpl.add_partition_offset(&self.settings.kafka.input_topics[*topic], *p, Offset::Offset(*next))?;
            }
            consumer.commit(&tpl, mode)?;
            self.pending.clear();
        }
        self.since_barrier = 0;
        self.last_barrier = Instant::now();
        self.metrics.commit_barrier.observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Idle shards move their watermark to the wall clock minus the allowed lateness.
    fn advance_idle(&mut self, idle: Duration) {
        let now = wall_now().minus(self.journey.allowed_lateness);
        let State { shards, journey, metrics, outputs, producer, settings, buf, .. } = self;
        for shard in shards.values_mut() {
            if shard.last_input.elapsed() < idle || shard.engine.watermark() >= now {
                continue;
            }
            shard.engine.advance_to(now, outputs);
            if !outputs.is_empty() {
                let ctx = emit::Ctx { producer, topics: &settings.kafka.topics, metrics, journey };
                for o in outputs.drain(..) {
                    emit::output(&ctx, &shard.engine, &o, None, buf);
                }
                self.unflushed = true;
            }
        }
    }

    /// Funnel aggregates per shard to the funnel topic; stage gauges summed over shards.
    fn publish_funnel(&mut self) {
        let State { shards, journey, metrics, producer, settings, buf, .. } = self;
        let mut per_stage = vec![0i64; journey.stages.len()];
        let mut total = 0i64;
        for (p, shard) in shards.iter() {
            emit::funnel(producer, &settings.kafka.topics.funnel, &settings.kafka.group_id, *p, &shard.engine, buf);
            for (i, n) in shard.engine.funnel().in_stage.iter().enumerate() {
                per_stage[i] += *n as i64;
            }
            total += shard.engine.len() as i64;
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
}

/// Connects, checks the input topics, joins the group and runs until `stop` is set; then
/// flushes, commits and leaves the group. Blocking: call it on a dedicated thread.
pub fn run(settings: Settings, journey: Arc<Journey>, h: Handles) -> Result<(), PipelineError> {
    let k = &settings.kafka;
    let (producer, failed) = kafka::producer(k, Some(h.metrics.clone()))?;
    let limits =
        Limits { max_bytes: settings.limits.max_bytes, max_depth: settings.limits.max_depth, ..Limits::default() };
    let state = State {
        hot: HotMetrics::new(&h.metrics, &journey),
        journey,
        limits,
        producer,
        failed_seen: failed.load(Ordering::Acquire),
        metrics: h.metrics.clone(),
        shards: BTreeMap::new(),
        parked: BTreeMap::new(),
        ready: Arc::clone(&h.ready),
        pending: BTreeMap::new(),
        unflushed: false,
        since_barrier: 0,
        last_barrier: Instant::now(),
        outputs: Vec::with_capacity(64),
        buf: Vec::with_capacity(4096),
        settings: settings.clone(),
    };
    let consumer: PipelineConsumer =
        kafka::consumer_config(k).create_with_context(PipelineContext { state: Mutex::new(state) })?;
    let counts = kafka::partition_counts(&consumer, &k.input_topics, &k.brokers, Duration::from_secs(10))?;
    let partitions = kafka::check_copartitioned(&counts)?;
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
                    consumer.context().lock().handle(&msg, batch, wall);
                    n += 1;
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "consumer error");
                    break;
                }
                None => break,
            }
        }
        let now = Instant::now();
        let mut st = consumer.context().lock();
        let took = now.duration_since(batch).as_secs_f64();
        for _ in 0..n {
            st.hot.consume.observe(took);
        }
        st.producer.poll(Duration::ZERO);
        if st.since_barrier >= commit_every || now.duration_since(st.last_barrier) >= commit_interval {
            let deadline = now + Duration::from_millis(p.shutdown_timeout_ms);
            if let Err(e) = st.barrier(&consumer, CommitMode::Async, deadline) {
                break Err(e);
            }
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
        st.barrier(&consumer, CommitMode::Sync, deadline)
    };
    consumer.unsubscribe();
    drop(consumer);
    tracing::info!("pipeline stopped");
    result.and(closing)
}
