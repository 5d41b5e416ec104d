//! `replay --report`: the funnel and which signals predict a sale, as text a person reads.

use std::io::{self, Write};

use microfunnel::core::{Engine, Funnel, FunnelReport};

/// The report of every shard's funnel together, `min_sample` flagging thin signals.
pub fn write(out: &mut impl Write, shards: &[Engine], min_sample: u64) -> io::Result<()> {
    let Some(first) = shards.first() else { return Ok(()) };
    let journey = first.journey();
    let mut funnel = Funnel::new(journey);
    for e in shards {
        funnel.absorb(e.funnel());
    }
    let prospects: usize = shards.iter().map(Engine::len).sum();
    write_report(out, &funnel.report_with(journey, min_sample), prospects as u64, min_sample)
}

fn write_report(out: &mut impl Write, r: &FunnelReport, prospects: u64, min_sample: u64) -> io::Result<()> {
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
        "\nSignals shown before an outcome, by lift (prospect-initiated, not outcomes; intervals:\n\
         Wilson 95%; * = fewer than {min_sample} prospects with an outcome, listed last)"
    )?;
    writeln!(
        out,
        "  {:<32} {:>7} {:>6} {:>6} {:>7} {:>15} {:>6} {:>11}",
        "signal", "n", "won", "lost", "win", "win 95%", "lift", "lift 95%"
    )?;
    for s in &r.signals {
        let [wl, wh] = s.win_rate_interval;
        let [ll, lh] = s.lift_interval;
        let win = format!("{:.1}%", s.win_rate * 100.0);
        let win_ci = format!("{:.1}-{:.1}%", wl * 100.0, wh * 100.0);
        let lift_ci = format!("{ll:.2}-{lh:.2}");
        let flag = if s.small_sample { " *" } else { "" };
        writeln!(
            out,
            "  {:<32} {:>7} {:>6} {:>6} {win:>7} {win_ci:>15} {:>6.2} {lift_ci:>11}{flag}",
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
    Ok(())
}
