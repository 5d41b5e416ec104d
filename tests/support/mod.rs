// Shared by several test binaries; each uses a different part of it.
#![allow(dead_code)]

//! Harness for tests against a real Kafka-API broker: one Tansu broker per test binary, topic and
//! group names of each test's own, the service started in-process on port 0, a keyed producer
//! that checks delivery, a reader of output topics that polls until a condition over what it has
//! read holds, and a small HTTP client. Every wait polls a condition against a deadline.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use microfunnel::app::{self, AppError, Running};
use microfunnel::codec::{Limits, decode_each};
use microfunnel::config::{Log, LogFormat, Settings};
use microfunnel::core::Journey;
use microfunnel::telemetry::Metrics;
use rdkafka::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

/// How long a reader or a condition may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(60);

const B2B: &str = include_str!("../../deploy/journeys/b2b.toml");

// ---- the broker -------------------------------------------------------------------------------

static BROKER: OnceLock<String> = OnceLock::new();

/// `host:port` of this test binary's broker, started on first use.
pub fn brokers() -> &'static str {
    BROKER.get_or_init(start_broker)
}

fn tansu() -> PathBuf {
    let install = "run `scripts/broker install` (or set TANSU to the tansu binary)";
    if let Some(p) = std::env::var_os("TANSU") {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "TANSU={} is not a file: {install}", p.display());
        return p;
    }
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).map(|d| d.join("tansu")).find(|c| c.is_file()))
        .unwrap_or_default();
    let in_cargo = std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo/bin/tansu")).filter(|c| c.is_file());
    on_path.or(in_cargo).unwrap_or_else(|| panic!("the Tansu broker is not installed: {install}"))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    l.local_addr().expect("local address").port()
}

/// Starts Tansu under a shell that kills it once this process is gone (statics are never
/// dropped) or exits when Tansu does; waits until it accepts connections and creates topics.
/// Another process may take the free port before Tansu binds it: then Tansu exits and a new
/// port is tried.
fn start_broker() -> String {
    let bin = tansu();
    let mut failures = Vec::new();
    for _ in 0..3 {
        match try_start_broker(&bin, free_port()) {
            Ok(addr) => return addr,
            Err(e) => failures.push(e),
        }
    }
    panic!("cannot start the Tansu broker ({}):\n{}", bin.display(), failures.join("\n---\n"));
}

fn try_start_broker(bin: &Path, port: u16) -> Result<String, String> {
    let addr = format!("127.0.0.1:{port}");
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("tansu-{}.log", std::process::id()));
    let script = format!(
        "\"$0\" broker --listener-url tcp://{addr} --advertised-listener-url tcp://{addr} \
         --storage-engine memory://tansu/ & b=$!; \
         while kill -0 {pid} 2>/dev/null && kill -0 $b 2>/dev/null; do sleep 0.5; done; kill $b 2>/dev/null",
        pid = std::process::id()
    );
    let out = std::fs::File::create(&log).map_err(|e| format!("create {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| format!("clone the log handle: {e}"))?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(bin)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("spawn: {e}"))?;
    // Only the broker's own readiness probe uses the default output topic names.
    let probe = Settings::load(
        None,
        [
            ("MICROFUNNEL__KAFKA__BROKERS".to_string(), addr.clone()),
            ("MICROFUNNEL__KAFKA__INPUT_TOPICS".to_string(), format!("probe-{}", std::process::id())),
            ("MICROFUNNEL__KAFKA__PARTITIONS".to_string(), "1".to_string()),
        ],
    )
    .map_err(|e| format!("probe settings: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::from("never connected");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("the broker on {addr} exited ({status}); log:\n{}", log_tail(&log)));
        }
        if Instant::now() > deadline {
            // The shell stops it when this process exits.
            return Err(format!("the broker on {addr} was not ready within 30 s ({last}); log:\n{}", log_tail(&log)));
        }
        match TcpStream::connect_timeout(&addr.parse().expect("loopback address"), Duration::from_millis(500)) {
            Err(e) => last = format!("connect: {e}"),
            Ok(_) => match try_create_topics(&probe, Duration::from_secs(5)) {
                Ok(()) => return Ok(addr),
                Err(e) => last = format!("create_topics: {e}"),
            },
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

fn try_create_topics(settings: &Settings, limit: Duration) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    match rt.block_on(async { tokio::time::timeout(limit, microfunnel::kafka::create_topics(&settings.kafka)).await }) {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    }
}

/// The `microfunnel` binary of this build, run from the project root.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_microfunnel"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

// ---- names and settings -----------------------------------------------------------------------

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{name}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

pub fn journey() -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(B2B).expect("the shipped b2b journey loads"))
}

/// Settings for one test: its own input topics (web, crm; 3 partitions), output topics and
/// group, the HTTP endpoints on an ephemeral port, event time only, short intervals.
pub fn settings(test: &str) -> Settings {
    let id = unique(test);
    let var = |k: &str, v: String| (format!("MICROFUNNEL__{k}"), v);
    let vars = [
        var("KAFKA__BROKERS", brokers().to_string()),
        var("KAFKA__GROUP_ID", format!("{id}-group")),
        var("KAFKA__INPUT_TOPICS", format!("{id}-web,{id}-crm")),
        var("KAFKA__TOPICS__HOT_LEADS", format!("{id}-hot-leads")),
        var("KAFKA__TOPICS__JOURNEY_EVENTS", format!("{id}-journey-events")),
        var("KAFKA__TOPICS__FUNNEL", format!("{id}-funnel")),
        var("KAFKA__TOPICS__DEAD_LETTER", format!("{id}-dead-letter")),
        var("KAFKA__PARTITIONS", "3".into()),
        var("KAFKA__SESSION_TIMEOUT_MS", "6000".into()),
        var("HTTP__LISTEN", "127.0.0.1:0".into()),
        var("PIPELINE__IDLE_ADVANCE_MS", "0".into()),
        var("PIPELINE__COMMIT_INTERVAL_MS", "200".into()),
        var("PIPELINE__FUNNEL_INTERVAL_MS", "300".into()),
        var("PIPELINE__SHUTDOWN_TIMEOUT_MS", "10000".into()),
        var("CHECKPOINT__DIR", state_dir(&id).display().to_string()),
        var("KAFKA__RESUME_REWIND", "10000".into()),
    ];
    let s = Settings::load(None, vars).unwrap_or_else(|e| panic!("test settings: {e}"));
    assert_eq!(s.kafka.input_topics.len(), 2, "{:?}", s.kafka.input_topics);
    if let Ok(level) = std::env::var("MICROFUNNEL_TEST_LOG") {
        microfunnel::telemetry::init_logs(&Log { format: LogFormat::Pretty, level });
    }
    s
}

/// A fresh snapshot directory for one test (its group's files go below it).
pub fn state_dir(id: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join("microfunnel-test-state").join(id);
    let _ = std::fs::remove_dir_all(&d);
    d
}

/// A test's settings with its topics created.
pub fn setup(test: &str) -> Settings {
    let s = settings(test);
    create_topics(&s);
    s
}

pub fn create_topics(settings: &Settings) {
    try_create_topics(settings, Duration::from_secs(30)).unwrap_or_else(|e| panic!("creating topics: {e}"));
}

pub fn web(s: &Settings) -> &str {
    &s.kafka.input_topics[0]
}

pub fn crm(s: &Settings) -> &str {
    &s.kafka.input_topics[1]
}

// ---- the service ------------------------------------------------------------------------------

/// A started service; dropping it (a failed test) asks the pipeline to stop.
pub struct Service {
    running: Option<Running>,
}

impl Service {
    pub fn start(settings: &Settings) -> Service {
        Service::start_with(settings, journey())
    }

    /// [`Service::start`] with another journey.
    pub fn start_with(settings: &Settings, journey: Arc<Journey>) -> Service {
        let running = app::start(settings.clone(), journey).unwrap_or_else(|e| panic!("start: {e}"));
        Service { running: Some(running) }
    }

    fn running(&self) -> &Running {
        self.running.as_ref().expect("running until stopped")
    }

    pub fn addr(&self) -> SocketAddr {
        self.running().http_addr
    }

    pub fn metrics(&self) -> Metrics {
        self.running().metrics.clone()
    }

    pub fn request_stop(&self) {
        self.running().request_stop();
    }

    /// Waits for the pipeline to end (on its own, or after `request_stop`).
    pub fn wait(mut self) -> Result<(), AppError> {
        self.running.take().expect("running until stopped").wait()
    }

    /// The graceful stop: flush, commit, leave the group.
    pub fn stop(self) -> Result<(), AppError> {
        self.request_stop();
        self.wait()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(r) = &self.running {
            r.request_stop();
        }
    }
}

// ---- producing --------------------------------------------------------------------------------

/// One input record: key (the prospect id), payload bytes, headers.
#[derive(Clone, Debug)]
pub struct In {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

pub fn keyed(key: &str, payload: impl Into<Vec<u8>>) -> In {
    In { key: Some(key.to_string()), payload: payload.into(), headers: Vec::new() }
}

pub fn unkeyed(payload: impl Into<Vec<u8>>) -> In {
    In { key: None, payload: payload.into(), headers: Vec::new() }
}

impl In {
    pub fn header(mut self, key: &str, value: &str) -> In {
        self.headers.push((key.to_string(), value.to_string()));
        self
    }
}

type Delivered = Mutex<BTreeMap<usize, Result<(i32, i64), String>>>;

struct Deliveries(Delivered);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;
    fn delivery(&self, result: &DeliveryResult<'_>, i: usize) {
        let r = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        self.0.lock().unwrap_or_else(|p| p.into_inner()).insert(i, r);
    }
}

/// Produces `records` to `topic` in order (murmur2 on the key, as Java clients do), flushes,
/// and returns where each landed as (partition, offset). Fails the test unless all were acked.
pub fn produce(topic: &str, records: &[In]) -> Vec<(i32, i64)> {
    let producer: BaseProducer<Deliveries> = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("partitioner", "murmur2_random")
        .set("acks", "all")
        .set("enable.idempotence", "false")
        .set("max.in.flight.requests.per.connection", "1")
        .set("linger.ms", "5")
        .create_with_context(Deliveries(Mutex::new(BTreeMap::new())))
        .expect("test producer");
    for (i, r) in records.iter().enumerate() {
        let mut headers = OwnedHeaders::new();
        for (k, v) in &r.headers {
            headers = headers.insert(Header { key: k, value: Some(v) });
        }
        let mut record: BaseRecord<'_, str, [u8], usize> =
            BaseRecord::with_opaque_to(topic, i).payload(r.payload.as_slice()).headers(headers);
        if let Some(k) = &r.key {
            record = record.key(k.as_str());
        }
        producer.send(record).unwrap_or_else(|(e, _)| panic!("enqueue record {i} for {topic}: {e}"));
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(30)).unwrap_or_else(|e| panic!("flush to {topic}: {e}"));
    let delivered = std::mem::take(&mut *producer.context().0.lock().unwrap_or_else(|p| p.into_inner()));
    (0..records.len())
        .map(|i| match delivered.get(&i) {
            Some(Ok(at)) => *at,
            Some(Err(e)) => panic!("record {i} to {topic} was refused: {e}"),
            None => panic!("record {i} to {topic} has no delivery report after the flush"),
        })
        .collect()
}

/// The next offset of every partition written to, from what `produce` returned.
pub fn end_offsets<'a>(written: impl IntoIterator<Item = (&'a str, &'a [(i32, i64)])>) -> BTreeMap<(String, i32), i64> {
    let mut ends = BTreeMap::new();
    for (topic, at) in written {
        for &(p, o) in at {
            let e = ends.entry((topic.to_string(), p)).or_insert(0);
            *e = (*e).max(o + 1);
        }
    }
    ends
}

// ---- reading ----------------------------------------------------------------------------------

/// One record read from an output topic.
#[derive(Clone, Debug)]
pub struct Out {
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    pub partition: i32,
    pub offset: i64,
}

impl Out {
    /// The last header of that name, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| std::str::from_utf8(v).expect("UTF-8 header"))
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.payload)))
    }
}

fn partitions_of(consumer: &BaseConsumer, topic: &str) -> Vec<i32> {
    let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
    let t = md.topics().iter().find(|t| t.name() == topic).unwrap_or_else(|| panic!("no topic {topic}"));
    assert!(t.error().is_none() && !t.partitions().is_empty(), "topic {topic}: {:?}", t.error());
    t.partitions().iter().map(|p| p.id()).collect()
}

fn plain_consumer(group: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("test consumer")
}

/// Reads every partition of `topic` from the beginning (no group) until `done` holds for the
/// records read so far; fails the test, showing them, after `DEADLINE`.
pub fn read_until(topic: &str, what: &str, done: impl Fn(&[Out]) -> bool) -> Vec<Out> {
    let consumer = plain_consumer(&unique("reader"));
    let mut tpl = TopicPartitionList::new();
    for p in partitions_of(&consumer, topic) {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("partition offset");
    }
    consumer.assign(&tpl).expect("assign");
    let deadline = Instant::now() + DEADLINE;
    let mut read = Vec::new();
    while !done(&read) {
        if Instant::now() > deadline {
            let shown: Vec<String> = read.iter().map(show).collect();
            panic!("{topic}: {what} not seen within {DEADLINE:?}; read {}:\n{}", read.len(), shown.join("\n"));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => read.push(Out {
                key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec))).collect())
                    .unwrap_or_default(),
                partition: m.partition(),
                offset: m.offset(),
            }),
            Some(Err(e)) => eprintln!("{topic}: read error (retrying): {e}"),
            None => {}
        }
    }
    read
}

/// One record as a line of text, headers included.
pub fn show(o: &Out) -> String {
    let headers: Vec<String> = o
        .headers
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().map(String::from_utf8_lossy).unwrap_or_default()))
        .collect();
    let payload = String::from_utf8_lossy(&o.payload);
    format!("  p{}@{} key={:?} headers=[{}] {payload}", o.partition, o.offset, o.key, headers.join(", "))
}

/// Offsets `group` has committed for every partition of `topics` (absent: none committed).
pub fn committed(group: &str, topics: &[String]) -> BTreeMap<(String, i32), i64> {
    let consumer = plain_consumer(group);
    let mut tpl = TopicPartitionList::new();
    for t in topics {
        for p in partitions_of(&consumer, t) {
            tpl.add_partition(t, p);
        }
    }
    let got = consumer.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_string(), e.partition()), o)),
            _ => None,
        })
        .collect()
}

// ---- waiting, HTTP, metrics -------------------------------------------------------------------

/// Polls `cond` every 50 ms until it holds; fails the test naming `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// GET over a plain TCP connection: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect to the HTTP endpoint");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no header end: {text:?}"));
    assert!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "chunked response: {head}");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head:?}"));
    (status, body.to_string())
}

/// Samples of one metric family in Prometheus text: their labels and values.
pub fn samples(text: &str, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line {line:?}"));
        let (metric, labels) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.strip_suffix('}').unwrap_or_else(|| panic!("bad labels in {line:?}"))),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let labels = labels
            .split("\",")
            .filter(|kv| !kv.is_empty())
            .map(|kv| {
                let (k, v) = kv.split_once("=\"").unwrap_or_else(|| panic!("bad label {kv:?} in {line:?}"));
                (k.to_string(), v.trim_end_matches('"').to_string())
            })
            .collect();
        let value = value.parse().unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.push((labels, value));
    }
    out
}

/// The value of the sample of `name` with exactly these labels.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    samples(text, name).into_iter().find(|(l, _)| *l == want).map(|(_, v)| v)
}

/// The sum over every sample of `name`.
pub fn total(text: &str, name: &str) -> f64 {
    samples(text, name).iter().map(|(_, v)| v).sum()
}

// ---- replay as the oracle --------------------------------------------------------------------

/// A file's lines as records keyed by prospect id (what `gen --brokers` does; a batch envelope by
/// its first event's); a line that does not decode goes unkeyed.
pub fn records(path: &Path) -> Vec<In> {
    let journey = journey();
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match decode_each(l.as_bytes(), &journey, &Limits::default()).find_map(|(_, r)| r.ok()) {
            Some(ev) => keyed(&ev.prospect, l.as_bytes().to_vec()),
            None => unkeyed(l.as_bytes().to_vec()),
        })
        .collect()
}

pub struct Oracle {
    pub shards: BTreeMap<i64, String>,
    pub alerts: BTreeSet<String>,
    pub journey_events: Vec<String>,
    pub lines: Vec<Value>,
}

pub fn oracle(web: &Path, crm: &Path, partitions: usize) -> Oracle {
    oracle_with(web, crm, partitions, &[])
}

/// [`oracle`] with more `replay` arguments (`--format segment --format hubspot`).
pub fn oracle_with(web: &Path, crm: &Path, partitions: usize, extra: &[&str]) -> Oracle {
    let out = bin()
        .args(["replay", "--partitions", &partitions.to_string(), "--no-advance", "--digest"])
        .args(extra)
        .arg(web)
        .arg(crm)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut o =
        Oracle { shards: BTreeMap::new(), alerts: BTreeSet::new(), journey_events: Vec::new(), lines: Vec::new() };
    for v in &lines {
        match v["kind"].as_str().unwrap() {
            "hot_lead" => {
                o.alerts.insert(v["alert_id"].as_str().unwrap().to_string());
            }
            "stage_changed" | "ghosted" | "stalled" | "gone_quiet" | "hot_lead_suppressed" | "outcome_kept" => {
                o.journey_events.push(v.to_string())
            }
            "digest" => {
                if let Some(p) = v["partition"].as_i64() {
                    o.shards.insert(p, v["digest"].as_str().unwrap().to_string());
                }
            }
            _ => {}
        }
    }
    o.journey_events.sort();
    o.lines = lines;
    o
}

/// What the last checkpoints of `/shards`' shards cover: input messages in all, and each
/// shard's digest.
fn checkpoint_cover(shards: &[Value]) -> (i64, BTreeMap<i64, String>) {
    let mut covered = 0;
    let mut digests = BTreeMap::new();
    for sh in shards {
        if let Some(c) = sh["checkpoint"].as_object() {
            // Input messages only: the identity topic (`<group>.identity`) is an internal input.
            let inputs = c["positions"].as_object().unwrap().iter().filter(|(t, _)| !t.ends_with(".identity"));
            covered += inputs.map(|(_, v)| v.as_i64().unwrap()).sum::<i64>();
            if let Some(d) = c["digest"].as_str() {
                digests.insert(sh["partition"].as_i64().unwrap(), d.to_string());
            }
        }
    }
    (covered, digests)
}

/// The first key `{prefix}0`, `{prefix}1`, ... that Kafka's default partitioner puts in
/// `partition` of `partitions`.
pub fn key_in_partition(prefix: &str, partition: u32, partitions: u32) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|k| microfunnel::core::ids::kafka_partition(k.as_bytes(), partitions) == partition)
        .unwrap()
}

/// With identity resolution across partitions: each shard's `resolved_digest` (read by
/// `inspect-snapshot` from its newest snapshot under `states`), once the checkpoints that
/// `shards()` lists cover `messages` input messages and every record of the identity topic
/// `<group>.identity` (the topic drained: nothing a shard sent is unread).
pub fn resolved_when_drained(
    shards: impl Fn() -> Vec<Value>,
    s: &Settings,
    states: &[&Path],
    messages: i64,
    partitions: usize,
    limit: Duration,
) -> BTreeMap<i64, String> {
    resolved_when(shards, s, states, messages, partitions, limit, None)
}

/// [`resolved_when_drained`] once every shard's expiry horizon has settled
/// ([`horizons_settled`]: `[retention]` across partitions, every partition idle): what a
/// shard decides once its horizon is unbounded (the last expiries, their `Forget`s) is in a
/// checkpoint captured after the horizons were seen settled (the second to complete after: the
/// first may have been captured before), and the identity records that move people are
/// drained (renewals of idle reports may still be in flight: with every horizon settled they
/// change nothing). Without it, a digest read between the last input's checkpoint and the horizon's last
/// move shows people not expired yet.
pub fn resolved_at_rest(
    instances: &[Process],
    s: &Settings,
    states: &[&Path],
    messages: i64,
    partitions: usize,
    limit: Duration,
) -> BTreeMap<i64, String> {
    horizons_settled(instances, partitions, limit);
    let seqs: BTreeMap<i64, u64> = instances
        .iter()
        .flat_map(|i| i.shards().unwrap_or_default())
        .filter_map(|sh| Some((sh["partition"].as_i64()?, sh["checkpoint"]["seq"].as_u64().unwrap_or(0))))
        .collect();
    let shards = || instances.iter().flat_map(|i| i.shards().unwrap_or_default()).collect::<Vec<Value>>();
    let resolved = resolved_when(shards, s, states, messages, partitions, limit, Some(&seqs));
    horizons_settled(instances, partitions, limit);
    resolved
}

/// [`resolved_when_drained`]; with `after`, drained of the records that move people, in
/// checkpoints at least two later than the `seq` given per partition.
fn resolved_when(
    shards: impl Fn() -> Vec<Value>,
    s: &Settings,
    states: &[&Path],
    messages: i64,
    partitions: usize,
    limit: Duration,
    after: Option<&BTreeMap<i64, u64>>,
) -> BTreeMap<i64, String> {
    let ends = TopicEnds::identity(s);
    let deadline = Instant::now() + limit;
    loop {
        let shards = shards();
        let (covered, digests) = checkpoint_cover(&shards);
        let newer = after.is_none_or(|after| {
            shards.iter().all(|sh| {
                let p = sh["partition"].as_i64().unwrap_or(-1);
                // A shard's status `seq` moves when a checkpoint completes: the one completing
                // next may have been captured before the horizon's last move (the loop
                // captures, then publishes progress); the one after it was captured later. A
                // partition missing from `after` (its shard was moving) is not yet settled.
                after.get(&p).is_some_and(|&listed| sh["checkpoint"]["seq"].as_u64().unwrap_or(0) >= listed + 2)
            })
        });
        let done = covered == messages
            && digests.len() == partitions
            && newer
            && drained_of(&shards, s, &ends, after.is_some());
        if done {
            let mut out = BTreeMap::new();
            for p in 0..partitions {
                // Each state directory's newest chain (base and deltas) of the shard, as a
                // restore would load it; the one of the latest checkpoint wins.
                let v = states
                    .iter()
                    .map(|d| d.join(&s.kafka.group_id).join(format!("shard-{p:04}")))
                    .filter(|dir| dir.is_dir())
                    .filter_map(|dir| {
                        let o = bin()
                            .arg("inspect-snapshot")
                            .arg(&dir)
                            .arg("--journey")
                            .arg(&s.journey.path)
                            .output()
                            .expect("inspect-snapshot");
                        let v: Value = serde_json::from_slice(&o.stdout).ok()?;
                        Some((v["header"]["seq"].as_u64()?, v))
                    })
                    .max_by_key(|(seq, _)| *seq)
                    .unwrap_or_else(|| panic!("no snapshot of shard {p} under {states:?}"))
                    .1;
                out.insert(p as i64, v["resolved_digest"].as_str().expect("resolved_digest").to_string());
            }
            return out;
        }
        assert!(
            Instant::now() < deadline,
            "checkpoints cover {covered} of {messages} messages, checkpoints newer: {newer}: {shards:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each partition's `resolved` digest in `replay --digest` output.
pub fn resolved_of(oracle: &Oracle) -> BTreeMap<i64, String> {
    oracle
        .lines
        .iter()
        .filter(|l| l["kind"] == "digest")
        .filter_map(|l| Some((l["partition"].as_i64()?, l["resolved"].as_str()?.to_string())))
        .collect()
}

/// Each shard's checkpoint digest once the checkpoints cover `total` input messages.
pub fn checkpointed(svc: &Service, total: i64, partitions: usize, limit: Duration) -> BTreeMap<i64, String> {
    let deadline = Instant::now() + limit;
    loop {
        let (_, body) = http_get(svc.addr(), "/shards");
        let shards: Value = serde_json::from_str(&body).unwrap();
        let shards = shards["shards"].as_array().cloned().unwrap_or_default();
        let (covered, digests) = checkpoint_cover(&shards);
        if covered == total && digests.len() == partitions {
            return digests;
        }
        assert!(Instant::now() < deadline, "checkpoints cover {covered} of {total} messages: {shards:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

// ---- Prometheus -------------------------------------------------------------------------------

/// A real Prometheus server (`apt-get install prometheus`) scraping one target every second as
/// job `microfunnel`, with rule files loaded; killed when dropped.
pub struct Prometheus {
    child: std::process::Child,
    pub port: u16,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(target: SocketAddr, rule_files: &[PathBuf]) -> Prometheus {
        let which = Command::new("prometheus").arg("--version").output();
        assert!(
            which.is_ok_and(|o| o.status.success()),
            "the Prometheus server is needed: apt-get install prometheus (.ci/run does)"
        );
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(unique("prometheus"));
        std::fs::create_dir_all(&dir).expect("Prometheus directory");
        let rules: String = rule_files.iter().map(|r| format!("  - {}\n", r.display())).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n{rules}scrape_configs:\n  - job_name: microfunnel\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("Prometheus config");
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).map_or(Stdio::null(), Stdio::from))
            .spawn()
            .expect("start prometheus");
        let prom = Prometheus { child, port, dir };
        wait_until(DEADLINE, "Prometheus answers", || prom.get("/-/ready").is_some_and(|(s, _)| s == 200));
        prom
    }

    /// GET over HTTP/1.0 (no chunked bodies): (status, body), `None` if not connected.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
        let mut text = String::new();
        conn.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    }

    /// `/api/v1/query` of one PromQL expression at the current time: the whole JSON answer
    /// (`status` is `error`, with `errorType` and `error`, for an expression that does not parse).
    pub fn query(&self, expr: &str) -> Value {
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (_, body) = self
            .get(&format!("/api/v1/query?query={encoded}"))
            .unwrap_or_else(|| panic!("Prometheus did not answer the query {expr}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// The result vector of a query that must succeed.
    pub fn vector(&self, expr: &str) -> Vec<Value> {
        let v = self.query(expr);
        assert_eq!(v["status"], "success", "{expr}: {v}");
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `microfunnel gen` traffic (300 prospects over 28 days, seed 5, then `extra` arguments) as the
/// two input topics would receive it: one file each, named after `name` in the test's temp dir.
pub fn gen_per_topic(name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    gen_files(name, &[&["--prospects", "300", "--days", "28", "--seed", "5", "--quiet"], extra].concat())
}

/// `microfunnel gen` traffic of `prospects` over `days` (seed 7, every web event a Segment call,
/// nothing malformed), as [`gen_per_topic`] writes it.
pub fn gen_segment(name: &str, prospects: &str, days: &str) -> (PathBuf, PathBuf) {
    let args = ["--prospects", prospects, "--days", days, "--seed", "7", "--segment-share", "1", "--quiet"];
    gen_files(name, &[&args[..], &["--malformed", "0"]].concat())
}

/// `microfunnel gen` with `args`, one file per input topic named after `name` in the test's
/// temp dir.
fn gen_files(name: &str, args: &[&str]) -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (web, crm) = (dir.join(format!("{name}-web.jsonl")), dir.join(format!("{name}-crm.jsonl")));
    let out = bin().arg("gen").args(args).arg("--out-web").arg(&web).arg("--out-crm").arg(&crm).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (web, crm)
}

/// Writes the b2b journey with identity resolution on, then `extra`, to
/// `<group_id>-journey.toml` in the test's temp dir, and points `s.journey.path` at it.
pub fn resolving_journey(s: &mut Settings, extra: &str) {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}-journey.toml", s.kafka.group_id));
    std::fs::write(&path, format!("{B2B}\n[identity]\nresolve = true\n{extra}")).unwrap();
    s.journey.path = path;
}

/// The lines of `replay --partitions 3 --no-advance --digest` of `file` with the journey at
/// `journey`.
pub fn replay_lines(journey: &Path, file: &Path) -> Vec<Value> {
    let out = bin()
        .args(["replay", "--partitions", "3", "--no-advance", "--digest", "--journey"])
        .arg(journey)
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Waits until `svc` (started with `settings`) checkpointed all `messages` of its inputs, then checks that every shard's
/// state and the set of alert ids equal the oracle's; returns the alerts read.
pub fn assert_equals_oracle(
    svc: &Service,
    settings: &Settings,
    oracle: &Oracle,
    messages: i64,
    limit: Duration,
) -> Vec<Value> {
    let digests = checkpointed(svc, messages, settings.kafka.partitions as usize, limit);
    assert_eq!(digests, oracle.shards, "every shard's state equals replay's");
    let alerts =
        read_until(&settings.kafka.topics.hot_leads, "the oracle's alerts", |r| r.len() >= oracle.alerts.len());
    let alerts: Vec<Value> = alerts.iter().map(Out::json).collect();
    let ids: BTreeSet<String> = alerts.iter().map(|a| a["alert_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, oracle.alerts);
    alerts
}

// ---- the service as a process (kill -9) ---------------------------------------------------------

/// Expired people (`microfunnel_prospects_expired_total{reason="retention"}`) and merges
/// (`microfunnel_prospects_merged_total`) in the metrics text `m` (one instance's, or several
/// concatenated: summed).
pub fn expired_and_merged(m: &str) -> (usize, usize) {
    let counted = |name: &str, label: Option<(&str, &str)>| -> usize {
        samples(m, name)
            .iter()
            .filter(|(l, _)| label.is_none_or(|(k, v)| l.get(k).map(String::as_str) == Some(v)))
            .map(|(_, v)| *v as usize)
            .sum()
    };
    (
        counted("microfunnel_prospects_expired_total", Some(("reason", "retention"))),
        counted("microfunnel_prospects_merged_total", None),
    )
}
/// Waits (up to `limit`) until `instances` together hold all `partitions` shards and every
/// shard's expiry horizon is unbounded (every partition idle, and every shard told so), with
/// no expiry waiting and no horizon lag: identity resolution across partitions with
/// `[retention]` at rest.
pub fn horizons_settled(instances: &[Process], partitions: usize, limit: Duration) {
    wait_until(limit, "every shard's horizon unbounded, no expiry waiting", || {
        let mut shards = BTreeSet::new();
        for i in instances {
            let Some(held) = i.shards() else { return false };
            let held: BTreeSet<String> = held.iter().map(|sh| sh["partition"].to_string()).collect();
            let m = i.metrics();
            let of = |name| -> Vec<(String, f64)> {
                samples(&m, name).into_iter().map(|(l, v)| (l.get("shard").cloned().unwrap_or_default(), v)).collect()
            };
            let (horizons, waiting, lag) = (
                of("microfunnel_expiry_horizon_timestamp_seconds"),
                of("microfunnel_expiries_waiting"),
                of("microfunnel_expiry_horizon_lag_seconds"),
            );
            let per_shard = |v: &[(String, f64)]| v.iter().map(|(p, _)| p.clone()).collect::<BTreeSet<_>>() == held;
            let settled = per_shard(&horizons)
                && per_shard(&waiting)
                && per_shard(&lag)
                && horizons.iter().all(|(_, v)| v.is_infinite())
                && waiting.iter().all(|(_, v)| *v == 0.0)
                && lag.iter().all(|(_, v)| *v == 0.0);
            if !settled {
                return false;
            }
            shards.extend(held);
        }
        shards.len() == partitions
    });
}

/// The service binary run with `settings` (written to a TOML file: `[inputs]` sections included),
/// its HTTP endpoints on a port of its own, its snapshots under `state` (`None`: no snapshot
/// directory), the changelog on. `kill9` ends it without any shutdown; dropping it does too.
pub struct Process {
    child: Option<std::process::Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Process {
    pub fn start(settings: &Settings, state: Option<&Path>) -> Process {
        let port = free_port();
        let mut s = settings.clone();
        s.http.listen = format!("127.0.0.1:{port}");
        s.checkpoint.dir = state.map(Path::to_path_buf).unwrap_or_default();
        s.checkpoint.changelog = true;
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let config = dir.join(format!("{}.toml", unique(&s.kafka.group_id)));
        std::fs::write(&config, toml::to_string(&s).expect("settings as TOML")).expect("write the config");
        let log = dir.join(format!("{}.log", unique(&s.kafka.group_id)));
        let logfile = std::fs::File::create(&log).expect("log file");
        let child = bin()
            .args(["run", "--config"])
            .arg(&config)
            .env("MICROFUNNEL__LOG__LEVEL", "info,librdkafka=warn")
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .expect("start the service");
        Process { child: Some(child), port, log }
    }

    pub fn addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// `GET /shards`' list, `None` while the process does not answer.
    pub fn shards(&self) -> Option<Vec<Value>> {
        TcpStream::connect(self.addr()).ok()?;
        let (code, body) = http_get(self.addr(), "/shards");
        (code == 200)
            .then(|| serde_json::from_str::<Value>(&body).ok())?
            .map(|v| v["shards"].as_array().cloned().unwrap_or_default())
    }

    /// Each shard's checkpoint digest once the checkpoints cover `total` input messages, and
    /// the shards as `/shards` lists them.
    pub fn checkpointed(&self, total: i64, partitions: usize, limit: Duration) -> (BTreeMap<i64, String>, Vec<Value>) {
        let deadline = Instant::now() + limit;
        loop {
            let shards = self.shards().unwrap_or_default();
            let (covered, digests) = checkpoint_cover(&shards);
            if covered == total && digests.len() == partitions {
                return (digests, shards);
            }
            assert!(
                Instant::now() < deadline,
                "checkpoints cover {covered} of {total} messages: {shards:?}; log {}",
                self.log.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn metrics(&self) -> String {
        http_get(self.addr(), "/metrics").1
    }

    /// SIGSTOP: the process holds its state and group membership but does nothing.
    pub fn freeze(&self) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let st = Command::new("kill").args(["-STOP", &pid]).status().expect("kill -STOP");
        assert!(st.success());
    }

    /// SIGCONT: a frozen process carries on.
    pub fn thaw(&self) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let st = Command::new("kill").args(["-CONT", &pid]).status().expect("kill -CONT");
        assert!(st.success());
    }

    /// SIGKILL: no checkpoint, no commit, no leaving the group.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("kill -9");
            c.wait().expect("reap");
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A consumer outside any group, for reading high watermarks.
pub fn watermarks_consumer() -> BaseConsumer {
    plain_consumer(&unique("watermarks"))
}

/// The end of each partition of a topic the service writes, as far as it is readable now. The
/// local broker's reported high watermark (`ListOffsets`, what `fetch_watermarks` asks) can lag
/// the last records of a batch of several (`tests/broker_ends.rs`), so a position at that
/// watermark is not the end: the end here is the greatest of that watermark, what a reader
/// assigned to every partition has read and the high watermark its fetch responses carried
/// (exact), after polling for [`TopicEnds::CYCLES`] fetch cycles from the call, so that what
/// was acknowledged before it is counted.
pub struct TopicEnds {
    consumer: BaseConsumer,
    topic: String,
    read: std::cell::RefCell<BTreeMap<i32, i64>>,
    /// Per partition, the offset after the last identity record read that is not a `progress`
    /// record ([`TopicEnds::people_ends`]).
    people: std::cell::RefCell<BTreeMap<i32, i64>>,
    assigned: std::cell::Cell<bool>,
}

impl TopicEnds {
    /// Fetch responses waited for per call (each at most `fetch.wait.max.ms`, 50 ms).
    pub const CYCLES: u32 = 4;

    pub fn new(topic: &str) -> TopicEnds {
        let consumer = ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("group.id", unique("ends"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .expect("test consumer");
        TopicEnds {
            consumer,
            topic: topic.to_string(),
            read: Default::default(),
            people: Default::default(),
            assigned: Default::default(),
        }
    }

    /// On the identity topic, each partition's offset after its last record that moves people
    /// (any but a `progress` record), as read by [`TopicEnds::ends`] (call that first): with
    /// every horizon settled, `progress` records (idle renewals) change nothing.
    pub fn people_ends(&self) -> BTreeMap<i32, i64> {
        self.people.borrow().clone()
    }

    /// Whether the reader has read every partition to `ends` (from [`TopicEnds::ends`]): only
    /// then does [`TopicEnds::people_ends`] cover each partition (a long topic takes the reader
    /// several calls).
    pub fn read_to(&self, ends: &BTreeMap<i32, i64>) -> bool {
        let read = self.read.borrow();
        ends.iter().all(|(p, &end)| end <= 0 || read.get(p).is_some_and(|&r| r >= end))
    }

    /// The identity topic's ([`TopicEnds::new`] of `<group>.identity`).
    pub fn identity(s: &Settings) -> TopicEnds {
        TopicEnds::new(&format!("{}.identity", s.kafka.group_id))
    }

    /// Each partition's end (offset after its last readable record), counted now.
    pub fn ends(&self) -> BTreeMap<i32, i64> {
        let partitions = partitions_of(&self.consumer, &self.topic);
        if !self.assigned.get() {
            let mut tpl = TopicPartitionList::new();
            for &p in &partitions {
                tpl.add_partition_offset(&self.topic, p, Offset::Beginning).expect("partition offset");
            }
            self.consumer.assign(&tpl).expect("assign");
            self.assigned.set(true);
        }
        let until = Instant::now() + Duration::from_millis(50) * Self::CYCLES;
        let mut read = self.read.borrow_mut();
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if let Some(Ok(m)) = self.consumer.poll(left) {
                let end = read.entry(m.partition()).or_insert(0);
                *end = (*end).max(m.offset() + 1);
                let record = microfunnel::core::xpart::XRecord::decode(m.payload().unwrap_or_default());
                if !matches!(record, Ok(microfunnel::core::xpart::XRecord::Progress { .. })) {
                    self.people.borrow_mut().insert(m.partition(), m.offset() + 1);
                }
            }
        }
        let topic = std::ffi::CString::new(self.topic.as_str()).expect("topic name");
        partitions
            .into_iter()
            .map(|p| {
                let listed = self.consumer.fetch_watermarks(&self.topic, p, Duration::from_secs(5)).map_or(0, |w| w.1);
                let (mut low, mut fetched) = (-1i64, -1i64);
                // SAFETY: the handle is valid while `self.consumer` lives; `topic` is
                // NUL-terminated and outlives the call, which only writes the out-parameters.
                unsafe {
                    rdkafka::bindings::rd_kafka_get_watermark_offsets(
                        self.consumer.client().native_ptr(),
                        topic.as_ptr(),
                        p,
                        &mut low,
                        &mut fetched,
                    );
                }
                (p, listed.max(fetched).max(read.get(&p).copied().unwrap_or(0)))
            })
            .collect()
    }
}

/// Whether the checkpoints of `shards` (all `partitions` of them, from `GET /shards`) cover
/// `messages` input messages and every partition of the identity topic up to its end: nothing
/// is in flight between the shards.
pub fn identity_settled(shards: &[Value], s: &Settings, messages: i64, partitions: usize, ends: &TopicEnds) -> bool {
    let (covered, _) = checkpoint_cover(shards);
    covered == messages && shards.len() == partitions && drained(shards, s, ends)
}

/// Whether every shard of `shards` (`GET /shards`, read before this call) held no identity
/// record at its last checkpoint and had read the identity topic to its end ([`TopicEnds`]).
fn drained(shards: &[Value], s: &Settings, ends: &TopicEnds) -> bool {
    drained_of(shards, s, ends, false)
}

/// [`drained`], or with `at_rest` (every horizon settled: `progress` records change nothing)
/// of the identity records that move people: outboxes and the topic's tail may hold renewals.
fn drained_of(shards: &[Value], s: &Settings, ends: &TopicEnds, at_rest: bool) -> bool {
    let topic = format!("{}.identity", s.kafka.group_id);
    // Records held in outboxes wait until the checkpoint covering them is durable, then are
    // sent and acknowledged by the next one's flush.
    let held = |sh: &Value| {
        let c = &sh["checkpoint"];
        c["outbox"].as_u64().unwrap_or(0) - if at_rest { c["outbox_progress"].as_u64().unwrap_or(0) } else { 0 }
    };
    if !shards.iter().all(|sh| held(sh) == 0) {
        return false;
    }
    let all = ends.ends();
    if at_rest && !ends.read_to(&all) {
        return false;
    }
    let ends = if at_rest { ends.people_ends() } else { all };
    shards.iter().all(|sh| {
        let p = sh["partition"].as_i64().unwrap() as i32;
        let end = ends.get(&p).copied().unwrap_or(if at_rest { 0 } else { i64::MAX });
        sh["checkpoint"]["positions"][&topic].as_i64().unwrap_or(0).max(0) >= end
    })
}

/// The prospect `id` resolves to, from whichever instance holds its shard.
pub fn prospect(instances: &[&Process], id: &str) -> Option<Value> {
    instances.iter().find_map(|i| {
        let (code, body) = http_get(i.addr(), &format!("/prospects/{id}"));
        (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
    })
}

/// How many times prospect view `p` counted `signal`.
pub fn count(p: &Value, signal: &str) -> u64 {
    p["signal_counts"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s[0] == signal))
        .and_then(|s| s[1].as_u64())
        .unwrap_or(0)
}

/// The partitions instance `i` holds.
pub fn held(i: &Process) -> BTreeSet<i64> {
    i.shards().unwrap_or_default().iter().map(|s| s["partition"].as_i64().unwrap()).collect()
}

/// kill -9 of the instance of `instances` that holds `partition` (it neither checkpoints nor
/// leaves the group), then waits until the one left holds all `partitions`: a member that joins
/// and leaves (again, if the first one left before the broker saw the death).
#[allow(dead_code)]
pub fn kill9_holder_of(
    instances: &mut Vec<Process>,
    partition: i64,
    s: &microfunnel::config::Settings,
    partitions: usize,
    limit: Duration,
) {
    let i = instances.iter().position(|i| held(i).contains(&partition)).expect("the partition is held");
    instances.remove(i).kill9();
    take_over(&instances[0], s, partitions, limit);
}

/// Waits until `survivor` holds all `partitions`, making the group move a dead member's
/// partitions to it ([`nudge_group`], again if the first nudge came before the broker saw the
/// death).
#[allow(dead_code)]
pub fn take_over(survivor: &Process, s: &microfunnel::config::Settings, partitions: usize, limit: Duration) {
    wait_until(limit, "the surviving instance holds every shard", || {
        if held(survivor).len() == partitions {
            return true;
        }
        nudge_group(s);
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if held(survivor).len() == partitions {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    });
}

/// Tansu hands a SIGKILLed member's partitions on only when another member joins or leaves:
/// a plain consumer of the group joins and leaves.
pub fn nudge_group(s: &microfunnel::config::Settings) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", s.kafka.brokers.as_str())
        .set("group.id", s.kafka.group_id.as_str())
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    let topics: Vec<&str> = s.kafka.input_topics.iter().map(String::as_str).collect();
    c.subscribe(&topics).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline && c.assignment().map_or(0, |a| a.count()) == 0 {
        c.poll(Duration::from_millis(100));
    }
    c.unsubscribe();
}
