//! Pure bytes <-> types: inbound payloads to events, outputs to JSON.

pub mod inbound;
pub mod outbound;
mod report;

pub use inbound::{DecodeError, Each, Limits, decode, decode_each, decode_each_with_serde, decode_with_serde};
pub use outbound::{write_output, write_report};
