//! Outputs to topics: hot leads, journey events, dead letters with their origin, funnel records.

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::BaseRecord;

use crate::codec;
use crate::config::OutputTopics;
use crate::core::{Engine, Journey, Output, RejectReason};
use crate::kafka::{self, OutputProducer};
use crate::telemetry::Metrics;

pub(super) struct Ctx<'a> {
    pub producer: &'a OutputProducer,
    pub topics: &'a OutputTopics,
    pub metrics: &'a Metrics,
    pub journey: &'a Journey,
}

/// Sends one engine output where it belongs, counting it. `source` is the input message that
/// caused it (none for timers fired by wall-clock advancement): as delivered, or a copy held
/// for the event-time merge.
pub(super) fn output<M: Message>(ctx: &Ctx<'_>, engine: &Engine, o: &Output, source: Option<&M>, buf: &mut Vec<u8>) {
    let m = ctx.metrics;
    let (topic, prospect, sent) = match o {
        Output::HotLead(h) => {
            m.hot_leads.inc();
            m.hot_lead_fired(ctx.journey, h.rules);
            (&ctx.topics.hot_leads, h.prospect, &m.sent.hot_leads)
        }
        Output::HotLeadSuppressed(s) => {
            for (r, rule) in ctx.journey.hot_rules.iter().enumerate() {
                if s.rules & (1 << r) != 0 {
                    m.alerts_suppressed.with_label_values(&[rule.name.as_str()]).inc();
                }
            }
            (&ctx.topics.journey_events, s.prospect, &m.sent.journey_events)
        }
        Output::StageChanged { prospect, from, to, .. } => {
            let from = from.map_or("new", |f| ctx.journey.stage(f).name.as_str());
            m.stage_transitions.with_label_values(&[from, &ctx.journey.stage(*to).name]).inc();
            (&ctx.topics.journey_events, *prospect, &m.sent.journey_events)
        }
        Output::Ghosted { prospect, stage, .. } => {
            m.ghosted.with_label_values(&[&ctx.journey.stage(*stage).name]).inc();
            (&ctx.topics.journey_events, *prospect, &m.sent.journey_events)
        }
        Output::OutcomeKept { prospect, .. } => {
            m.outcomes_kept.inc();
            (&ctx.topics.journey_events, *prospect, &m.sent.journey_events)
        }
        Output::GoneQuiet { prospect, .. } => {
            m.gone_quiet.inc();
            (&ctx.topics.journey_events, *prospect, &m.sent.journey_events)
        }
        Output::Stalled { prospect, stage, .. } => {
            m.stalled.with_label_values(&[&ctx.journey.stage(*stage).name]).inc();
            (&ctx.topics.journey_events, *prospect, &m.sent.journey_events)
        }
        Output::Expired { prospect, reason, .. } => {
            m.prospects_expired.with_label_values(&[reason.as_str()]).inc();
            (&ctx.topics.journey_events, *prospect, &m.sent.journey_events)
        }
        Output::Late { .. } => return,
        Output::ProspectMerged { into, reason, .. } => {
            m.prospects_merged.with_label_values(&[reason.as_str()]).inc();
            (&ctx.topics.journey_events, *into, &m.sent.journey_events)
        }
        Output::MergeRefused { ids, reason, .. } => {
            m.merges_refused.with_label_values(&[reason.as_str()]).inc();
            buf.clear();
            if codec::write_output(engine, o, buf).is_ok()
                && kafka::send(
                    ctx.producer,
                    BaseRecord::to(&ctx.topics.journey_events).key(ids[0].as_bytes()).payload(buf.as_slice()),
                )
            {
                m.sent.journey_events.inc();
            }
            return;
        }
        Output::Rejected { reason, detail } => {
            m.events_rejected.with_label_values(&[reason.as_str()]).inc();
            if let Some(msg) = source {
                dead_letter(ctx.producer, m, &ctx.topics.dead_letter, msg, *reason, detail);
            }
            return;
        }
    };
    buf.clear();
    if codec::write_output(engine, o, buf).is_err() {
        return;
    }
    let key = engine.prospect_id(prospect);
    if kafka::send(ctx.producer, BaseRecord::to(topic).key(key.as_bytes()).payload(buf.as_slice())) {
        sent.inc();
    }
}

/// The original bytes, key and headers, plus headers saying why and where from.
pub(super) fn dead_letter(
    producer: &OutputProducer,
    metrics: &Metrics,
    topic: &str,
    msg: &impl Message,
    reason: RejectReason,
    detail: &str,
) {
    let partition = msg.partition().to_string();
    let offset = msg.offset().to_string();
    let mut headers = OwnedHeaders::new();
    if let Some(original) = msg.headers() {
        for h in original.iter() {
            headers = headers.insert(Header { key: h.key, value: h.value });
        }
    }
    headers = headers
        .insert(Header { key: "microfunnel.reason", value: Some(reason.as_str()) })
        .insert(Header { key: "microfunnel.detail", value: Some(detail) })
        .insert(Header { key: "microfunnel.source.topic", value: Some(msg.topic()) })
        .insert(Header { key: "microfunnel.source.partition", value: Some(partition.as_str()) })
        .insert(Header { key: "microfunnel.source.offset", value: Some(offset.as_str()) });
    let payload = msg.payload().unwrap_or_default();
    let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload).headers(headers);
    if let Some(k) = msg.key() {
        record = record.key(k);
    }
    if kafka::send(producer, record) {
        metrics.sent.dead_letter.inc();
    }
}

/// One shard's funnel aggregates, keyed `group/shard-N` so a compacted topic keeps the latest.
#[allow(clippy::too_many_arguments)]
pub(super) fn funnel(
    producer: &OutputProducer,
    metrics: &Metrics,
    topic: &str,
    group: &str,
    shard: i32,
    engine: &Engine,
    tables: &[crate::core::breakdown::BreakdownTable],
    buf: &mut Vec<u8>,
) {
    buf.clear();
    let report = engine.funnel().report(engine.journey());
    let census = engine.census();
    let figures = codec::outbound::Figures {
        watermark: engine.watermark(),
        stats: engine.stats(),
        census: &census,
        funnel: &report,
        breakdowns: &[],
        breakdown_counts: tables,
    };
    if codec::outbound::write_shard_report(group, shard, &figures, buf).is_err() {
        return;
    }
    let key = format!("{group}/shard-{shard}");
    if kafka::send(producer, BaseRecord::to(topic).key(key.as_bytes()).payload(buf.as_slice())) {
        metrics.sent.funnel.inc();
    }
}
