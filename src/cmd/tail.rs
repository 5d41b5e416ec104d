//! `microfunnel tail TOPIC`: print a topic's records as they arrive (no consumer group, so it
//! never moves the service's offsets). `--alerts` renders hot-lead alerts for people.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};

use microfunnel::config::Settings;

#[derive(Args)]
pub struct TailArgs {
    /// Topic to read.
    topic: String,
    /// Settings file (TOML) for the brokers and client settings; `MICROFUNNEL__SECTION__KEY`
    /// variables override it.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// Start from the beginning of the topic (default: only new records).
    #[arg(long)]
    from_beginning: bool,
    /// Once records have arrived, exit after this many seconds without a new one (default: run
    /// until interrupted).
    #[arg(long)]
    idle_exit: Option<f64>,
    /// Render hot-lead alerts as text instead of JSON.
    #[arg(long)]
    alerts: bool,
}

pub fn run(args: TailArgs) -> anyhow::Result<()> {
    let settings = Settings::load(args.config.as_deref(), std::env::vars())?;
    let mut cfg = microfunnel::kafka::base_config(&settings.kafka);
    cfg.set("group.id", "microfunnel-tail").set("enable.auto.commit", "false");
    let consumer: BaseConsumer = cfg.create().context("creating the consumer")?;
    let md = consumer.fetch_metadata(Some(&args.topic), Duration::from_secs(10))?;
    let topic = md.topics().iter().find(|t| t.name() == args.topic).filter(|t| !t.partitions().is_empty());
    let Some(topic) = topic else { anyhow::bail!("topic `{}` does not exist", args.topic) };
    let mut tpl = TopicPartitionList::new();
    for p in topic.partitions() {
        let offset = if args.from_beginning { Offset::Beginning } else { Offset::End };
        tpl.add_partition_offset(&args.topic, p.id(), offset)?;
    }
    consumer.assign(&tpl)?;
    let mut last: Option<Instant> = None;
    let out = std::io::stdout();
    loop {
        if let (Some(idle), Some(last)) = (args.idle_exit, last)
            && last.elapsed().as_secs_f64() > idle
        {
            return Ok(());
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                last = Some(Instant::now());
                let payload = String::from_utf8_lossy(m.payload().unwrap_or_default());
                let mut o = out.lock();
                if args.alerts {
                    writeln!(o, "{}", render_alert(&payload))?;
                } else {
                    writeln!(o, "{payload}")?;
                }
                o.flush()?;
            }
            Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
            None => {}
        }
    }
}

fn render_alert(payload: &str) -> String {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(payload) else { return payload.to_string() };
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    let reasons: Vec<&str> =
        v["reasons"].as_array().map(|a| a.iter().filter_map(|r| r.as_str()).collect()).unwrap_or_default();
    let email = v["email"].as_str().map_or(String::new(), |e| format!(" <{e}>"));
    format!(
        "HOT {}{email} {} score {} at {}\n    why:  {}\n    next: {}",
        s("prospect"),
        s("stage"),
        v["score"],
        s("at"),
        reasons.join("; "),
        s("next_commitment")
    )
}

#[cfg(test)]
mod tests {
    use super::render_alert;

    #[test]
    fn an_alert_shows_its_email_only_when_it_has_one() {
        let with = r#"{"prospect":"usr_1","email":"dana@northwind.example","stage":"deciding","score":61.5,"at":"2026-03-09T10:00:00.000Z","reasons":["Asked for a quote"],"next_commitment":"Ask for a date"}"#;
        let without = r#"{"prospect":"55722634851","email":null,"stage":"deciding","score":61.5,"at":"2026-03-09T10:00:00.000Z","reasons":["Asked for a quote"],"next_commitment":"Ask for a date"}"#;
        assert!(render_alert(with).starts_with("HOT usr_1 <dana@northwind.example> deciding score 61.5"));
        let line = render_alert(without);
        assert!(line.starts_with("HOT 55722634851 deciding score 61.5"), "{line}");
        assert!(!line.contains('<'), "{line}");
    }
}
