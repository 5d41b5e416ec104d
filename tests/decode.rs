//! `codec::decode`: every way a payload can be refused, the Segment identity rules, escapes, and
//! that no input whatsoever makes it (or the engine behind it) panic.

use std::borrow::Cow;
use std::sync::Arc;

use microfunnel::codec::{self, DecodeError, Limits};
use microfunnel::core::time::TimeError;
use microfunnel::core::{Engine, EventKind, Journey, RejectReason, Source};
use proptest::prelude::*;
use serde_json::{Value, json};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");
const PLAYBOOK: &str = include_str!("fixtures/b2b-playbook.jsonl");
const MALFORMED: &str = include_str!("fixtures/malformed.jsonl");

fn b2b() -> Journey {
    Journey::from_toml_str(B2B).expect("shipped b2b journey loads")
}

fn decode(v: &Value) -> Result<microfunnel::core::Event<'static>, DecodeError> {
    decode_bytes(v.to_string().as_bytes())
}

fn decode_bytes(bytes: &[u8]) -> Result<microfunnel::core::Event<'static>, DecodeError> {
    codec::decode(bytes, &b2b(), &Limits::default()).map(|e| e.into_owned())
}

fn canonical() -> Value {
    json!({"event_id": "sfdc-evt-1", "prospect_id": "usr_8812", "source": "crm", "type": "meeting_booked",
        "ts": "2026-03-05T15:00:00Z", "properties": {"owner": "j.ramos"}})
}

fn segment_track() -> Value {
    json!({"type": "track", "event": "Demo Requested", "properties": {"seats": 25}, "userId": "usr_8812",
        "anonymousId": "3b1f6c2e-9d0a-4f5e-8a77-2c1d9e4b5a60", "messageId": "ajs-next-1",
        "timestamp": "2026-03-04T10:12:00.000Z", "version": 2})
}

fn with(mut v: Value, key: &str, value: Value) -> Value {
    v[key] = value;
    v
}

fn without(mut v: Value, key: &str) -> Value {
    v.as_object_mut().unwrap().remove(key);
    v
}

/// Asserts the error's label and that its message names `words`.
fn assert_refused(
    result: Result<microfunnel::core::Event<'static>, DecodeError>,
    reason: RejectReason,
    words: &[&str],
) {
    let err = result.expect_err("payload should be refused");
    assert_eq!(err.reason(), reason, "{err}");
    let msg = err.to_string();
    for w in words {
        assert!(msg.contains(w), "message {msg:?} should name {w:?}");
    }
}

// ---- each error variant -----------------------------------------------------------------------

#[test]
fn reason_labels_are_the_bounded_set() {
    let cases: [(DecodeError, &str); 9] = [
        (DecodeError::TooLarge { size: 2, limit: 1 }, "too_large"),
        (DecodeError::TooDeep { limit: 1 }, "too_deep"),
        (DecodeError::InvalidJson(String::new()), "invalid_json"),
        (DecodeError::MissingField { field: "ts", format: "x" }, "missing_field"),
        (DecodeError::EmptyField { field: "ts" }, "empty_field"),
        (DecodeError::FieldTooLong { field: "ts", len: 2, limit: 1 }, "field_too_long"),
        (DecodeError::BadTimestamp { field: "ts", value: String::new(), problem: TimeError::Syntax }, "bad_timestamp"),
        (DecodeError::UnknownSource(String::new()), "unknown_source"),
        (DecodeError::UnsupportedType(String::new()), "unsupported_type"),
    ];
    for (err, label) in cases {
        assert_eq!(err.reason().as_str(), label, "{err:?}");
        assert!(RejectReason::ALL.contains(&err.reason()));
    }
}

#[test]
fn payload_over_the_size_limit_is_too_large() {
    let journey = b2b();
    let limits = Limits { max_bytes: 200, ..Limits::default() };
    let mut line = canonical().to_string();
    assert!(line.len() < 200);
    // JSON allows trailing whitespace: pad to exactly the limit, which is accepted.
    line.push_str(&" ".repeat(200 - line.len()));
    assert!(codec::decode(line.as_bytes(), &journey, &limits).is_ok());
    line.push(' ');
    let err = codec::decode(line.as_bytes(), &journey, &limits).unwrap_err();
    assert_eq!(err, DecodeError::TooLarge { size: 201, limit: 200 });
    assert_eq!(err.reason(), RejectReason::TooLarge);
    assert_eq!(err.to_string(), "payload is 201 bytes, over the 200-byte limit");
}

fn nested(levels: usize) -> Value {
    // The event object itself is one level; `properties` and everything under it add the rest.
    let mut v = json!({"leaf": true});
    for i in 2..levels {
        v = json!({ format!("l{i}"): v });
    }
    with(canonical(), "properties", v)
}

#[test]
fn nesting_deeper_than_the_limit_is_too_deep() {
    assert!(decode(&nested(32)).is_ok());
    assert_refused(decode(&nested(33)), RejectReason::TooDeep, &["32 levels"]);
    // Arrays count as levels too.
    let journey = b2b();
    let limits = Limits { max_depth: 4, ..Limits::default() };
    let ok = with(canonical(), "properties", json!({"a": [[1]]}));
    assert!(codec::decode(ok.to_string().as_bytes(), &journey, &limits).is_ok());
    let deep = with(canonical(), "properties", json!({"a": [[[1]]]}));
    let err = codec::decode(deep.to_string().as_bytes(), &journey, &limits).unwrap_err();
    assert_eq!(err, DecodeError::TooDeep { limit: 4 });
}

#[test]
fn brackets_inside_strings_do_not_count_as_nesting() {
    let text = format!("{}\\\"{}", "[{".repeat(40), "}]".repeat(40));
    let v = with(canonical(), "properties", json!({"search": text, "q": "\\", "r": "{{{{"}));
    let ev = decode(&v).expect("strings are not nesting");
    assert_eq!(ev.event_id, "sfdc-evt-1");
}

#[test]
fn invalid_json_is_refused_with_its_position() {
    for bad in [
        &b"not json at all"[..],
        b"{\"event_id\": \"sfdc-evt-1\", \"prospect_id\": \"usr_1\", ",
        b"<html><body>502 Bad Gateway</body></html>",
        b"",
        b"null",
        b"\"sfdc-evt-1\"",
        b"{\"event_id\": \"a\"} trailing",
    ] {
        let err = decode_bytes(bad).unwrap_err();
        assert_eq!(err.reason(), RejectReason::InvalidJson, "{}", String::from_utf8_lossy(bad));
        let msg = err.to_string();
        assert!(msg.starts_with("not a valid JSON event object"), "{msg}");
        assert!(msg.contains("line 1 column"), "{msg}");
    }
}

#[test]
fn non_string_values_in_string_fields_are_invalid_json() {
    for (key, value) in [
        ("prospect_id", json!({"id": "usr_1"})),
        ("event_id", json!(["sfdc-evt-1"])),
        ("type", json!(1.5)),
        ("email", json!(true)),
        ("properties", json!(["not", "an", "object"])),
        ("properties", json!("owner=k.osei")),
    ] {
        let err = decode(&with(canonical(), key, value)).unwrap_err();
        assert_eq!(err.reason(), RejectReason::InvalidJson, "{key}: {err}");
    }
    let err = decode(&with(segment_track(), "userId", json!({"id": 5}))).unwrap_err();
    assert_eq!(err.reason(), RejectReason::InvalidJson, "{err}");
}

#[test]
fn integer_ids_are_read_as_their_decimal_text() {
    // Some SDKs send numeric user ids.
    let ev = decode(&with(with(segment_track(), "userId", json!(12345)), "messageId", json!(987))).unwrap();
    assert_eq!((ev.prospect.as_ref(), ev.event_id.as_ref()), ("12345", "987"));
    // An epoch number is not an RFC 3339 timestamp.
    let err = decode(&with(canonical(), "ts", json!(1772715600))).unwrap_err();
    assert_eq!(err.reason(), RejectReason::BadTimestamp);
    assert!(err.to_string().contains("`ts`") && err.to_string().contains("1772715600"), "{err}");
}

#[test]
fn a_trait_email_that_is_not_a_string_is_ignored() {
    for traits in [json!({"email": 7}), json!({"email": {"work": "a@b.example"}}), json!(null), json!(["a@b.example"])]
    {
        let ev = decode(&with(segment_track(), "context", json!({"traits": traits.clone()}))).unwrap();
        assert_eq!(ev.email, None, "{traits}");
    }
}

#[test]
fn a_json_array_is_not_an_event() {
    // Neither a batch of events nor a positional list of envelope fields is one event.
    let batch = format!("[{}]", canonical());
    assert_refused(decode_bytes(batch.as_bytes()), RejectReason::InvalidJson, &["object"]);
    let positional = json!(["evt-1", "usr_1", "web", "page_viewed", "2026-03-05T13:00:00Z"]);
    assert_refused(decode(&positional), RejectReason::InvalidJson, &["object"]);
    // Leading whitespace before an object is fine.
    assert!(decode_bytes(format!(" \t\r\n{}", canonical()).as_bytes()).is_ok());
}

#[test]
fn missing_fields_are_named() {
    for field in ["prospect_id", "source", "type", "ts"] {
        assert_refused(
            decode(&without(canonical(), field)),
            RejectReason::MissingField,
            &[&format!("`{field}`"), "canonical envelope"],
        );
    }
    for (field, named) in [("type", "`type`"), ("timestamp", "`timestamp`"), ("event", "`event`")] {
        assert_refused(decode(&without(segment_track(), field)), RejectReason::MissingField, &[named, "Segment"]);
    }
    let anonymous = without(without(segment_track(), "userId"), "anonymousId");
    assert_refused(decode(&anonymous), RejectReason::MissingField, &["`userId or anonymousId`"]);
    // Neither envelope: the message says which id it looked for.
    let neither = without(canonical(), "event_id");
    assert_refused(decode(&neither), RejectReason::MissingField, &["`event_id`", "`messageId`"]);
    assert_refused(decode_bytes(b"{}"), RejectReason::MissingField, &["`event_id`"]);
}

#[test]
fn sent_at_and_received_at_alone_give_no_event_time() {
    let v = json!({"type": "page", "userId": "usr_1", "messageId": "m-1",
        "sentAt": "2026-03-07T09:20:00.215Z", "receivedAt": "2026-03-07T09:20:00.731Z"});
    assert_refused(decode(&v), RejectReason::MissingField, &["`timestamp`"]);
    let ev = decode(&with(v, "timestamp", json!("2026-03-07T09:20:00.628Z"))).unwrap();
    assert_eq!(ev.ts.to_string(), "2026-03-07T09:20:00.628Z");
}

#[test]
fn empty_fields_are_named() {
    for (field, value) in [("event_id", ""), ("prospect_id", "   "), ("type", ""), ("source", "")] {
        let result = decode(&with(canonical(), field, json!(value)));
        if field == "source" {
            // An empty source is not a known source.
            assert_refused(result, RejectReason::UnknownSource, &["source"]);
        } else {
            assert_refused(result, RejectReason::EmptyField, &[&format!("`{field}`"), "empty"]);
        }
    }
    assert_refused(decode(&with(segment_track(), "messageId", json!(" "))), RejectReason::EmptyField, &["`messageId`"]);
    assert_refused(decode(&with(segment_track(), "event", json!(""))), RejectReason::EmptyField, &["`event`"]);
    let anonymous = with(with(segment_track(), "userId", json!(null)), "anonymousId", json!(""));
    assert_refused(decode(&anonymous), RejectReason::EmptyField, &["`userId or anonymousId`"]);
}

#[test]
fn over_long_ids_are_named() {
    let at_limit = "u".repeat(256);
    assert_eq!(decode(&with(canonical(), "prospect_id", json!(at_limit))).unwrap().prospect, at_limit);
    for (field, v) in [("prospect_id", canonical()), ("event_id", canonical()), ("type", canonical())] {
        let result = decode(&with(v, field, json!("x".repeat(257))));
        assert_refused(result, RejectReason::FieldTooLong, &[&format!("`{field}`"), "257 bytes", "256-byte"]);
    }
    for field in ["messageId", "userId", "event"] {
        let result = decode(&with(segment_track(), field, json!("y".repeat(300))));
        assert_refused(result, RejectReason::FieldTooLong, &[&format!("`{field}`"), "300 bytes"]);
    }
    let journey = b2b();
    let limits = Limits { max_id_bytes: 8, ..Limits::default() };
    let err = codec::decode(canonical().to_string().as_bytes(), &journey, &limits).unwrap_err();
    assert_eq!(err, DecodeError::FieldTooLong { field: "event_id", len: 10, limit: 8 });
}

#[test]
fn bad_timestamps_are_named_with_their_value() {
    for (value, problem) in [
        ("yesterday", TimeError::Syntax),
        ("2026-03-07T09:20:00", TimeError::Syntax),
        ("03/07/2026 09:20", TimeError::Syntax),
        ("2026-03-32T10:00:00Z", TimeError::OutOfRange),
        ("2026-02-29T00:00:00Z", TimeError::OutOfRange),
        ("2026-03-07T09:20:00+25:00", TimeError::OutOfRange),
    ] {
        let err = decode(&with(canonical(), "ts", json!(value))).unwrap_err();
        assert_eq!(err, DecodeError::BadTimestamp { field: "ts", value: value.to_string(), problem });
        let msg = err.to_string();
        assert!(msg.contains("`ts`") && msg.contains(value), "{msg}");
        assert_eq!(err.reason().as_str(), "bad_timestamp");
    }
    let result = decode(&with(segment_track(), "timestamp", json!("2026-13-01T00:00:00Z")));
    assert_refused(result, RejectReason::BadTimestamp, &["`timestamp`", "2026-13-01T00:00:00Z", "out of range"]);
    // A huge value is cut in the message, never echoed whole.
    let err = decode(&with(canonical(), "ts", json!("9".repeat(10_000)))).unwrap_err();
    assert!(err.to_string().len() < 300, "{err}");
}

#[test]
fn unknown_source_is_named() {
    for s in ["email", "WEBSITE", "Crm2", "segment"] {
        let err = decode(&with(canonical(), "source", json!(s))).unwrap_err();
        assert_eq!(err, DecodeError::UnknownSource(s.to_string()));
        let msg = err.to_string();
        assert!(msg.contains("source") && msg.contains(s), "{msg}");
    }
    // Segment payloads may say where they came from; the same rule applies.
    assert_refused(decode(&with(segment_track(), "source", json!("email"))), RejectReason::UnknownSource, &["email"]);
    assert_eq!(decode(&with(segment_track(), "source", json!("crm"))).unwrap().source, Source::Crm);
    assert_eq!(decode(&segment_track()).unwrap().source, Source::Web);
}

#[test]
fn unsupported_segment_call_types_are_named() {
    for t in ["batch", "Track", "merge"] {
        let err = decode(&with(segment_track(), "type", json!(t))).unwrap_err();
        assert_eq!(err, DecodeError::UnsupportedType(t.to_string()));
        let msg = err.to_string();
        assert!(msg.contains("type") && msg.contains(t), "{msg}");
    }
}

// ---- Segment identity and payload details -------------------------------------------------------

#[test]
fn null_or_blank_user_id_falls_back_to_anonymous_id() {
    for user in [json!(null), json!(""), json!("  ")] {
        let ev = decode(&with(segment_track(), "userId", user.clone())).unwrap();
        assert_eq!(ev.prospect, "3b1f6c2e-9d0a-4f5e-8a77-2c1d9e4b5a60", "userId {user}");
    }
    let ev = decode(&without(segment_track(), "userId")).unwrap();
    assert_eq!(ev.prospect, "3b1f6c2e-9d0a-4f5e-8a77-2c1d9e4b5a60");
    // A known user wins over the anonymous id.
    assert_eq!(decode(&segment_track()).unwrap().prospect, "usr_8812");
    assert_eq!(decode(&without(segment_track(), "anonymousId")).unwrap().prospect, "usr_8812");
}

#[test]
fn escaped_strings_decode() {
    let line = br#"{"event_id":"sfdc\u002Devt\/7","prospect_id":"usr_\"8812\"","source":"cr\u006d","type":"quote\u005fsent","ts":"2026-03-05T15:00:00\u005A","email":"Dana.Whitfield\u0040Northwind.example"}"#;
    let journey = b2b();
    let ev = codec::decode(line, &journey, &Limits::default()).unwrap();
    assert_eq!(ev.event_id, "sfdc-evt/7");
    assert!(matches!(ev.event_id, Cow::Owned(_)));
    assert_eq!(ev.prospect, "usr_\"8812\"");
    assert_eq!(ev.source, Source::Crm);
    assert_eq!(ev.name, "quote_sent");
    assert_eq!(ev.signal, journey.lookup("quote_sent"));
    assert_eq!(ev.ts.to_string(), "2026-03-05T15:00:00.000Z");
    assert_eq!(ev.email.as_deref(), Some("dana.whitfield@northwind.example"));

    let track = r#"{"type":"track","event":"Demo\u0020Requested","userId":"usr_\u00e9l\u00e8ve","messageId":"ajs-\ud83d\ude80","timestamp":"2026-03-04T10:12:00Z"}"#;
    let ev = codec::decode(track.as_bytes(), &journey, &Limits::default()).unwrap();
    assert_eq!(ev.name, "Demo Requested");
    assert_eq!(ev.signal, journey.lookup("demo_requested"));
    assert_eq!(ev.prospect, "usr_élève");
    assert_eq!(ev.event_id, "ajs-🚀");
    // An unpaired surrogate is not valid JSON text.
    let bad = track.replace(r"\ud83d\ude80", r"\ud83d");
    assert_eq!(decode_bytes(bad.as_bytes()).unwrap_err().reason(), RejectReason::InvalidJson);
}

#[test]
fn plain_strings_borrow_from_the_input() {
    let line = canonical().to_string();
    let journey = b2b();
    let ev = codec::decode(line.as_bytes(), &journey, &Limits::default()).unwrap();
    assert!(matches!(ev.event_id, Cow::Borrowed(_)));
    assert!(matches!(ev.prospect, Cow::Borrowed(_)));
}

#[test]
fn emails_are_lower_cased_and_implausible_ones_dropped() {
    let email = |v: Value| decode(&v).unwrap().email.map(|e| e.into_owned());
    assert_eq!(
        email(with(canonical(), "email", json!("Dana.Whitfield@Northwind.example"))).as_deref(),
        Some("dana.whitfield@northwind.example")
    );
    assert_eq!(
        email(with(canonical(), "email", json!("  li.wei@contoso.example "))).as_deref(),
        Some("li.wei@contoso.example")
    );
    assert_eq!(
        email(with(canonical(), "email", json!("ørsted@energinet.example"))).as_deref(),
        Some("ørsted@energinet.example")
    );
    // Upper case outside ASCII is lower-cased too, so both spellings are the same person.
    assert_eq!(
        email(with(canonical(), "email", json!("Ørsted@energinet.example"))).as_deref(),
        Some("ørsted@energinet.example")
    );
    assert_eq!(
        email(with(canonical(), "email", json!("ÉLODIE@LITWARE.EXAMPLE"))).as_deref(),
        Some("élodie@litware.example")
    );
    for junk in ["n/a", "", "@", "dana.whitfield.northwind.example"] {
        assert_eq!(email(with(canonical(), "email", json!(junk))), None, "{junk}");
    }
    assert_eq!(email(with(canonical(), "email", json!(null))), None);

    // Segment identify: its own traits first (context.traits may be cached from earlier).
    let identify = json!({"type": "identify", "userId": "usr_9920", "messageId": "ajs-identify-1",
        "timestamp": "2026-03-10T11:58:00.580Z", "traits": {"email": "LI.WEI@CONTOSO.EXAMPLE", "company": {"name": "Contoso"}}});
    let ev = decode(&identify).unwrap();
    assert_eq!(ev.kind, EventKind::Identify);
    assert_eq!(ev.email.as_deref(), Some("li.wei@contoso.example"));
    let both = with(
        identify.clone(),
        "context",
        json!({"traits": {"email": "Li.Wei@Contoso-Group.example"}, "ip": "203.0.113.9"}),
    );
    assert_eq!(decode(&both).unwrap().email.as_deref(), Some("li.wei@contoso.example"));
    // Without its own, the context's.
    let context_only = with(without(both.clone(), "traits"), "traits", json!({"name": "Li Wei"}));
    assert_eq!(decode(&context_only).unwrap().email.as_deref(), Some("li.wei@contoso-group.example"));
    // Other calls: context.traits first, then top-level traits.
    let track = with(with(both, "type", json!("track")), "event", json!("Demo Requested"));
    assert_eq!(decode(&track).unwrap().email.as_deref(), Some("li.wei@contoso-group.example"));
}

#[test]
fn unknown_fields_and_nulls_are_ignored() {
    let v = with(with(canonical(), "properties", json!(null)), "extra", json!({"a": [1, 2, {"b": null}]}));
    let ev = decode(&v).unwrap();
    assert_eq!(ev.prospect, "usr_8812");
    let v = with(
        segment_track(),
        "context",
        json!({"traits": null, "campaign": {"source": "google"}, "library": {"name": "analytics.js"}}),
    );
    assert_eq!(decode(&v).unwrap().email, None);
}

#[test]
fn fixtures_decode_as_expected() {
    for line in PLAYBOOK.lines() {
        decode_bytes(line.as_bytes()).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    let labels: Vec<Option<&str>> = MALFORMED
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| decode_bytes(l.as_bytes()).err().map(|e| e.reason().as_str()))
        .collect();
    for label in [
        "invalid_json",
        "missing_field",
        "bad_timestamp",
        "unknown_source",
        "unsupported_type",
        "too_deep",
        "empty_field",
        "field_too_long",
    ] {
        assert!(labels.contains(&Some(label)), "malformed.jsonl should exercise {label}");
    }
    assert!(labels.iter().filter(|l| l.is_none()).count() >= 5, "malformed.jsonl mixes in good lines");
}

// ---- never panics -----------------------------------------------------------------------------

fn valid_lines() -> Vec<&'static str> {
    PLAYBOOK.lines().chain(MALFORMED.lines()).filter(|l| !l.is_empty()).collect()
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip { at: usize, bit: u8 },
    Insert { at: usize, byte: u8 },
    Delete { at: usize, len: usize },
    Truncate { at: usize },
    Duplicate { at: usize, len: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let json_byte = prop::sample::select(b"{}[]\":,\\ 0123456789.-eEtfn\x00\xff\xc3".to_vec());
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (any::<usize>(), prop_oneof![any::<u8>(), json_byte]).prop_map(|(at, byte)| Mutation::Insert { at, byte }),
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Mutation::Delete { at, len }),
        any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        (any::<usize>(), 1usize..64).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
    ]
}

fn mutate(line: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut b = line.to_vec();
    for m in mutations {
        let n = b.len().max(1);
        match *m {
            Mutation::Flip { at, bit } => {
                if !b.is_empty() {
                    let i = at % n;
                    b[i] ^= 1 << bit;
                }
            }
            Mutation::Insert { at, byte } => b.insert(at % (b.len() + 1), byte),
            Mutation::Delete { at, len } => {
                let i = at % n;
                let end = (i + len).min(b.len());
                b.drain(i.min(b.len())..end);
            }
            Mutation::Truncate { at } => b.truncate(at % n),
            Mutation::Duplicate { at, len } => {
                let i = at % n;
                let end = (i + len).min(b.len());
                let piece = b.get(i..end).unwrap_or_default().to_vec();
                b.splice(i.min(b.len())..i.min(b.len()), piece);
            }
        }
    }
    b
}

/// Decodes with tight limits too, and applies whatever decodes: nothing may panic.
fn exercise(journey: &Arc<Journey>, engine: &mut Engine, bytes: &[u8]) {
    let tight = Limits { max_bytes: 512, max_depth: 4, max_id_bytes: 16 };
    let _ = codec::decode(bytes, journey, &tight);
    let mut out = Vec::new();
    if let Ok(ev) = codec::decode(bytes, journey, &Limits::default()) {
        engine.apply(&ev, &mut out);
        let mut buf = Vec::new();
        for o in &out {
            buf.clear();
            codec::write_output(engine, o, &mut buf).unwrap();
            serde_json::from_slice::<Value>(&buf).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics_on_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let journey = Arc::new(b2b());
        let mut engine = Engine::new(Arc::clone(&journey));
        exercise(&journey, &mut engine, &bytes);
    }

    #[test]
    fn decode_never_panics_on_json_like_text(text in r#"[{}\[\]":,a-zA-Z0-9_ .@+\\-]{0,300}"#) {
        let journey = Arc::new(b2b());
        let mut engine = Engine::new(Arc::clone(&journey));
        exercise(&journey, &mut engine, text.as_bytes());
    }

    #[test]
    fn decode_never_panics_on_mutated_valid_lines(
        picks in prop::collection::vec((any::<prop::sample::Index>(), prop::collection::vec(mutation(), 1..6)), 1..8),
    ) {
        let journey = Arc::new(b2b());
        let mut engine = Engine::new(Arc::clone(&journey));
        let lines = valid_lines();
        for (pick, mutations) in picks {
            let line = lines[pick.index(lines.len())].as_bytes();
            let bytes = mutate(line, &mutations);
            exercise(&journey, &mut engine, &bytes);
        }
    }

    #[test]
    fn decode_never_panics_on_odd_field_values(
        key in prop::sample::select(vec!["event_id", "prospect_id", "source", "type", "ts", "email", "properties",
            "messageId", "userId", "anonymousId", "event", "timestamp", "traits", "context"]),
        value in prop_oneof![
            Just(json!(null)),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,40}".prop_map(|s| json!(s)),
            Just(json!([])),
            Just(json!({"email": "A@B.C"})),
            Just(json!({"traits": {"email": "Ø@x.example"}})),
            r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?(Z|[+-][0-9]{2}:[0-9]{2})?"
                .prop_map(|s| json!(s)),
        ],
        segment in any::<bool>(),
    ) {
        let journey = Arc::new(b2b());
        let mut engine = Engine::new(Arc::clone(&journey));
        let base = if segment { segment_track() } else { canonical() };
        exercise(&journey, &mut engine, with(base, key, value).to_string().as_bytes());
    }
}

#[test]
fn segment_payload_without_server_timestamp_uses_original_timestamp() {
    let v = with(without(segment_track(), "timestamp"), "originalTimestamp", json!("2026-03-04T10:11:59.500Z"));
    let ev = decode(&v).expect("client-side payloads decode");
    assert_eq!(ev.ts.to_string(), "2026-03-04T10:11:59.500Z");
    let both = with(segment_track(), "originalTimestamp", json!("2026-03-04T10:11:59.500Z"));
    assert_eq!(decode(&both).unwrap().ts.to_string(), "2026-03-04T10:12:00.000Z", "`timestamp` wins when present");
    assert_refused(decode(&without(segment_track(), "timestamp")), RejectReason::MissingField, &["timestamp"]);
}

#[test]
fn source_is_matched_without_regard_to_case() {
    let ev = decode(&with(canonical(), "source", json!("CRM"))).unwrap();
    assert_eq!(ev.source, Source::Crm);
    assert_refused(decode(&with(canonical(), "source", json!("erp"))), RejectReason::UnknownSource, &["erp"]);
}
