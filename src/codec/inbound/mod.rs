//! Bytes to validated [`Event`]s: our canonical envelope, a Segment `track` / `page` / `screen` /
//! `identify` / `group` / `alias` call as it is, or a Segment `{"batch":[...]}` envelope of such
//! calls. Only the fields the engine needs are decoded; strings borrow from the input unless they
//! contain escapes.
//!
//! Two paths read a payload into the same [`Wire`]: a one-pass scanner ([`scan`]) that takes
//! every single-event payload it can be sure of, and serde_json, which decides the rest (escaped
//! fields, batches, anything invalid) and so words every rejection. [`decode_with_serde`] and
//! [`decode_each_with_serde`] are the serde path alone, the reference the tests hold the scanner
//! to.

mod crm;
mod fields;
pub mod format;
mod mapped;
mod scan;
mod touch;
mod wire;

use serde_json::value::RawValue;

use crate::core::crm::CrmMemory;
use crate::core::time::TimeError;
use crate::core::{Event, Journey, RejectReason, Ts};
use fields::{Detail, Topic, event};
pub use format::{Format, InputSpec, Mapped, TimeUnit};
use wire::{Str, Wire, parse_serde};

/// Input limits; the defaults suit web analytics traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_depth: usize,
    pub max_id_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 64 * 1024, max_depth: 32, max_id_bytes: 256 }
    }
}

/// Why a payload could not become an event. `reason()` is the bounded label.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is {size} bytes, over the {limit}-byte limit")]
    TooLarge { size: usize, limit: usize },
    #[error("payload nests deeper than {limit} levels")]
    TooDeep { limit: usize },
    #[error("not a valid JSON event object: {0}")]
    InvalidJson(String),
    #[error("missing field `{field}` ({format})")]
    MissingField { field: &'static str, format: &'static str },
    #[error("field `{field}` is empty")]
    EmptyField { field: &'static str },
    #[error("field `{field}` is {len} bytes, over the {limit}-byte limit")]
    FieldTooLong { field: &'static str, len: usize, limit: usize },
    #[error("bad timestamp in `{field}` ({value:?}): {problem}")]
    BadTimestamp { field: &'static str, value: String, problem: TimeError },
    #[error("unknown source {0:?}: expected \"web\" or \"crm\"")]
    UnknownSource(String),
    #[error("bad timestamp in `{field}` ({value}): out of range: before `time.min_event_time` ({min})")]
    TooEarly { field: &'static str, value: Ts, min: Ts },
    #[error("bad timestamp in `{field}` ({value}): out of range: after `time.max_event_time` ({max})")]
    TooFar { field: &'static str, value: Ts, max: Ts },
    #[error(
        "unsupported Segment call type {0:?}: expected \"track\", \"page\", \"screen\", \"identify\", \"group\" or \"alias\""
    )]
    UnsupportedType(String),
    #[error("field `{field}` is the placeholder {value:?}, not an id (see `[identity] placeholder_ids`)")]
    Placeholder { field: &'static str, value: String },
    #[error("field `{field}` contains a control character (byte {at}); ids must be printable")]
    InvalidId { field: &'static str, at: usize },
    #[error("a {{\"batch\":[...]}} envelope of {items} events where one event was expected{hint}")]
    UnexpectedBatch { items: usize, hint: &'static str },
    #[error("not a {format} payload: {detail}")]
    WrongShape { format: &'static str, detail: String },
    #[error("Salesforce {change_type} event for {records}: a gap carries no field values; re-fetch the records")]
    GapEvent { change_type: String, records: String },
    #[error("{object} {id} has no known contact yet (no association, creation or `[crm] links` property seen)")]
    UnknownProspect { object: String, id: String },
    #[error("unknown {format} object type {object:?}")]
    UnknownObject { format: &'static str, object: String },
    #[error("the payload says source {payload:?} but its topic's source is {topic:?} (`inputs.<topic>.source`)")]
    SourceConflict { payload: String, topic: &'static str },
}

impl DecodeError {
    pub fn reason(&self) -> RejectReason {
        match self {
            DecodeError::TooLarge { .. } => RejectReason::TooLarge,
            DecodeError::TooDeep { .. } => RejectReason::TooDeep,
            DecodeError::InvalidJson(_) => RejectReason::InvalidJson,
            DecodeError::MissingField { .. } => RejectReason::MissingField,
            DecodeError::EmptyField { .. } => RejectReason::EmptyField,
            DecodeError::FieldTooLong { .. } => RejectReason::FieldTooLong,
            DecodeError::BadTimestamp { .. } => RejectReason::BadTimestamp,
            DecodeError::UnknownSource(_) => RejectReason::UnknownSource,
            DecodeError::TooEarly { .. } | DecodeError::TooFar { .. } => RejectReason::BadTimestamp,
            DecodeError::UnsupportedType(_) => RejectReason::UnsupportedType,
            DecodeError::Placeholder { .. } => RejectReason::MissingField,
            DecodeError::InvalidId { .. } => RejectReason::InvalidId,
            DecodeError::UnexpectedBatch { .. } => RejectReason::UnsupportedType,
            DecodeError::WrongShape { .. } => RejectReason::WrongShape,
            DecodeError::GapEvent { .. } => RejectReason::GapEvent,
            DecodeError::UnknownProspect { .. } => RejectReason::UnknownProspect,
            DecodeError::UnknownObject { .. } => RejectReason::UnknownObject,
            DecodeError::SourceConflict { .. } => RejectReason::SourceConflict,
        }
    }
}

/// Decodes one payload (one event) and maps it to a journey signal. A `{"batch":[...]}`
/// envelope is refused (`unsupported_type`, naming [`decode_each`]); read payloads that may be
/// batches with [`decode_each`].
pub fn decode<'a>(bytes: &'a [u8], journey: &Journey, limits: &Limits) -> Result<Event<'a>, DecodeError> {
    one(parse(bytes, limits, true)?, journey, limits)
}

/// [`decode`] without the scanner: serde_json reads every payload. Same results, slower; the
/// reference for tests and benches.
pub fn decode_with_serde<'a>(bytes: &'a [u8], journey: &Journey, limits: &Limits) -> Result<Event<'a>, DecodeError> {
    one(parse(bytes, limits, false)?, journey, limits)
}

/// Decodes a payload that is one event or a Segment `{"batch":[...]}` envelope (the HTTP
/// tracking API's `/v1/batch` shape) into its events, each validated alone. Yields
/// `(item, result)`: `item` is `None` for a single-event payload (and for an envelope that cannot
/// be read at all: one error), `Some(k)` for `batch[k]`. An empty batch yields nothing.
///
/// A batch-level `context` is merged into each item's, as Segment does: an item without its own
/// `context.traits.email` takes the batch's. An item without `sentAt` takes the batch's (see the
/// skew correction in [`decode`]). The whole envelope counts against `max_bytes` and
/// `max_depth`; a batch inside a batch item is refused.
pub fn decode_each<'a, 'j>(bytes: &'a [u8], journey: &'j Journey, limits: &Limits) -> Each<'a, 'j> {
    each(bytes, journey, limits, true, Topic::default(), Detail::Full)
}

/// [`decode_each`] without the scanner, the reference for tests.
pub fn decode_each_with_serde<'a, 'j>(bytes: &'a [u8], journey: &'j Journey, limits: &Limits) -> Each<'a, 'j> {
    each(bytes, journey, limits, false, Topic::default(), Detail::Full)
}

fn each<'a, 'j>(
    bytes: &'a [u8],
    journey: &'j Journey,
    limits: &Limits,
    scan: bool,
    topic: Topic,
    detail: Detail,
) -> Each<'a, 'j> {
    let state = match parse(bytes, limits, scan) {
        Err(e) => Pending::One(Err(e)),
        Ok(mut w) => match w.batch.take() {
            None => Pending::One(event(&mut w, journey, limits, topic, detail)),
            Some(items) => Pending::Batch {
                items: items.into_iter().enumerate(),
                context_email: w.context_email.take(),
                sent_at: w.sent_at.take(),
            },
        },
    };
    Each { journey, limits: *limits, topic, detail, state }
}

/// The events of one payload; see [`decode_each`].
pub struct Each<'a, 'j> {
    journey: &'j Journey,
    limits: Limits,
    topic: Topic,
    detail: Detail,
    state: Pending<'a>,
}

enum Pending<'a> {
    Done,
    One(Result<Event<'a>, DecodeError>),
    Batch {
        items: std::iter::Enumerate<std::vec::IntoIter<&'a RawValue>>,
        context_email: Option<Str<'a>>,
        sent_at: Option<Str<'a>>,
    },
}

impl<'a> Iterator for Each<'a, '_> {
    type Item = (Option<usize>, Result<Event<'a>, DecodeError>);

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.state {
            Pending::Done => None,
            Pending::One(_) => match std::mem::replace(&mut self.state, Pending::Done) {
                Pending::One(result) => Some((None, result)),
                _ => None,
            },
            Pending::Batch { items, context_email, sent_at } => {
                let (k, raw) = items.next()?;
                let result = parse(raw.get().as_bytes(), &self.limits, false).and_then(|mut w| {
                    if let Some(items) = &w.batch {
                        return Err(DecodeError::UnexpectedBatch {
                            items: items.len(),
                            hint: " (a batch inside a batch)",
                        });
                    }
                    if w.context_email.is_none() {
                        w.context_email.clone_from(context_email);
                    }
                    if w.sent_at.is_none() {
                        w.sent_at.clone_from(sent_at);
                    }
                    event(&mut w, self.journey, &self.limits, self.topic, self.detail)
                });
                Some((Some(k), result))
            }
        }
    }
}

/// The one event of a payload that must not be a batch.
fn one<'a>(mut w: Wire<'a>, journey: &Journey, limits: &Limits) -> Result<Event<'a>, DecodeError> {
    if let Some(items) = &w.batch {
        return Err(DecodeError::UnexpectedBatch { items: items.len(), hint: "; decode it with `decode_each`" });
    }
    event(&mut w, journey, limits, Topic::default(), Detail::Full)
}

/// Reads a payload's fields: the scanner first when `scan`, serde_json when it is unsure.
fn parse<'a>(bytes: &'a [u8], limits: &Limits, scan: bool) -> Result<Wire<'a>, DecodeError> {
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge { size: bytes.len(), limit: limits.max_bytes });
    }
    if scan {
        let mut w = Wire::default();
        if scan::scan(bytes, limits.max_depth, &mut w) {
            w.bytes = bytes;
            return Ok(w);
        }
    }
    let mut w = parse_serde(bytes, limits)?;
    w.bytes = bytes;
    Ok(w)
}

/// The events of one message of a topic declared as `spec`; see [`decode_input`].
pub enum Decoded<'a, 'j> {
    /// Canonical envelopes and Segment calls, decoded as they are iterated.
    Each(Each<'a, 'j>),
    /// The events of a CRM or mapped payload, decoded at once.
    List(std::vec::IntoIter<(Option<usize>, Result<Event<'a>, DecodeError>)>),
}

impl<'a> Iterator for Decoded<'a, '_> {
    type Item = (Option<usize>, Result<Event<'a>, DecodeError>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Decoded::Each(e) => e.next(),
            Decoded::List(l) => l.next(),
        }
    }
}

/// Decodes one message of an input topic declared as `spec` into its events, `(item, result)`
/// as [`decode_each`] yields them (`item`: the index of a HubSpot array element or a batch
/// item). CRM formats read and update `memory`, the topic's [`CrmMemory`] in this shard: the
/// previous values that tell a transition from an edit, and the contact links.
pub fn decode_input<'a, 'j>(
    bytes: &'a [u8],
    spec: &InputSpec,
    journey: &'j Journey,
    limits: &Limits,
    memory: &mut CrmMemory,
) -> Decoded<'a, 'j> {
    let topic = Topic { format: spec.format, source: spec.source() };
    let list = match spec.format {
        Format::Auto | Format::Canonical | Format::Segment => {
            return Decoded::Each(each(bytes, journey, limits, true, topic, Detail::Full));
        }
        Format::Mapped => mapped::decode(bytes, spec, journey, limits),
        Format::Hubspot | Format::SalesforceCdc | Format::Pipedrive | Format::Debezium => {
            crm::decode(bytes, spec, journey, limits, memory)
        }
    };
    Decoded::List(list.into_iter())
}

/// The event time of a message's first event, for the merge, without changing any memory;
/// `None` when nothing in it decodes.
pub fn event_time(bytes: &[u8], spec: &InputSpec, journey: &Journey, limits: &Limits) -> Option<Ts> {
    match spec.format {
        Format::Auto | Format::Canonical | Format::Segment => {
            let topic = Topic { format: spec.format, source: spec.source() };
            each(bytes, journey, limits, true, topic, Detail::Time).find_map(|(_, r)| r.ok()).map(|ev| ev.ts)
        }
        Format::Mapped => {
            mapped::decode(bytes, spec, journey, limits).into_iter().find_map(|(_, r)| r.ok()).map(|e| e.ts)
        }
        Format::Hubspot | Format::SalesforceCdc | Format::Pipedrive | Format::Debezium => {
            crm::first_time(bytes, spec.format, journey, limits)
        }
    }
}
