//! `microfunnel gen`: writes generated traffic as JSONL (file or stdout) and the ground truth.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use microfunnel::core::time::parse_rfc3339;
use microfunnel::traffic::model::Model;
use microfunnel::traffic::{Generator, Options};

#[derive(Args)]
pub struct GenArgs {
    /// Journey definition whose signals the traffic must map to.
    #[arg(long, default_value = "deploy/journeys/b2b.toml")]
    journey: PathBuf,
    /// Number of prospects to simulate.
    #[arg(long, default_value_t = 1_000)]
    prospects: u64,
    /// Horizon in days of event time over which prospects arrive.
    #[arg(long, default_value_t = 90.0)]
    days: f64,
    /// First arrival, RFC 3339.
    #[arg(long, default_value = "2026-01-05T00:00:00Z")]
    start: String,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output file; `-` is stdout.
    #[arg(long, short, default_value = "-")]
    out: PathBuf,
    /// Write each prospect's true outcome (JSONL) here.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Events per second of wall time; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Share of web events sent as Segment payloads.
    #[arg(long, default_value_t = 0.5)]
    segment_share: f64,
    /// Share of events sent twice.
    #[arg(long, default_value_t = 0.01)]
    duplicates: f64,
    /// Share of events delivered out of order (a tenth of them beyond the allowed lateness).
    #[arg(long, default_value_t = 0.02)]
    out_of_order: f64,
    /// Share of events followed by a malformed line.
    #[arg(long, default_value_t = 0.001)]
    malformed: f64,
    /// TOML file overriding the behaviour model's propensities.
    #[arg(long)]
    model: Option<PathBuf>,
    /// No progress bar (it is also hidden when stderr is not a terminal).
    #[arg(long)]
    quiet: bool,
}

pub fn run(args: GenArgs) -> anyhow::Result<()> {
    let journey = crate::load_journey(&args.journey)?;
    let model = match &args.model {
        Some(p) => {
            let text = std::fs::read_to_string(p).with_context(|| format!("cannot read model file {}", p.display()))?;
            toml::from_str::<Model>(&text).with_context(|| format!("model file {} is invalid", p.display()))?
        }
        None => Model::default(),
    };
    let start = parse_rfc3339(&args.start).map_err(|e| anyhow::anyhow!("--start {:?}: {e}", args.start))?;
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        anyhow::bail!(
            "--rate {}: must be zero (as fast as possible) or a positive number of events per second",
            args.rate
        );
    }
    let opts = Options {
        prospects: args.prospects,
        days: args.days,
        start,
        seed: args.seed,
        segment_share: args.segment_share,
        duplicate_share: args.duplicates,
        out_of_order_share: args.out_of_order,
        malformed_share: args.malformed,
        model,
    };
    let mut generator = Generator::new(opts, &journey, args.truth.is_some())?;
    let mut out: Box<dyn Write> = if args.out.as_os_str() == "-" {
        Box::new(BufWriter::with_capacity(1 << 20, io::stdout().lock()))
    } else {
        let f = File::create(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
        Box::new(BufWriter::with_capacity(1 << 20, f))
    };
    let mut truth = match &args.truth {
        Some(p) => Some(BufWriter::new(File::create(p).with_context(|| format!("cannot create {}", p.display()))?)),
        None => None,
    };
    let bar = ProgressBar::new(args.prospects);
    if args.quiet {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} prospects, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let began = Instant::now();
    let (mut line, mut key) = (Vec::with_capacity(2048), String::new());
    let mut lines = 0u64;
    while generator.next_into(&mut line, &mut key).is_some() {
        line.push(b'\n');
        out.write_all(&line)?;
        lines += 1;
        if lines.is_multiple_of(4096) {
            bar.set_position(generator.prospects_done());
            bar.set_message(format!("{lines} lines"));
            if let Some(t) = truth.as_mut() {
                write_truth(&mut generator, t)?;
            }
        }
        if args.rate > 0.0 {
            let due = Duration::from_secs_f64(lines as f64 / args.rate);
            let elapsed = began.elapsed();
            if due > elapsed {
                out.flush()?;
                std::thread::sleep(due - elapsed);
            }
        }
    }
    out.flush()?;
    if let Some(t) = truth.as_mut() {
        write_truth(&mut generator, t)?;
        t.flush()?;
    }
    bar.finish_and_clear();
    let secs = began.elapsed().as_secs_f64();
    let s = generator.stats();
    eprintln!(
        "gen: {lines} lines in {secs:.2}s ({:.0} lines/s): {} prospects ({} won, {} lost), {} events ({} web, {} crm; {} Segment, {} canonical), {} duplicates, {} out of order, {} malformed",
        lines as f64 / secs.max(1e-9),
        s.prospects,
        s.won,
        s.lost,
        s.events,
        s.web,
        s.crm,
        s.segment,
        s.canonical,
        s.duplicates,
        s.out_of_order,
        s.malformed
    );
    Ok(())
}

fn write_truth(generator: &mut Generator, out: &mut impl Write) -> anyhow::Result<()> {
    for t in generator.drain_truth() {
        serde_json::to_writer(&mut *out, &t)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}
