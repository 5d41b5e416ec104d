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
fn referrer_domain<'a>(touch: &mut Touch<'a>, referrer: Cow<'a, str>) {
    let host = match plain_host(referrer.trim()) {
        Some(host) => match (&referrer, host.bytes().any(|b| b.is_ascii_uppercase())) {
            (Cow::Borrowed(r), false) => Cow::Borrowed(plain_host(r.trim()).unwrap_or_default()),
            _ => Cow::Owned(host.to_ascii_lowercase()),
        },
        None => match url::Url::parse(referrer.trim()) {
            Ok(u) => match u.host_str() {
                Some(host) => Cow::Owned(host.to_string()),
                None => return,
            },
            Err(_) => return,
        },
    };
    let host = match host {
        Cow::Borrowed(h) => Cow::Borrowed(h.strip_prefix("www.").unwrap_or(h)),
        Cow::Owned(h) => match h.strip_prefix("www.") {
            Some(rest) => Cow::Owned(rest.to_string()),
            None => Cow::Owned(h),
        },
    };
    touch.offer(3, host);
}

/// The host of an `http` or `https` URL when it is a plain ASCII domain name that `url::Url`
/// would give back unchanged but for lower case: no user, port, escape, IP address or
/// internationalised label (`xn--`). `None` for anything else, which `url::Url` reads. A
/// hand-written fast path: the full parse of every referrer was about 2% of the service's CPU;
/// `tests::plain_hosts_are_what_url_gives` holds it to `url::Url`.
fn plain_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"))?;
    let b = rest.as_bytes();
    let mut end = 0;
    while let Some(&c) = b.get(end) {
        match c {
            b'/' | b'?' | b'#' => break,
            c if c.is_ascii_alphanumeric() || c == b'-' || c == b'.' => end += 1,
            _ => return None,
        }
    }
    let host = &rest[..end];
    if host.is_empty() {
        return None;
    }
    let mut labels = host.split('.').peekable();
    while let Some(label) = labels.next() {
        if label.is_empty() || label.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("xn--")) {
            return None;
        }
        // The last label starts with a letter: the host does not end in a number (an IPv4
        // address, or a failure, for `url::Url`).
        if labels.peek().is_none() && !label.as_bytes()[0].is_ascii_alphabetic() {
            return None;
        }
    }
    Some(host)
}

/// What the scanner read of a payload's touch fields.
// Held inline in the `Wire` of each decode: a box would be an allocation per payload.
#[allow(clippy::large_enum_variant)]
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
/// A field read under a key with telltale bytes (`campaign`, `utm_*`, `referrer`; the scanner
/// reads no escaped key) means the payload has them; only URLs alone need the search.
pub(super) fn touch_read<'a>(bytes: &'a [u8], read: TouchRead<'a>) -> Touch<'a> {
    match read {
        TouchRead::Read(p) => match p.fields() {
            Fields::None => Touch::default(),
            Fields::Urls if !telltale(bytes) => Touch::default(),
            Fields::Urls | Fields::Keyed => touch_from(p),
        },
        TouchRead::NotRead | TouchRead::Unsure => touch_fields(bytes),
    }
}

/// Which fields a [`Payload`] has values for.
enum Fields {
    None,
    /// Only `context.page.url` or `properties.url`.
    Urls,
    /// One read under a key with telltale bytes.
    Keyed,
}

impl Payload<'_> {
    fn fields(&self) -> Fields {
        let page = self.context.as_ref().and_then(|c| c.page.as_ref());
        let campaign = self.context.as_ref().and_then(|c| c.campaign.as_ref());
        let props = self.properties.as_ref();
        let keyed = page.is_some_and(|p| p.referrer.0.is_some())
            || campaign.is_some_and(|c| c.source.0.is_some() || c.medium.0.is_some() || c.name.0.is_some())
            || props.is_some_and(|p| {
                [&p.utm_source, &p.utm_medium, &p.utm_campaign, &p.referrer].iter().any(|v| v.0.is_some())
            });
        if keyed {
            Fields::Keyed
        } else if page.is_some_and(|p| p.url.0.is_some()) || props.is_some_and(|p| p.url.0.is_some()) {
            Fields::Urls
        } else {
            Fields::None
        }
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
        referrer_domain(&mut touch, r);
    }
    touch
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `url::Url`'s host, as the touch read it before the fast path.
    fn url_host(r: &str) -> Option<String> {
        let u = url::Url::parse(r.trim()).ok()?;
        u.host_str().map(|h| h.strip_prefix("www.").unwrap_or(h).to_string())
    }

    fn host(r: &str) -> Option<String> {
        let mut touch = Touch::default();
        referrer_domain(&mut touch, Cow::Borrowed(r));
        let mut owned = Touch::default();
        referrer_domain(&mut owned, Cow::Owned(r.to_string()));
        assert_eq!(touch.values[3], owned.values[3], "{r:?}");
        touch.values[3].clone().map(Cow::into_owned)
    }

    fn expected(r: &str) -> Option<String> {
        let mut touch = Touch::default();
        if let Some(h) = url_host(r) {
            touch.offer(3, Cow::Owned(h));
        }
        touch.values[3].clone().map(Cow::into_owned)
    }

    #[test]
    fn plain_hosts_are_what_url_gives() {
        for r in [
            "https://www.LinkedIn.com/feed",
            "https://news.example/a?b#c",
            "http://a.example",
            "  https://b.example/  ",
            "https://www.",
            "https://www.example.com.",
            "https://a..b/",
            "https://.a/",
            "https://1.2.3.4/x",
            "https://0x7f.1/",
            "https://example.123/",
            "https://example.0x1f/",
            "https://xn--nxasmq6b.example/",
            "https://a.XN--nxasmq6b/",
            "https://xn--a.example/",
            "https://user@a.example/",
            "https://a.example:8080/",
            "https://a.example:99999/",
            "https://a%2Eexample/",
            "https://a.example\\evil.example",
            "https://a.exa\tmple/",
            "https://a.exa\nmple/",
            "HTTPS://A.EXAMPLE/",
            "https:a.example",
            "https:///a.example",
            "ftp://a.example/",
            "https://-a-.example/",
            "https://ab--cd.example/",
            "https://ÉCOLE.example/",
            "https://www.www.example",
            "not a url",
            "",
        ] {
            assert_eq!(host(r), expected(r), "{r:?}");
        }
    }

    proptest! {
        #[test]
        fn generated_hosts_are_what_url_gives(r in r"(https?://|HTTP://|ftp://)?[a-zA-Z0-9.\-:@%_/?#\\ \t]{0,24}") {
            prop_assert_eq!(host(&r), expected(&r), "{:?}", r);
        }
    }

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
