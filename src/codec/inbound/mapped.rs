//! The `mapped` format: any JSON object, its fields found by the JSON Pointers of the topic's
//! [`Mapped`] configuration (`serde_json::Value::pointer`). One event per message.

use std::borrow::Cow;

use serde_json::Value;

use super::fields::{email, id, not_before_floor, printable};
use super::format::{InputSpec, Mapped, TimeUnit};
use super::wire::Str;
use super::{DecodeError, Limits};
use crate::core::time::parse_rfc3339;
use crate::core::{Event, EventKind, Journey, Source, Ts};

const FORMAT: &str = "mapped payload";

pub(super) fn decode<'a>(
    bytes: &[u8],
    spec: &InputSpec,
    journey: &Journey,
    limits: &Limits,
) -> Vec<(Option<usize>, Result<Event<'a>, DecodeError>)> {
    vec![(None, one(bytes, spec, journey, limits))]
}

/// The pointer's value as a string (numbers as JSON writes them); `None` when absent or null.
fn text(v: &Value, pointer: &str) -> Option<String> {
    match v.pointer(pointer)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Null | Value::Array(_) | Value::Object(_) => None,
    }
}

/// A mapped field's value; missing (absent, null, not a scalar) is named by its role (`event_id`,
/// `prospect`, `type`), as in `inputs.<topic>.mapped`.
fn required(v: &Value, pointer: &str, role: &'static str) -> Result<String, DecodeError> {
    text(v, pointer).ok_or(DecodeError::MissingField { field: role, format: FORMAT })
}

fn time(v: &Value, m: &Mapped) -> Result<Ts, DecodeError> {
    let raw = v
        .pointer(&m.time)
        .filter(|t| !t.is_null())
        .ok_or(DecodeError::MissingField { field: "time", format: FORMAT })?;
    let bad = |problem| DecodeError::BadTimestamp {
        field: "time",
        value: raw.to_string().chars().take(64).collect(),
        problem,
    };
    match (m.time_unit, raw) {
        (TimeUnit::Rfc3339, Value::String(s)) => parse_rfc3339(s).map_err(bad),
        (TimeUnit::EpochMs, Value::Number(n)) => {
            n.as_i64().map(Ts).ok_or_else(|| bad(crate::core::time::TimeError::OutOfRange))
        }
        (TimeUnit::EpochS, Value::Number(n)) => n
            .as_i64()
            .and_then(|s| s.checked_mul(1000))
            .or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| (f * 1000.0) as i64))
            .map(Ts)
            .ok_or_else(|| bad(crate::core::time::TimeError::OutOfRange)),
        _ => Err(bad(crate::core::time::TimeError::Syntax)),
    }
}

fn one<'a>(bytes: &[u8], spec: &InputSpec, journey: &Journey, limits: &Limits) -> Result<Event<'a>, DecodeError> {
    let m = spec.mapped.as_ref().ok_or(DecodeError::WrongShape {
        format: "mapped",
        detail: "the topic declares no `mapped` field pointers".into(),
    })?;
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge { size: bytes.len(), limit: limits.max_bytes });
    }
    if super::wire::too_deep(bytes, limits.max_depth) {
        return Err(DecodeError::TooDeep { limit: limits.max_depth });
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError::InvalidJson(e.to_string()))?;
    if !v.is_object() {
        return Err(DecodeError::WrongShape { format: "mapped", detail: "the payload is not a JSON object".into() });
    }
    let event_id = id(Cow::Owned(required(&v, &m.event_id, "event_id")?), "event_id", limits)?;
    let prospect = id(Cow::Owned(required(&v, &m.prospect, "prospect")?), "prospect", limits)?;
    if journey.is_placeholder_id(&prospect) {
        return Err(DecodeError::Placeholder { field: "prospect", value: prospect.chars().take(64).collect() });
    }
    printable(&prospect, "prospect")?;
    let name = match (&m.kind, &m.kind_constant) {
        (_, Some(c)) => c.clone(),
        (Some(p), None) => required(&v, p, "type")?,
        (None, None) => return Err(DecodeError::MissingField { field: "type", format: FORMAT }),
    };
    let ts = not_before_floor(time(&v, m)?, "time", journey)?;
    let signal = journey.resolve(EventKind::Named, &name);
    let email = m
        .email
        .as_deref()
        .and_then(|p| text(&v, p))
        .and_then(|e| email(Some(Str(Cow::Owned(e)))).map(|e| Cow::Owned(e.into_owned())));
    Ok(Event {
        event_id,
        prospect,
        source: spec.source().unwrap_or(Source::Web),
        kind: EventKind::Named,
        name: Cow::Owned(name),
        signal,
        ts,
        email,
        linked: None,
        anonymous: false,
        touch: Default::default(),
    })
}
