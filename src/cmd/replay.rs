//! `microfunnel replay`: arguments, file handling and the memory report; the run itself is
//! `microfunnel::replay`.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use microfunnel::codec::{Format, InputSpec, Limits};
use microfunnel::config::Settings;
use microfunnel::core::Source;
use microfunnel::replay;

#[derive(Args)]
pub struct ReplayArgs {
    /// Journey: a built-in journey's name (b2b, ecommerce, saas) or a TOML file.
    #[arg(long, value_name = "NAME|FILE", default_value = microfunnel::journeys::DEFAULT)]
    journey: PathBuf,
    /// Events, one JSON object per line; `-` reads stdin. Several files: one per input topic,
    /// in `kafka.input_topics` order; each shard's lines are merged from them by event time,
    /// as the service merges a shard's input partitions.
    #[arg(required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// Advance event time to this instant at the end: a date (2026-03-31, its midnight UTC) or
    /// an RFC 3339 time (default: each shard to its clock, the largest event time its traffic
    /// confirmed).
    #[arg(long)]
    until: Option<String>,
    /// Do not advance event time at the end (the service with `pipeline.idle_advance_ms = 0`):
    /// timers fire only as far as the watermarks got during the input.
    #[arg(long, conflicts_with = "until")]
    no_advance: bool,
    /// Shard like the service over N input partitions: each event goes to the engine of
    /// Kafka's default partitioner (murmur2) of its prospect id.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(replay::MAX_PARTITIONS)))]
    partitions: u32,
    /// Print a digest line of the final per-prospect state (with `--partitions` > 1, one per
    /// shard, then the total).
    #[arg(long)]
    digest: bool,
    /// Print only the final summary (and digest) lines.
    #[arg(long)]
    summary_only: bool,
    /// At the end, print to stderr the process's resident memory and the engine's state
    /// bytes per prospect (a JSON line).
    #[arg(long)]
    memory: bool,
    /// At the end, print the funnel and which signals predict a sale as text tables (step
    /// conversion; per signal: win rate and lift over the base win rate with 95% intervals).
    #[arg(long)]
    report: bool,
    /// Flag signals shown by fewer prospects with an outcome than this (`small_sample` in the
    /// summary's `signals`, `*` in `--report`; listed after the others).
    #[arg(long, value_name = "N", default_value_t = microfunnel::core::funnel::MIN_SAMPLE)]
    min_sample: u64,
    /// Largest accepted payload, bytes.
    #[arg(long, default_value_t = Limits::default().max_bytes)]
    max_bytes: usize,
    /// Deepest accepted JSON nesting.
    #[arg(long, default_value_t = Limits::default().max_depth)]
    max_depth: usize,
    /// With `--report`, the forecast's horizon: wins expected within this many days.
    #[arg(long, value_name = "DAYS", default_value_t = 30.0)]
    horizon_days: f64,
    /// With `--report`, the baseline's fixed win probability per stage, `stage=p,...` (as a
    /// CRM's deal-stage probabilities; default: HubSpot's 20%..90% spread over the stages before
    /// the first won stage).
    #[arg(long, value_name = "STAGE=P,...")]
    baseline: Option<String>,
    /// With `--report`, only this `[breakdowns]` dimension's table (default: every dimension's).
    #[arg(long, value_name = "DIMENSION", requires = "report")]
    by: Option<String>,
    /// Input format of the files: auto, canonical, segment, hubspot, salesforce_cdc, pipedrive,
    /// debezium (`mapped` needs `--config`). Once for every file, or once per file in order.
    #[arg(long, value_name = "F")]
    format: Vec<String>,
    /// Source of the files' events (web or crm), as an input topic declares it: once for every
    /// file, or once per file in order. Default: the payload's, `crm` for CRM formats.
    #[arg(long, value_name = "S")]
    source: Vec<String>,
    /// Take each file's format and source from this configuration's `[inputs]` (file k is
    /// `kafka.input_topics[k]`).
    #[arg(long, conflicts_with_all = ["format", "source"])]
    config: Option<PathBuf>,
}

/// Each file's [`InputSpec`]: from `--config`, or from `--format`/`--source`.
fn specs(files: usize, format: &[String], source: &[String], config: Option<&Path>) -> anyhow::Result<Vec<InputSpec>> {
    if let Some(path) = config {
        let settings = Settings::load(Some(path), std::env::vars())?;
        let specs = settings.input_specs();
        if specs.len() < files {
            anyhow::bail!(
                "{} input files but {} has {} input topics; give one file per topic, in kafka.input_topics order",
                files,
                path.display(),
                specs.len()
            );
        }
        return Ok(specs);
    }
    let per_file = |what: &str, values: &[String]| -> anyhow::Result<Vec<Option<String>>> {
        match values.len() {
            0 => Ok(vec![None; files]),
            1 => Ok(vec![Some(values[0].clone()); files]),
            n if n == files => Ok(values.iter().cloned().map(Some).collect()),
            n => anyhow::bail!("--{what} given {n} times for {files} files: give it once, or once per file"),
        }
    };
    let (formats, sources) = (per_file("format", format)?, per_file("source", source)?);
    formats
        .into_iter()
        .zip(sources)
        .map(|(f, s)| {
            let format = match f {
                None => Format::Auto,
                Some(f) => Format::parse(&f)
                    .ok_or_else(|| anyhow::anyhow!("--format {f:?}: unknown format; use one of {}", Format::names()))?,
            };
            if format == Format::Mapped {
                anyhow::bail!("--format mapped needs field pointers: pass --config with an [inputs] section instead");
            }
            let source = match s {
                None => None,
                Some(s) => Some(Source::parse(&s).ok_or_else(|| anyhow::anyhow!("--source {s:?}: use web or crm"))?),
            };
            Ok(InputSpec::new(format, source))
        })
        .collect()
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let ReplayArgs {
        journey,
        input,
        until,
        no_advance,
        partitions,
        digest,
        summary_only,
        memory,
        report,
        min_sample,
        horizon_days,
        baseline,
        by,
        max_bytes,
        max_depth,
        format,
        source,
        config,
    } = args;
    let inputs = specs(input.len(), &format, &source, config.as_deref())?;
    let journey = crate::load_journey(&journey)?;
    // Checked before the run, which may take long.
    let forecast =
        report.then(|| super::report::forecast_options(&journey, horizon_days, baseline.as_deref())).transpose()?;
    if let Some(by) = &by
        && !journey.breakdowns.iter().any(|d| d.name == *by)
    {
        let known: Vec<&str> = journey.breakdowns.iter().map(|d| d.name.as_str()).collect();
        anyhow::bail!(
            "--by {by}: journey `{}` has no breakdown dimension of that name (its [breakdowns]: {})",
            journey.name,
            if known.is_empty() { "none".to_string() } else { known.join(", ") }
        );
    }
    let until = until.map(|u| super::instant("--until", &u)).transpose()?;
    let end = match (until, no_advance) {
        (Some(t), _) => replay::End::Until(t),
        (None, true) => replay::End::Stay,
        (None, false) => replay::End::LastEvent,
    };
    let limits = Limits { max_bytes, max_depth, ..Limits::default() };
    let opts = replay::Options { limits, end, digest, summary_only, partitions, min_sample, inputs };
    let rss_before = resident_bytes();
    let stdout = io::stdout().lock();
    let stderr = io::stderr().lock();
    if input.iter().filter(|i| i.as_os_str() == "-").count() > 1 {
        anyhow::bail!("stdin (`-`) can be only one of the input files");
    }
    let (shards, _) = if let [input] = input.as_slice() {
        if input.as_os_str() == "-" {
            replay::run(journey, &opts, io::stdin().lock(), stdout, stderr)?
        } else {
            let file = File::open(input).with_context(|| format!("cannot open {}", input.display()))?;
            replay::run(journey, &opts, BufReader::with_capacity(1 << 20, file), stdout, stderr)?
        }
    } else {
        let mut files = Vec::with_capacity(input.len());
        for path in &input {
            let reader: Box<dyn io::Read> = if path.as_os_str() == "-" {
                Box::new(io::stdin().lock())
            } else {
                Box::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?)
            };
            files.push(replay::Named { name: path.display().to_string(), input: reader });
        }
        replay::run_merged(journey, &opts, files, stdout, stderr)?
    };
    if let Some(t) = until
        && shards.iter().any(|e| e.max_event_time() > t)
    {
        eprintln!(
            "warning: --until {t} is earlier than the latest event time of the input: events after it were applied, and \
             time did not move back (replay every event up to a date by cutting the input there)"
        );
    }
    if report {
        super::report::write(&mut io::stdout().lock(), &shards, min_sample, forecast.as_ref(), by.as_deref())?;
    }
    if memory {
        let prospects: usize = shards.iter().map(|e| e.len()).sum();
        let state: usize = shards.iter().map(|e| e.heap_bytes()).sum();
        let (rss, n) = (resident_bytes().saturating_sub(rss_before), prospects.max(1));
        eprintln!(
            "{{\"kind\":\"memory\",\"prospects\":{prospects},\"rss_growth_bytes\":{rss},\"rss_per_prospect\":{:.1},\"state_bytes\":{state},\"state_per_prospect\":{:.1}}}",
            rss as f64 / n as f64,
            state as f64 / n as f64
        );
    }
    Ok(())
}

/// Resident set size of this process (Linux `/proc/self/statm`), 0 where unavailable.
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    pages * 4096
}
