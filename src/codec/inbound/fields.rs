//! Field validation: a [`Wire`]'s fields checked (present, not blank, not too long, printable,
//! in time range) and turned into an [`Event`].

use std::borrow::Cow;

use super::format::Format;
use super::touch::touch_read;
use super::wire::{Str, Wire, page_fields};
use super::{DecodeError, Limits};
use crate::core::journey::PageFields;
use crate::core::time::parse_rfc3339;
use crate::core::{Event, EventKind, Journey, Source, Ts};

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
pub(super) fn printable(s: &str, field: &'static str) -> Result<(), DecodeError> {
    match s.bytes().position(|b| b < 0x20 || b == 0x7F) {
        Some(at) => Err(DecodeError::InvalidId { field, at }),
        None => Ok(()),
    }
}

/// [`checked`] and [`printable`]: an id field.
pub(super) fn id<'a>(s: Cow<'a, str>, field: &'static str, limits: &Limits) -> Result<Cow<'a, str>, DecodeError> {
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
pub(super) fn not_before_floor(ts: Ts, field: &'static str, journey: &Journey) -> Result<Ts, DecodeError> {
    if ts < journey.min_event_time {
        return Err(DecodeError::TooEarly { field, value: ts, min: journey.min_event_time });
    }
    if ts > journey.max_event_time {
        return Err(DecodeError::TooFar { field, value: ts, max: journey.max_event_time });
    }
    Ok(ts)
}

/// Lower-cases an email; drops values that are not plausibly one.
pub(super) fn email(v: Option<Str<'_>>) -> Option<Cow<'_, str>> {
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

/// An id usable as a link: not blank, not a placeholder; one with a control character refuses
/// the payload (as in [`segment_prospect`]); one too long for an id gives no link.
fn link_id<'a>(
    v: Option<Str<'a>>,
    field: &'static str,
    journey: &Journey,
    limits: &Limits,
) -> Result<Option<Cow<'a, str>>, DecodeError> {
    let Some(v) = v.map(|s| s.0) else { return Ok(None) };
    if v.trim().is_empty() || journey.is_placeholder_id(&v) {
        return Ok(None);
    }
    printable(&v, field)?;
    Ok(checked(v, field, limits).ok())
}

/// The ids of a Segment call (see [`Event`]'s fields of the same names).
struct SegmentIds<'a> {
    prospect: Cow<'a, str>,
    linked: Option<Cow<'a, str>>,
    anonymous: bool,
}

/// The prospect of a Segment call: `userId`, else `anonymousId`, and the other of the two when
/// both are usable and differ (the link an `identify`, or any call made after signup, states).
/// Blank ids and placeholder ids (`[identity] placeholder_ids`) count as absent; a present id
/// with a control character refuses the payload whichever of the two it is in.
fn segment_prospect<'a>(
    user: Option<Str<'a>>,
    anonymous: Option<Str<'a>>,
    journey: &Journey,
    limits: &Limits,
) -> Result<SegmentIds<'a>, DecodeError> {
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
        (Some(u), a) if user_ok => {
            let linked = match a {
                Some(a) if anonymous_ok && a != u => checked(a, "anonymousId", limits).ok(),
                _ => None,
            };
            Ok(SegmentIds { prospect: checked(u, "userId", limits)?, linked, anonymous: false })
        }
        (_, Some(a)) if anonymous_ok => {
            Ok(SegmentIds { prospect: checked(a, "anonymousId", limits)?, linked: None, anonymous: true })
        }
        (u, a) => {
            if let Some(p) = [&u, &a].into_iter().flatten().find(|v| journey.is_placeholder_id(v)) {
                return Err(DecodeError::Placeholder { field: EITHER, value: p.chars().take(64).collect() });
            }
            match a {
                Some(a) => Ok(SegmentIds { prospect: checked(a, EITHER, limits)?, linked: None, anonymous: true }),
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

/// What the topic a payload came on says: which of the two shapes it accepts (`Auto`,
/// `Canonical` or `Segment`) and the source of its events, if it declares one.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Topic {
    pub(super) format: Format,
    pub(super) source: Option<Source>,
}

/// How much of an event a decode fills in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum Detail {
    /// Everything the engine reads.
    #[default]
    Full,
    /// What the event-time merge reads (`event_time`): the event validated as by `Full`, with
    /// its time, but no breakdown touch, and a page or screen call's signal not read from
    /// `[[segment.pages]]`. Neither second pass decides whether a payload decodes, so an event
    /// decodes under `Time` exactly when it decodes under `Full`, with the same time.
    Time,
}

/// The event's source: the topic's when it declares one (a payload naming another is refused),
/// else the payload's, else `default`.
fn source_of(payload: Option<Str<'_>>, topic: Option<Source>, default: Option<Source>) -> Result<Source, DecodeError> {
    let payload = match payload {
        Some(s) => Some(Source::parse(&s.0).ok_or_else(|| DecodeError::UnknownSource(s.0.chars().take(64).collect()))?),
        None => None,
    };
    match (payload, topic) {
        (Some(p), Some(t)) if p != t => {
            Err(DecodeError::SourceConflict { payload: p.as_str().into(), topic: t.as_str() })
        }
        (p, t) => t.or(p).or(default).ok_or(DecodeError::MissingField { field: "source", format: CANONICAL }),
    }
}

fn wrong_shape(format: Format, found: &str) -> DecodeError {
    DecodeError::WrongShape { format: format.as_str(), detail: format!("{found} on a `{}` topic", format.as_str()) }
}

/// The validated event of a payload's fields (taken out of `w`).
pub(super) fn event<'a>(
    w: &mut Wire<'a>,
    journey: &Journey,
    limits: &Limits,
    topic: Topic,
    detail: Detail,
) -> Result<Event<'a>, DecodeError> {
    let touch = |w: &mut Wire<'a>| if detail == Detail::Full { touch_of(journey, w) } else { None };
    if topic.format == Format::Segment && w.event_id.is_some() && w.message_id.is_none() {
        return Err(wrong_shape(topic.format, "a canonical envelope (`event_id`)"));
    }
    if topic.format == Format::Canonical && w.event_id.is_none() && w.message_id.is_some() {
        return Err(wrong_shape(topic.format, "a Segment call (`messageId`)"));
    }
    let ev = if let (Some(event_id), false) = (w.event_id.take(), topic.format == Format::Segment) {
        let event_id = id(event_id.0, "event_id", limits)?;
        let prospect = required(w.prospect_id.take(), "prospect_id", CANONICAL, limits)?;
        if journey.is_placeholder_id(&prospect) {
            return Err(DecodeError::Placeholder { field: "prospect_id", value: prospect.chars().take(64).collect() });
        }
        printable(&prospect, "prospect_id")?;
        let source = source_of(w.source.take(), topic.source, None)?;
        let name = required(w.kind.take(), "type", CANONICAL, limits)?;
        let ts = not_before_floor(timestamp(w.ts.take(), "ts", CANONICAL)?, "ts", journey)?;
        let signal = journey.resolve(EventKind::Named, &name);
        let email = email(w.email.take());
        Event {
            event_id,
            prospect,
            source,
            kind: EventKind::Named,
            name,
            signal,
            ts,
            email,
            linked: None,
            anonymous: false,
            touch: touch(w),
        }
    } else if let Some(message_id) = w.message_id.take() {
        let event_id = id(message_id.0, "messageId", limits)?;
        let SegmentIds { prospect, mut linked, anonymous } =
            segment_prospect(w.user_id.take(), w.anonymous_id.take(), journey, limits)?;
        let source = source_of(w.source.take(), topic.source, Some(Source::Web))?;
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
        if kind == EventKind::Alias
            && let Some(previous) = link_id(w.previous_id.take(), "previousId", journey, limits)?
            && previous != prospect
        {
            // An alias states `previousId` → `userId`; its `anonymousId`, if any, is the same
            // device's and usually the `previousId` itself.
            linked = Some(previous);
        }
        let (ts, field) = segment_time(w)?;
        let ts = not_before_floor(ts, field, journey)?;
        let signal = if matches!(kind, EventKind::Page | EventKind::Screen)
            && !journey.page_rules.is_empty()
            && detail == Detail::Full
        {
            let p = page_fields(w.bytes);
            fn s<'s>(v: &'s Option<Str>) -> Option<&'s str> {
                v.as_ref().map(|v| &*v.0)
            }
            let fields = PageFields { name: s(&p.name), category: s(&p.category), path: s(&p.path), url: s(&p.url) };
            journey.resolve_page(kind, &fields)
        } else {
            journey.resolve(kind, &name)
        };
        // An identify call's own traits are the news; `context.traits` may be cached from
        // earlier. Other calls carry traits only in their context.
        let email = if kind == EventKind::Identify {
            email(w.traits_email.take()).or_else(|| email(w.context_email.take()))
        } else {
            email(w.context_email.take()).or_else(|| email(w.traits_email.take()))
        };
        let touch = touch(w);
        Event { event_id, prospect, source, kind, name, signal, ts, email, linked, anonymous, touch }
    } else {
        return Err(DecodeError::MissingField {
            field: "event_id",
            format: "canonical envelope; Segment payloads carry `messageId`",
        });
    };
    Ok(ev)
}

/// The breakdown values of a payload, only for journeys with `[breakdowns]` that split by a
/// touch field: as the scanner read them, else a second, lenient serde pass; `None` when it
/// carries none.
fn touch_of<'a>(journey: &Journey, w: &mut Wire<'a>) -> Option<Box<crate::core::breakdown::Touch<'a>>> {
    if !journey.breakdowns.iter().any(|d| d.field.touch_index().is_some()) {
        return None;
    }
    let touch = touch_read(w.bytes, std::mem::take(&mut w.touch));
    (!touch.is_empty()).then(|| Box::new(touch))
}
