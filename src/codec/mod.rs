//! Pure bytes <-> types: inbound payloads to events, outputs to JSON.

pub mod inbound;
pub mod outbound;
mod report;

pub use inbound::{
    DecodeError, Decoded, Each, Format, InputSpec, Limits, decode, decode_each, decode_each_with_serde, decode_input,
    decode_with_serde,
};
pub use outbound::{write_output, write_report};
