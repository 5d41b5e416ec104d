//! One prospect's state as its changelog record and its digest read it ([`Parts`]), from the
//! live engine ([`Engine::with_parts`]) or from a capture's copy
//! ([`crate::core::engine::PartsCopy`]): the record bytes (`record.rs`) and the digest
//! ([`Parts::digest`]) are one function of these parts, whichever side computes them.

use crate::core::breakdown::{NONE, OTHER, Slot};
use crate::core::engine::{Engine, Extras};
use crate::core::ids::{self, ProspectIx};
use crate::core::prospect::{NO_SIGNAL, Prospect};

/// One prospect's parts: the fixed record, the per-journey arrays, its id, email, live extras
/// (none when it has none in force), breakdown slots (empty when it has no value nor touch)
/// and first-shown entries (packed as `FirstShown` holds them).
pub struct Parts<'a> {
    pub id: &'a [u8],
    pub fixed: &'a Prospect,
    pub stage_times: &'a [u32],
    pub counts: &'a [u16],
    pub marks: &'a [crate::core::time::Ts],
    pub email: Option<&'a str>,
    pub extras: Option<&'a Extras>,
    pub slots: &'a [Slot],
    pub shown: &'a [u64],
}

impl Parts<'_> {
    /// The prospect's digest ([`Engine::prospect_digest`]); `name(d, id)` is the value of
    /// breakdown value id `id` in dimension `d` (attributions are digested by value, not id,
    /// so that engines whose tables were built apart digest alike). `buf` is scratch.
    pub fn digest<'n>(&self, name: impl Fn(usize, u16) -> Option<&'n str>, buf: &mut Vec<u8>) -> u64 {
        let p = self.fixed;
        buf.clear();
        buf.extend_from_slice(self.id);
        buf.push(0);
        for t in [p.score_at, p.last_activity, p.stage_entered, p.ghost_due, p.stall_due, p.hot_until, p.last_alert] {
            buf.extend_from_slice(&t.0.to_le_bytes());
        }
        buf.extend_from_slice(&p.score.to_bits().to_le_bytes());
        buf.extend_from_slice(&[p.stage.0, p.flags, p.hot_rule]);
        if p.last_signal != NO_SIGNAL {
            // Only when set: digests of states written before it existed stay what they were.
            buf.extend_from_slice(&p.last_signal.to_le_bytes());
        }
        if p.more_flags() != 0 {
            // Only when set: digests of states written before it existed stay what they were.
            buf.extend_from_slice(&[b'F', p.more_flags()]);
        }
        if p.handoff() != 0 {
            // Only when set, as `last_signal`.
            buf.push(b'h');
            buf.extend_from_slice(&p.handoff().to_le_bytes());
        }
        let mut recent = p.recent;
        recent.sort_unstable();
        for r in recent {
            buf.extend_from_slice(&r.to_le_bytes());
        }
        for v in self.stage_times {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        for v in self.counts {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        for v in self.marks {
            buf.extend_from_slice(&v.0.to_le_bytes());
        }
        if let Some(e) = self.email {
            buf.extend_from_slice(e.as_bytes());
        }
        if let Some(x) = self.extras {
            buf.push(0);
            for &(k, t) in &x.seen {
                buf.extend_from_slice(&k.to_le_bytes());
                buf.extend_from_slice(&t.0.to_le_bytes());
            }
            for (r, t, id) in &x.waiting {
                buf.push(*r);
                buf.extend_from_slice(&t.0.to_le_bytes());
                buf.extend_from_slice(id.as_bytes());
                buf.push(0);
            }
            for &(r, t) in &x.alerted {
                buf.push(r);
                buf.extend_from_slice(&t.0.to_le_bytes());
            }
        }
        if !self.slots.is_empty() {
            buf.push(2);
            for (d, s) in self.slots.iter().enumerate() {
                match s.value {
                    NONE => buf.push(0),
                    OTHER => buf.push(1),
                    id => {
                        buf.push(2);
                        buf.extend_from_slice(name(d, id).unwrap_or_default().as_bytes());
                        buf.push(0);
                    }
                }
                buf.extend_from_slice(&s.at.to_le_bytes());
            }
        }
        if !self.shown.is_empty() {
            // Only when set: digests of states without first-shown times stay what they were.
            buf.push(b'S');
            self.shown.iter().for_each(|e| buf.extend_from_slice(&e.to_le_bytes()));
        }
        ids::hash64(ids::SEED_DIGEST, buf)
    }
}

impl Engine {
    /// Calls `f` with prospect `ix`'s parts as the engine holds them (extras as they are in
    /// force at the watermark).
    pub(crate) fn with_parts<R>(&self, ix: ProspectIx, f: impl FnOnce(&Parts<'_>) -> R) -> R {
        let i = ix.0 as usize;
        let extras = self.live_extras(ix);
        let shown = self.shown.get(i);
        let slots = if self.attr.any(i) { self.attr.of(i) } else { &[] };
        f(&Parts {
            id: self.ids.get_bytes(ix),
            fixed: self.store.fixed(i),
            stage_times: self.store.stage_times(i),
            counts: self.store.counts(i),
            marks: self.store.marks(i),
            email: self.email(ix),
            extras: extras.as_deref(),
            slots,
            shown: &shown,
        })
    }

    /// The value of breakdown value id `id` in dimension `d` (for [`Parts::digest`]).
    pub(crate) fn value_name(&self, d: usize, id: u16) -> Option<&str> {
        self.attr.tables().get(d).and_then(|t| t.name(id))
    }
}
