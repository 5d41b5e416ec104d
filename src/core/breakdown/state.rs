//! The attribution state of one shard: per dimension a table of values (interned, capped), per
//! prospect and dimension a [`Slot`] (value id and the time of the touch that gave it).

use std::collections::HashMap;

use super::{Attribution, Dimension, Field, NONE, OTHER, Touch};
use crate::core::journey::SignalId;
use crate::core::time::{MS_PER_SEC, Ts};

/// A prospect's value in one dimension: `value` is [`NONE`], [`OTHER`] or 2 + the index of its
/// table entry; `at` the time of the touch that gave it, as whole seconds + 1 (0: no touch), the
/// encoding of stage entry times.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub value: u16,
    pub at: u32,
}

/// A prospect's slots, one per dimension, as a record carries them.
pub type SlotRecord = Vec<Slot>;

/// One dimension's values of a shard: the first `max_values` attributed (or the allow-list),
/// in the order they got their slot, and the touches folded into `other`.
#[derive(Clone, Debug, Default)]
pub struct ValueTable {
    pub(crate) names: Vec<Box<str>>,
    index: HashMap<Box<str>, u16>,
    /// Touches whose value found no slot and were attributed as `other`.
    pub(crate) folded: u64,
}

impl ValueTable {
    pub(crate) fn seeded(values: &[String]) -> ValueTable {
        let mut t = ValueTable::default();
        for v in values {
            t.push(v);
        }
        t
    }

    pub(crate) fn push(&mut self, v: &str) -> u16 {
        let id = (self.names.len() + 2) as u16;
        self.names.push(v.into());
        self.index.insert(v.into(), id);
        id
    }

    /// The id of `v`, given a slot if the table has room; [`OTHER`] (counted) if not.
    fn intern(&mut self, v: &str, dim: &Dimension) -> u16 {
        if let Some(&id) = self.index.get(v) {
            return id;
        }
        if !dim.allow.is_empty() || self.names.len() >= dim.max_values {
            self.folded += 1;
            return OTHER;
        }
        self.push(v)
    }

    /// The value of id `id`; `None` for [`NONE`], [`OTHER`] or an id this table does not hold.
    pub fn name(&self, id: u16) -> Option<&str> {
        (id >= 2).then(|| self.names.get(id as usize - 2).map(|s| &**s)).flatten()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// The attribution state of a shard (empty when the journey has no breakdowns).
#[derive(Clone, Debug, Default)]
pub struct Attributions {
    pub(crate) dims: usize,
    pub(crate) tables: Vec<ValueTable>,
    /// `dims` slots per prospect, by prospect index; prospects beyond its end have none yet.
    pub(crate) slots: Vec<Slot>,
    /// The last state meta read named other dimensions: slots restored under it are dropped.
    pub(crate) foreign: bool,
}

/// Time as a slot (and a stage entry time) holds it.
pub(crate) fn secs(ts: Ts) -> u32 {
    (ts.0.div_euclid(MS_PER_SEC) + 1).clamp(1, i64::from(u32::MAX)) as u32
}

impl Attributions {
    pub fn new(dims: &[Dimension]) -> Attributions {
        Attributions {
            dims: dims.len(),
            tables: dims.iter().map(|d| ValueTable::seeded(&d.seeded())).collect(),
            slots: Vec::new(),
            foreign: false,
        }
    }

    pub fn is_on(&self) -> bool {
        self.dims > 0
    }

    pub fn tables(&self) -> &[ValueTable] {
        &self.tables
    }

    /// Prospect `i`'s slots (all empty for one that has none yet).
    pub fn of(&self, i: usize) -> &[Slot] {
        const EMPTY: [Slot; 0] = [];
        self.slots.get(i * self.dims..(i + 1) * self.dims).unwrap_or(&EMPTY)
    }

    /// Prospect `i`'s value id in dimension `d`.
    pub fn value(&self, i: usize, d: usize) -> u16 {
        self.of(i).get(d).map_or(NONE, |s| s.value)
    }

    /// Whether prospect `i` has any value or touch.
    /// Asks for prospect `i`'s slots to be brought into cache ([`crate::core::prefetch`]).
    pub fn prefetch(&self, i: usize) {
        if let Some(s) = self.slots.get(i * self.dims) {
            crate::core::prefetch::prefetch(s);
        }
    }

    pub fn any(&self, i: usize) -> bool {
        self.of(i).iter().any(|s| *s != Slot::default())
    }

    fn slots_mut(&mut self, i: usize) -> &mut [Slot] {
        let end = (i + 1) * self.dims;
        if self.slots.len() < end {
            self.slots.resize(end, Slot::default());
        }
        &mut self.slots[i * self.dims..end]
    }

    /// Sets prospect `i`'s slots (a restore). Slots of another dimension count, or restored
    /// under a meta of other dimensions, are dropped; so is a value id its table does not hold.
    pub(crate) fn set(&mut self, i: usize, slots: &[Slot]) {
        if slots.len() == self.dims && !self.foreign {
            let checked: Vec<Slot> = slots
                .iter()
                .zip(&self.tables)
                .map(|(s, t)| if s.value < 2 || t.name(s.value).is_some() { *s } else { Slot::default() })
                .collect();
            self.slots_mut(i).copy_from_slice(&checked);
        } else if i * self.dims < self.slots.len() {
            self.slots_mut(i).fill(Slot::default());
        }
    }

    /// Clears prospect `i`'s slots (a prospect folded into another).
    pub(crate) fn clear(&mut self, i: usize) {
        if i * self.dims < self.slots.len() {
            self.slots_mut(i).fill(Slot::default());
        }
    }

    /// Takes in one applied event of prospect `i` (signal `sig`, time `ts`) with the touch it
    /// carries; `stage_times` are the prospect's stage entry times after the event.
    pub(crate) fn observe(
        &mut self,
        dims: &[Dimension],
        i: usize,
        touch: Option<&Touch<'_>>,
        sig: SignalId,
        ts: Ts,
        stage_times: &[u32],
    ) {
        let t = secs(ts);
        let n = self.dims;
        let end = (i + 1) * n;
        if self.slots.len() < end {
            self.slots.resize(end, Slot::default());
        }
        for (d, dim) in dims.iter().enumerate() {
            let slot = &mut self.slots[i * n + d];
            match dim.field {
                Field::Segment { signal, before } => {
                    if sig == signal && (slot.at == 0 || t < slot.at) {
                        slot.at = t;
                    }
                    slot.value = segment_value(slot.at, before.map(|b| stage_times[b.0 as usize]));
                }
                f => {
                    let Some(v) = f.touch_index().and_then(|k| touch?.values[k].as_deref()) else { continue };
                    if takes(dim.attribution, *slot, t, stage_times) {
                        slot.value = self.tables[d].intern(v, dim);
                        slot.at = t;
                    }
                }
            }
        }
    }

    /// Prospect `from`'s slots folded into `into`'s (identity resolution): per dimension the
    /// touch the attribution prefers (first touch: the earlier; last touch and at-stage: the
    /// later, at-stage only among touches up to the stage entry; ties: `into`'s); a segment from
    /// the earlier signal, against `into`'s merged stage times. `from`'s slots are cleared.
    pub(crate) fn merge(&mut self, dims: &[Dimension], from: usize, into: usize, stage_times: &[u32]) {
        if !self.is_on() {
            return;
        }
        let a = self.of(from).to_vec();
        if a.is_empty() {
            return;
        }
        let n = self.dims;
        self.slots_mut(into);
        for (d, dim) in dims.iter().enumerate() {
            let (x, b) = (a[d], self.slots[into * n + d]);
            let merged = match dim.field {
                Field::Segment { before, .. } => {
                    let at = match (x.at, b.at) {
                        (0, v) | (v, 0) => v,
                        (p, q) => p.min(q),
                    };
                    Slot { value: segment_value(at, before.map(|s| stage_times[s.0 as usize])), at }
                }
                _ if x.value == NONE => b,
                _ if b.value == NONE => x,
                _ => match dim.attribution {
                    Attribution::FirstTouch => {
                        if x.at < b.at {
                            x
                        } else {
                            b
                        }
                    }
                    Attribution::LastTouch => {
                        if x.at > b.at {
                            x
                        } else {
                            b
                        }
                    }
                    Attribution::AtStage(s) => {
                        let e = stage_times[s.0 as usize];
                        let ok = |v: Slot| e == 0 || v.at <= e;
                        match (ok(x), ok(b)) {
                            (true, false) => x,
                            (false, true) => b,
                            _ if x.at > b.at => x,
                            _ => b,
                        }
                    }
                },
            };
            self.slots[into * n + d] = merged;
        }
        self.clear(from);
    }

    /// Bytes held beside the prospects.
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.tables.iter().map(|t| t.names.iter().map(|n| 2 * n.len() + 40).sum::<usize>()).sum::<usize>()
    }
}

/// Whether a touch at `t` replaces `slot` under `attribution`.
fn takes(attribution: Attribution, slot: Slot, t: u32, stage_times: &[u32]) -> bool {
    let empty = slot.value == NONE;
    match attribution {
        Attribution::FirstTouch => empty || t < slot.at,
        Attribution::LastTouch => empty || t >= slot.at,
        Attribution::AtStage(s) => {
            let e = stage_times[s.0 as usize];
            (e == 0 || t <= e) && (empty || t >= slot.at)
        }
    }
}

/// A segment's value: `yes` (id 2) when the signal was shown (`at`), before the stage was
/// entered if it names one.
fn segment_value(at: u32, before: Option<u32>) -> u16 {
    let yes = at != 0 && before.is_none_or(|e| e == 0 || at < e);
    if yes { 2 } else { NONE }
}
