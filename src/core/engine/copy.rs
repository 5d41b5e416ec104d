//! A checkpoint capture's copy of the changed prospects' raw parts ([`PartsCopy`]): taken on
//! the processing thread ([`Engine::copy_changed`]: memory copies, no encoding, no hashing),
//! then encoded into changelog records and digested on the writer thread from the copy, with
//! the same functions ([`Parts`]) the engine's own encoding and digest use.

use super::Engine;
use super::capture::SlotDigests;
use super::extras::Extras;
use super::snapshot::Parts;
use crate::core::breakdown::Slot;
use crate::core::ids::ProspectIx;
use crate::core::prospect::Prospect;
use crate::core::time::Ts;

/// How many entries ahead the copy asks for a prospect's memory (half as many for its id's
/// text, which needs where the id lies first).
const PREFETCH_AHEAD: usize = 16;

/// Changed prospects whose hash lookups (extras, email) are made together.
const CHUNK: usize = 16;

/// What an entry of the copy is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum What {
    /// A changed prospect: its changelog record and its digest.
    Record,
    /// A held prospect whose digest may have changed without a change of its own (expiring
    /// extras): its digest only.
    Digest,
    /// A freed slot: digest 0.
    Freed,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    slot: u32,
    what: What,
    /// Index of its fixed part and arrays (held entries).
    at: u32,
    id: (u32, u32),
    /// Start and length in `text`; length `u32::MAX`: no email.
    email: (u32, u32),
    /// Index in `extras`; `u32::MAX`: none in force.
    extras: u32,
    /// Start in `slots` (`dims` of them); `u32::MAX`: none.
    slots: u32,
    shown: (u32, u32),
}

/// The parts of a capture's prospects, copied from the engine into buffers reused between
/// captures (the copy goes to the writer thread with the job and comes back with it).
#[derive(Debug, Default)]
pub struct PartsCopy {
    entries: Vec<Entry>,
    fixed: Vec<Prospect>,
    stage_times: Vec<u32>,
    counts: Vec<u16>,
    marks: Vec<Ts>,
    text: Vec<u8>,
    /// Reused: the first `n_extras` are this capture's.
    extras: Vec<Extras>,
    n_extras: usize,
    slots: Vec<Slot>,
    shown: Vec<u64>,
    shape: (usize, usize, usize, usize),
    /// Breakdown value names per dimension, as of the capture (the engine's tables only grow;
    /// only names added since the previous capture are copied).
    names: Vec<Vec<Box<str>>>,
    /// Slots whose digest depends on the watermark (live extras) as of the capture.
    timed: Vec<u32>,
    /// Slots of the engine at the capture.
    slot_count: usize,
    /// One bit per slot: copied in this capture.
    copied: Vec<u64>,
    /// With digests: the copy also holds the freed and timed slots.
    digests: bool,
}

impl PartsCopy {
    /// Entries copied (changed prospects, then, with digests, freed and timed slots).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets the last capture (buffers kept).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.fixed.clear();
        self.stage_times.clear();
        self.counts.clear();
        self.marks.clear();
        self.text.clear();
        self.n_extras = 0;
        self.slots.clear();
        self.shown.clear();
        self.timed.clear();
        self.slot_count = 0;
        self.digests = false;
    }

    /// Whether entry `k` is a changed prospect (a changelog record).
    pub fn is_record(&self, k: usize) -> bool {
        self.entries[k].what == What::Record
    }

    /// Entry `k`'s slot in the engine.
    pub fn slot(&self, k: usize) -> u32 {
        self.entries[k].slot
    }

    /// Whether the copy was taken for the state digest too (freed and timed slots included).
    pub fn has_digests(&self) -> bool {
        self.digests
    }

    /// Entry `k`'s parts (`None`: a freed slot).
    pub fn parts(&self, k: usize) -> Option<Parts<'_>> {
        let e = &self.entries[k];
        if e.what == What::Freed {
            return None;
        }
        let (stages, signals, tracked, dims) = self.shape;
        let a = e.at as usize;
        let text = |(s, n): (u32, u32)| &self.text[s as usize..(s + n) as usize];
        Some(Parts {
            id: text(e.id),
            fixed: &self.fixed[a],
            stage_times: &self.stage_times[a * stages..(a + 1) * stages],
            counts: &self.counts[a * signals..(a + 1) * signals],
            marks: &self.marks[a * tracked..(a + 1) * tracked],
            // The engine holds emails as `str`; copied byte for byte.
            email: (e.email.1 != u32::MAX).then(|| std::str::from_utf8(text(e.email)).unwrap_or_default()),
            extras: (e.extras != u32::MAX).then(|| &self.extras[e.extras as usize]),
            slots: if e.slots == u32::MAX { &[] } else { &self.slots[e.slots as usize..e.slots as usize + dims] },
            shown: &self.shown[e.shown.0 as usize..(e.shown.0 + e.shown.1) as usize],
        })
    }

    /// The value of breakdown value id `id` in dimension `d`, as of the capture.
    pub fn value_name(&self, d: usize, id: u16) -> Option<&str> {
        let names = self.names.get(d)?;
        (id >= 2).then(|| names.get(id as usize - 2).map(|s| &**s)).flatten()
    }

    /// Slots whose digest depends on the watermark as of the capture (for [`SlotDigests`]).
    pub fn timed(&self) -> &[u32] {
        &self.timed
    }

    /// Slots of the engine at the capture.
    pub fn slot_count(&self) -> usize {
        self.slot_count
    }

    /// Heap bytes of the buffers.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.fixed.capacity() * std::mem::size_of::<Prospect>()
            + self.stage_times.capacity() * 4
            + self.counts.capacity() * 2
            + self.marks.capacity() * 8
            + self.text.capacity()
            + self.extras.capacity() * std::mem::size_of::<Extras>()
            + self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.shown.capacity() * 8
            + self.timed.capacity() * 4
            + self.copied.capacity() * 8
    }

    fn mark(&mut self, i: u32) -> bool {
        let (w, bit) = (i as usize / 64, 1u64 << (i % 64));
        if self.copied[w] & bit != 0 {
            return false;
        }
        self.copied[w] |= bit;
        true
    }
}

impl Engine {
    /// Copies the parts of the `changed` prospects into `into` (what their changelog records
    /// and digests are computed from, off this thread). With `digests` (the shard's digests per
    /// slot as of the previous capture), also the slots whose digest may have changed without a
    /// change of their own: the `freed` ones and those with expiring extras, now or at the
    /// previous capture; each slot once.
    pub fn copy_changed(
        &self,
        changed: &[ProspectIx],
        freed: &[u32],
        digests: Option<&SlotDigests>,
        into: &mut PartsCopy,
    ) {
        into.clear();
        let j = &self.journey;
        into.shape = (j.stages.len(), j.signals.len(), j.tracked, self.attr.dims);
        into.slot_count = self.store.len();
        into.digests = digests.is_some();
        self.copy_names(into);
        // Sized once for the changed prospects (nothing to do when an earlier capture did): a
        // buffer grown by doubling would copy what it holds at each step.
        let n = changed.len();
        into.entries.reserve(n);
        into.fixed.reserve(n);
        into.stage_times.reserve(n * into.shape.0);
        into.counts.reserve(n * into.shape.1);
        into.marks.reserve(n * into.shape.2);
        into.text.reserve(n * 24);
        for (c, chunk) in changed.chunks(CHUNK).enumerate() {
            // The chunk's hash lookups one after the other: they do not depend on each other,
            // so their cache misses overlap (one per prospect amid the copying would wait for
            // each in turn).
            let mut extras: [Option<&Extras>; CHUNK] = [None; CHUNK];
            let mut emails: [Option<&str>; CHUNK] = [None; CHUNK];
            for (k, &ix) in chunk.iter().enumerate() {
                extras[k] = self.extras.get(&ix.0);
                emails[k] = self.email(ix);
            }
            for (k, &ix) in chunk.iter().enumerate() {
                let g = c * CHUNK + k;
                if let Some(&ahead) = changed.get(g + PREFETCH_AHEAD) {
                    self.prefetch_prospect(ahead);
                }
                if let Some(&ahead) = changed.get(g + PREFETCH_AHEAD / 2) {
                    self.prefetch_id(ahead);
                }
                self.copy_one(ix.0, What::Record, (extras[k], emails[k]), into);
            }
        }
        let Some(digests) = digests else { return };
        into.copied.clear();
        into.copied.resize(self.store.len().div_ceil(64), 0);
        for &ix in changed {
            into.mark(ix.0);
        }
        for &i in freed {
            if into.mark(i) {
                self.copy_one(i, What::Freed, (None, None), into);
            }
        }
        into.timed
            .extend(self.extras.iter().filter(|(_, x)| !x.seen.is_empty() || !x.waiting.is_empty()).map(|(&i, _)| i));
        for k in 0..digests.timed().len() + into.timed.len() {
            let i = match digests.timed().get(k) {
                Some(&i) => i,
                None => into.timed[k - digests.timed().len()],
            };
            if (i as usize) < self.store.len() && into.mark(i) {
                let what = if self.holds(i as usize) { What::Digest } else { What::Freed };
                let found = (self.extras.get(&i), self.email(ProspectIx(i)));
                self.copy_one(i, what, found, into);
            }
        }
    }

    /// The breakdown value names added since the copy's previous capture (all of them when the
    /// copy's names are not a prefix of the engine's: another engine).
    fn copy_names(&self, into: &mut PartsCopy) {
        let tables = self.attr.tables();
        into.names.resize_with(tables.len(), Vec::new);
        for (names, t) in into.names.iter_mut().zip(tables) {
            let n = names.len();
            if n > t.names.len() || (n > 0 && names[n - 1] != t.names[n - 1]) {
                names.clear();
            }
            names.extend(t.names[names.len()..].iter().cloned());
        }
    }

    /// Copies slot `i`'s parts; `found`: its stored extras and email, looked up already.
    fn copy_one(&self, i: u32, what: What, found: (Option<&Extras>, Option<&str>), into: &mut PartsCopy) {
        let none = (0, u32::MAX);
        let mut e =
            Entry { slot: i, what, at: 0, id: (0, 0), email: none, extras: u32::MAX, slots: u32::MAX, shown: (0, 0) };
        if what == What::Freed {
            into.entries.push(e);
            return;
        }
        let (ix, u) = (ProspectIx(i), i as usize);
        e.at = into.fixed.len() as u32;
        into.fixed.push(self.store.fixed(u).clone());
        into.stage_times.extend_from_slice(self.store.stage_times(u));
        into.counts.extend_from_slice(self.store.counts(u));
        into.marks.extend_from_slice(self.store.marks(u));
        let text = |into: &mut PartsCopy, b: &[u8]| {
            let at = into.text.len() as u32;
            into.text.extend_from_slice(b);
            (at, b.len() as u32)
        };
        e.id = text(into, self.ids.get_bytes(ix));
        if let Some(m) = found.1 {
            e.email = text(into, m.as_bytes());
        }
        if let Some(x) = found.0.and_then(|x| self.live_of(x)) {
            let n = into.n_extras;
            if n == into.extras.len() {
                into.extras.push(Extras::default());
            }
            into.extras[n].clone_from(&x);
            into.n_extras += 1;
            e.extras = n as u32;
        }
        if self.attr.any(u) {
            e.slots = into.slots.len() as u32;
            into.slots.extend_from_slice(self.attr.of(u));
        }
        let shown = self.shown.get(u);
        e.shown = (into.shown.len() as u32, shown.len() as u32);
        into.shown.extend_from_slice(&shown);
        into.entries.push(e);
    }
}
