//! Checkpoint plumbing: changelog records, the snapshot writer thread, and restoring a shard.
//!
//! Changelog partition p holds shard p's state as Kafka Streams keeps a store's changelog:
//! key = prospect id, value = `P` + the prospect record (a tombstone deletes a prospect that a
//! crashed checkpoint wrote but the state never had), and after each checkpoint's prospects a
//! checkpoint record (key [`META_KEY`], value `M` + seq + input positions + shard meta). A
//! restore applies prospect records only when a later checkpoint record confirms them; records
//! after the last checkpoint record belong to a checkpoint that did not finish and are
//! ignored (and rewritten or deleted at the next checkpoint).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Settings;
use crate::core::snapshot::{Dec, Enc};
use crate::core::{Engine, Journey, ProspectIx};
use crate::kafka::{self, OutputProducer};
use crate::snapshot::{ChangelogPosition, Header, Pending, SnapshotError, SnapshotStore};
use crate::telemetry::Metrics;

/// Key of the checkpoint records in the changelog (compaction keeps the newest).
pub const META_KEY: &[u8] = b"\0microfunnel.checkpoint";

/// Writes `engine`'s changed prospects, the tombstones owed, then the checkpoint record.
#[allow(clippy::too_many_arguments)]
pub fn write_changelog(
    producer: &OutputProducer,
    topic: &str,
    shard: i32,
    engine: &Engine,
    changed: &[ProspectIx],
    tombstones: &[String],
    seq: u64,
    positions: &BTreeMap<String, i64>,
    buf: &mut Vec<u8>,
) {
    for &ix in changed {
        buf.clear();
        buf.push(b'P');
        engine.encode_prospect(ix, buf);
        let key = engine.prospect_id(ix).as_bytes();
        kafka::send(producer, BaseRecord::to(topic).partition(shard).key(key).payload(&buf[..]));
    }
    for id in tombstones {
        if engine.find(id).is_none() {
            kafka::send(producer, BaseRecord::<[u8], [u8]>::to(topic).partition(shard).key(id.as_bytes()));
        }
    }
    buf.clear();
    buf.push(b'M');
    let mut w = Enc(buf);
    w.u64(seq);
    w.u32(positions.len() as u32);
    for (t, &next) in positions {
        w.bytes(t.as_bytes());
        w.i64(next);
    }
    engine.encode_meta(buf);
    kafka::send(producer, BaseRecord::to(topic).partition(shard).key(META_KEY).payload(&buf[..]));
}

/// A snapshot to write off the processing thread.
pub struct Job {
    pub engine: Engine,
    pub what: Pending,
}

/// A written (or failed) snapshot.
pub struct Done {
    /// The captured engine, returned to be reused by the next capture.
    pub spare: Engine,
    pub shard: i32,
    pub seq: u64,
    pub result: Result<Header, SnapshotError>,
    pub secs: f64,
}

/// The snapshot writer: encodes, writes and fsyncs on its own thread, so a checkpoint holds up
/// processing only for the state capture (a copy of the engine).
pub struct Writer {
    jobs: Option<Sender<Job>>,
    pub done: Receiver<Done>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(store: Box<dyn SnapshotStore>) -> std::io::Result<Writer> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new().name("microfunnel-snapshot".into()).spawn(move || {
            for job in rx {
                let started = Instant::now();
                let (shard, seq) = (job.what.shard, job.what.seq);
                let result = store.save(job.what, &job.engine);
                let done = Done { spare: job.engine, shard, seq, result, secs: started.elapsed().as_secs_f64() };
                if tx.send(done).is_err() {
                    break;
                }
            }
        })?;
        Ok(Writer { jobs: Some(jobs), done, thread: Some(thread) })
    }

    pub fn submit(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A shard's state as restored, and where its inputs continue.
pub struct Restored {
    pub engine: Engine,
    /// Next offset per input topic (missing = from the beginning).
    pub positions: BTreeMap<String, i64>,
    pub seq: u64,
    /// `snapshot`, `changelog`, `snapshot+changelog`, or `none` (replay from the beginning).
    pub source: &'static str,
    /// Ids a crashed checkpoint wrote to the changelog for prospects this state does not hold.
    pub tombstones: Vec<String>,
    /// Prospects whose changelog records are ahead of this state: rewrite them next time.
    pub rewrite: Vec<String>,
}

/// What restoring needs.
pub struct RestoreEnv<'a> {
    pub settings: &'a Settings,
    pub journey: &'a Arc<Journey>,
    pub store: Option<&'a dyn SnapshotStore>,
    pub changelog: Option<&'a str>,
    pub metrics: &'a Metrics,
}

/// Loads the newest valid snapshot, tops it up from the changelog, or rebuilds from the
/// changelog alone; with neither, the shard starts empty and replays its inputs.
pub fn restore(shard: i32, env: &RestoreEnv<'_>) -> Restored {
    let mut base: Base = None;
    if let Some(store) = env.store {
        let (latest, rejected) = store.latest(shard);
        for e in &rejected {
            tracing::error!(shard, error = %e, "snapshot unusable; trying the previous one");
        }
        if let Some(c) = latest {
            match c.engine(Arc::clone(env.journey)) {
                Ok(engine) => {
                    env.metrics.restore_records.with_label_values(&["snapshot"]).inc_by(engine.len() as u64);
                    env.metrics.restore_bytes.with_label_values(&["snapshot"]).inc_by(c.body.len() as u64);
                    tracing::info!(shard, seq = c.header.seq, prospects = engine.len(), file = %c.path.display(), "snapshot loaded");
                    let from = c.header.changelog.as_ref().filter(|p| Some(p.topic.as_str()) == env.changelog);
                    base = Some(Box::new((engine, c.header.positions.clone(), c.header.seq, from.map(|p| p.next))));
                }
                Err(e) => tracing::error!(shard, error = %e, "snapshot unusable"),
            }
        }
    }
    let had_snapshot = base.is_some();
    if let Some(topic) = env.changelog {
        // A snapshot written with the changelog off has no position: it is used as it is.
        let from = match base.as_deref() {
            None => Some(Offset::Beginning),
            Some((_, _, _, Some(next))) => Some(Offset::Offset(*next)),
            Some((_, _, _, None)) => None,
        };
        if let Some(from) = from {
            match read_changelog(shard, topic, from, base.take(), env) {
                Ok(r) => return r,
                Err(failed) => {
                    let (e, back) = *failed;
                    tracing::error!(shard, error = %e, "changelog unreadable; using the local snapshot or replaying");
                    base = back;
                }
            }
        }
    }
    match base.map(|b| *b) {
        Some((engine, positions, seq, _)) => {
            Restored { engine, positions, seq, source: "snapshot", tombstones: Vec::new(), rewrite: Vec::new() }
        }
        None => {
            if had_snapshot {
                tracing::error!(shard, "state lost; replaying the inputs from the beginning");
            }
            Restored {
                engine: Engine::new(Arc::clone(env.journey)),
                positions: BTreeMap::new(),
                seq: 0,
                source: "none",
                tombstones: Vec::new(),
                rewrite: Vec::new(),
            }
        }
    }
}

/// A loaded snapshot: engine, input positions, sequence, changelog position.
type Base = Option<Box<(Engine, BTreeMap<String, i64>, u64, Option<i64>)>>;

fn read_changelog(
    shard: i32,
    topic: &str,
    from: Offset,
    base: Base,
    env: &RestoreEnv<'_>,
) -> Result<Restored, Box<(KafkaError, Base)>> {
    let k = &env.settings.kafka;
    let consumer: BaseConsumer<QuietEof> = match kafka::base_config(k)
        .set("group.id", format!("{}-restore", k.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create_with_context(QuietEof)
    {
        Ok(c) => c,
        Err(e) => return Err(Box::new((e, base))),
    };
    let mut tpl = TopicPartitionList::new();
    if let Err(e) = tpl.add_partition_offset(topic, shard, from) {
        return Err(Box::new((e, base)));
    }
    if let Err(e) = consumer.assign(&tpl) {
        return Err(Box::new((e, base)));
    }
    let had_base = base.is_some();
    // Nothing to read (the common case for a new deployment or an up-to-date snapshot): skip
    // the polling. The end is the broker's high watermark, as everywhere in Kafka.
    let empty = match consumer.fetch_watermarks(topic, shard, Duration::from_secs(10)) {
        Ok((low, high)) => high <= low || matches!(from, Offset::Offset(o) if o >= high),
        Err(e) => return Err(Box::new((e, base))),
    };
    let (mut engine, mut positions, mut seq) = match base.map(|b| *b) {
        Some((e, p, s, _)) => (e, p, s),
        None => (Engine::new(Arc::clone(env.journey)), BTreeMap::new(), 0),
    };
    let mut staged: HashMap<Vec<u8>, Option<Vec<u8>>> = HashMap::new();
    let (mut records, mut bytes, mut metas) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if empty {
            break;
        }
        if Instant::now() > deadline {
            return Err(Box::new((KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut), None)));
        }
        let msg = match consumer.poll(Duration::from_millis(100)) {
            None => continue,
            Some(Err(KafkaError::PartitionEOF(_))) => break,
            Some(Err(e)) => {
                tracing::warn!(shard, error = %e, "reading the changelog");
                continue;
            }
            Some(Ok(m)) => m,
        };
        let key = msg.key().unwrap_or_default();
        let payload = msg.payload();
        bytes += (key.len() + payload.map_or(0, <[u8]>::len)) as u64;
        if key == META_KEY {
            let Some(meta) = payload.and_then(|p| p.strip_prefix(b"M")) else { continue };
            let mut r = Dec::new(meta);
            let parsed = (|| {
                let s = r.u64("checkpoint seq")?;
                let n = r.u32("positions")?;
                let mut pos = BTreeMap::new();
                for _ in 0..n {
                    let t = r.str("topic")?.to_string();
                    pos.insert(t, r.i64("position")?);
                }
                Ok::<_, crate::core::StateError>((s, pos))
            })();
            let (s, pos) = match parsed {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(shard, offset = msg.offset(), error = %e, "bad checkpoint record in the changelog; skipped");
                    continue;
                }
            };
            if let Err(e) = engine.decode_meta(&mut r) {
                tracing::error!(shard, offset = msg.offset(), error = %e, "bad checkpoint record in the changelog; skipped");
                continue;
            }
            for (id, rec) in staged.drain() {
                let Some(rec) = rec else { continue };
                let Ok(id) = std::str::from_utf8(&id) else { continue };
                let Some(body) = rec.strip_prefix(b"P") else { continue };
                match engine.decode_prospect(&mut Dec::new(body)) {
                    Ok(decoded) => {
                        if engine.install(id, decoded).is_err() {
                            tracing::error!(shard, "prospect arena full while restoring");
                        }
                        records += 1;
                    }
                    Err(e) => tracing::error!(shard, error = %e, "bad prospect record in the changelog; skipped"),
                }
            }
            positions = pos;
            seq = s;
            metas += 1;
        } else {
            staged.insert(key.to_vec(), payload.map(<[u8]>::to_vec));
        }
    }
    env.metrics.restore_records.with_label_values(&["changelog"]).inc_by(records);
    env.metrics.restore_bytes.with_label_values(&["changelog"]).inc_by(bytes);
    // Records of a checkpoint that never finished: the state does not hold them, so the next
    // checkpoint rewrites those prospects (or deletes ids the state never had).
    let (mut tombstones, mut rewrite) = (Vec::new(), Vec::new());
    for id in staged.into_keys() {
        let Ok(id) = String::from_utf8(id) else { continue };
        if engine.find(&id).is_some() { rewrite.push(id) } else { tombstones.push(id) }
    }
    engine.take_changed();
    let source = match (had_base, metas > 0) {
        (true, true) => "snapshot+changelog",
        (true, false) => "snapshot",
        (false, true) => "changelog",
        (false, false) => "none",
    };
    tracing::info!(
        shard,
        source,
        checkpoints = metas,
        records,
        seq,
        unfinished = tombstones.len() + rewrite.len(),
        "changelog read"
    );
    Ok(Restored { engine, positions, seq, source, tombstones, rewrite })
}

/// The restore reader's client context: reaching the end of the partition is how a restore
/// knows it is done, not an error worth a log line.
struct QuietEof;

impl rdkafka::ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_))
            && error.rdkafka_error_code() != Some(RDKafkaErrorCode::PartitionEOF)
        {
            tracing::error!(error = %error, reason, "changelog reader");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for QuietEof {}

/// Where the changelog stands after `shard`'s last acknowledged record.
pub fn changelog_position(producer: &OutputProducer, topic: &str, shard: i32) -> Option<ChangelogPosition> {
    producer.context().changelog_acked(shard).map(|o| ChangelogPosition { topic: topic.to_string(), next: o + 1 })
}
