//! Checkpoint plumbing: changelog records and the checkpoint writer thread (restoring a shard
//! from them is `restore.rs`).
//!
//! Changelog partition p holds shard p's state as Kafka Streams keeps a store's changelog:
//! key = prospect id, value = `P` + the prospect record (a tombstone deletes a prospect that a
//! crashed checkpoint wrote but the state never had), and after each checkpoint's prospects a
//! checkpoint record (key [`META_KEY`], value `M` + seq + input positions + shard meta). A
//! restore applies prospect records only when a later checkpoint record confirms them; records
//! after the last checkpoint record belong to a checkpoint that did not finish and are
//! ignored (and rewritten or deleted at the next checkpoint).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Instant;

use rdkafka::producer::{BaseRecord, Producer};

use crate::core::snapshot::Enc;
use crate::core::{Engine, ProspectIx};
use crate::kafka::{self, OutputProducer};
use crate::snapshot::{ChangelogPosition, Header, Pending, SnapshotError, SnapshotStore};

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
