//! Funnel aggregates, kept incrementally as prospects move, and a named report of them.

use serde::Serialize;

use super::journey::{Journey, Outcome, SignalDef, StageId};
use super::time::Span;

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
    }

    /// Counts a stage change. For a prospect that may have been further along before, stages
    /// up to `furthest` (a reopened prospect's furthest non-terminal stage) were reached
    /// already and are not counted again.
    pub(crate) fn transition_from(
        &mut self,
        journey: &Journey,
        from: Option<StageId>,
        furthest: Option<StageId>,
        to: StageId,
        time_in_from: Span,
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
            }
        }
    }

    /// Takes back an outcome [`Funnel::outcome`] counted (the deal was reopened or corrected).
    /// Signals first shown after the outcome were not counted with it; counters stop at 0.
    pub(crate) fn retract_outcome(&mut self, outcome: Outcome, signal_counts: &[u16]) {
        let o = outcome_index(outcome);
        self.outcomes[o] = self.outcomes[o].saturating_sub(1);
        for (s, &c) in signal_counts.iter().enumerate() {
            if c > 0 {
                self.signal_outcomes[s][o] = self.signal_outcomes[s][o].saturating_sub(1);
            }
        }
    }

    pub(crate) fn outcome(&mut self, outcome: Outcome, signal_counts: &[u16]) {
        let o = outcome_index(outcome);
        self.outcomes[o] += 1;
        for (s, &c) in signal_counts.iter().enumerate() {
            if c > 0 {
                self.signal_outcomes[s][o] += 1;
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
        let signals = signal_table(journey, &self.signal_outcomes, self.outcomes, min_sample);
        FunnelReport {
            journey: journey.name.clone(),
            stages,
            conversion,
            transitions,
            outcomes: Outcomes { won, lost, win_rate: base },
            signals,
            time_buckets_secs: TIME_BUCKETS_SECS.to_vec(),
        }
    }
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
    pub time_buckets_secs: Vec<f64>,
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
