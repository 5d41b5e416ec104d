//! Baseline for `benches/e2e.sh`: a plain rdkafka consumer that reads the input topics and
//! parses each payload into a typed struct, nothing more. Prints one JSON line with its rate.
//!
//! `cargo run --release --example plain_consumer -- BROKERS GROUP COUNT TOPIC...`
//!
//! With `PLAIN_FORWARD_PER_MILLE=N` it also forwards N of every 1000 payloads it read (the key
//! and the first `PLAIN_FORWARD_BYTES`, default 190, bytes of the JSON) to the topic
//! `bench-forward`, through a producer set up as microfunnel's outputs are (acks all, LZ4, linger
//! 50 ms, failure reports only): the cost of sending that many records to Kafka with nothing else
//! done, for comparison with microfunnel's own. Its final flush is not measured (neither is
//! microfunnel's, whose rate stops at its last input).

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use serde::Deserialize;

/// The fields a consumer of either format would read (canonical and Segment), borrowed.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Envelope<'a> {
    event_id: Option<&'a str>,
    #[serde(rename = "messageId")]
    message_id: Option<&'a str>,
    prospect_id: Option<&'a str>,
    #[serde(rename = "userId")]
    user_id: Option<&'a str>,
    #[serde(rename = "anonymousId")]
    anonymous_id: Option<&'a str>,
    source: Option<&'a str>,
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    event: Option<&'a str>,
    ts: Option<&'a str>,
    timestamp: Option<&'a str>,
}

/// utime + stime of every thread of this process, from /proc/self/stat (clock ticks of 10 ms).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// (voluntary, involuntary) context switches of this process's threads so far: involuntary ones
/// are other processes taking its cores, a sign of a noisy round.
fn switches() -> (u64, u64) {
    let (mut voluntary, mut involuntary) = (0, 0);
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let field = |name: &str| -> u64 {
            status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
        };
        voluntary += field("voluntary_ctxt_switches:");
        involuntary += field("nonvoluntary_ctxt_switches:");
    }
    (voluntary, involuntary)
}

const FORWARD_TOPIC: &str = "bench-forward";

/// The forwarding producer, after creating its topic (4 partitions) if it is missing.
fn forwarder(brokers: &str) -> BaseProducer {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let topic = NewTopic::new(FORWARD_TOPIC, 4, TopicReplication::Fixed(1));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    // An error here is "already exists" on every run after the first; sending would tell otherwise.
    let _ = rt.block_on(admin.create_topics([&topic], &AdminOptions::new()));
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "50")
        .set("delivery.report.only.error", "true")
        .create()
        .expect("producer")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        eprintln!("usage: plain_consumer BROKERS GROUP COUNT TOPIC...");
        std::process::exit(2);
    }
    let count: u64 = args[3].parse().expect("COUNT");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args[1])
        .set("group.id", &args[2])
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "100")
        .create()
        .expect("consumer");
    let per_mille: u64 =
        std::env::var("PLAIN_FORWARD_PER_MILLE").ok().map_or(0, |v| v.parse().expect("PLAIN_FORWARD_PER_MILLE"));
    let forward = (per_mille > 0).then(|| forwarder(&args[1]));
    let cut: usize = std::env::var("PLAIN_FORWARD_BYTES").ok().map_or(190, |v| v.parse().expect("PLAIN_FORWARD_BYTES"));
    let mut owed = 0u64;
    let topics: Vec<&str> = args[4..].iter().map(String::as_str).collect();
    consumer.subscribe(&topics).expect("subscribe");
    let (mut read, mut parsed) = (0u64, 0u64);
    let mut first: Option<(Instant, f64, (u64, u64))> = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while read < count && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(100)) {
            first.get_or_insert_with(|| (Instant::now(), cpu_seconds(), switches()));
            read += 1;
            if serde_json::from_slice::<Envelope<'_>>(m.payload().unwrap_or_default()).is_ok() {
                parsed += 1;
            }
            if let Some(producer) = &forward {
                owed += per_mille;
                while owed >= 1000 {
                    owed -= 1000;
                    let payload = m.payload().unwrap_or_default();
                    let mut record = BaseRecord::to(FORWARD_TOPIC).payload(&payload[..payload.len().min(cut)]);
                    if let Some(k) = m.key() {
                        record = record.key(k);
                    }
                    while let Err((_, r)) = producer.send(record) {
                        record = r;
                        producer.poll(Duration::from_millis(1));
                    }
                }
            }
        }
    }
    let (t0, c0, (v0, i0)) = first.unwrap_or((Instant::now(), cpu_seconds(), switches()));
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - c0;
    let (v1, i1) = switches();
    if let Some(producer) = &forward {
        producer.flush(Duration::from_secs(60)).expect("forwarded records acknowledged");
    }
    println!(
        "{{\"kind\":\"plain_consumer\",\"messages\":{read},\"parsed\":{parsed},\"wall_secs\":{wall:.3},\"cpu_secs\":{cpu:.3},\"per_sec\":{:.0},\"per_cpu_sec\":{:.0},\"voluntary_switches\":{},\"involuntary_switches\":{}}}",
        read as f64 / wall.max(1e-9),
        read as f64 / cpu.max(1e-9),
        v1 - v0,
        i1 - i0
    );
}
