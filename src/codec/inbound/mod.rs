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

mod scan;

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::core::time::{TimeError, parse_rfc3339};
use crate::core::{Event, EventKind, Journey, RejectReason, Source, Ts};

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
        }
    }
}

/// A JSON string (or an integer id, as some SDKs send), borrowed when it has no escapes.
#[derive(Clone)]
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrVisitor)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Str<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Str(Cow::Owned(v.to_owned())))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Str(Cow::Owned(v.to_string())))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Str(Cow::Owned(v.to_string())))
    }
}

/// The fields of both wire formats that we read. Everything else is skipped with serde_json's
/// non-validating fast path (`IgnoredAny`), which is most of the bytes of a Segment payload.
#[derive(Default)]
struct Wire<'a> {
    event_id: Option<Str<'a>>,
    prospect_id: Option<Str<'a>>,
    source: Option<Str<'a>>,
    kind: Option<Str<'a>>,
    ts: Option<Str<'a>>,
    email: Option<Str<'a>>,
    message_id: Option<Str<'a>>,
    user_id: Option<Str<'a>>,
    anonymous_id: Option<Str<'a>>,
    event: Option<Str<'a>>,
    timestamp: Option<Str<'a>>,
    /// Client-side time, used only when a payload skipped Segment's servers (no `timestamp`).
    original_timestamp: Option<Str<'a>>,
    /// Client time of sending and server time of receipt: with `originalTimestamp`, Segment's
    /// clock-skew correction when `timestamp` is absent.
    sent_at: Option<Str<'a>>,
    received_at: Option<Str<'a>>,
    /// The items of a `{"batch":[...]}` envelope, each decoded alone (serde path only).
    batch: Option<Vec<&'a RawValue>>,
    /// `traits.email` (identify calls).
    traits_email: Option<Str<'a>>,
    /// `context.traits.email`.
    context_email: Option<Str<'a>>,
}

struct WireVisitor {
    has_traits: bool,
}

fn once<'de, A: MapAccess<'de>>(slot: &mut Option<Str<'de>>, map: &mut A, key: &'static str) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(key));
    }
    *slot = map.next_value::<Option<Str<'de>>>()?;
    Ok(())
}

impl<'de> Visitor<'de> for WireVisitor {
    type Value = Wire<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an event object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Wire<'de>, A::Error> {
        let mut w = Wire::default();
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match &*key.0 {
                "event_id" => once(&mut w.event_id, &mut map, "event_id")?,
                "prospect_id" => once(&mut w.prospect_id, &mut map, "prospect_id")?,
                "source" => once(&mut w.source, &mut map, "source")?,
                "type" => once(&mut w.kind, &mut map, "type")?,
                "ts" => once(&mut w.ts, &mut map, "ts")?,
                "email" => once(&mut w.email, &mut map, "email")?,
                "messageId" => once(&mut w.message_id, &mut map, "messageId")?,
                "userId" => once(&mut w.user_id, &mut map, "userId")?,
                "anonymousId" => once(&mut w.anonymous_id, &mut map, "anonymousId")?,
                "event" => once(&mut w.event, &mut map, "event")?,
                "timestamp" => once(&mut w.timestamp, &mut map, "timestamp")?,
                "originalTimestamp" => once(&mut w.original_timestamp, &mut map, "originalTimestamp")?,
                "sentAt" => once(&mut w.sent_at, &mut map, "sentAt")?,
                "receivedAt" => once(&mut w.received_at, &mut map, "receivedAt")?,
                "batch" => {
                    if w.batch.is_some() {
                        return Err(de::Error::duplicate_field("batch"));
                    }
                    w.batch = map.next_value::<Option<Vec<&'de RawValue>>>()?;
                }
                "properties" => {
                    // Skipped unparsed; only its shape is checked.
                    let raw: &'de RawValue = map.next_value()?;
                    if !matches!(raw.get().as_bytes().first(), Some(b'{' | b'n')) {
                        return Err(de::Error::invalid_type(de::Unexpected::Other(raw.get()), &"an object"));
                    }
                }
                "traits" => w.traits_email = map.next_value_seed(EmailIn { path: &[] })?,
                // `context` is the bulk of a Segment payload and rarely carries traits: unless
                // the payload mentions them anywhere, skip it on serde_json's fast path.
                "context" if self.has_traits => w.context_email = map.next_value_seed(EmailIn { path: &["traits"] })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(w)
    }
}

/// Visitor methods that skip an array or a non-string scalar and yield `None` (the email
/// visitors look for a string and ignore anything else there).
macro_rules! none_for_arrays_and_scalars {
    () => {
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
    };
}

/// Finds `email` inside an object, following `path` (`context` -> `traits` -> `email`) and
/// skipping everything else. A `null` or non-object yields no email rather than an error.
struct EmailIn {
    path: &'static [&'static str],
}

impl<'de> DeserializeSeed<'de> for EmailIn {
    type Value = Option<Str<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for EmailIn {
    type Value = Option<Str<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match (self.path.first(), &*key.0) {
                (Some(&step), k) if k == step => found = map.next_value_seed(EmailIn { path: &self.path[1..] })?,
                (None, "email") => found = map.next_value_seed(AnyStr)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
    none_for_arrays_and_scalars!();
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A string if the value is one; any other value is skipped and yields `None`.
struct AnyStr;

impl<'de> DeserializeSeed<'de> for AnyStr {
    type Value = Option<Str<'de>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for AnyStr {
    type Value = Option<Str<'de>>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Str(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Str(Cow::Owned(v.to_owned()))))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    none_for_arrays_and_scalars!();
}

/// True when `bytes` nests objects/arrays deeper than `limit` (strings are skipped).
/// A line with no more than `limit` brackets cannot, and counting them vectorises, so the
/// exact scan runs only for the rare bracket-heavy line.
fn too_deep(bytes: &[u8], limit: usize) -> bool {
    if memchr::memchr2_iter(b'{', b'[', bytes).count() <= limit {
        return false;
    }
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() {
                    match bytes[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

fn required<'a>(
    v: Option<Str<'a>>,
    field: &'static str,
    format: &'static str,
    limits: &Limits,
) -> Result<Cow<'a, str>, DecodeError> {
    let s = v.ok_or(DecodeError::MissingField { field, format })?.0;
    checked(s, field, limits)
}

fn checked<'a>(s: Cow<'a, str>, field: &'static str, limits: &Limits) -> Result<Cow<'a, str>, DecodeError> {
    if s.trim().is_empty() {
        return Err(DecodeError::EmptyField { field });
    }
    if s.len() > limits.max_id_bytes {
        return Err(DecodeError::FieldTooLong { field, len: s.len(), limit: limits.max_id_bytes });
    }
    Ok(s)
}

/// Refuses an id with a C0 control character or DEL: never a real id, and unsafe in logs,
/// headers and the consoles that show alerts.
fn printable(s: &str, field: &'static str) -> Result<(), DecodeError> {
    match s.bytes().position(|b| b < 0x20 || b == 0x7F) {
        Some(at) => Err(DecodeError::InvalidId { field, at }),
        None => Ok(()),
    }
}

/// [`checked`] and [`printable`]: an id field.
fn id<'a>(s: Cow<'a, str>, field: &'static str, limits: &Limits) -> Result<Cow<'a, str>, DecodeError> {
    let s = checked(s, field, limits)?;
    printable(&s, field)?;
    Ok(s)
}

fn timestamp(v: Option<Str<'_>>, field: &'static str, format: &'static str) -> Result<Ts, DecodeError> {
    let s = v.ok_or(DecodeError::MissingField { field, format })?.0;
    parse_rfc3339(&s).map_err(|problem| DecodeError::BadTimestamp {
        field,
        value: s.chars().take(64).collect(),
        problem,
    })
}

/// Refuses a time before the journey's `[time] min_event_time` or after its `max_event_time`.
fn not_before_floor(ts: Ts, field: &'static str, journey: &Journey) -> Result<Ts, DecodeError> {
    if ts < journey.min_event_time {
        return Err(DecodeError::TooEarly { field, value: ts, min: journey.min_event_time });
    }
    if ts > journey.max_event_time {
        return Err(DecodeError::TooFar { field, value: ts, max: journey.max_event_time });
    }
    Ok(ts)
}

/// Lower-cases an email; drops values that are not plausibly one.
fn email(v: Option<Str<'_>>) -> Option<Cow<'_, str>> {
    let e = v?.0;
    let t = e.trim();
    if t.len() < 3 || t.len() > 254 || !t.contains('@') {
        return None;
    }
    if t.is_ascii() {
        if t.len() == e.len() && !t.bytes().any(|b| b.is_ascii_uppercase()) {
            return Some(e);
        }
        return Some(Cow::Owned(t.to_ascii_lowercase()));
    }
    if t.len() == e.len() && t.chars().flat_map(char::to_lowercase).eq(t.chars()) {
        return Some(e);
    }
    Some(Cow::Owned(t.to_lowercase()))
}

const CANONICAL: &str = "canonical envelope";
const SEGMENT: &str = "Segment payload";

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
    each(bytes, journey, limits, true)
}

/// [`decode_each`] without the scanner, the reference for tests.
pub fn decode_each_with_serde<'a, 'j>(bytes: &'a [u8], journey: &'j Journey, limits: &Limits) -> Each<'a, 'j> {
    each(bytes, journey, limits, false)
}

fn each<'a, 'j>(bytes: &'a [u8], journey: &'j Journey, limits: &Limits, scan: bool) -> Each<'a, 'j> {
    let state = match parse(bytes, limits, scan) {
        Err(e) => Pending::One(Err(e)),
        Ok(mut w) => match w.batch.take() {
            None => Pending::One(event(&mut w, journey, limits)),
            Some(items) => Pending::Batch {
                items: items.into_iter().enumerate(),
                context_email: w.context_email.take(),
                sent_at: w.sent_at.take(),
            },
        },
    };
    Each { journey, limits: *limits, state }
}

/// The events of one payload; see [`decode_each`].
pub struct Each<'a, 'j> {
    journey: &'j Journey,
    limits: Limits,
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
                    event(&mut w, self.journey, &self.limits)
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
    event(&mut w, journey, limits)
}

/// Reads a payload's fields: the scanner first when `scan`, serde_json when it is unsure.
fn parse<'a>(bytes: &'a [u8], limits: &Limits, scan: bool) -> Result<Wire<'a>, DecodeError> {
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge { size: bytes.len(), limit: limits.max_bytes });
    }
    if scan {
        let mut w = Wire::default();
        if scan::scan(bytes, limits.max_depth, &mut w) {
            return Ok(w);
        }
    }
    parse_serde(bytes, limits)
}

fn parse_serde<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Wire<'a>, DecodeError> {
    if too_deep(bytes, limits.max_depth) {
        return Err(DecodeError::TooDeep { limit: limits.max_depth });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.deserialize_map(WireVisitor { has_traits: memchr::memmem::find(bytes, b"\"traits\"").is_some() })
        .and_then(|w| de.end().map(|()| w))
        .map_err(|e| DecodeError::InvalidJson(e.to_string()))
}

/// The prospect of a Segment call: `userId`, else `anonymousId`. Blank ids and placeholder ids
/// (`[identity] placeholder_ids`) count as absent; a present id with a control character refuses
/// the payload whichever of the two it is in.
fn segment_prospect<'a>(
    user: Option<Str<'a>>,
    anonymous: Option<Str<'a>>,
    journey: &Journey,
    limits: &Limits,
) -> Result<Cow<'a, str>, DecodeError> {
    const EITHER: &str = "userId or anonymousId";
    let (user, anonymous) = (user.map(|s| s.0), anonymous.map(|s| s.0));
    let usable =
        |v: &Option<Cow<'a, str>>| v.as_ref().is_some_and(|v| !v.trim().is_empty() && !journey.is_placeholder_id(v));
    let (user_ok, anonymous_ok) = (usable(&user), usable(&anonymous));
    for (ok, v, field) in [(user_ok, &user, "userId"), (anonymous_ok, &anonymous, "anonymousId")] {
        if let (true, Some(v)) = (ok, v) {
            printable(v, field)?;
        }
    }
    match (user, anonymous) {
        (Some(u), _) if user_ok => checked(u, "userId", limits),
        (_, Some(a)) if anonymous_ok => checked(a, "anonymousId", limits),
        (u, a) => {
            if let Some(p) = [&u, &a].into_iter().flatten().find(|v| journey.is_placeholder_id(v)) {
                return Err(DecodeError::Placeholder { field: EITHER, value: p.chars().take(64).collect() });
            }
            match a {
                Some(a) => checked(a, EITHER, limits),
                None => Err(DecodeError::MissingField { field: EITHER, format: SEGMENT }),
            }
        }
    }
}

/// The event time of a Segment call: `timestamp`; without it, `originalTimestamp` corrected for
/// the client's clock skew as Segment computes `timestamp` (`receivedAt − (sentAt −
/// originalTimestamp)`) when both `sentAt` and `receivedAt` are there, else `originalTimestamp`.
fn segment_time(w: &mut Wire<'_>) -> Result<(Ts, &'static str), DecodeError> {
    match (w.timestamp.take(), w.original_timestamp.take()) {
        (None, Some(original)) => {
            let original = timestamp(Some(original), "originalTimestamp", SEGMENT)?;
            match (w.sent_at.take(), w.received_at.take()) {
                (Some(sent), Some(received)) => {
                    let sent = timestamp(Some(sent), "sentAt", SEGMENT)?;
                    let received = timestamp(Some(received), "receivedAt", SEGMENT)?;
                    Ok((received.minus(sent.since(original)), "receivedAt - (sentAt - originalTimestamp)"))
                }
                _ => Ok((original, "originalTimestamp")),
            }
        }
        (t, _) => Ok((timestamp(t, "timestamp", SEGMENT)?, "timestamp")),
    }
}

/// The validated event of a payload's fields (taken out of `w`).
fn event<'a>(w: &mut Wire<'a>, journey: &Journey, limits: &Limits) -> Result<Event<'a>, DecodeError> {
    let ev = if let Some(event_id) = w.event_id.take() {
        let event_id = id(event_id.0, "event_id", limits)?;
        let prospect = required(w.prospect_id.take(), "prospect_id", CANONICAL, limits)?;
        if journey.is_placeholder_id(&prospect) {
            return Err(DecodeError::Placeholder { field: "prospect_id", value: prospect.chars().take(64).collect() });
        }
        printable(&prospect, "prospect_id")?;
        let source = w.source.take().ok_or(DecodeError::MissingField { field: "source", format: CANONICAL })?.0;
        let source =
            Source::parse(&source).ok_or_else(|| DecodeError::UnknownSource(source.chars().take(64).collect()))?;
        let name = required(w.kind.take(), "type", CANONICAL, limits)?;
        let ts = not_before_floor(timestamp(w.ts.take(), "ts", CANONICAL)?, "ts", journey)?;
        let signal = journey.resolve(EventKind::Named, &name);
        Event { event_id, prospect, source, kind: EventKind::Named, name, signal, ts, email: email(w.email.take()) }
    } else if let Some(message_id) = w.message_id.take() {
        let event_id = id(message_id.0, "messageId", limits)?;
        let prospect = segment_prospect(w.user_id.take(), w.anonymous_id.take(), journey, limits)?;
        let source = match w.source.take() {
            Some(s) => Source::parse(&s.0).ok_or_else(|| DecodeError::UnknownSource(s.0.chars().take(64).collect()))?,
            None => Source::Web,
        };
        let call = w.kind.take().ok_or(DecodeError::MissingField { field: "type", format: SEGMENT })?.0;
        let (kind, name) = match &*call {
            "track" => (EventKind::Named, required(w.event.take(), "event", "Segment track call", limits)?),
            "page" => (EventKind::Page, Cow::Borrowed("")),
            "screen" => (EventKind::Screen, Cow::Borrowed("")),
            "identify" => (EventKind::Identify, Cow::Borrowed("")),
            "group" => (EventKind::Group, Cow::Borrowed("")),
            "alias" => (EventKind::Alias, Cow::Borrowed("")),
            other => {
                return Err(DecodeError::UnsupportedType(other.chars().take(64).collect()));
            }
        };
        let (ts, field) = segment_time(w)?;
        let ts = not_before_floor(ts, field, journey)?;
        let signal = journey.resolve(kind, &name);
        // An identify call's own traits are the news; `context.traits` may be cached from
        // earlier. Other calls carry traits only in their context.
        let email = if kind == EventKind::Identify {
            email(w.traits_email.take()).or_else(|| email(w.context_email.take()))
        } else {
            email(w.context_email.take()).or_else(|| email(w.traits_email.take()))
        };
        Event { event_id, prospect, source, kind, name, signal, ts, email }
    } else {
        return Err(DecodeError::MissingField {
            field: "event_id",
            format: "canonical envelope; Segment payloads carry `messageId`",
        });
    };
    Ok(ev)
}
