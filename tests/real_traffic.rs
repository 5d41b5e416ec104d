//! Segment traffic as trackers really send it, through `microfunnel::replay::run` (the code the
//! `replay` command runs): placeholder user ids, `group`/`alias` calls, batch envelopes, offsets
//! without a colon, camelCase event names, client clock skew, implausibly old times, control
//! characters in ids, and a `funnel_summary` that counts every rejection by reason.

use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::{Journey, JourneyError};
use microfunnel::replay::{self, End, Options};
use serde_json::{Value, json};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

struct Run {
    lines: Vec<Value>,
    stderr: String,
}

impl Run {
    fn of_kind(&self, kind: &str) -> Vec<&Value> {
        self.lines.iter().filter(|l| l["kind"] == kind).collect()
    }

    fn summary(&self) -> &Value {
        self.lines.iter().find(|l| l["kind"] == "funnel_summary").expect("a funnel_summary")
    }

    fn stats(&self) -> &Value {
        &self.summary()["stats"]
    }

    /// (prospect, from, to) of every stage change.
    fn changes(&self) -> Vec<(String, Value, String)> {
        self.of_kind("stage_changed")
            .iter()
            .map(|c| (c["prospect"].as_str().unwrap().into(), c["from"].clone(), c["to"].as_str().unwrap().into()))
            .collect()
    }

    /// (line, item, reason) of every rejection on stderr.
    fn rejected(&self) -> Vec<(u64, Option<u64>, String)> {
        self.stderr
            .lines()
            .map(|l| {
                let rest = l.strip_prefix("line ").unwrap_or_else(|| panic!("{l}"));
                let (at, rest) = rest.split_once(": ").unwrap();
                let (reason, detail) = rest.split_once(": ").unwrap();
                assert!(!detail.is_empty(), "{l}");
                let (line, item) = match at.split_once(" item ") {
                    Some((n, k)) => (n.parse().unwrap(), Some(k.parse().unwrap())),
                    None => (at.parse().unwrap(), None),
                };
                (line, item, reason.to_string())
            })
            .collect()
    }
}

fn replay_with(journey: Journey, input: &str) -> Run {
    let opts = Options {
        limits: Limits::default(),
        end: End::LastEvent,
        digest: false,
        summary_only: false,
        partitions: 1,
        min_sample: microfunnel::core::funnel::MIN_SAMPLE,
        inputs: Vec::new(),
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    replay::run(Arc::new(journey), &opts, input.as_bytes(), &mut out, &mut err).expect("replay runs");
    let lines = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    Run { lines, stderr: String::from_utf8(err).unwrap() }
}

fn replay(input: &str) -> Run {
    replay_with(Journey::from_toml_str(B2B).unwrap(), input)
}

fn change(prospect: &str, from: Option<&str>, to: &str) -> (String, Value, String) {
    (prospect.into(), from.map_or(Value::Null, |f| json!(f)), to.into())
}

// ---- placeholder ids ----------------------------------------------------------------------------

#[test]
fn three_browsers_sending_user_id_undefined_are_three_prospects() {
    let run = replay(
        r#"{"type":"track","event":"Demo Requested","userId":"undefined","anonymousId":"anon-1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z"}
{"type":"track","event":"Demo Requested","userId":"undefined","anonymousId":"anon-2","messageId":"m-2","timestamp":"2026-03-02T09:01:00.000Z"}
{"type":"track","event":"Webinar Registered","userId":"undefined","anonymousId":"anon-3","messageId":"m-3","timestamp":"2026-03-02T09:02:00.000Z"}
"#,
    );
    assert_eq!(run.stderr, "");
    assert_eq!(
        run.changes(),
        [
            change("anon-1", None, "evaluating"),
            change("anon-2", None, "evaluating"),
            change("anon-3", None, "interested")
        ]
    );
    assert_eq!(run.summary()["census"]["prospects"], 3);
}

#[test]
fn other_placeholder_spellings_are_not_one_prospect_either() {
    let spellings = ["NULL", " none ", "Nil", "anonymous", "N/A", "0", "-1", "00000000-0000-0000-0000-000000000000"];
    let mut input = String::new();
    for (i, user) in spellings.iter().enumerate() {
        let line = json!({"type": "page", "userId": user, "anonymousId": format!("anon-{i}"),
            "messageId": format!("m-{i}"), "timestamp": format!("2026-03-02T09:0{i}:00.000Z")});
        input.push_str(&format!("{line}\n"));
    }
    // A number, as some SDKs send, and a canonical event with nothing to fall back to.
    input.push_str(
        r#"{"type":"page","userId":0,"anonymousId":"anon-9","messageId":"m-9","timestamp":"2026-03-02T09:09:00.000Z"}
{"event_id":"crm-1","prospect_id":"undefined","source":"crm","type":"quote_sent","ts":"2026-03-02T09:10:00Z"}
"#,
    );
    let run = replay(&input);
    let mut prospects: Vec<String> = run.changes().into_iter().map(|c| c.0).collect();
    prospects.sort();
    let mut want: Vec<String> = (0..spellings.len()).map(|i| format!("anon-{i}")).chain(["anon-9".into()]).collect();
    want.sort();
    assert_eq!(prospects, want);
    assert_eq!(run.rejected(), [(10, None, "missing_field".to_string())]);
    assert!(run.stderr.contains("placeholder \"undefined\""), "{}", run.stderr);
}

// ---- valid Segment traffic ----------------------------------------------------------------------

#[test]
fn batch_group_colon_free_offset_and_camel_case_are_all_taken() {
    let run = replay(
        r#"{"batch":[{"type":"track","event":"Quote Requested","userId":"usr_e1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z"}]}
{"type":"group","userId":"usr_e1","groupId":"acct_1","messageId":"m-2","timestamp":"2026-03-02T09:00:05.000Z"}
{"type":"track","event":"demoRequested","userId":"usr_e2","messageId":"m-3","timestamp":"2026-03-02T09:00:00.000+0000"}
"#,
    );
    assert_eq!(run.stderr, "", "nothing rejected");
    assert_eq!(run.changes(), [change("usr_e1", None, "deciding"), change("usr_e2", None, "evaluating")]);
    let hot = run.of_kind("hot_lead");
    assert_eq!(hot.len(), 1);
    assert_eq!(hot[0]["prospect"], "usr_e1");
    assert_eq!(hot[0]["rules"], json!(["quote_requested"]));
    let stats = run.stats();
    assert_eq!((stats["rejected"].as_u64(), stats["ignored"].as_u64()), (Some(0), Some(1)));
    assert_eq!(stats["rejected_by_reason"], json!({}));
}

#[test]
fn a_bad_batch_item_is_reported_alone_and_the_others_applied() {
    let run = replay(
        r#"{"type":"page","userId":"usr_b0","messageId":"m-0","timestamp":"2026-03-02T08:00:00.000Z"}
{"batch":[{"type":"track","event":"Demo Requested","userId":"usr_b1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z"},{"type":"track","event":"Demo Requested","userId":"usr_b2","messageId":"m-2","timestamp":"yesterday"},{"type":"alias","previousId":"anon-b3","userId":"usr_b3","messageId":"m-3","timestamp":"2026-03-02T09:00:02.000Z"},{"type":"track","event":"Quote Requested","userId":"usr_b1","messageId":"m-4","timestamp":"2026-03-02T09:00:03.000Z"},{"type":"track","userId":"usr_b4","messageId":"m-5","timestamp":"2026-03-02T09:00:04.000Z"}],"sentAt":"2026-03-02T09:00:05.000Z"}
{"type":"page","userId":"usr_b5","messageId":"m-6","timestamp":"2026-03-02T09:30:00.000Z"}
"#,
    );
    assert_eq!(run.rejected(), [(2, Some(1), "bad_timestamp".to_string()), (2, Some(4), "missing_field".to_string())]);
    assert!(run.stderr.contains("line 2 item 1: bad_timestamp: bad timestamp in `timestamp` (\"yesterday\")"));
    assert_eq!(
        run.changes(),
        [
            change("usr_b0", None, "aware"),
            change("usr_b1", None, "evaluating"),
            change("usr_b1", Some("evaluating"), "deciding"),
            change("usr_b5", None, "aware"),
        ]
    );
    let stats = run.stats();
    assert_eq!(stats["events"], 5, "three good batch items (one an alias) and two single lines");
    assert_eq!(stats["ignored"], 1);
    assert_eq!(stats["rejected"], 2);
    assert_eq!(stats["rejected_by_reason"], json!({"bad_timestamp": 1, "missing_field": 1}));
}

#[test]
fn batch_level_context_email_reaches_the_alert() {
    let run = replay(
        r#"{"batch":[{"type":"track","event":"Quote Requested","userId":"usr_c1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z"},{"type":"track","event":"Quote Requested","userId":"usr_c2","messageId":"m-2","timestamp":"2026-03-02T09:00:01.000Z","context":{"traits":{"email":"Own@Fabrikam.example"}}}],"context":{"library":{"name":"analytics-node"},"traits":{"email":"Ana.Lima@Contoso.example"}}}
"#,
    );
    assert_eq!(run.stderr, "");
    let emails: Vec<(&str, &str)> = run
        .of_kind("hot_lead")
        .iter()
        .map(|h| (h["prospect"].as_str().unwrap(), h["email"].as_str().unwrap()))
        .collect();
    assert_eq!(emails, [("usr_c1", "ana.lima@contoso.example"), ("usr_c2", "own@fabrikam.example")]);
}

#[test]
fn identify_traits_email_beats_a_stale_context_email() {
    let run = replay(
        r#"{"type":"identify","userId":"usr_i1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z","context":{"traits":{"email":"old.address@northwind.example"}},"traits":{"email":"Dana.Whitfield@Contoso.example"}}
{"type":"track","event":"Quote Requested","userId":"usr_i1","messageId":"m-2","timestamp":"2026-03-02T09:05:00.000Z"}
"#,
    );
    let hot = run.of_kind("hot_lead");
    assert_eq!(hot.len(), 1);
    assert_eq!(hot[0]["email"], "dana.whitfield@contoso.example");
}

#[test]
fn offsets_without_a_colon_order_events_by_their_instant() {
    // 14:30+0530 is 09:00Z, before 09:10Z; 03:40-0530 is 09:10Z.
    let run = replay(
        r#"{"type":"track","event":"Demo Requested","userId":"usr_o1","messageId":"m-1","timestamp":"2026-03-02T14:30:00.000+0530"}
{"event_id":"crm-1","prospect_id":"usr_o1","source":"crm","type":"quote_sent","ts":"2026-03-02T03:40:00-0530"}
{"type":"track","event":"webinarRegistered","userId":"usr_o2","messageId":"m-2","timestamp":"2026-03-02T10:10:00+01"}
"#,
    );
    assert_eq!(run.stderr, "");
    let at: Vec<(&str, &str)> =
        run.of_kind("stage_changed").iter().map(|c| (c["to"].as_str().unwrap(), c["at"].as_str().unwrap())).collect();
    assert_eq!(
        at,
        [
            ("evaluating", "2026-03-02T09:00:00.000Z"),
            ("deciding", "2026-03-02T09:10:00.000Z"),
            ("interested", "2026-03-02T09:10:00.000Z")
        ]
    );
}

// ---- client clocks ------------------------------------------------------------------------------

#[test]
fn payloads_without_timestamp_get_segments_skew_correction() {
    // A laptop whose clock is a day and a half behind sends a demo request from its queue; the
    // quote request from a correct clock follows five minutes later in real time.
    let run = replay(
        r#"{"anonymousId":"b7c1d2e3-0f4a-4b5c-9d6e-7f8091a2b3c4","channel":"client","context":{"library":{"name":"analytics.js","version":"next-1.72.0"},"userAgent":"Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7)"},"event":"Demo Requested","messageId":"ajs-next-1772442000000-0a1b2c3d","originalTimestamp":"2026-02-28T21:00:00.000Z","properties":{"seats":40},"receivedAt":"2026-03-02T09:00:01.250Z","sentAt":"2026-02-28T21:00:00.250Z","type":"track","userId":"usr_s1"}
{"event_id":"crm-q1","prospect_id":"usr_s1","source":"crm","type":"quote_sent","ts":"2026-03-02T09:05:00Z"}
"#,
    );
    assert_eq!(run.stderr, "");
    let at: Vec<(&str, &str)> =
        run.of_kind("stage_changed").iter().map(|c| (c["to"].as_str().unwrap(), c["at"].as_str().unwrap())).collect();
    assert_eq!(at, [("evaluating", "2026-03-02T09:00:01.000Z"), ("deciding", "2026-03-02T09:05:00.000Z")]);
    assert_eq!(run.stats()["late"], 0, "the corrected time is not behind the watermark");
}

#[test]
fn times_before_the_floor_are_rejected_and_counted() {
    let run = replay(
        r#"{"type":"page","anonymousId":"anon-z","messageId":"m-0","timestamp":"1970-01-01T00:00:00.000Z"}
{"type":"track","event":"Quote Requested","userId":"usr_z1","messageId":"m-1","timestamp":"2026-03-02T09:10:00.000Z"}
"#,
    );
    assert_eq!(run.rejected(), [(1, None, "bad_timestamp".to_string())]);
    assert!(run.stderr.contains("out of range") && run.stderr.contains("time.min_event_time"), "{}", run.stderr);
    assert_eq!(run.changes(), [change("usr_z1", None, "deciding")]);
    assert_eq!(run.of_kind("hot_lead").len(), 1);
    assert_eq!(run.stats()["rejected_by_reason"], json!({"bad_timestamp": 1}));
    assert_eq!(run.summary()["census"]["prospects"], 1, "the refused event made no prospect");

    // A journey may lower the floor.
    let journey =
        Journey::from_toml_str(&B2B.replace("[time]", "[time]\nmin_event_time = \"1960-01-01T00:00:00Z\"")).unwrap();
    let run = replay_with(
        journey,
        r#"{"type":"page","anonymousId":"anon-z","messageId":"m-0","timestamp":"1970-01-01T00:00:00.000Z"}
"#,
    );
    assert_eq!(run.stderr, "");
}

// ---- hostile ids --------------------------------------------------------------------------------

#[test]
fn ids_with_control_characters_are_rejected_in_every_id_field() {
    let input = r#"{"event_id":"e\u0000","prospect_id":"usr_x","source":"crm","type":"quote_sent","ts":"2026-03-02T09:00:00Z"}
{"event_id":"e-2","prospect_id":"usr_\u0000x","source":"crm","type":"quote_sent","ts":"2026-03-02T09:00:00Z"}
{"type":"page","userId":"usr_x","messageId":"m\u001b[2J","timestamp":"2026-03-02T09:00:00Z"}
{"type":"page","userId":"usr_x\r\n","messageId":"m-4","timestamp":"2026-03-02T09:00:00Z"}
{"type":"page","userId":"usr_x","anonymousId":"\u007f","messageId":"m-5","timestamp":"2026-03-02T09:00:00Z"}
{"batch":[{"type":"page","anonymousId":"a\u0007","messageId":"m-6","timestamp":"2026-03-02T09:00:00Z"}]}
{"type":"page","userId":"usr_ok","messageId":"m-7","timestamp":"2026-03-02T09:00:00Z"}
"#;
    let run = replay(input);
    let invalid = |line, item| (line, item, "invalid_id".to_string());
    assert_eq!(
        run.rejected(),
        [invalid(1, None), invalid(2, None), invalid(3, None), invalid(4, None), invalid(5, None), invalid(6, Some(0))]
    );
    for field in ["`event_id`", "`prospect_id`", "`messageId`", "`userId`", "`anonymousId`"] {
        assert!(run.stderr.contains(field), "{field}: {}", run.stderr);
    }
    assert_eq!(run.summary()["census"]["prospects"], 1, "no id with a control character was interned");
    assert_eq!(run.stats()["rejected_by_reason"], json!({"invalid_id": 6}));
}

// ---- nothing dropped without a trace ------------------------------------------------------------

#[test]
fn the_summary_counts_decoder_and_engine_rejections_by_reason() {
    let run = replay(
        r#"not json
{"event_id":"w-1","prospect_id":"usr_r1","source":"web","type":"deal_won","ts":"2026-03-02T09:00:00Z"}
{"type":"merge","userId":"usr_r1","messageId":"m-1","timestamp":"2026-03-02T09:00:00Z"}
{"event_id":"c-1","prospect_id":"usr_r1","source":"crm","type":"quote_sent","ts":"2026-03-02T09:00:00Z"}
{"batch":[{"type":"page","messageId":"m-2","timestamp":"2026-03-02T09:00:00Z"},{"event_id":"w-2","prospect_id":"usr_r2","source":"web","type":"deal_won","ts":"2026-03-02T09:00:00Z"}]}
"#,
    );
    assert_eq!(
        run.rejected(),
        [
            (1, None, "invalid_json".to_string()),
            (2, None, "source_mismatch".to_string()),
            (3, None, "unsupported_type".to_string()),
            (5, Some(0), "missing_field".to_string()),
            (5, Some(1), "source_mismatch".to_string()),
        ]
    );
    let stats = run.stats();
    assert_eq!(stats["rejected"], 5);
    assert_eq!(
        stats["rejected_by_reason"].to_string(),
        r#"{"invalid_json":1,"missing_field":1,"source_mismatch":2,"unsupported_type":1}"#,
        "non-zero labels only, in label order"
    );
}

// ---- journey keys -------------------------------------------------------------------------------

#[test]
fn journey_keys_for_ids_and_time_are_validated() {
    let err = Journey::from_toml_str(&B2B.replace("[time]", "[time]\nmin_event_time = \"last year\"")).unwrap_err();
    assert!(matches!(&err, JourneyError::Invalid { at, .. } if at == "time.min_event_time"), "{err:?}");
    assert!(err.to_string().contains("last year"), "{err}");
    let err =
        Journey::from_toml_str(&format!("{B2B}\n[identity]\nplaceholder_ids = [\"guest\", \"  \"]\n")).unwrap_err();
    assert!(matches!(&err, JourneyError::Invalid { at, .. } if at == "identity.placeholder_ids[1]"), "{err:?}");
    let err = Journey::from_toml_str(&format!("{B2B}\n[identity]\nplaceholders = []\n")).unwrap_err();
    assert!(err.to_string().contains("identity.placeholders: unknown key"), "{err}");
    let j = Journey::from_toml_str(B2B).unwrap();
    assert_eq!(j.min_event_time.to_string(), "2000-01-01T00:00:00.000Z");
    assert!(j.is_placeholder_id(" UNDEFINED ") && j.is_placeholder_id("n/a") && !j.is_placeholder_id("usr_1"));
}

#[test]
fn names_differing_only_in_separators_are_one_name_to_the_journey() {
    // "sign_up" and "signup" are the same name under this rule, so declaring both is an error.
    let err = Journey::from_toml_str(&B2B.replace(
        r#"aliases = ["Signed Up", "Trial Started"]"#,
        r#"aliases = ["Signed Up", "Trial Started", "signedUp", "SIGNEDUP"]"#,
    ));
    assert!(err.is_ok(), "aliases of one signal may repeat a key: {err:?}");
    let err = Journey::from_toml_str(
        &B2B.replace(r#"aliases = ["Webinar Registered"]"#, r#"aliases = ["Webinar Registered", "signedup"]"#),
    )
    .unwrap_err();
    assert!(matches!(err, JourneyError::DuplicateSignal { .. }), "{err:?}");
    // webinar_registered is declared first: the later "Signed Up" collides with its "signedup".
    assert!(err.to_string().contains("`Signed Up`") && err.to_string().contains("(`webinar_registered`)"), "{err}");
}
