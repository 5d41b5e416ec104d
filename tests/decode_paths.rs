//! The decoder's two paths agree: `codec::decode` (the one-pass scanner, falling back to serde_json
//! when unsure) returns exactly what `codec::decode_with_serde` (serde_json alone, the reference)
//! returns, event or typed error with its message, on the fixtures, on generated traffic, on every
//! edge of the JSON grammar the scanner handles itself, on the shapes real trackers send
//! (placeholder ids, control characters, offsets without a colon, skew correction, `group` and
//! `alias`, batches), and on mutated payloads. `codec::decode_each` agrees with
//! `codec::decode_each_with_serde` item by item, and with `codec::decode` on single payloads.
//! The breakdown touch (campaign, source, medium, referrer domain) is part of the event: the
//! scanner reads it in its one pass, the serde path in a second serde pass (`touch_fields`), so
//! the comparisons hold the scanner's read to that one; `TOUCH_SHAPES` are its edges.
//! The event-time merge's key (`codec::inbound::event_time`, a decode without the breakdown touch
//! and page-rule passes) is the time of the first item that decodes, on every payload here.

use microfunnel::codec::{self, DecodeError, InputSpec, Limits};
use microfunnel::core::{Event, Journey};
use microfunnel::traffic::{Generator, Options};
use proptest::prelude::*;

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");
const FIXTURES: [&str; 3] = [
    include_str!("fixtures/b2b-playbook.jsonl"),
    include_str!("fixtures/malformed.jsonl"),
    include_str!("fixtures/segment-sample.jsonl"),
];

fn b2b() -> Journey {
    Journey::from_toml_str(B2B).expect("shipped b2b journey loads")
}

fn limit_sets() -> [Limits; 3] {
    [
        Limits::default(),
        Limits { max_bytes: 512, max_depth: 4, max_id_bytes: 16 },
        Limits { max_depth: 1, ..Limits::default() },
    ]
}

type Items<'a> = Vec<(Option<usize>, Result<Event<'a>, DecodeError>)>;

/// Both paths of `decode_each` under several limits, and `decode` for a single payload; returns
/// the default-limits items.
fn agree_each<'a>(journey: &Journey, bytes: &'a [u8]) -> Items<'a> {
    let mut default = Vec::new();
    for limits in &limit_sets() {
        let fast: Items<'a> = codec::decode_each(bytes, journey, limits).collect();
        let serde: Items<'a> = codec::decode_each_with_serde(bytes, journey, limits).collect();
        assert_eq!(fast, serde, "decode_each paths differ under {limits:?} on {:?}", String::from_utf8_lossy(bytes));
        if let [(None, one)] = fast.as_slice() {
            assert_eq!(one, &codec::decode(bytes, journey, limits), "on {:?}", String::from_utf8_lossy(bytes));
        }
        let first = fast.iter().find_map(|(_, r)| r.as_ref().ok()).map(|e| e.ts);
        let key = codec::inbound::event_time(bytes, &InputSpec::default(), journey, limits);
        assert_eq!(key, first, "merge key under {limits:?} on {:?}", String::from_utf8_lossy(bytes));
        if *limits == Limits::default() {
            default = fast;
        }
    }
    default
}

/// Both paths under several limits; returns the default-limits result.
fn agree<'a>(journey: &Journey, bytes: &'a [u8]) -> Result<Event<'a>, DecodeError> {
    agree_each(journey, bytes);
    for limits in &limit_sets()[1..] {
        assert_eq!(
            codec::decode(bytes, journey, limits),
            codec::decode_with_serde(bytes, journey, limits),
            "paths differ under {limits:?} on {:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    let fast = codec::decode(bytes, journey, &Limits::default());
    assert_eq!(
        fast,
        codec::decode_with_serde(bytes, journey, &Limits::default()),
        "on {:?}",
        String::from_utf8_lossy(bytes)
    );
    fast
}

fn fixture_lines() -> Vec<&'static str> {
    FIXTURES
        .iter()
        .flat_map(|f| f.lines())
        .chain(TRACKER_SHAPES.iter().copied())
        .chain(TOUCH_SHAPES.iter().copied())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The touch fields' edges: every source and precedence, escapes in keys and values, values
/// that are not strings, repeated fields and containers, containers of another kind, a URL
/// whose `utm_` is percent-encoded (no telltale bytes: no touch).
const TOUCH_SHAPES: &[&str] = &[
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"campaign":{"name":"Spring","source":" Google ","medium":"CPC"},"page":{"url":"https://x.example/p?utm_source=bing&utm_term=a","referrer":"https://www.LinkedIn.com/feed"}},"properties":{"utm_campaign":"other"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"page":{"url":"/pricing?utm_campaign=q1%20launch&utm_medium=Email#top"}},"properties":{"utm_source":7,"referrer":""}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","properties":{"utm_source":{"a":1},"url":"https://a.example/?utm_source=news"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"page":{"referrer":"  "}},"properties":{"referrer":"https://news.example/a"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"page":{"referrer":"  "}}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"page":{"referrer":"https://a.example"}},"properties":{"referrer":"https://b.example"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"page":{"referrer":null,"url":null},"campaign":null},"properties":{"referrer":null,"utm_source":"x"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":"broken","properties":{"utm_source":"x"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":null,"properties":{"utm_source":"x"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":[],"properties":{"utm_source":"x"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"campaign":[null,"x"]},"properties":{"utm_source":"x"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"campaign":"spring"},"properties":{"utm_source":"x"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"page":7},"properties":{"utm_source":"x"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"campaign":{"name":"a"},"campaign":{"name":"b"}}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"campaign":{"name":"a","name":"b"}}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"page":{"referrer":"https://a.example"},"page":null}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","properties":{"utm_source":"a","utm_source":"b"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","properties":{"utm_source":"a"},"properties":null}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"campaign":{"name":"a"}},"context":{"traits":{}}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","properties":{"utm\u005fsource":"esc"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","properties":{"utm_source":"e\u0073c","x":"campaign"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","properties":{"utm_source":"bad\ud800"}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"campaign":{"n\u0061me":"esc","source":"s"}}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"page":{"url":"https:\/\/a.example\/?utm_source=slashes"}}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"page":{"url":"https://a.example/?utm%5Fsource=pct"}}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"page":{"url":"https://a.example/?utm%5Fsource=pct","referrer":"https://r.example"}}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"campaign":{"source":1e400,"name":true,"medium":[1]}}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"campaign":{"source":"S\u00e9","name":"Été","medium":"MÉDIUM"}}}"#,
    r#"{"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"campaign":{"name":"  "},"page":{"referrer":"not a url"}},"properties":{"utm_campaign":"fallback"}}"#,
    r#"{"event_id":"e","prospect_id":"p","source":"web","type":"page_viewed","ts":"2026-03-02T09:00:00Z","properties":{"utm_source":"Newsletter","utm_medium":"email","utm_campaign":"Q1","referrer":"https://www.google.com/search?q=x"}}"#,
    r#"{"event_id":"e","prospect_id":"p","source":"web","type":"page_viewed","ts":"2026-03-02T09:00:00Z","properties":{"url":"/a?utm_campaign=c&utm_campaign=d","nested":{"utm_source":"no"}}}"#,
    r#"{"event_id":"e","prospect_id":"p","source":"web","type":"page_viewed","ts":"2026-03-02T09:00:00Z","context":{"campaign":{"source":"ctx"}},"properties":{"utm_source":"props"}}"#,
];

/// What real trackers send that the decoder takes or refuses by rule; also mutated below.
const TRACKER_SHAPES: &[&str] = &[
    // placeholder ids, every spelling, and as numbers
    r#"{"type":"track","event":"Demo Requested","userId":"undefined","anonymousId":"anon-1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z"}"#,
    r#"{"type":"track","event":"Demo Requested","userId":" NULL ","anonymousId":"anon-1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z"}"#,
    r#"{"type":"page","userId":0,"anonymousId":"anon-2","messageId":"m-2","timestamp":"2026-03-02T09:00:00.000Z"}"#,
    r#"{"type":"page","userId":-1,"anonymousId":"anon-2","messageId":"m-2","timestamp":"2026-03-02T09:00:00.000Z"}"#,
    r#"{"type":"page","userId":"00000000-0000-0000-0000-000000000000","anonymousId":"N/A","messageId":"m-2","timestamp":"2026-03-02T09:00:00.000Z"}"#,
    r#"{"type":"page","userId":"nil","messageId":"m-2","timestamp":"2026-03-02T09:00:00.000Z"}"#,
    r#"{"event_id":"e-1","prospect_id":"Anonymous","source":"web","type":"page_viewed","ts":"2026-03-02T09:00:00Z"}"#,
    r#"{"event_id":"e-1","prospect_id":"\u0075ndefined","source":"web","type":"page_viewed","ts":"2026-03-02T09:00:00Z"}"#,
    // control characters in ids: escaped (serde path) and raw DEL (scanner path)
    r#"{"event_id":"e\u0000","prospect_id":"p","source":"web","type":"page_viewed","ts":"2026-03-02T09:00:00Z"}"#,
    r#"{"event_id":"e","prospect_id":"p\u001f","source":"web","type":"page_viewed","ts":"2026-03-02T09:00:00Z"}"#,
    "{\"event_id\":\"e\",\"prospect_id\":\"p\u{7f}\",\"source\":\"web\",\"type\":\"page_viewed\",\"ts\":\"2026-03-02T09:00:00Z\"}",
    "{\"type\":\"page\",\"userId\":\"u\",\"anonymousId\":\"a\u{7f}\",\"messageId\":\"m\",\"timestamp\":\"2026-03-02T09:00:00Z\"}",
    r#"{"type":"page","userId":"u\n","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    r#"{"type":"page","userId":"u","messageId":"m\u007f","timestamp":"2026-03-02T09:00:00Z"}"#,
    // identify with both emails
    r#"{"type":"identify","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","context":{"traits":{"email":"old@x.example"}},"traits":{"email":"New@X.example"}}"#,
    r#"{"type":"identify","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z","traits":{"email":"New@X.example"},"context":{"traits":{"email":"old@x.example"}}}"#,
    // group and alias
    r#"{"type":"group","groupId":"acct_1","userId":"usr_e1","messageId":"m-2","timestamp":"2026-03-02T09:00:05.000Z"}"#,
    r#"{"type":"alias","previousId":"anon-1","userId":"usr_e1","messageId":"m-3","timestamp":"2026-03-02T09:00:06.000Z"}"#,
    // every id a call carries: identify with both ids and an email, alias and its previousId
    r#"{"type":"identify","userId":"usr_1","anonymousId":"anon-1","messageId":"m","timestamp":"2026-03-02T09:00:00Z","traits":{"email":" Ana@X.example "}}"#,
    r#"{"type":"alias","previousId":"anon-1","anonymousId":"anon-2","userId":"usr_1","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    r#"{"type":"alias","previousId":"undefined","anonymousId":"anon-2","userId":"usr_1","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    r#"{"type":"alias","previousId":7,"userId":"usr_1","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    r#"{"type":"alias","previousId":null,"previousId":"p","userId":"usr_1","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    r#"{"type":"alias","previousId":"p","previousId":"q","userId":"usr_1","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    r#"{"type":"alias","previousId":"usr_1","userId":"usr_1","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    r#"{"type":"alias","previousId":"p\u0001","userId":"usr_1","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    r#"{"type":"alias","previousId":"a-previous-id-longer-than-sixteen-bytes","userId":"usr_1","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    r#"{"type":"track","event":"x","previousId":"p\u0001","userId":"usr_1","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    r#"{"type":"page","userId":"[object Object]","anonymousId":"0000-00","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    r#"{"type":"page","userId":"GUEST","anonymousId":"anon-3","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    r#"{"type":"page","userId":"usr_2","anonymousId":"an-anonymous-id-longer-than-sixteen","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    // offsets without a colon, camelCase names
    r#"{"type":"track","event":"demoRequested","userId":"usr_e2","messageId":"m-3","timestamp":"2026-03-02T09:00:00.000+0000"}"#,
    r#"{"type":"track","event":"QuoteRequested","userId":"usr_e2","messageId":"m-4","timestamp":"2026-03-02T14:30:00.000+0530"}"#,
    r#"{"event_id":"e","prospect_id":"p","source":"crm","type":"quote-sent","ts":"2026-03-02T03:30:00-0530"}"#,
    r#"{"event_id":"e","prospect_id":"p","source":"crm","type":"quote_sent","ts":"2026-03-02T10:00:00+01"}"#,
    // skew correction, floor
    r#"{"type":"page","anonymousId":"a","messageId":"m","originalTimestamp":"2026-03-07T09:20:00.112Z","sentAt":"2026-03-07T09:20:00.215Z","receivedAt":"2026-03-07T09:20:00.731Z"}"#,
    r#"{"type":"page","anonymousId":"a","messageId":"m","originalTimestamp":"2026-03-07T09:20:00.112Z","sentAt":"later","receivedAt":"2026-03-07T09:20:00.731Z"}"#,
    r#"{"type":"page","anonymousId":"a","messageId":"m","originalTimestamp":"2026-03-07T09:20:00.112Z","receivedAt":"2026-03-07T09:20:00.731Z"}"#,
    r#"{"type":"page","anonymousId":"a","messageId":"m","timestamp":"1970-01-01T00:00:00.000Z"}"#,
    r#"{"event_id":"e","prospect_id":"p","source":"crm","type":"quote_sent","ts":"1999-12-31T23:59:59Z"}"#,
    // batches
    r#"{"batch":[{"type":"track","event":"Quote Requested","userId":"usr_e1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z"}]}"#,
    r#"{"batch":[{"type":"page","userId":"u1","messageId":"m-1","timestamp":"2026-03-02T09:00:00Z"},{"type":"page","messageId":"m-2","timestamp":"2026-03-02T09:00:00Z"},[],{"type":"identify","userId":"u2","messageId":"m-3","originalTimestamp":"2026-03-02T08:59:00Z","receivedAt":"2026-03-02T09:00:02Z"}],"context":{"traits":{"email":"Batch@X.example"}},"sentAt":"2026-03-02T09:00:00Z"}"#,
    r#"{"sentAt":"2026-03-02T09:00:00Z","batch":[{"batch":[]},{"event_id":"e","prospect_id":"p","source":"crm","type":"quote_sent","ts":"2026-03-02T09:00:00Z"}]}"#,
    r#"{"batch":[],"batch":[]}"#,
    r#"{"batch":[]}"#,
    r#"{"batch":null,"type":"page","userId":"u","messageId":"m","timestamp":"2026-03-02T09:00:00Z"}"#,
    r#"{"batch":{"type":"page"}}"#,
    r#"{"batch":[1,"x",null,{"type":"page"}],"context":7}"#,
];

#[test]
fn tracker_shapes_decode_the_same_on_both_paths() {
    let journey = b2b();
    let (mut ok, mut refused, mut batched) = (0, 0, 0);
    for line in TRACKER_SHAPES {
        for (item, result) in agree_each(&journey, line.as_bytes()) {
            batched += usize::from(item.is_some());
            match result {
                Ok(_) => ok += 1,
                Err(_) => refused += 1,
            }
        }
    }
    assert!(ok >= 15 && refused >= 15 && batched >= 5, "{ok} decoded, {refused} refused, {batched} batch items");
}

#[test]
fn fixtures_decode_the_same_on_both_paths() {
    let journey = b2b();
    let (mut ok, mut refused) = (0, 0);
    for line in fixture_lines() {
        match agree(&journey, line.as_bytes()) {
            Ok(_) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    assert!(ok >= 40 && refused >= 10, "fixtures exercise both outcomes ({ok} decoded, {refused} refused)");
}

#[test]
fn realistic_segment_payloads_decode_the_same_on_both_paths_and_borrow() {
    let journey = b2b();
    let sample = FIXTURES[2];
    assert!(sample.lines().count() >= 8);
    for line in sample.lines().filter(|l| !l.is_empty()) {
        let ev = agree(&journey, line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(matches!(ev.event_id, std::borrow::Cow::Borrowed(_)), "{line}");
        assert!(matches!(ev.prospect, std::borrow::Cow::Borrowed(_)), "{line}");
    }
}

#[test]
fn generated_traffic_decodes_the_same_on_both_paths() {
    let journey = b2b();
    let opts = Options { prospects: 300, seed: 11, ..Options::default() };
    let mut g = Generator::new(opts, &journey, false).expect("generator");
    let (mut line, mut key) = (Vec::new(), String::new());
    let (mut n, mut refused, mut touched) = (0, 0, 0);
    while g.next_into(&mut line, &mut key).is_some() {
        let ev = agree(&journey, &line);
        refused += usize::from(ev.is_err());
        touched += usize::from(ev.is_ok_and(|e| e.touch.is_some()));
        n += 1;
    }
    assert!(n > 2000 && refused > 0 && touched > n / 10, "{n} lines, {refused} refused, {touched} with a touch");
}

/// The SaaS journey reads page calls through `[[segment.pages]]` rules (a pass the merge key
/// skips): b2b traffic decoded under it.
#[test]
fn generated_traffic_decodes_the_same_under_page_rules() {
    let journey = Journey::from_toml_str(include_str!("../deploy/journeys/saas.toml")).expect("saas journey loads");
    assert!(!journey.page_rules.is_empty());
    let b2b = b2b();
    let opts = Options { prospects: 100, seed: 5, ..Options::default() };
    let mut g = Generator::new(opts, &b2b, false).expect("generator");
    let (mut line, mut key) = (Vec::new(), String::new());
    let mut pages = 0;
    while g.next_into(&mut line, &mut key).is_some() {
        pages += usize::from(agree(&journey, &line).is_ok_and(|e| e.kind == microfunnel::core::EventKind::Page));
    }
    assert!(pages > 100, "{pages} page calls");
}

#[test]
fn touch_shapes_decode_the_same_on_both_paths() {
    let journey = b2b();
    let mut touched = 0;
    for line in TOUCH_SHAPES {
        let ev = agree(&journey, line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line}"));
        touched += usize::from(ev.touch.is_some());
    }
    // A key that is not UTF-8 inside `context.page` (the scanner skips it; the touch's serde
    // read refuses the payload's touch).
    let bad_key = b"{\"type\":\"page\",\"userId\":\"u\",\"messageId\":\"m\",\"timestamp\":\"2026-03-02T09:00:00Z\",\"context\":{\"page\":{\"\xff\":1,\"referrer\":\"https://r.example\"}}}";
    let _ = agree(&journey, bad_key);
    assert!(touched >= 15, "{touched} of {} shapes carry a touch", TOUCH_SHAPES.len());
}

/// Payloads at every edge the scanner decides itself or must hand over.
const EDGES: &[&str] = &[
    // whitespace, empty and trailing content
    " \t\r\n{\"event_id\":\"e\",\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\"} \n",
    "{}",
    "{ }",
    "",
    "   ",
    "[]",
    "null",
    "\"event\"",
    "{\"event_id\":\"e\"} x",
    "{\"event_id\":\"e\"}{}",
    "{\"event_id\":\"e\",}",
    "{,}",
    "{\"event_id\" \"e\"}",
    "{\"event_id\":}",
    "{\"event_id\":\"e\"",
    "{\"event_id\":\"e",
    "{\"a\":[1,]}",
    "{\"a\":[,1]}",
    "{\"a\":{\"b\":1,}}",
    "{\"a\":{1:2}}",
    // numbers, as skipped and as read
    "{\"a\":[0,-0,1.5,-2e10,3E+2,4e-1,0.0e0,123456789012345678901234567890,1e400]}",
    "{\"a\":01}",
    "{\"a\":-}",
    "{\"a\":1.}",
    "{\"a\":1e}",
    "{\"a\":.5}",
    "{\"a\":+1}",
    "{\"a\":1.5.5}",
    "{\"event_id\":42,\"prospect_id\":-7,\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\"}",
    "{\"event_id\":1.5,\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\"}",
    "{\"event_id\":true,\"prospect_id\":\"p\"}",
    "{\"event_id\":[\"e\"],\"prospect_id\":\"p\"}",
    "{\"event_id\":{},\"prospect_id\":\"p\"}",
    // literals
    "{\"a\":true,\"b\":false,\"c\":null}",
    "{\"a\":tru}",
    "{\"a\":nul}",
    "{\"a\":nulll}",
    "{\"a\":True}",
    // strings: escapes, control characters, non-ASCII
    "{\"a\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\uD800\"}",
    "{\"a\":\"\\x\"}",
    "{\"a\":\"\\u12G4\"}",
    "{\"a\":\"\\u12\"}",
    "{\"a\":\"tab\there\"}",
    "{\"a\":\"caf\u{e9} \u{1f600}\"}",
    "{\"event_id\":\"\\u0065\",\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\"}",
    "{\"event_id\":\"\\uD800\",\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\"}",
    "{\"event_\\u0069d\":\"e\",\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\"}",
    "{\"\\uDC00\":1,\"event_id\":\"e\"}",
    "{\"a\":{\"\\uDC00\":1},\"event_id\":\"e\"}",
    "{\"event_id\":\"\u{e9}v\u{e9}nement-12345678\",\"prospect_id\":\"p\u{f8}\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\"}",
    // repeated fields
    "{\"event_id\":\"e\",\"event_id\":\"f\",\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\"}",
    "{\"event_id\":null,\"event_id\":\"f\",\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\"}",
    "{\"event_id\":\"e\",\"event_id\":null,\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\"}",
    "{\"event_id\":\"e\",\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\",\"properties\":{},\"properties\":null,\"x\":1,\"x\":2}",
    // properties must be an object or null
    "{\"event_id\":\"e\",\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\",\"properties\":[1]}",
    "{\"event_id\":\"e\",\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\",\"properties\":\"s\"}",
    "{\"event_id\":\"e\",\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\",\"properties\":5}",
    "{\"event_id\":\"e\",\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\",\"properties\":nul}",
    // traits and context.traits emails
    "{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"traits\":{\"email\":\"A@B.example\"}}",
    "{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"traits\":{\"email\":\"A@B.example\",\"email\":7}}",
    "{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"traits\":{\"email\":1e400}}",
    "{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"traits\":{\"email\":{\"x\":1}}}",
    "{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"traits\":{\"email\":{\"\\uD800\":1}}}",
    "{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"traits\":{\"email\":[\"a@b.c\"]}}",
    "{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"traits\":{\"email\":\"A\\u0040B.example\"}}",
    "{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"traits\":[1,2]}",
    "{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"traits\":\"x\"}",
    "{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"traits\":7}",
    "{\"type\":\"identify\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"traits\":null,\"traits\":{\"email\":\"x@y.z\"}}",
    "{\"type\":\"page\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"context\":{\"traits\":{\"email\":\"C@D.example\"},\"email\":\"no@no.no\"}}",
    "{\"type\":\"page\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"context\":{\"traits\":{\"email\":\"C@D.example\"},\"traits\":null}}",
    "{\"type\":\"page\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"context\":{\"tr\\u0061its\":{\"email\":\"C@D.example\"}}}",
    "{\"type\":\"page\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"context\":{\"x\":{\"\\uD800\":1}},\"traits\":{}}",
    "{\"type\":\"page\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"context\":{\"\\uD800\":1}}",
    "{\"type\":\"page\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"context\":{\"\\uD800\":1},\"traits\":{}}",
    "{\"type\":\"page\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"context\":5,\"traits\":{}}",
    "{\"type\":\"page\",\"messageId\":\"m\",\"userId\":\"u\",\"timestamp\":\"2026-03-01T00:00:00Z\",\"context\":{\"traits\":5}}",
    // nesting around the limits (max_depth 32, 4 and 1 in `agree`)
    "{\"a\":{\"b\":{\"c\":{\"d\":{}}}}}",
    "{\"a\":[[[[[]]]]]}",
    "{\"a\":\"[[[[[[[[[[{{{{{{{{{\"}",
];

#[test]
fn grammar_edges_decode_the_same_on_both_paths() {
    let journey = b2b();
    for edge in EDGES {
        let _ = agree(&journey, edge.as_bytes());
    }
    let deep = format!("{{\"a\":{}1{}}}", "[".repeat(200), "]".repeat(200));
    let limits = Limits { max_depth: 500, ..Limits::default() };
    assert_eq!(
        codec::decode(deep.as_bytes(), &journey, &limits),
        codec::decode_with_serde(deep.as_bytes(), &journey, &limits)
    );
}

#[test]
fn invalid_utf8_decodes_the_same_on_both_paths() {
    let journey = b2b();
    let good = "{\"event_id\":\"e\",\"prospect_id\":\"p\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\",\"properties\":{\"k\":\"v\"}}";
    for (needle, bad) in
        [("\"e\"", &b"\"\xff\""[..]), ("\"v\"", b"\"\xc3\""), ("\"k\"", b"\"\xe2\x82\""), ("\"p\"", b"\"\xc3\xa9\"")]
    {
        let at = good.find(needle).unwrap();
        let mut bytes = good.as_bytes()[..at].to_vec();
        bytes.extend_from_slice(bad);
        bytes.extend_from_slice(&good.as_bytes()[at + needle.len()..]);
        let _ = agree(&journey, &bytes);
    }
}

/// The scanner reads strings 16 and 8 bytes at a time: a byte that matters (invalid or valid
/// UTF-8 above ASCII, an escape, a quote, a control character) at every position of a long field
/// and of a long skipped value is seen exactly as serde_json sees it.
#[test]
fn special_bytes_at_every_position_of_long_strings_decode_the_same_on_both_paths() {
    let journey = b2b();
    let specials: [&[u8]; 7] = [b"\xff", "\u{e9}".as_bytes(), b"\xe2\x82", b"\\\"", b"\\u00e9", b"\x01", b"\x7f"];
    let (mut accepted, mut refused) = (0, 0);
    for len in [15, 16, 17, 31, 40] {
        for at in 0..=len {
            for special in specials {
                let mut field = vec![b'a'; len];
                field.splice(at..at, special.iter().copied());
                for template in [
                    (
                        "{\"event_id\":\"e\",\"prospect_id\":\"",
                        "\",\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\"}",
                    ),
                    (
                        "{\"event_id\":\"e\",\"prospect_id\":\"p\",\"properties\":{\"ua\":\"",
                        "\"},\"source\":\"web\",\"type\":\"x\",\"ts\":\"2026-03-01T00:00:00Z\"}",
                    ),
                ] {
                    let mut bytes = template.0.as_bytes().to_vec();
                    bytes.extend_from_slice(&field);
                    bytes.extend_from_slice(template.1.as_bytes());
                    match agree(&journey, &bytes) {
                        Ok(_) => accepted += 1,
                        Err(_) => refused += 1,
                    }
                }
            }
        }
    }
    // Both outcomes occur: valid UTF-8 and escapes decode, invalid bytes and control characters
    // are refused.
    assert!(accepted > 0 && refused > 0, "accepted {accepted}, refused {refused}");
}

fn edit(line: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut b = line.to_vec();
    for &(at, op, byte) in edits {
        let i = at % (b.len() + 1);
        match op % 4 {
            0 => b.insert(i, byte),
            1 if i < b.len() => {
                b.remove(i);
            }
            2 if i < b.len() => b[i] = byte,
            _ => {
                let piece = b[i..(i + usize::from(byte % 24)).min(b.len())].to_vec();
                b.splice(i..i, piece);
            }
        }
    }
    b
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn mutated_payloads_decode_the_same_on_both_paths(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec(
            (any::<usize>(), any::<u8>(), prop_oneof![any::<u8>(), prop::sample::select(b"{}[]\":,\\ 0123456789.-eEtfnu\x00\x1f\xff\xc3".to_vec())]),
            1..5,
        ),
    ) {
        let journey = b2b();
        let lines = fixture_lines();
        let _ = agree(&journey, &edit(lines[pick.index(lines.len())].as_bytes(), &edits));
    }

    #[test]
    fn mutated_tracker_shapes_decode_the_same_on_both_paths(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec(
            (any::<usize>(), any::<u8>(), prop_oneof![any::<u8>(), prop::sample::select(b"{}[]\":,\\ 0123456789.-+eEtfnu\x00\x1f\x7f\xff".to_vec())]),
            1..4,
        ),
    ) {
        let _ = agree(&b2b(), &edit(TRACKER_SHAPES[pick.index(TRACKER_SHAPES.len())].as_bytes(), &edits));
    }

    #[test]
    fn mutated_touch_shapes_decode_the_same_on_both_paths(
        pick in any::<prop::sample::Index>(),
        edits in prop::collection::vec(
            (any::<usize>(), any::<u8>(), prop_oneof![any::<u8>(), prop::sample::select(b"{}[]\":,\\ 0123456789.-eEtfnu_\x00\x1f\xff\xc3".to_vec())]),
            1..4,
        ),
    ) {
        let _ = agree(&b2b(), &edit(TOUCH_SHAPES[pick.index(TOUCH_SHAPES.len())].as_bytes(), &edits));
    }

    #[test]
    fn json_like_text_decodes_the_same_on_both_paths(text in r#"[{}\[\]":,a-z0-9_ .@+\\-]{0,200}"#) {
        let _ = agree(&b2b(), text.as_bytes());
    }
}
