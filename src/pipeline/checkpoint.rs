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
use std::sync::atomic::Ordering;
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

use super::status::RestoreSource;

/// Key of the checkpoint records in the changelog (compaction keeps the newest).
pub const META_KEY: &[u8] = b"\0microfunnel.checkpoint";

/// Writes `engine`'s changed prospects, the tombstones owed, then the checkpoint record.
/// Returns how many records were enqueued, or `Err` if one could not be.
#[allow(clippy::too_many_arguments)]
pub fn write_changelog(
    producer: &OutputProducer,
    topic: &str,
    shard: i32,
    engine: &Engine,
    changed: &[ProspectIx],
    tombstones: &[String],
    buf: &mut Vec<u8>,
) -> Result<u64, String> {
    let mut sent = 0u64;
    let mut put = |record: BaseRecord<'_, [u8], [u8]>| {
        if kafka::send(producer, record) {
            sent += 1;
            Ok(())
        } else {
            Err(format!("a changelog record for shard {shard} could not be enqueued"))
        }
    };
    for &ix in changed {
        buf.clear();
        buf.push(b'P');
        engine.encode_changelog_record(ix, buf);
        let key = engine.prospect_id(ix).as_bytes();
        put(BaseRecord::to(topic).partition(shard).key(key).payload(&buf[..]))?;
    }
    for id in tombstones {
        if engine.find(id).is_none() {
            put(BaseRecord::<[u8], [u8]>::to(topic).partition(shard).key(id.as_bytes()))?;
        }
    }
    Ok(sent)
}

/// Sends the checkpoint record that closes a shard's changelog records: sequence, input
/// positions and the engine's meta state, under [`META_KEY`].
pub fn write_changelog_meta(
    producer: &OutputProducer,
    topic: &str,
    shard: i32,
    engine: &Engine,
    seq: u64,
    positions: &BTreeMap<String, i64>,
    buf: &mut Vec<u8>,
) -> Result<(), String> {
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
    if kafka::send(producer, BaseRecord::to(topic).partition(shard).key(META_KEY).payload(&buf[..])) {
        Ok(())
    } else {
        Err(format!("the checkpoint record for shard {shard} could not be enqueued"))
    }
}

/// The changelog part of a checkpoint, done by the writer thread.
pub struct ChangelogJob {
    pub producers: Arc<kafka::ChangelogProducers>,
    /// The prospects changed since the previous checkpoint (indexes of the captured engine).
    pub changed: Vec<ProspectIx>,
    pub tombstones: Vec<String>,
    /// When to give up waiting for the broker's acknowledgements.
    pub deadline: Instant,
}

/// One shard's checkpoint, done off the processing thread: changelog records (encoded from the
/// captured engine), then the snapshot file that records the changelog position.
pub struct Job {
    pub engine: Engine,
    pub what: Pending,
    pub changelog: Option<ChangelogJob>,
    /// Identity of the live engine the capture came from ([`Engine::lineage`]).
    pub source: u64,
}

/// Why a checkpoint of one shard did not become durable.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointFailure {
    #[error("changelog: {0}")]
    Changelog(String),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// A finished (or failed) checkpoint of one shard.
pub struct Done {
    /// The captured engine, returned to be reused by the next capture.
    pub spare: Engine,
    pub shard: i32,
    pub seq: u64,
    /// The snapshot header (`None` without a snapshot store).
    pub result: Result<Option<Header>, CheckpointFailure>,
    pub secs: f64,
    /// On failure, what the next checkpoint must write again.
    pub changed: Vec<ProspectIx>,
    pub tombstones: Vec<String>,
    pub source: u64,
}

/// The checkpoint writer: encodes and sends the changelog records, waits for their
/// acknowledgement, then encodes, writes and fsyncs the snapshot, all on its own thread, so a
/// checkpoint holds up processing only for the state capture.
pub struct Writer {
    jobs: Option<Sender<Job>>,
    pub done: Receiver<Done>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(store: Option<Box<dyn SnapshotStore>>) -> std::io::Result<Writer> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new().name("microfunnel-checkpoint".into()).spawn(move || {
            let mut buf = Vec::new();
            for mut job in rx {
                let started = Instant::now();
                let (shard, seq) = (job.what.shard, job.what.seq);
                let mut result = Ok(None);
                let (mut changed, mut tombstones) = (Vec::new(), Vec::new());
                if let Some(c) = job.changelog.take() {
                    match changelog_durable(&c, &job, &mut buf) {
                        Ok(position) => job.what.changelog = Some(position),
                        Err(e) => {
                            result = Err(CheckpointFailure::Changelog(e));
                            (changed, tombstones) = (c.changed, c.tombstones);
                        }
                    }
                }
                if result.is_ok()
                    && let Some(store) = &store
                {
                    result = store.save(job.what, &job.engine).map(Some).map_err(CheckpointFailure::from);
                }
                let secs = started.elapsed().as_secs_f64();
                let done =
                    Done { spare: job.engine, shard, seq, result, secs, changed, tombstones, source: job.source };
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

/// Writes a checkpoint's changelog records and waits until the broker acknowledged every one;
/// returns the changelog position after them.
///
/// The prospect records go through a producer that reports failures only: once it is flushed
/// with no new failure, all of them are in the log. Then the checkpoint record goes through a
/// second producer whose report carries its offset, which is past every prospect record of the
/// checkpoint: the position after it is the checkpoint's changelog position.
fn changelog_durable(c: &ChangelogJob, job: &Job, buf: &mut Vec<u8>) -> Result<ChangelogPosition, String> {
    let shard = job.what.shard;
    let (topic, records, marker) = (&c.producers.topic, &c.producers.records, &c.producers.marker);
    let failed_before = records.context().failed.load(Ordering::Acquire);
    let sent = write_changelog(records, topic, shard, &job.engine, &c.changed, &c.tombstones, buf)?;
    if let Some(m) = &records.context().metrics {
        m.sent.changelog.inc_by(sent);
    }
    let left = c.deadline.saturating_duration_since(Instant::now());
    if kafka::flush(records, left).is_err() {
        return Err(format!("changelog records of shard {shard} ({sent}) not acknowledged before the deadline"));
    }
    let failed = records.context().failed.load(Ordering::Acquire) - failed_before;
    if failed > 0 {
        return Err(format!("{failed} changelog records of shard {shard} refused by the broker"));
    }
    let before = marker.context().changelog_acks(shard);
    write_changelog_meta(marker, topic, shard, &job.engine, job.what.seq, &job.what.positions, buf)?;
    if let Some(m) = &marker.context().metrics {
        m.sent.changelog.inc();
    }
    loop {
        let now = marker.context().changelog_acks(shard);
        if now.failed > before.failed {
            return Err(format!("the checkpoint record of shard {shard} was refused by the broker"));
        }
        if now.delivered > before.delivered {
            return Ok(ChangelogPosition { topic: topic.clone(), next: now.last + 1 });
        }
        if Instant::now() >= c.deadline {
            return Err(format!("the checkpoint record of shard {shard} was not acknowledged before the deadline"));
        }
        // Serves the marker producer's delivery reports (only this thread polls it).
        kafka::serve_and_nap(marker);
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
    /// Where the state came from.
    pub source: RestoreSource,
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
        Some((engine, positions, seq, _)) => Restored {
            engine,
            positions,
            seq,
            source: RestoreSource::Snapshot,
            tombstones: Vec::new(),
            rewrite: Vec::new(),
        },
        None => {
            if had_snapshot {
                tracing::error!(shard, "state lost; replaying the inputs from the beginning");
            }
            Restored {
                engine: Engine::new(Arc::clone(env.journey)),
                positions: BTreeMap::new(),
                seq: 0,
                source: RestoreSource::Replay,
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
                match engine.decode_changelog_record(&mut Dec::new(body)) {
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
        (true, true) => RestoreSource::SnapshotAndChangelog,
        (true, false) => RestoreSource::Snapshot,
        (false, true) => RestoreSource::Changelog,
        (false, false) => RestoreSource::Replay,
    };
    tracing::info!(
        shard,
        source = source.as_str(),
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
