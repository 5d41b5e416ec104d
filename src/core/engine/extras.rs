//! Dedup and per-prospect extras: each prospect's ring of recent event ids, the older ids and
//! the sequence signals waiting for their anchor kept aside for the prospects that need them,
//! and emails.

use super::Engine;
use crate::core::ids::{self, ProspectIx};
use crate::core::journey::SignalId;
use crate::core::time::{Span, Ts};

/// Whether an event id was seen before for a prospect.
pub(super) enum Seen {
    New,
    /// The same id for the same signal: a redelivery, dropped.
    Redelivery,
    /// The same id for another signal: not a redelivery.
    OtherSignal,
}

/// Emails by prospect index, with one bit per prospect saying whether it has one: encoding and
/// digests ask every prospect, and most have none, so the bit answers without a hash lookup
/// (a cache miss per prospect on large shards).
#[derive(Clone, Default)]
pub(super) struct Emails {
    pub(super) map: hashbrown::HashMap<u32, Box<str>, ids::IndexHasher>,
    pub(super) present: Vec<u64>,
}

impl Emails {
    pub(super) fn has(&self, ix: u32) -> bool {
        self.present.get(ix as usize / 64).is_some_and(|w| w & (1 << (ix % 64)) != 0)
    }

    pub(super) fn get(&self, ix: &u32) -> Option<&str> {
        if self.has(*ix) { self.map.get(ix).map(|e| &**e) } else { None }
    }

    pub(super) fn insert(&mut self, ix: u32, email: Box<str>) {
        let w = ix as usize / 64;
        if w >= self.present.len() {
            self.present.resize(w + 1, 0);
        }
        self.present[w] |= 1 << (ix % 64);
        self.map.insert(ix, email);
    }

    pub(super) fn remove(&mut self, ix: &u32) {
        if self.has(*ix) {
            self.present[*ix as usize / 64] &= !(1 << (ix % 64));
            self.map.remove(ix);
        }
    }

    pub(super) fn capacity(&self) -> usize {
        self.map.capacity()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &Box<str>> {
        self.map.values()
    }
}

/// Per-prospect state beyond the fixed record, for the prospects that need it for a while.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extras {
    /// Dedup keys ([`dedup_key`]) pushed out of the prospect's ring of recent ids, each with
    /// the latest event time of the prospect when it was pushed out (no earlier than the
    /// event's own time). Kept while the watermark is within `time.dedup_hours` of that time.
    pub seen: Vec<(u64, Ts)>,
    /// Sequence-rule signals that arrived before their anchor (`after`): hot rule index, the
    /// signal's event time and event id. Kept while the watermark has not passed the signal's
    /// time (an anchor arriving later than that would be late and raise nothing).
    pub waiting: Vec<(u8, Ts, Box<str>)>,
    /// The hot rules that matched this prospect (an alert sent or held by the cooldown), each
    /// with the earliest event time it matched at, by rule: what the rules' precision, capture
    /// and lead time are measured from when the outcome comes (`[insight]`). Kept for good.
    pub alerted: Vec<(u8, Ts)>,
}

impl Extras {
    /// Drops what expired at `watermark`; true when nothing is left.
    pub(super) fn prune(&mut self, watermark: Ts, dedup_window: Span) -> bool {
        self.seen.retain(|&(_, t)| seen_live(t, watermark, dedup_window));
        self.waiting.retain(|&(_, t, _)| waiting_live(t, watermark));
        self.is_empty()
    }

    /// The entries still in force at `watermark`, in a canonical order (for encoding and
    /// digests, which must not depend on when expired entries were swept).
    pub fn live(&self, watermark: Ts, dedup_window: Span) -> Extras {
        let mut seen: Vec<_> =
            self.seen.iter().copied().filter(|&(_, t)| seen_live(t, watermark, dedup_window)).collect();
        seen.sort_unstable();
        let mut waiting: Vec<_> =
            self.waiting.iter().filter(|&&(_, t, _)| waiting_live(t, watermark)).cloned().collect();
        waiting.sort_unstable();
        Extras { seen, waiting, alerted: self.alerted.clone() }
    }

    /// Whether [`Extras::live`] would give these extras as they are: every entry in force at
    /// `watermark`, in canonical order.
    fn is_live(&self, watermark: Ts, dedup_window: Span) -> bool {
        self.seen.is_sorted()
            && self.waiting.is_sorted()
            && self.seen.iter().all(|&(_, t)| seen_live(t, watermark, dedup_window))
            && self.waiting.iter().all(|&(_, t, _)| waiting_live(t, watermark))
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty() && self.waiting.is_empty() && self.alerted.is_empty()
    }

    /// Records that hot rule `rule` matched at `at` (the earliest time stays).
    pub(super) fn matched(&mut self, rule: u8, at: Ts) {
        match self.alerted.binary_search_by_key(&rule, |&(r, _)| r) {
            Ok(k) => self.alerted[k].1 = self.alerted[k].1.min(at),
            Err(k) => self.alerted.insert(k, (rule, at)),
        }
    }

    /// Takes in another prospect's extras (an identity merge): every entry, the earlier match
    /// time of each rule.
    pub(super) fn absorb(&mut self, other: Extras) {
        self.seen.extend(other.seen);
        self.waiting.extend(other.waiting);
        for (r, t) in other.alerted {
            self.matched(r, t);
        }
    }

    /// Heap bytes held (capacity, not length).
    pub fn heap_bytes(&self) -> usize {
        self.seen.capacity() * std::mem::size_of::<(u64, Ts)>()
            + self.waiting.capacity() * std::mem::size_of::<(u8, Ts, Box<str>)>()
            + self.waiting.iter().map(|w| w.2.len()).sum::<usize>()
            + self.alerted.capacity() * std::mem::size_of::<(u8, Ts)>()
    }
}

fn seen_live(t: Ts, watermark: Ts, window: Span) -> bool {
    watermark.is_none() || t.plus(window) >= watermark
}

fn waiting_live(t: Ts, watermark: Ts) -> bool {
    watermark.is_none() || t >= watermark
}

/// An event id's dedup key: its fingerprint with the low byte replaced by the signal (so a
/// repeat of the same id for another signal is told apart from a redelivery). Never 0.
pub fn dedup_key(event_fingerprint: u64, sig: SignalId) -> u64 {
    (event_fingerprint & !0xff) | (u64::from(sig.0) % 255 + 1)
}

/// Whether two dedup keys belong to the same event id.
fn same_id(a: u64, b: u64) -> bool {
    a & !0xff == b & !0xff
}

impl Engine {
    /// Where a dedup key stands for a prospect: in its ring of recent ids or its older ids
    /// still within the dedup window.
    pub(super) fn seen(&self, ix: ProspectIx, key: u64) -> Seen {
        let p = self.store.fixed(ix.0 as usize);
        let window = self.journey.dedup_window;
        let older = self.extras.get(&ix.0).map_or(&[][..], |x| &x.seen[..]);
        let live = older.iter().filter(|&&(_, t)| seen_live(t, self.watermark, window)).map(|&(k, _)| k);
        let mut verdict = Seen::New;
        for k in p.recent.iter().copied().filter(|&k| k != 0).chain(live) {
            if k == key {
                return Seen::Redelivery;
            }
            if same_id(k, key) {
                verdict = Seen::OtherSignal;
            }
        }
        verdict
    }

    /// Records a dedup key in the prospect's ring; the key it pushes out moves to the prospect's
    /// older ids while the dedup window keeps it.
    pub(super) fn remember(&mut self, ix: ProspectIx, key: u64, ts: Ts) {
        let (watermark, window) = (self.watermark, self.journey.dedup_window);
        let p = self.store.fixed_mut(ix.0 as usize);
        let out = p.recent[p.recent_pos as usize];
        let at = if p.score_at.is_none() { ts } else { p.score_at.max(ts) };
        p.remember(key);
        if out != 0 && window.0 > 0 && seen_live(at, watermark, window) {
            let x = self.extras.entry(ix.0).or_default();
            // Expired ids are ignored anyway; dropping them at each doubling keeps this amortised
            // O(1) for a prospect with many events in the window.
            if x.seen.len() >= 8 && x.seen.len().is_power_of_two() {
                x.seen.retain(|&(_, t)| seen_live(t, watermark, window));
            }
            x.seen.push((out, at));
        }
    }

    /// A prospect's extras still in force at the watermark, if any.
    /// Borrowed when they already are what [`Extras::live`] would give (nothing expired, in
    /// canonical order: the common case, and no allocation on a checkpoint's capture).
    pub(super) fn live_extras(&self, ix: ProspectIx) -> Option<std::borrow::Cow<'_, Extras>> {
        self.live_of(self.extras.get(&ix.0)?)
    }

    /// [`Engine::live_extras`] of extras already looked up.
    pub(super) fn live_of<'a>(&self, stored: &'a Extras) -> Option<std::borrow::Cow<'a, Extras>> {
        let (watermark, window) = (self.watermark, self.journey.dedup_window);
        let x = if stored.is_live(watermark, window) {
            std::borrow::Cow::Borrowed(stored)
        } else {
            std::borrow::Cow::Owned(stored.live(watermark, window))
        };
        (!x.is_empty()).then_some(x)
    }
}

#[cfg(test)]
mod tests {
    use super::Extras;
    use crate::core::time::{Span, Ts};

    /// The capture reads extras in place when `is_live` says `live` would give them unchanged:
    /// it must say so only then (every entry in force, in canonical order), and for extras as
    /// the engine keeps them in steady state.
    #[test]
    fn extras_are_read_in_place_only_when_live_would_give_them_unchanged() {
        let window = Span::from_hours(24.0);
        let hour = 3_600_000;
        let sorted = Extras {
            seen: vec![(1, Ts(10 * hour)), (2, Ts(20 * hour))],
            waiting: vec![(0, Ts(30 * hour), "a".into()), (1, Ts(30 * hour), "b".into())],
            alerted: vec![(0, Ts(hour))],
        };
        let unsorted_seen = Extras { seen: vec![(2, Ts(20 * hour)), (1, Ts(10 * hour))], ..sorted.clone() };
        let unsorted_waiting =
            Extras { waiting: vec![(1, Ts(30 * hour), "b".into()), (0, Ts(30 * hour), "a".into())], ..sorted.clone() };
        let cases = [(&sorted, true), (&unsorted_seen, false), (&unsorted_waiting, false)];
        for watermark in [Ts::NONE, Ts(25 * hour), Ts(31 * hour), Ts(40 * hour)] {
            for (x, in_order) in cases {
                let all_live = watermark.is_none() || watermark <= Ts(30 * hour);
                assert_eq!(x.is_live(watermark, window), in_order && all_live, "{x:?} at {watermark:?}");
                if x.is_live(watermark, window) {
                    assert_eq!(&x.live(watermark, window), x);
                }
            }
        }
    }
}
