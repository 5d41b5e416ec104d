//! The event-time watermark across partitions and the expiry gate it drives (identity
//! resolution across partitions with `[retention]`; ARCHITECTURE.md "Watermark across
//! partitions"). Each shard publishes its progress on the identity topic
//! ([`XRecord::Progress`], [`Engine::publish_progress`]); what it receives builds its
//! [`ProgressTable`], whose horizon gates the watermark-driven expiry sweep: an expiry heap entry
//! fires only once its due is before both the shard's own watermark and the horizon, so a
//! person does not leave memory before every record that other partitions' inputs up to its due
//! cause has arrived. An entry past the horizon waits in `held` (with the silence timers of its
//! prospect that fall after it, so they fire after it as they would have); a horizon that moves
//! on releases them. Expiries decided on contact (an event, link or transfer later than the
//! due) do not wait. An idle partition's report is left out of the horizon only while it is
//! renewed (and, in history mode, while no partition reads): time enters as the shell's
//! monotonic clock ([`Engine::progress_clock`]), never read here. Soft state: nothing here is
//! checkpointed; a restored shard relearns the table from the next progress records and
//! expires nothing by sweep until every partition reported.

use std::collections::BinaryHeap;
use std::time::Instant;

use super::Engine;
use super::timers::{Timer, TimerKind};
use crate::core::output::{ExpireReason, Output};
use crate::core::time::Ts;
use crate::core::xpart::{Lapse, ProgressTable, Renewal, Reported, XRecord};

/// The gate of one shard (present once the shell gates expiry on progress: the service; replay
/// has none, see ARCHITECTURE.md).
#[derive(Clone, Debug, Default)]
pub(super) struct Gate {
    table: ProgressTable,
    /// The horizon now ([`ProgressTable::horizon`]; `Ts::NONE` until every partition reported).
    horizon: Ts,
    /// Whether the shard's inputs were caught up at its last publication.
    idle: bool,
    /// Heap entries past the horizon, earliest first.
    held: BinaryHeap<Timer>,
    /// People that left memory ahead of the horizon (expired on contact: an event of their own
    /// later than their due), by canonical id, with the time they left; dropped once the
    /// horizon passes it. A transfer into one of them caused before that time, still in
    /// flight from a partition behind, belonged to the person that left.
    left: std::collections::HashMap<Box<str>, Ts>,
    /// What the last `Progress` record said (`watermark`, none when idle; `seen`; `idle`).
    published: Option<(Ts, Ts, bool)>,
    /// A partition that has not heard from every other one yet (it started, or was restored)
    /// asked: the next publication goes out even if it says nothing new.
    asked: bool,
    /// The shell's monotonic clock at its last call ([`Engine::progress_clock`]) and the
    /// renewal of idle reports; `None` (in-process callers that pass no clock): idle reports
    /// are neither renewed nor lapse.
    clock: Option<(Instant, Renewal)>,
    /// When the last `Progress` record was queued (by `clock`).
    sent_at: Option<Instant>,
}

impl Gate {
    fn lapse(&self) -> Option<Lapse> {
        self.clock.map(|(now, r)| Lapse { now, after: r.lapse })
    }
}

impl Engine {
    /// Gates the expiry sweep on the progress of the other partitions (identity resolution
    /// across partitions, after [`Engine::resolve_across`], with `[retention]` spans; otherwise
    /// nothing). Until every partition reported, nothing expires by sweep.
    pub fn gate_expiry(&mut self) {
        if self.gate.is_some() || self.journey.retention.after.is_empty() {
            return;
        }
        let Some((partition, partitions)) = self.partition() else { return };
        self.gate = Some(Box::new(Gate {
            table: ProgressTable::new(partition, partitions),
            horizon: Ts::NONE,
            ..Gate::default()
        }));
    }

    /// The expiry horizon (`None`: expiry is not gated; `Some(Ts::NONE)`: not every partition
    /// reported yet).
    pub fn expiry_horizon(&self) -> Option<Ts> {
        self.gate.as_deref().map(|g| g.horizon)
    }

    /// Expiries the horizon holds back: people held whose expiry is still before the shard's
    /// watermark (one whose due an identity record moved past it since is not waiting any
    /// more, though its held entry stays until the horizon releases it and re-arms it).
    pub fn expiries_waiting(&self) -> usize {
        let Some(g) = self.gate.as_deref() else { return 0 };
        g.held
            .iter()
            .filter(|t| {
                let (due, ix, kind) = t.0;
                let i = ix as usize;
                kind == TimerKind::Expire
                    && self.expiry_armed.get(i) == Some(&((due.0 / 1000) as u32))
                    && i < self.store.len()
                    && self.holds(i)
                    && {
                        let now = super::retention::expiry_due(&self.journey, self.store.fixed(i));
                        !now.is_none() && now < self.watermark
                    }
            })
            .count()
    }

    /// The progress table (`None`: expiry not gated).
    pub fn progress_table(&self) -> Option<&ProgressTable> {
        self.gate.as_deref().map(|g| &g.table)
    }

    /// The shell's monotonic clock `now` and the renewal of idle reports, for what follows:
    /// a `Progress` record received is stamped with `now`, an idle report not renewed within
    /// `renewal.lapse` counts at its watermark ([`ProgressTable`]), and
    /// [`publish_progress`](Engine::publish_progress) renews an idle report every
    /// `renewal.renew`. Time is a parameter: the engine reads no clock. Gates expiry.
    pub fn progress_clock(&mut self, now: Instant, renewal: Renewal) {
        self.gate_expiry();
        if let Some(g) = self.gate.as_deref_mut() {
            g.clock = Some((now, renewal));
        }
    }

    /// History mode (the shell's `pipeline.idle_advance_ms = 0`: no clock moves an idle
    /// shard's watermark): idle reports are left out of the horizon only while no partition
    /// reads ([`ProgressTable::wait_while_reading`]). Gates expiry.
    pub fn wait_while_reading(&mut self, on: bool) {
        self.gate_expiry();
        if let Some(g) = self.gate.as_deref_mut() {
            g.table.wait_while_reading(on);
        }
    }

    /// An input event of the shard's own: it reads, whatever it last published, so its horizon
    /// counts it (and, in history mode, every idle partition) from this event on, not from its
    /// next publication.
    pub(super) fn note_reading(&mut self) {
        let own = self.watermark;
        if let Some(g) = self.gate.as_deref_mut()
            && g.idle
        {
            g.idle = false;
            g.horizon = g.horizon.min(g.table.horizon(own, false, g.lapse()));
        }
    }

    /// Partitions whose idle report lapsed (not renewed within the lapse by the last
    /// [`progress_clock`](Engine::progress_clock)): counted at their last watermark.
    pub fn progress_lapsed(&self) -> usize {
        self.gate.as_deref().map_or(0, |g| g.table.lapsed(g.lapse()))
    }

    /// The partitions [`progress_lapsed`](Engine::progress_lapsed) counts, in increasing order.
    pub fn progress_lapsed_partitions(&self) -> Vec<u32> {
        self.gate.as_deref().map_or_else(Vec::new, |g| g.table.lapsed_partitions(g.lapse()))
    }

    /// Queues this shard's `Progress` record for every other partition (taken with the other
    /// identity records, [`Engine::take_identity_records`], so it goes after the records of the
    /// inputs it covers): its watermark, what it has seen of the others', and `idle` (its inputs
    /// are caught up and its watermark does not move by itself: it binds no one while the
    /// report is renewed; the shell decides, see ARCHITECTURE.md "Watermark across
    /// partitions"). Skipped when it would say what the last one said, unless `again`, a
    /// partition that had not heard from every other one asked (a shard started or restored:
    /// so it relearns the table at once), or the shard is idle and its last record is
    /// `renew` old by [`progress_clock`](Engine::progress_clock) (so that receivers keep
    /// leaving it out: an idle report lapses). Gates expiry
    /// ([`Engine::gate_expiry`]); a horizon that moved releases what it held. Returns whether a
    /// record was queued.
    pub fn publish_progress(&mut self, idle: bool, again: bool, out: &mut Vec<Output>) -> bool {
        self.gate_expiry();
        self.release_freed();
        let (watermark, partitions) = (self.watermark, self.partition().map_or(0, |p| p.1));
        let Some(g) = self.gate.as_deref_mut() else { return false };
        g.idle = idle;
        let lapse = g.lapse();
        let seen = g.table.seen(watermark, idle, lapse);
        // An idle shard's watermark binds no one while renewed: its moves say nothing new (a
        // renewal carries the latest).
        let said = (if idle { Ts::NONE } else { watermark }, seen, idle);
        let horizon = g.table.horizon(watermark, idle, lapse);
        let renew = idle
            && match (g.clock, g.sent_at) {
                (Some((now, r)), Some(at)) => now.saturating_duration_since(at) >= r.renew,
                _ => false,
            };
        let send = again || g.asked || renew || g.published != Some(said);
        g.published = Some(said);
        g.asked = false;
        if send {
            g.sent_at = g.clock.map(|(now, _)| now);
            let partition = g.table.partition();
            let asking = !g.table.complete();
            for q in (0..partitions).filter(|&q| q != partition) {
                self.send_to(q, XRecord::Progress { partition, watermark, seen, idle, asking });
            }
        }
        self.set_horizon(horizon, out);
        send
    }

    /// A `Progress` record received: the table and the horizon follow it. A record that asks
    /// (its sender started or was restored and has not heard from every partition: its `seen`
    /// says what it does not know yet, not how far it got) does not lower what the sender
    /// reported before: it re-executes from its latest durable checkpoint, which covers the
    /// outbox that carried that report, so what it sends again follows records at or after
    /// those bounds (ARCHITECTURE.md "Watermark across partitions", *Restores*).
    pub(super) fn progress_in(&mut self, rec: Reported, partition: u32, asking: bool, out: &mut Vec<Output>) {
        self.gate_expiry();
        let own = self.watermark;
        let Some(g) = self.gate.as_deref_mut() else { return };
        let rec = match g.table.reported(partition) {
            Some(before) if asking => Reported {
                watermark: rec.watermark.max(before.watermark),
                seen: rec.seen.max(before.seen),
                idle: rec.idle,
            },
            _ => rec,
        };
        if !g.table.receive(partition, rec, g.clock.map(|(now, _)| now)) {
            return;
        }
        g.asked |= asking;
        let horizon = g.table.horizon(own, g.idle, g.lapse());
        self.set_horizon(horizon, out);
    }

    /// Moves the horizon to `h`; entries held before it go back to the heap and fire in due
    /// order (their due is before the watermark).
    fn set_horizon(&mut self, h: Ts, out: &mut Vec<Output>) {
        let Some(g) = self.gate.as_deref_mut() else { return };
        g.horizon = h;
        if !g.left.is_empty() {
            g.left.retain(|_, at| *at >= h);
        }
        while let Some(&t) = g.held.peek() {
            if t.0.0 >= h {
                break;
            }
            g.held.pop();
            self.timers.push(t);
        }
        // Also what waits on the heap behind the watermark without having been popped: a
        // restored shard's timers (its held entries were soft state) before any input arrives.
        self.fire_timers(out);
    }

    /// Whether heap entry `(due, ix, kind)`, popped because the watermark passed it, must wait
    /// for the horizon instead (then it is held): an expiry due at or after the horizon, or a
    /// silence timer of a prospect whose expiry before it is held. Always `false` ungated.
    pub(super) fn hold(&mut self, t: Timer) -> bool {
        let Some(h) = self.gate.as_deref().map(|g| g.horizon) else { return false };
        let (due, ix, kind) = t.0;
        let held = match kind {
            TimerKind::Expire => due >= h,
            TimerKind::Ghost | TimerKind::Stall | TimerKind::Quiet => {
                let i = ix as usize;
                i < self.store.len() && self.holds(i) && {
                    let e = super::retention::expiry_due(&self.journey, self.store.fixed(i));
                    !e.is_none() && e < due && e >= h
                }
            }
        };
        if held && let Some(g) = self.gate.as_deref_mut() {
            g.held.push(t);
        }
        held
    }

    /// At the prospect cap: up to `k` people whose expiry the watermark passed and the horizon
    /// holds leave now, earliest due first, as the sweep would have had them leave without the
    /// gate (reason `retention`, at their due: what replay does). Held silence timers stay held;
    /// stale entries are dropped. Returns how many left.
    pub(super) fn expire_held(&mut self, k: usize, out: &mut Vec<Output>) -> usize {
        let (mut n, mut silences) = (0, Vec::new());
        while n < k {
            let Some(t) = self.gate.as_deref_mut().and_then(|g| g.held.pop()) else { break };
            let (due, ix, kind) = t.0;
            match kind {
                TimerKind::Expire => {
                    if self.expiry_popped(ix, due) {
                        self.expire(crate::core::ids::ProspectIx(ix), due, ExpireReason::Retention, out);
                        n += 1;
                    }
                }
                TimerKind::Ghost | TimerKind::Stall | TimerKind::Quiet => silences.push(t),
            }
        }
        if let Some(g) = self.gate.as_deref_mut() {
            g.held.extend(silences);
        }
        n
    }

    /// Prospect `ix` leaves memory at `at` (`expire`): when that is ahead of the horizon (an
    /// expiry on contact), remembered until the horizon passes it.
    /// Bounded by the prospect cap (when set): past it by 1/64, the earliest leave the memory
    /// (a transfer into one of them then folds into the person's next life, as after a
    /// restore).
    pub(super) fn left_ahead_of_horizon(&mut self, ix: crate::core::ids::ProspectIx, at: Ts) {
        let id: Box<str> = self.ids.get(ix).into();
        let cap = self.journey.retention.max_prospects.map(|c| c as usize);
        if let Some(g) = self.gate.as_deref_mut()
            && at >= g.horizon
        {
            g.left.insert(id, at);
            if let Some(cap) = cap
                && g.left.len() > cap + (cap / 64).max(1)
            {
                let mut times: Vec<Ts> = g.left.values().copied().collect();
                let over = times.len() - cap;
                let cut = *times.select_nth_unstable(over - 1).1;
                g.left.retain(|_, t| *t > cut);
            }
        }
    }

    /// People remembered as left on contact ahead of the horizon (for a transfer into them
    /// still in flight; bounded by the prospect cap).
    pub fn left_ahead(&self) -> usize {
        self.gate.as_deref().map_or(0, |g| g.left.len())
    }

    /// A transfer of `from` into `into` caused at `ts`, when `into`'s person left memory ahead
    /// of the horizon at or after `ts`: it belonged to that person (replay, which delivers it
    /// at once, folds it in before the person leaves). Counted as the merge it was (no
    /// `prospect_merged` output: neither prospect is held), its state dropped with the person,
    /// and `from`'s home told to forget it, as the person's leaving would have. Its generation
    /// is kept for `from` as a folded one (`2g + 1` in `kept_handoffs`, as a freed marker's):
    /// a redelivery is then a duplicate (`transfer_duplicate`), within the person's `left`
    /// entry and after it. Returns whether it was taken so.
    pub(super) fn transfer_to_gone(&mut self, from: &str, into: &str, ts: Ts, generation: u32) -> bool {
        let Some(at) = self.gate.as_deref().and_then(|g| g.left.get(into).copied()) else { return false };
        if ts > at {
            return false;
        }
        self.keep_generation(from, generation);
        self.identity_stats.merged += 1;
        if let Some(x) = self.xpart.as_deref_mut() {
            x.stats.transfers_to_gone += 1;
        }
        if self.foreign(from) {
            self.send(XRecord::Forget { ids: vec![from.to_string()], ts: at });
        }
        true
    }

    /// The time an expiry decided on contact compares the due with: the contact's `ts`; for an
    /// event of the shard's own inputs under a gate, at least its watermark (the sweep would
    /// have expired the person without the gate, as replay does: only records from other
    /// partitions are what the gate waits for).
    pub(super) fn contact_time(&self, ts: Ts) -> Ts {
        if self.gate.is_some() && !self.in_record { ts.max(self.watermark) } else { ts }
    }
}
