//! The per-shard merge queues: arrival (at once or queued), the event-time merge, pause and
//! resume, the high watermarks librdkafka cached.

use std::collections::VecDeque;
use std::ffi::CStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, Message};
use rdkafka::{Offset, Timestamp, TopicPartitionList};

use crate::codec::{self, InputSpec, Limits};
use crate::core::crm::CrmMemory;
use crate::core::{Engine, Journey, Ts};
use crate::telemetry::Metrics;

use super::handle::Items;
use super::merge::{self, Decision, Input};
use super::shard::Shard;
use super::{PipelineConsumer, State};

/// The events of a held message decoded at arrival, when its format's decode reads no shard
/// state; `None` otherwise (decoded when it is handled).
type Early<'a> = Option<Items<'a>>;

self_cell::self_cell!(
    /// A delivered message and its events decoded from its payload at arrival, borrowing from it
    /// (a decode once, with no owned copy of each event's strings).
    pub(super) struct HeldDecoded {
        owner: Held,
        #[not_covariant]
        dependent: Early,
    }
);

/// A delivered message held for the event-time merge, with its merge key.
pub(super) struct Buffered {
    msg: HeldDecoded,
    /// Event time of the decoded payload; `None` if it does not decode.
    pub(super) ts: Option<Ts>,
    /// Arrival order within the shard.
    pub(super) seq: u64,
}

/// A delivered message held for the event-time merge: librdkafka's own message, not a copy. Its
/// payload is read in place (the arrival's decode borrows from it), and its key and headers are
/// read only if it is dead-lettered: librdkafka parses a record's header list when asked for it,
/// and the copies of key, headers and payload with their allocations were 3-5% of the service's
/// CPU at a million preloaded messages (BENCHMARKS.md, issue 22, branch `perf2`).
///
/// The lifetime is erased: librdkafka requires every message to be destroyed before its client
/// is. Held messages live only in [`Inputs`] queues, which are emptied at a revoke
/// ([`State::drop_inputs`], also run by the consumer's close when it is dropped) and, first of
/// all, by [`ConsumerGuard`]'s drop, on every exit from `pipeline::run`, an unwinding panic
/// included.
pub(super) struct Held(BorrowedMessage<'static>);

impl Held {
    fn of(msg: BorrowedMessage<'_>) -> Held {
        // SAFETY: the message refers to librdkafka memory owned by the consumer's client, which
        // outlives it: see the type's docs (queues emptied before the client is destroyed).
        Held(unsafe { std::mem::transmute::<BorrowedMessage<'_>, BorrowedMessage<'static>>(msg) })
    }
}

impl Message for Held {
    type Headers = BorrowedHeaders;

    fn key(&self) -> Option<&[u8]> {
        self.0.key()
    }

    fn payload(&self) -> Option<&[u8]> {
        self.0.payload()
    }

    unsafe fn payload_mut(&mut self) -> Option<&mut [u8]> {
        // SAFETY: forwarded under the caller's contract.
        unsafe { self.0.payload_mut() }
    }

    fn topic(&self) -> &str {
        self.0.topic()
    }

    fn partition(&self) -> i32 {
        self.0.partition()
    }

    fn offset(&self) -> i64 {
        self.0.offset()
    }

    fn timestamp(&self) -> Timestamp {
        self.0.timestamp()
    }

    fn headers(&self) -> Option<&BorrowedHeaders> {
        self.0.headers()
    }
}

/// The pipeline's consumer, whose drop first empties every shard's merge queues (the messages
/// they hold are librdkafka's and must be destroyed before its client: [`Held`]), then destroys
/// the consumer.
pub(super) struct ConsumerGuard(pub(super) PipelineConsumer);

impl std::ops::Deref for ConsumerGuard {
    type Target = PipelineConsumer;

    fn deref(&self) -> &PipelineConsumer {
        &self.0
    }
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        let mut st = self.0.context().lock();
        let topics = st.settings.kafka.input_topics.len();
        for shard in st.shards.values_mut() {
            shard.inputs = Inputs::new(topics);
        }
        st.buffered = 0;
    }
}

/// How long the query of a partition's high watermark after its assignment may take (it
/// blocks the processing thread once per assigned partition; past it, the cache counts).
const WATERMARK_QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// One shard's input partitions as the merge sees them, by input topic index.
pub(super) struct Inputs {
    pub(super) queues: Vec<VecDeque<Buffered>>,
    /// Next offset after the last delivered message, -1 = none delivered since the assignment.
    delivered: Vec<i64>,
    /// Low and high watermarks librdkafka cached from its last fetch (refreshed once per polled
    /// batch, no network); -1 = unknown.
    low: Vec<i64>,
    high: Vec<i64>,
    /// High watermarks asked of the broker once after the assignment (`refresh_watermarks`;
    /// -1 = unknown): the cache can be stale from an earlier assignment, and a position equal
    /// to a stale cache looks caught up; this floor is the partition's end when assigned.
    floor: Vec<i64>,
    /// Whether `floor` was asked for since the assignment.
    queried: bool,
    paused: Vec<bool>,
    /// Since when the shard waits for a partition with a possible backlog.
    waiting_since: Option<Instant>,
    /// Wait time counted in the metric up to here (`None` once the wait timed out).
    wait_counted: Option<Instant>,
    seq: u64,
}

impl Inputs {
    pub(super) fn new(topics: usize) -> Inputs {
        Inputs {
            queues: (0..topics).map(|_| VecDeque::new()).collect(),
            delivered: vec![-1; topics],
            low: vec![-1; topics],
            high: vec![-1; topics],
            floor: vec![-1; topics],
            queried: false,
            paused: vec![false; topics],
            waiting_since: None,
            wait_counted: None,
            seq: 0,
        }
    }

    /// Whether input `t`'s next message (after what was delivered, or the shard's position) is
    /// at its high watermark: nothing more to read for now. A position past the cached high
    /// watermark proves the cache stale, so it is not: librdkafka keeps a partition's cached
    /// watermarks across an unassign and a later assign, so a shard moved back to an instance
    /// that read its partition before, restored from another instance's later checkpoint,
    /// would see its inputs caught up at the old end, and the merge would take the identity
    /// topic's and the other inputs' backlog before them, making its own inputs `late`. Past
    /// the cache, it waits for the partition's next fetch, which refreshes it; a position equal
    /// to a stale cache is caught by the high watermark asked of the broker at the assignment
    /// (`floor`): the cache counts at least that.
    pub(super) fn caught_up(&self, t: usize, position: i64) -> bool {
        let high = self.high[t].max(self.floor[t]);
        high >= 0 && position <= high && self.delivered[t].max(position).max(self.low[t]) >= high
    }

    pub(super) fn buffered(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// Adds the wait since the last count to the metric.
    fn count_wait(&mut self, now: Instant, metrics: &Metrics) {
        if let Some(from) = self.wait_counted.replace(now) {
            metrics.input_wait_seconds.inc_by(now.saturating_duration_since(from).as_secs_f64());
        }
    }

    /// Input `t`'s high watermark as a fetch would have cached it (in-process tests).
    #[cfg(test)]
    pub(super) fn set_high(&mut self, t: usize, high: i64) {
        self.high[t] = high;
    }

    /// Input `t`'s high watermark as the broker answered at the assignment (in-process tests).
    #[cfg(test)]
    pub(super) fn set_floor(&mut self, t: usize, floor: i64) {
        self.floor[t] = floor;
        self.queried = true;
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
/// envelope (a HubSpot array, a Salesforce event of several records) is merged as a whole by its
/// first event, as `replay` does. Reads no CRM memory: a CRM message's key is its first change's
/// time, whether or not it becomes a signal.
fn merge_key(payload: &[u8], spec: &InputSpec, journey: &Journey, limits: &Limits) -> Option<Ts> {
    codec::inbound::event_time(payload, spec, journey, limits)
}

/// A payload's events decoded once at arrival, when its format's decode reads no shard state
/// (everything but the CRM formats, whose decode reads and updates the shard's CRM memory and so
/// must run in merge order), and its merge key from them: the first event that decodes, as
/// [`merge_key`] gives it (`tests/decode_paths.rs` holds `event_time` to the full decode).
fn decode_at_arrival<'a>(
    payload: &'a [u8],
    spec: &InputSpec,
    journey: &Journey,
    limits: &Limits,
) -> Option<(Items<'a>, Option<Ts>)> {
    if spec.format.is_crm() {
        return None;
    }
    let mut none = CrmMemory::with_limit(1);
    let items: Items<'a> = codec::inbound::decode_input(payload, spec, journey, limits, &mut none).collect();
    let ts = items.iter().find_map(|(_, r)| r.as_ref().ok()).map(|e| e.ts);
    Some((items, ts))
}

impl State {
    /// A message as librdkafka delivered it: processed at once when its shard has nothing
    /// buffered and every other input of the shard is caught up (live traffic); else its payload
    /// is decoded in place, and it is processed at once when `merge::decide` would take it next,
    /// or kept ([`Held`]) and queued for [`State::merge`]. With `pipeline.merge_buffer_messages = 0`, always
    /// processed at once (delivery order).
    pub(super) fn arrive(&mut self, consumer: &PipelineConsumer, msg: BorrowedMessage<'_>, batch: Instant, wall: Ts) {
        let limit = self.settings.pipeline.merge_buffer_messages;
        if limit == 0 {
            return self.handle(&msg, batch, wall);
        }
        let p = msg.partition();
        let topics = &self.settings.kafka.input_topics;
        let t = topics.iter().position(|x| x == msg.topic()).unwrap_or(0);
        let journey = &self.journey;
        let shard = self.shards.entry(p).or_insert_with(|| Shard::new(Engine::new(Arc::clone(journey)), topics.len()));
        // The identity topic is no input activity of the shard's own (the idle advance goes on:
        // `handle_identity`).
        if self.identity.as_ref().is_none_or(|i| i.input != t) {
            shard.last_input = batch;
        }
        // Covered by the state already (kafka.resume_rewind, a re-delivered batch, a CRM topic
        // read from its start to rebuild the memory), or queued.
        if msg.offset() < shard.positions[t] {
            let payload = msg.payload().unwrap_or_default();
            if shard.learn(t, &topics[t], msg.offset(), payload, &self.specs[t], journey, &self.limits) {
                self.metrics.crm_rebuild_messages.inc();
            } else {
                self.metrics.input_redelivered.inc();
            }
            return;
        }
        let inputs = &mut shard.inputs;
        if msg.offset() < inputs.delivered[t] {
            self.metrics.input_redelivered.inc();
            return;
        }
        inputs.delivered[t] = msg.offset() + 1;
        let fast = inputs.queues.iter().all(VecDeque::is_empty)
            && (0..topics.len()).all(|i| i == t || inputs.caught_up(i, shard.positions[i]));
        if fast {
            return self.handle(&msg, batch, wall);
        }
        let identity = self.identity.as_ref().is_some_and(|i| i.input == t);
        let (spec, limits) = (&self.specs[t], &self.limits);
        let mut ts = None;
        let mut held = HeldDecoded::new(Held::of(msg), |h| {
            let payload = h.payload().unwrap_or_default();
            if identity {
                ts = super::identity::merge_key(payload);
                return None;
            }
            match decode_at_arrival(payload, spec, journey, limits) {
                Some((items, key)) => {
                    ts = key;
                    Some(items)
                }
                None => {
                    ts = merge_key(payload, spec, journey, limits);
                    None
                }
            }
        });
        let seq = inputs.seq;
        inputs.seq += 1;
        // What `State::merge` would do with it first, were it queued: taken at once (its queue is
        // empty, and it is the head `merge::decide` takes), it is handled now.
        if inputs.queues[t].is_empty() {
            let heads: Vec<Input> =
                (0..topics.len()).map(|i| if i == t { Input::Head { ts, seq } } else { shard.input(i) }).collect();
            let max_wait = Duration::from_millis(self.settings.pipeline.max_input_wait_ms);
            let inputs = &mut shard.inputs;
            if let Decision::Take { input, reordered } = merge::decide(&heads, inputs.waiting_since, batch, max_wait)
                && input == t
            {
                if !heads.contains(&Input::Behind) {
                    inputs.count_wait(batch, &self.metrics);
                    (inputs.waiting_since, inputs.wait_counted) = (None, None);
                }
                if reordered {
                    self.metrics.input_reordered.inc();
                }
                // Dead letters take the original's key and headers.
                return held.with_dependent_mut(|msg, items| self.handle_decoded(msg, items.take(), batch, wall));
            }
        }
        let inputs = &mut shard.inputs;
        inputs.queues[t].push_back(Buffered { msg: held, ts, seq });
        self.buffered += 1;
        self.metrics.input_held.inc();
        if inputs.queues[t].len() > limit && !inputs.paused[t] {
            let mut tpl = TopicPartitionList::new();
            let topic = &self.settings.kafka.input_topics[t];
            tpl.add_partition(topic, p);
            match consumer.pause(&tpl) {
                Ok(()) => {
                    inputs.paused[t] = true;
                    self.metrics.input_pauses.inc();
                    tracing::debug!(topic, partition = p, "input paused: merge queue full");
                }
                Err(e) => tracing::warn!(error = %e, topic, partition = p, "cannot pause a partition"),
            }
        }
    }

    /// Reads the watermarks librdkafka cached for every assigned input partition (once per
    /// polled batch). A shard's first call after its assignment also asks the broker for each
    /// input partition's high watermark (`Inputs::caught_up`'s floor: librdkafka keeps a
    /// partition's cache from an earlier assignment): one round trip per partition, once.
    pub(super) fn refresh_watermarks(&mut self, consumer: &PipelineConsumer) {
        let State { shards, topic_names, .. } = self;
        for (p, shard) in shards.iter_mut() {
            if !shard.inputs.queried {
                shard.inputs.queried = true;
                for (t, name) in topic_names.iter().enumerate() {
                    let topic = name.to_str().unwrap_or_default();
                    match consumer.fetch_watermarks(topic, *p, WATERMARK_QUERY_TIMEOUT) {
                        Ok((_, high)) => shard.inputs.floor[t] = high,
                        Err(e) => {
                            tracing::warn!(topic, partition = *p, error = %e, "the high watermark at the assignment is unknown: the cached one counts (it can be stale from an earlier assignment)")
                        }
                    }
                }
            }
            for (t, name) in topic_names.iter().enumerate() {
                let (low, high) = cached_watermarks(consumer, name, *p);
                shard.inputs.low[t] = low;
                shard.inputs.high[t] = high;
            }
        }
    }

    /// Processes buffered messages of every shard in event-time order (see [`merge::decide`])
    /// until each shard is empty or waits for a lagging partition.
    pub(super) fn merge(&mut self, consumer: &PipelineConsumer, batch: Instant, wall: Ts) {
        if self.buffered == 0 {
            return;
        }
        let now = Instant::now();
        let max_wait = Duration::from_millis(self.settings.pipeline.max_input_wait_ms);
        let limit = self.settings.pipeline.merge_buffer_messages;
        let busy: Vec<i32> = self.shards.iter().filter(|(_, s)| s.inputs.buffered() > 0).map(|(p, _)| *p).collect();
        // One buffer for the heads of every pick of this batch (not an allocation per message).
        let mut heads: Vec<Input> = Vec::with_capacity(self.settings.kafka.input_topics.len());
        for p in busy {
            while let Some(shard) = self.shards.get_mut(&p) {
                heads.clear();
                heads.extend((0..shard.inputs.queues.len()).map(|t| shard.input(t)));
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
                if inputs.paused[t] && inputs.queues[t].len() <= limit / 10 {
                    let topic = &self.settings.kafka.input_topics[t];
                    let rewind = i64::from(self.settings.kafka.resume_rewind);
                    inputs.paused[t] = !resume(consumer, topic, p, inputs.delivered[t], rewind);
                }
                if reordered {
                    self.metrics.input_reordered.inc();
                }
                let mut held = b.msg;
                held.with_dependent_mut(|msg, items| self.handle_decoded(msg, items.take(), batch, wall));
            }
        }
        self.metrics.input_buffered.set(self.buffered as i64);
    }

    /// Drops a shard's buffered messages (they are beyond its positions and are read again) and
    /// resumes its paused partitions.
    pub(super) fn drop_inputs(&mut self, consumer: &PipelineConsumer, p: i32) {
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
}
