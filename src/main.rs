use std::fs::File;
use std::io::{self, BufReader};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use microfunnel::codec::Limits;
use microfunnel::config::Settings;
use microfunnel::core::Journey;
use microfunnel::core::time::parse_rfc3339;
use microfunnel::replay;

mod cmd;

#[derive(Parser)]
#[command(name = "microfunnel", version, about = "Turns buyers' micro-conversions into live sales signals")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine over a JSONL file (canonical or Segment events, mixed) and print every
    /// output as a JSON line, then a funnel summary. Rejected lines go to stderr.
    Replay {
        /// Journey definition (TOML).
        #[arg(long, default_value = "deploy/journeys/b2b.toml")]
        journey: PathBuf,
        /// Events, one JSON object per line; `-` reads stdin. Several files: one per input topic,
        /// in `kafka.input_topics` order; each shard's lines are merged from them by event time,
        /// as the service merges a shard's input partitions.
        #[arg(required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        /// Advance event time to this RFC 3339 instant at the end (default: each shard to its
        /// last event).
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
        /// Largest accepted payload, bytes.
        #[arg(long, default_value_t = Limits::default().max_bytes)]
        max_bytes: usize,
        /// Deepest accepted JSON nesting.
        #[arg(long, default_value_t = Limits::default().max_depth)]
        max_depth: usize,
    },
    /// Generate realistic traffic (web and CRM, canonical and Segment) with ground truth.
    Gen(Box<cmd::generate::GenArgs>),
    /// Run the service: consume the input topics as a consumer group, emit alerts, journey
    /// events, funnel records and dead letters, serve /metrics.
    Run {
        /// Settings file (TOML); `MICROFUNNEL__SECTION__KEY` variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config and its journey; print the effective settings, secrets masked.
    CheckConfig {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a topic's records as they arrive (`--alerts` renders hot-lead alerts).
    Tail(cmd::tail::TailArgs),
    /// Show a snapshot file: header, offsets, prospect count, checksum status (`--prospect ID`
    /// prints one prospect's state). Exit code 1 if the file is damaged.
    InspectSnapshot(cmd::inspect::InspectArgs),
    /// Create the input and output topics (existing ones are left alone).
    CreateTopics {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

pub(crate) fn load_journey(path: &Path) -> anyhow::Result<Arc<Journey>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read journey file {}", path.display()))?;
    let journey =
        Journey::from_toml_str(&text).with_context(|| format!("journey file {} is invalid", path.display()))?;
    Ok(Arc::new(journey))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Replay {
            journey,
            input,
            until,
            no_advance,
            partitions,
            digest,
            summary_only,
            memory,
            max_bytes,
            max_depth,
        } => {
            let journey = load_journey(&journey)?;
            let until =
                until.map(|u| parse_rfc3339(&u).map_err(|e| anyhow::anyhow!("--until {u:?}: {e}"))).transpose()?;
            let end = match (until, no_advance) {
                (Some(t), _) => replay::End::Until(t),
                (None, true) => replay::End::Stay,
                (None, false) => replay::End::LastEvent,
            };
            let limits = Limits { max_bytes, max_depth, ..Limits::default() };
            let opts = replay::Options { limits, end, digest, summary_only, partitions };
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
        Command::Gen(args) => cmd::generate::run(*args),
        Command::Tail(args) => cmd::tail::run(args),
        Command::InspectSnapshot(args) => {
            if cmd::inspect::run(args)? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Run { config } => {
            let settings = Settings::load(config.as_deref(), std::env::vars())?;
            microfunnel::telemetry::init_logs(&settings.log);
            let journey = load_journey(&settings.journey.path)?;
            microfunnel::app::start(settings, journey)?.run_until_signal()?;
            Ok(())
        }
        Command::CheckConfig { config } => {
            let settings = Settings::load(config.as_deref(), std::env::vars())?;
            let journey = load_journey(&settings.journey.path)?;
            println!("# effective settings (secrets masked); journey `{}` is valid", journey.name);
            print!("{}", settings.masked_toml());
            Ok(())
        }
        Command::CreateTopics { config } => {
            let settings = Settings::load(config.as_deref(), std::env::vars())?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let created = rt.block_on(microfunnel::kafka::create_topics(&settings.kafka))?;
            println!("created {} topic(s): {}", created.len(), created.join(", "));
            Ok(())
        }
    }
}

/// Resident set size of this process (Linux `/proc/self/statm`), 0 where unavailable.
fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()))
        .unwrap_or(0);
    pages * 4096
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
