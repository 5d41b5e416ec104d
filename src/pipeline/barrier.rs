//! The checkpoint barrier: flush, capture, submit to the writer, and the commit decision.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};

use crate::core::SlotDigests;
use crate::kafka;
use crate::store::{DeltaFacts, Pending, SnapshotError};

use super::status::CheckpointStatus;
use super::writer::{self, Job, Part};
use super::{PipelineConsumer, PipelineError, State, wall_now};

/// Who executes a checkpoint's commit decision: the group's consumer (tests record it).
pub(super) trait Committer {
    fn commit(&self, offsets: &[Commit<'_>], mode: CommitMode) -> KafkaResult<()>;
}

impl Committer for PipelineConsumer {
    fn commit(&self, offsets: &[Commit<'_>], mode: CommitMode) -> KafkaResult<()> {
        let mut tpl = TopicPartitionList::new();
        for c in offsets {
            tpl.add_partition_offset(c.topic, c.partition, Offset::Offset(c.next))?;
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        Consumer::commit(self, &tpl, mode)
    }
}

/// A checkpoint whose snapshots are being written; its offsets are committed when all are done.
pub(super) struct InFlight {
    started: Instant,
    /// Shards whose writer job has not reported yet.
    waiting: BTreeSet<i32>,
    /// Per shard of the checkpoint, its positions (next offset per input topic, -1 = nothing read)
    /// as captured.
    commits: Vec<(i32, Vec<i64>)>,
    /// Whether a shard's job could not be submitted or reported a failure.
    failed: bool,
}

/// One input offset a checkpoint commits: the next offset to read of partition `partition` of
/// input topic `topic`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Commit<'a> {
    pub(super) topic: &'a str,
    pub(super) partition: i32,
    pub(super) next: i64,
}

impl InFlight {
    /// A checkpoint of no shard yet, started now.
    pub(super) fn new(shards: usize) -> InFlight {
        InFlight {
            started: Instant::now(),
            waiting: BTreeSet::new(),
            commits: Vec::with_capacity(shards),
            failed: false,
        }
    }

    /// A checkpoint waiting for the jobs of `shards` (shard, captured positions).
    #[cfg(test)]
    pub(super) fn waiting_for(shards: &[(i32, Vec<i64>)]) -> InFlight {
        let mut flight = InFlight::new(shards.len());
        for (p, positions) in shards {
            flight.waiting.insert(*p);
            flight.commits.push((*p, positions.clone()));
        }
        flight
    }

    /// Whether every shard's job reported.
    #[cfg(test)]
    pub(super) fn complete(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Takes in a shard's finished job: it no longer waits for it, and a failure fails the
    /// whole checkpoint.
    pub(super) fn reported(&mut self, done: &writer::Done) {
        self.waiting.remove(&done.shard);
        if done.result.is_err() {
            self.failed = true;
        }
    }

    /// The commit decision of a finished checkpoint (`topics` = `kafka.input_topics`): `None`
    /// when a shard failed, and then nothing at all is committed; otherwise exactly the
    /// positions captured for the checkpoint's shards, by shard then input topic, leaving out
    /// inputs with nothing read.
    pub(super) fn offsets<'a>(&self, topics: &'a [String]) -> Option<Vec<Commit<'a>>> {
        if self.failed {
            return None;
        }
        let mut offsets = Vec::new();
        for (p, positions) in &self.commits {
            for (t, &next) in topics.iter().zip(positions) {
                if next >= 0 {
                    offsets.push(Commit { topic: t, partition: *p, next });
                }
            }
        }
        Some(offsets)
    }
}

impl State {
    /// Flushes the producer until everything sent is acknowledged; fails on any refusal.
    fn flush(&mut self, deadline: Instant) -> Result<(), PipelineError> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PipelineError::FlushTimeout);
            }
            match kafka::flush(&self.producer, left.min(Duration::from_secs(5))) {
                Ok(()) => break,
                Err(e) => tracing::warn!(error = %e, "producer flush not finished yet"),
            }
        }
        self.unflushed = false;
        let failed = self.producer.context().failed.load(Ordering::Acquire);
        if failed > self.failed_seen {
            return Err(PipelineError::Undelivered(failed - self.failed_seen));
        }
        Ok(())
    }

    /// Starts a checkpoint of every shard that changed (module docs); with `wait`, also waits
    /// for its snapshots and commits. Without, the commit happens in [`State::poll_checkpoint`].
    pub(super) fn checkpoint(
        &mut self,
        consumer: &dyn Committer,
        mode: CommitMode,
        deadline: Instant,
        wait: bool,
    ) -> Result<(), PipelineError> {
        if self.in_flight.is_some() {
            if !wait {
                return Ok(());
            }
            self.poll_checkpoint(consumer, CommitMode::Sync, Some(deadline))?;
        }
        let started = Instant::now();
        self.since_barrier = 0;
        self.last_barrier = started;
        let due: Vec<i32> = self.shards.iter().filter(|(_, s)| s.due()).map(|(p, _)| *p).collect();
        self.shards.keys().filter(|p| !due.contains(p)).for_each(|p| self.metrics.shard_durable(*p));
        if self.unflushed || !due.is_empty() {
            self.flush(deadline)?;
        }
        if due.is_empty() {
            return Ok(());
        }
        let mut flight = InFlight { started, ..InFlight::new(due.len()) };
        let topics = &self.settings.kafka.input_topics;
        for p in due {
            let shard = self.shards.get_mut(&p).expect("due shards exist");
            shard.seq += 1;
            shard.engine.take_changed_slots(&mut shard.held, &mut shard.freed);
            // The flush above acknowledged the outbox sent at the previous checkpoint; what the
            // shard's calls produced since is this checkpoint's, sent once it is durable.
            shard.engine.seal_outbox();
            if self.identity.is_some() {
                self.metrics.identity_outbox(p, shard.engine.outbox_size());
            }
            let removed = shard.engine.take_removed();
            flight.commits.push((p, shard.positions.clone()));
            let Some(w) = &self.writer else {
                // Nothing persisted: the shard-level changes taken are dropped.
                shard.engine.settle_taken(true);
                continue;
            };
            shard.tombstones.extend(removed.into_iter().map(String::from));
            let what = Pending {
                group: self.settings.kafka.group_id.clone(),
                shard: p,
                seq: shard.seq,
                written_at: wall_now().to_string(),
                positions: shard.position_map(topics),
                changelog: None,
            };
            let tombstones = std::mem::take(&mut shard.tombstones);
            let changed = std::mem::take(&mut shard.held);
            let mut batch = std::mem::take(&mut shard.batch);
            let source = shard.engine.lineage();
            let mut copy = std::mem::take(&mut shard.copy);
            let mut digests = None;
            let part = match (&self.store, shard.chained) {
                // The pause: the records other than the prospects' encoded here, the changed
                // prospects' parts copied; the writer encodes and digests them from the copy.
                (Some(_), Some(prev)) => {
                    batch.checkpoint_tail(&shard.engine, &tombstones, shard.seq, &what.positions);
                    shard.engine.copy_changed(&changed, &shard.freed, Some(&shard.digests), &mut copy);
                    digests = Some(std::mem::take(&mut shard.digests));
                    // The digest is the writer's, from the copy.
                    Part::Delta(DeltaFacts { prev, prospects: shard.engine.len() as u64, digest: 0 })
                }
                // The store holds no chain this shard can follow (a restore could not write
                // its base): this checkpoint writes a base, here, from the live engine.
                (Some(store), None) => {
                    batch.checkpoint(&shard.engine, &changed, &tombstones, shard.seq, &what.positions);
                    copy.clear();
                    let base = Pending { changelog: None, ..what.clone() };
                    match store.save(base, &shard.engine) {
                        Ok(h) => {
                            shard.digests = SlotDigests::of(&shard.engine);
                            shard.chained = Some(shard.seq);
                            Part::Written(Box::new(h))
                        }
                        Err(e) => {
                            tracing::error!(shard = p, error = %e, "CHECKPOINT NOT DURABLE: snapshot base not written");
                            changed.iter().for_each(|ix| shard.engine.mark_changed(ix.0));
                            shard.engine.settle_taken(false);
                            shard.engine.settle_outbox(false);
                            shard.tombstones = tombstones;
                            shard.batch = batch;
                            shard.copy = copy;
                            flight.failed = true;
                            continue;
                        }
                    }
                }
                // No snapshot store: the writer only appends to the changelog.
                (None, _) => {
                    batch.checkpoint_tail(&shard.engine, &tombstones, shard.seq, &what.positions);
                    shard.engine.copy_changed(&changed, &[], None, &mut copy);
                    Part::Delta(DeltaFacts { prev: 0, prospects: 0, digest: 0 })
                }
            };
            let job = Job { batch, copy, digests, what, part, deadline, changed, tombstones, source };
            if w.submit(job) {
                flight.waiting.insert(p);
            } else {
                flight.failed = true;
                // The job (and the digests it carried) is gone with the writer.
                if self.store.is_some() {
                    shard.digests = SlotDigests::of(&shard.engine);
                }
            }
        }
        self.metrics.checkpoint_pause.observe(started.elapsed().as_secs_f64());
        self.in_flight = Some(flight);
        let block = wait.then_some(deadline);
        self.poll_checkpoint(consumer, if wait { CommitMode::Sync } else { mode }, block)?;
        // A checkpoint waited for (revoke, stop): the outboxes it made durable and sent are
        // acknowledged before the shards are given up.
        if wait && self.unflushed {
            self.flush(deadline)?;
        }
        Ok(())
    }

    /// Collects finished snapshot writes; once the in-flight checkpoint is complete, commits its
    /// offsets (or, if a write failed, reports it and commits nothing). With `block`, waits for
    /// completion until that deadline.
    pub(super) fn poll_checkpoint(
        &mut self,
        consumer: &dyn Committer,
        mode: CommitMode,
        block: Option<Instant>,
    ) -> Result<(), PipelineError> {
        let Some(flight) = self.in_flight.as_mut() else { return Ok(()) };
        while !flight.waiting.is_empty() {
            let done = match (&self.writer, block) {
                (None, _) => break,
                (Some(w), None) => match w.done.try_recv() {
                    Ok(d) => d,
                    Err(_) => return Ok(()),
                },
                (Some(w), Some(deadline)) => {
                    match w.done.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(d) => d,
                        Err(_) => {
                            self.in_flight = None;
                            self.metrics.checkpoints.with_label_values(&["failed"]).inc();
                            return Err(PipelineError::SnapshotTimeout);
                        }
                    }
                }
            };
            flight.reported(&done);
            let mut outbox = (0, 0);
            let shard = self.shards.get_mut(&done.shard).or_else(|| self.parked.get_mut(&done.shard));
            if let Some(shard) = shard {
                shard.batch = done.batch;
                shard.copy = done.copy;
                // What the checkpoint took is settled in the engine it came from: dropped once
                // durable, marked again on failure (and a store without the chain the delta
                // followed makes the next checkpoint write a base).
                if shard.engine.lineage() == done.source {
                    if let Some(d) = done.digests {
                        shard.digests = d;
                    }
                    shard.engine.settle_taken(done.result.is_ok());
                    if done.result.is_ok() {
                        if let Some(id) = &self.identity
                            && super::identity::send_outbox(
                                &mut self.identity_sink,
                                &self.producer,
                                &self.metrics,
                                &id.name,
                                &mut shard.engine,
                                &mut self.buf,
                            )
                        {
                            self.unflushed = true;
                        }
                    } else {
                        shard.engine.settle_outbox(false);
                    }
                    outbox = super::status::outbox_counts(&shard.engine);
                    if self.identity.is_some() {
                        self.metrics.identity_outbox(done.shard, shard.engine.outbox_size());
                    }
                    match &done.result {
                        Ok(Some(_)) => shard.chained = Some(done.seq),
                        Ok(None) => {}
                        Err(writer::CheckpointFailure::Snapshot(SnapshotError::NoChain { .. })) => shard.chained = None,
                        Err(_) => {}
                    }
                }
            }
            match done.result {
                Ok(None) => {}
                Ok(Some(header)) => {
                    let bytes = header.body_len as i64;
                    self.metrics.snapshot_bytes.with_label_values(&[&done.shard.to_string()]).set(bytes);
                    self.status.update(done.shard, |s| {
                        s.checkpoint = Some(CheckpointStatus {
                            seq: header.seq,
                            positions: header.positions.clone(),
                            digest: Some(header.digest.clone()),
                            prospects: header.prospects,
                            snapshot_seconds: done.secs,
                            outbox: outbox.0,
                            outbox_progress: outbox.1,
                        });
                    });
                    tracing::debug!(shard = done.shard, seq = done.seq, bytes, secs = done.secs, "snapshot written");
                }
                Err(e) => {
                    tracing::error!(shard = done.shard, seq = done.seq, error = %e, "CHECKPOINT NOT DURABLE: offsets stay uncommitted until a checkpoint succeeds");
                    // What the checkpoint covered is written again next time (if the shard still
                    // holds the engine those prospects belong to).
                    if let Some(shard) = self.shards.get_mut(&done.shard).or_else(|| self.parked.get_mut(&done.shard))
                        && shard.engine.lineage() == done.source
                    {
                        done.changed.iter().for_each(|ix| shard.engine.mark_changed(ix.0));
                        shard.tombstones.extend(done.tombstones);
                    }
                }
            }
        }
        let Some(flight) = self.in_flight.take() else { return Ok(()) };
        let topics = &self.settings.kafka.input_topics;
        let Some(offsets) = flight.offsets(topics) else {
            self.metrics.checkpoints.with_label_values(&["failed"]).inc();
            return Ok(());
        };
        consumer.commit(&offsets, mode)?;
        for (p, positions) in flight.commits {
            if self.shards.contains_key(&p) {
                self.metrics.shard_durable(p);
            }
            let mut outbox = (0, 0);
            if let Some(shard) = self.shards.get_mut(&p).or_else(|| self.parked.get_mut(&p)) {
                shard.checkpointed = positions.clone();
                outbox = super::status::outbox_counts(&shard.engine);
            }
            if self.store.is_none() {
                let positions =
                    topics.iter().zip(&positions).filter(|(_, n)| **n >= 0).map(|(t, n)| (t.clone(), *n)).collect();
                self.status.update(p, |s| {
                    s.checkpoint = Some(CheckpointStatus {
                        seq: s.checkpoint.as_ref().map_or(1, |c| c.seq + 1),
                        positions,
                        digest: None,
                        prospects: s.prospects,
                        snapshot_seconds: 0.0,
                        outbox: outbox.0,
                        outbox_progress: outbox.1,
                    });
                });
            }
        }
        self.metrics.checkpoints.with_label_values(&["ok"]).inc();
        self.metrics.checkpoint_seconds.observe(flight.started.elapsed().as_secs_f64());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Vec<String> {
        vec!["web".to_string(), "crm".to_string()]
    }

    fn flight(commits: Vec<(i32, Vec<i64>)>, failed: bool) -> InFlight {
        InFlight { started: Instant::now(), waiting: BTreeSet::new(), commits, failed }
    }

    #[test]
    fn a_failed_shard_means_nothing_is_committed() {
        let topics = topics();
        let f = flight(vec![(0, vec![10, 4]), (1, vec![7, 2])], true);
        assert_eq!(f.offsets(&topics), None);
        // Failed with nothing captured is still a failure, not an empty commit.
        assert_eq!(flight(Vec::new(), true).offsets(&topics), None);
    }

    #[test]
    fn commits_cover_only_the_positions_captured() {
        let topics = topics();
        // Shard 3 (not due) is absent; shard 0 read nothing of `crm` yet (-1).
        let f = flight(vec![(0, vec![10, -1]), (2, vec![7, 2])], false);
        let offsets = f.offsets(&topics).expect("no shard failed");
        let c = |topic, partition, next| Commit { topic, partition, next };
        assert_eq!(offsets, vec![c("web", 0, 10), c("web", 2, 7), c("crm", 2, 2)]);
        assert!(offsets.iter().all(|c| c.partition != 3 && c.next >= 0));
        assert_eq!(flight(Vec::new(), false).offsets(&topics), Some(Vec::new()));
    }
}
