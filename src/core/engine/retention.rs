//! Retention: prospects leave memory after their stage's span without events (`[retention]`,
//! event time, watermark-driven like the silence timers) or, at the shard's prospect cap, the
//! least recently active first. A prospect that leaves gives [`Output::Expired`], its slot and
//! id index are reused, its id is queued for a changelog tombstone, and an alert cooldown still
//! in force is kept aside (by id) until it lapses, so a prospect that comes back starts fresh
//! but does not alert again within it.

use std::cmp::Reverse;
use std::collections::BTreeMap;

use super::Engine;
use super::timers::TimerKind;
use crate::core::ids::{self, ProspectIx};
use crate::core::journey::Journey;
use crate::core::output::{ExpireReason, Output};
use crate::core::prospect::{self, Prospect};
use crate::core::time::Ts;

/// The alert cooldown of a prospect that left memory while it was in force: its last alert's
/// time and rule (whose priority a new alert must beat within the cooldown).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeptCooldown {
    pub last_alert: Ts,
    pub hot_rule: u8,
}

/// Cooldowns of prospects that left memory, by id, kept until they lapse (state: checkpointed
/// with the shard meta).
pub type KeptCooldowns = BTreeMap<Box<str>, KeptCooldown>;

/// The transfer generation (`Prospect::handoff`) an id's record held when it left memory under
/// `[retention]`, and the watermark then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeptHandoff {
    pub handoff: u16,
    pub freed_at: Ts,
}

/// Transfer generations of ids that left memory, by id (identity across partitions; state:
/// checkpointed with the shard meta from version 6 on). A receiver's marker for a transferred
/// id (an id homed on another partition) is kept for `[identity] transfer_dedup_days`
/// ([`Journey::transfer_dedup`]) of event time past its freeing, so a transfer redelivered
/// within it is still known; a sender's own id twice as long, so the sender's next generation
/// stays above any marker a receiver still keeps.
pub type KeptHandoffs = BTreeMap<Box<str>, KeptHandoff>;

/// The default of `[identity] transfer_dedup_days` (7 days): how long (event time, past the
/// watermark when it was freed) a receiver keeps the transfer generation of a freed marker,
/// the longest redelivery of the identity topic it deduplicates (a sender restored from a
/// checkpoint older than that, in event time, counts a transfer again).
pub const KEPT_HANDOFF_SPAN: crate::core::time::Span = crate::core::time::Span(7 * 24 * 3600 * 1000);

/// When a prospect leaves memory under `[retention]`: its last event time plus its stage's span
/// (the anonymous one for an anonymous prospect), rounded up to the second; `Ts::NONE` when its
/// stage never expires (or it is a redirect).
pub(super) fn expiry_due(j: &Journey, p: &Prospect) -> Ts {
    let Some(after) = j.retention.after_for(p.stage, p.is_anonymous()) else { return Ts::NONE };
    if p.has(prospect::FREE | prospect::REDIRECT) || p.score_at.is_none() {
        return Ts::NONE;
    }
    let due = p.score_at.plus(after).0;
    let secs = due.div_euclid(1000) + i64::from(due.rem_euclid(1000) != 0);
    if !(1..i64::from(u32::MAX)).contains(&secs) {
        return Ts::NONE;
    }
    Ts(secs * 1000)
}

impl Engine {
    /// Whether slot `i` holds a prospect (not freed).
    pub(super) fn holds(&self, i: usize) -> bool {
        !self.store.fixed(i).has(prospect::FREE)
    }

    /// Makes sure a prospect that can expire has a heap entry due no later than its due time
    /// (`expiry_armed` holds the entry's due in seconds; an earlier one re-arms when it pops).
    pub(super) fn arm_expiry(&mut self, ix: ProspectIx) {
        if self.journey.retention.after.is_empty() {
            return;
        }
        let due = expiry_due(&self.journey, self.store.fixed(ix.0 as usize));
        if due.is_none() {
            return;
        }
        let i = ix.0 as usize;
        if i >= self.expiry_armed.len() {
            self.expiry_armed.resize(i + 1, 0);
        }
        let secs = (due.0 / 1000) as u32;
        if self.expiry_armed[i] == 0 || secs < self.expiry_armed[i] {
            self.expiry_armed[i] = secs;
            self.timers.push(Reverse((due, ix.0, TimerKind::Expire)));
        }
    }

    /// Whether prospect id `id` is anonymous: with identity resolution, as the map holds it (a
    /// group with a known id has a known canonical id; an id once seen known stays known),
    /// else (or when the map does not hold it) `event_says`.
    pub(super) fn id_is_anonymous(&self, id: &str, event_says: bool) -> bool {
        match self.identity.as_deref().and_then(|m| m.kind(id)) {
            Some(kind) => kind == crate::core::identity::IdKind::Anonymous,
            None => event_says,
        }
    }

    /// Sets or clears prospect `ix`'s [`prospect::ANONYMOUS`] flag; a change re-arms its expiry
    /// (its span is another one now).
    pub(super) fn set_anonymous(&mut self, ix: ProspectIx, anonymous: bool) {
        let i = ix.0 as usize;
        let p = self.store.fixed_mut(i);
        if p.is_anonymous() == anonymous {
            return;
        }
        p.set_more_flags(p.more_flags() ^ prospect::ANONYMOUS);
        self.mark_changed(ix.0);
        if let Some(a) = self.expiry_armed.get_mut(i) {
            *a = 0;
        }
        self.arm_expiry(ix);
    }

    /// An expiry heap entry due at `due` popped: whether the prospect expires now. A stale
    /// entry (freed slot, re-armed since) is dropped; one for a prospect active since is
    /// re-armed at its new due time.
    pub(super) fn expiry_popped(&mut self, ix: u32, due: Ts) -> bool {
        let i = ix as usize;
        if i >= self.store.len() || !self.holds(i) || self.expiry_armed.get(i) != Some(&((due.0 / 1000) as u32)) {
            return false;
        }
        self.expiry_armed[i] = 0;
        let now = expiry_due(&self.journey, self.store.fixed(i));
        if now.is_none() {
            return false;
        }
        if now != due {
            // Active since (later), or, should a due ever move earlier unseen, re-armed at it.
            self.arm_expiry(ProspectIx(ix));
            return false;
        }
        true
    }

    /// Before an event of prospect `id` at `ts` is applied: a prospect whose expiry fell due
    /// before `ts` leaves first (as if the watermark had passed it: its earlier timers fire,
    /// then it expires), and a new id at the prospect cap makes room, as does a redirect record
    /// the event revives (a new prospect too). Returns the prospect the event applies to when it
    /// is held (`None`: a new one, or retention is off).
    pub(super) fn retain_before(&mut self, id: &str, ts: Ts, out: &mut Vec<Output>) -> Option<ProspectIx> {
        let r = &self.journey.retention;
        if r.after.is_empty() && r.max_prospects.is_none() {
            return None;
        }
        let held = self.ids.find(id);
        match held {
            Some(ix) if !self.prospect(ix).has(prospect::REDIRECT) => return self.expire_if_due(id, ts, out),
            Some(_) | None => {
                // Redirect records (identity across partitions) are not people: not counted.
                if let Some(cap) = r.max_prospects
                    && self.ids.live().saturating_sub(self.redirects_held()) >= cap as usize
                {
                    // People past their due that the expiry gate holds leave first, as replay
                    // (no gate) had them leave at their due; only then the least recent.
                    if self.expire_held((cap as usize / 64).max(1), out) == 0 {
                        self.evict(cap as usize, ts, out);
                    }
                }
            }
        }
        // `evict` never picks a redirect record (nor, through `forget_across`, one of another
        // person's group): the one about to be revived is still held.
        held.and_then(|_| self.ids.find(id))
    }

    /// Prospect `id`, if held and its expiry fell due before `ts`, leaves memory (its earlier
    /// timers fire first, as if the watermark had passed its due). Returns it when it is still
    /// held.
    pub(super) fn expire_if_due(&mut self, id: &str, ts: Ts, out: &mut Vec<Output>) -> Option<ProspectIx> {
        let ix = self.ids.find(id)?;
        let due = expiry_due(&self.journey, self.store.fixed(ix.0 as usize));
        if due.is_none() || due >= self.contact_time(ts) {
            return Some(ix);
        }
        self.fire_own_timers(ix, due.plus(crate::core::time::Span(1)), out);
        self.expire(ix, due, ExpireReason::Retention, out);
        None
    }

    /// The shard is at its cap of `cap` prospects: the least recently active (last event time,
    /// then a hash of the id, so the choice does not depend on slot order) leave, 1/64 of the
    /// cap at once (at least one), so the scan is paid once per that many new prospects.
    fn evict(&mut self, cap: usize, at: Ts, out: &mut Vec<Output>) {
        let k = (cap / 64).max(1);
        let mut cand: Vec<(Ts, u32)> = (0..self.store.len())
            .filter(|&i| self.holds(i) && !self.store.fixed(i).has(prospect::REDIRECT))
            .map(|i| (self.store.fixed(i).score_at, i as u32))
            .collect();
        if cand.len() > k {
            // The k-th oldest last event time; everything older goes, ties are decided below.
            let cut = cand.select_nth_unstable(k - 1).1.0;
            cand.retain(|&(t, _)| t <= cut);
        }
        let mut keyed: Vec<(Ts, u64, u32)> = cand
            .into_iter()
            .map(|(t, i)| (t, ids::hash64(ids::SEED_DIGEST, self.ids.get(ProspectIx(i)).as_bytes()), i))
            .collect();
        keyed.sort_unstable();
        keyed.truncate(k);
        for (_, _, i) in keyed {
            self.expire(ProspectIx(i), at, ExpireReason::Capacity, out);
        }
    }

    /// Prospect `ix` leaves memory at `at`: counted, said ([`Output::Expired`]), out of
    /// `in_stage`, its cooldown kept if in force, its slot freed (reused from the next call on:
    /// outputs of this call still name it), its id queued for a tombstone.
    pub(super) fn expire(&mut self, ix: ProspectIx, at: Ts, reason: ExpireReason, out: &mut Vec<Output>) {
        let i = ix.0 as usize;
        let p = self.store.fixed(i);
        let (stage, last_event, class) = (p.stage, p.score_at, p.classification(&self.journey));
        if !p.last_alert.is_none() && p.last_alert.plus(self.journey.alert_cooldown) > at {
            let kept = KeptCooldown { last_alert: p.last_alert, hot_rule: p.hot_rule };
            self.kept_cooldowns.insert(self.ids.get(ix).into(), kept);
        }
        let n = &mut self.funnel.in_stage[stage.0 as usize];
        *n = n.saturating_sub(1);
        match reason {
            ExpireReason::Retention => self.stats.expired += 1,
            ExpireReason::Capacity => self.stats.evicted += 1,
        }
        out.push(Output::Expired { prospect: ix, stage, last_event, at, reason, class });
        if self.gate.is_some() {
            self.left_ahead_of_horizon(ix, at);
        }
        self.keep_handoff(ix);
        self.free(ix);
        // Across partitions, the other homes of its identifiers forget them too.
        if self.xpart.is_some() {
            let id = self.ids.get(ix).to_string();
            self.forget_across(&id, at);
        }
        // The person's identifiers leave the map with it (when it is their group's person).
        if let Some(map) = self.identity.as_deref_mut() {
            map.prune(self.ids.get(ix));
        }
    }

    /// Frees prospect `ix`'s slot (nothing counted): its record becomes [`prospect::FREE`], its
    /// id leaves the interner's table and, when the changelog is kept, is queued for a
    /// tombstone.
    pub(super) fn free(&mut self, ix: ProspectIx) {
        let i = ix.0 as usize;
        if self.track_removals {
            self.removed_ids.push(self.ids.get(ix).into());
        }
        if self.store.fixed(i).has(prospect::REDIRECT) {
            self.redirect_gone();
        }
        let p = self.store.fixed_mut(i);
        *p = Prospect::new(p.stage, Ts::NONE);
        p.flags = prospect::FREE;
        self.emails.remove(&ix.0);
        self.mark_email_changed(ix.0);
        self.clear_side_state(ix);
        self.ids.remove(ix);
    }

    /// What slot `ix` holds beside its record, dropped (a freed or revived slot starts
    /// empty): extras, first-shown times, breakdown slots, its quiet timer, its armed expiry.
    pub(super) fn clear_side_state(&mut self, ix: ProspectIx) {
        let i = ix.0 as usize;
        self.extras.remove(&ix.0);
        self.shown.clear(i);
        self.attr.clear(i);
        self.quiet.remove(&ix.0);
        if let Some(a) = self.expiry_armed.get_mut(i) {
            *a = 0;
        }
    }

    /// Start of a call into the engine: slots freed by the previous call become reusable.
    pub(super) fn release_freed(&mut self) {
        self.ids.release_removed();
    }

    /// A new prospect `ix` (first event at `ts`, or a merge that moved another id's prospect
    /// onto this id) whose id left memory with its alert cooldown in force: the cooldown goes on
    /// (its last alert and rule, unless the prospect holds a later alert), nothing else of it.
    pub(super) fn returning(&mut self, ix: ProspectIx, ts: Ts) {
        if self.kept_cooldowns.is_empty() {
            return;
        }
        let Some(k) = self.kept_cooldowns.remove(self.ids.get(ix)) else { return };
        let p = self.store.fixed(ix.0 as usize);
        if k.last_alert.plus(self.journey.alert_cooldown) > ts.max(self.watermark)
            && (p.last_alert.is_none() || k.last_alert > p.last_alert)
        {
            let p = self.store.fixed_mut(ix.0 as usize);
            p.last_alert = k.last_alert;
            p.hot_rule = k.hot_rule;
        }
    }

    /// Across partitions, prospect `ix` (a redirect or a person) leaves memory: a transfer
    /// generation it holds is kept aside by id ([`KeptHandoffs`]), the highest one.
    pub(super) fn keep_handoff(&mut self, ix: ProspectIx) {
        let handoff = self.store.fixed(ix.0 as usize).handoff();
        if self.xpart.is_none() || handoff == 0 {
            return;
        }
        let freed_at = self.watermark;
        let k = self.kept_handoffs.entry(self.ids.get(ix).into()).or_insert(KeptHandoff { handoff, freed_at });
        *k = KeptHandoff { handoff: k.handoff.max(handoff), freed_at: k.freed_at.max(freed_at) };
    }

    /// Transfer `generation` of `from` taken without a record (a merge into a person gone,
    /// [`Engine::transfer_to_gone`]): kept as a folded one (`2g + 1`), as a freed marker's.
    pub(super) fn keep_generation(&mut self, from: &str, generation: u32) {
        if generation == 0 {
            return;
        }
        let handoff = u16::try_from(2 * u64::from(generation) + 1).unwrap_or(u16::MAX);
        let freed_at = self.watermark;
        let k = self.kept_handoffs.entry(from.into()).or_insert(KeptHandoff { handoff, freed_at });
        *k = KeptHandoff { handoff: k.handoff.max(handoff), freed_at: k.freed_at.max(freed_at) };
    }

    /// The transfer generation kept for id `id` when its record left memory (0: none).
    pub(super) fn kept_handoff(&self, id: &str) -> u16 {
        self.kept_handoffs.get(id).map_or(0, |k| k.handoff)
    }

    /// Drops kept cooldowns that lapsed at the watermark (with the sweep of extras), and kept
    /// transfer generations past [`Journey::transfer_dedup`] (twice that for this shard's own
    /// ids).
    pub(super) fn sweep_cooldowns(&mut self) {
        let (cooldown, watermark) = (self.journey.alert_cooldown, self.watermark);
        self.kept_cooldowns.retain(|_, k| k.last_alert.plus(cooldown) > watermark);
        if !self.kept_handoffs.is_empty() {
            let mut kept = std::mem::take(&mut self.kept_handoffs);
            kept.retain(|id, k| {
                if k.freed_at.is_none() {
                    // Freed before any watermark: the span starts now.
                    k.freed_at = watermark;
                }
                let span = self.journey.transfer_dedup.0 * if self.foreign(id) { 1 } else { 2 };
                watermark.is_none() || k.freed_at.plus(crate::core::time::Span(span)) > watermark
            });
            self.kept_handoffs = kept;
        }
        // Stale heap entries (re-armed or freed prospects) are dropped when they pop; rebuild
        // the heap when they outnumber the live ones, so it stays bounded by the prospects.
        if self.timers.len() > 2 * self.ids.live() + 4096 {
            let mut all = std::mem::take(&mut self.timers).into_vec();
            all.retain(|&Reverse((due, ix, kind))| self.timer_current(ix, due, kind));
            self.timers = all.into();
        }
    }

    /// Whether a heap entry may still fire (used to drop stale ones; firing checks again).
    fn timer_current(&self, ix: u32, due: Ts, kind: TimerKind) -> bool {
        let i = ix as usize;
        if i >= self.store.len() || !self.holds(i) {
            return false;
        }
        match kind {
            TimerKind::Expire => self.expiry_armed.get(i) == Some(&((due.0 / 1000) as u32)),
            TimerKind::Quiet => self.quiet.get(&ix) == Some(&due),
            TimerKind::Ghost => self.store.fixed(i).ghost_due == due,
            TimerKind::Stall => self.store.fixed(i).stall_due == due,
        }
    }

    /// Deletes prospect `id` without a trace (a changelog tombstone read at a restore: funnel
    /// and stats come with the checkpoint record).
    pub fn forget(&mut self, id: &str) {
        if let Some(ix) = self.ids.find(id) {
            let track = std::mem::replace(&mut self.track_removals, false);
            self.free(ix);
            self.track_removals = track;
            self.ids.release_removed();
        }
    }

    /// Whether ids that leave memory are queued for changelog tombstones
    /// ([`Engine::take_removed`]); off by default (replay, no changelog).
    pub fn track_removals(&mut self, on: bool) {
        self.track_removals = on;
        if !on {
            self.removed_ids = Vec::new();
        }
    }

    /// Ids that left memory since the last call (with [`Engine::track_removals`] on), for
    /// changelog tombstones.
    pub fn take_removed(&mut self) -> Vec<Box<str>> {
        std::mem::take(&mut self.removed_ids)
    }

    /// Cooldowns kept for prospects that left memory, by id.
    pub fn kept_cooldowns(&self) -> &KeptCooldowns {
        &self.kept_cooldowns
    }

    /// Transfer generations kept for ids whose record left memory, by id.
    pub fn kept_handoffs(&self) -> &KeptHandoffs {
        &self.kept_handoffs
    }
}
