//! The serde path: [`Wire`], the fields of a payload that we read, and the serde_json visitors
//! that fill it ([`parse_serde`]). The scanner fills the same `Wire` when it can be sure.

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{DecodeError, Limits};

/// A JSON string (or an integer id, as some SDKs send), borrowed when it has no escapes.
#[derive(Clone)]
pub(super) struct Str<'a>(pub(super) Cow<'a, str>);

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
pub(super) struct Wire<'a> {
    pub(super) event_id: Option<Str<'a>>,
    pub(super) prospect_id: Option<Str<'a>>,
    pub(super) source: Option<Str<'a>>,
    pub(super) kind: Option<Str<'a>>,
    pub(super) ts: Option<Str<'a>>,
    pub(super) email: Option<Str<'a>>,
    pub(super) message_id: Option<Str<'a>>,
    pub(super) user_id: Option<Str<'a>>,
    pub(super) anonymous_id: Option<Str<'a>>,
    /// An `alias` call's old id.
    pub(super) previous_id: Option<Str<'a>>,
    pub(super) event: Option<Str<'a>>,
    pub(super) timestamp: Option<Str<'a>>,
    /// Client-side time, used only when a payload skipped Segment's servers (no `timestamp`).
    pub(super) original_timestamp: Option<Str<'a>>,
    /// Client time of sending and server time of receipt: with `originalTimestamp`, Segment's
    /// clock-skew correction when `timestamp` is absent.
    pub(super) sent_at: Option<Str<'a>>,
    pub(super) received_at: Option<Str<'a>>,
    /// The items of a `{"batch":[...]}` envelope, each decoded alone (serde path only).
    pub(super) batch: Option<Vec<&'a RawValue>>,
    /// `traits.email` (identify calls).
    pub(super) traits_email: Option<Str<'a>>,
    /// `context.traits.email`.
    pub(super) context_email: Option<Str<'a>>,
    /// The breakdown touch fields, when the scanner read them.
    pub(super) touch: super::touch::TouchRead<'a>,
    /// The payload these fields were read from (both paths), for [`page_fields`].
    pub(super) bytes: &'a [u8],
}

/// The strings `[[segment.pages]]` rules look at in a page or screen call: `name` and
/// `category` (top level, else in `properties`), `properties.path` and `properties.url`.
#[derive(Default)]
pub(super) struct PageProps<'a> {
    pub(super) path: Option<Str<'a>>,
    pub(super) url: Option<Str<'a>>,
    pub(super) name: Option<Str<'a>>,
    pub(super) category: Option<Str<'a>>,
}

/// Reads [`PageProps`] out of a payload already accepted: a second, lenient pass that decides
/// nothing about the payload (values that are not strings are skipped; a payload this pass
/// cannot read, e.g. a bad escape in a field the first pass skipped, yields no fields). Only
/// page and screen calls of journeys with page rules pay for it.
pub(super) fn page_fields(bytes: &[u8]) -> PageProps<'_> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.deserialize_map(PagePropsVisitor { top: true }).unwrap_or_default()
}

struct PagePropsVisitor {
    top: bool,
}

impl<'de> DeserializeSeed<'de> for PagePropsVisitor {
    type Value = PageProps<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PagePropsVisitor {
    type Value = PageProps<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut p = PageProps::default();
        let mut props = PageProps::default();
        while let Some(key) = map.next_key::<Str<'de>>()? {
            let slot = match (&*key.0, self.top) {
                ("properties", true) => {
                    props = map.next_value_seed(PagePropsVisitor { top: false })?;
                    continue;
                }
                ("path" | "url", true) => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
                ("path", false) => &mut p.path,
                ("url", false) => &mut p.url,
                ("name", _) => &mut p.name,
                ("category", _) => &mut p.category,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    continue;
                }
            };
            *slot = map.next_value_seed(AnyStr)?;
        }
        if !self.top {
            return Ok(p);
        }
        Ok(PageProps {
            path: props.path,
            url: props.url,
            name: p.name.or(props.name),
            category: p.category.or(props.category),
        })
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(PageProps::default())
    }
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
                "previousId" => once(&mut w.previous_id, &mut map, "previousId")?,
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
pub(super) struct AnyStr;

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
pub(super) fn too_deep(bytes: &[u8], limit: usize) -> bool {
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

pub(super) fn parse_serde<'a>(bytes: &'a [u8], limits: &Limits) -> Result<Wire<'a>, DecodeError> {
    if too_deep(bytes, limits.max_depth) {
        return Err(DecodeError::TooDeep { limit: limits.max_depth });
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    de.deserialize_map(WireVisitor { has_traits: memchr::memmem::find(bytes, b"\"traits\"").is_some() })
        .and_then(|w| de.end().map(|()| w))
        .map_err(|e| DecodeError::InvalidJson(e.to_string()))
}
