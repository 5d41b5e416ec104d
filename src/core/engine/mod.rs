//! The engine of one shard: prospects' state machines, the watermark, timers and funnel.
//!
//! Time rules (event time only):
//! - The shard's *clock* is the largest event time its traffic confirmed: an event more than
//!   `max_ahead` ahead of it moves it only once another prospect's event confirms the time (a
//!   client clock set ahead owns nothing). The watermark is the clock minus the journey's
//!   allowed lateness, or a later instant given to [`Engine::advance_to`]. A timer fires once
//!   the watermark is past its due time, or when one of its own prospect's later events
//!   arrives, whichever comes first.
//! - For one prospect, arrival order within the lateness does not matter: a sequence rule is
//!   checked when its anchor arrives after its signal, a silence timer is not armed over activity
//!   that already arrived, stage entry dates follow event time.
//! - An event behind the watermark is *late*. It produces [`Output::Late`] and still counts:
//!   dedup, counts per signal, score (added at its own event time), last activity, a
//!   forward stage move (emitted with `late: true`) and cancelling a pending silence timer whose
//!   window it falls in. It never raises a hot lead, never arms a timer and never clears a
//!   ghosted/stalled flag that already fired.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use serde::Serialize;

use super::event::{Event, EventKind};
use super::funnel::Funnel;
use super::ids::{self, Interner, InternerFull, ProspectIx};
use super::journey::{HotCondition, Journey, SignalId, StageId};
use super::output::{HotLead, Output, RejectReason};
use super::prospect::{self, Classification, Prospect};
use super::store::Store;
use super::time::{MS_PER_SEC, Ts};

pub mod snapshot;

/// See [`Engine::capture_into`]: an incremental capture is used while at most one prospect in
/// this many changed since the previous one (measured with `cargo bench --bench snapshot`).
const CAPTURE_FULL_SHARE: usize = 8;

const GHOST: u8 = 0;
const STALL: u8 = 1;

/// Counters of what the engine did with its input.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub events: u64,
    pub applied: u64,
    pub duplicates: u64,
    pub late: u64,
    pub unmapped: u64,
    /// Valid calls that carry no journey signal by nature (Segment `group`, `alias`).
    pub ignored: u64,
    pub rejected: u64,
    pub stage_changes: u64,
    pub hot_leads: u64,
    pub alerts_suppressed: u64,
    pub ghosted: u64,
    pub stalled: u64,
    /// Events more than `time.max_ahead_hours` ahead of the shard's clock when they arrived
    /// (a client clock set ahead): applied to their prospect, not allowed to move the clock.
    pub ahead: u64,
    /// Event ids seen again for a different signal: not a redelivery, applied as new events.
    pub duplicate_conflicts: u64,
    /// Prospects moved out of a terminal stage by one of its `reopen_on` signals, or whose
    /// outcome was replaced by a contradicting one within `time.outcome_correction_hours`.
    pub reopened: u64,
}

#[derive(Clone)]
pub struct Engine {
    journey: Arc<Journey>,
    ids: Interner,
    /// Each prospect's fixed state and per-journey arrays, indexed by `ProspectIx`.
    store: Store,
    /// Emails, for the prospects that gave one; kept aside so the others pay nothing for it.
    emails: Emails,
    timers: BinaryHeap<Reverse<(Ts, u32, u8)>>,
    /// Timers of prospects being restored, armed at once by [`Engine::finish_restore`].
    restored_timers: Vec<Reverse<(Ts, u32, u8)>>,
    watermark: Ts,
    /// The shard's clock: the largest event time that other traffic confirmed (see
    /// [`Engine::apply`]); the watermark trails it by the allowed lateness.
    max_event_ts: Ts,
    /// An event time more than `max_ahead` ahead of the clock, not yet confirmed by another
    /// prospect's event, and a fingerprint of the prospect that sent it (`Ts::NONE`: none).
    leap: (Ts, u64),
    /// Per-prospect state only some prospects need for a while (older event ids, sequence
    /// signals waiting for their anchor), kept aside so the others pay nothing for it.
    extras: hashbrown::HashMap<u32, Extras, ids::IndexHasher>,
    /// Watermark at the last sweep of expired extras.
    swept_at: Ts,
    funnel: Funnel,
    stats: Stats,
    /// Three bits per prospect, per 64 prospects: `[0]` changed since the last
    /// [`Engine::take_changed`] (the changelog), `[1]` changed since the last
    /// [`Engine::capture_into`] (incremental captures), `[2]` email changed since the last
    /// capture.
    changed: Vec<[u64; 3]>,
    /// Which engine's state this is and how many captures it made, so that a capture can tell
    /// whether its destination holds exactly the previous capture of this engine.
    lineage: Lineage,
    captures: u64,
    /// In a capture: `(lineage, captures)` of the engine it is a copy of.
    captured_from: Option<(u64, u64)>,
}

/// Whether an event id was seen before for a prospect.
enum Seen {
    New,
    /// The same id for the same signal: a redelivery, dropped.
    Redelivery,
    /// The same id for another signal: not a redelivery.
    OtherSignal,
}

/// An engine's identity for incremental captures; a clone gets a new one (a clone that goes on
/// applying events is not the engine a capture was taken from).
#[derive(Debug)]
struct Lineage(u64);

impl Lineage {
    fn new() -> Lineage {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Lineage(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

impl Clone for Lineage {
    fn clone(&self) -> Lineage {
        Lineage::new()
    }
}

/// Emails by prospect index, with one bit per prospect saying whether it has one: encoding and
/// digests ask every prospect, and most have none, so the bit answers without a hash lookup
/// (a cache miss per prospect on large shards).
#[derive(Clone, Default)]
struct Emails {
    map: hashbrown::HashMap<u32, Box<str>, ids::IndexHasher>,
    present: Vec<u64>,
}

impl Emails {
    fn has(&self, ix: u32) -> bool {
        self.present.get(ix as usize / 64).is_some_and(|w| w & (1 << (ix % 64)) != 0)
    }

    fn get(&self, ix: &u32) -> Option<&str> {
        if self.has(*ix) { self.map.get(ix).map(|e| &**e) } else { None }
    }

    fn insert(&mut self, ix: u32, email: Box<str>) {
        let w = ix as usize / 64;
        if w >= self.present.len() {
            self.present.resize(w + 1, 0);
        }
        self.present[w] |= 1 << (ix % 64);
        self.map.insert(ix, email);
    }

    fn remove(&mut self, ix: &u32) {
        if self.has(*ix) {
            self.present[*ix as usize / 64] &= !(1 << (ix % 64));
            self.map.remove(ix);
        }
    }

    fn capacity(&self) -> usize {
        self.map.capacity()
    }

    fn values(&self) -> impl Iterator<Item = &Box<str>> {
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
}

impl Extras {
    /// Drops what expired at `watermark`; true when nothing is left.
    fn prune(&mut self, watermark: Ts, dedup_window: super::time::Span) -> bool {
        self.seen.retain(|&(_, t)| seen_live(t, watermark, dedup_window));
        self.waiting.retain(|&(_, t, _)| waiting_live(t, watermark));
        self.seen.is_empty() && self.waiting.is_empty()
    }

    /// The entries still in force at `watermark`, in a canonical order (for encoding and
    /// digests, which must not depend on when expired entries were swept).
    pub fn live(&self, watermark: Ts, dedup_window: super::time::Span) -> Extras {
        let mut seen: Vec<_> =
            self.seen.iter().copied().filter(|&(_, t)| seen_live(t, watermark, dedup_window)).collect();
        seen.sort_unstable();
        let mut waiting: Vec<_> =
            self.waiting.iter().filter(|&&(_, t, _)| waiting_live(t, watermark)).cloned().collect();
        waiting.sort_unstable();
        Extras { seen, waiting }
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty() && self.waiting.is_empty()
    }
}

fn seen_live(t: Ts, watermark: Ts, window: super::time::Span) -> bool {
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

/// When a prospect that has won won: the earliest entry into the won stage or a stage after it.
fn won_since(journey: &Journey, stage_times: &[u32]) -> Ts {
    let Some(w) = journey.stages.iter().position(|s| s.outcome == Some(super::journey::Outcome::Won)) else {
        return Ts::NONE;
    };
    (w..journey.stages.len())
        .filter(|&k| !journey.stages[k].terminal && stage_times[k] != 0)
        .map(|k| Ts((i64::from(stage_times[k]) - 1) * MS_PER_SEC))
        .min()
        .unwrap_or(Ts::NONE)
}

/// The furthest non-terminal stage a prospect entered (stages before it count as passed).
fn furthest_reached(journey: &Journey, stage_times: &[u32]) -> Option<StageId> {
    (0..journey.stages.len())
        .rev()
        .find(|&k| !journey.stages[k].terminal && stage_times[k] != 0)
        .map(|k| StageId(k as u8))
}

fn stage_secs(ts: Ts) -> u32 {
    (ts.0.div_euclid(MS_PER_SEC) + 1).clamp(1, i64::from(u32::MAX)) as u32
}

impl Engine {
    pub fn new(journey: Arc<Journey>) -> Engine {
        Engine {
            funnel: Funnel::new(&journey),
            store: Store::new(&journey),
            journey,
            ids: Interner::default(),
            emails: Emails::default(),
            timers: BinaryHeap::new(),
            restored_timers: Vec::new(),
            watermark: Ts::NONE,
            max_event_ts: Ts::NONE,
            leap: (Ts::NONE, 0),
            extras: hashbrown::HashMap::default(),
            swept_at: Ts::NONE,
            stats: Stats::default(),
            changed: Vec::new(),
            lineage: Lineage::new(),
            captures: 0,
            captured_from: None,
        }
    }

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
        let incremental = dst.captured_from == Some((self.lineage.0, self.captures))
            && Arc::ptr_eq(&dst.journey, &self.journey)
            && dst.len() <= self.len()
            && self.changed.iter().map(|w| w[1].count_ones() as usize).sum::<usize>() * CAPTURE_FULL_SHARE
                <= self.len();
        if incremental {
            self.copy_changed_into(dst);
        } else {
            dst.journey = Arc::clone(&self.journey);
            dst.ids.clone_from(&self.ids);
            dst.store.copy_all_from(&self.store);
            dst.emails.clone_from(&self.emails);
            dst.extras.clone_from(&self.extras);
        }
        self.changed.iter_mut().for_each(|w| (w[1], w[2]) = (0, 0));
        dst.timers.clear();
        dst.watermark = self.watermark;
        dst.max_event_ts = self.max_event_ts;
        dst.leap = self.leap;
        dst.funnel.clone_from(&self.funnel);
        dst.stats.clone_from(&self.stats);
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
        let old = dst.len();
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
    fn mark_email_changed(&mut self, ix: u32) {
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
    pub fn take_changed(&mut self) -> Vec<ProspectIx> {
        let mut out = Vec::new();
        for (w, bits) in self.changed.iter_mut().enumerate() {
            let mut b = std::mem::take(&mut bits[0]);
            while b != 0 {
                out.push(ProspectIx((w * 64) as u32 + b.trailing_zeros()));
                b &= b - 1;
            }
        }
        out
    }

    /// Whether any prospect changed since the last [`Engine::take_changed`].
    pub fn has_changes(&self) -> bool {
        self.changed.iter().any(|b| b[0] != 0)
    }

    /// A prospect's extras still in force at the watermark, if any.
    fn live_extras(&self, ix: ProspectIx) -> Option<Extras> {
        let x = self.extras.get(&ix.0)?.live(self.watermark, self.journey.dedup_window);
        (!x.is_empty()).then_some(x)
    }

    fn prospect_parts(&self, ix: ProspectIx) -> (&Prospect, &[u32], &[u16], &[Ts]) {
        let i = ix.0 as usize;
        (self.store.fixed(i), self.store.stage_times(i), self.store.counts(i), self.store.marks(i))
    }

    fn reserve(&mut self, n: usize) {
        self.ids.reserve(n, n * 24);
        self.store.reserve(n);
    }

    /// Adds a prospect read from a full state (restore of a snapshot): the id must be new.
    /// Its timers are collected and armed by [`Engine::finish_restore`]; nothing is marked
    /// changed. `Err` if the id is already there (damaged state) or the shard is full.
    fn restore_prospect(&mut self, id: &str, rec: &snapshot::ProspectRecord<'_>) -> Result<ProspectIx, InternerFull> {
        let ix = self.ids.intern_new(id)?.ok_or(InternerFull)?;
        self.store.push_with(rec.fixed.clone(), &rec.stage_times, &rec.counts, &rec.marks);
        if let Some(e) = rec.email {
            self.emails.insert(ix.0, e.into());
        }
        if !rec.extras.is_empty() {
            self.extras.insert(ix.0, rec.extras.clone());
        }
        let p = &rec.fixed;
        let timers = &mut self.restored_timers;
        if !p.ghost_due.is_none() {
            timers.push(Reverse((p.ghost_due, ix.0, GHOST)));
        }
        if !p.stall_due.is_none() {
            timers.push(Reverse((p.stall_due, ix.0, STALL)));
        }
        Ok(ix)
    }

    /// Ends a restore: arms the collected timers, clears every change mark.
    fn finish_restore(&mut self) {
        let mut all = std::mem::take(&mut self.timers).into_vec();
        all.append(&mut self.restored_timers);
        self.timers = BinaryHeap::from(all);
        self.changed.clear();
    }

    /// Installs a prospect's whole state (restore): replaces it if the id is known, adds it
    /// otherwise, and re-arms its timers. Funnel and stats are not touched (they come with the
    /// shard meta).
    pub fn install(&mut self, id: &str, rec: snapshot::ProspectRecord<'_>) -> Result<ProspectIx, InternerFull> {
        let (ix, new) = self.ids.intern(id)?;
        let i = ix.0 as usize;
        if new {
            self.store.push_with(rec.fixed, &rec.stage_times, &rec.counts, &rec.marks);
        } else {
            self.store.set(i, rec.fixed, &rec.stage_times, &rec.counts, &rec.marks);
        }
        match rec.email {
            Some(e) => {
                self.emails.insert(ix.0, e.into());
            }
            None => {
                self.emails.remove(&ix.0);
            }
        }
        self.mark_email_changed(ix.0);
        if rec.extras.is_empty() {
            self.extras.remove(&ix.0);
        } else {
            self.extras.insert(ix.0, rec.extras);
        }
        let p = self.store.fixed(i);
        if !p.ghost_due.is_none() {
            self.timers.push(Reverse((p.ghost_due, ix.0, GHOST)));
        }
        if !p.stall_due.is_none() {
            self.timers.push(Reverse((p.stall_due, ix.0, STALL)));
        }
        self.mark_changed(ix.0);
        Ok(ix)
    }

    pub fn journey(&self) -> &Arc<Journey> {
        &self.journey
    }

    pub fn watermark(&self) -> Ts {
        self.watermark
    }

    /// The shard's clock: the largest event time its traffic confirmed (`Ts::NONE` until two
    /// prospects agree; see [`Engine::apply`]'s clock rule). An unconfirmed jump ahead is not
    /// included.
    pub fn max_event_time(&self) -> Ts {
        self.max_event_ts
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn funnel(&self) -> &Funnel {
        &self.funnel
    }

    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.len() == 0
    }

    pub fn prospect_id(&self, ix: ProspectIx) -> &str {
        self.ids.get(ix)
    }

    pub fn find(&self, id: &str) -> Option<ProspectIx> {
        self.ids.find(id)
    }

    pub fn prospect(&self, ix: ProspectIx) -> &Prospect {
        self.store.fixed(ix.0 as usize)
    }

    pub fn email(&self, ix: ProspectIx) -> Option<&str> {
        self.emails.get(&ix.0)
    }

    /// Moves the watermark to `t` (if later) and fires every timer it passes. The shell calls
    /// this with the wall clock when a shard is idle, and at the end of a replay.
    pub fn advance_to(&mut self, t: Ts, out: &mut Vec<Output>) {
        if t > self.watermark {
            self.watermark = t;
            self.fire_timers(out);
        }
    }

    fn reject(&mut self, reason: RejectReason, detail: String, out: &mut Vec<Output>) {
        self.stats.rejected += 1;
        out.push(Output::Rejected { reason, detail });
    }

    /// Applies one event, appending what it caused to `out`.
    pub fn apply(&mut self, ev: &Event<'_>, out: &mut Vec<Output>) {
        self.stats.events += 1;
        let journey = Arc::clone(&self.journey);
        let Some(sig) = ev.signal else {
            if matches!(ev.kind, EventKind::Group | EventKind::Alias) {
                self.stats.ignored += 1;
                return;
            }
            if ev.kind == EventKind::Identify
                && let (Some(ix), Some(email)) = (self.ids.find(&ev.prospect), &ev.email)
            {
                self.emails.insert(ix.0, (**email).into());
                self.mark_email_changed(ix.0);
            }
            match journey.unmapped {
                super::journey::UnmappedPolicy::Ignore => self.stats.unmapped += 1,
                super::journey::UnmappedPolicy::Reject => self.reject(
                    RejectReason::UnknownSignal,
                    format!("event `{}` maps to no signal of journey `{}`", ev.name, journey.name),
                    out,
                ),
            }
            return;
        };
        let def = journey.signal(sig);
        if !def.source.admits(ev.source) {
            let detail = format!(
                "signal `{}` is accepted from {} only; this event came from {}",
                def.name,
                def.source.as_str(),
                ev.source.as_str()
            );
            return self.reject(RejectReason::SourceMismatch, detail, out);
        }
        let key = dedup_key(ids::event_fingerprint(&ev.event_id), sig);
        let (ix, new) = match self.ids.intern(&ev.prospect) {
            Ok(v) => v,
            Err(InternerFull) => {
                let detail = format!("shard holds {} prospects, its id arena is full", self.store.len());
                return self.reject(RejectReason::Capacity, detail, out);
            }
        };
        let i = ix.0 as usize;
        if new {
            self.store.push(Prospect::new(journey.first_stage(), ev.ts));
        } else {
            match self.seen(ix, key) {
                Seen::Redelivery => {
                    self.stats.duplicates += 1;
                    return;
                }
                Seen::OtherSignal => self.stats.duplicate_conflicts += 1,
                Seen::New => {}
            }
        }
        self.stats.applied += 1;
        self.mark_changed(ix.0);
        self.remember(ix, key, ev.ts);
        if let Some(email) = &ev.email
            && self.email(ix) != Some(&**email)
        {
            self.emails.insert(ix.0, (**email).into());
            self.mark_email_changed(ix.0);
        }

        let ts = ev.ts;
        let late = !self.watermark.is_none() && ts < self.watermark;
        if late {
            self.stats.late += 1;
            out.push(Output::Late { prospect: ix, signal: sig, at: ts, watermark: self.watermark });
        } else {
            self.tick_clock(ts, &ev.prospect, out);
            self.fire_own_timers(ix, ts, out);
        }

        // Counts and look-back marks.
        let (p, vars) = self.store.state_mut(i);
        let count = &mut vars.counts[sig.0 as usize];
        let seen_before = *count;
        *count = count.saturating_add(1);
        if let Some(slot) = def.tracked_slot {
            let m = &mut vars.marks[slot as usize];
            if m.is_none() || ts > *m {
                *m = ts;
            }
        }

        // Score, decayed in event time.
        if ts > p.score_at {
            p.score *= (-journey.decay_rate * ts.since(p.score_at).0 as f64).exp();
            p.score_at = ts;
        }
        let score_before = p.score;
        let scores = def.cap.is_none_or(|cap| (f64::from(seen_before) + 1.0) * def.weight.abs() <= cap + 1e-9);
        if scores {
            let w = if ts < p.score_at {
                def.weight * (-journey.decay_rate * p.score_at.since(ts).0 as f64).exp()
            } else {
                def.weight
            };
            p.score = (p.score + w).clamp(-journey.max_score, journey.max_score);
        }

        // Activity and silence timers.
        if def.prospect_initiated {
            if p.last_activity.is_none() || ts > p.last_activity {
                p.last_activity = ts;
            }
            if let Some(g) = journey.ghost
                && !p.ghost_due.is_none()
                && ts <= p.ghost_due
                && ts > p.ghost_due.minus(g.window)
            {
                p.ghost_due = Ts::NONE;
            }
            if !late {
                p.flags &= !prospect::GHOSTED;
            }
        }
        if def.disqualifies {
            p.flags |= prospect::DISQUALIFIED;
        }

        // Stage: forward only; a new prospect enters at least the first stage.
        let target = if new { Some(def.enters.unwrap_or(journey.first_stage())) } else { def.enters };
        if let Some(to) = target {
            self.enter_stage(&journey, ix, new, to, sig, ts, late, out);
        }
        // Silence timer (after the stage move: a reopened deal's new quote is watched too).
        let p = self.store.fixed_mut(i);
        if let Some(g) = journey.ghost
            && g.after == sig
            && !late
            && !journey.stage(p.stage).terminal
            && !p.has(prospect::OUTCOME_WON)
        {
            let due = ts.plus(g.window);
            // Prospect activity already inside the window (it arrived first): not silent.
            let answered = !p.last_activity.is_none() && p.last_activity > ts && p.last_activity <= due;
            if !answered && (p.ghost_due.is_none() || due > p.ghost_due) {
                p.ghost_due = due;
                self.timers.push(Reverse((due, ix.0, GHOST)));
            }
        }

        if !late {
            self.hot_rules(&journey, ix, sig, ev, score_before, out);
            if def.tracked_slot.is_some() {
                self.anchor_arrived(&journey, ix, sig, ts, out);
            }
        }
    }

    /// Where a dedup key stands for a prospect: in its ring of recent ids or its older ids
    /// still within the dedup window.
    fn seen(&self, ix: ProspectIx, key: u64) -> Seen {
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
    fn remember(&mut self, ix: ProspectIx, key: u64, ts: Ts) {
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

    /// Moves the shard's clock for an on-time event at `u` from the prospect with fingerprint
    /// `q`. The clock follows event time, but a time more than `max_ahead` ahead of it (a client
    /// clock set ahead, a year-9999 timestamp) moves it only once an event of another prospect
    /// confirms it, i.e. comes no earlier than `max_ahead` before it. A fresh shard's first
    /// event needs that confirmation too.
    fn tick_clock(&mut self, u: Ts, prospect: &str, out: &mut Vec<Output>) {
        let ahead = self.journey.max_ahead;
        let c = self.max_event_ts;
        if !c.is_none() && u <= c.plus(ahead) {
            return self.set_clock(u, out);
        }
        let q = ids::event_fingerprint(prospect);
        let (t, from) = self.leap;
        if !t.is_none() && from != q && u >= t.minus(ahead) {
            // Two prospects agree that time has come at least this far.
            self.set_clock(u.min(t), out);
            self.set_clock(u.max(t).min(self.max_event_ts.plus(ahead)), out);
            if u > self.max_event_ts.plus(ahead) {
                self.leap = (u, q);
                self.stats.ahead += 1;
            }
            return;
        }
        // Unconfirmed: remembered, applied to its prospect, the clock stays. A leap further
        // behind a remembered one replaces it (the remembered one is the suspicious clock).
        if !c.is_none() {
            self.stats.ahead += 1;
        }
        self.leap = (u, q);
    }

    fn set_clock(&mut self, u: Ts, out: &mut Vec<Output>) {
        if self.max_event_ts.is_none() || u > self.max_event_ts {
            self.max_event_ts = u;
            let wm = u.minus(self.journey.allowed_lateness);
            if self.watermark.is_none() || wm > self.watermark {
                self.watermark = wm;
                self.fire_timers(out);
                self.sweep();
            }
        }
        if !self.leap.0.is_none() && self.leap.0 <= self.max_event_ts.plus(self.journey.max_ahead) {
            self.leap = (Ts::NONE, 0);
        }
    }

    /// Drops expired extras once the watermark moved an hour since the last sweep (expired
    /// entries are ignored anyway; this only returns their memory).
    fn sweep(&mut self) {
        if !self.swept_at.is_none() && self.watermark < self.swept_at.plus(super::time::Span::from_hours(1.0)) {
            return;
        }
        self.swept_at = self.watermark;
        let (watermark, window) = (self.watermark, self.journey.dedup_window);
        self.extras.retain(|_, x| !x.prune(watermark, window));
    }

    /// A sequence rule's anchor (`after`) arrived: sequence signals of this prospect that
    /// arrived before it but happened within the rule's window after it make the prospect hot
    /// now, as if they had arrived in event-time order (the alert names the signal's event).
    fn anchor_arrived(&mut self, journey: &Journey, ix: ProspectIx, sig: SignalId, ts: Ts, out: &mut Vec<Output>) {
        let Some(x) = self.extras.get_mut(&ix.0) else { return };
        let mut hits: Vec<(u8, Ts, Box<str>)> = Vec::new();
        x.waiting.retain(|(r, s, id)| {
            let hit = matches!(
                journey.hot_rules[*r as usize].condition,
                HotCondition::Signal { after: Some((a, within)), .. } if a == sig && *s >= ts && s.since(ts) <= within
            );
            if hit {
                hits.push((*r, *s, id.clone()));
            }
            !hit
        });
        if x.is_empty() {
            self.extras.remove(&ix.0);
        }
        hits.sort();
        for (r, s, id) in hits {
            let HotCondition::Signal { signal, .. } = journey.hot_rules[r as usize].condition else { continue };
            self.raise(journey, ix, 1 << r, signal, &id, s, out);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn enter_stage(
        &mut self,
        journey: &Journey,
        ix: ProspectIx,
        new: bool,
        to: StageId,
        sig: SignalId,
        ts: Ts,
        late: bool,
        out: &mut Vec<Output>,
    ) {
        let i = ix.0 as usize;
        let (p, vars) = self.store.state_mut(i);
        let from = (!new).then_some(p.stage);
        let mut reopen = false;
        if let Some(f) = from {
            let cur = journey.stage(f);
            let won = p.has(prospect::OUTCOME_WON);
            if cur.terminal {
                // A terminal stage is final, unless one of its `reopen_on` signals comes after
                // the prospect entered it (the CRM reopened the deal).
                if late || ts <= p.stage_entered || !cur.reopen_on.contains(&sig) {
                    return;
                }
                reopen = true;
            } else if journey.stage(to).order <= cur.order {
                // Forward only. An event that happened before the current stage was entered
                // but arrived after it still dates the stages it marks, as in event-time order.
                let secs = stage_secs(ts);
                let before_higher = (to.0 as usize + 1..journey.stages.len())
                    .all(|k| journey.stages[k].terminal || vars.stage_times[k] == 0 || vars.stage_times[k] > secs);
                if !late && !journey.stage(to).terminal && ts <= p.stage_entered && before_higher {
                    let v = &mut vars.stage_times[to.0 as usize];
                    if *v == 0 || secs < *v {
                        *v = secs;
                    }
                    for v in &mut vars.stage_times[..to.0 as usize] {
                        if *v > secs {
                            *v = 0;
                        }
                    }
                    if to == f && ts < p.stage_entered {
                        p.stage_entered = ts;
                        if !p.stall_due.is_none()
                            && let Some(st) = journey.stall
                        {
                            p.stall_due = ts.plus(st.window);
                            self.timers.push(Reverse((p.stall_due, ix.0, STALL)));
                        }
                    }
                }
                return;
            } else if won && journey.stage(to).terminal {
                // A customer who has won is not lost by a later `deal_lost` (a lost upsell, not
                // a lost customer), unless it corrects the win within the correction window.
                let won_at = won_since(journey, vars.stage_times);
                if late || won_at.is_none() || ts <= won_at || ts.since(won_at) > journey.outcome_correction {
                    return;
                }
                reopen = true;
            }
        }
        if reopen {
            // The previous outcome no longer stands: outcome statistics follow the latest one.
            self.stats.reopened += 1;
            for (flag, o) in [
                (prospect::OUTCOME_WON, super::journey::Outcome::Won),
                (prospect::OUTCOME_LOST, super::journey::Outcome::Lost),
            ] {
                if p.has(flag) {
                    p.flags &= !flag;
                    self.funnel.retract_outcome(o, vars.counts);
                }
            }
        }
        let furthest = if reopen { furthest_reached(journey, vars.stage_times) } else { None };
        self.funnel.transition_from(journey, from, furthest, to, ts.since(p.stage_entered));
        // Earlier stages dated after this entry were entered only because their events arrived
        // first: in event-time order the prospect was already here then.
        for v in &mut vars.stage_times[..to.0 as usize] {
            if *v > stage_secs(ts) {
                *v = 0;
            }
        }
        vars.stage_times[to.0 as usize] = stage_secs(ts);
        p.stage = to;
        p.stage_entered = ts;
        if !late {
            // A late move never clears a stalled flag that already fired (module docs).
            p.flags &= !prospect::STALLED;
        }
        p.stall_due = Ts::NONE;
        let def = journey.stage(to);
        if def.terminal || def.outcome.is_some() {
            p.ghost_due = Ts::NONE;
        } else if let Some(s) = journey.stall
            && !late
            && s.stages & (1 << to.0) != 0
        {
            p.stall_due = ts.plus(s.window);
            self.timers.push(Reverse((p.stall_due, ix.0, STALL)));
        }
        // The outcome of the stage entered, or of an outcome stage skipped on the way (usage
        // seen before the CRM's `deal_won` arrived still means won).
        let skipped = from.map_or(0, |f| f.0 as usize + 1)..to.0 as usize;
        let outcome = def.outcome.filter(|_| def.terminal).or_else(|| {
            skipped.chain(std::iter::once(to.0 as usize)).rev().find_map(|k| {
                let s = &journey.stages[k];
                if s.terminal { None } else { s.outcome }
            })
        });
        if let Some(o) = outcome
            && !p.has(prospect::OUTCOME_WON | prospect::OUTCOME_LOST)
        {
            p.flags |= match o {
                super::journey::Outcome::Won => prospect::OUTCOME_WON,
                super::journey::Outcome::Lost => prospect::OUTCOME_LOST,
            };
            self.funnel.outcome(o, vars.counts);
        }
        self.stats.stage_changes += 1;
        out.push(Output::StageChanged { prospect: ix, from, to, signal: sig, at: ts, late });
    }

    fn hot_rules(
        &mut self,
        journey: &Journey,
        ix: ProspectIx,
        sig: SignalId,
        ev: &Event<'_>,
        score_before: f64,
        out: &mut Vec<Output>,
    ) {
        let i = ix.0 as usize;
        let p = self.store.fixed(i);
        if p.has(prospect::DISQUALIFIED) || journey.stage(p.stage).terminal {
            return;
        }
        let ts = ev.ts;
        let mut fired = 0u32;
        let mut wait = 0u32;
        for (r, rule) in journey.hot_rules.iter().enumerate() {
            let hit = match rule.condition {
                HotCondition::ScoreAtLeast(t) => score_before < t && p.score >= t,
                HotCondition::Signal { signal, after } => {
                    signal == sig
                        && after.is_none_or(|(a, within)| {
                            let slot = journey.signal(a).tracked_slot.map_or(0, usize::from);
                            let m = self.store.marks(i)[slot];
                            let hit = !m.is_none() && m <= ts && ts.since(m) <= within;
                            if !hit {
                                // The anchor may still arrive (out of order, within the lateness).
                                wait |= 1 << r;
                            }
                            hit
                        })
                }
            };
            if hit {
                fired |= 1 << r;
            }
        }
        if wait != 0 {
            let x = self.extras.entry(ix.0).or_default();
            for r in (0..journey.hot_rules.len()).filter(|r| wait & (1 << r) != 0) {
                x.waiting.push((r as u8, ts, ev.event_id.as_ref().into()));
            }
        }
        if fired != 0 {
            self.raise(journey, ix, fired, sig, &ev.event_id, ts, out);
        }
    }

    /// Makes a prospect hot by the rules in `fired` (bits), triggered by event `event_id` of
    /// signal `sig` at `ts`; alerts unless an alert went out within the cooldown.
    #[allow(clippy::too_many_arguments)]
    fn raise(
        &mut self,
        journey: &Journey,
        ix: ProspectIx,
        fired: u32,
        sig: SignalId,
        event_id: &str,
        ts: Ts,
        out: &mut Vec<Output>,
    ) {
        let p = self.store.fixed_mut(ix.0 as usize);
        if p.has(prospect::DISQUALIFIED) || journey.stage(p.stage).terminal {
            return;
        }
        let until = ts.plus(journey.hot_for);
        if p.hot_until.is_none() || until >= p.hot_until {
            p.hot_until = until;
            p.hot_rule = fired.trailing_zeros() as u8;
        }
        // At most one alert per cooldown window, whichever side of the last alert `ts` is on
        // (an earlier event can arrive later, within the lateness).
        if !p.last_alert.is_none()
            && ts < p.last_alert.plus(journey.alert_cooldown)
            && ts.plus(journey.alert_cooldown) > p.last_alert
        {
            self.stats.alerts_suppressed += 1;
            return;
        }
        if p.last_alert.is_none() || ts > p.last_alert {
            p.last_alert = ts;
        }
        self.stats.hot_leads += 1;
        let prospect_id = self.ids.get(ix);
        let rule_names: Vec<&str> = (0..journey.hot_rules.len())
            .filter(|r| fired & (1 << r) != 0)
            .map(|r| journey.hot_rules[r].name.as_str())
            .collect();
        out.push(Output::HotLead(Box::new(HotLead {
            alert_id: ids::alert_id(prospect_id, &rule_names.join("+"), event_id),
            prospect: ix,
            rules: fired,
            score: p.score,
            stage: p.stage,
            signal: sig,
            event_id: event_id.to_string(),
            at: ts,
        })));
    }

    /// Fires this prospect's timers that fell due strictly before `ts`.
    fn fire_own_timers(&mut self, ix: ProspectIx, ts: Ts, out: &mut Vec<Output>) {
        let p = self.store.fixed(ix.0 as usize);
        let mut due = [(p.ghost_due, GHOST), (p.stall_due, STALL)];
        due.sort();
        for (t, kind) in due {
            if !t.is_none() && t < ts {
                self.fire(ix, kind, t, out);
            }
        }
    }

    fn fire_timers(&mut self, out: &mut Vec<Output>) {
        while let Some(&Reverse((due, ix, kind))) = self.timers.peek() {
            if due >= self.watermark {
                break;
            }
            self.timers.pop();
            self.fire(ProspectIx(ix), kind, due, out);
        }
    }

    /// Fires a timer if it is still the prospect's current one (heap entries go stale when a
    /// timer is re-armed or cancelled).
    fn fire(&mut self, ix: ProspectIx, kind: u8, due: Ts, out: &mut Vec<Output>) {
        let p = self.store.fixed(ix.0 as usize);
        if (kind == GHOST && p.ghost_due == due) || (kind == STALL && p.stall_due == due) {
            self.mark_changed(ix.0);
        }
        let journey = &self.journey;
        let p = self.store.fixed_mut(ix.0 as usize);
        match kind {
            GHOST if p.ghost_due == due => {
                p.ghost_due = Ts::NONE;
                p.flags |= prospect::GHOSTED;
                if p.hot_until > due {
                    p.hot_until = due;
                }
                let since = journey.ghost.map_or(due, |g| due.minus(g.window));
                self.funnel.ghosted[p.stage.0 as usize] += 1;
                self.stats.ghosted += 1;
                out.push(Output::Ghosted { prospect: ix, stage: p.stage, since, at: due });
            }
            STALL if p.stall_due == due => {
                p.stall_due = Ts::NONE;
                p.flags |= prospect::STALLED;
                self.funnel.stalled[p.stage.0 as usize] += 1;
                self.stats.stalled += 1;
                out.push(Output::Stalled { prospect: ix, stage: p.stage, since: p.stage_entered, at: due });
            }
            _ => {}
        }
    }

    /// A readable view of one prospect, its score decayed to `at` (or to its last event).
    pub fn view(&self, ix: ProspectIx, at: Option<Ts>) -> ProspectView {
        let j = &self.journey;
        let i = ix.0 as usize;
        let p = self.store.fixed(i);
        let at = at.unwrap_or(p.score_at);
        let stage_entered = (0..j.stages.len())
            .filter_map(|s| {
                let v = self.store.stage_times(i)[s];
                (v != 0).then(|| (j.stages[s].name.clone(), Ts((i64::from(v) - 1) * MS_PER_SEC).to_string()))
            })
            .collect();
        let signal_counts = (0..j.signals.len())
            .filter_map(|s| {
                let c = self.store.counts(i)[s];
                (c != 0).then(|| (j.signals[s].name.clone(), c))
            })
            .collect();
        let opt = |t: Ts| (!t.is_none()).then(|| t.to_string());
        let hot = p.is_hot(at);
        ProspectView {
            prospect: self.ids.get(ix).to_string(),
            email: self.email(ix).map(str::to_string),
            stage: j.stage(p.stage).name.clone(),
            stage_entered_at: p.stage_entered.to_string(),
            stages_entered: stage_entered,
            score: (p.score_at_time(j, at) * 100.0).round() / 100.0,
            hot,
            hot_reason: hot.then(|| j.hot_rules[p.hot_rule as usize].reason.clone()),
            ghosted: p.has(prospect::GHOSTED),
            stalled: p.has(prospect::STALLED),
            classification: p.classification(j),
            next_commitment: j.stage(p.stage).next_commitment.clone(),
            last_activity: opt(p.last_activity),
            ghost_due: opt(p.ghost_due),
            stall_due: opt(p.stall_due),
            signal_counts,
        }
    }

    /// A digest of one prospect's whole state, independent of its index in this engine.
    pub fn prospect_digest(&self, ix: ProspectIx) -> u64 {
        self.prospect_digest_with(ix, &mut Vec::with_capacity(256))
    }

    fn prospect_digest_with(&self, ix: ProspectIx, buf: &mut Vec<u8>) -> u64 {
        let i = ix.0 as usize;
        let p = self.store.fixed(i);
        buf.clear();
        buf.extend_from_slice(self.ids.get(ix).as_bytes());
        buf.push(0);
        for t in [p.score_at, p.last_activity, p.stage_entered, p.ghost_due, p.stall_due, p.hot_until, p.last_alert] {
            buf.extend_from_slice(&t.0.to_le_bytes());
        }
        buf.extend_from_slice(&p.score.to_bits().to_le_bytes());
        buf.extend_from_slice(&[p.stage.0, p.flags, p.hot_rule]);
        let mut recent = p.recent;
        recent.sort_unstable();
        for r in recent {
            buf.extend_from_slice(&r.to_le_bytes());
        }
        for v in self.store.stage_times(i) {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        for v in self.store.counts(i) {
            buf.extend_from_slice(&v.to_le_bytes());
        }
        for v in self.store.marks(i) {
            buf.extend_from_slice(&v.0.to_le_bytes());
        }
        if let Some(e) = self.email(ix) {
            buf.extend_from_slice(e.as_bytes());
        }
        if let Some(x) = self.live_extras(ix) {
            buf.push(0);
            for (k, t) in x.seen {
                buf.extend_from_slice(&k.to_le_bytes());
                buf.extend_from_slice(&t.0.to_le_bytes());
            }
            for (r, t, id) in x.waiting {
                buf.push(r);
                buf.extend_from_slice(&t.0.to_le_bytes());
                buf.extend_from_slice(id.as_bytes());
                buf.push(0);
            }
        }
        ids::hash64(ids::SEED_DIGEST, buf)
    }

    /// Order-independent digest of every prospect's state: equal across engines (or shards
    /// summed) that hold the same prospects in the same states.
    pub fn digest(&self) -> u64 {
        let mut buf = Vec::with_capacity(256);
        (0..self.store.len() as u32)
            .fold(0u64, |acc, i| acc.wrapping_add(self.prospect_digest_with(ProspectIx(i), &mut buf)))
    }

    /// Prospects per classification, hot prospects at the watermark.
    pub fn census(&self) -> Census {
        let mut c = Census::default();
        let at = self.watermark;
        for p in self.store.iter_fixed() {
            match p.classification(&self.journey) {
                Classification::CurrentOpportunity => c.current_opportunity += 1,
                Classification::NoCurrentOpportunity => c.no_current_opportunity += 1,
                Classification::NotAProspect => c.not_a_prospect += 1,
            }
            c.hot += u64::from(p.is_hot(at));
            c.ghosted += u64::from(p.has(prospect::GHOSTED));
            c.stalled += u64::from(p.has(prospect::STALLED));
        }
        c.prospects = self.store.len() as u64;
        c
    }

    /// Heap bytes held by state (capacity, not length): the memory budget figure.
    pub fn heap_bytes(&self) -> usize {
        self.ids.heap_bytes()
            + self.store.heap_bytes()
            + self.timers.capacity() * std::mem::size_of::<Reverse<(Ts, u32, u8)>>()
            + self.emails.capacity() * 24
            + self.emails.present.capacity() * 8
            + self.emails.values().map(|e| e.len()).sum::<usize>()
    }

    pub fn iter_ids(&self) -> impl Iterator<Item = (ProspectIx, &str)> + '_ {
        self.ids.iter()
    }
}

/// Counts over all prospects at the watermark.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Census {
    pub prospects: u64,
    pub hot: u64,
    pub ghosted: u64,
    pub stalled: u64,
    pub current_opportunity: u64,
    pub no_current_opportunity: u64,
    pub not_a_prospect: u64,
}

/// One prospect, for people: names instead of indexes, times as RFC 3339.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProspectView {
    pub prospect: String,
    pub email: Option<String>,
    pub stage: String,
    pub stage_entered_at: String,
    pub stages_entered: Vec<(String, String)>,
    pub score: f64,
    pub hot: bool,
    pub hot_reason: Option<String>,
    pub ghosted: bool,
    pub stalled: bool,
    pub classification: Classification,
    pub next_commitment: String,
    pub last_activity: Option<String>,
    pub ghost_due: Option<String>,
    pub stall_due: Option<String>,
    pub signal_counts: Vec<(String, u16)>,
}
