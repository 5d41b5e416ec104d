//! Periodic work of the loop: idle advance, funnel publishing, consumer lag.

use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use rdkafka::message::OwnedMessage;

use crate::telemetry::Metrics;

use crate::core::Ts;

use super::{PipelineConsumer, State, emit};

impl State {
    /// Shards with no input for `idle` (by the monotonic clock `now`) move their watermark to
    /// the wall clock `wall` minus the allowed lateness. The loop passes the real clocks; tests
    /// pass any.
    pub(super) fn advance_idle(&mut self, idle: Duration, now: Instant, wall: Ts) {
        let target = wall.minus(self.journey.allowed_lateness);
        let hold = self.writer.is_some();
        let State { shards, journey, metrics, outputs, producer, settings, buf, identity, .. } = self;
        for (&p, shard) in shards.iter_mut() {
            // A shard with buffered input is not idle: it waits for a lagging partition. One
            // that holds no prospect has no timer to fire: moving its clock to the wall clock
            // would only make a backfill of past events, produced after it started, late.
            if now.saturating_duration_since(shard.last_input) < idle
                || shard.engine.is_empty()
                || shard.engine.watermark() >= target
                || shard.inputs.queues.iter().any(|q| !q.is_empty())
            {
                continue;
            }
            if let Some(id) = identity.as_ref() {
                id.configure(&mut shard.engine, p as u32);
            }
            shard.engine.advance_to(target, outputs);
            if !outputs.is_empty() {
                let ctx = emit::Ctx { producer, topics: &settings.kafka.topics, metrics, journey };
                for o in outputs.drain(..) {
                    emit::output(&ctx, &shard.engine, &o, None::<&OwnedMessage>, buf);
                }
                self.unflushed = true;
            }
            // People who expired: the other homes of their identifiers are told (`Forget`).
            if let Some(id) = identity.as_ref()
                && super::identity::send_records(producer, metrics, id, &mut shard.engine, buf, hold)
            {
                self.unflushed = true;
            }
        }
    }

    /// Each shard's event-time progress to the other partitions (identity resolution across
    /// partitions with `[retention]`: the watermark across partitions that gates expiry; see
    /// `core/engine/horizon.rs`), by the monotonic clock `now`. A shard whose input partitions
    /// are all caught up with nothing queued reports `idle` (left out of the others' minimums
    /// while it renews the report) unless the idle advance moves its watermark with the wall
    /// clock (`pipeline.idle_advance_ms` > 0 and it holds prospects): then input older than its
    /// watermark is late there anyway, and it reports that watermark as it moves. The engine
    /// sends what says something new, what a shard that has not heard from everyone asked
    /// for, and an idle report's renewal; called about once a second. The expiries a moved
    /// horizon releases are emitted, their `Forget`s sent, and the horizon, the expiries
    /// waiting on it and the lapsed reports set per shard.
    pub(super) fn publish_progress(&mut self, now: Instant) {
        let hold = self.writer.is_some();
        let State { shards, journey, metrics, outputs, producer, settings, buf, identity, .. } = self;
        let Some(id) = identity.as_ref() else { return };
        if id.partitions < 2 || journey.retention.after.is_empty() {
            return;
        }
        let advancing = settings.pipeline.idle_advance_ms > 0;
        for (&p, shard) in shards.iter_mut() {
            let caught_up = shard.inputs.queues.iter().all(|q| q.is_empty())
                && (0..shard.positions.len())
                    .filter(|&t| t != id.input)
                    .all(|t| shard.inputs.caught_up(t, shard.positions[t]));
            // A shard holding no prospect keeps its clock (`advance_idle`), so it is idle. In
            // history mode a shard says idle only once its own inputs were quiet for a renewal
            // interval (two checkpoint intervals): traffic trickling in (read to its end at
            // every tick) is reading, so every partition counts the others at their watermarks
            // while the records that traffic causes, held in outboxes until checkpoints, are on
            // their way; an idle report left out of the horizon at once would let the others
            // expire past them.
            let quiet = now.saturating_duration_since(shard.last_input) >= id.renewal.renew;
            let idle = caught_up && if advancing { shard.engine.is_empty() } else { quiet };
            id.configure(&mut shard.engine, p as u32);
            shard.engine.progress_clock(now, id.renewal);
            shard.engine.publish_progress(idle, false, outputs);
            if !outputs.is_empty() {
                let ctx = emit::Ctx { producer, topics: &settings.kafka.topics, metrics, journey };
                for o in outputs.drain(..) {
                    emit::output(&ctx, &shard.engine, &o, None::<&OwnedMessage>, buf);
                }
                self.unflushed = true;
            }
            // Held in the outbox with the records it covers when checkpoints are persisted, so
            // it goes out after them.
            if super::identity::send_records(producer, metrics, id, &mut shard.engine, buf, hold) {
                self.unflushed = true;
            }
            let e = &shard.engine;
            let lapsed = e.progress_lapsed_partitions();
            // By partition, not by count: one renewing as another lapses is logged too.
            if lapsed.iter().any(|q| !shard.lapsed.contains(q)) {
                tracing::warn!(
                    shard = p,
                    partitions = lapsed.len(),
                    partitions_lapsed = ?lapsed,
                    "progress reports lapsed: partitions that were idle stopped renewing them (their instance died or their checkpoints fail); expiry by sweep waits at their last watermark until the group moves them"
                );
            } else if lapsed.len() < shard.lapsed.len() {
                tracing::info!(shard = p, partitions = lapsed.len(), partitions_lapsed = ?lapsed, "lapsed progress reports renewed");
            }
            metrics.expiry_gate(p, e.expiry_horizon(), e.watermark(), e.expiries_waiting(), lapsed.len());
            shard.lapsed = lapsed;
        }
    }

    /// Funnel aggregates per shard to the funnel topic; stage gauges summed over shards.
    pub(super) fn publish_funnel(&mut self) {
        let State { shards, journey, metrics, producer, settings, buf, status, .. } = self;
        let mut per_stage = vec![0i64; journey.stages.len()];
        let mut breakdowns = crate::core::breakdown::sum_tables(journey, []);
        for (p, shard) in shards.iter() {
            let tables = shard.engine.breakdown_tables();
            emit::funnel(
                producer,
                metrics,
                &settings.kafka.topics.funnel,
                &settings.kafka.group_id,
                *p,
                &shard.engine,
                &tables,
                buf,
            );
            for (t, o) in breakdowns.iter_mut().zip(&tables) {
                t.absorb(o);
            }
            for (i, n) in shard.engine.funnel().in_stage.iter().enumerate() {
                per_stage[i] += *n as i64;
            }
            let n = shard.engine.len() as u64;
            status.update(*p, |s| s.prospects = n);
        }
        for (i, st) in journey.stages.iter().enumerate() {
            metrics.prospects.with_label_values(&[&st.name]).set(per_stage[i]);
        }
        // People, not records: every held prospect is in one stage, a redirect (an id whose
        // state moved to its canonical prospect on another partition) in none.
        metrics.prospects_total.set(per_stage.iter().sum::<i64>());
        if self.identity.is_some() {
            let redirects: usize = shards.values().map(|s| s.engine.redirects()).sum();
            metrics.identity_redirects.set(redirects as i64);
        }
        let mut outcomes = crate::core::Funnel::new(journey);
        for shard in shards.values() {
            outcomes.absorb(shard.engine.funnel());
        }
        for (i, s) in journey.signals.iter().enumerate() {
            if crate::core::funnel::validated(journey, s) && outcomes.signal_outcomes[i] != [0, 0] {
                for (o, label) in [(0, "won"), (1, "lost")] {
                    metrics
                        .signal_outcomes
                        .with_label_values(&[&s.name, label])
                        .set(outcomes.signal_outcomes[i][o] as i64);
                }
            }
        }
        for (o, label) in [(0, "won"), (1, "lost")] {
            metrics.outcomes.with_label_values(&[label]).set(outcomes.outcomes[o] as i64);
        }
        publish_signal_times(metrics, journey, &outcomes);
        let rules = journey.hot_rules.iter().map(|r| r.name.as_str()).chain([crate::core::funnel::ANY_RULE]);
        for (rule, row) in rules.zip(&outcomes.rule_outcomes) {
            if *row != [0; 3] {
                for (k, label) in ["won", "won_later", "lost"].into_iter().enumerate() {
                    metrics.rule_outcomes.with_label_values(&[rule, label]).set(row[k] as i64);
                }
            }
        }
        for (k, row) in outcomes.band_outcomes.iter().enumerate() {
            if *row != [0; 2] {
                let band = if k == 0 { "low".to_string() } else { journey.score_bands[k - 1].to_string() };
                for (o, label) in [(0, "won"), (1, "lost")] {
                    metrics.score_band_outcomes.with_label_values(&[&band, label]).set(row[o] as i64);
                }
            }
        }
        let reports: Vec<_> = breakdowns
            .iter()
            .zip(&journey.breakdowns)
            .map(|(t, d)| t.report(journey, d, crate::core::funnel::MIN_SAMPLE))
            .collect();
        metrics.breakdowns.publish(journey, &reports);
        self.unflushed = true;
        let unmapped = self.unmapped.total();
        if unmapped > self.unmapped_logged {
            self.unmapped_logged = unmapped;
            let (top, others) = self.unmapped.top(10);
            let top = top.iter().map(|(name, n)| format!("{name:?}: {n}")).collect::<Vec<_>>().join(", ");
            tracing::info!(
                unmapped,
                others,
                top = %top,
                "event names that map to no journey signal, most frequent since start (map them in the journey, or leave them ignored)"
            );
        }
    }
}

/// The signal table's times to the outcome as cumulative buckets, for the signals with any.
fn publish_signal_times(metrics: &Metrics, journey: &crate::core::Journey, f: &crate::core::Funnel) {
    use crate::core::funnel::TIME_BUCKETS_SECS;
    for (s, times) in journey.signals.iter().zip(&f.signal_to_outcome) {
        for (h, label) in times.iter().zip(["won", "lost"]) {
            if h.count == 0 {
                continue;
            }
            let mut below = 0;
            for (k, n) in h.buckets.iter().enumerate() {
                below += n;
                let le = TIME_BUCKETS_SECS.get(k).map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                metrics.signal_to_outcome.with_label_values(&[&s.name, label, &le]).set(below as i64);
            }
        }
    }
}

pub(super) fn record_lag(consumer: &PipelineConsumer, metrics: &Metrics) {
    let Ok(positions) = consumer.position() else { return };
    for e in positions.elements() {
        let Offset::Offset(pos) = e.offset() else { continue };
        if let Ok((_, high)) = consumer.fetch_watermarks(e.topic(), e.partition(), Duration::from_millis(500)) {
            let p = e.partition().to_string();
            metrics.consumer_lag.with_label_values(&[e.topic(), &p]).set((high - pos).max(0));
        }
    }
}
