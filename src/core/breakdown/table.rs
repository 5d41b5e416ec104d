//! Counts per value of one dimension, read from the prospects' state, summable across shards by
//! value; and the report of them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Dimension;
use crate::core::funnel::{
    Outcomes, SignalPredictiveness, StepConversion, ratio, round4, signal_table, step_conversion, wilson,
};
use crate::core::journey::Journey;
use crate::core::prospect::{self, Prospect};

/// What the prospects of one value hold now. Sums, so shards add up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ValueCounts {
    pub prospects: u64,
    /// Prospects in each stage now.
    pub in_stage: Vec<u64>,
    /// Prospects that reached each non-terminal stage (every one up to the furthest entered).
    pub reached: Vec<u64>,
    pub won: u64,
    pub lost: u64,
    /// Prospects that raised at least one hot lead.
    pub hot_leads: u64,
    /// Per journey signal: prospects with an outcome that showed it, `[won, lost]`.
    pub signal_outcomes: Vec<[u64; 2]>,
}

impl ValueCounts {
    fn new(journey: &Journey) -> ValueCounts {
        let s = journey.stages.len();
        ValueCounts {
            in_stage: vec![0; s],
            reached: vec![0; s],
            signal_outcomes: vec![[0; 2]; journey.signals.len()],
            ..ValueCounts::default()
        }
    }

    /// Counts one prospect; `measured` says which signals count in `signal_outcomes`
    /// ([`measured_signals`]).
    pub(crate) fn count(
        &mut self,
        journey: &Journey,
        p: &Prospect,
        stage_times: &[u32],
        counts: &[u16],
        measured: &[bool],
    ) {
        self.prospects += 1;
        self.in_stage[p.stage.0 as usize] += 1;
        let furthest = (0..journey.stages.len()).rev().find(|&k| !journey.stages[k].terminal && stage_times[k] != 0);
        for k in 0..furthest.map_or(0, |f| f + 1) {
            if !journey.stages[k].terminal {
                self.reached[k] += 1;
            }
        }
        let o = if p.has(prospect::OUTCOME_WON) {
            Some(0)
        } else if p.has(prospect::OUTCOME_LOST) {
            Some(1)
        } else {
            None
        };
        if let Some(o) = o {
            if o == 0 {
                self.won += 1;
            } else {
                self.lost += 1;
            }
            for (s, &c) in counts.iter().enumerate() {
                if c > 0 && measured[s] {
                    self.signal_outcomes[s][o] += 1;
                }
            }
        }
        if !p.last_alert.is_none() {
            self.hot_leads += 1;
        }
    }

    fn absorb(&mut self, o: &ValueCounts) {
        let ValueCounts { prospects, in_stage, reached, won, lost, hot_leads, signal_outcomes } = o;
        if self.in_stage.is_empty() {
            *self = o.clone();
            return;
        }
        self.prospects += prospects;
        self.won += won;
        self.lost += lost;
        self.hot_leads += hot_leads;
        for (a, b) in self.in_stage.iter_mut().zip(in_stage) {
            *a += b;
        }
        for (a, b) in self.reached.iter_mut().zip(reached) {
            *a += b;
        }
        for (a, b) in self.signal_outcomes.iter_mut().zip(signal_outcomes) {
            a[0] += b[0];
            a[1] += b[1];
        }
    }
}

/// The signals whose outcomes a value's signal table counts: those the funnel's signal table
/// measures (prospect-initiated, not outcomes), except signals that enter a stage at or after
/// the first won stage (shown after the sale, they would only echo it). A prospect's counts say
/// which signals it showed, not when: a signal shown after the outcome counts too.
pub(crate) fn measured_signals(journey: &Journey) -> Vec<bool> {
    let won = journey.stages.iter().find(|s| s.outcome == Some(crate::core::journey::Outcome::Won)).map(|s| s.order);
    journey
        .signals
        .iter()
        .map(|s| {
            crate::core::funnel::validated(journey, s)
                && s.enters.is_none_or(|st| won.is_none_or(|w| journey.stage(st).order < w))
        })
        .collect()
}

/// One dimension's counts per value: every value a shard (or the shards summed) holds, `other`
/// and `none` apart. Summable: add tables of the same dimension with [`BreakdownTable::absorb`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BreakdownTable {
    pub dimension: String,
    pub values: BTreeMap<String, ValueCounts>,
    /// Prospects whose value found no slot (or was not on the allow-list).
    pub other: ValueCounts,
    /// Prospects without a value.
    pub none: ValueCounts,
    /// Touches whose value found no slot and were attributed as `other`.
    pub folded_touches: u64,
}

impl BreakdownTable {
    pub(crate) fn new(journey: &Journey, dim: &Dimension) -> BreakdownTable {
        BreakdownTable {
            dimension: dim.name.clone(),
            values: BTreeMap::new(),
            other: ValueCounts::new(journey),
            none: ValueCounts::new(journey),
            folded_touches: 0,
        }
    }

    /// The counts of `value` (`None`: `none`), created empty.
    pub(crate) fn entry(&mut self, journey: &Journey, value: Option<&str>, other: bool) -> &mut ValueCounts {
        match (value, other) {
            (_, true) => &mut self.other,
            (None, false) => &mut self.none,
            (Some(v), false) => self.values.entry(v.to_string()).or_insert_with(|| ValueCounts::new(journey)),
        }
    }

    /// Adds another shard's table of the same dimension.
    pub fn absorb(&mut self, o: &BreakdownTable) {
        for (v, c) in &o.values {
            match self.values.get_mut(v) {
                Some(mine) => mine.absorb(c),
                None => {
                    self.values.insert(v.clone(), c.clone());
                }
            }
        }
        self.other.absorb(&o.other);
        self.none.absorb(&o.none);
        self.folded_touches += o.folded_touches;
    }

    /// The report: the `top_k` values with most prospects (the allow-list's values, with one),
    /// the rest added to `other`; values with at least `min_sample` outcomes first, by win
    /// rate, then the others by prospects.
    pub fn report(&self, journey: &Journey, dim: &Dimension, min_sample: u64) -> BreakdownReport {
        let mut ranked: Vec<(&String, &ValueCounts)> = self.values.iter().collect();
        ranked.sort_by(|a, b| b.1.prospects.cmp(&a.1.prospects).then_with(|| a.0.cmp(b.0)));
        let keep = if dim.allow.is_empty() { dim.top_k } else { dim.allow.len() };
        let mut other = self.other.clone();
        for (_, c) in ranked.iter().skip(keep) {
            other.absorb(c);
        }
        let mut values: Vec<ValueReport> =
            ranked.iter().take(keep).map(|(v, c)| ValueReport::of(journey, v, c, min_sample)).collect();
        values.sort_by(|a, b| {
            a.small_sample
                .cmp(&b.small_sample)
                .then_with(|| {
                    if a.small_sample {
                        b.prospects.cmp(&a.prospects)
                    } else {
                        b.outcomes.win_rate.total_cmp(&a.outcomes.win_rate)
                    }
                })
                .then_with(|| a.value.cmp(&b.value))
        });
        BreakdownReport {
            dimension: dim.name.clone(),
            attribution: match dim.attribution {
                super::Attribution::FirstTouch => "first_touch".into(),
                super::Attribution::LastTouch => "last_touch".into(),
                super::Attribution::AtStage(s) => format!("at_stage:{}", journey.stage(s).name),
            },
            top_k: keep,
            distinct_values: self.values.len(),
            folded_touches: self.folded_touches,
            values,
            other: ValueReport::of(journey, "other", &other, min_sample),
            none: ValueReport::of(journey, dim.none_label(), &self.none, min_sample),
        }
    }
}

/// One dimension's breakdown, as reports and `GET /funnel?by=` show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BreakdownReport {
    pub dimension: String,
    /// `first_touch`, `last_touch` or `at_stage:<stage>`.
    pub attribution: String,
    /// Values shown at most (the allow-list's length, with one).
    pub top_k: usize,
    /// Distinct values held (summed shards may hold more than one shard's `max_values`).
    pub distinct_values: usize,
    pub folded_touches: u64,
    /// The values shown: those with enough outcomes by win rate, then the others by prospects.
    pub values: Vec<ValueReport>,
    /// Values not shown, and values that found no slot.
    pub other: ValueReport,
    /// Prospects without a value (`no` for a segment).
    pub none: ValueReport,
}

/// The funnel of the prospects of one value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ValueReport {
    pub value: String,
    pub prospects: u64,
    pub stages: Vec<StageCount>,
    pub conversion: Vec<StepConversion>,
    pub outcomes: Outcomes,
    /// Wilson score 95% interval of the win rate.
    pub win_rate_interval: [f64; 2],
    pub hot_leads: u64,
    /// Which signals predict a sale among these prospects (lift over this value's win rate).
    pub signals: Vec<SignalPredictiveness>,
    /// Fewer than the minimum sample of prospects with an outcome.
    pub small_sample: bool,
}

/// Prospects of a value now in and having reached a stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StageCount {
    pub stage: String,
    pub prospects: u64,
    pub reached: u64,
}

impl ValueReport {
    fn of(journey: &Journey, value: &str, c: &ValueCounts, min_sample: u64) -> ValueReport {
        let (w, l) = (c.won, c.lost);
        let (low, high) = wilson(w, w + l);
        let stages = journey
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| StageCount {
                stage: s.name.clone(),
                prospects: c.in_stage.get(i).copied().unwrap_or(0),
                reached: c.reached.get(i).copied().unwrap_or(0),
            })
            .collect();
        let reached = if c.reached.is_empty() { vec![0; journey.stages.len()] } else { c.reached.clone() };
        let so =
            if c.signal_outcomes.is_empty() { vec![[0; 2]; journey.signals.len()] } else { c.signal_outcomes.clone() };
        let signals = signal_table(journey, &so, None, [w, l], min_sample);
        ValueReport {
            value: value.to_string(),
            prospects: c.prospects,
            stages,
            conversion: step_conversion(journey, &reached),
            outcomes: Outcomes { won: w, lost: l, win_rate: ratio(w, w + l) },
            win_rate_interval: [round4(low), round4(high)],
            hot_leads: c.hot_leads,
            signals,
            small_sample: w + l < min_sample.max(1),
        }
    }
}
