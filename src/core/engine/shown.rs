//! When each prospect first showed each validated signal (prospect-initiated, not an outcome):
//! what the signal table's time from a signal to the outcome is measured from.
//!
//! Per slot, only the signals the prospect showed, each as one `u64` (signal id in the high
//! 32 bits, seconds since the epoch in the low 32), sorted by signal: a prospect that showed
//! three signals costs a 16-byte slot and a 24-byte allocation.

use super::Engine;
use crate::core::ids::ProspectIx;
use crate::core::time::{MS_PER_SEC, Ts};

/// First-shown times by prospect slot (state since version 5).
#[derive(Clone, Debug, Default)]
pub(super) struct FirstShown {
    slots: Vec<Option<Box<[u64]>>>,
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
    pub(super) fn get(&self, i: usize) -> &[u64] {
        self.slots.get(i).and_then(|s| s.as_deref()).unwrap_or(&[])
    }

    /// Records that slot `i` showed `sig` at `ts` (the earlier time stays).
    pub(super) fn note(&mut self, i: usize, sig: u16, ts: Ts) {
        let e = pack(sig, secs(ts));
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        let slot = &mut self.slots[i];
        let cur = slot.as_deref().unwrap_or(&[]);
        match cur.binary_search_by_key(&sig, |&x| (x >> 32) as u16) {
            Ok(k) => {
                if let Some(s) = slot.as_mut().filter(|s| e < s[k]) {
                    s[k] = e;
                }
            }
            Err(k) => {
                let mut v = Vec::with_capacity(cur.len() + 1);
                v.extend_from_slice(&cur[..k]);
                v.push(e);
                v.extend_from_slice(&cur[k..]);
                *slot = Some(v.into_boxed_slice());
            }
        }
    }

    /// Replaces slot `i`'s entries (a restore; entries sorted by signal, each once).
    pub(super) fn set(&mut self, i: usize, entries: &[u64]) {
        if entries.is_empty() {
            self.clear(i);
            return;
        }
        if i >= self.slots.len() {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = Some(entries.into());
    }

    pub(super) fn clear(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i) {
            *s = None;
        }
    }

    /// Slot `from`'s entries into slot `into` (an identity merge): every signal, the earlier
    /// time of each; `from` left empty.
    pub(super) fn merge(&mut self, from: usize, into: usize) {
        let taken = self.slots.get_mut(from).and_then(Option::take);
        for e in taken.iter().flat_map(|s| s.iter()) {
            let (sig, _) = unpack(*e);
            self.note(into, sig, Ts(i64::from(*e as u32) * MS_PER_SEC));
        }
    }

    /// Slot `i` copied from `src` (captures).
    pub(super) fn copy_one_from(&mut self, src: &FirstShown, i: usize) {
        let e = src.get(i);
        self.set(i, e);
    }

    /// Heap bytes held: the slot array and each allocation (rounded to the allocator's 16 bytes,
    /// with its 8-byte header).
    pub(super) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Option<Box<[u64]>>>()
            + self.slots.iter().flatten().map(|s| (s.len() * 8 + 8).div_ceil(16) * 16).sum::<usize>()
    }
}

impl Engine {
    /// When prospect `ix` first showed each validated signal it showed: `(signal, time)`, by
    /// signal (times to the second).
    pub fn first_shown(&self, ix: ProspectIx) -> impl Iterator<Item = (u16, Ts)> + '_ {
        self.shown.get(ix.0 as usize).iter().map(|&e| unpack(e))
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
    }
}
