//! What we will close: expected wins in the next N days from the open prospects, from win rates
//! observed per stage, and how accurate that forecast was, against a fixed-probability baseline.
//!
//! Everything is read from the prospects' stage entry times (`Engine::stage_entries`), so the
//! state at any earlier instant `at` can be told from the state now: a prospect existed at `at`
//! if it had entered a stage by then, its stage at `at` is the stage it entered last by then, and
//! it was closed if that stage has an outcome (or is a stage after the first won one).
//!
//! - **Rate** of stage `s` and age at `at`: of the prospects that were open in `s` one horizon
//!   before `at`, having entered it less than a horizon before then (`new`) or longer ago
//!   (`old`), the share that won by `at` (Wilson 95% interval): a pipeline snapshot one horizon
//!   back, and what became of it. Only what was known at `at` is used.
//! - **Forecast** at `at`: each open prospect wins with its stage and age's rate; the expected
//!   wins are their sum, with a 95% interval from the normal approximation of the sum of
//!   independent Bernoulli trials (variance Σ p(1 − p)).
//! - **Backtest** at `at` (needs data up to `at + horizon`): the forecast made at `at` against
//!   what happened by `at + horizon`: the Brier score (mean of (p − won)²; Brier 1950) of the
//!   forecast and of the baseline (a fixed probability per stage, as a CRM's deal-stage
//!   probabilities), and calibration per decile of forecast probability.
//!
//! Approximations, stated: time in stage counts in two bands only (less or more than a horizon),
//! whether the prospect is hot is not used (it cannot be told for an earlier instant from the
//! state), and a prospect reopened after an outcome keeps only its latest entry per stage.

use serde::Serialize;

use super::engine::Engine;
use super::journey::{Journey, Outcome};
use super::time::{Span, Ts};

/// Forecast settings.
#[derive(Clone, Debug)]
pub struct Options {
    pub horizon: Span,
    /// Per stage, the baseline's fixed win probability (see [`default_baseline`]).
    pub baseline: Vec<f64>,
}

/// HubSpot's default deal-stage probabilities (appointment scheduled 20% … contract sent 90%),
/// spread evenly over the open stages before the first won stage, in order; 0 for other stages.
pub fn default_baseline(journey: &Journey) -> Vec<f64> {
    let won = first_won(journey);
    let open: Vec<usize> = (0..journey.stages.len())
        .filter(|&i| won.is_some_and(|w| journey.stages[i].order < journey.stages[w].order))
        .filter(|&i| !journey.stages[i].terminal && journey.stages[i].outcome.is_none())
        .collect();
    let mut p = vec![0.0; journey.stages.len()];
    for (k, &i) in open.iter().enumerate() {
        p[i] = if open.len() == 1 { 0.5 } else { 0.2 + 0.7 * k as f64 / (open.len() - 1) as f64 };
    }
    p
}

/// The first stage (by order) whose outcome is won.
fn first_won(journey: &Journey) -> Option<usize> {
    (0..journey.stages.len())
        .filter(|&i| journey.stages[i].outcome == Some(Outcome::Won))
        .min_by_key(|&i| journey.stages[i].order)
}

/// The forecast's "now" over `engines`: the latest shard clock (the largest event time traffic
/// confirmed), else, while no clock is confirmed, the latest activity of any prospect.
pub fn now(engines: &[&Engine]) -> Option<Ts> {
    let clock = engines.iter().map(|e| e.max_event_time()).filter(|t| !t.is_none()).max();
    clock.or_else(|| {
        engines
            .iter()
            .flat_map(|e| e.iter_ids().map(move |(ix, _)| e.prospect(ix).last_activity))
            .filter(|t| !t.is_none())
            .max()
    })
}

/// One prospect's stage history, read from its entry times.
struct History {
    entries: Vec<Option<Ts>>,
}

impl History {
    /// The stage entered last by `at`, if any.
    fn stage_at(&self, at: Ts) -> Option<usize> {
        let mut best: Option<(Ts, usize)> = None;
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(t) = *e
                && t <= at
                && best.is_none_or(|(bt, _)| t >= bt)
            {
                best = Some((t, i));
            }
        }
        best.map(|(_, i)| i)
    }
}

/// What the forecast needs of a journey.
struct Shape<'a> {
    journey: &'a Journey,
    won: usize,
}

impl Shape<'_> {
    /// Whether being in stage `i` means the deal is closed (an outcome, or past the first won).
    fn closed(&self, i: usize) -> bool {
        let s = &self.journey.stages[i];
        s.outcome.is_some() || s.terminal || s.order >= self.journey.stages[self.won].order
    }

    /// When the prospect won (entered the first won stage or any stage after it that is not a
    /// loss), if it did.
    fn won_at(&self, h: &History) -> Option<Ts> {
        let order = self.journey.stages[self.won].order;
        (0..h.entries.len())
            .filter(|&i| {
                let s = &self.journey.stages[i];
                s.order >= order && s.outcome != Some(Outcome::Lost) && !s.terminal
            })
            .filter_map(|i| h.entries[i])
            .min()
    }
}

/// Win rate of one stage, as known at the forecast's instant.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StageRate {
    pub stage: String,
    /// `new`: entered the stage less than a horizon before; `old`: longer ago.
    pub in_stage: String,
    /// Prospects open in the stage (and of that age) one horizon before the forecast's instant.
    pub entered: u64,
    /// Of those, the ones that won by the forecast's instant.
    pub won: u64,
    pub rate: f64,
    pub rate_interval: [f64; 2],
    /// Open prospects in the stage now, and the wins expected of them.
    pub open: u64,
    pub expected_wins: f64,
    /// The baseline's fixed probability for the stage.
    pub baseline: f64,
}

/// Expected wins within the horizon from the open prospects at `at`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Forecast {
    pub at: String,
    pub horizon_days: f64,
    pub open: u64,
    pub expected_wins: f64,
    /// 95%, normal approximation of a sum of independent Bernoulli trials.
    pub expected_wins_interval: [f64; 2],
    pub baseline_expected_wins: f64,
    pub stages: Vec<StageRate>,
}

/// One decile of forecast probability.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bucket {
    /// Forecast probabilities in `[from, to)` (the last bucket includes 1).
    pub from: f64,
    pub to: f64,
    pub prospects: u64,
    pub mean_forecast: f64,
    pub observed: f64,
    pub observed_interval: [f64; 2],
}

/// The forecast made at `at`, against what happened by `at + horizon`.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Backtest {
    pub forecast: Forecast,
    /// Open prospects at `at` that won by `at + horizon`.
    pub won: u64,
    /// Mean of (p − won)² over the open prospects; 0 is perfect, 0.25 is a coin.
    pub brier: f64,
    pub baseline_brier: f64,
    pub calibration: Vec<Bucket>,
    pub baseline_calibration: Vec<Bucket>,
}

/// Every prospect's stage history, over all shards.
fn histories<'a>(engines: &'a [&'a Engine]) -> impl Iterator<Item = History> + 'a {
    engines.iter().flat_map(|e| e.iter_ids().map(move |(ix, _)| History { entries: e.stage_entries(ix).collect() }))
}

/// An open prospect's forecast probability, baseline probability and history.
type Open = (f64, f64, History);

/// Whether a prospect entered its current stage within the horizon (0) or before (1).
fn age_bucket(entered: Ts, at: Ts, horizon: Span) -> usize {
    usize::from(at.0 - entered.0 >= horizon.0)
}

/// The forecast at `at` and, per open prospect, its probability and baseline probability.
fn forecast_with(engines: &[&Engine], at: Ts, opts: &Options) -> Option<(Forecast, Vec<Open>)> {
    let journey = engines.first()?.journey();
    let shape = Shape { journey, won: first_won(journey)? };
    let n = journey.stages.len();
    let h = opts.horizon;
    // Rates: the pipeline as it stood one horizon before `at`, and what of it won by `at`.
    let reference = Ts(at.0 - h.0);
    let (mut entered, mut won) = (vec![[0u64; 2]; n], vec![[0u64; 2]; n]);
    let mut open = Vec::new();
    for hist in histories(engines) {
        if let Some(s) = hist.stage_at(reference)
            && !shape.closed(s)
            && let Some(e) = hist.entries[s]
        {
            let b = age_bucket(e, reference, h);
            entered[s][b] += 1;
            if shape.won_at(&hist).is_some_and(|w| w > reference && w <= at) {
                won[s][b] += 1;
            }
        }
        if let Some(s) = hist.stage_at(at)
            && !shape.closed(s)
        {
            open.push((s, hist));
        }
    }
    let rate = |s: usize, b: usize| if entered[s][b] == 0 { 0.0 } else { won[s][b] as f64 / entered[s][b] as f64 };
    let mut stages: Vec<StageRate> = Vec::new();
    for s in (0..n).filter(|&s| !shape.closed(s)) {
        for (b, age) in [(0, "new"), (1, "old")] {
            stages.push(StageRate {
                stage: journey.stages[s].name.clone(),
                in_stage: age.to_string(),
                entered: entered[s][b],
                won: won[s][b],
                rate: round4(rate(s, b)),
                rate_interval: wilson(won[s][b], entered[s][b]),
                open: 0,
                expected_wins: 0.0,
                baseline: round4(opts.baseline.get(s).copied().unwrap_or(0.0)),
            });
        }
    }
    let (mut expected, mut variance, mut baseline) = (0.0, 0.0, 0.0);
    let mut per = Vec::with_capacity(open.len());
    for (s, hist) in open {
        let b = hist.entries[s].map_or(1, |e| age_bucket(e, at, h));
        let (p, base) = (rate(s, b), opts.baseline.get(s).copied().unwrap_or(0.0));
        expected += p;
        variance += p * (1.0 - p);
        baseline += base;
        let row = stages.iter_mut().filter(|r| r.stage == journey.stages[s].name).nth(b);
        if let Some(row) = row {
            row.open += 1;
            row.expected_wins += p;
        }
        per.push((p, base, hist));
    }
    for r in &mut stages {
        r.expected_wins = round2(r.expected_wins);
    }
    let half = 1.959_964 * variance.sqrt();
    let f = Forecast {
        at: at.to_string(),
        horizon_days: round2(h.0 as f64 / 86_400_000.0),
        open: per.len() as u64,
        expected_wins: round2(expected),
        expected_wins_interval: [round2((expected - half).max(0.0)), round2(expected + half)],
        baseline_expected_wins: round2(baseline),
        stages,
    };
    Some((f, per))
}

/// Expected wins within the horizon from the open prospects at `at`; `None` for a journey
/// without a won stage, or no shard.
pub fn forecast(engines: &[&Engine], at: Ts, opts: &Options) -> Option<Forecast> {
    forecast_with(engines, at, opts).map(|(f, _)| f)
}

/// The forecast made at `at`, scored against what happened by `at + horizon`.
pub fn backtest(engines: &[&Engine], at: Ts, opts: &Options) -> Option<Backtest> {
    let journey = engines.first()?.journey();
    let shape = Shape { journey, won: first_won(journey)? };
    let (forecast, per) = forecast_with(engines, at, opts)?;
    let end = at.0 + opts.horizon.0;
    let mut scored = Vec::with_capacity(per.len());
    let mut won = 0u64;
    for (p, b, h) in &per {
        let y = shape.won_at(h).is_some_and(|w| w > at && w.0 <= end);
        won += u64::from(y);
        scored.push((*p, *b, y));
    }
    let n = scored.len().max(1) as f64;
    let brier = |pick: fn(&(f64, f64, bool)) -> f64| {
        scored.iter().map(|s| (pick(s) - if s.2 { 1.0 } else { 0.0 }).powi(2)).sum::<f64>() / n
    };
    Some(Backtest {
        forecast,
        won,
        brier: round4(brier(|s| s.0)),
        baseline_brier: round4(brier(|s| s.1)),
        calibration: calibration(scored.iter().map(|s| (s.0, s.2))),
        baseline_calibration: calibration(scored.iter().map(|s| (s.1, s.2))),
    })
}

/// Deciles of forecast probability that hold a prospect: mean forecast against observed rate.
fn calibration(scored: impl Iterator<Item = (f64, bool)>) -> Vec<Bucket> {
    let mut sums = [(0u64, 0.0f64, 0u64); 10];
    for (p, y) in scored {
        let b = ((p * 10.0) as usize).min(9);
        sums[b].0 += 1;
        sums[b].1 += p;
        sums[b].2 += u64::from(y);
    }
    sums.iter()
        .enumerate()
        .filter(|(_, s)| s.0 > 0)
        .map(|(b, &(n, sum, won))| Bucket {
            from: b as f64 / 10.0,
            to: (b + 1) as f64 / 10.0,
            prospects: n,
            mean_forecast: round4(sum / n as f64),
            observed: round4(won as f64 / n as f64),
            observed_interval: wilson(won, n),
        })
        .collect()
}

/// Wilson score 95% interval of `won` in `n`, rounded.
fn wilson(won: u64, n: u64) -> [f64; 2] {
    let (low, high) = super::funnel::wilson(won, n);
    [round4(low), round4(high)]
}

// `+ 0.0` turns a negative zero into zero.
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0 + 0.0
}

fn round4(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0 + 0.0
}
