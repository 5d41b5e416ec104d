//! The identity topic in the pipeline (identity resolution across partitions, journey
//! `[identity] resolve`): one more input of every shard, co-partitioned with the others (the
//! topic is appended to the subscribed inputs, so partition p is assigned with shard p, its
//! position is checkpointed and committed like theirs, and the merge orders its records by
//! event time among the shard's inputs). Records the engines produce go out through the output
//! producer, keyed by the identifier whose partition must act, to that partition. With
//! checkpoints on they wait in the shard's outbox (`core::engine::outbox`) until the checkpoint
//! covering the calls that produced them is durable (`send_outbox`, from the barrier and at a
//! restore); with nothing persisted they go at once. Either way the next barrier's flush covers
//! them, so offsets are committed only after they are acknowledged.

use rdkafka::message::Message;
use rdkafka::producer::BaseRecord;

use super::State;
use super::emit;
use crate::core::xpart::XRecord;
use crate::core::{Engine, RejectReason};
use crate::kafka::{self, OutputProducer};
use crate::telemetry::Metrics;

/// Where the identity topic is among the shard's inputs.
#[derive(Clone, Debug)]
pub(super) struct IdentityInput {
    /// Its index in the inputs (the last one).
    pub input: usize,
    pub name: String,
    /// The inputs' partition count.
    pub partitions: u32,
    /// The output producer's `message.max.bytes`, which every transfer must fit in.
    pub message_max_bytes: usize,
    /// How idle progress reports are renewed and lapse (from `pipeline.commit_interval_ms`:
    /// renewals leave with checkpoints).
    pub renewal: crate::core::xpart::Renewal,
    /// History mode (`pipeline.idle_advance_ms = 0`): idle partitions count at their watermark
    /// while any partition reads.
    pub history: bool,
}

impl IdentityInput {
    /// The identity topic's settings of `engine` (shard `p`); with `[retention]`, its expiry
    /// sweep gated on the other partitions' progress (`Engine::gate_expiry`).
    pub(super) fn configure(&self, engine: &mut Engine, p: u32) {
        engine.resolve_across(p, self.partitions);
        engine.limit_transfers(self.message_max_bytes);
        engine.gate_expiry();
        engine.wait_while_reading(self.history);
    }
}

/// Takes the records the last calls of `engine` produced: held in its outbox when checkpoints
/// are persisted (`hold`), else sent at once; whether any went out.
pub(super) fn send_records(
    producer: &OutputProducer,
    metrics: &Metrics,
    id: &IdentityInput,
    engine: &mut Engine,
    buf: &mut Vec<u8>,
    hold: bool,
) -> bool {
    let (keys, waiting) = engine.take_transfer_drops();
    if keys + waiting > 0 {
        tracing::warn!(
            dedup_keys = keys,
            waiting_signals = waiting,
            "a state transfer left out its oldest entries to fit message.max.bytes"
        );
        metrics.identity_transfer_dropped.with_label_values(&["dedup_key"]).inc_by(keys);
        metrics.identity_transfer_dropped.with_label_values(&["waiting_signal"]).inc_by(waiting);
    }
    if hold {
        engine.hold_identity_records();
        return false;
    }
    let records = engine.take_identity_records();
    send(producer, metrics, &id.name, &records, buf);
    !records.is_empty()
}

/// The outbox of `engine`'s checkpoint that just became durable (or was restored), sent;
/// whether any went out. Records that must follow a checkpoint's outbox (a shard's progress
/// across partitions) are sent after this call.
pub(super) fn send_outbox(
    sink: &mut IdentitySink,
    producer: &OutputProducer,
    metrics: &Metrics,
    topic: &str,
    engine: &mut Engine,
    buf: &mut Vec<u8>,
) -> bool {
    let records = engine.settle_outbox(true);
    match sink {
        IdentitySink::Producer => send(producer, metrics, topic, records, buf),
        #[cfg(test)]
        IdentitySink::Recorded(sent) => sent.extend_from_slice(records),
    }
    !records.is_empty()
}

/// Where a durable outbox goes: the identity topic, or a list (in-process tests, no broker).
#[derive(Debug, Default)]
pub(super) enum IdentitySink {
    #[default]
    Producer,
    #[cfg(test)]
    Recorded(Vec<(u32, XRecord)>),
}

fn send(producer: &OutputProducer, metrics: &Metrics, topic: &str, records: &[(u32, XRecord)], buf: &mut Vec<u8>) {
    for (p, r) in records {
        buf.clear();
        r.encode(buf);
        let record = BaseRecord::to(topic).key(r.key().as_bytes()).payload(&buf[..]).partition(*p as i32);
        if kafka::send(producer, record) {
            metrics.identity_sent.with_label_values(&[r.kind()]).inc();
        }
    }
}

/// The merge key of an identity record: the time of the event that caused it.
pub(super) fn merge_key(payload: &[u8]) -> Option<crate::core::Ts> {
    XRecord::decode(payload).ok().map(|r| r.ts())
}

impl State {
    /// One message of the identity topic: applied to its partition's shard, the outputs and the
    /// records it causes sent; one that does not decode is dead-lettered (`wrong_shape`).
    pub(super) fn handle_identity(&mut self, msg: &impl Message, id: &IdentityInput, batch: std::time::Instant) {
        let p = msg.partition();
        let topics = self.settings.kafka.input_topics.len();
        let hold = self.writer.is_some();
        let State { shards, journey, metrics, outputs, producer, settings, buf, hot, .. } = self;
        let shard = shards
            .entry(p)
            .or_insert_with(|| super::shard::Shard::new(Engine::new(std::sync::Arc::clone(journey)), topics));
        if msg.offset() < shard.positions[id.input] {
            return;
        }
        shard.positions[id.input] = msg.offset() + 1;
        self.since_barrier += 1;
        id.configure(&mut shard.engine, p as u32);
        let decoded = XRecord::decode(msg.payload().unwrap_or_default()).map_err(|e| e.to_string()).and_then(|r| {
            r.check(journey).map_err(|what| format!("{what} not valid for this journey"))?;
            Ok(r)
        });
        let rec = match decoded {
            Ok(r) => r,
            Err(e) => {
                let reason = RejectReason::WrongShape;
                metrics.events_rejected.with_label_values(&[reason.as_str()]).inc();
                let detail = format!("identity record: {e}");
                emit::dead_letter(producer, metrics, &settings.kafka.topics.dead_letter, msg, reason, &detail);
                self.unflushed = true;
                return;
            }
        };
        // Identity records are no input activity of the shard's own: the idle advance, which
        // moves a shard's clock once its own inputs are quiet, goes on. Progress records come
        // every second from every partition, and links, transfers and forwards whenever the
        // other partitions get traffic: counted as activity, they kept a quiet shard's clock
        // (and, since a shard the idle advance moves reports its watermark, every partition's
        // expiry horizon) at its last event.
        metrics.identity_received.with_label_values(&[rec.kind()]).inc();
        let dup = |e: &Engine| e.xpart_stats().map_or(0, |s| s.transfers_duplicate);
        let gone = |e: &Engine| e.xpart_stats().map_or(0, |s| s.transfers_to_gone);
        let (before, before_gone) = (dup(&shard.engine), gone(&shard.engine));
        let reason = match &rec {
            XRecord::Transfer { reason, .. } => Some(*reason),
            _ => None,
        };
        hot.before(shard.engine.funnel());
        if matches!(rec, XRecord::Progress { .. }) {
            // Its receipt time: an idle report not renewed within the lapse counts at its
            // watermark.
            shard.engine.progress_clock(batch, id.renewal);
        }
        shard.engine.apply_identity_record(rec, outputs);
        metrics.identity_transfers_duplicate.inc_by(dup(&shard.engine) - before);
        // A transfer into a person that left ahead of the expiry horizon: a merge without a
        // `prospect_merged` event (neither prospect is held), counted all the same.
        if let Some(reason) = reason {
            metrics.prospects_merged.with_label_values(&[reason.as_str()]).inc_by(gone(&shard.engine) - before_gone);
        }
        if !outputs.is_empty() {
            // Stages a forwarded event or a folded transfer made the person reach.
            hot.after(shard.engine.funnel());
            let ctx = emit::Ctx { producer, topics: &settings.kafka.topics, metrics, journey };
            for o in outputs.drain(..) {
                emit::output(&ctx, &shard.engine, &o, Some(msg), buf);
            }
            self.unflushed = true;
        }
        if send_records(producer, metrics, id, &mut shard.engine, buf, hold) {
            self.unflushed = true;
        }
    }
}
