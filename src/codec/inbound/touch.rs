//! The breakdown values of an accepted payload (`core::breakdown::Touch`), read leniently: they
//! decide nothing about the payload (values that are not strings are skipped; a payload this
//! read cannot take yields no values). Only journeys with `[breakdowns]` pay for it. The scanner
//! reads the fields into a [`Payload`] in its one pass ([`TouchRead::Read`]); a payload it
//! leaves to the serde path, or whose touch fields it is not sure of, is read again here by
//! serde ([`touch_fields`]), the reference the scanner's read is held to
//! (`tests/decode_paths.rs`). Both end in [`touch_from`].
//!
//! Each field from the first of its sources that has it:
//! - `utm_source`, `utm_medium`, `utm_campaign`: Segment's `context.campaign` (`source`,
//!   `medium`, `name`), the `utm_*` query parameters of `context.page.url`, then
//!   `properties.utm_*` (the canonical envelope's place for them), then the `utm_*` query
//!   parameters of `properties.url`;
//! - referrer domain: the host of `context.page.referrer`, else of `properties.referrer`.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, de::DeserializeSeed};

use super::wire::AnyStr;
use crate::core::breakdown::Touch;

/// A string, or nothing for any other value.
#[derive(Default)]
pub(super) struct Lenient<'a>(pub(super) Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Lenient<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Lenient(AnyStr.deserialize(d)?.map(|s| s.0)))
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Payload<'a> {
    #[serde(borrow)]
    pub(super) context: Option<Context<'a>>,
    #[serde(borrow)]
    pub(super) properties: Option<Properties<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Context<'a> {
    #[serde(borrow)]
    pub(super) campaign: Option<Campaign<'a>>,
    #[serde(borrow)]
    pub(super) page: Option<Page<'a>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Campaign<'a> {
    #[serde(borrow)]
    pub(super) source: Lenient<'a>,
    #[serde(borrow)]
    pub(super) medium: Lenient<'a>,
    #[serde(borrow)]
    pub(super) name: Lenient<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Page<'a> {
    #[serde(borrow)]
    pub(super) url: Lenient<'a>,
    #[serde(borrow)]
    pub(super) referrer: Lenient<'a>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct Properties<'a> {
    #[serde(borrow)]
    pub(super) utm_source: Lenient<'a>,
    #[serde(borrow)]
    pub(super) utm_medium: Lenient<'a>,
    #[serde(borrow)]
    pub(super) utm_campaign: Lenient<'a>,
    #[serde(borrow)]
    pub(super) url: Lenient<'a>,
    #[serde(borrow)]
    pub(super) referrer: Lenient<'a>,
}

const UTM: [&str; 3] = ["utm_source", "utm_medium", "utm_campaign"];

/// The `utm_*` query parameters of a URL (absolute or a path), decoded.
fn utm_of_url(touch: &mut Touch<'_>, url: &str) {
    let Some((_, query)) = url.split_once('?') else { return };
    let query = query.split_once('#').map_or(query, |(q, _)| q);
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if let Some(i) = UTM.iter().position(|u| *u == k) {
            touch.offer(i, Cow::Owned(v.into_owned()));
        }
    }
}

/// The host of a referrer URL, without a leading `www.`.
fn referrer_domain(touch: &mut Touch<'_>, referrer: &str) {
    if let Ok(u) = url::Url::parse(referrer.trim())
        && let Some(host) = u.host_str()
    {
        let host = host.strip_prefix("www.").unwrap_or(host);
        touch.offer(3, Cow::Owned(host.to_string()));
    }
}

/// What the scanner read of a payload's touch fields.
#[derive(Default)]
pub(super) enum TouchRead<'a> {
    /// Not read (the serde path read the payload): [`touch_fields`] reads them.
    #[default]
    NotRead,
    /// The scanner met something in them it does not decide itself (an escape, a value that
    /// is not a string, a repeated field, a container of another kind): [`touch_fields`]
    /// decides.
    Unsure,
    /// The fields as serde would have read them.
    Read(Payload<'a>),
}

/// Whether a payload holds any of the keys' telltale bytes (`campaign`, `utm_`, `referrer`);
/// without, it has no touch: a key written with escapes (`"utm\u005fsource"`) is not read.
fn telltale(bytes: &[u8]) -> bool {
    use memchr::memmem::Finder;
    use std::sync::LazyLock;
    static NEEDLES: LazyLock<[Finder<'static>; 3]> =
        LazyLock::new(|| [Finder::new(b"utm_"), Finder::new(b"campaign"), Finder::new(b"referrer")]);
    NEEDLES.iter().any(|n| n.find(bytes).is_some())
}

/// The touch of a payload; empty when it carries none or cannot be read: a second, serde pass.
pub(super) fn touch_fields(bytes: &[u8]) -> Touch<'_> {
    if !telltale(bytes) {
        return Touch::default();
    }
    let Ok(p) = serde_json::from_slice::<Payload<'_>>(bytes) else { return Touch::default() };
    touch_from(p)
}

/// The touch of a payload whose fields the scanner read (`read`), as [`touch_fields`] gives it.
pub(super) fn touch_read<'a>(bytes: &'a [u8], read: TouchRead<'a>) -> Touch<'a> {
    match read {
        TouchRead::Read(p) if p.is_empty() => Touch::default(),
        TouchRead::Read(p) if telltale(bytes) => touch_from(p),
        TouchRead::Read(_) => Touch::default(),
        TouchRead::NotRead | TouchRead::Unsure => touch_fields(bytes),
    }
}

impl Payload<'_> {
    /// No field that gives a value (a `properties` object alone gives none).
    fn is_empty(&self) -> bool {
        let page = self.context.as_ref().and_then(|c| c.page.as_ref());
        let campaign = self.context.as_ref().and_then(|c| c.campaign.as_ref());
        page.is_none_or(|p| p.url.0.is_none() && p.referrer.0.is_none())
            && campaign.is_none_or(|c| c.source.0.is_none() && c.medium.0.is_none() && c.name.0.is_none())
            && self.properties.as_ref().is_none_or(|p| {
                [&p.utm_source, &p.utm_medium, &p.utm_campaign, &p.url, &p.referrer].iter().all(|v| v.0.is_none())
            })
    }
}

/// The touch of the fields read, each field from the first of its sources that has it.
pub(super) fn touch_from(p: Payload<'_>) -> Touch<'_> {
    let mut touch = Touch::default();
    let (campaign, page) = match p.context {
        Some(c) => (c.campaign, c.page),
        None => (None, None),
    };
    if let Some(c) = campaign {
        for (i, v) in [c.source.0, c.medium.0, c.name.0].into_iter().enumerate() {
            if let Some(v) = v {
                touch.offer(i, v);
            }
        }
    }
    let mut referrer = None;
    if let Some(page) = page {
        if let Some(url) = &page.url.0 {
            utm_of_url(&mut touch, url);
        }
        referrer = page.referrer.0;
    }
    if let Some(props) = p.properties {
        for (i, v) in [props.utm_source.0, props.utm_medium.0, props.utm_campaign.0].into_iter().enumerate() {
            if let Some(v) = v {
                touch.offer(i, v);
            }
        }
        if let Some(url) = &props.url.0 {
            utm_of_url(&mut touch, url);
        }
        referrer = referrer.filter(|r| !r.trim().is_empty()).or(props.referrer.0);
    }
    if let Some(r) = referrer {
        referrer_domain(&mut touch, &r);
    }
    touch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(json: &str) -> [Option<String>; 4] {
        touch_fields(json.as_bytes()).values.map(|v| v.map(Cow::into_owned))
    }

    #[test]
    fn segment_campaign_comes_before_url_parameters_and_properties() {
        let v = values(
            r#"{"context":{"campaign":{"name":"Spring-Launch","source":" Google ","medium":"CPC"},
                "page":{"url":"https://x.example/p?utm_source=bing&utm_term=a","referrer":"https://www.LinkedIn.com/feed"}},
                "properties":{"utm_campaign":"other"}}"#,
        );
        let s = |x: &str| Some(x.to_string());
        assert_eq!(v, [s("google"), s("cpc"), s("Spring-Launch"), s("linkedin.com")]);
    }

    #[test]
    fn url_parameters_are_decoded_and_non_strings_skipped() {
        let v = values(
            r#"{"context":{"page":{"url":"/pricing?utm_campaign=q1%20launch&utm_medium=Email#top"}},"properties":{"utm_source":7,"referrer":""}}"#,
        );
        assert_eq!(v, [None, Some("email".into()), Some("q1 launch".into()), None]);
        let v = values(r#"{"properties":{"utm_source":{"a":1},"url":"https://a.example/?utm_source=news"}}"#);
        assert_eq!(v[0].as_deref(), Some("news"));
        assert_eq!(values(r#"{"context":"broken"}"#), [None, None, None, None]);
    }
}
