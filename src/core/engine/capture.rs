//! Change tracking for checkpoints: which prospects changed since the changelog last took them,
//! the shard-level changes taken with them (CRM memory entries, identifiers and links) until a
//! checkpoint settles them, and the state digest kept up to date from the changed slots alone.

use std::hash::{BuildHasher, RandomState};

use super::Engine;
use crate::core::ids::ProspectIx;

/// An engine's identity; a clone gets a new one (a clone that goes on applying events is not
/// the engine a checkpoint was taken from), and so does an engine restored from a state (it is
/// built new). A failed checkpoint hands its prospects back only to the engine it came from.
///
/// A random number from std's `RandomState` (keys drawn once per thread, then a fresh key per
/// call), so no counter is shared between engines: two engines of one process get the same one
/// with a probability of about 2^-64 per pair. Nothing the engine outputs depends on it.
#[derive(Debug)]
pub(super) struct Lineage(u64);

impl Lineage {
    pub(super) fn new() -> Lineage {
        Lineage(RandomState::new().hash_one(()))
    }
}

impl Clone for Lineage {
    fn clone(&self) -> Lineage {
        Lineage::new()
    }
}

/// The state digest ([`Engine::digest`]) kept per slot, so a checkpoint computes it from the
/// slots that changed since the previous one: [`Engine::digest`] is the wrapping sum of the
/// held prospects' digests, and a freed slot counts 0. A prospect's digest also changes
/// without a change of its own when its extras expire (older event ids and waiting sequence
/// signals count while the watermark is within their window), so the slots holding such
/// extras, now or at the last update, are computed again at every update. Within one update
/// each slot is computed once (a slot both changed and holding extras, or holding extras at
/// the last update and now, is not hashed twice).
#[derive(Clone, Debug, Default)]
pub struct SlotDigests {
    per_slot: Vec<u64>,
    sum: u64,
    timed: Vec<u32>,
    /// One bit per slot: computed in the current update; the slots set are in `done`.
    fresh: Vec<u64>,
    done: Vec<u32>,
    buf: Vec<u8>,
}

impl SlotDigests {
    /// Every slot of `engine` (a restore; one pass over the prospects).
    pub fn of(engine: &Engine) -> SlotDigests {
        let mut d = SlotDigests::default();
        d.update(engine, 0..engine.store.len() as u32);
        d
    }

    /// Takes in the current digests of `slots` (changed or freed since the last update).
    pub fn update(&mut self, engine: &Engine, slots: impl IntoIterator<Item = u32>) {
        self.prepare(engine);
        for i in slots {
            self.set(engine, i);
        }
        self.settle(engine);
    }

    /// Starts an update in parts: [`SlotDigests::set`] per changed or freed slot, then
    /// [`SlotDigests::settle`].
    pub fn prepare(&mut self, engine: &Engine) {
        if self.per_slot.len() < engine.store.len() {
            self.per_slot.resize(engine.store.len(), 0);
            self.fresh.resize(engine.store.len().div_ceil(64), 0);
        }
    }

    /// Takes in slot `i`'s current digest (after [`SlotDigests::prepare`]).
    pub fn set(&mut self, engine: &Engine, i: u32) {
        let (w, bit) = (i as usize / 64, 1u64 << (i % 64));
        if self.fresh[w] & bit != 0 {
            return;
        }
        self.fresh[w] |= bit;
        self.done.push(i);
        let new = if engine.holds(i as usize) { engine.prospect_digest_with(ProspectIx(i), &mut self.buf) } else { 0 };
        let old = std::mem::replace(&mut self.per_slot[i as usize], new);
        self.sum = self.sum.wrapping_sub(old).wrapping_add(new);
    }

    /// Ends an update: the slots with expiring extras, now or at the last update.
    pub fn settle(&mut self, engine: &Engine) {
        let before = std::mem::take(&mut self.timed);
        for i in before {
            self.set(engine, i);
        }
        let mut timed: Vec<u32> = engine
            .extras
            .iter()
            .filter(|(_, x)| !x.seen.is_empty() || !x.waiting.is_empty())
            .map(|(&i, _)| i)
            .collect();
        for &i in &timed {
            self.set(engine, i);
        }
        std::mem::swap(&mut self.timed, &mut timed);
        for i in self.done.drain(..) {
            self.fresh[i as usize / 64] = 0;
        }
    }

    /// Slots whose digest depends on the watermark (live extras) as of the last update: a
    /// capture's copy takes them in again ([`Engine::copy_changed`]).
    pub fn timed(&self) -> &[u32] {
        &self.timed
    }

    /// Starts taking in the digests computed from a capture's copy (`slots`: the engine's
    /// slots at the capture): [`SlotDigests::put`] per entry of the copy (each slot once),
    /// then [`SlotDigests::end_copy`].
    pub fn begin_copy(&mut self, slots: usize) {
        if self.per_slot.len() < slots {
            self.per_slot.resize(slots, 0);
            self.fresh.resize(slots.div_ceil(64), 0);
        }
    }

    /// Slot `i`'s digest is now `new` (0: freed).
    pub fn put(&mut self, i: u32, new: u64) {
        let old = std::mem::replace(&mut self.per_slot[i as usize], new);
        self.sum = self.sum.wrapping_sub(old).wrapping_add(new);
    }

    /// Ends taking in a copy: `timed` are the slots with expiring extras as of the capture.
    pub fn end_copy(&mut self, timed: &[u32]) {
        self.timed.clear();
        self.timed.extend_from_slice(timed);
    }

    /// The digest of the state as of the last update.
    pub fn digest(&self) -> u64 {
        self.sum
    }

    /// Heap bytes (8 bytes and a bit per slot, 4 per slot with expiring extras or computed in
    /// the last update).
    pub fn heap_bytes(&self) -> usize {
        self.per_slot.capacity() * 8 + self.fresh.capacity() * 8 + (self.timed.capacity() + self.done.capacity()) * 4
    }
}

impl Engine {
    /// This engine's identity (a clone or a restored engine has another one): a checkpoint
    /// that failed re-marks its prospects only in the engine it came from.
    pub fn lineage(&self) -> u64 {
        self.lineage.0
    }

    /// Asks for what encoding and digesting prospect `ix` reads first to be brought into cache
    /// (its record, arrays, first-shown entries, breakdown slots, where its id lies): a loop
    /// over scattered prospects calls it some iterations ahead, so their cache misses overlap.
    pub fn prefetch_prospect(&self, ix: ProspectIx) {
        let i = ix.0 as usize;
        self.store.prefetch(i);
        self.ids.prefetch(ix);
        self.shown.prefetch(i);
        self.attr.prefetch(i);
    }

    /// Asks for prospect `ix`'s id text to be brought into cache (after
    /// [`Engine::prefetch_prospect`] brought in where it lies).
    pub fn prefetch_id(&self, ix: ProspectIx) {
        self.ids.prefetch_text(ix);
    }

    /// Marks a prospect's email as changed (and the prospect).
    pub(super) fn mark_email_changed(&mut self, ix: u32) {
        self.mark_changed(ix);
    }

    /// Marks a prospect as changed, so the next checkpoint writes it to the changelog.
    pub fn mark_changed(&mut self, ix: u32) {
        let w = ix as usize / 64;
        if w >= self.changed.len() {
            self.changed.resize(w + 1, 0);
        }
        self.changed[w] |= 1 << (ix % 64);
    }

    /// The prospects whose state changed since the last call, in index order; clears the marks.
    /// Shard-level changes (CRM memory entries, identifiers and links) are taken too: the
    /// changelog records of a checkpoint are encoded from what is taken, which stays taken until
    /// [`Engine::settle_taken`].
    /// Slots freed since (retention) are not listed: their ids go to [`Engine::take_removed`].
    pub fn take_changed(&mut self) -> Vec<ProspectIx> {
        let mut freed = Vec::new();
        let mut out = Vec::new();
        self.take_changed_slots(&mut out, &mut freed);
        out
    }

    /// [`Engine::take_changed`], also giving the slots freed since (for [`SlotDigests`]).
    pub fn take_changed_slots(&mut self, held: &mut Vec<ProspectIx>, freed: &mut Vec<u32>) {
        self.crm.take_changes();
        if let Some(map) = self.identity.as_deref_mut() {
            map.take_changes();
        }
        held.clear();
        freed.clear();
        for (w, bits) in self.changed.iter_mut().enumerate() {
            let mut b = std::mem::take(bits);
            while b != 0 {
                let i = (w * 64) as u32 + b.trailing_zeros();
                if self.store.fixed(i as usize).has(crate::core::prospect::FREE) {
                    freed.push(i);
                } else {
                    held.push(ProspectIx(i));
                }
                b &= b - 1;
            }
        }
    }

    /// Ends a checkpoint's hold on the shard-level changes it took: with `durable`, they are
    /// written and dropped; otherwise they are marked changed again, for the next checkpoint.
    pub fn settle_taken(&mut self, durable: bool) {
        self.crm.settle_taken(durable);
        if let Some(map) = self.identity.as_deref_mut() {
            map.settle_taken(durable);
        }
    }

    /// Whether any prospect changed since the last [`Engine::take_changed`].
    pub fn has_changes(&self) -> bool {
        self.changed.iter().any(|b| *b != 0)
            || self.crm.has_changes()
            || self.identity.as_deref().is_some_and(crate::core::identity::IdentityMap::has_changes)
    }
}
