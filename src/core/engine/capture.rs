//! Captures for checkpoints and change tracking: which prospects changed since the changelog
//! last took them and since the last capture, and the copy of an engine into its spare.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use super::Engine;
use crate::core::identity::IdentityMap;
use crate::core::ids::ProspectIx;

/// See [`Engine::capture_into`]: an incremental capture is used while at most one prospect in
/// this many changed since the previous one (measured with `cargo bench --bench snapshot`).
const CAPTURE_FULL_SHARE: usize = 8;

/// An engine's identity for incremental captures; a clone gets a new one (a clone that goes on
/// applying events is not the engine a capture was taken from), and so does an engine restored
/// from a state (it is built new).
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

impl Engine {
    /// Copies this engine's state into `dst` for encoding (a checkpoint keeps one spare engine
    /// per shard and hands it to the snapshot writer). Pending timers are not copied: a capture
    /// is for encoding and digests, and [`Engine::decode_state`] re-arms timers from the
    /// prospects.
    ///
    /// When `dst` holds this engine's previous capture (the spare came back from the writer
    /// untouched), only the prospects changed or added since then are copied, so the pause on
    /// the processing thread is proportional to the events since the last checkpoint, not to the
    /// shard's size; otherwise everything is copied, reusing `dst`'s allocations.
    /// Returns whether the copy was incremental.
    pub fn capture_into(&mut self, dst: &mut Engine) -> bool {
        // Copying one changed prospect touches scattered memory; a full copy streams. Past
        // about one prospect in CAPTURE_FULL_SHARE changed, the full copy is the faster.
        let same =
            dst.captured_from == Some((self.lineage.0, self.captures)) && Arc::ptr_eq(&dst.journey, &self.journey);
        let incremental = same
            && dst.store.len() <= self.store.len()
            && self.changed.iter().map(|w| w[1].count_ones() as usize).sum::<usize>() * CAPTURE_FULL_SHARE
                <= self.store.len();
        if incremental {
            self.copy_changed_into(dst);
        } else {
            dst.journey = Arc::clone(&self.journey);
            dst.ids.clone_from(&self.ids);
            dst.store.copy_all_from(&self.store);
            dst.emails.clone_from(&self.emails);
            dst.extras.clone_from(&self.extras);
            dst.shown.clone_from(&self.shown);
            dst.attr.clone_from(&self.attr);
        }
        self.changed.iter_mut().for_each(|w| (w[1], w[2]) = (0, 0));
        dst.timers.clear();
        dst.quiet.clear();
        dst.watermark = self.watermark;
        dst.max_event_ts = self.max_event_ts;
        dst.leap = self.leap;
        dst.funnel.clone_from(&self.funnel);
        dst.stats.clone_from(&self.stats);
        match (&mut self.identity, &mut dst.identity) {
            (Some(src), Some(d)) => src.capture_into(d, same),
            (Some(src), d) => {
                let mut map = Box::default();
                src.capture_into(&mut map, false);
                *d = Some(map);
            }
            (None, d) => *d = None,
        }
        // The CRM memories copy only their changed entries whenever `dst` holds the previous
        // capture (their whole copy costs about as much as a million prospects' incremental one).
        self.crm.capture_into(&mut dst.crm, same);
        dst.kept_cooldowns.clone_from(&self.kept_cooldowns);
        dst.changed.clear();
        self.captures += 1;
        dst.captured_from = Some((self.lineage.0, self.captures));
        incremental
    }

    /// This engine's identity (a clone or a restored engine has another one): a checkpoint
    /// that failed re-marks its prospects only in the engine it captured.
    pub fn lineage(&self) -> u64 {
        self.lineage.0
    }

    /// The incremental part of [`Engine::capture_into`]: `dst` equals this engine as of its last
    /// capture, plus the changes marked since.
    fn copy_changed_into(&self, dst: &mut Engine) {
        let changed = self.changed.iter().enumerate().flat_map(|(w, bits)| {
            let mut b = bits[1];
            std::iter::from_fn(move || {
                (b != 0).then(|| {
                    let i = w * 64 + b.trailing_zeros() as usize;
                    b &= b - 1;
                    i
                })
            })
        });
        dst.attr.copy_changed_from(&self.attr, changed);
        let old = dst.store.len();
        dst.ids.extend_from(&self.ids);
        dst.store.extend_from(&self.store);
        for (w, bits) in self.changed.iter().enumerate() {
            let mut b = bits[1];
            while b != 0 {
                let i = w * 64 + b.trailing_zeros() as usize;
                b &= b - 1;
                if i < old {
                    dst.store.copy_one_from(&self.store, i);
                }
                dst.shown.copy_one_from(&self.shown, i);
                // Extras change only with their prospect (a sweep drops only expired entries,
                // which nothing reads), so the changed prospects' extras are all there is to copy.
                match self.extras.get(&(i as u32)) {
                    Some(x) => {
                        dst.extras.insert(i as u32, x.clone());
                    }
                    None => {
                        dst.extras.remove(&(i as u32));
                    }
                }
            }
            let mut b = bits[2];
            while b != 0 {
                let ix = (w * 64) as u32 + b.trailing_zeros();
                b &= b - 1;
                match self.emails.get(&ix) {
                    Some(e) => dst.emails.insert(ix, e.into()),
                    None => dst.emails.remove(&ix),
                }
            }
        }
    }

    /// Marks a prospect's email as changed (and the prospect).
    pub(super) fn mark_email_changed(&mut self, ix: u32) {
        self.mark_changed(ix);
        self.changed[ix as usize / 64][2] |= 1 << (ix % 64);
    }

    /// Marks a prospect as changed, so the next checkpoint writes it to the changelog (and the
    /// next capture copies it).
    pub fn mark_changed(&mut self, ix: u32) {
        let w = ix as usize / 64;
        if w >= self.changed.len() {
            self.changed.resize(w + 1, [0; 3]);
        }
        let bit = 1 << (ix % 64);
        self.changed[w][0] |= bit;
        self.changed[w][1] |= bit;
    }

    /// The prospects whose state changed since the last call, in index order; clears the marks.
    /// Shard-level changes (CRM memory entries, identifiers and links) are taken too, and
    /// carried by the next [`Engine::capture_into`] to the capture, which the changelog writes
    /// them from.
    /// Slots freed since (retention) are not listed: their ids go to [`Engine::take_removed`].
    pub fn take_changed(&mut self) -> Vec<ProspectIx> {
        self.crm.take_changes();
        if let Some(map) = self.identity.as_deref_mut() {
            map.take_changes();
        }
        let mut out = Vec::new();
        for (w, bits) in self.changed.iter_mut().enumerate() {
            let mut b = std::mem::take(&mut bits[0]);
            while b != 0 {
                let i = (w * 64) as u32 + b.trailing_zeros();
                if !self.store.fixed(i as usize).has(crate::core::prospect::FREE) {
                    out.push(ProspectIx(i));
                }
                b &= b - 1;
            }
        }
        out
    }

    /// Whether any prospect changed since the last [`Engine::take_changed`].
    pub fn has_changes(&self) -> bool {
        self.changed.iter().any(|b| b[0] != 0)
            || self.crm.has_changes()
            || self.identity.as_deref().is_some_and(IdentityMap::has_changes)
    }
}
