//! Bytes to a validated [`Event`]: our canonical envelope or a Segment `track` / `page` /
//! `screen` / `identify` call, as they are. Only the fields the engine needs are decoded;
//! strings borrow from the input unless they contain escapes.
//!
//! Two paths read the payload into the same [`Wire`]: a one-pass scanner ([`scan`]) that takes
//! every payload it can be sure of, and serde_json, which decides the rest (escaped fields,
//! anything invalid) and so words every rejection. [`decode_with_serde`] is the serde path
//! alone, the reference the tests hold the scanner to.

mod scan;

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::core::time::{TimeError, parse_rfc3339};
use crate::core::{Event, EventKind, Journey, RejectReason, Source};

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
    #[error("unsupported Segment call type {0:?}: expected \"track\", \"page\", \"screen\" or \"identify\"")]
    UnsupportedType(String),
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
            DecodeError::UnsupportedType(_) => RejectReason::UnsupportedType,
        }
    }
}

/// A JSON string (or an integer id, as some SDKs send), borrowed when it has no escapes.
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

fn timestamp(v: Option<Str<'_>>, field: &'static str, format: &'static str) -> Result<crate::core::Ts, DecodeError> {
    let s = v.ok_or(DecodeError::MissingField { field, format })?.0;
    parse_rfc3339(&s).map_err(|problem| DecodeError::BadTimestamp {
        field,
        value: s.chars().take(64).collect(),
        problem,
    })
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

/// Decodes one payload and maps it to a journey signal.
pub fn decode<'a>(bytes: &'a [u8], journey: &Journey, limits: &Limits) -> Result<Event<'a>, DecodeError> {
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge { size: bytes.len(), limit: limits.max_bytes });
    }
    let mut w = Wire::default();
    if !scan::scan(bytes, limits.max_depth, &mut w) {
        w = parse_serde(bytes, limits)?;
    }
    event(&mut w, journey, limits)
}

/// [`decode`] without the scanner: serde_json reads every payload. Same results, slower; the
/// reference for tests and benches.
pub fn decode_with_serde<'a>(bytes: &'a [u8], journey: &Journey, limits: &Limits) -> Result<Event<'a>, DecodeError> {
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge { size: bytes.len(), limit: limits.max_bytes });
    }
    event(&mut parse_serde(bytes, limits)?, journey, limits)
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

/// The validated event of a payload's fields (taken out of `w`).
fn event<'a>(w: &mut Wire<'a>, journey: &Journey, limits: &Limits) -> Result<Event<'a>, DecodeError> {
    let ev = if let Some(event_id) = w.event_id.take() {
        let event_id = checked(event_id.0, "event_id", limits)?;
        let prospect = required(w.prospect_id.take(), "prospect_id", CANONICAL, limits)?;
        let source = w.source.take().ok_or(DecodeError::MissingField { field: "source", format: CANONICAL })?.0;
        let source =
            Source::parse(&source).ok_or_else(|| DecodeError::UnknownSource(source.chars().take(64).collect()))?;
        let name = required(w.kind.take(), "type", CANONICAL, limits)?;
        let ts = timestamp(w.ts.take(), "ts", CANONICAL)?;
        let signal = journey.resolve(EventKind::Named, &name);
        Event { event_id, prospect, source, kind: EventKind::Named, name, signal, ts, email: email(w.email.take()) }
    } else if let Some(message_id) = w.message_id.take() {
        let event_id = checked(message_id.0, "messageId", limits)?;
        let prospect = match (w.user_id.take(), w.anonymous_id.take()) {
            (Some(u), _) if !u.0.trim().is_empty() => checked(u.0, "userId", limits)?,
            (_, a) => required(a, "userId or anonymousId", SEGMENT, limits)?,
        };
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
            other => {
                return Err(DecodeError::UnsupportedType(other.chars().take(64).collect()));
            }
        };
        let ts = match (w.timestamp.take(), w.original_timestamp.take()) {
            (None, Some(original)) => timestamp(Some(original), "originalTimestamp", SEGMENT)?,
            (t, _) => timestamp(t, "timestamp", SEGMENT)?,
        };
        let signal = journey.resolve(kind, &name);
        let email = email(w.context_email.take()).or_else(|| email(w.traits_email.take()));
        Event { event_id, prospect, source, kind, name, signal, ts, email }
    } else {
        return Err(DecodeError::MissingField {
            field: "event_id",
            format: "canonical envelope; Segment payloads carry `messageId`",
        });
    };
    Ok(ev)
}
