//! Prometheus metrics on their own `Registry`. Labels come only from configuration (journey
//! stage and signal names, sources, reject reasons, topics and partition numbers), never from
//! prospects, emails or URLs.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{
    Counter, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::core::{Journey, RejectReason};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub events_consumed: IntCounterVec,
    pub events_rejected: IntCounterVec,
    pub duplicates: IntCounter,
    pub late_events: IntCounter,
    pub events_ahead: IntCounter,
    pub duplicate_conflicts: IntCounter,
    pub events_ignored: IntCounter,
    pub reopened: IntCounter,
    pub stage_transitions: IntCounterVec,
    /// `microfunnel_stage_reached_total{stage}`: as the funnel's `reached` (skipped stages
    /// count as passed), so step conversion is reached(next) / reached(stage).
    pub stage_reached: IntCounterVec,
    /// `microfunnel_funnel_step_info{stage,next}` = 1 for each step of the funnel (consecutive
    /// non-terminal stages), the pairs a step-conversion query divides.
    pub funnel_steps: IntGaugeVec,
    pub prospects: IntGaugeVec,
    pub prospects_total: IntGauge,
    pub signal_outcomes: IntGaugeVec,
    pub outcomes: IntGaugeVec,
    pub rule_outcomes: IntGaugeVec,
    pub score_band_outcomes: IntGaugeVec,
    /// `microfunnel_signal_to_outcome_seconds_bucket{signal,outcome,le}`: the signal table's
    /// time from a signal's first showing to the outcome, as cumulative histogram buckets.
    pub signal_to_outcome: IntGaugeVec,
    /// The funnel per `[breakdowns]` value (bounded labels: top K, `other`, `none`).
    pub breakdowns: super::breakdown::BreakdownGauges,
    pub hot_leads: IntCounter,
    /// Hot-lead alerts held back by a cooldown, by the rule that fired.
    pub alerts_suppressed: IntCounterVec,
    /// `microfunnel_hot_lead_rules_total{rule}`: see [`Metrics::hot_lead_fired`].
    pub hot_lead_rules: IntCounterVec,
    /// By the stage the prospect was in (drop-off per stage).
    pub ghosted: IntCounterVec,
    pub stalled: IntCounterVec,
    pub gone_quiet: IntCounter,
    pub outcomes_kept: IntCounter,
    /// Identity resolution (`[identity] resolve`): prospects folded into another, by reason;
    /// links refused by the guards, by reason.
    pub prospects_merged: IntCounterVec,
    pub merges_refused: IntCounterVec,
    /// Identity resolution across partitions: identity-topic records sent and received, by
    /// kind (`link`, `forward`, `transfer`, `forget`, `progress`); transfers received again and folded no second
    /// time; prospects that are redirects (set with the funnel records).
    pub identity_sent: IntCounterVec,
    pub identity_received: IntCounterVec,
    pub identity_transfers_duplicate: IntCounter,
    /// Entries left out of transfers to fit `message.max.bytes`, by kind (`dedup_key`,
    /// `waiting_signal`).
    pub identity_transfer_dropped: IntCounterVec,
    pub identity_redirects: IntGauge,
    /// Per shard, the identity records its outbox holds and their bytes
    /// ([`Metrics::identity_outbox`]).
    pub identity_outbox_records: IntGaugeVec,
    pub identity_outbox_bytes: IntGaugeVec,
    /// The expiry gate (identity across partitions with `[retention]`), per shard: the event-time
    /// horizon expiry sweeps wait for, and the expiries waiting on it ([`Metrics::expiry_gate`]).
    pub expiry_horizon: GaugeVec,
    pub expiries_waiting: IntGaugeVec,
    pub expiry_horizon_lag: GaugeVec,
    pub progress_lapsed: IntGaugeVec,
    /// CRM memory entries evicted past `[crm] max_entries` (least recently changed first).
    pub crm_evicted: IntCounter,
    /// Messages of CRM topics read again only to rebuild a CRM memory after a restore from a
    /// state that had none (state version 3 or older).
    pub crm_rebuild_messages: IntCounter,
    /// Prospects that left memory (`[retention]`), by reason: `retention` or `capacity`.
    pub prospects_expired: IntCounterVec,
    pub latency: HistogramVec,
    pub consumer_lag: IntGaugeVec,
    pub producer_errors: IntCounter,
    /// `microfunnel_records_sent_total` by output, resolved once (counted on the hot path).
    pub sent: Sent,
    pub rebalances: IntCounterVec,
    pub shards: IntGauge,
    pub checkpoints: IntCounterVec,
    pub checkpoint_seconds: Histogram,
    pub checkpoint_pause: Histogram,
    /// `microfunnel_checkpoint_last_success_timestamp_seconds{shard}`: see [`Metrics::shard_durable`].
    pub checkpoint_last_success: GaugeVec,
    /// `microfunnel_last_event_timestamp_seconds{topic}`: when a message of each input topic
    /// was last processed (the start of the service before any).
    pub last_event: GaugeVec,
    pub snapshot_bytes: IntGaugeVec,
    pub restore_records: IntCounterVec,
    pub restore_bytes: IntCounterVec,
    pub restore_seconds: Histogram,
    pub restoring: IntGauge,
    /// The event-time merge of a shard's input partitions (README "Time").
    pub input_wait_seconds: Counter,
    pub input_reordered: IntCounter,
    pub input_wait_timeouts: IntCounter,
    pub input_buffered: IntGauge,
    pub input_pauses: IntCounter,
    pub input_redelivered: IntCounter,
    pub input_held: IntCounter,
}

/// Records handed to the producer, by output (`microfunnel_records_sent_total{output}`).
#[derive(Clone)]
pub struct Sent {
    pub hot_leads: IntCounter,
    pub journey_events: IntCounter,
    pub funnel: IntCounter,
    pub dead_letter: IntCounter,
    pub changelog: IntCounter,
}

impl Sent {
    fn new(r: &Registry) -> prometheus::Result<Sent> {
        let v = counter_vec(
            r,
            "microfunnel_records_sent_total",
            "Records handed to the producer, by output (`hot_leads`, `journey_events`, `funnel`, `dead_letter`, `changelog`); acknowledgement failures are in microfunnel_producer_errors_total.",
            &["output"],
        )?;
        let c = |o: &str| v.get_metric_with_label_values(&[o]);
        Ok(Sent {
            hot_leads: c("hot_leads")?,
            journey_events: c("journey_events")?,
            funnel: c("funnel")?,
            dead_letter: c("dead_letter")?,
            changelog: c("changelog")?,
        })
    }
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter(r: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    r.register(Box::new(c.clone()))?;
    Ok(c)
}

impl Metrics {
    /// Registers every family, pre-creating label values from the journey so dashboards see
    /// zeros rather than gaps.
    pub fn new(journey: &Journey) -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let events_consumed = counter_vec(
            &r,
            "microfunnel_events_consumed_total",
            "Events decoded and handed to the engine (duplicates and late events included), by source and journey signal (`unmapped` for names no signal has).",
            &["source", "signal"],
        )?;
        let events_rejected = counter_vec(
            &r,
            "microfunnel_events_rejected_total",
            "Inputs sent to the dead-letter topic, by reason.",
            &["reason"],
        )?;
        let stage_transitions = counter_vec(
            &r,
            "microfunnel_stage_transitions_total",
            "Prospects moving between journey stages (`from=\"new\"` for a prospect's first stage).",
            &["from", "to"],
        )?;
        let stage_reached = counter_vec(
            &r,
            "microfunnel_stage_reached_total",
            "Prospects reaching each non-terminal stage for the first time (stages skipped on the way count as passed), as the funnel's `reached`: step conversion is reached of the next stage / reached of this one.",
            &["stage"],
        )?;
        let funnel_steps = IntGaugeVec::new(
            Opts::new(
                "microfunnel_funnel_step_info",
                "1 for each step of the journey's funnel: `stage` and the `next` non-terminal stage (for step-conversion queries).",
            ),
            &["stage", "next"],
        )?;
        r.register(Box::new(funnel_steps.clone()))?;
        let checkpoint_last_success = GaugeVec::new(
            Opts::new(
                "microfunnel_checkpoint_last_success_timestamp_seconds",
                "Unix time at which each held shard's state was last known durable: its last checkpoint committed, a checkpoint found nothing new to write, or it was restored or resumed. Checkpoint age = time() - this.",
            ),
            &["shard"],
        )?;
        r.register(Box::new(checkpoint_last_success.clone()))?;
        let last_event = GaugeVec::new(
            Opts::new(
                "microfunnel_last_event_timestamp_seconds",
                "Unix time at which a message of each input topic was last processed (the service's start before any). Time since the last event = time() - this.",
            ),
            &["topic"],
        )?;
        r.register(Box::new(last_event.clone()))?;
        let prospects = IntGaugeVec::new(
            Opts::new(
                "microfunnel_prospects",
                "Prospects currently in each stage, summed over this instance's shards.",
            ),
            &["stage"],
        )?;
        r.register(Box::new(prospects.clone()))?;
        let prospects_total = IntGauge::new(
            "microfunnel_prospects_total",
            "Prospects (people) held in memory by this instance: linked ids count once.",
        )?;
        r.register(Box::new(prospects_total.clone()))?;
        let signal_outcomes = IntGaugeVec::new(
            Opts::new(
                "microfunnel_signal_outcomes",
                "Prospects that showed a prospect-initiated signal before reaching an outcome, summed over this instance's shards (their state, so a restore or a handover moves them).",
            ),
            &["signal", "outcome"],
        )?;
        r.register(Box::new(signal_outcomes.clone()))?;
        let outcomes = IntGaugeVec::new(
            Opts::new(
                "microfunnel_outcomes",
                "Prospects that reached an outcome (won or lost), summed over this instance's shards.",
            ),
            &["outcome"],
        )?;
        r.register(Box::new(outcomes.clone()))?;
        let rule_outcomes = IntGaugeVec::new(
            Opts::new(
                "microfunnel_rule_outcomes",
                "Prospects a hot rule matched (rule=\"any\": any rule, from the earliest) whose outcome came, by result: won within [insight] alert_horizon_days of the match, won later, lost; summed over this instance's shards. Precision = won / sum; capture = won / microfunnel_outcomes{outcome=\"won\"}.",
            ),
            &["rule", "result"],
        )?;
        r.register(Box::new(rule_outcomes.clone()))?;
        let score_band_outcomes = IntGaugeVec::new(
            Opts::new(
                "microfunnel_score_band_outcomes",
                "Prospects that reached an outcome, by the [insight] score_bands band of their score just before it (band: its lower bound, or \"low\" for the lowest), summed over this instance's shards.",
            ),
            &["band", "outcome"],
        )?;
        r.register(Box::new(score_band_outcomes.clone()))?;
        let signal_to_outcome = IntGaugeVec::new(
            Opts::new(
                "microfunnel_signal_to_outcome_seconds_bucket",
                "Prospects whose outcome came at most `le` seconds after they first showed the signal (cumulative buckets, le=\"+Inf\": all), by outcome, summed over this instance's shards; the median: histogram_quantile(0.5, sum by (le) (...)).",
            ),
            &["signal", "outcome", "le"],
        )?;
        r.register(Box::new(signal_to_outcome.clone()))?;
        let buckets = vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0, 86_400.0];
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "microfunnel_processing_latency_seconds",
                "Seconds from event time (`from=\"event_time\"`) or from consumption (`from=\"consume\"`) to its outputs being handed to the producer.",
            )
            .buckets(buckets),
            &["from"],
        )?;
        r.register(Box::new(latency.clone()))?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "microfunnel_consumer_lag",
                "Messages between the high watermark and the next offset to process.",
            ),
            &["topic", "partition"],
        )?;
        r.register(Box::new(consumer_lag.clone()))?;
        let rebalances =
            counter_vec(&r, "microfunnel_rebalances_total", "Consumer-group rebalances seen, by kind.", &["kind"])?;
        let shards = IntGauge::new("microfunnel_shards", "Shards (partition numbers) assigned to this instance.")?;
        r.register(Box::new(shards.clone()))?;
        let secs = vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
        let histogram = |name: &str, help: &str| -> prometheus::Result<Histogram> {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(secs.clone()))?;
            r.register(Box::new(h.clone()))?;
            Ok(h)
        };
        let checkpoint_seconds = histogram(
            "microfunnel_checkpoint_seconds",
            "Seconds from the start of a checkpoint to its offsets committed (outputs flushed, changelog acknowledged, snapshot files fsynced, commit requested).",
        )?;
        let checkpoint_pause = histogram(
            "microfunnel_checkpoint_pause_seconds",
            "Seconds a checkpoint held up event processing (the outputs' flush and the state capture); changelog records and snapshot files are written off the processing thread.",
        )?;
        let restore_seconds =
            histogram("microfunnel_restore_seconds", "Seconds to restore one shard's state when it is assigned.")?;
        let snapshot_bytes = IntGaugeVec::new(
            Opts::new("microfunnel_snapshot_bytes", "Size of the newest snapshot file of each shard."),
            &["shard"],
        )?;
        r.register(Box::new(snapshot_bytes.clone()))?;
        let restoring = IntGauge::new("microfunnel_shards_restoring", "Assigned shards still restoring their state.")?;
        r.register(Box::new(restoring.clone()))?;
        let input_wait_seconds = Counter::new(
            "microfunnel_input_wait_seconds_total",
            "Seconds shards spent waiting for an input partition that had nothing buffered but a possible backlog, before processing their other inputs (summed over shards).",
        )?;
        r.register(Box::new(input_wait_seconds.clone()))?;
        let input_buffered = IntGauge::new(
            "microfunnel_input_buffered_messages",
            "Messages delivered by the consumer and buffered for the event-time merge, not yet processed (all shards of this instance).",
        )?;
        r.register(Box::new(input_buffered.clone()))?;
        let m = Metrics {
            input_wait_seconds,
            input_reordered: counter(
                &r,
                "microfunnel_input_reordered_total",
                "Records processed before a record of another input partition of the same shard that was delivered earlier (taken out of delivery order by event time).",
            )?,
            input_wait_timeouts: counter(
                &r,
                "microfunnel_input_wait_timeouts_total",
                "Waits for a lagging input partition that ran out (pipeline.max_input_wait_ms): the shard went on without it.",
            )?,
            input_buffered,
            input_pauses: counter(
                &r,
                "microfunnel_input_pauses_total",
                "Input partitions paused because their merge queue was full (each pause makes the consumer fetch again what it had prefetched for the partition).",
            )?,
            input_redelivered: counter(
                &r,
                "microfunnel_input_redelivered_total",
                "Input records delivered again after they had been delivered or covered by the state (a resumed partition's kafka.resume_rewind, a repeated fetch), skipped on arrival.",
            )?,
            input_held: counter(
                &r,
                "microfunnel_input_held_total",
                "Input records held in the event-time merge's queues (librdkafka's messages, decoded in place) instead of processed on arrival.",
            )?,
            checkpoints: counter_vec(
                &r,
                "microfunnel_checkpoints_total",
                "Checkpoints by result (`ok`, `failed`: state not durable, offsets not committed).",
                &["result"],
            )?,
            checkpoint_seconds,
            checkpoint_pause,
            snapshot_bytes,
            restore_records: counter_vec(
                &r,
                "microfunnel_restore_records_total",
                "Prospect records restored, by source (`snapshot`, `changelog`).",
                &["source"],
            )?,
            restore_bytes: counter_vec(
                &r,
                "microfunnel_restore_bytes_total",
                "State bytes read while restoring, by source (`snapshot`, `changelog`).",
                &["source"],
            )?,
            restore_seconds,
            restoring,
            events_consumed,
            events_rejected,
            duplicates: counter(
                &r,
                "microfunnel_duplicate_events_total",
                "Events ignored as repeats of a recent event id.",
            )?,
            late_events: counter(&r, "microfunnel_late_events_total", "Events behind their shard's watermark.")?,
            events_ahead: counter(
                &r,
                "microfunnel_events_ahead_total",
                "Events more than time.max_ahead_hours ahead of their shard's clock on arrival (a client clock set ahead): applied to their prospect, not moving the clock.",
            )?,
            duplicate_conflicts: counter(
                &r,
                "microfunnel_duplicate_conflicts_total",
                "Events whose id was seen before for another signal of the same prospect (applied: not a redelivery).",
            )?,
            events_ignored: counter(
                &r,
                "microfunnel_events_ignored_total",
                "Valid Segment calls with no journey meaning (group, alias), counted and dropped.",
            )?,
            reopened: counter(
                &r,
                "microfunnel_reopened_total",
                "Prospects moved out of a terminal stage by a reopen_on signal, or whose outcome was corrected.",
            )?,
            stage_transitions,
            stage_reached,
            funnel_steps,
            checkpoint_last_success,
            last_event,
            prospects,
            prospects_total,
            signal_outcomes,
            outcomes,
            rule_outcomes,
            score_band_outcomes,
            signal_to_outcome,
            breakdowns: super::breakdown::BreakdownGauges::new(&r)?,
            hot_leads: counter(&r, "microfunnel_hot_leads_total", "Hot-lead alerts emitted.")?,
            prospects_merged: counter_vec(
                &r,
                "microfunnel_prospects_merged_total",
                "Prospects folded into another by identity resolution, by the link that joined them (a `prospect_merged` journey event each).",
                &["reason"],
            )?,
            merges_refused: counter_vec(
                &r,
                "microfunnel_merges_refused_total",
                "Identity links refused by the `[identity]` guards, by reason (a `merge_refused` journey event each).",
                &["reason"],
            )?,
            identity_sent: counter_vec(
                &r,
                "microfunnel_identity_records_sent_total",
                "Identity-topic records sent (identity resolution across partitions), by kind: `link` (a group changed; one per member homed elsewhere), `forward` (an event sent to its canonical prospect's partition), `transfer` (a prospect's state sent to be folded there), `forget` (a person left memory: its identifiers homed elsewhere are forgotten there), `progress` (the shard's event-time progress, to every other partition).",
                &["kind"],
            )?,
            identity_received: counter_vec(
                &r,
                "microfunnel_identity_records_received_total",
                "Identity-topic records applied by this instance's shards, by kind (`link`, `forward`, `transfer`, `forget`, `progress`).",
                &["kind"],
            )?,
            expiry_horizon: {
                let g = GaugeVec::new(
                    Opts::new(
                        "microfunnel_expiry_horizon_timestamp_seconds",
                        "Per shard, the event time up to which every partition's progress allows retention's expiry sweep (identity resolution across partitions): the least watermark of the partitions not idle, as this shard and each other one have received them; +Inf when every partition is idle. Absent until every partition reported.",
                    ),
                    &["shard"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            expiries_waiting: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "microfunnel_expiries_waiting",
                        "Per shard, prospects whose retention due the shard's watermark passed, held until the expiry horizon passes it too.",
                    ),
                    &["shard"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            expiry_horizon_lag: {
                let g = GaugeVec::new(
                    Opts::new(
                        "microfunnel_expiry_horizon_lag_seconds",
                        "Per shard, how far (event-time seconds) the expiry horizon is behind the shard's watermark: 0 when it is not; +Inf until every partition reported. Grows with the traffic while a partition reports no progress (its owner is dead, or its checkpoints fail), during which nothing expires by sweep on any partition.",
                    ),
                    &["shard"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            progress_lapsed: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "microfunnel_progress_reports_lapsed",
                        "Per shard, partitions whose last progress report said idle and was not renewed within the lapse (its owner died or stopped, or its checkpoints fail): counted at their last watermark, so the expiry horizon waits there.",
                    ),
                    &["shard"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            identity_transfers_duplicate: counter(
                &r,
                "microfunnel_identity_transfers_duplicate_total",
                "Transfers received for a prospect already folded here (at-least-once redelivery): folded no second time.",
            )?,
            identity_transfer_dropped: counter_vec(
                &r,
                "microfunnel_identity_transfer_dropped_total",
                "Entries left out of state transfers so they fit the producer's message.max.bytes, by kind: `dedup_key` (older event ids, the oldest first), `waiting_signal` (sequence signals waiting for their anchor).",
                &["kind"],
            )?,
            identity_redirects: {
                let g = IntGauge::new(
                    "microfunnel_identity_redirects",
                    "Prospects of the held shards that are redirects (their state was folded into their canonical prospect), set with the funnel records.",
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            identity_outbox_records: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "microfunnel_identity_outbox_records",
                        "Per shard, identity records (identity resolution across partitions) held in its outbox until the checkpoint covering them is durable, or sent and not yet acknowledged. Grows while the shard's checkpoints fail.",
                    ),
                    &["shard"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            identity_outbox_bytes: {
                let g = IntGaugeVec::new(
                    Opts::new(
                        "microfunnel_identity_outbox_bytes",
                        "Per shard, the bytes of the identity records its outbox holds (as the changelog carries them).",
                    ),
                    &["shard"],
                )?;
                r.register(Box::new(g.clone()))?;
                g
            },
            crm_evicted: counter(
                &r,
                "microfunnel_crm_memory_evicted_total",
                "CRM memory entries (property values, contact links) evicted past `[crm] max_entries` per shard and topic, least recently changed first.",
            )?,
            crm_rebuild_messages: counter(
                &r,
                "microfunnel_crm_rebuild_messages_total",
                "Messages of CRM topics read again, below the restored position, only to rebuild the CRM memory after a restore from a state without one (state version 3 or older).",
            )?,
            prospects_expired: {
                let c = counter_vec(
                    &r,
                    "microfunnel_prospects_expired_total",
                    "Prospects that left memory, by reason: `retention` (no event for their stage's `[retention]` span) or `capacity` (least recently active at `[retention] max_prospects_per_shard`); an `expired` journey event each.",
                    &["reason"],
                )?;
                for reason in crate::core::ExpireReason::ALL {
                    c.with_label_values(&[reason.as_str()]);
                }
                c
            },
            alerts_suppressed: counter_vec(
                &r,
                "microfunnel_alerts_suppressed_total",
                "Hot-lead alerts held back by the cooldown of an alert of a rule at least as strong, by the rule that fired (a `hot_lead_suppressed` journey event each).",
                &["rule"],
            )?,
            hot_lead_rules: counter_vec(
                &r,
                "microfunnel_hot_lead_rules_total",
                "Hot-lead alerts by journey hot rule that fired (an alert with several rules counts once for each).",
                &["rule"],
            )?,
            ghosted: counter_vec(
                &r,
                "microfunnel_ghosted_total",
                "Prospects that went silent after a quote, by the stage they were in.",
                &["stage"],
            )?,
            stalled: counter_vec(
                &r,
                "microfunnel_stalled_total",
                "Deals that parked (no stage advance in time), by the stage they were in.",
                &["stage"],
            )?,
            outcomes_kept: counter(
                &r,
                "microfunnel_outcomes_kept_total",
                "Won prospects not moved to a terminal stage by a later signal (the win stands; an `outcome_kept` journey event each).",
            )?,
            gone_quiet: counter(
                &r,
                "microfunnel_gone_quiet_total",
                "Prospects that went quiet (no prospect-initiated signal in time while in a [gone_quiet] stage).",
            )?,
            latency,
            consumer_lag,
            producer_errors: counter(
                &r,
                "microfunnel_producer_errors_total",
                "Output records the broker did not acknowledge.",
            )?,
            sent: Sent::new(&r)?,
            rebalances,
            shards,
            registry: r,
        };
        for s in &journey.signals {
            for src in ["web", "crm"] {
                if s.source.as_str() == src || s.source.as_str() == "any" {
                    m.events_consumed.with_label_values(&[src, &s.name]);
                }
            }
        }
        for reason in RejectReason::ALL {
            m.events_rejected.with_label_values(&[reason.as_str()]);
        }
        for st in &journey.stages {
            m.prospects.with_label_values(&[&st.name]);
            m.ghosted.with_label_values(&[&st.name]);
            m.stalled.with_label_values(&[&st.name]);
        }
        for rule in &journey.hot_rules {
            m.hot_lead_rules.with_label_values(&[&rule.name]);
        }
        let steps: Vec<&str> = journey.stages.iter().filter(|s| !s.terminal).map(|s| s.name.as_str()).collect();
        for st in &steps {
            m.stage_reached.with_label_values(&[st]);
        }
        // Losses by the stage they happened in (drop-off): zeros rather than gaps.
        for end in journey.stages.iter().filter(|s| s.terminal) {
            for st in &steps {
                m.stage_transitions.with_label_values(&[*st, end.name.as_str()]);
            }
        }
        for w in steps.windows(2) {
            m.funnel_steps.with_label_values(&[w[0], w[1]]).set(1);
        }
        for rule in &journey.hot_rules {
            m.alerts_suppressed.with_label_values(&[&rule.name]);
        }
        for result in ["ok", "failed"] {
            m.checkpoints.with_label_values(&[result]);
        }
        for source in ["snapshot", "changelog"] {
            m.restore_records.with_label_values(&[source]);
            m.restore_bytes.with_label_values(&[source]);
        }
        for kind in ["assign", "revoke"] {
            m.rebalances.with_label_values(&[kind]);
        }
        Ok(m)
    }

    /// Counts one hot-lead alert under each rule that fired (`rules`: bit `i` = `hot_rules[i]`).
    pub fn hot_lead_fired(&self, journey: &Journey, rules: u32) {
        for (i, rule) in journey.hot_rules.iter().enumerate().take(32) {
            if rules & (1 << i) != 0 {
                self.hot_lead_rules.with_label_values(&[&rule.name]).inc();
            }
        }
    }

    /// Shard `shard`'s state is durable as of now (a checkpoint committed it, found nothing new
    /// in it, or it was restored or resumed from one).
    pub fn shard_durable(&self, shard: i32) {
        self.checkpoint_last_success.with_label_values(&[&shard.to_string()]).set(unix_now());
    }

    /// Shard `shard` left this instance: its per-shard series go (the new owner reports them),
    /// so sums over instances do not count a stale value twice.
    pub fn shard_released(&self, shard: i32, topics: &[String]) {
        let label = shard.to_string();
        let _ = self.checkpoint_last_success.remove_label_values(&[&label]);
        let _ = self.snapshot_bytes.remove_label_values(&[&label]);
        let _ = self.expiry_horizon.remove_label_values(&[&label]);
        let _ = self.expiries_waiting.remove_label_values(&[&label]);
        let _ = self.expiry_horizon_lag.remove_label_values(&[&label]);
        let _ = self.progress_lapsed.remove_label_values(&[&label]);
        let _ = self.identity_outbox_records.remove_label_values(&[&label]);
        let _ = self.identity_outbox_bytes.remove_label_values(&[&label]);
        for t in topics {
            let _ = self.consumer_lag.remove_label_values(&[t, &label]);
        }
    }

    /// Shard `shard`'s outbox holds `records` identity records of `bytes` bytes (set at each
    /// capture and when its checkpoint settles).
    pub fn identity_outbox(&self, shard: i32, (records, bytes): (usize, usize)) {
        let label = shard.to_string();
        self.identity_outbox_records.with_label_values(&[&label]).set(records as i64);
        self.identity_outbox_bytes.with_label_values(&[&label]).set(bytes as i64);
    }

    /// Shard `shard`'s expiry gate: its horizon (`None`: ungated; `Ts::NONE`: not every
    /// partition reported, the series absent; unbounded, every partition idle: `+Inf`) and the
    /// expiries waiting on it; and how far the horizon is behind the shard's `watermark`
    /// (present whenever the shard is gated: 0 when it is not behind or nothing was read yet,
    /// `+Inf` while not every partition reported); and the partitions whose idle report lapsed.
    pub fn expiry_gate(
        &self,
        shard: i32,
        horizon: Option<crate::core::Ts>,
        watermark: crate::core::Ts,
        waiting: usize,
        lapsed: usize,
    ) {
        let label = shard.to_string();
        if let Some(h) = horizon {
            let lag = if watermark.is_none() || h >= watermark {
                0.0
            } else if h.is_none() {
                f64::INFINITY
            } else {
                (watermark.0 - h.0) as f64 / 1000.0
            };
            self.expiry_horizon_lag.with_label_values(&[&label]).set(lag);
        }
        match horizon {
            Some(h) if h == crate::core::xpart::UNBOUNDED => {
                self.expiry_horizon.with_label_values(&[&label]).set(f64::INFINITY);
            }
            Some(h) if !h.is_none() => {
                self.expiry_horizon.with_label_values(&[&label]).set(h.0 as f64 / 1000.0);
            }
            _ => {
                let _ = self.expiry_horizon.remove_label_values(&[&label]);
            }
        }
        self.expiries_waiting.with_label_values(&[&label]).set(waiting as i64);
        self.progress_lapsed.with_label_values(&[&label]).set(lapsed as i64);
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Seconds since the Unix epoch, for timestamp gauges.
pub fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}
