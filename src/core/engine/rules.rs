//! Hot rules: score thresholds and signals, sequence rules (a signal within a window after its
//! anchor, in event-time order whatever the arrival order) and the alert with its cooldown.

use super::Engine;
use crate::core::event::Event;
use crate::core::ids::{self, ProspectIx};
use crate::core::journey::{HotCondition, Journey, SignalId};
use crate::core::output::{HotLead, Output, SuppressedLead};
use crate::core::prospect;
use crate::core::time::Ts;

/// What the hot rules need of the two prospects a merge joins, taken before they are folded:
/// the higher of their scores at the merged score time, each one's look-back marks (`from`'s,
/// then `into`'s), and the sequence signals `from` had waiting.
pub(super) struct MergeFacts {
    score_before: f64,
    marks: [Vec<Ts>; 2],
    from_waiting: Vec<(u8, Ts, Box<str>)>,
}

impl Engine {
    pub(super) fn hot_rules(
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
        }
        // Every rule that matched is remembered for the rules' accuracy (`[insight]`), whether
        // its alert goes out or the cooldown holds it.
        let x = self.extras.entry(ix.0).or_default();
        if x.alerted.is_empty() {
            self.funnel.first_hot(self.store.counts(ix.0 as usize));
        }
        for r in (0..journey.hot_rules.len()).filter(|r| fired & (1 << r) != 0) {
            x.matched(r as u8, ts);
        }
        let p = self.store.fixed_mut(ix.0 as usize);
        // The strongest rule that fired (ties to the first listed).
        let rules = &journey.hot_rules;
        let top = (0..rules.len())
            .filter(|r| fired & (1 << r) != 0)
            .max_by_key(|&r| (rules[r].priority, std::cmp::Reverse(r)))
            .unwrap_or(0);
        // At most one alert per cooldown window, whichever side of the last alert `ts` is on
        // (an earlier event can arrive later, within the lateness), unless a stronger rule than
        // the last alert's fired.
        if !p.last_alert.is_none()
            && ts < p.last_alert.plus(journey.alert_cooldown)
            && ts.plus(journey.alert_cooldown) > p.last_alert
            && rules[top].priority <= rules.get(p.hot_rule as usize).map_or(0, |r| r.priority)
        {
            self.stats.alerts_suppressed += 1;
            out.push(Output::HotLeadSuppressed(Box::new(SuppressedLead {
                prospect: ix,
                rules: fired,
                held_by: p.hot_rule,
                last_alert: p.last_alert,
                score: p.score,
                stage: p.stage,
                signal: sig,
                event_id: event_id.to_string(),
                at: ts,
            })));
            return;
        }
        if p.last_alert.is_none() || ts > p.last_alert {
            p.last_alert = ts;
            p.hot_rule = top as u8;
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

    /// A sequence rule's anchor (`after`) arrived: sequence signals of this prospect that
    /// arrived before it but happened within the rule's window after it make the prospect hot
    /// now, as if they had arrived in event-time order (the alert names the signal's event).
    pub(super) fn anchor_arrived(
        &mut self,
        journey: &Journey,
        ix: ProspectIx,
        sig: SignalId,
        ts: Ts,
        out: &mut Vec<Output>,
    ) {
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

    /// The facts [`Engine::hot_rules_at_merge`] needs of records `fi` and `ti`, before the fold.
    pub(super) fn merge_facts(&self, journey: &Journey, fi: usize, ti: usize) -> MergeFacts {
        let (a, b) = (self.store.fixed(fi), self.store.fixed(ti));
        let at = a.score_at.max(b.score_at);
        MergeFacts {
            score_before: a.score_at_time(journey, at).max(b.score_at_time(journey, at)),
            marks: [self.store.marks(fi).to_vec(), self.store.marks(ti).to_vec()],
            from_waiting: self.extras.get(&(fi as u32)).map_or_else(Vec::new, |x| x.waiting.clone()),
        }
    }

    /// The hot rules, once, on prospect `ix` just merged (from prospect `from`, at `at`), as
    /// if the joined state had been one prospect's all along (README, "Identity resolution"):
    /// - a score rule fires when the merged score reaches its threshold and neither prospect's
    ///   score did (at the merged score time): the alert is at `at`, names the merged
    ///   prospect's last prospect-initiated signal and has the event id `merge:<from>`;
    /// - a sequence signal still waiting for its anchor (under either id) fires when the anchor
    ///   under the other id came within the rule's window before it: the alert is at the signal's
    ///   time and names its event, as it would have without the merge. A waiting signal is kept
    ///   only while the watermark has not passed its time, so a merge later than that fires
    ///   nothing for it;
    /// - a late merge (`at` behind the watermark) raises nothing, as a late event does not.
    ///
    /// Each alert goes through the cooldown of the merged prospect's last alert.
    pub(super) fn hot_rules_at_merge(
        &mut self,
        journey: &Journey,
        ix: ProspectIx,
        from: &str,
        facts: &MergeFacts,
        at: Ts,
        out: &mut Vec<Output>,
    ) {
        let i = ix.0 as usize;
        let p = self.store.fixed(i);
        let wm = self.watermark;
        if (!wm.is_none() && at < wm) || p.has(prospect::DISQUALIFIED) || journey.stage(p.stage).terminal {
            return;
        }
        // Sequence signals whose anchor was under the other id.
        let mut hits: Vec<(Ts, u8, Box<str>)> = Vec::new();
        if let Some(x) = self.extras.get_mut(&ix.0) {
            x.waiting.retain(|(r, s, id)| {
                let HotCondition::Signal { after: Some((a, within)), .. } = journey.hot_rules[*r as usize].condition
                else {
                    return true;
                };
                let slot = journey.signal(a).tracked_slot.map_or(0, usize::from);
                let live = wm.is_none() || *s >= wm;
                // The anchor under the other id (one under its own id was late, or too early).
                let other = if facts.from_waiting.iter().any(|w| w.0 == *r && w.1 == *s && w.2 == *id) { 1 } else { 0 };
                let m = facts.marks[other][slot];
                let hit = live && !m.is_none() && m <= *s && s.since(m) <= within;
                if hit {
                    hits.push((*s, *r, id.clone()));
                }
                !hit
            });
            if x.is_empty() {
                self.extras.remove(&ix.0);
            }
        }
        hits.sort();
        for (s, r, id) in hits {
            let HotCondition::Signal { signal, .. } = journey.hot_rules[r as usize].condition else { continue };
            self.raise(journey, ix, 1 << r, signal, &id, s, out);
        }
        // Score thresholds crossed only by the sum.
        let p = self.store.fixed(i);
        let mut fired = 0u32;
        for (r, rule) in journey.hot_rules.iter().enumerate() {
            if let HotCondition::ScoreAtLeast(t) = rule.condition
                && facts.score_before < t
                && p.score >= t
            {
                fired |= 1 << r;
            }
        }
        if fired != 0 {
            let sig = if p.last_signal != prospect::NO_SIGNAL {
                SignalId(p.last_signal)
            } else {
                // No prospect-initiated signal: the first signal the person showed.
                let counts = self.store.counts(i);
                SignalId(counts.iter().position(|&c| c > 0).unwrap_or(0) as u16)
            };
            self.raise(journey, ix, fired, sig, &format!("merge:{from}"), at, out);
        }
    }
}
