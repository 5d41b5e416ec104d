//! Per-message handling: decode, apply to the shard's engine, emit the outputs, count.

use std::sync::Arc;
use std::time::Instant;

use prometheus::Gauge;
use prometheus::local::{LocalHistogram, LocalIntCounter};
use rdkafka::message::Message;

use crate::codec::{self, DecodeError};
use crate::core::crm::CrmMemory;
use crate::core::{Engine, Event, Funnel, Journey, Source, Ts};
use crate::telemetry::Metrics;
use crate::telemetry::metrics::unix_now;

use super::shard::Shard;
use super::{State, emit};

/// Metric children resolved once, so the per-event path does no label lookups, and counted
/// locally (no atomic operation per event): [`HotMetrics::flush`] publishes them once per polled
/// batch, so a scrape sees them at most one batch (100 ms) late.
pub(super) struct HotMetrics {
    /// `[signal][source]`; the last row is `unmapped`.
    consumed: Vec<[LocalIntCounter; 2]>,
    duplicates: LocalIntCounter,
    late: LocalIntCounter,
    ahead: LocalIntCounter,
    conflicts: LocalIntCounter,
    ignored: LocalIntCounter,
    reopened: LocalIntCounter,
    event_time: LocalHistogram,
    pub(super) consume: LocalHistogram,
    /// `microfunnel_stage_reached_total` by stage index (`None` for terminal stages), and the
    /// funnel's `reached` of the shard at hand before the event, to count what the event added.
    reached: Vec<Option<LocalIntCounter>>,
    reached_before: Vec<u64>,
    /// `microfunnel_last_event_timestamp_seconds` by input topic, and the wall time of the last
    /// message of each in this batch (`None`: none yet).
    last_event: Vec<(Gauge, Option<Ts>)>,
}

impl HotMetrics {
    pub(super) fn new(metrics: &Metrics, journey: &Journey, topics: &[String]) -> HotMetrics {
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
            reached: journey
                .stages
                .iter()
                .map(|s| (!s.terminal).then(|| metrics.stage_reached.with_label_values(&[&s.name]).local()))
                .collect(),
            reached_before: Vec::with_capacity(journey.stages.len()),
            last_event: topics
                .iter()
                .map(|t| {
                    let g = metrics.last_event.with_label_values(&[t]);
                    g.set(unix_now());
                    (g, None)
                })
                .collect(),
        }
    }

    /// Remembers the funnel's `reached` before an event is applied.
    pub(super) fn before(&mut self, funnel: &Funnel) {
        self.reached_before.clone_from(&funnel.reached);
    }

    /// Counts the stages the event made prospects reach (only events with outputs can).
    pub(super) fn after(&self, funnel: &Funnel) {
        for ((c, was), now) in self.reached.iter().zip(&self.reached_before).zip(&funnel.reached) {
            if let Some(c) = c {
                c.inc_by(now.saturating_sub(*was));
            }
        }
    }

    pub(super) fn flush(&mut self) {
        self.consumed.iter().flatten().for_each(LocalIntCounter::flush);
        self.duplicates.flush();
        self.late.flush();
        self.ahead.flush();
        self.conflicts.flush();
        self.ignored.flush();
        self.reopened.flush();
        self.event_time.flush();
        self.consume.flush();
        self.reached.iter().flatten().for_each(LocalIntCounter::flush);
        for (g, at) in &mut self.last_event {
            if let Some(t) = at.take() {
                g.set(t.0 as f64 / 1000.0);
            }
        }
    }
}

/// The events of one message as `codec::decode_input` yields them, decoded ahead of
/// [`State::handle_decoded`] (at arrival, for the event-time merge's key). One event, the
/// common case, is kept inline: no allocation of its own (measured: the allocation and its
/// page faults were about 4% of the service's CPU).
pub(super) type Items<'a> = smallvec::SmallVec<[(Option<usize>, Result<Event<'a>, DecodeError>); 1]>;

/// An item as one borrowing for a shorter time (`Event` is covariant), so that events decoded
/// at arrival and events decoded here go through one loop.
fn shorten<'s, 'e: 's>(
    item: (Option<usize>, Result<Event<'e>, DecodeError>),
) -> (Option<usize>, Result<Event<'s>, DecodeError>) {
    item
}

impl State {
    /// Applies one message. `batch` and `wall` are read once per polled batch, not per message.
    pub(super) fn handle(&mut self, msg: &impl Message, batch: Instant, wall: Ts) {
        self.handle_decoded(msg, None, batch, wall);
    }

    /// [`State::handle`] with the message's events already decoded (`items`: a format whose
    /// decode reads no shard state), else decoded here.
    pub(super) fn handle_decoded<'m, 'e>(
        &mut self,
        msg: &'m impl Message,
        items: Option<Items<'e>>,
        batch: Instant,
        wall: Ts,
    ) {
        let p = msg.partition();
        let topic = self.settings.kafka.input_topics.iter().position(|t| t == msg.topic()).unwrap_or(0);
        if let Some(id) = self.identity.as_ref().filter(|i| i.input == topic).cloned() {
            return self.handle_identity(msg, &id, batch);
        }
        let hold = self.writer.is_some();
        let State { shards, journey, limits, specs, metrics, outputs, producer, settings, buf, identity, .. } = self;
        let topics = settings.kafka.input_topics.len();
        // Every assigned partition has a shard (restored in `assign`); this is a safety net.
        let shard = shards.entry(p).or_insert_with(|| Shard::new(Engine::new(Arc::clone(journey)), topics));
        shard.last_input = batch;
        // The state already covers everything before its position: a message below it comes from
        // a rewound start (kafka.resume_rewind), a re-delivered batch or a CRM topic read from
        // its start to rebuild the memory, and is not applied.
        let name = &settings.kafka.input_topics[topic];
        if msg.offset() < shard.positions[topic] {
            let payload = msg.payload().unwrap_or_default();
            if shard.learn(topic, name, msg.offset(), payload, &specs[topic], journey, limits) {
                metrics.crm_rebuild_messages.inc();
            } else {
                metrics.input_redelivered.inc();
            }
            return;
        }
        if shard.crm_rebuild[topic] > 0 {
            shard.rebuilt(topic);
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
        self.hot.last_event[topic].1 = Some(wall);
        let payload = msg.payload().unwrap_or_default();
        // One event, or each item of a Segment batch or a CRM message; a bad item is
        // dead-lettered on its own.
        let spec = &specs[topic];
        let mut none = CrmMemory::with_limit(1);
        let (memory, evicted) = if spec.format.is_crm() {
            let m = shard.engine.crm_memory(name);
            let e = m.evicted();
            (m, Some(e))
        } else {
            (&mut none, None)
        };
        let (mut decoded, mut given);
        let events: &mut dyn Iterator<Item = (Option<usize>, Result<Event<'_>, DecodeError>)> = match items {
            Some(items) => {
                given = items.into_iter().map(shorten);
                &mut given
            }
            None => {
                decoded = codec::inbound::decode_input(payload, spec, journey, limits, memory);
                &mut decoded
            }
        };
        if let Some(before) = evicted {
            metrics.crm_evicted.inc_by(memory.evicted() - before);
        }
        for (item, result) in events {
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
                    self.unmapped.saw(&ev);
                    let before = shard.engine.stats().clone();
                    self.hot.before(shard.engine.funnel());
                    if let Some(id) = identity {
                        id.configure(&mut shard.engine, p as u32);
                    }
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
                        self.hot.after(shard.engine.funnel());
                        let ctx = emit::Ctx { producer, topics: &settings.kafka.topics, metrics, journey };
                        for o in outputs.drain(..) {
                            emit::output(&ctx, &shard.engine, &o, Some(msg), buf);
                        }
                        self.unflushed = true;
                    }
                    if let Some(id) = identity
                        && super::identity::send_records(producer, metrics, id, &mut shard.engine, buf, hold)
                    {
                        self.unflushed = true;
                    }
                    self.hot.event_time.observe(wall.since(ev.ts).as_secs_f64().max(0.0));
                }
            }
        }
        self.since_barrier += 1;
    }
}
