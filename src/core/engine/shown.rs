//! When each prospect first showed each validated signal (prospect-initiated, not an outcome):
//! what the signal table's time from a signal to the outcome is measured from.
//!
//! Per slot, only the signals the prospect showed, sorted by signal. Up to [`INLINE`] of them
//! (signals below 254) sit in the slot itself, 20 bytes with no allocation; a prospect that
//! showed more keeps them in a side map, each entry one `u64` (signal in the high 32 bits,
//! seconds since the epoch in the low 32), the packed form every reader gets.

use super::Engine;
use crate::core::ids::{self, ProspectIx};
use crate::core::time::{MS_PER_SEC, Ts};

/// Entries a slot holds without an allocation.
const INLINE: usize = 4;
/// `sigs[0]` of a slot whose entries are in the side map.
const SPILLED: u8 = u8::MAX;

/// Up to [`INLINE`] entries: first-shown seconds and signal + 1 (0: no entry), by signal.
#[derive(Clone, Copy, Debug, Default)]
struct Slot {
    secs: [u32; INLINE],
    sigs: [u8; INLINE],
}

/// First-shown times by prospect slot (state since version 5).
#[derive(Clone, Debug, Default)]
pub(super) struct FirstShown {
    slots: Vec<Slot>,
    spilled: hashbrown::HashMap<u32, Box<[u64]>, ids::IndexHasher>,
}

/// A slot's entries, packed, by signal (dereferences to a slice).
pub(super) enum Entries<'a> {
    Inline([u64; INLINE], usize),
    Spilled(&'a [u64]),
}

impl std::ops::Deref for Entries<'_> {
    type Target = [u64];
    fn deref(&self) -> &[u64] {
        match self {
            Entries::Inline(a, n) => &a[..*n],
            Entries::Spilled(s) => s,
        }
    }
}

/// One entry: signal and first-shown second.
fn pack(sig: u16, secs: u32) -> u64 {
    (u64::from(sig) << 32) | u64::from(secs)
}

/// An entry's signal and time.
pub(crate) fn unpack(e: u64) -> (u16, Ts) {
    ((e >> 32) as u16, Ts(i64::from(e as u32) * MS_PER_SEC))
}

/// An event time as a first-shown second (clamped to what 32 bits hold).
fn secs(ts: Ts) -> u32 {
    ts.0.div_euclid(MS_PER_SEC).clamp(0, i64::from(u32::MAX)) as u32
}

impl FirstShown {
    /// Slot `i`'s entries, sorted by signal.
    /// Asks for prospect `i`'s entries to be brought into cache ([`crate::core::prefetch`]).
    pub(super) fn prefetch(&self, i: usize) {
        if let Some(slot) = self.slots.get(i) {
            crate::core::prefetch::prefetch(slot);
        }
    }

    pub(super) fn get(&self, i: usize) -> Entries<'_> {
        let Some(slot) = self.slots.get(i) else { return Entries::Inline([0; INLINE], 0) };
        if slot.sigs[0] == SPILLED {
            return Entries::Spilled(self.spilled.get(&(i as u32)).map_or(&[], |s| &s[..]));
        }
        let mut a = [0; INLINE];
        let mut n = 0;
        for (e, (&sig, &secs)) in a.iter_mut().zip(slot.sigs.iter().zip(&slot.secs)) {
            if sig == 0 {
                break;
            }
            *e = pack(u16::from(sig - 1), secs);
            n += 1;
        }
        Entries::Inline(a, n)
    }

    /// Records that slot `i` showed `sig` at `ts` (the earlier time stays).
    pub(super) fn note(&mut self, i: usize, sig: u16, ts: Ts) {
        let e = pack(sig, secs(ts));
        let cur = self.get(i);
        match cur.binary_search_by_key(&sig, |&x| (x >> 32) as u16) {
            Ok(k) if e < cur[k] => {
                let mut v = cur.to_vec();
                v[k] = e;
                self.set(i, &v);
            }
            Ok(_) => {}
            Err(k) => {
                let mut v = Vec::with_capacity(cur.len() + 1);
                v.extend_from_slice(&cur[..k]);
                v.push(e);
                v.extend_from_slice(&cur[k..]);
                self.set(i, &v);
            }
        }
    }

    /// Replaces slot `i`'s entries (entries sorted by signal, each once).
    pub(super) fn set(&mut self, i: usize, entries: &[u64]) {
        if entries.is_empty() {
            self.clear(i);
            return;
        }
        if i >= self.slots.len() {
            self.slots.resize(i + 1, Slot::default());
        }
        let inline = entries.len() <= INLINE && entries.iter().all(|&e| (e >> 32) < u64::from(SPILLED - 1));
        if inline {
            let mut slot = Slot::default();
            for (k, &e) in entries.iter().enumerate() {
                slot.secs[k] = e as u32;
                slot.sigs[k] = (e >> 32) as u8 + 1;
            }
            self.slots[i] = slot;
            self.spilled.remove(&(i as u32));
        } else {
            self.slots[i] = Slot { secs: [0; INLINE], sigs: [SPILLED, 0, 0, 0] };
            self.spilled.insert(i as u32, entries.into());
        }
    }

    pub(super) fn clear(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i) {
            if s.sigs[0] == SPILLED {
                self.spilled.remove(&(i as u32));
            }
            *s = Slot::default();
        }
    }

    /// Slot `from`'s entries into slot `into` (an identity merge): every signal, the earlier
    /// time of each; `from` left empty.
    pub(super) fn merge(&mut self, from: usize, into: usize) {
        let taken = self.get(from).to_vec();
        self.clear(from);
        for e in taken {
            let (sig, at) = unpack(e);
            self.note(into, sig, at);
        }
    }

    /// Heap bytes held: the slot array, the side map and its allocations (rounded to the
    /// allocator's 16 bytes, with its 8-byte header).
    pub(super) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.spilled.capacity() * (std::mem::size_of::<(u32, Box<[u64]>)>() + 1)
            + self.spilled.values().map(|s| (s.len() * 8 + 8).div_ceil(16) * 16).sum::<usize>()
    }
}

impl Engine {
    /// When prospect `ix` first showed each validated signal it showed: `(signal, time)`, by
    /// signal (times to the second).
    pub fn first_shown(&self, ix: ProspectIx) -> impl Iterator<Item = (u16, Ts)> + '_ {
        self.shown.get(ix.0 as usize).to_vec().into_iter().map(unpack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_earliest_time_per_signal_sorted_by_signal() {
        let mut f = FirstShown::default();
        f.note(3, 7, Ts(50_000));
        f.note(3, 2, Ts(90_000));
        f.note(3, 7, Ts(40_000));
        f.note(3, 7, Ts(60_000));
        let got: Vec<_> = f.get(3).iter().map(|&e| unpack(e)).collect();
        assert_eq!(got, vec![(2, Ts(90_000)), (7, Ts(40_000))]);
        f.note(5, 2, Ts(10_000));
        f.note(5, 9, Ts(20_000));
        f.merge(5, 3);
        let got: Vec<_> = f.get(3).iter().map(|&e| unpack(e)).collect();
        assert_eq!(got, vec![(2, Ts(10_000)), (7, Ts(40_000)), (9, Ts(20_000))]);
        assert!(f.get(5).is_empty());
        // Past the inline four, and back: the same entries either way.
        for sig in [11, 4, 300] {
            f.note(3, sig, Ts(5_000));
        }
        let got: Vec<_> = f.get(3).iter().map(|&e| unpack(e).0).collect();
        assert_eq!(got, vec![2, 4, 7, 9, 11, 300]);
        assert_eq!(f.spilled.len(), 1);
        f.set(3, &[pack(1, 7)]);
        assert_eq!(f.spilled.len(), 0);
        assert_eq!(f.get(3).to_vec(), vec![pack(1, 7)]);
        f.clear(3);
        assert!(f.get(3).is_empty());
    }
}
