//! Where the engine keeps its prospects' state: one 192-byte, cache-line aligned record per
//! prospect holding the fixed state ([`Prospect`], 104 bytes) and, next to it, the per-journey
//! arrays (stage entry times, counts per signal, look-back marks) packed into 88 bytes.
//!
//! Applying an event reads the fixed state, one count and often a mark; on a shard of a million
//! prospects each of those reads is a cache miss, so keeping them in three adjacent lines of one
//! record instead of four separate arrays is what keeps the engine fast at that scale
//! (`cargo bench --bench engine`). A journey whose arrays need more than 88 bytes keeps them in
//! one side array instead (slower, same behaviour); both shipped journeys fit.

use super::journey::Journey;
use super::mem;
use super::prospect::Prospect;
use super::time::Ts;

/// 64-bit words of per-journey arrays a record holds next to the fixed state.
const INLINE_WORDS: usize = 11;

#[derive(Clone)]
#[repr(C, align(64))]
struct Record {
    fixed: Prospect,
    /// `marks` (one word each), then `stage_times` (two per word), then `counts` (four per
    /// word), when they fit ([`Shape::inline`]).
    vars: [u64; INLINE_WORDS],
}

/// How a journey's per-prospect arrays are laid out in words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    stages: usize,
    signals: usize,
    tracked: usize,
    words: usize,
    inline: bool,
}

impl Shape {
    fn of(j: &Journey) -> Shape {
        let (stages, signals, tracked) = (j.stages.len(), j.signals.len(), j.tracked);
        let words = tracked + stages.div_ceil(2) + signals.div_ceil(4);
        Shape { stages, signals, tracked, words, inline: words <= INLINE_WORDS }
    }

    fn marks(self, w: &[u64]) -> &[Ts] {
        bytemuck::cast_slice(&w[..self.tracked])
    }

    fn stage_times(self, w: &[u64]) -> &[u32] {
        let from = self.tracked;
        &bytemuck::cast_slice(&w[from..from + self.stages.div_ceil(2)])[..self.stages]
    }

    fn counts(self, w: &[u64]) -> &[u16] {
        let from = self.tracked + self.stages.div_ceil(2);
        &bytemuck::cast_slice(&w[from..self.words])[..self.signals]
    }

    fn split_mut(self, w: &mut [u64]) -> Vars<'_> {
        let (marks, rest) = w[..self.words].split_at_mut(self.tracked);
        let (times, counts) = rest.split_at_mut(self.stages.div_ceil(2));
        Vars {
            marks: bytemuck::cast_slice_mut(marks),
            stage_times: &mut bytemuck::cast_slice_mut(times)[..self.stages],
            counts: &mut bytemuck::cast_slice_mut(counts)[..self.signals],
        }
    }

    /// Fresh arrays: never entered, never seen, no marks.
    fn init(self, w: &mut [u64]) {
        w.fill(0);
        w[..self.tracked].fill(Ts::NONE.0 as u64);
    }
}

/// One prospect's per-journey arrays, writable.
pub struct Vars<'a> {
    /// Per stage: seconds since the epoch + 1 at which it was entered, 0 = never.
    pub stage_times: &'a mut [u32],
    /// Per signal: how often it was seen (saturating).
    pub counts: &'a mut [u16],
    /// Per tracked signal: the last time it was seen (a hot rule looks back to it).
    pub marks: &'a mut [Ts],
}

#[derive(Clone)]
pub struct Store {
    shape: Shape,
    recs: Vec<Record>,
    /// The per-journey arrays when they do not fit a record: `shape.words` words per prospect.
    spill: Vec<u64>,
}

impl Store {
    pub fn new(journey: &Journey) -> Store {
        Store { shape: Shape::of(journey), recs: Vec::new(), spill: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.recs.len()
    }

    fn words(&self, i: usize) -> &[u64] {
        let w = self.shape.words;
        if self.shape.inline { &self.recs[i].vars[..w] } else { &self.spill[i * w..(i + 1) * w] }
    }

    /// Asks for prospect `i`'s record (and its arrays) to be brought into cache
    /// ([`crate::core::prefetch`]).
    pub fn prefetch(&self, i: usize) {
        let Some(rec) = self.recs.get(i) else { return };
        let bytes: &[u8] = bytemuck::bytes_of(&rec.vars);
        crate::core::prefetch::prefetch(&rec.fixed);
        bytes.iter().step_by(64).for_each(crate::core::prefetch::prefetch);
        if !self.shape.inline {
            let w = self.shape.words;
            self.spill
                .get(i * w..(i + 1) * w)
                .into_iter()
                .flatten()
                .step_by(8)
                .for_each(crate::core::prefetch::prefetch);
        }
    }

    pub fn fixed(&self, i: usize) -> &Prospect {
        &self.recs[i].fixed
    }

    pub fn fixed_mut(&mut self, i: usize) -> &mut Prospect {
        &mut self.recs[i].fixed
    }

    pub fn stage_times(&self, i: usize) -> &[u32] {
        self.shape.stage_times(self.words(i))
    }

    pub fn counts(&self, i: usize) -> &[u16] {
        self.shape.counts(self.words(i))
    }

    pub fn marks(&self, i: usize) -> &[Ts] {
        self.shape.marks(self.words(i))
    }

    /// A prospect's fixed state and arrays, both writable.
    pub fn state_mut(&mut self, i: usize) -> (&mut Prospect, Vars<'_>) {
        let (shape, w) = (self.shape, self.shape.words);
        let rec = &mut self.recs[i];
        let words = if shape.inline { &mut rec.vars[..w] } else { &mut self.spill[i * w..(i + 1) * w] };
        (&mut rec.fixed, shape.split_mut(words))
    }

    pub fn vars_mut(&mut self, i: usize) -> Vars<'_> {
        self.state_mut(i).1
    }

    pub fn iter_fixed(&self) -> impl Iterator<Item = &Prospect> {
        self.recs.iter().map(|r| &r.fixed)
    }

    /// Adds a prospect with fresh arrays.
    pub fn push(&mut self, fixed: Prospect) {
        let mut vars = [0; INLINE_WORDS];
        if self.shape.inline {
            self.shape.init(&mut vars[..self.shape.words]);
        } else {
            let from = self.spill.len();
            mem::reserve(&mut self.spill, self.shape.words);
            self.spill.resize(from + self.shape.words, 0);
            self.shape.init(&mut self.spill[from..]);
        }
        mem::reserve(&mut self.recs, 1);
        self.recs.push(Record { fixed, vars });
    }

    /// Puts a prospect with fresh arrays at `i`: a new record when `i` is the length, else over
    /// a freed one (its index reused).
    pub fn put(&mut self, i: usize, fixed: Prospect) {
        if i == self.len() {
            return self.push(fixed);
        }
        self.recs[i].fixed = fixed;
        let (shape, w) = (self.shape, self.shape.words);
        if shape.inline {
            shape.init(&mut self.recs[i].vars[..w]);
        } else {
            shape.init(&mut self.spill[i * w..(i + 1) * w]);
        }
    }

    /// Puts a prospect with the given state at `i` (the length, or a freed record).
    pub fn put_with(&mut self, i: usize, fixed: Prospect, stage_times: &[u32], counts: &[u16], marks: &[Ts]) {
        self.put(i, fixed);
        self.set_vars(i, stage_times, counts, marks);
    }

    /// Replaces a prospect's state.
    pub fn set(&mut self, i: usize, fixed: Prospect, stage_times: &[u32], counts: &[u16], marks: &[Ts]) {
        self.recs[i].fixed = fixed;
        self.set_vars(i, stage_times, counts, marks);
    }

    fn set_vars(&mut self, i: usize, stage_times: &[u32], counts: &[u16], marks: &[Ts]) {
        let v = self.vars_mut(i);
        v.stage_times.copy_from_slice(stage_times);
        v.counts.copy_from_slice(counts);
        v.marks.copy_from_slice(marks);
    }

    pub fn reserve(&mut self, n: usize) {
        mem::reserve(&mut self.recs, n);
        if !self.shape.inline {
            mem::reserve(&mut self.spill, n * self.shape.words);
        }
    }

    /// Heap bytes held (capacity).
    pub fn heap_bytes(&self) -> usize {
        self.recs.capacity() * std::mem::size_of::<Record>() + self.spill.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::journey::StageId;

    fn journey(path: &str) -> Journey {
        Journey::from_toml_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_record_is_three_cache_lines_and_the_shipped_journeys_fit_it() {
        assert_eq!(std::mem::size_of::<Record>(), 192);
        assert_eq!(std::mem::align_of::<Record>(), 64);
        for path in ["deploy/journeys/b2b.toml", "deploy/journeys/ecommerce.toml"] {
            assert!(Shape::of(&journey(path)).inline, "{path} spills");
        }
    }

    /// Writes distinct values to every array element of every prospect, then reads them back:
    /// no two arrays (or prospects) overlap, in either layout.
    fn round_trip(store: &mut Store) {
        let p = Prospect::new(StageId(0), Ts(0));
        for _ in 0..5 {
            store.push(p.clone());
        }
        let s = store.shape;
        for i in 0..5 {
            assert!(store.marks(i).iter().all(|m| m.is_none()));
            assert!(store.stage_times(i).iter().chain(store.counts(i).iter().map(|_| &0)).all(|&v| v == 0));
            let v = store.vars_mut(i);
            v.stage_times.iter_mut().enumerate().for_each(|(k, x)| *x = (i * 1000 + k) as u32);
            v.counts.iter_mut().enumerate().for_each(|(k, x)| *x = (i * 100 + k) as u16);
            v.marks.iter_mut().enumerate().for_each(|(k, x)| *x = Ts((i * 10_000 + k) as i64));
        }
        for i in 0..5 {
            assert_eq!(store.stage_times(i).len(), s.stages);
            assert_eq!(store.counts(i).len(), s.signals);
            assert_eq!(store.marks(i).len(), s.tracked);
            assert!(store.stage_times(i).iter().enumerate().all(|(k, &x)| x == (i * 1000 + k) as u32));
            assert!(store.counts(i).iter().enumerate().all(|(k, &x)| x == (i * 100 + k) as u16));
            assert!(store.marks(i).iter().enumerate().all(|(k, &x)| x == Ts((i * 10_000 + k) as i64)));
        }
    }

    #[test]
    fn arrays_round_trip_inline_and_spilled() {
        let j = journey("deploy/journeys/b2b.toml");
        let mut inline = Store::new(&j);
        assert!(inline.shape.inline);
        round_trip(&mut inline);
        let mut spilled = Store::new(&j);
        spilled.shape.inline = false;
        round_trip(&mut spilled);
        assert_eq!(spilled.spill.len(), 5 * spilled.shape.words);
    }
}
