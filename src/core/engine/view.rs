//! Read views of the state: one prospect for people, digests, the census and the memory figure.

use serde::Serialize;

use super::Engine;
use super::extras::Extras;
use super::timers::Timer;
use crate::core::ids::ProspectIx;
use crate::core::prospect::{self, Classification};
use crate::core::time::{MS_PER_SEC, Ts};

impl Engine {
    /// When the prospect last entered each stage (`None`: never), to the second.
    pub fn stage_entries(&self, ix: ProspectIx) -> impl Iterator<Item = Option<Ts>> + '_ {
        self.store.stage_times(ix.0 as usize).iter().map(|&v| (v != 0).then(|| Ts((i64::from(v) - 1) * MS_PER_SEC)))
    }

    /// A readable view of one prospect, its score decayed to `at` (or to its last event).
    pub fn view(&self, ix: ProspectIx, at: Option<Ts>) -> ProspectView {
        let j = &self.journey;
        let i = ix.0 as usize;
        let p = self.store.fixed(i);
        let at = at.unwrap_or(p.score_at);
        let stage_entered = (0..j.stages.len())
            .filter_map(|s| {
                let v = self.store.stage_times(i)[s];
                (v != 0).then(|| (j.stages[s].name.clone(), Ts((i64::from(v) - 1) * MS_PER_SEC).to_string()))
            })
            .collect();
        let signal_counts = (0..j.signals.len())
            .filter_map(|s| {
                let c = self.store.counts(i)[s];
                (c != 0).then(|| (j.signals[s].name.clone(), c))
            })
            .collect();
        let opt = |t: Ts| (!t.is_none()).then(|| t.to_string());
        let hot = p.is_hot(at);
        ProspectView {
            prospect: self.ids.get(ix).to_string(),
            anonymous: p.is_anonymous(),
            email: self.email(ix).map(str::to_string),
            stage: j.stage(p.stage).name.clone(),
            stage_entered_at: p.stage_entered.to_string(),
            stages_entered: stage_entered,
            score: (p.score_at_time(j, at) * 100.0).round() / 100.0,
            hot,
            hot_reason: hot.then(|| j.hot_rules[p.hot_rule as usize].reason.clone()),
            ghosted: p.has(prospect::GHOSTED),
            stalled: p.has(prospect::STALLED),
            classification: p.classification(j),
            next_commitment: j.next_commitment(p.stage, p.classification(j)).to_string(),
            last_activity: opt(p.last_activity),
            ghost_due: opt(p.ghost_due),
            stall_due: opt(p.stall_due),
            signal_counts,
            breakdowns: self.attributed(ix).into_iter().map(|(d, v)| (d.to_string(), v.map(str::to_string))).collect(),
        }
    }

    /// A digest of one prospect's whole state, independent of its index in this engine.
    pub fn prospect_digest(&self, ix: ProspectIx) -> u64 {
        self.prospect_digest_with(ix, &mut Vec::with_capacity(256))
    }

    pub(super) fn prospect_digest_with(&self, ix: ProspectIx, buf: &mut Vec<u8>) -> u64 {
        self.with_parts(ix, |p| p.digest(|d, id| self.value_name(d, id), buf))
    }

    /// Order-independent digest of every prospect's state: equal across engines (or shards
    /// summed) that hold the same prospects in the same states.
    pub fn digest(&self) -> u64 {
        let mut buf = Vec::with_capacity(256);
        (0..self.store.len() as u32)
            .filter(|&i| self.holds(i as usize))
            .fold(0u64, |acc, i| acc.wrapping_add(self.prospect_digest_with(ProspectIx(i), &mut buf)))
    }

    /// Prospects per classification, hot prospects at the watermark.
    pub fn census(&self) -> Census {
        let mut c = Census::default();
        let at = self.watermark;
        for p in self.store.iter_fixed() {
            if p.has(prospect::REDIRECT | prospect::FREE) {
                continue;
            }
            c.prospects += 1;
            match p.classification(&self.journey) {
                Classification::CurrentOpportunity => c.current_opportunity += 1,
                Classification::NoCurrentOpportunity => c.no_current_opportunity += 1,
                Classification::NotAProspect => c.not_a_prospect += 1,
            }
            c.hot += u64::from(p.is_hot(at));
            c.ghosted += u64::from(p.has(prospect::GHOSTED));
            c.stalled += u64::from(p.has(prospect::STALLED));
            c.gone_quiet += u64::from(p.has(prospect::QUIET));
        }
        c
    }

    /// Heap bytes held by state (capacity, not length): the memory budget figure.
    pub fn heap_bytes(&self) -> usize {
        self.ids.heap_bytes()
            + self.store.heap_bytes()
            + self.timers.capacity() * std::mem::size_of::<Timer>()
            + self.quiet.capacity() * 12
            + self.emails.capacity() * 24
            + self.emails.present.capacity() * 8
            + self.emails.values().map(|e| e.len()).sum::<usize>()
            + self.extras.capacity() * (std::mem::size_of::<(u32, Extras)>() + 1)
            + self.extras.values().map(Extras::heap_bytes).sum::<usize>()
            + self.shown.heap_bytes()
            + self.identity.as_ref().map_or(0, |m| m.heap_bytes())
            + self.attr.heap_bytes()
            + self.expiry_armed.capacity() * 4
            + self.kept_cooldowns.keys().map(|k| k.len() + 64).sum::<usize>()
            + self.kept_handoffs.keys().map(|k| k.len() + 64).sum::<usize>()
    }
}

/// Counts over all prospects at the watermark.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Census {
    pub prospects: u64,
    pub hot: u64,
    pub ghosted: u64,
    pub stalled: u64,
    pub gone_quiet: u64,
    pub current_opportunity: u64,
    pub no_current_opportunity: u64,
    pub not_a_prospect: u64,
}

/// One prospect, for people: names instead of indexes, times as RFC 3339.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProspectView {
    pub prospect: String,
    /// Its id is an `anonymousId` never identified (`[retention]`'s anonymous span applies).
    pub anonymous: bool,
    pub email: Option<String>,
    pub stage: String,
    pub stage_entered_at: String,
    pub stages_entered: Vec<(String, String)>,
    pub score: f64,
    pub hot: bool,
    pub hot_reason: Option<String>,
    pub ghosted: bool,
    pub stalled: bool,
    pub classification: Classification,
    pub next_commitment: String,
    pub last_activity: Option<String>,
    pub ghost_due: Option<String>,
    pub stall_due: Option<String>,
    pub signal_counts: Vec<(String, u16)>,
    /// Per `[breakdowns]` dimension, the prospect's attributed value (`other` for a value that
    /// found no slot; `null`: none); left out for journeys without breakdowns.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub breakdowns: Vec<(String, Option<String>)>,
}
