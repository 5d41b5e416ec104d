//! The checkpoint writer thread: takes a shard's captured changelog records, appends them to
//! the changelog (if configured) and waits until they are durable, then saves them as a delta
//! on the shard's snapshot chain, recording the changelog position. After reporting, it
//! rewrites a chain whose deltas passed `checkpoint.rewrite_share` of its base into a new base
//! (from the files, `SnapshotStore::compact`). Record bytes are `store::changelog`; restoring a
//! shard from them is `restore.rs`.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Instant;

use crate::core::{Journey, PartsCopy, ProspectIx, SlotDigests};
use crate::store::{Batch, Changelog, ChangelogError, DeltaFacts, Header, Pending, SnapshotError, SnapshotStore};

/// What a checkpoint leaves in the snapshot store.
pub enum Part {
    /// A delta of the job's records on the chain ending at `DeltaFacts::prev`.
    Delta(DeltaFacts),
    /// Nothing more: the capture already wrote a base of this checkpoint (the store held no
    /// chain to follow); its header.
    Written(Box<Header>),
}

/// One shard's checkpoint, done off the processing thread: the changed prospects' changelog
/// records encoded and digested from the capture's copy, the records appended to the
/// changelog, then the delta that records the changelog position.
pub struct Job {
    /// The checkpoint's records other than its prospects' (`Batch::checkpoint_tail`), or all of
    /// them (a base written at the capture); the prospects' records are put before them here,
    /// from `copy`.
    pub batch: Batch,
    /// The changed prospects' parts, copied at the capture (`Engine::copy_changed`; empty when
    /// the batch already holds every record).
    pub copy: PartsCopy,
    /// The shard's digests per slot (with a snapshot store), brought up to date here from
    /// `copy`; the delta's digest is theirs.
    pub digests: Option<SlotDigests>,
    pub what: Pending,
    pub part: Part,
    /// When to give up waiting for the changelog's acknowledgements.
    pub deadline: Instant,
    /// The prospects changed since the previous checkpoint (indexes of the live engine).
    pub changed: Vec<ProspectIx>,
    /// Changelog tombstones owed (ids a crashed checkpoint wrote that the state never had).
    pub tombstones: Vec<String>,
    /// Identity of the live engine the capture came from (`Engine::lineage`).
    pub source: u64,
}

/// Why a checkpoint of one shard did not become durable.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointFailure {
    #[error("changelog: {0}")]
    Changelog(#[from] ChangelogError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// A finished (or failed) checkpoint of one shard.
pub struct Done {
    /// The job's record buffer (emptied, its memory let go) and copy, returned to be reused by
    /// the next capture.
    pub batch: Batch,
    pub copy: PartsCopy,
    /// The job's digests per slot, up to date with the capture.
    pub digests: Option<SlotDigests>,
    pub shard: i32,
    pub seq: u64,
    /// The snapshot header (`None` without a snapshot store).
    pub result: Result<Option<Header>, CheckpointFailure>,
    pub secs: f64,
    /// On failure (of the changelog or of the snapshot), the job's changed prospects and
    /// tombstones, which the next checkpoint must write again; empty on success.
    pub changed: Vec<ProspectIx>,
    pub tombstones: Vec<String>,
    pub source: u64,
}

/// The checkpoint writer: sends the changelog records, waits for their acknowledgement, then
/// writes and fsyncs the delta, all on its own thread, so a checkpoint holds up processing only
/// for the capture; then rewrites bases that are due.
pub struct Writer {
    jobs: Option<Sender<Job>>,
    pub done: Receiver<Done>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread; jobs go to `changelog` (if any), then `store` (if any), whose chains
    /// are rewritten into a base once their deltas reach `rewrite_share` of it.
    pub fn start(
        store: Option<Box<dyn SnapshotStore>>,
        changelog: Option<Arc<dyn Changelog>>,
        journey: Arc<Journey>,
        rewrite_share: f64,
    ) -> std::io::Result<Writer> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new().name("microfunnel-checkpoint".into()).spawn(move || {
            for mut job in rx {
                let started = Instant::now();
                let (shard, seq) = (job.what.shard, job.what.seq);
                let mut result = Ok(None);
                job.batch.prepend_copied(&job.copy, job.digests.as_mut());
                if let (Part::Delta(facts), Some(d)) = (&mut job.part, &job.digests) {
                    facts.digest = d.digest();
                }
                if let Some(changelog) = &changelog {
                    match changelog.append(shard, &job.batch, job.deadline) {
                        Ok(position) => job.what.changelog = Some(position),
                        Err(e) => result = Err(CheckpointFailure::from(e)),
                    }
                }
                if result.is_ok()
                    && let Some(store) = &store
                {
                    result = match job.part {
                        Part::Delta(facts) => store
                            .save_delta(job.what, facts, &job.batch, &journey)
                            .map(Some)
                            .map_err(CheckpointFailure::from),
                        Part::Written(header) => Ok(Some(*header)),
                    };
                }
                // A checkpoint that failed, at either step, hands back what it covered.
                let (changed, tombstones) = match result {
                    Ok(_) => (Vec::new(), Vec::new()),
                    Err(_) => (job.changed, job.tombstones),
                };
                let secs = started.elapsed().as_secs_f64();
                // The records are written: their buffer is let go here. The capture encodes only
                // the few records that are not prospects' into it (the prospects' are encoded
                // here, from the copy), so keeping it sized for the largest checkpoint would hold
                // memory for nothing.
                job.batch.release();
                let done = Done {
                    batch: job.batch,
                    copy: job.copy,
                    digests: job.digests,
                    shard,
                    seq,
                    result,
                    secs,
                    changed,
                    tombstones,
                    source: job.source,
                };
                if tx.send(done).is_err() {
                    break;
                }
                if let Some(store) = &store
                    && store.tip(shard).is_some_and(|t| t.due(rewrite_share))
                {
                    compact(store.as_ref(), shard, &journey);
                }
            }
        })?;
        Ok(Writer { jobs: Some(jobs), done, thread: Some(thread) })
    }

    pub fn submit(&self, job: Job) -> bool {
        self.jobs.as_ref().is_some_and(|j| j.send(job).is_ok())
    }
}

/// Rewrites `shard`'s chain into a new base; a failure leaves the chain as it is (logged).
fn compact(store: &dyn SnapshotStore, shard: i32, journey: &Arc<Journey>) {
    let started = Instant::now();
    match store.compact(shard, journey) {
        Ok(Some(h)) => tracing::info!(
            shard,
            seq = h.seq,
            bytes = h.body_len,
            secs = started.elapsed().as_secs_f64(),
            "snapshot base rewritten from base + deltas"
        ),
        Ok(None) => {}
        Err(e) => tracing::error!(shard, error = %e, "snapshot base rewrite failed; the chain stays as it is"),
    }
    release_free_memory();
}

/// Hands the memory a rewrite freed back to the OS: the shard's state decoded from its files
/// was allocated on this thread, and glibc keeps a thread's freed blocks in its arena, where
/// they would count in the process's resident memory as a second copy of the state.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free memory of the allocator's arenas to the OS; it
    // touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
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

/// The writer thread and the commit decision against an in-memory snapshot store: no broker, no
/// changelog (jobs without a changelog part go straight to the store).
#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::super::barrier::{Commit, InFlight};
    use super::super::restore::{self, ChangelogFacts, RestorePlan, SnapshotFacts};
    use super::*;
    use crate::codec::{self, Limits};
    use crate::core::{Engine, Journey, SlotDigests};
    use crate::store::MemStore;
    use crate::traffic::{Generator, Options};

    const SHARD: i32 = 0;

    fn journey() -> Arc<Journey> {
        Arc::new(Journey::from_toml_str(include_str!("../../deploy/journeys/b2b.toml")).unwrap())
    }

    fn topics() -> Vec<String> {
        vec!["web".to_string(), "crm".to_string()]
    }

    /// Feeds events `from..to` of a generated stream to `engine`.
    fn feed(engine: &mut Engine, from: usize, to: usize) {
        let journey = Arc::clone(engine.journey());
        let opts = Options { prospects: 200, seed: 15, malformed_share: 0.0, ..Options::default() };
        let mut g = Generator::new(opts, &journey, false).unwrap();
        let (mut line, mut key, mut outs) = (Vec::new(), String::new(), Vec::new());
        let limits = Limits::default();
        for n in 0..to {
            assert!(g.next_into(&mut line, &mut key).is_some(), "the stream has {to} events");
            if n >= from {
                let ev = codec::decode(&line, &journey, &limits).unwrap();
                engine.apply(&ev, &mut outs);
            }
        }
    }

    /// A live shard as the barrier keeps it: the engine, its digests per slot, the chain end.
    struct Live {
        engine: Engine,
        digests: SlotDigests,
        chained: u64,
    }

    /// A live engine fed with the first `events` events of the stream, whose store holds a base
    /// of the empty state at checkpoint 0 (as a restore of a new shard writes it).
    fn live(journey: &Arc<Journey>, store: &MemStore, events: usize) -> Live {
        let engine = Engine::new(Arc::clone(journey));
        store.save(pending(0, -1, -1), &engine).unwrap();
        let mut live = Live { digests: SlotDigests::of(&engine), engine, chained: 0 };
        feed(&mut live.engine, 0, events);
        live
    }

    fn pending(seq: u64, web: i64, crm: i64) -> Pending {
        let positions = topics().into_iter().zip([web, crm]).filter(|(_, n)| *n >= 0).collect();
        Pending {
            group: "g".to_string(),
            shard: SHARD,
            seq,
            written_at: "2026-01-01T00:00:00Z".to_string(),
            positions,
            changelog: None,
        }
    }

    /// Captures `live` as the barrier does: takes its changed prospects, encodes the records
    /// other than theirs, copies their parts (the writer encodes and digests them), and makes
    /// the job of checkpoint `seq` at input positions `web`, `crm`, a delta on the chain's end.
    fn job(live: &mut Live, seq: u64, web: i64, crm: i64, tombstones: &[&str]) -> Job {
        let (mut changed, mut freed) = (Vec::new(), Vec::new());
        live.engine.take_changed_slots(&mut changed, &mut freed);
        let what = pending(seq, web, crm);
        let tombstones: Vec<String> = tombstones.iter().map(|t| t.to_string()).collect();
        let mut batch = Batch::default();
        batch.checkpoint_tail(&live.engine, &tombstones, seq, &what.positions);
        let mut copy = PartsCopy::default();
        live.engine.copy_changed(&changed, &freed, Some(&live.digests), &mut copy);
        let facts = DeltaFacts { prev: live.chained, prospects: live.engine.len() as u64, digest: 0 };
        Job {
            batch,
            copy,
            digests: Some(std::mem::take(&mut live.digests)),
            what,
            part: Part::Delta(facts),
            deadline: Instant::now() + Duration::from_secs(30),
            changed,
            tombstones,
            source: live.engine.lineage(),
        }
    }

    fn run(writer: &Writer, job: Job) -> Done {
        assert!(writer.submit(job));
        writer.done.recv_timeout(Duration::from_secs(30)).expect("the writer reports the job")
    }

    /// The barrier's handling of a finished job: settles what it took; a failed one re-marks
    /// what it covered in the engine it was captured from.
    fn settle(live: &mut Live, done: &mut Done) -> Vec<String> {
        assert_eq!(done.source, live.engine.lineage());
        live.digests = done.digests.take().expect("the job's digests come back");
        live.engine.settle_taken(done.result.is_ok());
        if done.result.is_ok() {
            live.chained = done.seq;
        }
        done.changed.iter().for_each(|ix| live.engine.mark_changed(ix.0));
        done.tombstones.clone()
    }

    fn writer(store: &Arc<MemStore>, journey: &Arc<Journey>, share: f64) -> Writer {
        Writer::start(Some(Box::new(Arc::clone(store))), None, Arc::clone(journey), share).unwrap()
    }

    #[test]
    fn a_snapshot_that_cannot_be_written_fails_the_checkpoint_and_hands_back_what_it_covered() {
        let journey = journey();
        let store = Arc::new(MemStore::new("g", 3));
        let mut live = live(&journey, &store, 400);
        store.fail_saves(true);
        let writer = writer(&store, &journey, 100.0);
        let job = job(&mut live, 1, 400, 12, &["ghost-1", "ghost-2"]);
        let covered = job.changed.clone();
        assert!(covered.len() > 10, "the job covers the prospects fed ({})", covered.len());

        let done = run(&writer, job);
        assert!(
            matches!(done.result, Err(CheckpointFailure::Snapshot(SnapshotError::Io { .. }))),
            "a failed save fails the job: {:?}",
            done.result.as_ref().err()
        );
        assert_eq!((done.shard, done.seq), (SHARD, 1));
        assert_eq!(done.changed, covered, "the prospects it covered come back for re-marking");
        assert_eq!(done.tombstones, vec!["ghost-1".to_string(), "ghost-2".to_string()]);
        assert_eq!(done.source, live.engine.lineage());
        assert_eq!(store.list(SHARD).unwrap().len(), 1, "only the empty base is stored");
        assert_eq!(store.latest(SHARD).0.unwrap().header().seq, 0);

        // The commit decision for that checkpoint: nothing committed.
        let mut flight = InFlight::waiting_for(&[(SHARD, vec![400, 12]), (1, vec![70, -1])]);
        flight.reported(&done);
        assert!(!flight.complete());
        let other = Done { shard: 1, seq: 1, result: Ok(None), ..done };
        flight.reported(&other);
        assert!(flight.complete());
        assert_eq!(flight.offsets(&topics()), None);
    }

    #[test]
    fn a_saved_checkpoint_loads_back_with_its_digest_and_positions_and_restore_picks_it() {
        let journey = journey();
        let store = Arc::new(MemStore::new("g", 3));
        let mut live = live(&journey, &store, 500);
        let writer = writer(&store, &journey, 100.0);
        let job = job(&mut live, 1, 500, -1, &["ghost-1"]);

        let done = run(&writer, job);
        let header = match &done.result {
            Ok(Some(h)) => h.clone(),
            other => panic!("the save succeeds: {:?}", other.as_ref().err()),
        };
        assert!(done.changed.is_empty() && done.tombstones.is_empty(), "nothing to write again");
        assert_eq!(header.digest, format!("{:016x}", live.engine.digest()), "the delta's digest is the live state's");
        assert_eq!(header.prospects, live.engine.len() as u64);
        assert_eq!(header.prev, Some(0), "a delta on the empty base");

        let (latest, rejected) = store.latest(SHARD);
        assert!(rejected.is_empty());
        let loaded = latest.expect("the saved chain loads");
        assert_eq!(loaded.deltas.len(), 1);
        assert_eq!(loaded.header(), &header);
        assert_eq!(loaded.header().positions, BTreeMap::from([("web".to_string(), 500)]));
        let restored = loaded.engine(Arc::clone(&journey)).unwrap();
        assert_eq!(restored.digest(), live.engine.digest());
        assert_eq!(restored.len(), live.engine.len());
        assert_eq!(store.list(SHARD).unwrap().len(), 2, "the base and one delta");

        // Restore, given the store's facts, picks the snapshot; a shard it has nothing of replays.
        let facts = SnapshotFacts { changelog: loaded.header().changelog.as_ref() };
        assert_eq!(restore::plan(true, Some(facts), ChangelogFacts::Off), RestorePlan::Snapshot);
        let extent = ChangelogFacts::Extent { topic: "changelog", low: 0, high: 0 };
        assert_eq!(restore::plan(true, Some(facts), extent), RestorePlan::Snapshot);
        assert!(store.latest(7).0.is_none());
        assert_eq!(restore::plan(true, None, ChangelogFacts::Off), RestorePlan::Replay);

        // The commit decision: exactly the positions captured.
        let mut flight = InFlight::waiting_for(&[(SHARD, vec![500, -1])]);
        flight.reported(&done);
        let topics = topics();
        assert_eq!(flight.offsets(&topics), Some(vec![Commit { topic: "web", partition: SHARD, next: 500 }]));
    }

    #[test]
    fn after_a_failed_save_the_next_checkpoint_writes_the_re_marked_prospects() {
        let journey = journey();
        let store = Arc::new(MemStore::new("g", 3));
        let mut live = live(&journey, &store, 200);
        let writer = writer(&store, &journey, 100.0);

        // Checkpoint 1 is written; checkpoint 2 fails; checkpoint 3 succeeds.
        let mut done = run(&writer, job(&mut live, 1, 200, -1, &[]));
        assert!(matches!(done.result, Ok(Some(_))));
        settle(&mut live, &mut done);
        let first_digest = live.engine.digest();

        feed(&mut live.engine, 200, 600);
        store.fail_saves(true);
        let job2 = job(&mut live, 2, 600, 30, &["ghost-1"]);
        let covered = job2.changed.clone();
        assert!(covered.len() > 10, "checkpoint 2 covers the prospects fed since 1 ({})", covered.len());
        let mut failed = run(&writer, job2);
        assert!(failed.result.is_err());
        let mut owed = settle(&mut live, &mut failed);
        assert_eq!(owed, vec!["ghost-1".to_string()]);
        assert_eq!(store.latest(SHARD).0.unwrap().header().seq, 1, "the store still ends at checkpoint 1");

        store.fail_saves(false);
        owed.push("ghost-2".to_string());
        let owed: Vec<&str> = owed.iter().map(String::as_str).collect();
        feed(&mut live.engine, 600, 650);
        let job3 = job(&mut live, 3, 650, 30, &owed);
        // The re-marked prospects are part of the next checkpoint.
        assert!(covered.iter().all(|ix| job3.changed.contains(ix)), "the re-marked prospects are written again");
        assert_eq!(job3.tombstones, vec!["ghost-1".to_string(), "ghost-2".to_string()]);
        let done = run(&writer, job3);
        let header = match &done.result {
            Ok(Some(h)) => h.clone(),
            other => panic!("the save succeeds: {:?}", other.as_ref().err()),
        };
        assert_eq!(header.prev, Some(1), "delta 3 follows checkpoint 1, the last durable one");

        // The store holds the newer state, with the re-marked prospects in it.
        let loaded = store.latest(SHARD).0.expect("checkpoint 3 loads");
        assert_eq!(loaded.header(), &header);
        assert_eq!(loaded.header().positions, BTreeMap::from([("crm".to_string(), 30), ("web".to_string(), 650)]));
        let restored = loaded.engine(Arc::clone(&journey)).unwrap();
        assert_eq!(restored.digest(), live.engine.digest());
        assert_ne!(restored.digest(), first_digest);
        for &ix in &covered {
            let id = live.engine.prospect_id(ix);
            assert!(restored.find(id).is_some(), "{id} is in the snapshot");
        }
        let names: Vec<String> = store.list(SHARD).unwrap().iter().map(|p| p.display().to_string()).collect();
        let name = |n: u64, ext: &str| format!("mem:g/shard-0000/{n:020}.{ext}");
        assert_eq!(
            names,
            vec![name(3, "delta"), name(1, "delta"), name(0, "snap")],
            "the base and deltas 1 and 3, newest first; 2 never was"
        );
    }

    #[test]
    fn a_base_is_rewritten_from_base_and_deltas_once_they_pass_the_share() {
        let journey = journey();
        let store = Arc::new(MemStore::new("g", 2));
        let mut live = live(&journey, &store, 300);
        let writer = writer(&store, &journey, 0.5);
        let mut at: usize = 300;
        for seq in 1..=6 {
            let mut done = run(&writer, job(&mut live, seq, at as i64, -1, &[]));
            assert!(done.result.is_ok(), "checkpoint {seq}: {:?}", done.result.err());
            settle(&mut live, &mut done);
            feed(&mut live.engine, at, at + 150);
            at += 150;
        }
        // Wait for the writer to finish its last rewrite (it runs after reporting).
        drop(writer);
        let chain = store.latest(SHARD).0.unwrap();
        assert!(chain.base.header.seq > 0, "a later base was written: {:?}", store.list(SHARD).unwrap());
        assert!(chain.base.header.prev.is_none());
        let tip = store.tip(SHARD).unwrap();
        assert!(!tip.due(0.5) || tip.deltas == 0, "no rewrite left due: {tip:?}");
        let restored = chain.engine(Arc::clone(&journey)).unwrap();
        let seq = chain.header().seq;
        assert_eq!(seq, 6);
        // The live engine moved on by 150 events since checkpoint 6: compare with a replay.
        let mut expected = Engine::new(Arc::clone(&journey));
        feed(&mut expected, 0, 300 + 150 * 5);
        assert_eq!(restored.digest(), expected.digest(), "base + deltas equal the state at checkpoint 6");
        // Only the newest 2 bases are kept, with the deltas after the older one.
        let bases = store.list(SHARD).unwrap().iter().filter(|p| p.to_string_lossy().ends_with(".snap")).count();
        assert!(bases <= 2, "{:?}", store.list(SHARD).unwrap());
    }
}
