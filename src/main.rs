use std::io;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use microfunnel::config::Settings;
use microfunnel::core::Journey;
use microfunnel::journeys::{self, JourneyRef};

mod cmd;

#[derive(Parser)]
#[command(
    name = "microfunnel",
    version,
    about = "Turns buyers' micro-conversions into live sales signals",
    after_help = "Exit codes: 0 success (also a graceful stop on SIGINT/SIGTERM); 1 inspect-snapshot: the file is damaged;\n2 bad arguments, configuration or journey, or a failure of the service.\n\nBuilt-in journeys (--journey NAME, journey.path = \"NAME\"): b2b (default), ecommerce, saas.\nSee `microfunnel help COMMAND` for an example of each command."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine over a JSONL file (canonical or Segment events, mixed) and print every
    /// output as a JSON line, then a funnel summary. Rejected lines go to stderr.
    #[command(
        after_help = "Examples:\n  microfunnel replay --journey saas events.jsonl --until 2026-03-31\n  microfunnel replay --partitions 4 --digest web.jsonl crm.jsonl\n\nExit codes: 0 done (rejected lines do not fail it); 2 bad arguments, journey or unreadable input."
    )]
    Replay(cmd::replay::ReplayArgs),
    /// Generate realistic traffic (web and CRM, canonical and Segment) with ground truth.
    #[command(
        after_help = "Examples:\n  microfunnel gen --prospects 1000 --days 90 --out traffic.jsonl --truth truth.jsonl\n  microfunnel gen --brokers 127.0.0.1:19092 --rate 500\n\nSimulates the b2b journey (or one with its signals); other journeys are refused by name.\nExit codes: 0 done; 2 bad arguments, a journey it cannot simulate, or undelivered events."
    )]
    Gen(Box<cmd::generate::GenArgs>),
    /// Run the service: consume the input topics as a consumer group, emit alerts, journey
    /// events, funnel records and dead letters, serve /metrics.
    #[command(
        after_help = "Example:\n  MICROFUNNEL__KAFKA__BROKERS=kafka:9092 microfunnel run --config /etc/microfunnel/microfunnel.toml\n\nExit codes: 0 graceful stop (SIGINT/SIGTERM); 2 bad configuration or journey, or a failure of the service."
    )]
    Run {
        /// Settings file (TOML; relative paths in it resolve against its directory);
        /// `MICROFUNNEL__SECTION__KEY` variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config and its journey; print the effective settings, secrets masked.
    #[command(
        after_help = "Example:\n  microfunnel check-config --config deploy/config/local.toml\n\nExit codes: 0 valid; 2 invalid (the message names the key and the fix)."
    )]
    CheckConfig {
        /// Settings file (TOML; relative paths in it resolve against its directory);
        /// `MICROFUNNEL__SECTION__KEY` variables override it.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check a journey without any other settings: every mistake at once, each by its key path;
    /// on success a summary (stages and the signals that enter them, hot rules, timers).
    #[command(
        after_help = "Examples:\n  microfunnel check-journey my-journey.toml\n  microfunnel check-journey saas\n\nExit codes: 0 valid (the summary is printed); 2 invalid (every mistake is listed by its key path)."
    )]
    CheckJourney(cmd::check::CheckJourneyArgs),
    /// Print a topic's records as they arrive (`--alerts` renders hot-lead alerts).
    #[command(
        after_help = "Example:\n  microfunnel tail hot-leads --config deploy/config/local.toml --alerts --from-beginning\n\nExit codes: 0 stopped (or idle for --idle-exit seconds); 2 bad configuration or a missing topic."
    )]
    Tail(cmd::tail::TailArgs),
    /// Show a snapshot file: header, offsets, prospect count, checksum status (`--prospect ID`
    /// prints one prospect's state). Exit code 1 if the file is damaged.
    #[command(
        after_help = "Example:\n  microfunnel inspect-snapshot state/microfunnel/shard-0003/000042.snap --prospect usr_8812\n\nExit codes: 0 intact; 1 damaged or does not decode; 2 bad arguments or journey."
    )]
    InspectSnapshot(cmd::inspect::InspectArgs),
    /// Create the input and output topics (existing ones are left alone).
    #[command(
        after_help = "Example:\n  MICROFUNNEL__KAFKA__BROKERS=kafka:9092 microfunnel create-topics --config deploy/config/local.toml\n\nExit codes: 0 done; 2 bad configuration or the brokers refused."
    )]
    CreateTopics {
        /// Settings file (TOML; relative paths in it resolve against its directory);
        /// `MICROFUNNEL__SECTION__KEY` variables override it.
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
            // librdkafka checks every `kafka.client` property when a client is created (locally:
            // nothing connects), as `run` would.
            microfunnel::kafka::consumer_config(&settings.kafka).create::<rdkafka::consumer::BaseConsumer>().map_err(
                |e| {
                    // librdkafka's message ends with the value, which may be a secret.
                    let mut msg = e.to_string();
                    for v in settings.kafka.client.values().filter(|v| !v.is_empty()) {
                        msg = msg.replace(v.as_str(), "*****");
                    }
                    anyhow::anyhow!("kafka.client: {msg}; see librdkafka's CONFIGURATION.md for the property names")
                },
            )?;
            writeln!(
                std::io::stdout().lock(),
                "# effective settings (secrets masked); journey `{}` is valid",
                journey.name
            )?;
            write!(std::io::stdout().lock(), "{}", settings.masked_toml())?;
            Ok(())
        }
        Command::CreateTopics { config } => {
            let settings = Settings::load(config.as_deref(), std::env::vars())?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            let created = rt.block_on(microfunnel::kafka::create_topics(&settings.kafka))?;
            writeln!(std::io::stdout().lock(), "created {} topic(s): {}", created.len(), created.join(", "))?;
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
