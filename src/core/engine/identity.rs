//! Identity resolution within one shard (`[identity] resolve`): the links an event states, fed
//! to the shard's [`IdentityMap`], and [`Engine::merge`], which folds one prospect into another
//! so the result is what one prospect that had sent both histories would hold.

use std::borrow::Cow;
use std::cmp::Reverse;

use super::timers::TimerKind;
use super::{Engine, Extras};
use crate::core::event::{Event, EventKind};
use crate::core::funnel::OutcomeFacts;
use crate::core::identity::{Change, IdKind, IdentityMap, IdentityRecord, LinkReason};
use crate::core::ids::ProspectIx;
use crate::core::journey::{Journey, Outcome};
use crate::core::output::Output;
use crate::core::prospect::{self, Prospect};
use crate::core::snapshot::StateError;
use crate::core::time::{MS_PER_SEC, Ts};

/// What identity resolution did in a shard (not state: counted since the engine started).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IdentityStats {
    /// Prospects folded into another.
    pub merged: u64,
    /// Links refused by the guards.
    pub refused: u64,
    /// Events applied to another id's prospect (their id was linked to it).
    pub routed: u64,
}

impl Engine {
    /// Feeds the links `ev` states to the identity map, performs the merges they cause, and
    /// returns the canonical id when it is not `ev.prospect`.
    pub(super) fn resolve_identity(&mut self, ev: &Event<'_>, out: &mut Vec<Output>) -> Option<String> {
        let limits = self.journey.identity?;
        if !self.journey.retention.after.is_empty() {
            self.expire_named(ev, out);
        }
        let map = self.identity.as_deref_mut()?;
        let kind = if ev.anonymous { IdKind::Anonymous } else { IdKind::Known };
        let mut changes = Vec::new();
        let node = map.observe(&ev.prospect, kind, ev.ts, &mut changes);
        if let Some(other) = &ev.linked {
            let reason = if ev.kind == EventKind::Alias { LinkReason::Alias } else { LinkReason::Identify };
            map.link((&ev.prospect, kind), (other, IdKind::Anonymous), ev.ts, reason, &limits, &mut changes);
        }
        if let Some(email) = &ev.email
            && !self.ask_email_home(&ev.prospect, email, ev.ts)
            && let Some(map) = self.identity.as_deref_mut()
        {
            map.link((&ev.prospect, kind), (email, IdKind::Email), ev.ts, LinkReason::Email, &limits, &mut changes);
        }
        for c in changes {
            match c {
                Change::Merged { from, into, reason } => self.merge_or_transfer(&from, &into, reason, ev.ts, out),
                Change::Refused { ids, reason } => {
                    self.identity_stats.refused += 1;
                    out.push(Output::MergeRefused { ids: Box::new(ids), reason, at: ev.ts });
                }
            }
        }
        let map = self.identity.as_deref()?;
        let canonical = map.canonical_of(node);
        (canonical != ev.prospect).then(|| canonical.to_string())
    }

    /// Under `[retention]`, before the links of `ev` are made: each person it names (by its
    /// id, linked id or email) whose expiry fell due before the event leaves memory first, its
    /// group leaving the map with it, so a link never joins a person who had already left.
    fn expire_named(&mut self, ev: &Event<'_>, out: &mut Vec<Output>) {
        let Some(map) = self.identity.as_deref() else { return };
        let kind = if ev.anonymous { IdKind::Anonymous } else { IdKind::Known };
        let named = [
            Some((&*ev.prospect, kind)),
            ev.linked.as_deref().map(|l| (l, IdKind::Anonymous)),
            ev.email.as_deref().map(|e| (e, IdKind::Email)),
        ];
        let people: Vec<String> = named
            .into_iter()
            .flatten()
            .filter_map(|(id, kind)| match map.person(id, kind) {
                Some(c) => Some(c.to_string()),
                None => (kind != IdKind::Email).then(|| id.to_string()),
            })
            .collect();
        for id in people {
            self.expire_if_due(&id, ev.ts, out);
        }
    }

    /// [`Engine::apply`] with identity resolution: links first, then the event applied to its
    /// canonical prospect.
    pub(super) fn apply_resolved(&mut self, ev: &Event<'_>, out: &mut Vec<Output>) {
        match self.resolve_identity(ev, out) {
            Some(canonical) => {
                self.identity_stats.routed += 1;
                let routed = Event { prospect: Cow::Owned(canonical), ..ev.clone() };
                self.apply_one(&routed, out);
            }
            None => self.apply_one(ev, out),
        }
    }

    /// The identity map, when the journey resolves identities.
    pub fn identity_map(&self) -> Option<&IdentityMap> {
        self.identity.as_deref()
    }

    /// Installs an identity record read from the changelog; `Ok(false)` when identity
    /// resolution is off (the record is dropped).
    pub fn restore_identity(&mut self, record: IdentityRecord) -> Result<bool, StateError> {
        match self.identity.as_deref_mut() {
            Some(map) => map.restore(record).map(|()| true),
            None => Ok(false),
        }
    }

    /// A changelog tombstone of an identifier (its map key): it leaves the map.
    pub fn forget_identity(&mut self, key: &str) {
        if let Some(map) = self.identity.as_deref_mut() {
            map.forget_key(key);
        }
    }

    /// After a changelog read: nothing is owed to the changelog.
    pub fn finish_identity_restore(&mut self) {
        if let Some(map) = self.identity.as_deref_mut() {
            map.finish_restore();
        }
    }

    /// A record of a checkpoint that did not finish: whether the next checkpoint must delete it
    /// (the state does not hold it); an identifier the state holds is written again instead.
    pub fn unfinished_identity_record(&mut self, record: &IdentityRecord) -> bool {
        let Some(map) = self.identity.as_deref_mut() else { return true };
        match record {
            IdentityRecord::Id { key, .. } if map.has_key(key) => {
                map.mark_key(key);
                false
            }
            IdentityRecord::Id { .. } => true,
            IdentityRecord::Link { .. } => !map.holds(record),
        }
    }

    /// What identity resolution did so far (zeros when it is off).
    pub fn identity_stats(&self) -> &IdentityStats {
        &self.identity_stats
    }

    /// The canonical id of `id` and the ids linked to it (just `id` when identity resolution is
    /// off or `id` is linked to nothing).
    pub fn linked_ids<'a>(&'a self, id: &'a str) -> (&'a str, Vec<&'a str>) {
        match self.identity.as_deref() {
            Some(map) => (map.canonical(id), map.linked_ids(id)),
            None => (id, vec![id]),
        }
    }

    /// Folds prospect `from` into prospect `into` (ids), as identity resolution decided at
    /// `at`: `into` then holds what one prospect that had sent both histories would hold (see
    /// ARCHITECTURE.md, "Identity resolution"), `from` leaves memory (the map routes its id to
    /// `into`), the funnel counts one person. (Under `[retention]`, a side whose expiry fell
    /// due left before the link was made: `Engine::expire_named`.) Nothing to fold when `from`
    /// has no prospect; when only `from` has one, it moves to `into` whole (with a cooldown
    /// kept for `into`'s id).
    pub(super) fn merge(&mut self, from: &str, into: &str, reason: LinkReason, at: Ts, out: &mut Vec<Output>) {
        let Some(f) = self.ids.find(from) else { return };
        if self.prospect(f).has(prospect::REDIRECT) {
            return;
        }
        let journey = std::sync::Arc::clone(&self.journey);
        let (t, new) = match self.ids.intern(into) {
            Ok(v) => v,
            // A full shard cannot take the canonical id: the prospects stay apart, said so.
            Err(_) => {
                self.identity_stats.refused += 1;
                return;
            }
        };
        let (fi, ti) = (f.0 as usize, t.0 as usize);
        // An id folded away earlier can become canonical again (`LinkReason::CanonicalRule`):
        // its record is an empty redirect, so the state moves onto it as for a new id.
        let redirect = !new && self.prospect(t).has(prospect::REDIRECT);
        let hot;
        if new || redirect {
            // The person's state moves to its canonical id as it is: the funnel is unchanged.
            // (A redirect here holds no event: one that applies to it revives it first, so its
            // record is a live prospect and the branch below folds.) The id's own transfer
            // history stays with it.
            let (p, st, c, m) = self.prospect_parts(f);
            let (mut p, st, c, m) = (p.clone(), st.to_vec(), c.to_vec(), m.to_vec());
            p.set_handoff(if new { 0 } else { self.prospect(t).handoff() });
            if new {
                self.store.put_with(ti, p, &st, &c, &m);
                self.returning(t, at);
            } else {
                self.store.set(ti, p, &st, &c, &m);
            }
            self.shown.clear(ti);
            self.shown.merge(fi, ti);
            // `into` held nothing: no state was joined, so no rule can have become true.
            hot = None;
        } else {
            hot = Some(self.merge_facts(&journey, fi, ti));
            self.fold(&journey, fi, ti);
        }
        self.attr.merge(&journey.breakdowns, fi, ti, self.store.stage_times(ti));
        if let Some(e) = self.emails.get(&f.0).map(Box::<str>::from) {
            if self.emails.get(&t.0).is_none() {
                self.emails.insert(t.0, e);
            }
            self.emails.remove(&f.0);
            self.mark_email_changed(f.0);
            self.mark_email_changed(t.0);
        }
        if let Some(x) = self.extras.remove(&f.0) {
            self.extras.entry(t.0).or_default().absorb(x);
        }
        // `from` leaves memory (nothing counted: the person is `into`), its id to a changelog
        // tombstone; the map routes its later events to `into`. (Across partitions an id with
        // a transfer history stays as a redirect that keeps it: `retire`.)
        self.retire(f);
        let anonymous = self.id_is_anonymous(into, self.store.fixed(ti).is_anonymous());
        self.set_anonymous(t, anonymous);
        let p = self.store.fixed(ti).clone();
        self.timers.extend(super::timers::armed(t.0, &p));
        self.quiet.remove(&t.0);
        self.arm_quiet(t);
        if let Some(a) = self.expiry_armed.get_mut(ti) {
            // `into`'s due may have moved later or earlier with the merged record.
            *a = 0;
        }
        self.arm_expiry(t);
        self.mark_changed(t.0);
        self.identity_stats.merged += 1;
        out.push(Output::ProspectMerged { from: f, into: t, reason, at });
        if let Some(facts) = hot {
            self.hot_rules_at_merge(&journey, t, from, &facts, at, out);
        }
    }

    /// Folds record `fi` into record `ti` (both live prospects), moving the funnel counters.
    fn fold(&mut self, journey: &Journey, fi: usize, ti: usize) {
        let (a, b) = (self.store.fixed(fi).clone(), self.store.fixed(ti).clone());
        let (a_times, a_counts) = (self.store.stage_times(fi).to_vec(), self.store.counts(fi).to_vec());
        let a_marks = self.store.marks(fi).to_vec();
        let alerted_of = |ix: usize| self.extras.get(&(ix as u32)).map_or_else(Vec::new, |x| x.alerted.clone());
        let (a_alerted, b_alerted) = (alerted_of(fi), alerted_of(ti));
        // Take both prospects out of the funnel. (The milestone and hot-first tables keep what
        // each id counted: which signals came before a stage is not in the state.)
        self.count_in_funnel(journey, fi, false);
        self.count_in_funnel(journey, ti, false);
        if !a_alerted.is_empty() && !b_alerted.is_empty() {
            // One person turned hot, not two.
            self.funnel.hot_prospects = self.funnel.hot_prospects.saturating_sub(1);
        }
        // The stage further along wins (ties: `into`'s), with what goes with it.
        let stage_of = |p: &Prospect| journey.stage(p.stage).order;
        let lead = if stage_of(&a) > stage_of(&b) { &a } else { &b };
        let active = if a.last_activity > b.last_activity { &a } else { &b };
        let later_alert = if a.last_alert > b.last_alert { &a } else { &b };
        let score_at = a.score_at.max(b.score_at);
        let score = (a.score_at_time(journey, score_at) + b.score_at_time(journey, score_at))
            .clamp(-journey.max_score, journey.max_score);
        let outcome_flags = prospect::OUTCOME_WON | prospect::OUTCOME_LOST;
        let mut flags = (a.flags | b.flags) & prospect::DISQUALIFIED;
        flags |= lead.flags & (prospect::STALLED | outcome_flags);
        flags |= active.flags & (prospect::GHOSTED | prospect::QUIET);
        let last_activity = a.last_activity.max(b.last_activity);
        let mut ghost_due = a.ghost_due.max(b.ghost_due);
        if let Some(g) = journey.ghost
            && !ghost_due.is_none()
            && last_activity <= ghost_due
            && last_activity > ghost_due.minus(g.window)
        {
            ghost_due = Ts::NONE;
        }
        let mut merged = Prospect {
            score,
            score_at,
            last_activity,
            stage_entered: lead.stage_entered,
            ghost_due,
            stall_due: lead.stall_due,
            hot_until: a.hot_until.max(b.hot_until),
            last_alert: later_alert.last_alert,
            recent: b.recent,
            stage: lead.stage,
            flags,
            hot_rule: later_alert.hot_rule,
            recent_pos: b.recent_pos,
            last_signal: active.last_signal,
            more: b.more,
        };
        // Anonymous only if both were; `merge` then follows the canonical id's kind. The
        // transfer history is `into`'s own (`b`'s).
        merged.set_more_flags(a.more_flags() & b.more_flags());
        let stage = merged.stage;
        let entered = stage_secs(merged.stage_entered);
        let (p, vars) = self.store.state_mut(ti);
        *p = merged;
        for (v, &x) in vars.stage_times.iter_mut().zip(&a_times) {
            if x != 0 && (*v == 0 || x < *v) {
                *v = x;
            }
        }
        // The rule of `enter_stage`, as if each prospect's events had come to the other: a stage
        // dated later than the entry of a (non-terminal) stage above it, up to the merged one,
        // was entered only because its events arrived first, so it is cleared. (Checking the
        // merged stage alone leaves a stage one prospect dated after a middle stage the other
        // dated earlier.)
        let mut bound = entered;
        for k in (0..stage.0 as usize).rev() {
            let v = &mut vars.stage_times[k];
            if *v > bound {
                *v = 0;
            } else if *v != 0 && !journey.stages[k].terminal {
                bound = *v;
            }
        }
        for (c, x) in vars.counts.iter_mut().zip(&a_counts) {
            *c = c.saturating_add(*x);
        }
        for (m, x) in vars.marks.iter_mut().zip(&a_marks) {
            if !x.is_none() && (m.is_none() || *x > *m) {
                *m = *x;
            }
        }
        // Count the one person again.
        let (times, counts) = (vars.stage_times.to_vec(), vars.counts.to_vec());
        self.funnel.in_stage[stage.0 as usize] += 1;
        for k in reached(journey, &times) {
            self.funnel.reached[k] += 1;
        }
        for (s, _) in counts.iter().enumerate().filter(|&(_, &c)| c > 0) {
            self.funnel.signal_shown[s] += 1;
        }
        let mut alerted = Extras::default();
        alerted.absorb(Extras { alerted: a_alerted, ..Extras::default() });
        alerted.absorb(Extras { alerted: b_alerted, ..Extras::default() });
        self.shown.merge(fi, ti);
        let shown = self.shown.get(ti).to_vec();
        let (merged_entered, merged_score) = (self.store.fixed(ti).stage_entered, self.store.fixed(ti).score);
        for (flag, o) in [(prospect::OUTCOME_WON, Outcome::Won), (prospect::OUTCOME_LOST, Outcome::Lost)] {
            if flags & flag != 0 {
                let at = super::stages::outcome_at(journey, o, merged_entered, &times);
                let facts =
                    OutcomeFacts { counts: &counts, alerted: &alerted.alerted, shown: &shown, at, score: merged_score };
                self.funnel.outcome(journey, o, &facts);
            }
        }
        // `from`'s recent event ids join `into`'s dedup memory.
        let ix = ProspectIx(ti as u32);
        for key in a.recent.into_iter().filter(|&k| k != 0) {
            self.remember(ix, key, a.score_at);
        }
        if !self.store.fixed(ti).stall_due.is_none() {
            let due = self.store.fixed(ti).stall_due;
            self.timers.push(Reverse((due, ti as u32, TimerKind::Stall)));
        }
    }
}

/// The non-terminal stages a prospect with these stage entry times counts as having reached:
/// every one up to the furthest it entered (as `Funnel::transition_from` counts them).
impl Engine {
    /// Counts prospect `i` into the funnel (`add`) or takes it out: its stage, the stages it
    /// reached, the signals it showed, its outcome (not the hot-prospect count: a merge counts
    /// one person hot once). A merge takes both of its prospects out; a transfer across
    /// partitions takes one out on its sender and counts it in on its receiver.
    pub(super) fn count_in_funnel(&mut self, journey: &Journey, i: usize, add: bool) {
        let p = self.store.fixed(i).clone();
        let times = self.store.stage_times(i).to_vec();
        let counts = self.store.counts(i).to_vec();
        let alerted = self.extras.get(&(i as u32)).map_or_else(Vec::new, |x| x.alerted.clone());
        let shown = self.shown.get(i).to_vec();
        let step = |n: &mut u64| *n = if add { *n + 1 } else { n.saturating_sub(1) };
        step(&mut self.funnel.in_stage[p.stage.0 as usize]);
        for k in reached(journey, &times) {
            step(&mut self.funnel.reached[k]);
        }
        for (s, _) in counts.iter().enumerate().filter(|&(_, &c)| c > 0) {
            step(&mut self.funnel.signal_shown[s]);
        }
        for (flag, o) in [(prospect::OUTCOME_WON, Outcome::Won), (prospect::OUTCOME_LOST, Outcome::Lost)] {
            if p.has(flag) {
                let at = super::stages::outcome_at(journey, o, p.stage_entered, &times);
                let facts = OutcomeFacts { counts: &counts, alerted: &alerted, shown: &shown, at, score: p.score };
                if add {
                    self.funnel.outcome(journey, o, &facts);
                } else {
                    self.funnel.retract_outcome(journey, o, &facts);
                }
            }
        }
    }
}

fn reached<'j>(journey: &'j Journey, stage_times: &[u32]) -> impl Iterator<Item = usize> + use<'j> {
    let furthest = (0..journey.stages.len()).rev().find(|&k| !journey.stages[k].terminal && stage_times[k] != 0);
    (0..furthest.map_or(0, |f| f + 1)).filter(|&k| !journey.stages[k].terminal)
}

fn stage_secs(ts: Ts) -> u32 {
    (ts.0.div_euclid(MS_PER_SEC) + 1).clamp(1, i64::from(u32::MAX)) as u32
}
