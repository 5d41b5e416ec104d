//! `microfunnel gen`: writes generated traffic as JSONL (file or stdout) and the ground truth.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use microfunnel::codec::Format;
use microfunnel::core::Source;
use microfunnel::traffic::model::Model;
use microfunnel::traffic::{Generator, Options};
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

#[derive(Args)]
pub struct GenArgs {
    /// Journey whose signals the traffic must map to: a built-in journey's name (b2b, ecommerce, saas)
    /// or a TOML file.
    #[arg(long, value_name = "NAME|FILE", default_value = microfunnel::journeys::DEFAULT)]
    journey: PathBuf,
    /// Number of prospects to simulate.
    #[arg(long, default_value_t = 1_000)]
    prospects: u64,
    /// Horizon in days of event time over which prospects arrive.
    #[arg(long, default_value_t = 90.0)]
    days: f64,
    /// First arrival: a date (2026-01-05) or an RFC 3339 time.
    #[arg(long, default_value = "2026-01-05T00:00:00Z")]
    start: String,
    /// Random seed: the same seed and options give the same traffic.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Output file; `-` is stdout.
    #[arg(long, short, default_value = "-")]
    out: PathBuf,
    /// Write web events to this file and CRM events to `--out-crm` instead of `--out`: what
    /// `--brokers` produces to each topic, in the same order (`replay` takes both files).
    #[arg(long, requires = "out_crm", conflicts_with_all = ["brokers", "out"])]
    out_web: Option<PathBuf>,
    /// CRM events' file (with `--out-web`).
    #[arg(long, requires = "out_web")]
    out_crm: Option<PathBuf>,
    /// Write each prospect's true outcome (JSONL) here.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Events per second of wall time; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Share of an identified prospect's web events sent as Segment payloads (anonymous browsing
    /// and sign-ups are always Segment calls).
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
    /// Produce to Kafka at these brokers instead of writing a file (keyed by prospect).
    #[arg(long)]
    brokers: Option<String>,
    /// Record batch compression with --brokers, as the producer's `compression.type`: lz4, none,
    /// gzip, snappy or zstd (what a consumer keeps in memory for a message it holds differs:
    /// see README "Time").
    #[arg(long, value_name = "CODEC", default_value = "lz4", value_parser = ["lz4", "none", "gzip", "snappy", "zstd"], requires = "brokers")]
    compression: String,
    /// Topic for web events (with --brokers).
    #[arg(long, default_value = "web-events")]
    web_topic: String,
    /// Topic for CRM events (with --brokers).
    #[arg(long, default_value = "crm-events")]
    crm_topic: String,
    /// Write the CRM side as that CRM sends it: hubspot, salesforce_cdc or pipedrive (default:
    /// canonical envelopes). Each CRM signal becomes the change the journey's `[crm]` table
    /// maps to it, keyed by the CRM's contact id; signals the table does not map are not
    /// written (counted as `unexpressed`).
    #[arg(long, value_name = "F")]
    crm_format: Option<String>,
}

/// Where generated lines go.
enum Sink {
    Lines(Box<dyn Write>),
    /// One file per source, as the topics of `Kafka`.
    Split {
        web: Box<dyn Write>,
        crm: Box<dyn Write>,
    },
    Kafka {
        producer: BaseProducer,
        web: String,
        crm: String,
        failed: u64,
    },
}

impl Sink {
    fn put(&mut self, line: &[u8], key: &str, source: Source) -> anyhow::Result<()> {
        match self {
            Sink::Lines(out) => {
                out.write_all(line)?;
                out.write_all(b"\n")?;
            }
            Sink::Split { web, crm } => {
                let out = if source == Source::Web { web } else { crm };
                out.write_all(line)?;
                out.write_all(b"\n")?;
            }
            Sink::Kafka { producer, web, crm, failed } => {
                let topic = if source == Source::Web { web.as_str() } else { crm.as_str() };
                let mut record = BaseRecord::to(topic).key(key).payload(line);
                loop {
                    match producer.send(record) {
                        Ok(()) => break,
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            record = r;
                            producer.poll(Duration::from_millis(20));
                        }
                        Err((e, _)) => {
                            *failed += 1;
                            anyhow::bail!("cannot produce to {topic}: {e}");
                        }
                    }
                }
                producer.poll(Duration::ZERO);
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> anyhow::Result<()> {
        match self {
            Sink::Lines(out) => out.flush()?,
            Sink::Split { web, crm } => {
                web.flush()?;
                crm.flush()?;
            }
            Sink::Kafka { producer, .. } => {
                producer.flush(Duration::from_secs(60)).context("flushing generated events to Kafka")?;
                let undelivered = producer.in_flight_count();
                if undelivered > 0 {
                    anyhow::bail!("{undelivered} generated events were not delivered");
                }
            }
        }
        Ok(())
    }
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
    let start = super::instant("--start", &args.start)?;
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
        crm_format: match args.crm_format.as_deref() {
            None => Format::Auto,
            Some(f) => Format::parse(f)
                .filter(|f| matches!(f, Format::Hubspot | Format::SalesforceCdc | Format::Pipedrive))
                .ok_or_else(|| anyhow::anyhow!("--crm-format {f:?}: use hubspot, salesforce_cdc or pipedrive"))?,
        },
    };
    let mut generator = Generator::new(opts, &journey, args.truth.is_some())?;
    let mut sink = if let Some(brokers) = &args.brokers {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("partitioner", "murmur2_random")
            .set("linger.ms", "20")
            .set("compression.type", &args.compression)
            .set("queue.buffering.max.messages", "500000")
            .create()
            .context("creating the Kafka producer")?;
        Sink::Kafka { producer, web: args.web_topic.clone(), crm: args.crm_topic.clone(), failed: 0 }
    } else if let (Some(web), Some(crm)) = (&args.out_web, &args.out_crm) {
        let create = |p: &PathBuf| -> anyhow::Result<Box<dyn Write>> {
            let f = File::create(p).with_context(|| format!("cannot create {}", p.display()))?;
            Ok(Box::new(BufWriter::with_capacity(1 << 20, f)))
        };
        Sink::Split { web: create(web)?, crm: create(crm)? }
    } else if args.out.as_os_str() == "-" {
        Sink::Lines(Box::new(BufWriter::with_capacity(1 << 20, io::stdout().lock())))
    } else {
        let f = File::create(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
        Sink::Lines(Box::new(BufWriter::with_capacity(1 << 20, f)))
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
    while let Some(meta) = generator.next_into(&mut line, &mut key) {
        sink.put(&line, &key, meta.source)?;
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
                match &mut sink {
                    Sink::Lines(out) => out.flush()?,
                    Sink::Split { web, crm } => {
                        web.flush()?;
                        crm.flush()?;
                    }
                    Sink::Kafka { .. } => {}
                }
                std::thread::sleep(due - elapsed);
            }
        }
    }
    sink.finish()?;
    if let Some(t) = truth.as_mut() {
        write_truth(&mut generator, t)?;
        t.flush()?;
    }
    bar.finish_and_clear();
    let secs = began.elapsed().as_secs_f64();
    let s = generator.stats();
    eprintln!(
        "gen: {lines} lines in {secs:.2}s ({:.0} lines/s): {} prospects ({} won, {} lost), {} events ({} web, {} crm; {} Segment, {} canonical), {} duplicates, {} out of order, {} malformed, {} CRM signals the CRM format cannot express",
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
        s.malformed,
        s.unexpressed
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
