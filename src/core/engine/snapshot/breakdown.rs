//! The breakdown part of the state (state version 4), kept apart from the rest of the layout:
//! - in the shard meta, after everything older versions hold: each dimension's value table
//!   (`u8` dimension count; per dimension its name, the touches folded into `other` (`u64`) and
//!   its values in slot order (`u32` count, each length-prefixed));
//! - in a full state, after the prospects, tagged sections until the end, each a tag byte, a
//!   `u32` body length and the body; section `B`: `u8` dimension count, `u32` count of prospects
//!   with a slot set, then per such prospect its index (`u32`, its position in the state) and
//!   per dimension its value id (`u16`) and touch time (`u32`); always written (0 dimensions
//!   without breakdowns) and required;
//! - in a changelog prospect record, after the extras trailer, tag `4`: `u8` dimension count and
//!   the prospect's slots, only for a prospect with one set.
//!
//! A state written under other dimension names (the journey's `[breakdowns]` changed) loads
//! with empty tables and no prospect's values: attribution starts again from new events.

use super::wire::{Dec, Enc, StateError};
use crate::core::breakdown::{Attributions, Slot, SlotRecord, ValueTable};
use crate::core::engine::Engine;

/// Tag of the slots trailer of a changelog record.
pub(super) const RECORD_TAG: u8 = 4;

impl Engine {
    pub(super) fn encode_breakdown_meta(&self, w: &mut Enc<'_>) {
        let dims = &self.journey().breakdowns;
        w.u8(dims.len() as u8);
        for (d, t) in dims.iter().zip(self.attr.tables()) {
            w.bytes(d.name.as_bytes());
            w.u64(t.folded);
            w.u32(t.names.len() as u32);
            for n in &t.names {
                w.bytes(n.as_bytes());
            }
        }
    }

    pub(super) fn decode_breakdown_meta(&mut self, r: &mut Dec<'_>) -> Result<(), StateError> {
        let n = r.u8("breakdown dimensions")? as usize;
        let mut names = Vec::with_capacity(n);
        let mut tables = Vec::with_capacity(n);
        for _ in 0..n {
            names.push(r.str("breakdown dimension")?.to_string());
            let folded = r.u64("breakdown folded")?;
            let at = r.position();
            let count = r.u32("breakdown values")? as usize;
            if count > r.remaining() / 4 {
                return Err(StateError::Invalid { what: "breakdown values", at });
            }
            let mut t = ValueTable::default();
            for _ in 0..count {
                t.push(r.str("breakdown value")?);
            }
            t.folded = folded;
            tables.push(t);
        }
        let dims = &self.journey().breakdowns;
        let mut attr = Attributions::new(dims);
        if names.len() == dims.len() && names.iter().zip(dims.iter()).all(|(a, d)| *a == d.name) {
            attr.tables = tables;
            attr.slots = std::mem::take(&mut self.attr.slots);
        } else {
            attr.foreign = true;
        }
        self.attr = attr;
        Ok(())
    }

    /// The body of section `B` of a full state (`sections.rs`; written without dimensions too,
    /// so that a state cut right after its prospects is refused).
    pub(super) fn encode_breakdown_section(&self, w: &mut Enc<'_>) {
        // Positions in the full state's prospect order (freed slots are not written, so a
        // position is not always the slot).
        let set: Vec<(usize, usize)> = self
            .iter_ids()
            .enumerate()
            .filter(|(_, (ix, _))| self.attr.any(ix.0 as usize))
            .map(|(pos, (ix, _))| (pos, ix.0 as usize))
            .collect();
        w.u8(self.attr.dims as u8);
        w.u32(set.len() as u32);
        for (pos, i) in set {
            w.u32(pos as u32);
            for s in self.attr.of(i) {
                w.u16(s.value);
                w.u32(s.at);
            }
        }
    }

    /// Reads the body of section `B`.
    pub(super) fn decode_breakdown_section(&mut self, r: &mut Dec<'_>) -> Result<(), StateError> {
        let dims = r.u8("breakdown dimensions")? as usize;
        let n = r.u32("breakdown prospects")?;
        for _ in 0..n {
            let at = r.position();
            let i = r.u32("breakdown prospect")? as usize;
            if i >= self.len() {
                return Err(StateError::Invalid { what: "breakdown prospect", at });
            }
            let slots = read_slots(r, dims)?;
            self.attr.set(i, &slots);
        }
        Ok(())
    }
}

/// Section `B`'s entries of a state of `n` prospects, by position (read without the prospects).
pub(super) fn read_breakdown_section(
    r: &mut Dec<'_>,
    n: u32,
    into: &mut Vec<(u32, SlotRecord)>,
) -> Result<(), StateError> {
    let dims = r.u8("breakdown dimensions")? as usize;
    let count = r.u32("breakdown prospects")?;
    for _ in 0..count {
        let at = r.position();
        let i = r.u32("breakdown prospect")?;
        if i >= n {
            return Err(StateError::Invalid { what: "breakdown prospect", at });
        }
        into.push((i, read_slots(r, dims)?));
    }
    Ok(())
}

/// A prospect's slots as a record holds them (`dims` of them; the caller reads the count).
pub(super) fn read_slots(r: &mut Dec<'_>, dims: usize) -> Result<SlotRecord, StateError> {
    (0..dims).map(|_| Ok(Slot { value: r.u16("breakdown value id")?, at: r.u32("breakdown touch")? })).collect()
}
