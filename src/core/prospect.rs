//! One prospect's state machine: the fixed-size part. Per-journey variable parts (stage entry
//! times, counts per signal, last-seen times) are packed next to it in the prospect's record
//! (`store.rs`), indexed by `ProspectIx`, so a prospect costs no allocation of its own.

use super::journey::{Journey, StageId};
use super::time::Ts;

pub const RECENT_IDS: usize = 4;

pub const GHOSTED: u8 = 1;
pub const STALLED: u8 = 1 << 1;
pub const DISQUALIFIED: u8 = 1 << 2;
pub const OUTCOME_WON: u8 = 1 << 3;
pub const OUTCOME_LOST: u8 = 1 << 4;
/// The `[gone_quiet]` timer fired; cleared by the prospect's next on-time prospect-initiated
/// signal.
pub const QUIET: u8 = 1 << 5;
/// Identity resolution folded this prospect into another (its canonical id): an inert
/// redirect, left out of the census and the funnel.
pub const REDIRECT: u8 = 1 << 6;

/// The record holds no prospect: it left memory (retention or the prospect cap) and its index
/// waits for reuse. Never written to a state or the changelog.
pub const FREE: u8 = 1 << 7;

/// Bit 0 of [`Prospect::more_flags`]: the prospect's id is a Segment `anonymousId` never
/// identified (set at creation by an anonymous event, cleared for good once the id is known: a
/// known event for it, or a merge whose canonical id is known). It picks the anonymous
/// `[retention]` span. States written before it existed never set it: read as known.
pub const ANONYMOUS: u8 = 1;

/// The largest [`Prospect::handoff`].
pub const HANDOFF_MAX: u16 = 0x7fff;
/// Where [`ANONYMOUS`] sits in `Prospect::more`.
const MORE_ANONYMOUS: u16 = 0x8000;

/// The fixed part of a prospect's state (104 bytes).
#[derive(Clone, Debug, PartialEq)]
pub struct Prospect {
    /// Decayed engagement score as of `score_at`.
    pub score: f64,
    /// Latest event time seen for this prospect.
    pub score_at: Ts,
    /// Latest prospect-initiated signal.
    pub last_activity: Ts,
    pub stage_entered: Ts,
    pub ghost_due: Ts,
    pub stall_due: Ts,
    /// Hot until this instant (exclusive); `NONE` if never hot.
    pub hot_until: Ts,
    pub last_alert: Ts,
    /// Fingerprints of the most recent event ids (0 = empty), a ring.
    pub recent: [u64; RECENT_IDS],
    pub stage: StageId,
    pub flags: u8,
    /// Index of the hot rule of the prospect's last alert (the strongest rule it named): why
    /// the prospect is hot, and the priority a rule needs to alert within that alert's cooldown.
    pub hot_rule: u8,
    pub recent_pos: u8,
    /// The signal of `last_activity` (the latest prospect-initiated one), [`NO_SIGNAL`] before
    /// any: what the prospect did last before a silence (`[insight]` drop-off).
    pub last_signal: u16,
    /// Two parts in the two bytes that were padding (read and written through
    /// [`Prospect::more_flags`] and [`Prospect::handoff`], which the state's bytes keep apart):
    /// bit 15 the flag [`ANONYMOUS`] (flags past `flags`' eight bits); bits 0-14 `handoff`.
    pub(crate) more: u16,
}

/// `Prospect::last_signal` of a prospect that has not initiated anything yet.
pub const NO_SIGNAL: u16 = u16::MAX;

impl Prospect {
    /// Flags past `flags`' eight bits: [`ANONYMOUS`] or 0.
    pub fn more_flags(&self) -> u8 {
        u8::from(self.more & MORE_ANONYMOUS != 0) * ANONYMOUS
    }

    /// Sets the flags past `flags`' eight bits (only [`ANONYMOUS`] exists).
    pub fn set_more_flags(&mut self, flags: u8) {
        self.more = (self.more & HANDOFF_MAX) | (u16::from(flags & ANONYMOUS != 0) * MORE_ANONYMOUS);
    }

    /// Identity resolution across partitions: how far this id's transfers went, in half steps.
    /// `2g` once this shard sent the id's state to another partition as its transfer
    /// generation `g`; `2g + 1` once it folded generation `g` received from elsewhere; 0 never.
    /// A transfer folds only when `2g + 1` is above it, so a redelivered one folds nothing
    /// while a later, legitimate one of the same id does.
    pub fn handoff(&self) -> u16 {
        self.more & HANDOFF_MAX
    }

    /// Sets `handoff`, at most [`HANDOFF_MAX`] (an id's 16,383rd transfer; a state's bytes
    /// holding more are refused).
    pub fn set_handoff(&mut self, handoff: u16) {
        self.more = (self.more & MORE_ANONYMOUS) | handoff.min(HANDOFF_MAX);
    }

    pub fn new(stage: StageId, at: Ts) -> Prospect {
        Prospect {
            score: 0.0,
            score_at: at,
            last_activity: Ts::NONE,
            stage_entered: at,
            ghost_due: Ts::NONE,
            stall_due: Ts::NONE,
            hot_until: Ts::NONE,
            last_alert: Ts::NONE,
            recent: [0; RECENT_IDS],
            stage,
            flags: 0,
            hot_rule: 0,
            recent_pos: 0,
            last_signal: NO_SIGNAL,
            more: 0,
        }
    }

    /// Whether the prospect's id is anonymous ([`ANONYMOUS`]).
    pub fn is_anonymous(&self) -> bool {
        self.more_flags() & ANONYMOUS != 0
    }

    pub fn seen(&self, fingerprint: u64) -> bool {
        self.recent.contains(&fingerprint)
    }

    pub fn remember(&mut self, fingerprint: u64) {
        self.recent[self.recent_pos as usize] = fingerprint;
        self.recent_pos = ((self.recent_pos as usize + 1) % RECENT_IDS) as u8;
    }

    /// The score decayed to `at` (not below `score_at`).
    pub fn score_at_time(&self, journey: &Journey, at: Ts) -> f64 {
        if at <= self.score_at {
            return self.score;
        }
        self.score * (-journey.decay_rate * at.since(self.score_at).0 as f64).exp()
    }

    pub fn is_hot(&self, at: Ts) -> bool {
        !self.hot_until.is_none() && at < self.hot_until
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    pub fn classification(&self, journey: &Journey) -> Classification {
        if self.has(DISQUALIFIED) {
            Classification::NotAProspect
        } else if journey.opportunity_stages & (1 << self.stage.0) != 0 {
            Classification::CurrentOpportunity
        } else {
            Classification::NoCurrentOpportunity
        }
    }
}

/// The sales-process view of a prospect.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Classification {
    CurrentOpportunity,
    NoCurrentOpportunity,
    NotAProspect,
}

impl Classification {
    pub const ALL: [Classification; 3] =
        [Classification::CurrentOpportunity, Classification::NoCurrentOpportunity, Classification::NotAProspect];

    pub fn as_str(self) -> &'static str {
        match self {
            Classification::CurrentOpportunity => "current_opportunity",
            Classification::NoCurrentOpportunity => "no_current_opportunity",
            Classification::NotAProspect => "not_a_prospect",
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixed_state_stays_compact() {
        // The memory budget (README, "What one prospect costs") is built on this figure.
        assert_eq!(std::mem::size_of::<super::Prospect>(), 104);
    }
}
