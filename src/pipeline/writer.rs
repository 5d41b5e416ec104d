//! The checkpoint writer thread: takes a captured shard, appends its changed prospects to the
//! changelog (if configured) and waits until they are durable, then saves the snapshot that
//! records the changelog position. Record bytes are `store::changelog`; restoring a shard from
//! them is `restore.rs`.

use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Instant;

use crate::core::{Engine, ProspectIx};
use crate::store::{Batch, Changelog, ChangelogError, Header, Pending, SnapshotError, SnapshotStore};

/// One shard's checkpoint, done off the processing thread: changelog records (encoded from the
/// captured engine), then the snapshot file that records the changelog position.
pub struct Job {
    pub engine: Engine,
    pub what: Pending,
    /// When to give up waiting for the changelog's acknowledgements.
    pub deadline: Instant,
    /// The prospects changed since the previous checkpoint (indexes of the captured engine).
    pub changed: Vec<ProspectIx>,
    /// Changelog tombstones owed (ids a crashed checkpoint wrote that the state never had).
    pub tombstones: Vec<String>,
    /// Identity of the live engine the capture came from ([`Engine::lineage`]).
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
    /// The captured engine, returned to be reused by the next capture.
    pub spare: Engine,
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

/// The checkpoint writer: encodes and sends the changelog records, waits for their
/// acknowledgement, then encodes, writes and fsyncs the snapshot, all on its own thread, so a
/// checkpoint holds up processing only for the state capture.
pub struct Writer {
    jobs: Option<Sender<Job>>,
    pub done: Receiver<Done>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the thread; jobs go to `changelog` (if any), then `store` (if any).
    pub fn start(
        store: Option<Box<dyn SnapshotStore>>,
        changelog: Option<Arc<dyn Changelog>>,
    ) -> std::io::Result<Writer> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new().name("microfunnel-checkpoint".into()).spawn(move || {
            let mut batch = Batch::default();
            for mut job in rx {
                let started = Instant::now();
                let (shard, seq) = (job.what.shard, job.what.seq);
                let mut result = Ok(None);
                if let Some(changelog) = &changelog {
                    batch.checkpoint(&job.engine, &job.changed, &job.tombstones, seq, &job.what.positions);
                    match changelog.append(shard, &batch, job.deadline) {
                        Ok(position) => job.what.changelog = Some(position),
                        Err(e) => result = Err(CheckpointFailure::from(e)),
                    }
                }
                if result.is_ok()
                    && let Some(store) = &store
                {
                    result = store.save(job.what, &job.engine).map(Some).map_err(CheckpointFailure::from);
                }
                // A checkpoint that failed, at either step, hands back what it covered.
                let (changed, tombstones) = match result {
                    Ok(_) => (Vec::new(), Vec::new()),
                    Err(_) => (job.changed, job.tombstones),
                };
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
    use crate::core::Journey;
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

    /// A live engine fed with the first `events` events of the stream.
    fn live(journey: &Arc<Journey>, events: usize) -> Engine {
        let mut engine = Engine::new(Arc::clone(journey));
        feed(&mut engine, 0, events);
        engine
    }

    /// Captures `engine` as the barrier does: takes its changed prospects, copies it into the
    /// spare, and makes the job of checkpoint `seq` at input positions `web`, `crm`.
    fn job(engine: &mut Engine, spare: Engine, seq: u64, web: i64, crm: i64, tombstones: &[&str]) -> Job {
        let mut spare = spare;
        let changed = engine.take_changed();
        engine.capture_into(&mut spare);
        let positions = topics().into_iter().zip([web, crm]).filter(|(_, n)| *n >= 0).collect();
        let what = Pending {
            group: "g".to_string(),
            shard: SHARD,
            seq,
            written_at: "2026-01-01T00:00:00Z".to_string(),
            positions,
            changelog: None,
        };
        let tombstones = tombstones.iter().map(|t| t.to_string()).collect();
        Job {
            engine: spare,
            what,
            deadline: Instant::now() + Duration::from_secs(30),
            changed,
            tombstones,
            source: engine.lineage(),
        }
    }

    fn run(writer: &Writer, job: Job) -> Done {
        assert!(writer.submit(job));
        writer.done.recv_timeout(Duration::from_secs(30)).expect("the writer reports the job")
    }

    /// The barrier's handling of a failed job: re-marks what it covered in the engine it was
    /// captured from.
    fn re_mark(engine: &mut Engine, done: &Done) -> Vec<String> {
        assert_eq!(done.source, engine.lineage());
        done.changed.iter().for_each(|ix| engine.mark_changed(ix.0));
        done.tombstones.clone()
    }

    #[test]
    fn a_snapshot_that_cannot_be_written_fails_the_checkpoint_and_hands_back_what_it_covered() {
        let journey = journey();
        let store = Arc::new(MemStore::new("g", 3));
        store.fail_saves(true);
        let writer = Writer::start(Some(Box::new(Arc::clone(&store))), None).unwrap();
        let mut engine = live(&journey, 400);
        let job = job(&mut engine, Engine::new(Arc::clone(&journey)), 1, 400, 12, &["ghost-1", "ghost-2"]);
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
        assert_eq!(done.source, engine.lineage());
        assert!(store.list(SHARD).unwrap().is_empty(), "nothing was stored");
        assert!(store.latest(SHARD).0.is_none());

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
        let writer = Writer::start(Some(Box::new(Arc::clone(&store))), None).unwrap();
        let mut engine = live(&journey, 500);
        let job = job(&mut engine, Engine::new(Arc::clone(&journey)), 1, 500, -1, &["ghost-1"]);

        let done = run(&writer, job);
        let header = match &done.result {
            Ok(Some(h)) => h.clone(),
            other => panic!("the save succeeds: {:?}", other.as_ref().err()),
        };
        assert!(done.changed.is_empty() && done.tombstones.is_empty(), "nothing to write again");
        assert_eq!(header.digest, format!("{:016x}", engine.digest()));
        assert_eq!(header.prospects, engine.len() as u64);

        let (latest, rejected) = store.latest(SHARD);
        assert!(rejected.is_empty());
        let loaded = latest.expect("the saved snapshot loads");
        assert_eq!(loaded.header, header);
        assert_eq!(loaded.header.seq, 1);
        assert_eq!(loaded.header.positions, BTreeMap::from([("web".to_string(), 500)]));
        let restored = loaded.engine(Arc::clone(&journey)).unwrap();
        assert_eq!(restored.digest(), engine.digest());
        assert_eq!(restored.len(), engine.len());
        assert_eq!(store.list(SHARD).unwrap().len(), 1);

        // Restore, given the store's facts, picks the snapshot; a shard it has nothing of replays.
        let facts = SnapshotFacts { changelog: loaded.header.changelog.as_ref() };
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
        let writer = Writer::start(Some(Box::new(Arc::clone(&store))), None).unwrap();

        // Checkpoint 1 is written; checkpoint 2 fails; checkpoint 3 succeeds.
        let mut engine = live(&journey, 200);
        let done = run(&writer, job(&mut engine, Engine::new(Arc::clone(&journey)), 1, 200, -1, &[]));
        assert!(matches!(done.result, Ok(Some(_))));
        let first_digest = engine.digest();

        feed(&mut engine, 200, 600);
        store.fail_saves(true);
        let job2 = job(&mut engine, done.spare, 2, 600, 30, &["ghost-1"]);
        let covered = job2.changed.clone();
        assert!(covered.len() > 10, "checkpoint 2 covers the prospects fed since 1 ({})", covered.len());
        let failed = run(&writer, job2);
        assert!(failed.result.is_err());
        let mut owed = re_mark(&mut engine, &failed);
        assert_eq!(owed, vec!["ghost-1".to_string()]);
        assert_eq!(store.latest(SHARD).0.unwrap().header.seq, 1, "the store still holds checkpoint 1");

        store.fail_saves(false);
        owed.push("ghost-2".to_string());
        let owed: Vec<&str> = owed.iter().map(String::as_str).collect();
        feed(&mut engine, 600, 650);
        let job3 = job(&mut engine, failed.spare, 3, 650, 30, &owed);
        // The re-marked prospects are part of the next checkpoint.
        assert!(covered.iter().all(|ix| job3.changed.contains(ix)), "the re-marked prospects are written again");
        assert_eq!(job3.tombstones, vec!["ghost-1".to_string(), "ghost-2".to_string()]);
        let done = run(&writer, job3);
        let header = match &done.result {
            Ok(Some(h)) => h.clone(),
            other => panic!("the save succeeds: {:?}", other.as_ref().err()),
        };

        // The store holds the newer state, with the re-marked prospects in it.
        let loaded = store.latest(SHARD).0.expect("checkpoint 3 loads");
        assert_eq!(loaded.header, header);
        assert_eq!(loaded.header.seq, 3);
        assert_eq!(loaded.header.positions, BTreeMap::from([("crm".to_string(), 30), ("web".to_string(), 650)]));
        let restored = loaded.engine(Arc::clone(&journey)).unwrap();
        assert_eq!(restored.digest(), engine.digest());
        assert_ne!(restored.digest(), first_digest);
        for &ix in &covered {
            assert!(restored.find(engine.prospect_id(ix)).is_some(), "{} is in the snapshot", engine.prospect_id(ix));
        }
        let names: Vec<String> = store.list(SHARD).unwrap().iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            names,
            vec![format!("mem:g/shard-0000/{:020}.snap", 3), format!("mem:g/shard-0000/{:020}.snap", 1)],
            "checkpoints 3 and 1 are stored, newest first; 2 never was"
        );
    }
}
