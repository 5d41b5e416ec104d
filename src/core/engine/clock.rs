//! The shard's clock and watermark (the time rules are in the [module docs](super)): how an
//! on-time event moves the clock, the watermark that trails it, and the sweep of expired extras.

use super::Engine;
use crate::core::ids;
use crate::core::output::Output;
use crate::core::time::{Span, Ts};

impl Engine {
    /// Moves the watermark to `t` (if later) and fires every timer it passes. The shell calls
    /// this with the wall clock when a shard is idle, and at the end of a replay.
    pub fn advance_to(&mut self, t: Ts, out: &mut Vec<Output>) {
        self.release_freed();
        if t > self.watermark {
            self.watermark = t;
            self.fire_timers(out);
        }
    }

    /// Moves the shard's clock for an on-time event at `u` from the prospect with fingerprint
    /// `q`. The clock follows event time, but a time more than `max_ahead` ahead of it (a client
    /// clock set ahead, a year-9999 timestamp) moves it only once an event of another prospect
    /// confirms it, i.e. comes no earlier than `max_ahead` before it. A fresh shard's first
    /// event needs that confirmation too.
    pub(super) fn tick_clock(&mut self, u: Ts, prospect: &str, out: &mut Vec<Output>) {
        let ahead = self.journey.max_ahead;
        let c = self.max_event_ts;
        if !c.is_none() && u <= c.plus(ahead) {
            return self.set_clock(u, out);
        }
        let q = ids::event_fingerprint(prospect);
        let (t, from) = self.leap;
        if !t.is_none() && from != q && u >= t.minus(ahead) {
            // Two prospects agree that time has come at least to the earlier of the two; the
            // later one moves the clock too if it is within `max_ahead` of that, else it is the
            // new unconfirmed jump (never a time between the two that no event had).
            self.set_clock(u.min(t), out);
            if u.max(t) <= self.max_event_ts.plus(ahead) {
                self.set_clock(u.max(t), out);
            } else {
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

    /// Drops expired extras once the watermark moved by the dedup window (at least an hour)
    /// since the last sweep: expired entries are ignored anyway, this only returns their memory,
    /// and a sweep walks every prospect with extras, so it runs about once per window (entries
    /// are kept at most about twice the window).
    fn sweep(&mut self) {
        let every = self.journey.dedup_window.max(Span::from_hours(1.0));
        if !self.swept_at.is_none() && self.watermark < self.swept_at.plus(every) {
            return;
        }
        self.swept_at = self.watermark;
        let (watermark, window) = (self.watermark, self.journey.dedup_window);
        self.extras.retain(|_, x| !x.prune(watermark, window));
        self.sweep_cooldowns();
    }
}
