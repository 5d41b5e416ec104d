//! One shard: its engine, input positions, checkpoint sequence and owed tombstones.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::codec::{self, InputSpec, Limits};
use crate::core::crm::CrmMemory;
use crate::core::{Engine, Journey};

use super::inputs::Inputs;
use super::merge::Input;

pub(super) struct Shard {
    pub(super) engine: Engine,
    pub(super) last_input: Instant,
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
    /// Per input topic, what the shard remembers of CRM objects (previous values, contact
    /// links). Not checkpointed: a restored shard rebuilds it by reading its CRM topics from
    /// the beginning (`rebalance::assign`), learning from the messages its state already covers
    /// without applying them (`learn`).
    pub(super) crm: Vec<CrmMemory>,
    /// Per input topic, the offset up to which `crm` has learnt: a message is learnt once.
    pub(super) crm_seen: Vec<i64>,
}

impl Shard {
    /// A shard around `engine`, which from now on queues the ids of prospects that leave
    /// memory (retention) for changelog tombstones, taken at each checkpoint.
    pub(super) fn new(mut engine: Engine, topics: usize) -> Shard {
        engine.track_removals(true);
        Shard {
            engine,
            last_input: Instant::now(),
            positions: vec![-1; topics],
            checkpointed: vec![-1; topics],
            seq: 0,
            tombstones: Vec::new(),
            inputs: Inputs::new(topics),
            crm: vec![CrmMemory::default(); topics],
            crm_seen: vec![0; topics],
        }
    }

    /// A message of CRM topic `t` that the shard's state already covers (below its position):
    /// only its memory learns from it, once; its events are not applied again (they were before
    /// the restore) and its errors were dead-lettered then.
    pub(super) fn learn(
        &mut self,
        t: usize,
        offset: i64,
        payload: &[u8],
        spec: &InputSpec,
        journey: &Journey,
        limits: &Limits,
    ) {
        if !spec.format.is_crm() || offset < self.crm_seen[t] {
            return;
        }
        codec::decode_input(payload, spec, journey, limits, &mut self.crm[t]).for_each(drop);
        self.crm_seen[t] = offset + 1;
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
        self.positions != self.checkpointed || self.engine.has_changes() || !self.tombstones.is_empty()
    }
}
