//! The consumer context and its rebalance callbacks: `assign` (restore, see `restore.rs`, or
//! resume a parked shard, and seek each partition to what its state covers) and `revoke` (checkpoint, then park).

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

use crate::core::SlotDigests;
use crate::store::{Pending, SnapshotStore};

use super::barrier::Committer;
use super::restore::{self, RestoreEnv};
use super::shard::Shard;
use super::status::{CheckpointStatus, RestoreSource, ShardState, ShardStatus};
use super::{State, wall_now};

pub struct PipelineContext {
    pub(super) state: Mutex<State>,
}

impl PipelineContext {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        // A poisoned lock means a panic mid-event on this thread; its state is still
        // consistent at event granularity, and the process is exiting anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl ClientContext for PipelineContext {}

impl ConsumerContext for PipelineContext {
    /// Replaces librdkafka's default handling so an assignment starts each partition at the
    /// offsets its restored state covers (not at the group's committed offsets).
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.lock().assign(tpl);
                let r = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = r {
                    tracing::error!(error = %e, "cannot take the assignment");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.lock().revoke(consumer, tpl);
                let r = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = r {
                    tracing::error!(error = %e, "cannot give up the assignment");
                }
            }
            other => {
                tracing::error!(error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(error = %e, "offset commit failed; it is retried at the next checkpoint");
        }
    }
}

pub type PipelineConsumer = BaseConsumer<PipelineContext>;

impl State {
    /// Restores the shards of a new assignment and points every partition at the offsets its
    /// state covers.
    pub(super) fn assign(&mut self, tpl: &mut TopicPartitionList) {
        let partitions: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        self.take_shards(&partitions);
        // Each partition continues where its state ends.
        let elements: Vec<(String, i32)> =
            tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect();
        for (t, p) in elements {
            if let Err(err) = tpl.set_partition_offset(&t, p, self.start_offset(&t, p)) {
                tracing::error!(error = %err, topic = %t, partition = p, "cannot set the start offset");
            }
        }
    }

    /// Where input `topic` of shard `p` continues: where its state ends; no state = from the
    /// beginning (replay), unless nothing is persisted at all (then the group's committed
    /// offsets, state empty).
    pub(super) fn start_offset(&self, topic: &str, p: i32) -> Offset {
        let i = self.settings.kafka.input_topics.iter().position(|x| x == topic).unwrap_or(0);
        let pos = self.shards.get(&p).map_or(-1, |s| s.positions[i]);
        // A CRM topic whose memory is being rebuilt (restored from a state without one) is read
        // from its start: the messages its state covers only teach the memory
        // (`Shard::learn`) and are not applied.
        let rebuild = self.shards.get(&p).is_some_and(|s| s.crm_rebuild[i] > 0);
        match (pos, self.settings.checkpoint.persists()) {
            (n, _) if n > 0 && rebuild => Offset::Beginning,
            (n, _) if n >= 0 => Offset::Offset((n - self.settings.kafka.resume_rewind as i64).max(0)),
            (_, true) => Offset::Beginning,
            (_, false) => Offset::Stored,
        }
    }

    /// Takes the shards of a new assignment: resumes parked ones, restores the others.
    pub(super) fn take_shards(&mut self, partitions: &BTreeSet<i32>) {
        self.metrics.rebalances.with_label_values(&["assign"]).inc();
        self.ready.store(false, Ordering::Release);
        let topics = self.settings.kafka.input_topics.clone();
        let (mut restored, mut resumed) = (Vec::new(), Vec::new());
        let mut resent = false;
        let fresh: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|p| !self.shards.contains_key(p) && !self.parked.contains_key(p))
            .collect();
        self.metrics.restoring.set(fresh.len() as i64);
        for p in partitions {
            if self.shards.contains_key(p) {
                continue;
            }
            if let Some(shard) = self.parked.remove(p) {
                resumed.push(*p);
                if let Some(st) = self.parked_status.remove(p) {
                    self.status.set(*p, st);
                }
                if self.identity.is_some() {
                    self.metrics.identity_outbox(*p, shard.engine.outbox_size());
                }
                self.shards.insert(*p, shard);
                continue;
            }
            let started = Instant::now();
            self.status.set(*p, ShardStatus::restoring(*p));
            let env = RestoreEnv {
                persists: self.settings.checkpoint.persists(),
                journey: &self.journey,
                store: self.store.as_deref().map(|s| s as &dyn SnapshotStore),
                changelog: self.changelog.as_deref(),
                metrics: &self.metrics,
            };
            let r = restore::restore(*p, &env);
            let mut shard = Shard::new(r.engine, topics.len());
            for (i, t) in topics.iter().enumerate() {
                shard.positions[i] = r.positions.get(t).copied().unwrap_or(-1);
            }
            shard.checkpointed = shard.positions.clone();
            shard.start_crm_rebuild(&self.specs);
            shard.seq = r.seq;
            shard.tombstones = r.tombstones;
            for id in &r.rewrite {
                if let Some(ix) = shard.engine.find(id) {
                    shard.engine.mark_changed(ix.0);
                }
            }
            restored.push((*p, r.source.as_str(), shard.engine.len()));
            // With a snapshot store, the digest per slot (the next delta's digest is computed
            // from it) and a chain the next delta can follow: the one restored, else a base of
            // the restored state, written now, while the shard is not processing anyway.
            let digest = match (&self.store, &self.writer) {
                (Some(store), Some(_)) => {
                    shard.digests = SlotDigests::of(&shard.engine);
                    shard.chained = if r.chained && store.tip(*p).is_some_and(|t| t.seq == r.seq) {
                        Some(r.seq)
                    } else {
                        let base = Pending {
                            group: self.settings.kafka.group_id.clone(),
                            shard: *p,
                            seq: r.seq,
                            written_at: wall_now().to_string(),
                            positions: r.positions.clone(),
                            changelog: r.changelog.clone(),
                        };
                        match store.save(base, &shard.engine) {
                            Ok(_) => Some(r.seq),
                            Err(e) => {
                                tracing::error!(shard = *p, error = %e, "snapshot base of the restored state not written; the first checkpoint writes one");
                                None
                            }
                        }
                    };
                    shard.digests.digest()
                }
                _ => shard.engine.digest(),
            };
            // The restored state is a checkpoint's, unless there was none to restore.
            let from_checkpoint = !matches!(r.source, RestoreSource::Replay | RestoreSource::Empty);
            let restored_checkpoint = from_checkpoint.then(|| {
                let (outbox, outbox_progress) = super::status::outbox_counts(&shard.engine);
                CheckpointStatus {
                    seq: r.seq,
                    positions: r.positions.clone(),
                    digest: Some(format!("{digest:016x}")),
                    prospects: shard.engine.len() as u64,
                    snapshot_seconds: 0.0,
                    outbox,
                    outbox_progress,
                }
            });
            self.status.update(*p, |s| {
                s.restored_from = r.source;
                s.checkpoint = restored_checkpoint;
            });
            let secs = started.elapsed().as_secs_f64();
            self.metrics.restore_seconds.observe(secs);
            self.metrics.restoring.dec();
            let prospects = shard.engine.len() as u64;
            self.status.update(*p, |s| {
                s.state = ShardState::Running;
                s.restore_seconds = secs;
                s.prospects = prospects;
            });
            // The restored checkpoint is durable: its outbox goes (again; receivers drop
            // what they already have).
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
                resent = true;
            }
            if self.identity.is_some() {
                self.metrics.identity_outbox(*p, shard.engine.outbox_size());
            }
            self.shards.insert(*p, shard);
        }
        // The records sent again are in their partitions before this instance fetches: its
        // merge then sees them as a backlog of the identity partitions it holds and orders them
        // by event time before later inputs (a link of the restored checkpoint is applied
        // before the input after it that needs it, as it was when the records left at once).
        if resent && let Err(e) = crate::kafka::flush(&self.producer, Duration::from_secs(10)) {
            tracing::warn!(error = %e, "identity records sent again at a restore not acknowledged yet");
        }
        self.parked.clear();
        self.parked_status.clear();
        self.metrics.restoring.set(0);
        resumed.iter().chain(restored.iter().map(|r| &r.0)).for_each(|p| self.metrics.shard_durable(*p));
        self.metrics.shards.set(self.shards.len() as i64);
        self.ready.store(true, Ordering::Release);
        tracing::info!(restored = ?restored, resumed = ?resumed, "shards assigned");
    }

    /// Checkpoints, then drops the revoked shards (parked, in case the next assignment gives
    /// them back).
    pub(super) fn revoke(&mut self, consumer: &PipelineConsumer, tpl: &TopicPartitionList) {
        let revoked: BTreeSet<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
        for p in &revoked {
            self.drop_inputs(consumer, *p);
        }
        self.give_up(consumer, &revoked);
    }

    /// Checkpoints, then drops the `revoked` shards (parked if the checkpoint succeeded).
    pub(super) fn give_up(&mut self, committer: &dyn Committer, revoked: &BTreeSet<i32>) {
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        let deadline = Instant::now() + Duration::from_millis(self.settings.pipeline.shutdown_timeout_ms);
        let checkpointed = match self.checkpoint(committer, CommitMode::Sync, deadline, true) {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "checkpoint on revoke failed; the next owner restores the previous checkpoint");
                false
            }
        };
        for p in revoked {
            self.metrics.shard_released(*p, &self.settings.kafka.input_topics);
            let status = self.status.remove(*p);
            if let Some(shard) = self.shards.remove(p)
                && checkpointed
            {
                self.parked.insert(*p, shard);
                if let Some(st) = status {
                    self.parked_status.insert(*p, st);
                }
            }
        }
        self.metrics.shards.set(self.shards.len() as i64);
        tracing::info!(partitions = ?revoked, "shards revoked");
    }
}
