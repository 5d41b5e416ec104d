//! microfunnel turns the small steps a buyer takes (micro-conversions) into live sales signals.
//!
//! The map of the code (modules, the path of one event, the time model, the checkpoint protocol,
//! threads, state versions) is `ARCHITECTURE.md` at the repository root; user documentation is
//! `README.md`. Invariants:
//! - [`core`] is pure and deterministic: events and explicit time in, state and outputs out.
//!   It reads no clock, does no I/O and never panics on input. (The interner's table key comes
//!   from the OS's random source and a huge-page hint is given to the kernel; no result depends
//!   on either.)
//! - Event time drives everything users see. A shard's watermark is its clock minus the allowed
//!   lateness, or a later instant given to [`core::Engine::advance_to`]; the clock is the
//!   largest event time the shard's traffic confirmed (a jump more than `max_ahead_hours` ahead
//!   moves it only once another prospect's event confirms it). Timers fire when the watermark
//!   passes them, or when a later event of their own prospect arrives.
//! - Offsets are committed only after the outputs they caused are acknowledged and the state
//!   that covers them is durable (changelog and snapshot file, as configured).
//! - Bad input is a value ([`codec::DecodeError`], [`core::Output::Rejected`]) that the caller
//!   routes (stderr in `replay`, dead-letter in the service), never a crash.

pub mod app;
pub mod codec;
pub mod config;
pub mod core;
pub mod http;
pub mod journeys;
pub mod kafka;
pub mod members;
pub mod pipeline;
pub mod replay;
pub mod store;
pub mod telemetry;
pub mod traffic;
