//! Outputs to JSON: one object per output, with names instead of indexes.

use serde::{Serialize, Serializer};

use crate::core::engine::{Census, Stats};
use crate::core::{Engine, FunnelReport, Output, Ts};

struct Time(Ts);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Json<'a> {
    StageChanged {
        prospect: &'a str,
        from: Option<&'a str>,
        to: &'a str,
        signal: &'a str,
        at: Time,
        late: bool,
        classification: &'static str,
    },
    HotLead {
        alert_id: &'a str,
        prospect: &'a str,
        email: Option<&'a str>,
        score: f64,
        stage: &'a str,
        classification: &'static str,
        rules: Vec<&'a str>,
        reasons: Vec<&'a str>,
        next_commitment: &'a str,
        event_id: &'a str,
        signal: &'a str,
        at: Time,
    },
    Ghosted {
        prospect: &'a str,
        stage: &'a str,
        since: Time,
        at: Time,
    },
    Stalled {
        prospect: &'a str,
        stage: &'a str,
        since: Time,
        at: Time,
    },
    Late {
        prospect: &'a str,
        signal: &'a str,
        at: Time,
        watermark: Time,
    },
    Rejected {
        reason: &'static str,
        detail: &'a str,
    },
}

/// Appends `output` as one JSON object (no newline) to `buf`.
pub fn write_output(engine: &Engine, output: &Output, buf: &mut Vec<u8>) -> serde_json::Result<()> {
    let j = &**engine.journey();
    let json = match output {
        Output::StageChanged { prospect, from, to, signal, at, late } => Json::StageChanged {
            prospect: engine.prospect_id(*prospect),
            from: from.map(|f| j.stage(f).name.as_str()),
            to: &j.stage(*to).name,
            signal: &j.signal(*signal).name,
            at: Time(*at),
            late: *late,
            classification: engine.prospect(*prospect).classification(j).as_str(),
        },
        Output::HotLead(h) => {
            let fired = |r: &usize| h.rules & (1 << r) != 0;
            Json::HotLead {
                alert_id: &h.alert_id,
                prospect: engine.prospect_id(h.prospect),
                email: engine.email(h.prospect),
                score: round2(h.score),
                stage: &j.stage(h.stage).name,
                classification: engine.prospect(h.prospect).classification(j).as_str(),
                rules: (0..j.hot_rules.len()).filter(fired).map(|r| j.hot_rules[r].name.as_str()).collect(),
                reasons: (0..j.hot_rules.len()).filter(fired).map(|r| j.hot_rules[r].reason.as_str()).collect(),
                next_commitment: &j.stage(h.stage).next_commitment,
                event_id: &h.event_id,
                signal: &j.signal(h.signal).name,
                at: Time(h.at),
            }
        }
        Output::Ghosted { prospect, stage, since, at } => Json::Ghosted {
            prospect: engine.prospect_id(*prospect),
            stage: &j.stage(*stage).name,
            since: Time(*since),
            at: Time(*at),
        },
        Output::Stalled { prospect, stage, since, at } => Json::Stalled {
            prospect: engine.prospect_id(*prospect),
            stage: &j.stage(*stage).name,
            since: Time(*since),
            at: Time(*at),
        },
        Output::Late { prospect, signal, at, watermark } => Json::Late {
            prospect: engine.prospect_id(*prospect),
            signal: &j.signal(*signal).name,
            at: Time(*at),
            watermark: Time(*watermark),
        },
        Output::Rejected { reason, detail } => Json::Rejected { reason: reason.as_str(), detail },
    };
    serde_json::to_writer(buf, &json)
}

#[derive(Serialize)]
struct Summary<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shard: Option<i32>,
    watermark: Option<Time>,
    stats: &'a Stats,
    census: &'a Census,
    #[serde(flatten)]
    funnel: &'a FunnelReport,
}

/// An engine's (or several engines' combined) figures at a watermark.
pub struct Figures<'a> {
    pub watermark: Ts,
    pub stats: &'a Stats,
    pub census: &'a Census,
    pub funnel: &'a FunnelReport,
}

fn write_summary(
    kind: &'static str,
    shard: Option<(&str, i32)>,
    f: &Figures<'_>,
    buf: &mut Vec<u8>,
) -> serde_json::Result<()> {
    let s = Summary {
        kind,
        group: shard.map(|s| s.0),
        shard: shard.map(|s| s.1),
        watermark: (!f.watermark.is_none()).then_some(Time(f.watermark)),
        stats: f.stats,
        census: f.census,
        funnel: f.funnel,
    };
    serde_json::to_writer(buf, &s)
}

/// Appends replay's final `funnel_summary`.
pub fn write_report(f: &Figures<'_>, buf: &mut Vec<u8>) -> serde_json::Result<()> {
    write_summary("funnel_summary", None, f, buf)
}

/// One shard's figures for the funnel topic: sum the `stats`, `census` and per-stage counts of
/// every shard of a group for the whole funnel (conversion rates are per shard; recompute them
/// from the summed `reached` counts).
pub fn write_shard_report(group: &str, shard: i32, f: &Figures<'_>, buf: &mut Vec<u8>) -> serde_json::Result<()> {
    write_summary("funnel", Some((group, shard)), f, buf)
}
