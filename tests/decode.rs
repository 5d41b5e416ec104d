//! `codec::decode`: every way a payload can be refused, the Segment identity rules, escapes, and
//! that no input whatsoever makes it (or the engine behind it) panic.

use std::borrow::Cow;
use std::sync::Arc;

use microfunnel::codec::{self, DecodeError, Limits};
use microfunnel::core::time::TimeError;
use microfunnel::core::{Engine, EventKind, Journey, RejectReason, Source, Ts};
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
    let cases: [(DecodeError, &str); 13] = [
        (DecodeError::TooLarge { size: 2, limit: 1 }, "too_large"),
        (DecodeError::TooDeep { limit: 1 }, "too_deep"),
        (DecodeError::InvalidJson(String::new()), "invalid_json"),
        (DecodeError::MissingField { field: "ts", format: "x" }, "missing_field"),
        (DecodeError::EmptyField { field: "ts" }, "empty_field"),
        (DecodeError::FieldTooLong { field: "ts", len: 2, limit: 1 }, "field_too_long"),
        (DecodeError::BadTimestamp { field: "ts", value: String::new(), problem: TimeError::Syntax }, "bad_timestamp"),
        (DecodeError::UnknownSource(String::new()), "unknown_source"),
        (DecodeError::UnsupportedType(String::new()), "unsupported_type"),
        (DecodeError::TooEarly { field: "ts", value: Ts(0), min: Ts(1) }, "bad_timestamp"),
        (DecodeError::Placeholder { field: "prospect_id", value: String::new() }, "missing_field"),
        (DecodeError::InvalidId { field: "userId", at: 0 }, "invalid_id"),
        (DecodeError::UnexpectedBatch { items: 1, hint: "" }, "unsupported_type"),
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

/// Decodes with tight limits too, and applies whatever decodes (each batch item): nothing may
/// panic.
fn exercise(journey: &Arc<Journey>, engine: &mut Engine, bytes: &[u8]) {
    let tight = Limits { max_bytes: 512, max_depth: 4, max_id_bytes: 16 };
    let _ = codec::decode(bytes, journey, &tight);
    let _ = codec::decode_each(bytes, journey, &tight).count();
    let mut out = Vec::new();
    for ev in codec::decode_each(bytes, journey, &Limits::default()).filter_map(|(_, r)| r.ok()) {
        out.clear();
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
            "messageId", "userId", "anonymousId", "event", "timestamp", "traits", "context", "originalTimestamp",
            "sentAt", "receivedAt", "batch"]),
        value in prop_oneof![
            Just(json!(null)),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,40}".prop_map(|s| json!(s)),
            Just(json!([])),
            Just(json!({"email": "A@B.C"})),
            Just(json!({"traits": {"email": "Ø@x.example"}})),
            Just(json!([segment_track(), canonical(), 5, {"batch": []}])),
            Just(json!("undefined")),
            Just(json!("a\u{0}b")),
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

// ---- ids as trackers send them ------------------------------------------------------------------

const ANON: &str = "3b1f6c2e-9d0a-4f5e-8a77-2c1d9e4b5a60";

#[test]
fn placeholder_user_ids_fall_back_to_the_anonymous_id() {
    for user in [
        json!("undefined"),
        json!("UNDEFINED"),
        json!(" Undefined "),
        json!("null"),
        json!("NULL"),
        json!("None"),
        json!("nil"),
        json!("Anonymous"),
        json!("n/a"),
        json!("N/A"),
        json!("0"),
        json!("-1"),
        json!(0),
        json!(-1),
        json!("00000000-0000-0000-0000-000000000000"),
        json!(" \t00000000-0000-0000-0000-000000000000\n"),
    ] {
        let ev = decode(&with(segment_track(), "userId", user.clone())).unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(ev.prospect, ANON, "userId {user}");
    }
    // Ids that merely contain or resemble a placeholder are ids.
    for real in ["null_user", "0x1", "undefined-42", "10", "-12", "00000000-0000-0000-0000-000000000001", "nullable"] {
        assert_eq!(decode(&with(segment_track(), "userId", json!(real))).unwrap().prospect, real);
    }
}

#[test]
fn a_placeholder_with_no_usable_fallback_is_a_missing_prospect() {
    let both = with(with(segment_track(), "userId", json!("undefined")), "anonymousId", json!("null"));
    assert_refused(
        decode(&both),
        RejectReason::MissingField,
        &["`userId or anonymousId`", "placeholder", "\"undefined\""],
    );
    let alone = without(with(segment_track(), "userId", json!("undefined")), "anonymousId");
    assert_refused(decode(&alone), RejectReason::MissingField, &["placeholder", "[identity] placeholder_ids"]);
    let anonymous_placeholder = with(without(segment_track(), "userId"), "anonymousId", json!("Anonymous"));
    assert_refused(decode(&anonymous_placeholder), RejectReason::MissingField, &["placeholder", "\"Anonymous\""]);
    // The canonical envelope has no fallback.
    for p in ["undefined", " NULL ", "0"] {
        assert_refused(
            decode(&with(canonical(), "prospect_id", json!(p))),
            RejectReason::MissingField,
            &["`prospect_id`", "placeholder"],
        );
    }
}

#[test]
fn the_placeholder_list_comes_from_the_journey() {
    let journey =
        Journey::from_toml_str(&format!("{B2B}\n[identity]\nplaceholder_ids = [\"guest\", \" Visitor \"]\n")).unwrap();
    let decode_in =
        |v: &Value| codec::decode(v.to_string().as_bytes(), &journey, &Limits::default()).map(|e| e.into_owned());
    for user in ["guest", "GUEST", "visitor", "  Visitor"] {
        assert_eq!(decode_in(&with(segment_track(), "userId", json!(user))).unwrap().prospect, ANON, "{user}");
    }
    // Not on this journey's list: an id like any other.
    assert_eq!(decode_in(&with(segment_track(), "userId", json!("undefined"))).unwrap().prospect, "undefined");
    let err = decode_in(&with(canonical(), "prospect_id", json!("Guest"))).unwrap_err();
    assert_eq!(err.reason(), RejectReason::MissingField);
    // An empty list turns the rule off.
    let off = Journey::from_toml_str(&format!("{B2B}\n[identity]\nplaceholder_ids = []\n")).unwrap();
    let v = with(canonical(), "prospect_id", json!("undefined"));
    assert_eq!(codec::decode(v.to_string().as_bytes(), &off, &Limits::default()).unwrap().prospect, "undefined");
}

#[test]
fn ids_with_control_characters_are_invalid_ids() {
    for bad in ["usr\u{0}1", "\u{1f}usr", "usr_1\u{7f}", "usr\n1", "u\u{1b}[31m"] {
        for (base, field) in [
            (canonical(), "event_id"),
            (canonical(), "prospect_id"),
            (segment_track(), "messageId"),
            (segment_track(), "userId"),
            (segment_track(), "anonymousId"),
        ] {
            let v = with(base, field, json!(bad));
            let err = decode(&v).expect_err(&format!("{field} {bad:?}"));
            assert_eq!(err.reason(), RejectReason::InvalidId, "{field} {bad:?}: {err}");
            assert_eq!(err.reason().as_str(), "invalid_id");
            assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
        }
    }
    // A control character in the anonymous id refuses the payload even when userId is used, and
    // in a user id even though an anonymous id could stand in.
    let v = with(segment_track(), "anonymousId", json!("a\u{0}"));
    assert_refused(decode(&v), RejectReason::InvalidId, &["`anonymousId`", "byte 1"]);
    // Raw DEL is valid JSON text and reaches the check on the scanner's path.
    let raw = segment_track().to_string().replace("usr_8812", "usr_\u{7f}8812");
    assert_refused(decode_bytes(raw.as_bytes()), RejectReason::InvalidId, &["`userId`", "byte 4"]);
    // Outside ids, escapes stay fine.
    let v = with(segment_track(), "event", json!("Demo\tRequested"));
    assert!(decode(&v).is_ok());
}

#[test]
fn identify_prefers_its_own_traits_email_other_calls_their_context() {
    let call = |t: &str| {
        json!({"type": t, "event": "Demo Requested", "userId": "usr_7", "messageId": "m-1",
            "timestamp": "2026-03-02T09:00:00Z", "traits": {"email": "New@Example.com"},
            "context": {"traits": {"email": "stale@example.com"}}})
    };
    assert_eq!(decode(&call("identify")).unwrap().email.as_deref(), Some("new@example.com"));
    assert_eq!(decode(&call("track")).unwrap().email.as_deref(), Some("stale@example.com"));
    assert_eq!(decode(&call("page")).unwrap().email.as_deref(), Some("stale@example.com"));
    // An implausible identify trait does not hide the context's.
    let junk = with(call("identify"), "traits", json!({"email": "n/a"}));
    assert_eq!(decode(&junk).unwrap().email.as_deref(), Some("stale@example.com"));
}

#[test]
fn every_id_a_segment_call_carries_is_decoded() {
    // userId is the prospect; the anonymousId it was known by before is the linked id.
    let ev = decode(&segment_track()).unwrap();
    assert_eq!((&*ev.prospect, ev.linked.as_deref(), ev.anonymous), ("usr_8812", Some(ANON), false));
    let identify = json!({"type": "identify", "userId": "usr_1", "anonymousId": "anon-1", "messageId": "m-1",
        "timestamp": "2026-03-02T09:00:00Z", "traits": {"email": "  Ana@Example.COM "}});
    let ev = decode(&identify).unwrap();
    assert_eq!(
        (ev.kind, &*ev.prospect, ev.linked.as_deref(), ev.email.as_deref()),
        (EventKind::Identify, "usr_1", Some("anon-1"), Some("ana@example.com"))
    );
    // Only an anonymousId: no link, and the prospect is anonymous; the same id twice: no link.
    let ev = decode(&without(segment_track(), "userId")).unwrap();
    assert_eq!((&*ev.prospect, ev.linked, ev.anonymous), (ANON, None, true));
    assert_eq!(decode(&with(segment_track(), "anonymousId", json!("usr_8812"))).unwrap().linked, None);
    // A placeholder or blank on either side never links.
    for p in ["undefined", "0", "0000", "guest", "[object Object]", "  "] {
        let ev = decode(&with(segment_track(), "anonymousId", json!(p))).unwrap();
        assert_eq!((&*ev.prospect, ev.linked.as_deref()), ("usr_8812", None), "{p:?}");
        let ev = decode(&with(segment_track(), "userId", json!(p))).unwrap();
        assert_eq!((&*ev.prospect, ev.linked.as_deref(), ev.anonymous), (ANON, None, true), "{p:?}");
    }
    // An anonymousId too long for an id gives no link but keeps the event.
    let long = "a".repeat(300);
    assert_eq!(decode(&with(segment_track(), "anonymousId", json!(long))).unwrap().linked, None);
    // The canonical envelope names one id; its email is the other identifier.
    let ev = decode(&with(canonical(), "email", json!("Ana@Example.com"))).unwrap();
    assert_eq!((ev.linked, ev.email.as_deref(), ev.anonymous), (None, Some("ana@example.com"), false));
}

#[test]
fn an_alias_links_its_previous_id() {
    let alias = json!({"type": "alias", "previousId": "anon-9", "userId": "usr_9", "messageId": "m-3",
        "timestamp": "2026-03-05T09:06:40.000Z"});
    let ev = decode(&alias).unwrap();
    assert_eq!((ev.kind, &*ev.prospect, ev.linked.as_deref()), (EventKind::Alias, "usr_9", Some("anon-9")));
    // previousId wins over anonymousId; numbers are ids as elsewhere.
    let both = with(alias.clone(), "anonymousId", json!("anon-device"));
    assert_eq!(decode(&both).unwrap().linked.as_deref(), Some("anon-9"));
    assert_eq!(decode(&with(alias.clone(), "previousId", json!(42))).unwrap().linked.as_deref(), Some("42"));
    // A placeholder previousId, or one equal to the userId, links nothing of its own.
    assert_eq!(decode(&with(alias.clone(), "previousId", json!("null"))).unwrap().linked, None);
    assert_eq!(
        decode(&with(both.clone(), "previousId", json!("undefined"))).unwrap().linked.as_deref(),
        Some("anon-device")
    );
    assert_eq!(decode(&with(alias.clone(), "previousId", json!("usr_9"))).unwrap().linked, None);
    assert_eq!(
        decode(&with(both.clone(), "previousId", json!("usr_9"))).unwrap().linked.as_deref(),
        Some("anon-device")
    );
    // A control character in it refuses the call, as in any other id.
    assert_refused(
        decode(&with(alias.clone(), "previousId", json!("anon\u{1}"))),
        RejectReason::InvalidId,
        &["previousId"],
    );
    // Only alias calls read previousId.
    let track = with(segment_track(), "previousId", json!("old"));
    assert_eq!(decode(&track).unwrap().linked.as_deref(), Some(ANON));
}

// ---- valid Segment traffic ------------------------------------------------------------------------

#[test]
fn group_and_alias_calls_decode_to_no_signal() {
    let group = json!({"type": "group", "groupId": "acct_1", "traits": {"name": "Litware"}, "userId": "usr_e1",
        "messageId": "m-2", "timestamp": "2026-03-02T09:00:05.000Z"});
    let ev = decode(&group).unwrap();
    assert_eq!((ev.kind, ev.signal, &*ev.prospect, &*ev.name), (EventKind::Group, None, "usr_e1", ""));
    let anonymous_group = with(without(group, "userId"), "anonymousId", json!("anon-7"));
    assert_eq!(decode(&anonymous_group).unwrap().prospect, "anon-7");
    // An alias carries the new userId and the previousId it replaces, nothing else.
    let alias = json!({"type": "alias", "previousId": ANON, "userId": "usr_1201", "messageId": "m-3",
        "timestamp": "2026-03-05T09:06:40.000Z"});
    let ev = decode(&alias).unwrap();
    assert_eq!((ev.kind, ev.signal, &*ev.prospect), (EventKind::Alias, None, "usr_1201"));
    // Even a journey that maps everything else does not map them.
    let journey = b2b();
    assert_eq!(journey.resolve(EventKind::Group, "Demo Requested"), None);
    assert_eq!(journey.resolve(EventKind::Alias, "demo_requested"), None);
}

#[test]
fn group_and_alias_are_ignored_even_when_unmapped_events_are_rejected() {
    let journey = Arc::new(
        Journey::from_toml_str(&B2B.replace("unmapped_events = \"ignore\"", "unmapped_events = \"reject\"")).unwrap(),
    );
    assert_eq!(journey.unmapped, microfunnel::core::journey::UnmappedPolicy::Reject);
    let mut engine = Engine::new(Arc::clone(&journey));
    let mut out = Vec::new();
    for line in [
        r#"{"type":"group","groupId":"acct_1","userId":"usr_e1","messageId":"m-2","timestamp":"2026-03-02T09:00:05.000Z"}"#,
        r#"{"type":"alias","previousId":"anon-1","userId":"usr_e1","messageId":"m-3","timestamp":"2026-03-02T09:00:06.000Z"}"#,
    ] {
        let ev = codec::decode(line.as_bytes(), &journey, &Limits::default()).unwrap();
        engine.apply(&ev, &mut out);
    }
    assert!(out.is_empty(), "{out:?}");
    assert_eq!((engine.stats().ignored, engine.stats().rejected, engine.stats().unmapped), (2, 0, 0));
    // An unmapped track call is still rejected under this journey.
    let track = r#"{"type":"track","event":"Video Played","userId":"usr_e1","messageId":"m-4","timestamp":"2026-03-02T09:00:07.000Z"}"#;
    engine.apply(&codec::decode(track.as_bytes(), &journey, &Limits::default()).unwrap(), &mut out);
    assert_eq!(engine.stats().rejected, 1);
}

#[test]
fn event_names_match_whatever_their_case_and_separators() {
    let journey = b2b();
    let demo = journey.lookup("demo_requested");
    assert!(demo.is_some());
    for name in [
        "demoRequested",
        "DemoRequested",
        "demo-requested",
        "Demo Requested",
        "DEMO_REQUESTED",
        "demo.requested",
        "demo__requested",
        "demo requested",
        "demorequested",
        "  Demo-Requested  ",
    ] {
        let ev = decode(&with(segment_track(), "event", json!(name))).unwrap();
        assert_eq!(ev.signal, demo, "{name}");
        assert_eq!(&*ev.name, name, "the name is kept as sent");
    }
    assert_eq!(journey.lookup("quoteRequested"), journey.lookup("quote_requested"));
    assert_eq!(journey.lookup("whitepaperDownloaded"), journey.lookup("content_downloaded"));
    assert_eq!(journey.lookup("QUOTE-CLARIFICATION-REQUESTED"), journey.lookup("quote_clarification_requested"));
    // Longer than the stack key and non-ASCII take the allocating path, with the same rule.
    let long = format!("demo{}Requested", "-".repeat(200));
    assert_eq!(journey.lookup(&long), demo);
    assert_eq!(journey.lookup("Démo Requested"), None);
    assert_eq!(journey.lookup("demo_request"), None);
    assert_eq!(journey.lookup("demo_requested_2"), None);
}

// ---- event time ---------------------------------------------------------------------------------

#[test]
fn offsets_without_a_colon_are_accepted() {
    for (ts, utc) in [
        ("2026-03-02T09:00:00.000+0000", "2026-03-02T09:00:00.000Z"),
        ("2026-03-02T14:30:00.000+0530", "2026-03-02T09:00:00.000Z"),
        ("2026-03-02T03:30:00-0530", "2026-03-02T09:00:00.000Z"),
        ("2026-03-02T10:00:00+01", "2026-03-02T09:00:00.000Z"),
        ("2026-03-02T09:00:00.000+00:00", "2026-03-02T09:00:00.000Z"),
    ] {
        assert_eq!(decode(&with(segment_track(), "timestamp", json!(ts))).unwrap().ts.to_string(), utc, "{ts}");
        assert_eq!(decode(&with(canonical(), "ts", json!(ts))).unwrap().ts.to_string(), utc, "{ts}");
    }
    for bad in
        ["2026-03-02T09:00:00+000", "2026-03-02T09:00:00+00000", "2026-03-02T09:00:00+0", "2026-03-02T09:00:00+2400"]
    {
        let err = decode(&with(segment_track(), "timestamp", json!(bad))).unwrap_err();
        assert_eq!(err.reason(), RejectReason::BadTimestamp, "{bad}");
    }
}

/// Line 1 of the Segment sample, as Segment's servers deliver it (the four times agree:
/// timestamp = receivedAt − (sentAt − originalTimestamp)).
const PAGE: &str = r#"{"anonymousId":"3b1f6c2e-9d0a-4f5e-8a77-2c1d9e4b5a60","channel":"client","context":{"library":{"name":"analytics.js","version":"next-1.72.0"},"page":{"path":"/pricing","title":"Pricing"},"userAgent":"Mozilla/5.0"},"messageId":"ajs-next-1772875200112-5f0c3a9e","originalTimestamp":"2026-03-07T09:20:00.112Z","properties":{"path":"/pricing"},"receivedAt":"2026-03-07T09:20:00.731Z","sentAt":"2026-03-07T09:20:00.215Z","timestamp":"2026-03-07T09:20:00.628Z","type":"page","userId":null}"#;

fn page() -> Value {
    serde_json::from_str(PAGE).unwrap()
}

#[test]
fn without_timestamp_segment_corrects_the_client_clock_as_segment_does() {
    assert_eq!(decode(&page()).unwrap().ts.to_string(), "2026-03-07T09:20:00.628Z");
    // The payload as it left the browser and reached a server without Segment's own timestamp.
    let raw = without(page(), "timestamp");
    assert_eq!(decode(&raw).unwrap().ts.to_string(), "2026-03-07T09:20:00.628Z");
    // A phone whose clock is two days behind: the server's receipt time decides.
    let skewed = json!({"type": "track", "event": "Demo Requested", "userId": "usr_3", "messageId": "m-9",
        "originalTimestamp": "2026-02-28T08:59:50.000Z", "sentAt": "2026-02-28T09:00:00.000Z",
        "receivedAt": "2026-03-02T09:00:01.500Z"});
    assert_eq!(decode(&skewed).unwrap().ts.to_string(), "2026-03-02T08:59:51.500Z");
    // Without both sentAt and receivedAt: originalTimestamp as sent.
    for missing in ["sentAt", "receivedAt"] {
        assert_eq!(decode(&without(raw.clone(), missing)).unwrap().ts.to_string(), "2026-03-07T09:20:00.112Z");
    }
    // The times it uses must be times.
    let bad = with(raw.clone(), "sentAt", json!("yesterday"));
    assert_refused(decode(&bad), RejectReason::BadTimestamp, &["`sentAt`", "yesterday"]);
    let bad = with(raw, "receivedAt", json!("2026-02-30T00:00:00Z"));
    assert_refused(decode(&bad), RejectReason::BadTimestamp, &["`receivedAt`"]);
}

#[test]
fn times_before_the_journey_floor_are_out_of_range() {
    for ts in ["1970-01-01T00:00:00.000Z", "1999-12-31T23:59:59.999Z", "0001-01-01T00:00:00Z"] {
        assert_refused(
            decode(&with(segment_track(), "timestamp", json!(ts))),
            RejectReason::BadTimestamp,
            &["`timestamp`", "out of range", "time.min_event_time", "2000-01-01T00:00:00.000Z"],
        );
        assert_refused(
            decode(&with(canonical(), "ts", json!(ts))),
            RejectReason::BadTimestamp,
            &["`ts`", "out of range", "time.min_event_time"],
        );
    }
    assert!(decode(&with(canonical(), "ts", json!("2000-01-01T00:00:00Z"))).is_ok(), "the floor itself is in range");
    let client_only = with(without(segment_track(), "timestamp"), "originalTimestamp", json!("1970-01-01T00:00:01Z"));
    assert_refused(decode(&client_only), RejectReason::BadTimestamp, &["`originalTimestamp`", "out of range"]);
    // A correction that lands before the floor names how it was computed.
    let corrected =
        with(with(client_only, "sentAt", json!("2026-03-02T09:00:00Z")), "receivedAt", json!("2026-03-02T09:00:00Z"));
    assert_refused(decode(&corrected), RejectReason::BadTimestamp, &["receivedAt - (sentAt - originalTimestamp)"]);
    // The journey sets the floor.
    let journey =
        Journey::from_toml_str(&B2B.replace("[time]", "[time]\nmin_event_time = \"2026-01-01T00:00:00+01:00\""))
            .unwrap();
    assert_eq!(journey.min_event_time.to_string(), "2025-12-31T23:00:00.000Z");
    let v = with(canonical(), "ts", json!("2025-12-31T22:59:59Z"));
    let err = codec::decode(v.to_string().as_bytes(), &journey, &Limits::default()).unwrap_err();
    assert_eq!(err.reason(), RejectReason::BadTimestamp);
    assert!(err.to_string().contains("out of range"), "{err}");
}

// ---- batches ------------------------------------------------------------------------------------

type Item = (Option<usize>, Result<microfunnel::core::Event<'static>, DecodeError>);

fn each(v: &Value) -> Vec<Item> {
    let bytes = v.to_string();
    codec::decode_each(bytes.as_bytes(), &b2b(), &Limits::default())
        .map(|(k, r)| (k, r.map(|e| e.into_owned())))
        .collect()
}

#[test]
fn a_single_payload_is_one_item_as_decode_gives_it() {
    for v in [canonical(), segment_track(), without(canonical(), "ts"), json!([1])] {
        let items = each(&v);
        assert_eq!(items, vec![(None, decode(&v))]);
    }
}

#[test]
fn a_batch_yields_each_item_validated_alone() {
    let batch = json!({"batch": [
        with(segment_track(), "messageId", json!("m-1")),
        without(with(segment_track(), "messageId", json!("m-2")), "timestamp"),
        {"type": "group", "groupId": "acct_1", "userId": "usr_8812", "messageId": "m-3", "timestamp": "2026-03-04T10:13:00Z"},
        "not an event",
        with(with(segment_track(), "messageId", json!("m-5")), "userId", json!("undefined")),
    ], "sentAt": "2026-03-04T10:14:00Z", "writeKey": "wk_123"});
    let items = each(&batch);
    assert_eq!(items.iter().map(|(k, _)| *k).collect::<Vec<_>>(), [0, 1, 2, 3, 4].map(Some));
    assert_eq!(items[0].1.as_ref().unwrap().event_id, "m-1");
    assert_eq!(items[1].1.as_ref().unwrap_err().reason(), RejectReason::MissingField);
    assert_eq!(items[2].1.as_ref().unwrap().kind, EventKind::Group);
    assert_eq!(items[3].1.as_ref().unwrap_err().reason(), RejectReason::InvalidJson);
    assert_eq!(items[4].1.as_ref().unwrap().prospect, ANON, "placeholders hold inside batches too");
    assert!(each(&json!({"batch": []})).is_empty());
}

#[test]
fn batch_context_and_sent_at_apply_to_items_without_their_own() {
    let item = |id: &str| with(with(segment_track(), "messageId", json!(id)), "userId", json!(id));
    let own = with(item("u2"), "context", json!({"traits": {"email": "Own@Example.com"}}));
    let client = with(
        with(without(item("u3"), "timestamp"), "originalTimestamp", json!("2026-03-04T10:00:00Z")),
        "receivedAt",
        json!("2026-03-04T10:05:10Z"),
    );
    let batch = json!({"batch": [item("u1"), own, client], "context": {"traits": {"email": "Batch@Example.com"},
        "library": {"name": "analytics-node"}}, "sentAt": "2026-03-04T10:00:10Z"});
    let items = each(&batch);
    let email = |k: usize| items[k].1.as_ref().unwrap().email.as_deref().map(str::to_string);
    assert_eq!(email(0).as_deref(), Some("batch@example.com"));
    assert_eq!(email(1).as_deref(), Some("own@example.com"), "an item's own context wins");
    assert_eq!(email(2).as_deref(), Some("batch@example.com"));
    // receivedAt − (batch sentAt − originalTimestamp)
    assert_eq!(items[2].1.as_ref().unwrap().ts.to_string(), "2026-03-04T10:05:00.000Z");
}

#[test]
fn decode_refuses_a_batch_and_batches_do_not_nest() {
    let batch = json!({"batch": [segment_track(), canonical()]});
    assert_refused(decode(&batch), RejectReason::UnsupportedType, &["batch", "2 events", "decode_each"]);
    let nested = json!({"batch": [{"batch": [segment_track()]}]});
    let items = each(&nested);
    assert_eq!(items.len(), 1);
    let err = items[0].1.as_ref().unwrap_err();
    assert_eq!(err.reason(), RejectReason::UnsupportedType);
    assert!(err.to_string().contains("batch inside a batch"), "{err}");
    for not_a_list in [json!({"batch": {"type": "track"}}), json!({"batch": "x"}), json!({"batch": 3})] {
        let items = each(&not_a_list);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].0, None, "the envelope itself is bad: one error for the payload");
        assert_eq!(items[0].1.as_ref().unwrap_err().reason(), RejectReason::InvalidJson);
    }
    // The envelope counts against the payload limits as a whole.
    let limits = Limits { max_bytes: 100, ..Limits::default() };
    let big = json!({"batch": [segment_track(), segment_track()]}).to_string();
    let items: Vec<_> = codec::decode_each(big.as_bytes(), &b2b(), &limits).collect();
    assert!(matches!(items.as_slice(), [(None, Err(DecodeError::TooLarge { .. }))]), "{items:?}");
}

// ---- [[segment.pages]]: page and screen calls by name, category, path or URL ------------------

/// b2b with a pricing signal and page rules, as a SaaS site would map its pages.
fn with_page_rules() -> Journey {
    let text = format!(
        "{B2B}
[[signals]]
name = \"pricing_viewed\"
source = \"web\"
weight = 6.0
prospect_initiated = true

[[signals]]
name = \"docs_read\"
source = \"web\"
weight = 2.0
prospect_initiated = true

[[segment.pages]]
path = \"/pricing*\"
signal = \"pricing_viewed\"

[[segment.pages]]
category = \"docs\"
signal = \"docs_read\"

[[segment.pages]]
url = \"*://help.*\"
signal = \"docs_read\"

[[segment.pages]]
name = \"Plans\"
signal = \"pricing_viewed\"
"
    );
    Journey::from_toml_str(&text).expect("journey with page rules loads")
}

#[test]
fn a_pricing_page_visit_raises_its_own_signal() {
    let j = with_page_rules();
    let pricing = j.lookup("pricing_viewed");
    let docs = j.lookup("docs_read");
    let page_viewed = j.lookup("page_viewed");
    let page = |extra: Value| {
        let mut v = json!({"type": "page", "userId": "usr_1", "messageId": "m-1", "timestamp": "2026-03-04T10:12:00Z"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        v.to_string()
    };
    let cases = [
        (
            page(json!({"properties": {"path": "/pricing", "url": "https://acme.example/pricing?utm_source=x"}})),
            pricing,
        ),
        // The path of the URL when `properties.path` is absent; case is ignored.
        (page(json!({"properties": {"url": "https://acme.example/Pricing/teams?x=1"}})), pricing),
        (page(json!({"category": "Docs", "name": "Install", "properties": {"path": "/docs/install"}})), docs),
        (page(json!({"properties": {"url": "https://help.acme.example/a", "category": 5}})), docs),
        (page(json!({"name": "Plans", "properties": {"path": "/p"}})), pricing),
        (page(json!({"type": "screen", "name": "Plans"})), pricing),
        // No rule matches: the `[segment]` default.
        (page(json!({"name": "Blog", "properties": {"path": "/blog/x"}})), page_viewed),
        (page(json!({"properties": null})), page_viewed),
    ];
    for (line, want) in &cases {
        let fast = codec::decode(line.as_bytes(), &j, &Limits::default()).unwrap();
        let slow = codec::decode_with_serde(line.as_bytes(), &j, &Limits::default()).unwrap();
        assert_eq!(fast.signal, *want, "{line}");
        assert_eq!(slow, fast, "{line}");
    }
    // In a batch too.
    let batch = format!("{{\"batch\":[{}]}}", cases[0].0);
    let (_, ev) = codec::decode_each(batch.as_bytes(), &j, &Limits::default()).next().unwrap();
    assert_eq!(ev.unwrap().signal, pricing);
    // The journey without rules maps every page call to its default.
    assert_eq!(decode_bytes(cases[0].0.as_bytes()).unwrap().signal, b2b().lookup("page_viewed"));
}

#[test]
fn a_pricing_page_visit_scores_and_counts_as_its_own_signal() {
    let j = Arc::new(with_page_rules());
    let mut engine = Engine::new(j.clone());
    let mut out = Vec::new();
    let line = PLAYBOOK.lines().next().unwrap();
    let ev = codec::decode(line.as_bytes(), &j, &Limits::default()).unwrap();
    assert_eq!(ev.signal, j.lookup("pricing_viewed"), "the playbook's first line is a pricing page");
    engine.apply(&ev, &mut out);
    let id = ev.prospect.to_string();
    let view = engine.view(engine.find(&id).unwrap(), None);
    assert_eq!(view.score, 6.0);
    assert_eq!(view.signal_counts, [("pricing_viewed".to_string(), 1)]);
}
