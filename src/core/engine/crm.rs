//! The shard's CRM memories as shard state: one [`CrmMemory`] per CRM input topic, by topic
//! name, and whether they are complete (built from every message the state covers).
//!
//! A state of version 3 or older holds no CRM memory: restored from one, the memories are
//! empty and marked incomplete, and the service rebuilds them once by reading the shard's CRM
//! topics from their beginning (`pipeline::Shard::learn`).

use std::collections::BTreeMap;

use super::Engine;
use crate::core::crm::{CrmMemory, EntryKind, Key, bytes};
use crate::core::snapshot::{Dec, Enc, StateError};

/// See the module docs.
#[derive(Clone, Debug)]
pub struct CrmState {
    memories: BTreeMap<Box<str>, CrmMemory>,
    /// Whether the memories hold what every message the state covers taught them.
    complete: bool,
}

impl Default for CrmState {
    fn default() -> Self {
        CrmState { memories: BTreeMap::new(), complete: true }
    }
}

impl PartialEq for CrmState {
    fn eq(&self, other: &Self) -> bool {
        self.complete == other.complete && self.memories == other.memories
    }
}

impl CrmState {
    pub(super) fn take_changes(&mut self) {
        self.memories.values_mut().for_each(CrmMemory::take_changes);
    }

    /// Drops the taken lists once `durable`, otherwise marks them changed again.
    pub(super) fn settle_taken(&mut self, durable: bool) {
        for m in self.memories.values_mut() {
            let taken = m.take_taken();
            if !durable {
                m.mark_changed(taken);
            }
        }
    }

    pub(super) fn has_changes(&self) -> bool {
        self.memories.values().any(CrmMemory::has_changes)
    }

    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The topics and their memories, by topic name.
    pub fn memories(&self) -> impl Iterator<Item = (&str, &CrmMemory)> {
        self.memories.iter().map(|(t, m)| (&**t, m))
    }

    /// Writes the CRM section of a full state: `complete u8`, topic count u32, then per topic
    /// its name, entry count u32 and entries (key, entry) oldest stamp first.
    pub(super) fn encode(&self, w: &mut Enc<'_>) {
        w.u8(u8::from(self.complete));
        w.u32(self.memories.len() as u32);
        for (t, m) in &self.memories {
            w.bytes(t.as_bytes());
            w.u32(m.len() as u32);
            for (kind, key, entry, stamp) in m.entries() {
                bytes::encode_key(kind, key, w);
                bytes::encode_entry(&entry, stamp, w);
            }
        }
    }

    pub(super) fn decode(r: &mut Dec<'_>, limit: usize) -> Result<CrmState, StateError> {
        let at = r.position();
        let complete = match r.u8("crm complete")? {
            0 => false,
            1 => true,
            _ => return Err(StateError::Invalid { what: "crm complete", at }),
        };
        let mut st = CrmState { memories: BTreeMap::new(), complete };
        for _ in 0..r.u32("crm topics")? {
            let topic: Box<str> = r.str("crm topic")?.into();
            let mut m = CrmMemory::with_limit(limit);
            for _ in 0..r.u32("crm entries")? {
                let (kind, key) = bytes::decode_key(r)?;
                let entry = bytes::decode_entry(kind, r)?;
                m.restore(kind, key, Some(entry));
            }
            m.finish_restore();
            st.memories.insert(topic, m);
        }
        Ok(st)
    }
}

impl Engine {
    /// The CRM memory of input topic `topic` in this shard (made empty on first use).
    pub fn crm_memory(&mut self, topic: &str) -> &mut CrmMemory {
        if !self.crm.memories.contains_key(topic) {
            let limit = self.journey.crm.max_entries;
            self.crm.memories.insert(topic.into(), CrmMemory::with_limit(limit));
        }
        // Present: inserted just above if it was not.
        self.crm.memories.get_mut(topic).expect("inserted above")
    }

    /// The shard's CRM memories.
    pub fn crm(&self) -> &CrmState {
        &self.crm
    }

    /// Marks the CRM memories complete (a rebuild after a restore from an older state finished)
    /// or not.
    pub fn set_crm_complete(&mut self, complete: bool) {
        self.crm.complete = complete;
    }

    /// Installs one CRM entry read from the changelog (`None`: removed); nothing is marked
    /// changed.
    pub fn restore_crm_entry(
        &mut self,
        topic: &str,
        kind: EntryKind,
        key: Key,
        entry: Option<(crate::core::crm::Entry, u64)>,
    ) {
        self.crm_memory(topic).restore(kind, key, entry);
    }

    /// After a changelog read: evicts past the limit, clears the change marks.
    pub fn finish_crm_restore(&mut self) {
        self.crm.memories.values_mut().for_each(CrmMemory::finish_restore);
    }

    /// Marks a CRM entry changed (written by a checkpoint that did not finish).
    pub fn mark_crm_entry(&mut self, topic: &str, kind: EntryKind, key: Key) {
        self.crm_memory(topic).mark_one(kind, key);
    }

    /// Empties the taken lists (after a changelog read, nothing is owed to the changelog yet).
    pub fn crm_take_taken(&mut self) {
        self.crm.memories.values_mut().for_each(|m| drop(m.take_taken()));
    }

    /// CRM entries evicted by this process, over every topic.
    pub fn crm_evicted(&self) -> u64 {
        self.crm.memories.values().map(CrmMemory::evicted).sum()
    }
}
