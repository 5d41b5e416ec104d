//! Funnel aggregates, kept incrementally as prospects move, and a named report of them.

use serde::Serialize;

use super::journey::{Journey, Outcome, SignalDef, StageId};
use super::time::{Span, Ts};

/// Upper bounds (seconds) of the time-in-stage histogram buckets; a last bucket takes the rest.
pub const TIME_BUCKETS_SECS: [f64; 10] = [
    3_600.0,
    6.0 * 3_600.0,
    86_400.0,
    3.0 * 86_400.0,
    7.0 * 86_400.0,
    14.0 * 86_400.0,
    30.0 * 86_400.0,
    60.0 * 86_400.0,
    90.0 * 86_400.0,
    180.0 * 86_400.0,
];

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    /// Per bucket (not cumulative); the last entry counts values above every bound.
    pub buckets: [u64; TIME_BUCKETS_SECS.len() + 1],
    pub sum_secs: f64,
    pub count: u64,
}

impl Histogram {
    pub fn record(&mut self, span: Span) {
        let secs = span.as_secs_f64().max(0.0);
        let i = TIME_BUCKETS_SECS.iter().position(|&b| secs <= b).unwrap_or(TIME_BUCKETS_SECS.len());
        self.buckets[i] += 1;
        self.sum_secs += secs;
        self.count += 1;
    }

    /// Takes back a value [`Histogram::record`] counted (counters stop at 0).
    pub fn unrecord(&mut self, span: Span) {
        let secs = span.as_secs_f64().max(0.0);
        let i = TIME_BUCKETS_SECS.iter().position(|&b| secs <= b).unwrap_or(TIME_BUCKETS_SECS.len());
        if self.buckets[i] > 0 {
            self.buckets[i] -= 1;
            self.sum_secs = (self.sum_secs - secs).max(0.0);
            self.count -= 1;
        }
    }

    /// The bucket holding the median: its (lower, upper) bound in seconds (upper `None` for
    /// the last bucket); `None` when empty.
    pub fn median_bucket(&self) -> Option<(f64, Option<f64>)> {
        if self.count == 0 {
            return None;
        }
        let half = self.count.div_ceil(2);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= half {
                let low = if i == 0 { 0.0 } else { TIME_BUCKETS_SECS[i - 1] };
                return Some((low, TIME_BUCKETS_SECS.get(i).copied()));
            }
        }
        None
    }

    fn absorb(&mut self, other: &Histogram) {
        let Histogram { buckets, sum_secs, count } = other;
        for (a, b) in self.buckets.iter_mut().zip(buckets) {
            *a += b;
        }
        self.sum_secs += sum_secs;
        self.count += count;
    }
}

/// Funnel counters of one engine (one shard). Summing shards' counters gives the whole funnel.
#[derive(Clone, Debug, PartialEq)]
pub struct Funnel {
    stages: usize,
    /// Prospects currently in each stage.
    pub in_stage: Vec<u64>,
    /// Prospects that ever reached each (non-terminal) stage, counting skipped stages as passed.
    pub reached: Vec<u64>,
    /// `(stages + 1) x stages`: row `stages` is "new prospect".
    pub transitions: Vec<u64>,
    pub ghosted: Vec<u64>,
    pub stalled: Vec<u64>,
    /// Prospects that moved to a terminal stage, by the stage they left.
    pub terminated_from: Vec<u64>,
    pub time_in_stage: Vec<Histogram>,
    /// Per signal: prospects that showed it and then reached a won / lost outcome.
    pub signal_outcomes: Vec<[u64; 2]>,
    pub outcomes: [u64; 2],
    /// Per hot rule, then one row for "any rule": prospects it matched before their outcome,
    /// as [won within `[insight] alert_horizon_days` of the match, won later, lost].
    pub rule_outcomes: Vec<[u64; 3]>,
    /// Per hot rule, then "any rule": time from the (earliest) match to a win within the horizon.
    pub rule_lead: Vec<Histogram>,
    /// Per score band (`[insight] score_bands`): outcomes [won, lost] by the prospect's score
    /// just before the event that brought the outcome.
    pub band_outcomes: Vec<[u64; 2]>,
    /// Per signal: prospects that showed it.
    pub signal_shown: Vec<u64>,
    /// `signals x stages`: prospects that showed the signal at or before first reaching the
    /// (non-terminal) stage.
    pub signal_reached: Vec<u64>,
    /// Per signal: prospects that showed it at or before a hot rule first matched them.
    pub signal_hot: Vec<u64>,
    /// Per signal: prospects that first showed it after a hot rule had matched them.
    pub signal_after_hot: Vec<u64>,
    /// Prospects a hot rule ever matched.
    pub hot_prospects: u64,
    /// Per signal: prospects that went silent (a ghosted or stalled timer fired on a prospect
    /// not already ghosted or stalled) while it was their last prospect-initiated signal.
    pub signal_silences: Vec<u64>,
    /// Per signal, [won, lost]: time from when a prospect first showed it (at or before the
    /// outcome's event time) to the outcome (state version 5).
    pub signal_to_outcome: Vec<[Histogram; 2]>,
    /// Per hot rule, [won, lost]: time from its first match (at or before the outcome) to the
    /// outcome, whatever the horizon (state version 5): the pairs' time to the outcome.
    pub rule_to_outcome: Vec<[Histogram; 2]>,
    /// `signals x stages`: time from a signal's first showing to first reaching the
    /// (non-terminal) stage, for the prospects that showed it at or before (state version 5).
    pub signal_stage_time: Vec<Histogram>,
}

/// What an outcome is measured against: the prospect's counts per signal, the hot rules that
/// matched it (`Extras::alerted`), when the outcome came, its score just before.
pub(crate) struct OutcomeFacts<'a> {
    pub counts: &'a [u16],
    pub alerted: &'a [(u8, Ts)],
    /// When the prospect first showed each validated signal (`Engine::first_shown`'s packed
    /// entries).
    pub shown: &'a [u64],
    pub at: Ts,
    pub score: f64,
}

impl Funnel {
    pub fn new(journey: &Journey) -> Funnel {
        let s = journey.stages.len();
        Funnel {
            stages: s,
            in_stage: vec![0; s],
            reached: vec![0; s],
            transitions: vec![0; (s + 1) * s],
            ghosted: vec![0; s],
            stalled: vec![0; s],
            terminated_from: vec![0; s],
            time_in_stage: vec![Histogram::default(); s],
            signal_outcomes: vec![[0; 2]; journey.signals.len()],
            outcomes: [0; 2],
            rule_outcomes: vec![[0; 3]; journey.hot_rules.len() + 1],
            rule_lead: vec![Histogram::default(); journey.hot_rules.len() + 1],
            band_outcomes: vec![[0; 2]; journey.score_bands.len() + 1],
            signal_shown: vec![0; journey.signals.len()],
            signal_reached: vec![0; journey.signals.len() * s],
            signal_hot: vec![0; journey.signals.len()],
            signal_after_hot: vec![0; journey.signals.len()],
            hot_prospects: 0,
            signal_silences: vec![0; journey.signals.len()],
            signal_to_outcome: vec![Default::default(); journey.signals.len()],
            rule_to_outcome: vec![Default::default(); journey.hot_rules.len()],
            signal_stage_time: vec![Histogram::default(); journey.signals.len() * s],
        }
    }

    /// Adds another engine's counters (same journey) to these: the funnel of both shards.
    pub fn absorb(&mut self, other: &Funnel) {
        // Destructured so that a new counter cannot be forgotten here.
        let Funnel {
            stages,
            in_stage,
            reached,
            transitions,
            ghosted,
            stalled,
            terminated_from,
            time_in_stage,
            signal_outcomes,
            outcomes,
            rule_outcomes,
            rule_lead,
            band_outcomes,
            signal_shown,
            signal_reached,
            signal_hot,
            signal_after_hot,
            hot_prospects,
            signal_silences,
            signal_to_outcome,
            rule_to_outcome,
            signal_stage_time,
        } = other;
        debug_assert_eq!(self.stages, *stages, "funnels of one journey");
        add(&mut self.in_stage, in_stage);
        add(&mut self.reached, reached);
        add(&mut self.transitions, transitions);
        add(&mut self.ghosted, ghosted);
        add(&mut self.stalled, stalled);
        add(&mut self.terminated_from, terminated_from);
        for (h, o) in self.time_in_stage.iter_mut().zip(time_in_stage) {
            h.absorb(o);
        }
        for (a, b) in self.signal_outcomes.iter_mut().zip(signal_outcomes) {
            add(a, b);
        }
        add(&mut self.outcomes, outcomes);
        for (a, b) in self.rule_outcomes.iter_mut().zip(rule_outcomes) {
            add(a, b);
        }
        for (h, o) in self.rule_lead.iter_mut().zip(rule_lead) {
            h.absorb(o);
        }
        for (a, b) in self.band_outcomes.iter_mut().zip(band_outcomes) {
            add(a, b);
        }
        add(&mut self.signal_shown, signal_shown);
        add(&mut self.signal_reached, signal_reached);
        add(&mut self.signal_hot, signal_hot);
        add(&mut self.signal_after_hot, signal_after_hot);
        self.hot_prospects += hot_prospects;
        add(&mut self.signal_silences, signal_silences);
        for (h, o) in self.signal_stage_time.iter_mut().zip(signal_stage_time) {
            h.absorb(o);
        }
        let times = self.signal_to_outcome.iter_mut().zip(signal_to_outcome);
        for (a, b) in times.chain(self.rule_to_outcome.iter_mut().zip(rule_to_outcome)) {
            a[0].absorb(&b[0]);
            a[1].absorb(&b[1]);
        }
    }

    /// A ghosted or stalled timer fired; `last_signal` was the prospect's last step.
    pub(crate) fn silence_after(&mut self, last_signal: u16) {
        if let Some(n) = self.signal_silences.get_mut(last_signal as usize) {
            *n += 1;
        }
    }

    /// Counts a stage change at `at`. For a prospect that may have been further along before,
    /// stages up to `furthest` (a reopened prospect's furthest non-terminal stage) were reached
    /// already and are not counted again. `shown`: its first-shown times.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn transition_from(
        &mut self,
        journey: &Journey,
        from: Option<StageId>,
        furthest: Option<StageId>,
        to: StageId,
        time_in_from: Span,
        counts: &[u16],
        (shown, at): (&[u64], Ts),
    ) {
        let row = match from {
            Some(f) => {
                self.in_stage[f.0 as usize] -= 1;
                self.time_in_stage[f.0 as usize].record(time_in_from);
                f.0 as usize
            }
            None => self.stages,
        };
        self.in_stage[to.0 as usize] += 1;
        self.transitions[row * self.stages + to.0 as usize] += 1;
        if journey.stage(to).terminal {
            if let Some(f) = from {
                self.terminated_from[f.0 as usize] += 1;
            }
            return;
        }
        let first = match (furthest, from) {
            (Some(f), _) => f.0 as usize + 1,
            (None, Some(f)) if journey.stage(f).terminal => to.0 as usize + 1,
            (None, f) => f.map_or(0, |f| f.0 as usize + 1),
        };
        for k in first..=to.0 as usize {
            if !journey.stages[k].terminal {
                self.reached[k] += 1;
                for (sig, _) in counts.iter().enumerate().filter(|&(_, &c)| c > 0) {
                    self.signal_reached[sig * self.stages + k] += 1;
                }
                let before = shown.iter().map(|&e| super::engine::unpack_shown(e)).filter(|&(_, t)| t <= at);
                for (sig, t) in before {
                    if let Some(h) = self.signal_stage_time.get_mut(sig as usize * self.stages + k) {
                        h.record(at.since(t));
                    }
                }
            }
        }
    }

    /// Takes back an outcome [`Funnel::outcome`] counted (the deal was reopened or corrected).
    /// Signals first shown after the outcome were not counted with it; counters stop at 0.
    pub(crate) fn retract_outcome(&mut self, journey: &Journey, outcome: Outcome, facts: &OutcomeFacts<'_>) {
        let o = outcome_index(outcome);
        self.outcomes[o] = self.outcomes[o].saturating_sub(1);
        for (s, &c) in facts.counts.iter().enumerate() {
            if c > 0 {
                self.signal_outcomes[s][o] = self.signal_outcomes[s][o].saturating_sub(1);
            }
        }
        let band = &mut self.band_outcomes[journey.score_band(facts.score)][o];
        *band = band.saturating_sub(1);
        for (s, span) in shown_before(facts) {
            if let Some(h) = self.signal_to_outcome.get_mut(s) {
                h[o].unrecord(span);
            }
        }
        for &(r, t) in facts.alerted.iter().filter(|&&(_, t)| t <= facts.at) {
            if let Some(h) = self.rule_to_outcome.get_mut(r as usize) {
                h[o].unrecord(facts.at.since(t));
            }
        }
        for (row, col, lead) in rule_cells(journey, outcome, facts) {
            let n = &mut self.rule_outcomes[row][col];
            *n = n.saturating_sub(1);
            if let Some(span) = lead {
                self.rule_lead[row].unrecord(span);
            }
        }
    }

    /// Counts an outcome: per signal shown, per hot rule that matched before it, per score band.
    pub(crate) fn outcome(&mut self, journey: &Journey, outcome: Outcome, facts: &OutcomeFacts<'_>) {
        let o = outcome_index(outcome);
        self.outcomes[o] += 1;
        for (s, &c) in facts.counts.iter().enumerate() {
            if c > 0 {
                self.signal_outcomes[s][o] += 1;
            }
        }
        self.band_outcomes[journey.score_band(facts.score)][o] += 1;
        for (s, span) in shown_before(facts) {
            if let Some(h) = self.signal_to_outcome.get_mut(s) {
                h[o].record(span);
            }
        }
        for &(r, t) in facts.alerted.iter().filter(|&&(_, t)| t <= facts.at) {
            if let Some(h) = self.rule_to_outcome.get_mut(r as usize) {
                h[o].record(facts.at.since(t));
            }
        }
        for (row, col, lead) in rule_cells(journey, outcome, facts) {
            self.rule_outcomes[row][col] += 1;
            if let Some(span) = lead {
                self.rule_lead[row].record(span);
            }
        }
    }

    /// A prospect turned hot for the first time (a hot rule matched it), having shown the
    /// signals counted in `counts`.
    pub(crate) fn first_hot(&mut self, counts: &[u16]) {
        self.hot_prospects += 1;
        for (s, &c) in counts.iter().enumerate() {
            if c > 0 {
                self.signal_hot[s] += 1;
            }
        }
    }

    /// The aggregates with names, conversions and lifts worked out; a signal shown by fewer
    /// than [`MIN_SAMPLE`] prospects with an outcome is flagged `small_sample`.
    pub fn report(&self, journey: &Journey) -> FunnelReport {
        self.report_with(journey, MIN_SAMPLE)
    }

    /// [`Funnel::report`] with another minimum sample size.
    pub fn report_with(&self, journey: &Journey, min_sample: u64) -> FunnelReport {
        let stage_name = |i: usize| journey.stages[i].name.clone();
        let conversion = step_conversion(journey, &self.reached);
        let mut transitions = Vec::new();
        for row in 0..=self.stages {
            for to in 0..self.stages {
                let n = self.transitions[row * self.stages + to];
                if n > 0 {
                    let from = (row < self.stages).then(|| stage_name(row));
                    transitions.push(TransitionCount { from, to: stage_name(to), count: n });
                }
            }
        }
        let stages = (0..self.stages)
            .map(|i| {
                let h = &self.time_in_stage[i];
                StageReport {
                    stage: stage_name(i),
                    prospects: self.in_stage[i],
                    reached: self.reached[i],
                    ghosted: self.ghosted[i],
                    stalled: self.stalled[i],
                    lost: self.terminated_from[i],
                    time_in_stage: TimeInStage {
                        count: h.count,
                        mean_secs: if h.count == 0 { 0.0 } else { round2(h.sum_secs / h.count as f64) },
                        buckets: h.buckets.to_vec(),
                    },
                }
            })
            .collect();
        let [won, lost] = self.outcomes;
        let base = ratio(won, won + lost);
        let signals =
            signal_table(journey, &self.signal_outcomes, Some(&self.signal_to_outcome), self.outcomes, min_sample);
        FunnelReport {
            journey: journey.name.clone(),
            stages,
            conversion,
            transitions,
            outcomes: Outcomes { won, lost, win_rate: base },
            signals,
            rules: self.rule_report(journey, min_sample),
            score_bands: self.band_report(journey, base, min_sample),
            milestones: self.milestone_report(journey),
            hot_first: self.hot_first_report(journey),
            pairs: self.pair_report(journey, base, min_sample),
            drop_off: self.drop_off_report(journey),
            time_buckets_secs: TIME_BUCKETS_SECS.to_vec(),
        }
    }

    /// Each hot rule's accuracy over prospects with an outcome, then the "any rule" row.
    fn rule_report(&self, journey: &Journey, min_sample: u64) -> Vec<RuleQuality> {
        let names = journey.hot_rules.iter().map(|r| r.name.as_str()).chain(std::iter::once(ANY_RULE));
        let won_total = self.outcomes[0];
        names
            .zip(&self.rule_outcomes)
            .zip(&self.rule_lead)
            .map(|((rule, &[won, won_later, lost]), lead)| {
                let n = won + won_later + lost;
                let (pl, ph) = wilson(won, n);
                let (cl, ch) = wilson(won, won_total);
                let median = lead.median_bucket();
                RuleQuality {
                    rule: rule.to_string(),
                    won,
                    won_later,
                    lost,
                    precision: ratio(won, n),
                    precision_interval: [round4(pl), round4(ph)],
                    capture: ratio(won, won_total),
                    capture_interval: [round4(cl), round4(ch)],
                    lead_time_median: median.map(|(from_secs, to_secs)| LeadBucket { from_secs, to_secs }),
                    lead_time_mean_secs: (lead.count > 0).then(|| round2(lead.sum_secs / lead.count as f64)),
                    lead_time_buckets: lead.buckets.to_vec(),
                    small_sample: n < min_sample,
                }
            })
            .collect()
    }

    fn band_report(&self, journey: &Journey, base: f64, min_sample: u64) -> Vec<ScoreBand> {
        self.band_outcomes
            .iter()
            .enumerate()
            .map(|(k, &[w, l])| {
                let rate = ratio(w, w + l);
                let (low, high) = wilson(w, w + l);
                let lift = |r: f64| if base > 0.0 { round2(r / base) } else { 0.0 };
                ScoreBand {
                    from: if k == 0 { None } else { Some(journey.score_bands[k - 1]) },
                    to: journey.score_bands.get(k).copied(),
                    won: w,
                    lost: l,
                    win_rate: rate,
                    win_rate_interval: [round4(low), round4(high)],
                    lift: lift(rate),
                    lift_interval: [lift(low), lift(high)],
                    small_sample: w + l < min_sample,
                }
            })
            .collect()
    }

    /// For each validated signal shown, the share of the prospects who showed it that reached
    /// each non-terminal stage after the first.
    fn milestone_report(&self, journey: &Journey) -> Vec<Milestones> {
        let later: Vec<usize> = (1..self.stages).filter(|&k| !journey.stages[k].terminal).collect();
        journey
            .signals
            .iter()
            .enumerate()
            .filter(|(i, s)| validated(journey, s) && self.signal_shown[*i] > 0)
            .map(|(i, s)| {
                let shown = self.signal_shown[i];
                let reached = later
                    .iter()
                    .map(|&k| {
                        let n = self.signal_reached[i * self.stages + k];
                        let (low, high) = wilson(n, shown);
                        MilestoneReach {
                            stage: journey.stages[k].name.clone(),
                            prospects: n,
                            rate: ratio(n, shown),
                            rate_interval: [round4(low), round4(high)],
                            time_to_reach: TimeToOutcome::of(&self.signal_stage_time[i * self.stages + k]),
                        }
                    })
                    .collect();
                Milestones { signal: s.name.clone(), shown, reached }
            })
            .collect()
    }

    /// The ordered pairs sequence rules name (`signal` within `within_days` after `after`):
    /// prospects the rule matched, by outcome, as a signal of the `signals` table.
    fn pair_report(&self, journey: &Journey, base: f64, min_sample: u64) -> Vec<PairPredictiveness> {
        journey
            .hot_rules
            .iter()
            .zip(&self.rule_outcomes)
            .zip(&self.rule_to_outcome)
            .filter_map(|((rule, &[won, won_later, lost]), times)| {
                let super::journey::HotCondition::Signal { signal, after: Some((after, within)) } = rule.condition
                else {
                    return None;
                };
                let w = won + won_later;
                let rate = ratio(w, w + lost);
                let (low, high) = wilson(w, w + lost);
                let lift = |r: f64| if base > 0.0 { round2(r / base) } else { 0.0 };
                Some(PairPredictiveness {
                    rule: rule.name.clone(),
                    signal: journey.signal(signal).name.clone(),
                    after: journey.signal(after).name.clone(),
                    within_days: round2(within.0 as f64 / super::time::MS_PER_DAY as f64),
                    won: w,
                    lost,
                    win_rate: rate,
                    win_rate_interval: [round4(low), round4(high)],
                    lift: lift(rate),
                    lift_interval: [lift(low), lift(high)],
                    small_sample: w + lost < min_sample,
                    time_to_won: TimeToOutcome::of(&times[0]),
                    time_to_lost: TimeToOutcome::of(&times[1]),
                })
            })
            .collect()
    }

    /// Per validated signal shown: the share of its prospects that went silent right after it.
    fn drop_off_report(&self, journey: &Journey) -> Vec<DropOff> {
        let mut rows: Vec<DropOff> = journey
            .signals
            .iter()
            .enumerate()
            .filter(|(i, s)| validated(journey, s) && self.signal_shown[*i] > 0)
            .map(|(i, s)| {
                let (shown, silent) = (self.signal_shown[i], self.signal_silences[i].min(self.signal_shown[i]));
                let (low, high) = wilson(silent, shown);
                DropOff {
                    signal: s.name.clone(),
                    shown,
                    silent,
                    rate: ratio(silent, shown),
                    rate_interval: [round4(low), round4(high)],
                }
            })
            .collect();
        rows.sort_by(|a, b| b.rate.total_cmp(&a.rate).then_with(|| a.signal.cmp(&b.signal)));
        rows
    }

    /// How often each validated signal came before a prospect turned hot, against the
    /// prospects who never did; by lift.
    fn hot_first_report(&self, journey: &Journey) -> Vec<HotFirst> {
        let people: u64 = self.transitions[self.stages * self.stages..].iter().sum();
        let cold = people.saturating_sub(self.hot_prospects);
        let mut rows: Vec<HotFirst> = journey
            .signals
            .iter()
            .enumerate()
            .filter(|(i, s)| validated(journey, s) && self.signal_shown[*i] > 0)
            .map(|(i, s)| {
                let hot = self.signal_hot[i].min(self.hot_prospects);
                let not_hot =
                    self.signal_shown[i].saturating_sub(self.signal_hot[i] + self.signal_after_hot[i]).min(cold);
                let (hot_share, cold_share) = (ratio(hot, self.hot_prospects), ratio(not_hot, cold));
                HotFirst {
                    signal: s.name.clone(),
                    hot,
                    hot_share,
                    not_hot,
                    not_hot_share: cold_share,
                    lift: (cold_share > 0.0).then(|| round2(hot_share / cold_share)),
                }
            })
            .collect();
        // By lift; a signal only hot leads showed (no lift to compute) first.
        let key = |h: &HotFirst| h.lift.unwrap_or(f64::INFINITY);
        rows.sort_by(|a, b| key(b).total_cmp(&key(a)).then_with(|| a.signal.cmp(&b.signal)));
        rows
    }
}

/// Each signal first shown at or before the outcome, with the time from then to the outcome.
fn shown_before<'a>(facts: &'a OutcomeFacts<'_>) -> impl Iterator<Item = (usize, Span)> + 'a {
    facts
        .shown
        .iter()
        .map(|&e| super::engine::unpack_shown(e))
        .filter(|&(_, t)| t <= facts.at)
        .map(|(s, t)| (s as usize, facts.at.since(t)))
}

/// The `rule_outcomes` cells (row, column) an outcome counts in, with the lead time of a win
/// within the horizon: each rule that matched at or before the outcome, and the "any rule" row
/// from the earliest match.
fn rule_cells(journey: &Journey, outcome: Outcome, facts: &OutcomeFacts<'_>) -> Vec<(usize, usize, Option<Span>)> {
    let any = journey.hot_rules.len();
    let before = facts.alerted.iter().filter(|&&(_, t)| t <= facts.at);
    let earliest = before.clone().map(|&(_, t)| t).min();
    let cell = |row: usize, t: Ts| {
        let lead = facts.at.since(t);
        match outcome {
            Outcome::Won if lead <= journey.alert_horizon => (row, 0, Some(lead)),
            Outcome::Won => (row, 1, None),
            Outcome::Lost => (row, 2, None),
        }
    };
    before.map(|&(r, t)| cell(r as usize, t)).chain(earliest.map(|t| cell(any, t))).collect()
}

/// Step conversion between consecutive non-terminal stages from prospects reached per stage.
pub(crate) fn step_conversion(journey: &Journey, reached: &[u64]) -> Vec<StepConversion> {
    let stage_name = |i: usize| journey.stages[i].name.clone();
    let non_terminal: Vec<usize> = (0..journey.stages.len()).filter(|&i| !journey.stages[i].terminal).collect();
    non_terminal
        .windows(2)
        .map(|w| StepConversion {
            from: stage_name(w[0]),
            to: stage_name(w[1]),
            entered: reached[w[0]],
            converted: reached[w[1]],
            rate: ratio(reached[w[1]], reached[w[0]]),
        })
        .collect()
}

/// The signal table: per validated signal with outcomes, its win rate and lift over the base
/// win rate of `outcomes` (won, lost), with intervals; by lift, those with enough sample first.
pub(crate) fn signal_table(
    journey: &Journey,
    signal_outcomes: &[[u64; 2]],
    times: Option<&[[Histogram; 2]]>,
    outcomes: [u64; 2],
    min_sample: u64,
) -> Vec<SignalPredictiveness> {
    let [won, lost] = outcomes;
    let base = ratio(won, won + lost);
    let mut signals: Vec<SignalPredictiveness> = journey
        .signals
        .iter()
        .enumerate()
        .filter(|(i, s)| validated(journey, s) && signal_outcomes[*i] != [0, 0])
        .map(|(i, s)| {
            let [w, l] = signal_outcomes[i];
            let rate = ratio(w, w + l);
            let (low, high) = wilson(w, w + l);
            let lift = |r: f64| if base > 0.0 { round2(r / base) } else { 0.0 };
            SignalPredictiveness {
                signal: s.name.clone(),
                won: w,
                lost: l,
                win_rate: rate,
                win_rate_interval: [round4(low), round4(high)],
                lift: lift(rate),
                lift_interval: [lift(low), lift(high)],
                small_sample: w + l < min_sample,
                time_to_won: times.and_then(|t| t.get(i)).map(|h| TimeToOutcome::of(&h[0])),
                time_to_lost: times.and_then(|t| t.get(i)).map(|h| TimeToOutcome::of(&h[1])),
            }
        })
        .collect();
    // By lift, signals with enough sample first: a signal two prospects showed says little.
    signals.sort_by(|a, b| {
        (a.small_sample.cmp(&b.small_sample))
            .then_with(|| b.lift.total_cmp(&a.lift))
            .then_with(|| a.signal.cmp(&b.signal))
    });
    signals
}

fn add(into: &mut [u64], from: &[u64]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a += b;
    }
}

pub fn outcome_index(o: Outcome) -> usize {
    match o {
        Outcome::Won => 0,
        Outcome::Lost => 1,
    }
}

pub(crate) fn round4(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

pub(crate) fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 { 0.0 } else { (n as f64 / d as f64 * 10_000.0).round() / 10_000.0 }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct FunnelReport {
    pub journey: String,
    pub stages: Vec<StageReport>,
    pub conversion: Vec<StepConversion>,
    pub transitions: Vec<TransitionCount>,
    pub outcomes: Outcomes,
    /// Which signals really predict a sale: for each prospect-initiated signal that is not an
    /// outcome, the win rate of prospects that showed it, its lift over the overall win rate,
    /// with intervals; by lift, those with enough sample first.
    pub signals: Vec<SignalPredictiveness>,
    /// How accurate each hot rule is, over prospects with an outcome (`[insight]`); the last
    /// row, `any`, counts a prospect once, from the earliest rule that matched it.
    pub rules: Vec<RuleQuality>,
    /// Win rate by the score a prospect had just before its outcome, per `[insight]
    /// score_bands` band.
    pub score_bands: Vec<ScoreBand>,
    /// Progress against later milestones, for pipelines with few closed deals yet.
    pub milestones: Vec<Milestones>,
    /// What hot leads did first: each signal's share among prospects who turned hot (shown at or
    /// before the first rule matched) against its share among those who never did.
    pub hot_first: Vec<HotFirst>,
    /// The ordered pairs the sequence hot rules name, as signals: won and lost after the pair.
    pub pairs: Vec<PairPredictiveness>,
    /// Drop-off after each signal: the share of the prospects that showed it whose next step
    /// was silence (ghosted or stalled); highest first.
    pub drop_off: Vec<DropOff>,
    pub time_buckets_secs: Vec<f64>,
}

/// A sequence rule's pair (`signal` within `within_days` after `after`) as a signal: the
/// prospects it matched (sent or held by the cooldown) that reached an outcome after it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PairPredictiveness {
    pub rule: String,
    pub signal: String,
    pub after: String,
    pub within_days: f64,
    pub won: u64,
    pub lost: u64,
    pub win_rate: f64,
    pub win_rate_interval: [f64; 2],
    pub lift: f64,
    pub lift_interval: [f64; 2],
    pub small_sample: bool,
    /// Time from the pair's first match (the second signal arriving within the window) to the
    /// win, and to the loss.
    pub time_to_won: TimeToOutcome,
    pub time_to_lost: TimeToOutcome,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DropOff {
    pub signal: String,
    /// Prospects that showed it.
    pub shown: u64,
    /// Of those, the ones that went silent (ghosted or stalled) with it as their last step.
    pub silent: u64,
    /// silent / shown.
    pub rate: f64,
    pub rate_interval: [f64; 2],
}

/// The name of the "any hot rule" row of [`FunnelReport::rules`].
pub const ANY_RULE: &str = "any";

/// One hot rule's accuracy (MadKudu's precision and capture, over a stated horizon).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RuleQuality {
    pub rule: String,
    /// Prospects it matched that won within `[insight] alert_horizon_days` of the match.
    pub won: u64,
    /// ... that won, later than the horizon.
    pub won_later: u64,
    /// ... that lost.
    pub lost: u64,
    /// won / (won + won_later + lost): of the prospects it flagged whose outcome is known, the
    /// share that won within the horizon.
    pub precision: f64,
    /// Wilson 95% interval of the precision.
    pub precision_interval: [f64; 2],
    /// won / every win: the share of won deals it flagged first, within the horizon.
    pub capture: f64,
    pub capture_interval: [f64; 2],
    /// The time bucket the median lead time from the match to a win within the horizon falls
    /// in; `null` without such wins.
    pub lead_time_median: Option<LeadBucket>,
    pub lead_time_mean_secs: Option<f64>,
    pub lead_time_buckets: Vec<u64>,
    pub small_sample: bool,
}

/// A bucket of `time_buckets_secs`: from (exclusive, 0 for the first) to (inclusive; `null` for
/// the last, unbounded one), in seconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LeadBucket {
    pub from_secs: f64,
    pub to_secs: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ScoreBand {
    /// Lower bound (inclusive); `null` for the lowest band.
    pub from: Option<f64>,
    /// Upper bound (exclusive); `null` for the highest band.
    pub to: Option<f64>,
    pub won: u64,
    pub lost: u64,
    pub win_rate: f64,
    pub win_rate_interval: [f64; 2],
    pub lift: f64,
    pub lift_interval: [f64; 2],
    pub small_sample: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Milestones {
    pub signal: String,
    /// Prospects that showed the signal.
    pub shown: u64,
    pub reached: Vec<MilestoneReach>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct MilestoneReach {
    pub stage: String,
    /// Prospects that showed the signal at or before first reaching this stage.
    pub prospects: u64,
    /// prospects / shown.
    pub rate: f64,
    pub rate_interval: [f64; 2],
    /// Time from first showing the signal to first reaching the stage (prospects that showed
    /// it at or before; shaped as the signal table's `time_to_won`).
    pub time_to_reach: TimeToOutcome,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HotFirst {
    pub signal: String,
    /// Hot prospects that showed it at or before turning hot.
    pub hot: u64,
    /// hot / prospects that turned hot.
    pub hot_share: f64,
    /// Prospects that showed it and have not turned hot.
    pub not_hot: u64,
    /// not_hot / prospects that never turned hot.
    pub not_hot_share: f64,
    /// hot_share / not_hot_share; `null` when no prospect that never turned hot showed it.
    pub lift: Option<f64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StageReport {
    pub stage: String,
    pub prospects: u64,
    pub reached: u64,
    pub ghosted: u64,
    pub stalled: u64,
    pub lost: u64,
    pub time_in_stage: TimeInStage,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TimeInStage {
    pub count: u64,
    pub mean_secs: f64,
    pub buckets: Vec<u64>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StepConversion {
    pub from: String,
    pub to: String,
    pub entered: u64,
    pub converted: u64,
    pub rate: f64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TransitionCount {
    pub from: Option<String>,
    pub to: String,
    pub count: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Outcomes {
    pub won: u64,
    pub lost: u64,
    pub win_rate: f64,
}

/// How well one prospect-initiated, non-outcome signal predicts a sale, over the prospects that
/// showed it before reaching an outcome.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct SignalPredictiveness {
    pub signal: String,
    pub won: u64,
    pub lost: u64,
    /// won / (won + lost).
    pub win_rate: f64,
    /// Wilson score 95% interval of the win rate (Wilson 1927; Brown, Cai & DasGupta 2001).
    pub win_rate_interval: [f64; 2],
    /// win rate / the base win rate of every prospect with an outcome.
    pub lift: f64,
    /// The win-rate interval divided by the base win rate (the base taken as known: it is
    /// measured on every outcome, a superset of this signal's).
    pub lift_interval: [f64; 2],
    /// Fewer than the minimum sample (default [`MIN_SAMPLE`]) prospects with an outcome showed
    /// it: the figures say little.
    pub small_sample: bool,
    /// Time from when each prospect first showed the signal (at or before the outcome) to its
    /// win; `null` where not measured (breakdown tables).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_won: Option<TimeToOutcome>,
    /// ... to its loss.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_to_lost: Option<TimeToOutcome>,
}

/// Times from a signal to an outcome: how many, the bucket of `time_buckets_secs` the median
/// falls in, the mean, and the buckets (not cumulative; the last counts what is above every
/// bound), which add across shards.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TimeToOutcome {
    pub count: u64,
    pub median: Option<LeadBucket>,
    pub mean_secs: Option<f64>,
    pub buckets: Vec<u64>,
}

impl TimeToOutcome {
    pub fn of(h: &Histogram) -> TimeToOutcome {
        TimeToOutcome {
            count: h.count,
            median: h.median_bucket().map(|(from_secs, to_secs)| LeadBucket { from_secs, to_secs }),
            mean_secs: (h.count > 0).then(|| round2(h.sum_secs / h.count as f64)),
            buckets: h.buckets.to_vec(),
        }
    }
}

/// Whether a signal's power to predict a sale is measured: the prospect's own step
/// (`prospect_initiated`) that is not itself an outcome (a signal entering a won or lost stage).
pub fn validated(journey: &Journey, s: &SignalDef) -> bool {
    s.prospect_initiated && s.enters.is_none_or(|st| journey.stage(st).outcome.is_none())
}

/// Prospects with an outcome a signal needs before its lift is worth reading.
pub const MIN_SAMPLE: u64 = 30;

/// The 95% Wilson score interval of `won` successes in `n` trials; (0, 1) without trials.
pub(crate) fn wilson(won: u64, n: u64) -> (f64, f64) {
    use bpci::{Interval, NSuccessesSample, WilsonScore};
    match NSuccessesSample::<f64>::new(n as f64, won as f64) {
        Ok(sample) if n > 0 => {
            let i = sample.wilson_score(1.959_964_f64);
            let (low, high): (f64, f64) = (i.lower(), i.upper());
            (low.max(0.0), high.min(1.0))
        }
        _ => (0.0, 1.0),
    }
}
