//! Silence timers (ghost, stall, gone quiet): a min-heap of due times; an entry goes stale when
//! its timer is re-armed or cancelled, and fires only if it is still the prospect's current one.
//! Gone-quiet times are derived from the prospect (last activity, stage entry): its one heap
//! entry per prospect re-arms itself when it pops after newer activity.

use std::cmp::Reverse;

use super::Engine;
use crate::core::ids::ProspectIx;
use crate::core::journey::Journey;
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
    /// No prospect activity within the window after the last, in a watched stage.
    Quiet,
    /// No event for the stage's `[retention]` span: the prospect leaves memory (last at one
    /// instant, so the silences due then fire first).
    Expire,
}

/// When the prospect goes quiet under `[gone_quiet]`: the window after its last
/// prospect-initiated signal, or after it entered its stage if that is later, while its stage is
/// watched; `Ts::NONE` when not watched, already quiet or not a prospect.
pub(super) fn quiet_due(j: &Journey, p: &Prospect) -> Ts {
    let Some(q) = j.quiet else { return Ts::NONE };
    if q.stages & (1 << p.stage.0) == 0
        || p.has(prospect::QUIET | prospect::DISQUALIFIED | prospect::REDIRECT | prospect::FREE)
    {
        return Ts::NONE;
    }
    let from = if p.last_activity.is_none() { p.stage_entered } else { p.last_activity.max(p.stage_entered) };
    from.plus(q.window)
}

impl TimerKind {
    /// The prospect's current due time for this kind (`Ts::NONE`: not armed).
    fn due(self, j: &Journey, p: &Prospect) -> Ts {
        match self {
            TimerKind::Ghost => p.ghost_due,
            TimerKind::Stall => p.stall_due,
            TimerKind::Quiet => quiet_due(j, p),
            TimerKind::Expire => super::retention::expiry_due(j, p),
        }
    }
}

/// A heap entry: due time, prospect index, kind (earliest first).
pub(super) type Timer = Reverse<(Ts, u32, TimerKind)>;

// The kind takes the byte a `u8` would: an entry stays 16 bytes.
const _: () = assert!(std::mem::size_of::<Timer>() == 16);

/// The ghost and stall timers a prospect's state has armed (for a restored prospect; the
/// gone-quiet timer is armed with [`quiet_due`]).
pub(super) fn armed(ix: u32, p: &Prospect) -> impl Iterator<Item = Timer> + '_ {
    [(p.ghost_due, TimerKind::Ghost), (p.stall_due, TimerKind::Stall)]
        .into_iter()
        .map(move |(due, kind)| Reverse((due, ix, kind)))
        .filter(|Reverse((due, _, _))| !due.is_none())
}

impl Engine {
    /// Makes sure a prospect that can go quiet has its heap entry: one due no later than its
    /// current due time (an earlier one re-arms itself when it pops).
    pub(super) fn arm_quiet(&mut self, ix: ProspectIx) {
        let due = quiet_due(&self.journey, self.store.fixed(ix.0 as usize));
        if due.is_none() || self.quiet.get(&ix.0).is_some_and(|&d| d <= due) {
            return;
        }
        self.quiet.insert(ix.0, due);
        self.timers.push(Reverse((due, ix.0, TimerKind::Quiet)));
    }

    /// Fires this prospect's timers that fell due strictly before `ts`.
    pub(super) fn fire_own_timers(&mut self, ix: ProspectIx, ts: Ts, out: &mut Vec<Output>) {
        let p = self.store.fixed(ix.0 as usize);
        let quiet = quiet_due(&self.journey, p);
        let mut due = [(p.ghost_due, TimerKind::Ghost), (p.stall_due, TimerKind::Stall), (quiet, TimerKind::Quiet)];
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
            if self.gate.is_some() && self.hold(Reverse((due, ix, kind))) {
                continue;
            }
            if kind == TimerKind::Expire && !self.expiry_popped(ix, due) {
                continue;
            }
            if kind == TimerKind::Quiet {
                if self.quiet.get(&ix) != Some(&due) {
                    continue;
                }
                self.quiet.remove(&ix);
                let now = quiet_due(&self.journey, self.store.fixed(ix as usize));
                if now > due {
                    // Activity since it was armed: wait for the new due time.
                    self.arm_quiet(ProspectIx(ix));
                    continue;
                }
            }
            self.fire(ProspectIx(ix), kind, due, out);
        }
    }

    /// Fires a timer if it is still the prospect's current one (heap entries go stale when a
    /// timer is re-armed or cancelled).
    fn fire(&mut self, ix: ProspectIx, kind: TimerKind, due: Ts, out: &mut Vec<Output>) {
        if kind.due(&self.journey, self.store.fixed(ix.0 as usize)) != due {
            return;
        }
        if kind == TimerKind::Expire {
            return self.expire(ix, due, crate::core::output::ExpireReason::Retention, out);
        }
        self.mark_changed(ix.0);
        let journey = &self.journey;
        let email = self.emails.get(&ix.0).map(Box::from);
        let p = self.store.fixed_mut(ix.0 as usize);
        let class = p.classification(journey);
        match kind {
            TimerKind::Ghost => {
                p.ghost_due = Ts::NONE;
                if !p.has(prospect::GHOSTED | prospect::STALLED) {
                    self.funnel.silence_after(p.last_signal);
                }
                p.flags |= prospect::GHOSTED;
                if p.hot_until > due {
                    p.hot_until = due;
                }
                let since = journey.ghost.map_or(due, |g| due.minus(g.window));
                self.funnel.ghosted[p.stage.0 as usize] += 1;
                self.stats.ghosted += 1;
                out.push(Output::Ghosted { prospect: ix, stage: p.stage, since, at: due, class, email });
            }
            TimerKind::Stall => {
                p.stall_due = Ts::NONE;
                if !p.has(prospect::GHOSTED | prospect::STALLED) {
                    self.funnel.silence_after(p.last_signal);
                }
                p.flags |= prospect::STALLED;
                self.funnel.stalled[p.stage.0 as usize] += 1;
                self.stats.stalled += 1;
                let since = p.stage_entered;
                out.push(Output::Stalled { prospect: ix, stage: p.stage, since, at: due, class, email });
            }
            TimerKind::Quiet => {
                p.flags |= prospect::QUIET;
                if p.hot_until > due {
                    p.hot_until = due;
                }
                let since = journey.quiet.map_or(due, |q| due.minus(q.window));
                out.push(Output::GoneQuiet { prospect: ix, stage: p.stage, since, at: due, class, email });
            }
            // Left above: an expiry frees the prospect rather than marking it.
            TimerKind::Expire => {}
        }
    }
}
