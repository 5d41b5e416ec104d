use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use microfunnel::config::Settings;
use microfunnel::core::Journey;
use microfunnel::journeys::{self, JourneyRef};

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
    Replay(cmd::replay::ReplayArgs),
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
    /// Check a journey without any other settings: every mistake at once, each by its key path;
    /// on success a summary (stages and the signals that enter them, hot rules, timers).
    CheckJourney(cmd::check::CheckJourneyArgs),
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

/// Loads the journey `--journey` or `journey.path` names: a built-in journey's name or a file.
pub(crate) fn load_journey(value: &Path) -> anyhow::Result<Arc<Journey>> {
    Ok(Arc::new(journeys::load(&JourneyRef::parse(value))?))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Replay(args) => cmd::replay::run(args),
        Command::Gen(args) => cmd::generate::run(*args),
        Command::Tail(args) => cmd::tail::run(args),
        Command::CheckJourney(args) => cmd::check::run(args),
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
            let journey = Arc::new(journeys::load(&settings.journey())?);
            microfunnel::app::start(settings, journey)?.run_until_signal()?;
            Ok(())
        }
        Command::CheckConfig { config } => {
            let settings = Settings::load(config.as_deref(), std::env::vars())?;
            let journey = Arc::new(journeys::load(&settings.journey())?);
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
