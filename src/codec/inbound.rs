//! Bytes to a validated [`Event`]: our canonical envelope or a Segment `track` / `page` /
//! `screen` / `identify` call, as they are. Only the fields the engine needs are decoded;
//! strings borrow from the input unless they contain escapes.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

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

/// A JSON string, borrowed when it has no escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Str<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
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
        }
        d.deserialize_str(V)
    }
}

/// Accepts any JSON object and skips its contents; anything else is an error.
struct AnyObject;

impl<'de> Deserialize<'de> for AnyObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(AnyObject)
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(Deserialize)]
struct Traits<'a> {
    #[serde(borrow, default)]
    email: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct Context<'a> {
    #[serde(borrow, default)]
    traits: Option<Traits<'a>>,
}

/// The union of both wire formats' fields we read; everything else is skipped unparsed.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    event_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    prospect_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    source: Option<Str<'a>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<Str<'a>>,
    #[serde(borrow, default)]
    ts: Option<Str<'a>>,
    #[serde(borrow, default)]
    email: Option<Str<'a>>,
    #[serde(default)]
    properties: Option<AnyObject>,
    #[serde(borrow, default, rename = "messageId")]
    message_id: Option<Str<'a>>,
    #[serde(borrow, default, rename = "userId")]
    user_id: Option<Str<'a>>,
    #[serde(borrow, default, rename = "anonymousId")]
    anonymous_id: Option<Str<'a>>,
    #[serde(borrow, default)]
    event: Option<Str<'a>>,
    #[serde(borrow, default)]
    timestamp: Option<Str<'a>>,
    #[serde(borrow, default)]
    traits: Option<Traits<'a>>,
    #[serde(borrow, default)]
    context: Option<Context<'a>>,
}

/// True when `bytes` nests objects/arrays deeper than `limit` (strings are skipped).
fn too_deep(bytes: &[u8], limit: usize) -> bool {
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
    if t.len() == e.len() && !t.bytes().any(|b| b.is_ascii_uppercase()) {
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
    if too_deep(bytes, limits.max_depth) {
        return Err(DecodeError::TooDeep { limit: limits.max_depth });
    }
    let w: Wire<'a> = serde_json::from_slice(bytes).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    let ev = if let Some(event_id) = w.event_id {
        let event_id = checked(event_id.0, "event_id", limits)?;
        let prospect = required(w.prospect_id, "prospect_id", CANONICAL, limits)?;
        let source = w.source.ok_or(DecodeError::MissingField { field: "source", format: CANONICAL })?.0;
        let source =
            Source::parse(&source).ok_or_else(|| DecodeError::UnknownSource(source.chars().take(64).collect()))?;
        let name = required(w.kind, "type", CANONICAL, limits)?;
        let ts = timestamp(w.ts, "ts", CANONICAL)?;
        let signal = journey.resolve(EventKind::Named, &name);
        Event { event_id, prospect, source, kind: EventKind::Named, name, signal, ts, email: email(w.email) }
    } else if let Some(message_id) = w.message_id {
        let event_id = checked(message_id.0, "messageId", limits)?;
        let prospect = match (w.user_id, w.anonymous_id) {
            (Some(u), _) if !u.0.trim().is_empty() => checked(u.0, "userId", limits)?,
            (_, a) => required(a, "userId or anonymousId", SEGMENT, limits)?,
        };
        let source = match w.source {
            Some(s) => Source::parse(&s.0).ok_or_else(|| DecodeError::UnknownSource(s.0.chars().take(64).collect()))?,
            None => Source::Web,
        };
        let call = w.kind.ok_or(DecodeError::MissingField { field: "type", format: SEGMENT })?.0;
        let (kind, name) = match &*call {
            "track" => (EventKind::Named, required(w.event, "event", "Segment track call", limits)?),
            "page" => (EventKind::Page, Cow::Borrowed("")),
            "screen" => (EventKind::Screen, Cow::Borrowed("")),
            "identify" => (EventKind::Identify, Cow::Borrowed("")),
            other => {
                return Err(DecodeError::UnsupportedType(other.chars().take(64).collect()));
            }
        };
        let ts = timestamp(w.timestamp, "timestamp", SEGMENT)?;
        let signal = journey.resolve(kind, &name);
        let from_context = w.context.and_then(|c| c.traits).and_then(|t| t.email);
        let email = email(from_context).or_else(|| email(w.traits.and_then(|t| t.email)));
        Event { event_id, prospect, source, kind, name, signal, ts, email }
    } else {
        return Err(DecodeError::MissingField {
            field: "event_id",
            format: "canonical envelope; Segment payloads carry `messageId`",
        });
    };
    let _ = w.properties;
    Ok(ev)
}
