//! One shard: its engine, input positions, checkpoint sequence, owed tombstones, and what its
//! checkpoints need (the chain end in the snapshot store, the digest per slot, a reused
//! record buffer).

use std::collections::BTreeMap;
use std::time::Instant;

use crate::codec::{self, InputSpec, Limits};
use crate::core::{Engine, Journey, PartsCopy, ProspectIx, SlotDigests};
use crate::store::Batch;

use super::inputs::Inputs;
use super::merge::Input;

pub(super) struct Shard {
    pub(super) engine: Engine,
    pub(super) last_input: Instant,
    /// Partitions whose idle progress reports had lapsed at the last progress tick (logged
    /// when it changes).
    pub(super) lapsed: Vec<u32>,
    /// Next offset per input topic (index into `kafka.input_topics`), -1 = nothing read yet.
    pub(super) positions: Vec<i64>,
    /// `positions` at the last completed checkpoint.
    pub(super) checkpointed: Vec<i64>,
    pub(super) seq: u64,
    /// Changelog ids to delete: written by a checkpoint that did not finish, or of prospects
    /// that left memory (retention).
    pub(super) tombstones: Vec<String>,
    /// Delivered messages not yet processed, for the event-time merge.
    pub(super) inputs: Inputs,
    /// Per input topic, while the engine's CRM memory is rebuilt after a restore from a state
    /// without one (version 3 or older): the restored position, up to which the topic is read
    /// from its beginning only to teach the memory (`learn`); 0 otherwise.
    pub(super) crm_rebuild: Vec<i64>,
    /// Per input topic, the offset up to which the rebuild has learnt: a message is learnt once.
    pub(super) crm_seen: Vec<i64>,
    /// The checkpoint the snapshot store's chain ends at, which the next delta follows
    /// (`None`: the next checkpoint writes a base).
    pub(super) chained: Option<u64>,
    /// The state digest per slot (with a snapshot store), brought up to date from each capture's
    /// copy on the writer thread (with the writer while a checkpoint is in flight).
    pub(super) digests: SlotDigests,
    /// The changelog records of a capture (with the writer while a checkpoint is in flight,
    /// which lets their memory go once they are written).
    pub(super) batch: Batch,
    /// The changed prospects' parts of the last capture (reused like `batch`).
    pub(super) copy: PartsCopy,
    /// Scratch lists of a capture: the prospects changed, the slots freed.
    pub(super) held: Vec<ProspectIx>,
    pub(super) freed: Vec<u32>,
}

impl Shard {
    /// A shard around `engine`, which from now on queues the ids of prospects that leave
    /// memory (retention) for changelog tombstones, taken at each checkpoint.
    pub(super) fn new(mut engine: Engine, topics: usize) -> Shard {
        engine.track_removals(true);
        Shard {
            engine,
            last_input: Instant::now(),
            lapsed: Vec::new(),
            positions: vec![-1; topics],
            checkpointed: vec![-1; topics],
            seq: 0,
            tombstones: Vec::new(),
            inputs: Inputs::new(topics),
            crm_rebuild: vec![0; topics],
            crm_seen: vec![0; topics],
            chained: None,
            digests: SlotDigests::default(),
            batch: Batch::default(),
            copy: PartsCopy::default(),
            held: Vec::new(),
            freed: Vec::new(),
        }
    }

    /// After a restore: when the engine's CRM memory is incomplete (restored from a state of
    /// version 3 or older), each CRM topic with a covered part is rebuilt from its beginning
    /// (`rebalance::start_offset`); with none to rebuild, the memory counts as complete.
    pub(super) fn start_crm_rebuild(&mut self, specs: &[InputSpec]) {
        if self.engine.crm().is_complete() {
            return;
        }
        for (t, spec) in specs.iter().enumerate() {
            if spec.format.is_crm() && self.positions[t] > 0 {
                self.crm_rebuild[t] = self.positions[t];
            }
        }
        self.rebuilt(usize::MAX);
    }

    /// Topic `t` has reached its restored position (`usize::MAX`: none); the memory is complete
    /// once every topic has.
    pub(super) fn rebuilt(&mut self, t: usize) {
        if let Some(r) = self.crm_rebuild.get_mut(t) {
            *r = 0;
        }
        if self.crm_rebuild.iter().all(|r| *r == 0) && !self.engine.crm().is_complete() {
            self.engine.set_crm_complete(true);
        }
    }

    /// A message of CRM topic `t` (named `name`) that the shard's state already covers (below
    /// its position), read while its memory is rebuilt: only the memory learns from it, once;
    /// its events are not applied again (they were before the restore) and its errors were
    /// dead-lettered then. Returns whether it learnt from it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn learn(
        &mut self,
        t: usize,
        name: &str,
        offset: i64,
        payload: &[u8],
        spec: &InputSpec,
        journey: &Journey,
        limits: &Limits,
    ) -> bool {
        if self.crm_rebuild[t] == 0 || offset < self.crm_seen[t] {
            return false;
        }
        codec::decode_input(payload, spec, journey, limits, self.engine.crm_memory(name)).for_each(drop);
        self.crm_seen[t] = offset + 1;
        if offset + 1 >= self.crm_rebuild[t] {
            self.rebuilt(t);
        }
        true
    }

    /// What the merge knows of input `t`.
    pub(super) fn input(&self, t: usize) -> Input {
        let i = &self.inputs;
        match i.queues[t].front() {
            Some(b) => Input::Head { ts: b.ts, seq: b.seq },
            None if i.caught_up(t, self.positions[t]) => Input::CaughtUp,
            None => Input::Behind,
        }
    }

    pub(super) fn position_map(&self, topics: &[String]) -> BTreeMap<String, i64> {
        topics.iter().zip(&self.positions).filter(|(_, p)| **p >= 0).map(|(t, p)| (t.clone(), *p)).collect()
    }

    pub(super) fn due(&self) -> bool {
        self.positions != self.checkpointed
            || self.engine.has_changes()
            || !self.tombstones.is_empty()
            || self.engine.outbox_held()
    }
}
