//! The pure core: event model, time, journey definition, prospect state machines, scoring,
//! timers, funnel aggregates and the engine. No I/O, no clock, no async, no logging: the same
//! events in give the same state and outputs out.

pub mod breakdown;
pub mod crm;
pub mod engine;
pub mod event;
pub mod forecast;
pub mod funnel;
pub mod identity;
pub mod ids;
pub mod journey;
pub mod mem;
pub mod output;
pub mod prefetch;
pub mod prospect;
mod store;
pub mod suggest;
pub mod time;
pub mod unmapped;
pub mod xpart;

pub use engine::{Census, Engine, IdentityStats, PartsCopy, ProspectView, SlotDigests, Stats, snapshot};
pub use event::{Event, EventKind, Source};
pub use funnel::{Funnel, FunnelReport};
pub use ids::ProspectIx;
pub use journey::{Journey, JourneyError, SignalId, StageId};
pub use output::{ExpireReason, HotLead, Output, RejectReason};
pub use prospect::{Classification, Prospect};
pub use snapshot::StateError;
pub use time::{Span, Ts};
