//! microfunnel turns the small steps a buyer takes (micro-conversions) into live sales signals.
//!
//! Invariants (see ARCHITECTURE.md):
//! - [`core`] is pure and deterministic: events and explicit time in, state and outputs out.
//!   It reads no clock, does no I/O and never panics on input.
//! - Event time drives everything users see; a shard's watermark is the largest event time
//!   minus the allowed lateness, and timers fire when it passes them.
//! - Bad input is a value ([`codec::DecodeError`], [`core::Output::Rejected`]) that the caller
//!   routes (stderr in `replay`), never a crash.

pub mod app;
pub mod codec;
pub mod config;
pub mod core;
pub mod http;
pub mod kafka;
pub mod pipeline;
pub mod replay;
pub mod snapshot;
pub mod telemetry;
pub mod traffic;
