//! The funnel summaries as JSON: replay's final `funnel_summary` and the service's per-shard
//! `funnel` records.

use serde::Serialize;

use super::outbound::Time;
use crate::core::breakdown::{BreakdownReport, BreakdownTable};
use crate::core::engine::{Census, Stats};
use crate::core::{FunnelReport, Ts};

#[derive(Serialize)]
struct Summary<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    shard: Option<i32>,
    watermark: Option<Time>,
    stats: StatsOut<'a>,
    census: &'a Census,
    #[serde(flatten)]
    funnel: &'a FunnelReport,
    /// Replay: per `[breakdowns]` dimension, the report (top K values, `other`, `none`).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    breakdowns: &'a [BreakdownReport],
    /// Funnel records: per dimension, the shard's counts of every value it holds (sum them by
    /// value over the shards, then rank).
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    breakdown_counts: &'a [BreakdownTable],
}

#[derive(Serialize)]
struct StatsOut<'a> {
    #[serde(flatten)]
    stats: &'a Stats,
    /// Replay only: rejections by reason label, non-zero labels in label order.
    #[serde(skip_serializing_if = "Option::is_none")]
    rejected_by_reason: Option<std::collections::BTreeMap<&'a str, u64>>,
    /// Replay only: suppressed alerts by hot rule, non-zero rules in name order.
    #[serde(skip_serializing_if = "Option::is_none")]
    alerts_suppressed_by_rule: Option<std::collections::BTreeMap<&'a str, u64>>,
    /// Replay only: the most frequent names that map to no signal, most frequent first.
    #[serde(skip_serializing_if = "Option::is_none")]
    unmapped_top: Option<Vec<NameCount<'a>>>,
    /// Replay only: unmapped events whose names are not in `unmapped_top`.
    #[serde(skip_serializing_if = "Option::is_none")]
    unmapped_other: Option<u64>,
    /// Replay only, with `[identity] resolve`: merges, refused links, routed events.
    #[serde(skip_serializing_if = "Option::is_none")]
    identity: Option<&'a crate::core::IdentityStats>,
    /// Replay only, with a CRM-format file: its memory's entries at the end and evictions.
    #[serde(skip_serializing_if = "Option::is_none")]
    crm_memory: Option<&'a CrmMemoryCounts>,
}

/// What replay's CRM memories hold at the end (entries) and evicted past `[crm] max_entries`,
/// summed over the CRM-format files.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CrmMemoryCounts {
    pub entries: u64,
    pub evicted: u64,
}

#[derive(Serialize)]
struct NameCount<'a> {
    name: &'a str,
    count: u64,
}

fn nonzero<'a>(pairs: &[(&'a str, u64)]) -> std::collections::BTreeMap<&'a str, u64> {
    pairs.iter().filter(|(_, n)| *n > 0).copied().collect()
}

/// What only replay counts, for its `funnel_summary`: (label, count) pairs, zero counts left out.
pub struct ReplayCounts<'a> {
    pub rejected_by_reason: &'a [(&'a str, u64)],
    pub alerts_suppressed_by_rule: &'a [(&'a str, u64)],
    /// The most frequent unmapped names, most frequent first, and the count of the others.
    pub unmapped_top: &'a [(&'a str, u64)],
    pub unmapped_other: u64,
    /// Identity resolution's counts summed over shards, when the journey resolves identities.
    pub identity: Option<&'a crate::core::IdentityStats>,
    /// The CRM memories' counts, with a CRM-format file.
    pub crm_memory: Option<&'a CrmMemoryCounts>,
}

/// An engine's (or several engines' combined) figures at a watermark.
pub struct Figures<'a> {
    pub watermark: Ts,
    pub stats: &'a Stats,
    pub census: &'a Census,
    pub funnel: &'a FunnelReport,
    pub breakdowns: &'a [BreakdownReport],
    pub breakdown_counts: &'a [BreakdownTable],
}

fn write_summary(
    kind: &'static str,
    shard: Option<(&str, i32)>,
    f: &Figures<'_>,
    replay: Option<&ReplayCounts<'_>>,
    buf: &mut Vec<u8>,
) -> serde_json::Result<()> {
    let s = Summary {
        kind,
        group: shard.map(|s| s.0),
        shard: shard.map(|s| s.1),
        watermark: (!f.watermark.is_none()).then_some(Time(f.watermark)),
        stats: StatsOut {
            stats: f.stats,
            rejected_by_reason: replay.map(|r| nonzero(r.rejected_by_reason)),
            alerts_suppressed_by_rule: replay.map(|r| nonzero(r.alerts_suppressed_by_rule)),
            unmapped_top: replay
                .map(|r| r.unmapped_top.iter().map(|&(name, count)| NameCount { name, count }).collect()),
            unmapped_other: replay.map(|r| r.unmapped_other),
            identity: replay.and_then(|r| r.identity),
            crm_memory: replay.and_then(|r| r.crm_memory),
        },
        census: f.census,
        funnel: f.funnel,
        breakdowns: f.breakdowns,
        breakdown_counts: f.breakdown_counts,
    };
    serde_json::to_writer(buf, &s)
}

/// Appends replay's final `funnel_summary`; the counts only replay keeps become
/// `stats.rejected_by_reason` and `stats.alerts_suppressed_by_rule` (zero counts left out).
pub fn write_report(f: &Figures<'_>, counts: &ReplayCounts<'_>, buf: &mut Vec<u8>) -> serde_json::Result<()> {
    write_summary("funnel_summary", None, f, Some(counts), buf)
}

/// One shard's figures for the funnel topic: sum the `stats`, `census` and per-stage counts of
/// every shard of a group for the whole funnel (conversion rates are per shard; recompute them
/// from the summed `reached` counts).
pub fn write_shard_report(group: &str, shard: i32, f: &Figures<'_>, buf: &mut Vec<u8>) -> serde_json::Result<()> {
    write_summary("funnel", Some((group, shard)), f, None, buf)
}
