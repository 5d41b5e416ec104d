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
//!
//! This module holds the [`Engine`] state, its construction and restore, [`Engine::apply`] and the
//! read accessors; each concern of `apply` is a child module: `clock` (clock, watermark, sweep),
//! `extras` (dedup and per-prospect extras), `rules` (hot and sequence rules), `stages` (stage
//! moves and outcomes), `timers` (ghost, stall and gone-quiet timers), `crm` (the CRM memories as
//! shard state), `capture` (change tracking for checkpoints, the incremental digest), `view` (views,
//! digests, census) and [`snapshot`] (state encoding).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use serde::Serialize;

use super::breakdown::Attributions;
use super::event::{Event, EventKind};
use super::funnel::Funnel;
use super::identity::IdentityMap;
use super::ids::{self, Interner, InternerFull, ProspectIx};
use super::journey::Journey;
use super::output::{Output, RejectReason};
use super::prospect::{self, Prospect};
use super::store::Store;
use super::time::Ts;

mod breakdown;
mod capture;
mod clock;
mod copy;
mod crm;
mod extras;
mod horizon;
mod identity;
pub mod outbox;
mod retention;
mod rules;
mod shown;
pub mod snapshot;
mod stages;
mod timers;
mod view;
mod xpart;

use capture::Lineage;
pub use capture::SlotDigests;
pub use copy::PartsCopy;
pub use crm::CrmState;
use extras::{Emails, Seen};
pub use extras::{Extras, dedup_key};
pub use identity::IdentityStats;
pub use retention::{KEPT_HANDOFF_SPAN, KeptCooldown, KeptCooldowns, KeptHandoff, KeptHandoffs};
pub(crate) use shown::unpack as unpack_shown;
use timers::{Timer, TimerKind};
pub use view::{Census, ProspectView};
pub use xpart::XPartStats;

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
    /// Prospects that left memory after their stage's `[retention]` span without events.
    #[serde(skip_serializing_if = "is_zero")]
    pub expired: u64,
    /// Prospects that left memory at `[retention] max_prospects_per_shard` (least recently
    /// active first).
    #[serde(skip_serializing_if = "is_zero")]
    pub evicted: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Clone)]
pub struct Engine {
    journey: Arc<Journey>,
    ids: Interner,
    /// Each prospect's fixed state and per-journey arrays, indexed by `ProspectIx`.
    store: Store,
    /// Emails, for the prospects that gave one; kept aside so the others pay nothing for it.
    emails: Emails,
    timers: BinaryHeap<Timer>,
    /// Per prospect with a live `[gone_quiet]` heap entry, that entry's due time: one entry per
    /// prospect, re-armed when it pops after newer activity (not state: restores re-arm it).
    quiet: hashbrown::HashMap<u32, Ts, ids::IndexHasher>,
    /// Timers of prospects being restored, armed at once by [`Engine::finish_restore`].
    restored_timers: Vec<Timer>,
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
    /// When each prospect first showed each validated signal (`shown.rs`).
    shown: shown::FirstShown,
    funnel: Funnel,
    stats: Stats,
    /// One bit per prospect, per 64 prospects: changed since the last [`Engine::take_changed`]
    /// (the next checkpoint writes it).
    changed: Vec<u64>,
    /// Which engine's state this is (a failed checkpoint re-marks only the engine it came from).
    lineage: Lineage,
    /// The shard's identity map when the journey resolves identities (`[identity] resolve`).
    identity: Option<Box<IdentityMap>>,
    identity_stats: IdentityStats,
    /// `[breakdowns]`: value tables and each prospect's attributed values (empty when off).
    attr: Attributions,
    /// Per CRM input topic, what the shard remembers of its objects (`crm.rs`).
    crm: crm::CrmState,
    /// `[retention]`: per slot, the due time (seconds) of its expiry heap entry, 0 = none (not
    /// state: restores re-arm it). Empty when nothing expires.
    expiry_armed: Vec<u32>,
    /// Alert cooldowns of prospects that left memory, kept until they lapse (state).
    kept_cooldowns: KeptCooldowns,
    /// Transfer generations (`Prospect::handoff`) of ids whose record left memory under
    /// `[retention]`, kept for `[identity] transfer_dedup_days` (state).
    kept_handoffs: KeptHandoffs,
    /// Whether ids that leave memory are queued in `removed_ids` (for changelog tombstones).
    track_removals: bool,
    removed_ids: Vec<Box<str>>,
    /// Cross-partition identity resolution (`xpart.rs`), when the caller set the shard's
    /// partition ([`Engine::resolve_across`]).
    xpart: Option<Box<xpart::XPart>>,
    /// The expiry sweep's gate on the other partitions' progress (`horizon.rs`; not state).
    gate: Option<Box<horizon::Gate>>,
    /// Whether the call being applied is an identity record (`horizon.rs`, `contact_time`).
    in_record: bool,
    /// Identity records held until the checkpoint covering them is durable (`outbox.rs`; state).
    outbox: outbox::Outbox,
}

fn journey_identity(journey: &Journey) -> Option<Box<IdentityMap>> {
    journey.identity.map(|_| Box::default())
}

impl Engine {
    pub fn new(journey: Arc<Journey>) -> Engine {
        Engine {
            identity: journey_identity(&journey),
            attr: Attributions::new(&journey.breakdowns),
            funnel: Funnel::new(&journey),
            store: Store::new(&journey),
            journey,
            ids: Interner::default(),
            emails: Emails::default(),
            timers: BinaryHeap::new(),
            quiet: hashbrown::HashMap::default(),
            restored_timers: Vec::new(),
            watermark: Ts::NONE,
            max_event_ts: Ts::NONE,
            leap: (Ts::NONE, 0),
            extras: hashbrown::HashMap::default(),
            swept_at: Ts::NONE,
            shown: shown::FirstShown::default(),
            stats: Stats::default(),
            changed: Vec::new(),
            lineage: Lineage::new(),
            identity_stats: IdentityStats::default(),
            crm: crm::CrmState::default(),
            expiry_armed: Vec::new(),
            kept_cooldowns: KeptCooldowns::new(),
            kept_handoffs: KeptHandoffs::new(),
            track_removals: false,
            removed_ids: Vec::new(),
            xpart: None,
            gate: None,
            in_record: false,
            outbox: outbox::Outbox::default(),
        }
    }

    /// One prospect's fixed state and per-journey arrays (for encoding).
    fn prospect_parts(&self, ix: ProspectIx) -> (&Prospect, &[u32], &[u16], &[Ts]) {
        let i = ix.0 as usize;
        (self.store.fixed(i), self.store.stage_times(i), self.store.counts(i), self.store.marks(i))
    }

    /// Makes room for `n` prospects (before a restore).
    fn reserve(&mut self, n: usize) {
        self.ids.reserve(n, n * 24);
        self.store.reserve(n);
    }

    /// Adds a prospect read from a full state (restore of a snapshot): the id must be new.
    /// Its timers are collected and armed by [`Engine::finish_restore`]; nothing is marked
    /// changed. `Err` if the id is already there (damaged state) or the shard is full.
    fn restore_prospect(&mut self, id: &str, rec: &snapshot::ProspectRecord<'_>) -> Result<ProspectIx, InternerFull> {
        let ix = self.ids.intern_new(id)?.ok_or(InternerFull)?;
        self.store.put_with(ix.0 as usize, rec.fixed.clone(), &rec.stage_times, &rec.counts, &rec.marks);
        if let Some(e) = rec.email {
            self.emails.insert(ix.0, e.into());
        }
        if !rec.extras.is_empty() {
            self.extras.insert(ix.0, rec.extras.clone());
        }
        self.shown.set(ix.0 as usize, &rec.shown);
        self.restored_timers.extend(timers::armed(ix.0, &rec.fixed));
        let due = timers::quiet_due(&self.journey, &rec.fixed);
        if !due.is_none() {
            self.quiet.insert(ix.0, due);
            self.restored_timers.push(Reverse((due, ix.0, TimerKind::Quiet)));
        }
        let due = retention::expiry_due(&self.journey, &rec.fixed);
        if !due.is_none() {
            if ix.0 as usize >= self.expiry_armed.len() {
                self.expiry_armed.resize(ix.0 as usize + 1, 0);
            }
            self.expiry_armed[ix.0 as usize] = (due.0 / 1000) as u32;
            self.restored_timers.push(Reverse((due, ix.0, TimerKind::Expire)));
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
        self.release_freed();
        self.install_keeping_freed(id, rec)
    }

    /// [`Engine::install`] inside a call whose outputs may still name slots it freed (an
    /// identity record that expired people first): those slots are not reused before the
    /// call's outputs are emitted.
    pub(super) fn install_keeping_freed(
        &mut self,
        id: &str,
        rec: snapshot::ProspectRecord<'_>,
    ) -> Result<ProspectIx, InternerFull> {
        let (ix, new) = self.ids.intern(id)?;
        let i = ix.0 as usize;
        if new {
            self.store.put_with(i, rec.fixed, &rec.stage_times, &rec.counts, &rec.marks);
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
        if self.attr.is_on() || !rec.slots.is_empty() {
            self.attr.set(i, &rec.slots);
        }
        if rec.extras.is_empty() {
            self.extras.remove(&ix.0);
        } else {
            self.extras.insert(ix.0, rec.extras);
        }
        self.shown.set(i, &rec.shown);
        self.timers.extend(timers::armed(ix.0, self.store.fixed(i)));
        self.quiet.remove(&ix.0);
        self.arm_quiet(ix);
        if let Some(a) = self.expiry_armed.get_mut(i) {
            *a = 0;
        }
        self.arm_expiry(ix);
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

    /// Prospects held (redirects included; slots freed by retention not).
    pub fn len(&self) -> usize {
        self.ids.live()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn prospect_id(&self, ix: ProspectIx) -> &str {
        self.ids.get(ix)
    }

    /// [`Engine::prospect_id`] as bytes, without the UTF-8 check (a checkpoint's record keys).
    pub fn prospect_id_bytes(&self, ix: ProspectIx) -> &[u8] {
        self.ids.get_bytes(ix)
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

    fn reject(&mut self, reason: RejectReason, detail: String, out: &mut Vec<Output>) {
        self.stats.rejected += 1;
        out.push(Output::Rejected { reason, detail });
    }

    /// Applies one event, appending what it caused to `out`. With `[identity] resolve`, the
    /// links the event states come first, then the event applies to its canonical prospect.
    pub fn apply(&mut self, ev: &Event<'_>, out: &mut Vec<Output>) {
        self.release_freed();
        if self.identity.is_some() {
            if self.xpart.is_some() {
                if !self.in_record {
                    self.note_reading();
                }
                return self.apply_across(ev, out);
            }
            return self.apply_resolved(ev, out);
        }
        self.apply_one(ev, out)
    }

    fn apply_one(&mut self, ev: &Event<'_>, out: &mut Vec<Output>) {
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
        let held = self.retain_before(&ev.prospect, ev.ts, out);
        let interned = match held {
            Some(ix) => Ok((ix, false)),
            None => self.ids.intern(&ev.prospect),
        };
        let (ix, new) = match interned {
            Ok(v) => v,
            Err(InternerFull) => {
                let detail = format!("shard holds {} prospects, its id arena is full", self.len());
                return self.reject(RejectReason::Capacity, detail, out);
            }
        };
        let i = ix.0 as usize;
        let mut new = new;
        if new {
            let mut p = Prospect::new(journey.first_stage(), ev.ts);
            if self.id_is_anonymous(&ev.prospect, ev.anonymous) {
                p.set_more_flags(p.more_flags() | prospect::ANONYMOUS);
            }
            self.store.put(i, p);
            self.returning(ix, ev.ts);
        } else if self.store.fixed(i).has(prospect::REDIRECT) {
            // Its canonical id again (a late sighting flipped it back): a new prospect here;
            // the person's state folds in when it comes back (`xpart.rs`).
            self.revive(ix, ev.ts);
            if self.id_is_anonymous(&ev.prospect, ev.anonymous) {
                let p = self.store.fixed_mut(i);
                p.set_more_flags(p.more_flags() | prospect::ANONYMOUS);
            }
            new = true;
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
        if !new && self.store.fixed(i).is_anonymous() && !self.id_is_anonymous(&ev.prospect, ev.anonymous) {
            // Its id is known now: the known span applies from here on.
            self.set_anonymous(ix, false);
        }
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
        // First shown: a first event of the signal, or one older than the prospect's latest
        // activity (arrived out of order: it may be older than the first one held).
        if (seen_before == 0 || (!p.last_activity.is_none() && ts < p.last_activity))
            && crate::core::funnel::validated(&journey, def)
        {
            self.shown.note(i, sig.0, ts);
        }
        if seen_before == 0 {
            self.funnel.signal_shown[sig.0 as usize] += 1;
            if self.extras.get(&ix.0).is_some_and(|x| !x.alerted.is_empty()) {
                self.funnel.signal_after_hot[sig.0 as usize] += 1;
            }
        }
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
                p.last_signal = sig.0;
            }
            if let Some(g) = journey.ghost
                && !p.ghost_due.is_none()
                && ts <= p.ghost_due
                && ts > p.ghost_due.minus(g.window)
            {
                p.ghost_due = Ts::NONE;
            }
            if !late {
                p.flags &= !(prospect::GHOSTED | prospect::QUIET);
            }
        }
        if def.disqualifies {
            p.flags |= prospect::DISQUALIFIED;
        }

        // Stage: forward only; a new prospect enters at least the first stage.
        let target = if new { Some(def.enters.unwrap_or(journey.first_stage())) } else { def.enters };
        let stage_before = self.store.fixed(i).stage;
        if let Some(to) = target {
            self.enter_stage(&journey, ix, new, to, sig, ts, late, score_before, out);
        }
        if self.attr.is_on() {
            self.attribute(ix, ev, sig);
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
                self.timers.push(Reverse((due, ix.0, TimerKind::Ghost)));
            }
        }

        self.arm_quiet(ix);
        // Without a stage move the expiry due only moved later (the last event time did): the
        // armed entry re-arms when it pops.
        if new || self.store.fixed(i).stage != stage_before {
            self.arm_expiry(ix);
        }
        if !late {
            self.hot_rules(&journey, ix, sig, ev, score_before, out);
            if def.tracked_slot.is_some() {
                self.anchor_arrived(&journey, ix, sig, ts, out);
            }
        }
    }

    /// Every prospect held, in index order.
    pub fn iter_ids(&self) -> impl Iterator<Item = (ProspectIx, &str)> + '_ {
        self.ids.iter()
    }
}
