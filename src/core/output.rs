//! What the engine decides, as data. The shell encodes and ships it; the core never does I/O.

use super::identity::{LinkReason, RefuseReason};
use super::ids::ProspectIx;
use super::journey::{SignalId, StageId};
use super::prospect::Classification;
use super::time::Ts;

/// Why an input was refused. A bounded set: safe as a metrics label and a dead-letter header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    TooLarge,
    TooDeep,
    InvalidJson,
    MissingField,
    BadTimestamp,
    UnknownSource,
    UnsupportedType,
    FieldTooLong,
    EmptyField,
    UnknownSignal,
    SourceMismatch,
    Capacity,
    InvalidId,
    WrongShape,
    GapEvent,
    UnknownProspect,
    UnknownObject,
    SourceConflict,
}

impl RejectReason {
    pub const ALL: [RejectReason; 18] = [
        RejectReason::TooLarge,
        RejectReason::TooDeep,
        RejectReason::InvalidJson,
        RejectReason::MissingField,
        RejectReason::BadTimestamp,
        RejectReason::UnknownSource,
        RejectReason::UnsupportedType,
        RejectReason::FieldTooLong,
        RejectReason::EmptyField,
        RejectReason::UnknownSignal,
        RejectReason::SourceMismatch,
        RejectReason::Capacity,
        RejectReason::InvalidId,
        RejectReason::WrongShape,
        RejectReason::GapEvent,
        RejectReason::UnknownProspect,
        RejectReason::UnknownObject,
        RejectReason::SourceConflict,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::TooLarge => "too_large",
            RejectReason::TooDeep => "too_deep",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::MissingField => "missing_field",
            RejectReason::BadTimestamp => "bad_timestamp",
            RejectReason::UnknownSource => "unknown_source",
            RejectReason::UnsupportedType => "unsupported_type",
            RejectReason::FieldTooLong => "field_too_long",
            RejectReason::EmptyField => "empty_field",
            RejectReason::UnknownSignal => "unknown_signal",
            RejectReason::SourceMismatch => "source_mismatch",
            RejectReason::Capacity => "capacity",
            RejectReason::InvalidId => "invalid_id",
            RejectReason::WrongShape => "wrong_shape",
            RejectReason::GapEvent => "gap_event",
            RejectReason::UnknownProspect => "unknown_prospect",
            RejectReason::UnknownObject => "unknown_object",
            RejectReason::SourceConflict => "source_conflict",
        }
    }
}

/// Why a prospect left memory ([`Output::Expired`]). A bounded set: a metrics label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpireReason {
    /// No event for its stage's `[retention]` span.
    Retention,
    /// The shard was at `[retention] max_prospects_per_shard`; it was among the least recently
    /// active.
    Capacity,
}

impl ExpireReason {
    pub const ALL: [ExpireReason; 2] = [ExpireReason::Retention, ExpireReason::Capacity];

    pub fn as_str(self) -> &'static str {
        match self {
            ExpireReason::Retention => "retention",
            ExpireReason::Capacity => "capacity",
        }
    }
}

/// A hot-lead alert: which micro-certainties fired, on which event, and what to ask for next.
#[derive(Clone, Debug, PartialEq)]
pub struct HotLead {
    /// Deterministic: the same prospect, rule set and triggering event always give the same id,
    /// so a consumer can drop an alert re-emitted after a crash.
    pub alert_id: String,
    pub prospect: ProspectIx,
    /// Bit `i` set: `journey.hot_rules[i]` fired.
    pub rules: u32,
    pub score: f64,
    pub stage: StageId,
    pub signal: SignalId,
    pub event_id: String,
    pub at: Ts,
}

/// A hot-lead alert that did not go out: the prospect's last alert, of a rule at least as strong,
/// is within the cooldown. Data for sales to see what was held back, and for counting by rule.
#[derive(Clone, Debug, PartialEq)]
pub struct SuppressedLead {
    pub prospect: ProspectIx,
    /// Bit `i` set: `journey.hot_rules[i]` fired (and was suppressed).
    pub rules: u32,
    /// The rule of the last alert, whose cooldown held this one back.
    pub held_by: u8,
    /// The last alert's time; the cooldown runs from it.
    pub last_alert: Ts,
    pub score: f64,
    pub stage: StageId,
    pub signal: SignalId,
    pub event_id: String,
    pub at: Ts,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// The prospect reached a later milestone (`from: None` for a prospect's first event).
    StageChanged {
        prospect: ProspectIx,
        from: Option<StageId>,
        to: StageId,
        signal: SignalId,
        at: Ts,
        late: bool,
    },
    HotLead(Box<HotLead>),
    /// A hot-lead alert held back by the cooldown of an alert of a rule at least as strong.
    HotLeadSuppressed(Box<SuppressedLead>),
    /// No prospect-initiated signal within the window after the ghost-rule signal (a quote).
    Ghosted {
        prospect: ProspectIx,
        stage: StageId,
        since: Ts,
        at: Ts,
        /// The prospect as it was when the timer fired (what sales acts on), whatever the
        /// event that fired it changes next.
        class: Classification,
        email: Option<Box<str>>,
    },
    /// No prospect-initiated signal within the window after the last one (or after entering
    /// the stage) while in a watched stage: the prospect went quiet.
    GoneQuiet {
        prospect: ProspectIx,
        stage: StageId,
        since: Ts,
        at: Ts,
        /// The prospect as it was when the timer fired (what sales acts on), whatever the
        /// event that fired it changes next.
        class: Classification,
        email: Option<Box<str>>,
    },
    /// A prospect that has won was not moved to the terminal stage `refused` by `signal` (a
    /// lost upsell after the sale, outside `[time] outcome_correction_hours`): the win stands.
    /// Said rather than silently dropped; model churn as a stage after the sale instead.
    OutcomeKept {
        prospect: ProspectIx,
        stage: StageId,
        refused: StageId,
        signal: SignalId,
        at: Ts,
    },
    /// No stage advance within the window while in a watched stage: the deal parked.
    Stalled {
        prospect: ProspectIx,
        stage: StageId,
        since: Ts,
        at: Ts,
        /// The prospect as it was when the timer fired (what sales acts on), whatever the
        /// event that fired it changes next.
        class: Classification,
        email: Option<Box<str>>,
    },
    /// The event was behind the watermark; see `Engine` docs for what it still changed.
    Late {
        prospect: ProspectIx,
        signal: SignalId,
        at: Ts,
        watermark: Ts,
    },
    /// The event was valid JSON but not acceptable to this journey.
    Rejected {
        reason: RejectReason,
        detail: String,
    },
    /// Identity resolution folded prospect `from` into `into`, the canonical id of the person
    /// (`[identity] resolve`); `from` is a redirect from now on.
    ProspectMerged {
        from: ProspectIx,
        into: ProspectIx,
        reason: LinkReason,
        at: Ts,
    },
    /// The prospect left memory (`[retention]`): no event since `last_event` for its stage's
    /// span (`at` = then plus the span), or evicted at the prospect cap (`at` = the time of the
    /// event that needed room). What it contributed to the funnel stays counted, except
    /// `in_stage`; a later event of its id starts a new prospect.
    Expired {
        prospect: ProspectIx,
        stage: StageId,
        last_event: Ts,
        at: Ts,
        reason: ExpireReason,
        class: Classification,
    },
    /// A link refused by the `[identity]` guards: the two ids (never an email) stay apart.
    MergeRefused {
        ids: Box<[String; 2]>,
        reason: RefuseReason,
        at: Ts,
    },
}
