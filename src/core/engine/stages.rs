//! Stage moves and outcomes: forward only, stage entry dates in event time, terminal stages
//! and their reopening, won and lost.

use std::cmp::Reverse;

use super::Engine;
use super::timers::TimerKind;
use crate::core::funnel::OutcomeFacts;
use crate::core::ids::ProspectIx;
use crate::core::journey::{Journey, Outcome, SignalId, StageId};
use crate::core::output::Output;
use crate::core::prospect;
use crate::core::time::{MS_PER_SEC, Ts};

impl Engine {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn enter_stage(
        &mut self,
        journey: &Journey,
        ix: ProspectIx,
        new: bool,
        to: StageId,
        sig: SignalId,
        ts: Ts,
        late: bool,
        score_before: f64,
        out: &mut Vec<Output>,
    ) {
        let i = ix.0 as usize;
        let alerted: &[(u8, Ts)] = self.extras.get(&ix.0).map_or(&[], |x| &x.alerted);
        let entries = self.shown.get(i);
        let shown: &[u64] = &entries;
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
            } else if journey.stage(to).order <= cur.order
                && (late || ts <= p.stage_entered || !cur.reopen_on.contains(&sig))
            {
                // Forward only (but see `reopen_on` below). An event that happened before the current stage was entered
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
                            self.timers.push(Reverse((p.stall_due, ix.0, TimerKind::Stall)));
                        }
                    }
                }
                return;
            } else if won && journey.stage(to).terminal {
                // A customer who has won is not lost by a later `deal_lost` (a lost upsell, not
                // a lost customer), unless it corrects the win within the correction window.
                let won_at = won_since(journey, vars.stage_times);
                if late || won_at.is_none() || ts <= won_at || ts.since(won_at) > journey.outcome_correction {
                    out.push(Output::OutcomeKept { prospect: ix, stage: f, refused: to, signal: sig, at: ts });
                    return;
                }
                reopen = true;
            } else if journey.stage(to).order <= cur.order {
                // One of the stage's `reopen_on` signals after the prospect entered it: back to
                // the stage the signal enters (a churned customer won back).
                reopen = true;
            }
        }
        if reopen {
            // The previous outcome no longer stands: outcome statistics follow the latest one.
            self.stats.reopened += 1;
            for (flag, o) in [(prospect::OUTCOME_WON, Outcome::Won), (prospect::OUTCOME_LOST, Outcome::Lost)] {
                if p.has(flag) {
                    p.flags &= !flag;
                    let at = outcome_at(journey, o, p.stage_entered, vars.stage_times);
                    let facts = OutcomeFacts { counts: vars.counts, alerted, shown, at, score: p.score };
                    self.funnel.retract_outcome(journey, o, &facts);
                }
            }
        }
        let furthest = if reopen { furthest_reached(journey, vars.stage_times) } else { None };
        let time_in_from = ts.since(p.stage_entered);
        self.funnel.transition_from(journey, from, furthest, to, time_in_from, vars.counts, (shown, ts));
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
            self.timers.push(Reverse((p.stall_due, ix.0, TimerKind::Stall)));
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
        let flag = |o: Outcome| match o {
            Outcome::Won => prospect::OUTCOME_WON,
            Outcome::Lost => prospect::OUTCOME_LOST,
        };
        if let Some(o) = outcome {
            let facts = OutcomeFacts { counts: vars.counts, alerted, shown, at: ts, score: score_before };
            if !p.has(prospect::OUTCOME_WON | prospect::OUTCOME_LOST) {
                p.flags |= flag(o);
                self.funnel.outcome(journey, o, &facts);
            } else if !p.has(flag(o)) && !def.terminal && def.outcome == Some(o) {
                // A stage after the sale with an outcome of its own (churned after paying):
                // the latest outcome stands.
                let old = if o == Outcome::Won { Outcome::Lost } else { Outcome::Won };
                p.flags &= !flag(old);
                let old_at = outcome_at(journey, old, ts, vars.stage_times);
                self.funnel.retract_outcome(journey, old, &OutcomeFacts { at: old_at, ..facts });
                p.flags |= flag(o);
                self.funnel.outcome(journey, o, &facts);
            }
        }
        self.stats.stage_changes += 1;
        out.push(Output::StageChanged { prospect: ix, from, to, signal: sig, at: ts, late });
    }
}

/// When a prospect that has won won: the earliest entry into the won stage or a stage after it.
fn won_since(journey: &Journey, stage_times: &[u32]) -> Ts {
    let Some(w) = journey.stages.iter().position(|s| s.outcome == Some(Outcome::Won)) else {
        return Ts::NONE;
    };
    (w..journey.stages.len())
        .filter(|&k| !journey.stages[k].terminal && stage_times[k] != 0)
        .map(|k| Ts((i64::from(stage_times[k]) - 1) * MS_PER_SEC))
        .min()
        .unwrap_or(Ts::NONE)
}

/// When a prospect's outcome `o` came, as far as its state tells: a win at [`won_since`], a loss
/// at the entry into its current stage (`entered`).
pub(super) fn outcome_at(journey: &Journey, o: Outcome, entered: Ts, stage_times: &[u32]) -> Ts {
    match o {
        Outcome::Won => Some(won_since(journey, stage_times)).filter(|t| !t.is_none()).unwrap_or(entered),
        Outcome::Lost => entered,
    }
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
