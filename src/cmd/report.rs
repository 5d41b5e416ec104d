//! `replay --report`: the funnel and which signals predict a sale, as text a person reads.

use std::io::{self, Write};

use microfunnel::core::breakdown::{BreakdownReport, ValueReport};
use microfunnel::core::forecast::{self, Backtest, Forecast};
use microfunnel::core::{Engine, Funnel, FunnelReport, Journey, Span, Ts};

/// The forecast's options from `--horizon-days` and `--baseline stage=p,...`.
pub fn forecast_options(
    journey: &Journey,
    horizon_days: f64,
    baseline: Option<&str>,
) -> anyhow::Result<forecast::Options> {
    if !(horizon_days.is_finite() && horizon_days > 0.0) {
        anyhow::bail!("--horizon-days {horizon_days}: give a positive number of days");
    }
    let mut p = forecast::default_baseline(journey);
    for item in baseline.unwrap_or_default().split(',').filter(|i| !i.trim().is_empty()) {
        let (stage, prob) = item
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--baseline {item:?}: write stage=probability, e.g. deciding=0.6"))?;
        let i = journey.stages.iter().position(|s| s.name == stage.trim()).ok_or_else(|| {
            let known: Vec<&str> = journey.stages.iter().map(|s| s.name.as_str()).collect();
            anyhow::anyhow!(
                "--baseline: no stage {stage:?} in journey `{}` (stages: {})",
                journey.name,
                known.join(", ")
            )
        })?;
        let v: f64 =
            prob.trim().parse().map_err(|_| anyhow::anyhow!("--baseline {item:?}: {prob:?} is not a number"))?;
        if !(0.0..=1.0).contains(&v) {
            anyhow::bail!("--baseline {item:?}: a probability is between 0 and 1");
        }
        p[i] = v;
    }
    Ok(forecast::Options { horizon: Span::from_days(horizon_days), baseline: p })
}

/// The report of every shard's funnel together, `min_sample` flagging thin signals, and with
/// `forecast` the forecast at the latest watermark and its backtest one horizon earlier.
pub fn write(
    out: &mut impl Write,
    shards: &[Engine],
    min_sample: u64,
    forecast: Option<&forecast::Options>,
    by: Option<&str>,
) -> io::Result<()> {
    let Some(first) = shards.first() else { return Ok(()) };
    let journey = first.journey();
    let mut funnel = Funnel::new(journey);
    for e in shards {
        funnel.absorb(e.funnel());
    }
    let prospects: usize = shards.iter().map(Engine::len).sum();
    let horizon_days = journey.alert_horizon.0 as f64 / 86_400_000.0;
    write_report(out, &funnel.report_with(journey, min_sample), prospects as u64, min_sample, horizon_days)?;
    for b in microfunnel::core::breakdown::report(journey, shards, min_sample) {
        if by.is_none_or(|by| by == b.dimension) {
            write_breakdown(out, journey, &b, min_sample)?;
        }
    }
    let Some(opts) = forecast else { return Ok(()) };
    let engines: Vec<&Engine> = shards.iter().collect();
    let Some(now) = forecast::now(&engines) else { return Ok(()) };
    match forecast::forecast(&engines, now, opts) {
        Some(f) => write_forecast(out, &f)?,
        None => writeln!(out, "\nForecast: the journey has no won stage")?,
    }
    if let Some(b) = forecast::backtest(&engines, Ts(now.0 - opts.horizon.0), opts) {
        write_backtest(out, &b)?;
    }
    Ok(())
}

fn write_forecast(out: &mut impl Write, f: &Forecast) -> io::Result<()> {
    let [lo, hi] = f.expected_wins_interval;
    writeln!(
        out,
        "\nForecast at {} (the latest shard clock): {} open prospects, wins expected within {} days: {:.1} \
         (95%: {lo:.1}-{hi:.1}); a fixed probability per stage would say {:.1}",
        f.at, f.open, f.horizon_days, f.expected_wins, f.baseline_expected_wins
    )?;
    writeln!(
        out,
        "  win rate per stage and time in it (new: entered less than {0} days before): of the prospects\n  \
         open there {0} days before the forecast, the share that won since",
        f.horizon_days
    )?;
    writeln!(
        out,
        "  {:<16} {:>4} {:>8} {:>6} {:>7} {:>15} {:>7} {:>9} {:>9}",
        "stage", "age", "then", "won", "rate", "rate 95%", "open", "expected", "baseline"
    )?;
    for r in &f.stages {
        let [l, h] = r.rate_interval;
        let rate = format!("{:.1}%", r.rate * 100.0);
        let ci = format!("{:.1}-{:.1}%", l * 100.0, h * 100.0);
        let base = format!("{:.0}%", r.baseline * 100.0);
        writeln!(
            out,
            "  {:<16} {:>4} {:>8} {:>6} {rate:>7} {ci:>15} {:>7} {:>9.1} {base:>9}",
            r.stage, r.in_stage, r.entered, r.won, r.open, r.expected_wins
        )?;
    }
    Ok(())
}

fn write_backtest(out: &mut impl Write, b: &Backtest) -> io::Result<()> {
    writeln!(
        out,
        "\nBacktest: the forecast made at {} for the next {} days: {:.1} wins expected (95%: {:.1}-{:.1}), \
         {} happened; baseline {:.1}.\n  Brier score (mean squared error of each open prospect's \
         probability; lower is better): {:.4}, baseline {:.4}",
        b.forecast.at,
        b.forecast.horizon_days,
        b.forecast.expected_wins,
        b.forecast.expected_wins_interval[0],
        b.forecast.expected_wins_interval[1],
        b.won,
        b.forecast.baseline_expected_wins,
        b.brier,
        b.baseline_brier
    )?;
    writeln!(out, "  calibration (forecast probability decile: prospects, mean forecast, observed win rate, 95%)")?;
    for c in &b.calibration {
        let [l, h] = c.observed_interval;
        writeln!(
            out,
            "  {:>3.0}-{:<3.0}% {:>8} {:>7.1}% {:>7.1}% {:>7.1}-{:.1}%",
            c.from * 100.0,
            c.to * 100.0,
            c.prospects,
            c.mean_forecast * 100.0,
            c.observed * 100.0,
            l * 100.0,
            h * 100.0
        )?;
    }
    Ok(())
}

fn write_report(
    out: &mut impl Write,
    r: &FunnelReport,
    prospects: u64,
    min_sample: u64,
    journey_horizon_days: f64,
) -> io::Result<()> {
    writeln!(out, "\nJourney `{}`: {prospects} prospects", r.journey)?;
    writeln!(out, "\nStep conversion (reached the next stage / reached this one)")?;
    writeln!(out, "  {:<28} {:>9} {:>9} {:>7}", "step", "reached", "next", "rate")?;
    for c in &r.conversion {
        let step = format!("{} -> {}", c.from, c.to);
        writeln!(out, "  {step:<28} {:>9} {:>9} {:>6.1}%", c.entered, c.converted, c.rate * 100.0)?;
    }
    let o = &r.outcomes;
    writeln!(out, "\nOutcomes: {} won, {} lost, base win rate {:.1}%", o.won, o.lost, o.win_rate * 100.0)?;
    writeln!(
        out,
        "\nSignals shown before an outcome, by lift (prospect-initiated, not outcomes; intervals: Wilson 95%;\n\
         * = fewer than {min_sample} with an outcome, listed last; to won/lost: median time from the first showing)"
    )?;
    writeln!(
        out,
        "  {:<32} {:>7} {:>6} {:>6} {:>7} {:>15} {:>6} {:>11} {:>8} {:>8}",
        "signal", "n", "won", "lost", "win", "win 95%", "lift", "lift 95%", "to won", "to lost"
    )?;
    for s in &r.signals {
        let [wl, wh] = s.win_rate_interval;
        let [ll, lh] = s.lift_interval;
        let win = format!("{:.1}%", s.win_rate * 100.0);
        let win_ci = format!("{:.1}-{:.1}%", wl * 100.0, wh * 100.0);
        let lift_ci = format!("{ll:.2}-{lh:.2}");
        let flag = if s.small_sample { " *" } else { "" };
        let (to_won, to_lost) = (median(s.time_to_won.as_ref()), median(s.time_to_lost.as_ref()));
        writeln!(
            out,
            "  {:<32} {:>7} {:>6} {:>6} {win:>7} {win_ci:>15} {:>6.2} {lift_ci:>11} {to_won:>8} {to_lost:>8}{flag}",
            s.signal,
            s.won + s.lost,
            s.won,
            s.lost,
            s.lift,
        )?;
    }
    if r.signals.is_empty() {
        writeln!(out, "  (no prospect with an outcome yet)")?;
    }
    write_pairs(out, r)?;
    write_drop_off(out, r)?;
    write_rules(out, r, journey_horizon_days)?;
    write_bands(out, r)?;
    write_hot_first(out, r)?;
    write_milestones(out, r)?;
    Ok(())
}

/// `n / d` as a percentage from the counts (the report's ratios are already rounded), `-`
/// without a denominator.
fn share(n: u64, d: u64) -> String {
    if d == 0 { "-".into() } else { format!("{:.1}%", n as f64 / d as f64 * 100.0) }
}

fn pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

fn pct_range([l, h]: [f64; 2]) -> String {
    format!("{:.1}-{:.1}%", l * 100.0, h * 100.0)
}

/// A span in seconds as the largest whole unit that fits (90m, 6h, 3d).
/// A median time bucket as `<=3d` (or `>180d` for the last bucket), `-` without times.
fn median(t: Option<&microfunnel::core::funnel::TimeToOutcome>) -> String {
    bucket(t.and_then(|t| t.median.as_ref()))
}

fn bucket(b: Option<&microfunnel::core::funnel::LeadBucket>) -> String {
    match b {
        Some(b) => match b.to_secs {
            Some(to) => format!("<={}", span(to)),
            None => format!(">{}", span(b.from_secs)),
        },
        None => "-".into(),
    }
}

fn span(secs: f64) -> String {
    match secs {
        s if s >= 86_400.0 => format!("{:.0}d", s / 86_400.0),
        s if s >= 3_600.0 => format!("{:.0}h", s / 3_600.0),
        s => format!("{:.0}m", s / 60.0),
    }
}

fn write_rules(out: &mut impl Write, r: &FunnelReport, horizon_days: f64) -> io::Result<()> {
    writeln!(
        out,
        "\nHot rules against outcomes (a match counts when the win came within {horizon_days} days of it;\n\
         precision = won / prospects it matched with an outcome, capture = won / all wins; Wilson 95%)"
    )?;
    writeln!(
        out,
        "  {:<28} {:>6} {:>6} {:>6} {:>6} {:>7} {:>13} {:>7} {:>13} {:>10}",
        "rule", "n", "won", "later", "lost", "prec", "prec 95%", "capt", "capt 95%", "lead med"
    )?;
    for q in &r.rules {
        let lead = bucket(q.lead_time_median.as_ref());
        let flag = if q.small_sample { " *" } else { "" };
        writeln!(
            out,
            "  {:<28} {:>6} {:>6} {:>6} {:>6} {:>7} {:>13} {:>7} {:>13} {lead:>10}{flag}",
            q.rule,
            q.won + q.won_later + q.lost,
            q.won,
            q.won_later,
            q.lost,
            share(q.won, q.won + q.won_later + q.lost),
            pct_range(q.precision_interval),
            share(q.won, r.outcomes.won),
            pct_range(q.capture_interval),
        )?;
    }
    Ok(())
}

fn write_pairs(out: &mut impl Write, r: &FunnelReport) -> io::Result<()> {
    if r.pairs.is_empty() {
        return Ok(());
    }
    writeln!(
        out,
        "\nPairs the sequence rules name (the second signal within the window after the first; to won/lost:\n\
         the time bucket of the median time from the pair to the outcome)"
    )?;
    win_header(out, "pair", 58)?;
    for p in &r.pairs {
        let pair = format!("{} within {}d after {}", p.signal, p.within_days, p.after);
        let rate = (p.win_rate, p.win_rate_interval);
        win_row(out, &pair, 58, [p.won, p.lost], rate, (p.lift, p.lift_interval), p.small_sample)?;
    }
    writeln!(out, "  {:<58} {:>8} {:>8}", "pair", "to won", "to lost")?;
    for p in &r.pairs {
        let pair = format!("{} within {}d after {}", p.signal, p.within_days, p.after);
        let (won, lost) = (median(Some(&p.time_to_won)), median(Some(&p.time_to_lost)));
        writeln!(out, "  {pair:<58} {won:>8} {lost:>8}")?;
    }
    Ok(())
}

/// The header of a won / lost / win rate / lift table whose first column is `width` wide.
fn win_header(out: &mut impl Write, first: &str, width: usize) -> io::Result<()> {
    writeln!(
        out,
        "  {first:<width$} {:>6} {:>6} {:>7} {:>15} {:>6} {:>11}",
        "won", "lost", "win", "win 95%", "lift", "lift 95%"
    )
}

/// One row of such a table; `*` marks a small sample.
fn win_row(
    out: &mut impl Write,
    label: &str,
    width: usize,
    [won, lost]: [u64; 2],
    (rate, rate_ci): (f64, [f64; 2]),
    (lift, [ll, lh]): (f64, [f64; 2]),
    small: bool,
) -> io::Result<()> {
    let flag = if small { " *" } else { "" };
    if won + lost == 0 {
        // No outcome yet: nothing to say, rather than 0%.
        return writeln!(out, "  {label:<width$} {won:>6} {lost:>6} {:>7} {:>15} {:>6} {:>11}", "-", "-", "-", "-");
    }
    writeln!(
        out,
        "  {label:<width$} {won:>6} {lost:>6} {:>7} {:>15} {lift:>6.2} {:>11}{flag}",
        pct(rate),
        pct_range(rate_ci),
        format!("{ll:.2}-{lh:.2}")
    )
}

fn write_drop_off(out: &mut impl Write, r: &FunnelReport) -> io::Result<()> {
    writeln!(
        out,
        "\nDrop-off: of the prospects who showed a signal, the share whose next step was silence (ghosted or stalled)"
    )?;
    writeln!(out, "  {:<32} {:>7} {:>7} {:>7} {:>15}", "signal", "shown", "silent", "rate", "rate 95%")?;
    for d in &r.drop_off {
        writeln!(
            out,
            "  {:<32} {:>7} {:>7} {:>7} {:>15}",
            d.signal,
            d.shown,
            d.silent,
            pct(d.rate),
            pct_range(d.rate_interval)
        )?;
    }
    Ok(())
}

fn write_bands(out: &mut impl Write, r: &FunnelReport) -> io::Result<()> {
    writeln!(out, "\nWin rate by score just before the outcome ([insight] score_bands)")?;
    win_header(out, "score", 14)?;
    for b in &r.score_bands {
        let band = match (b.from, b.to) {
            (None, Some(t)) => format!("< {t}"),
            (Some(f), Some(t)) => format!("{f} - {t}"),
            (Some(f), None) => format!(">= {f}"),
            (None, None) => "all".into(),
        };
        let rate = (b.win_rate, b.win_rate_interval);
        win_row(out, &band, 14, [b.won, b.lost], rate, (b.lift, b.lift_interval), b.small_sample)?;
    }
    Ok(())
}

fn write_hot_first(out: &mut impl Write, r: &FunnelReport) -> io::Result<()> {
    writeln!(
        out,
        "\nWhat hot leads did first (share of prospects that turned hot who showed the signal before,\n\
         against the share of prospects never hot who showed it)"
    )?;
    writeln!(out, "  {:<32} {:>7} {:>7} {:>8} {:>8} {:>6}", "signal", "hot", "share", "not hot", "share", "lift")?;
    for h in &r.hot_first {
        let lift = h.lift.map_or_else(|| "-".to_string(), |l| format!("{l:.2}"));
        writeln!(
            out,
            "  {:<32} {:>7} {:>7} {:>8} {:>8} {lift:>6}",
            h.signal,
            h.hot,
            pct(h.hot_share),
            h.not_hot,
            pct(h.not_hot_share),
        )?;
    }
    Ok(())
}

fn write_milestones(out: &mut impl Write, r: &FunnelReport) -> io::Result<()> {
    let Some(first) = r.milestones.first() else { return Ok(()) };
    writeln!(
        out,
        "\nLater milestones: of the prospects who showed a signal, the share that showed it at or before\n\
         first reaching each stage (a stage passed before the signal does not count)"
    )?;
    write!(out, "  {:<32} {:>7}", "signal", "shown")?;
    for m in &first.reached {
        write!(out, " {:>12}", m.stage)?;
    }
    writeln!(out)?;
    for row in &r.milestones {
        write!(out, "  {:<32} {:>7}", row.signal, row.shown)?;
        for m in &row.reached {
            write!(out, " {:>12}", pct(m.rate))?;
        }
        writeln!(out)?;
    }
    writeln!(out, "  median time from first showing the signal to reaching the stage (its time bucket):")?;
    for row in &r.milestones {
        write!(out, "  {:<32} {:>7}", row.signal, "")?;
        for m in &row.reached {
            write!(out, " {:>12}", median(Some(&m.time_to_reach)))?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// `--by`: one dimension's funnel per value (the top K, then `other` and `none`).
fn write_breakdown(out: &mut impl Write, journey: &Journey, b: &BreakdownReport, min_sample: u64) -> io::Result<()> {
    writeln!(
        out,
        "\nBy {} ({}; top {} of {} values, {} touches folded into other): values with at least {min_sample}\n\
         outcomes by win rate (Wilson 95%), then the others (*) by prospects",
        b.dimension, b.attribution, b.top_k, b.distinct_values, b.folded_touches
    )?;
    let stages: Vec<&str> = journey.stages.iter().filter(|s| !s.terminal).map(|s| s.name.as_str()).collect();
    write!(out, "  {:<28} {:>9}", "value", "prospects")?;
    for s in &stages {
        write!(out, " {:>11}", truncate(s, 11))?;
    }
    writeln!(out, " {:>6} {:>6} {:>7} {:>13} {:>5}  best signal (lift)", "won", "lost", "win", "win 95%", "hot")?;
    for v in b.values.iter().chain([&b.other, &b.none]) {
        write_value(out, journey, v)?;
    }
    Ok(())
}

fn write_value(out: &mut impl Write, journey: &Journey, v: &ValueReport) -> io::Result<()> {
    write!(out, "  {:<28} {:>9}", truncate(&v.value, 28), v.prospects)?;
    for (s, c) in journey.stages.iter().zip(&v.stages) {
        if !s.terminal {
            write!(out, " {:>11}", c.reached)?;
        }
    }
    let [l, h] = v.win_rate_interval;
    let win = format!("{:.1}%", v.outcomes.win_rate * 100.0);
    let ci = format!("{:.0}-{:.0}%", l * 100.0, h * 100.0);
    let best =
        v.signals.iter().find(|s| !s.small_sample).map_or(String::new(), |s| format!("{} ({:.2})", s.signal, s.lift));
    let flag = if v.small_sample { "*" } else { "" };
    writeln!(out, " {:>6} {:>6} {win:>7} {ci:>13} {:>5}  {best}{flag}", v.outcomes.won, v.outcomes.lost, v.hot_leads)
}

fn truncate(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}
