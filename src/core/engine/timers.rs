//! Silence timers (ghost, stall): a min-heap of due times; an entry goes stale when its timer is
//! re-armed or cancelled, and fires only if it is still the prospect's current one.

use std::cmp::Reverse;

use super::Engine;
use crate::core::ids::ProspectIx;
use crate::core::output::Output;
use crate::core::prospect::{self, Prospect};
use crate::core::time::Ts;

/// Which of a prospect's silence timers a heap entry is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub(super) enum TimerKind {
    /// No prospect activity within the window after the signal that armed it.
    Ghost,
    /// No stage move within the window after entering a watched stage.
    Stall,
}

impl TimerKind {
    /// The prospect's current due time for this kind (`Ts::NONE`: not armed).
    fn due(self, p: &Prospect) -> Ts {
        match self {
            TimerKind::Ghost => p.ghost_due,
            TimerKind::Stall => p.stall_due,
        }
    }
}

/// A heap entry: due time, prospect index, kind (earliest first).
pub(super) type Timer = Reverse<(Ts, u32, TimerKind)>;

// The kind takes the byte a `u8` would: an entry stays 16 bytes.
const _: () = assert!(std::mem::size_of::<Timer>() == 16);

/// The timers a prospect's state has armed (for a restored prospect).
pub(super) fn armed(ix: u32, p: &Prospect) -> impl Iterator<Item = Timer> + '_ {
    [TimerKind::Ghost, TimerKind::Stall]
        .into_iter()
        .map(move |kind| Reverse((kind.due(p), ix, kind)))
        .filter(|Reverse((due, _, _))| !due.is_none())
}

impl Engine {
    /// Fires this prospect's timers that fell due strictly before `ts`.
    pub(super) fn fire_own_timers(&mut self, ix: ProspectIx, ts: Ts, out: &mut Vec<Output>) {
        let p = self.store.fixed(ix.0 as usize);
        let mut due = [(p.ghost_due, TimerKind::Ghost), (p.stall_due, TimerKind::Stall)];
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
    fn fire(&mut self, ix: ProspectIx, kind: TimerKind, due: Ts, out: &mut Vec<Output>) {
        if kind.due(self.store.fixed(ix.0 as usize)) != due {
            return;
        }
        self.mark_changed(ix.0);
        let journey = &self.journey;
        let p = self.store.fixed_mut(ix.0 as usize);
        match kind {
            TimerKind::Ghost => {
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
            TimerKind::Stall => {
                p.stall_due = Ts::NONE;
                p.flags |= prospect::STALLED;
                self.funnel.stalled[p.stage.0 as usize] += 1;
                self.stats.stalled += 1;
                out.push(Output::Stalled { prospect: ix, stage: p.stage, since: p.stage_entered, at: due });
            }
        }
    }
}
