//! Silence timers (ghost, stall): a min-heap of due times; an entry goes stale when its timer is
//! re-armed or cancelled, and fires only if it is still the prospect's current one.

use std::cmp::Reverse;

use super::Engine;
use crate::core::ids::ProspectIx;
use crate::core::output::Output;
use crate::core::prospect;
use crate::core::time::Ts;

pub(super) const GHOST: u8 = 0;
pub(super) const STALL: u8 = 1;

impl Engine {
    /// Fires this prospect's timers that fell due strictly before `ts`.
    pub(super) fn fire_own_timers(&mut self, ix: ProspectIx, ts: Ts, out: &mut Vec<Output>) {
        let p = self.store.fixed(ix.0 as usize);
        let mut due = [(p.ghost_due, GHOST), (p.stall_due, STALL)];
        due.sort();
        for (t, kind) in due {
            if !t.is_none() && t < ts {
                self.fire(ix, kind, t, out);
            }
        }
    }

    pub(super) fn fire_timers(&mut self, out: &mut Vec<Output>) {
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
}
