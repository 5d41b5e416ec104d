//! Per-topic input configuration (`[inputs."<topic>"]`): validation at load, what the topic's
//! format and source do to decoding, the `mapped` format, and the `replay` and `check-config`
//! commands that take it.

use std::path::PathBuf;
use std::process::{Command, Output};

use microfunnel::codec::{Format, InputSpec, Limits, decode_input};
use microfunnel::config::Settings;
use microfunnel::core::crm::CrmMemory;
use microfunnel::core::{Journey, RejectReason, Source};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

fn journey() -> Journey {
    Journey::from_toml_str(B2B).unwrap()
}

fn config_file(name: &str, inputs: &str) -> PathBuf {
    let dir = std::env::temp_dir().join("microfunnel-inputs-config");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.toml", std::process::id()));
    let text = format!(
        "[kafka]\nbrokers = \"127.0.0.1:9\"\ninput_topics = [\"web-events\", \"crm-events\", \"orders\"]\n\n[checkpoint]\ndir = \"\"\n\n{inputs}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn load(name: &str, inputs: &str) -> Result<Settings, String> {
    Settings::load(Some(&config_file(name, inputs)), Vec::new()).map_err(|e| e.to_string())
}

const ORDERS: &str = r#"
[inputs.crm-events]
format = "hubspot"

[inputs.orders]
format = "mapped"
source = "web"

[inputs.orders.mapped]
event_id = "/order/id"
prospect = "/customer/ref"
type_constant = "Order Completed"
time = "/order/placed_at"
time_unit = "epoch_s"
email = "/customer/email"
"#;

#[test]
fn topics_without_a_section_stay_auto_and_declared_ones_are_read() {
    let s = load("ok", ORDERS).unwrap();
    let specs = s.input_specs();
    assert_eq!(specs[0], InputSpec::default(), "web-events is not configured: auto, payload's source");
    assert_eq!(specs[1].format, Format::Hubspot);
    assert_eq!(specs[1].source(), Some(Source::Crm), "CRM formats default to crm");
    assert_eq!(specs[2].format, Format::Mapped);
    assert_eq!(specs[2].source(), Some(Source::Web));
    assert_eq!(specs[2].mapped.as_ref().unwrap().prospect, "/customer/ref");
}

#[test]
fn an_unknown_format_fails_naming_the_key_and_the_fix() {
    let e = load("bad-format", "[inputs.crm-events]\nformat = \"hubspt\"\n").unwrap_err();
    assert!(e.contains("inputs.\"crm-events\".format"), "{e}");
    assert!(e.contains("unknown format `hubspt`"), "{e}");
    assert!(e.contains("salesforce_cdc"), "the fix lists the formats: {e}");
}

#[test]
fn bad_sources_topics_and_mapped_sections_fail_at_load() {
    let e = load("bad-source", "[inputs.crm-events]\nformat = \"segment\"\nsource = \"sales\"\n").unwrap_err();
    assert!(e.contains("inputs.\"crm-events\".source") && e.contains("\"web\" or \"crm\""), "{e}");
    let e = load("not-input", "[inputs.hot-leads]\nformat = \"segment\"\n").unwrap_err();
    assert!(e.contains("inputs.\"hot-leads\"") && e.contains("not one of kafka.input_topics"), "{e}");
    let e = load("no-mapped", "[inputs.orders]\nformat = \"mapped\"\n").unwrap_err();
    assert!(e.contains("inputs.\"orders\".mapped") && e.contains("JSON Pointers"), "{e}");
    let unit = ORDERS.replace("epoch_s", "seconds");
    let e = load("bad-unit", &unit).unwrap_err();
    assert!(e.contains("mapped.time_unit") && e.contains("epoch_ms"), "{e}");
    let pointer = ORDERS.replace("\"/order/id\"", "\"order.id\"");
    let e = load("bad-pointer", &pointer).unwrap_err();
    assert!(e.contains("mapped.event_id") && e.contains("JSON Pointer"), "{e}");
}

fn one(bytes: &[u8], spec: &InputSpec) -> Result<(Source, String, i64), RejectReason> {
    let j = journey();
    let mut memory = CrmMemory::default();
    let mut events = decode_input(bytes, spec, &j, &Limits::default(), &mut memory);
    let (_, r) = events.next().expect("one event");
    r.map(|e| (e.source, e.prospect.into_owned(), e.ts.0)).map_err(|e| e.reason())
}

const SEGMENT_QUOTE: &[u8] =
    br#"{"type":"track","event":"quote_sent","userId":"usr_1","messageId":"m-1","timestamp":"2026-03-02T09:00:00Z"}"#;
const CANONICAL_WEB: &[u8] =
    br#"{"event_id":"e-1","prospect_id":"p-1","source":"web","type":"quote_sent","ts":"2026-03-02T09:00:00Z"}"#;

#[test]
fn the_topic_decides_the_source() {
    // A Segment call (from a CRM's Segment destination) on a CRM topic counts as crm ...
    let crm = InputSpec::new(Format::Segment, Some(Source::Crm));
    assert_eq!(one(SEGMENT_QUOTE, &crm).unwrap().0, Source::Crm);
    // ... where `auto` keeps today's rule: Segment calls are web.
    assert_eq!(one(SEGMENT_QUOTE, &InputSpec::default()).unwrap().0, Source::Web);
    // A payload field may not contradict the topic.
    assert_eq!(one(CANONICAL_WEB, &InputSpec::new(Format::Auto, Some(Source::Crm))), Err(RejectReason::SourceConflict));
    // A canonical envelope without `source` takes the topic's.
    let no_source = br#"{"event_id":"e-1","prospect_id":"p-1","type":"quote_sent","ts":"2026-03-02T09:00:00Z"}"#;
    assert_eq!(one(no_source, &crm.clone()), Err(RejectReason::WrongShape), "canonical on a segment topic");
    assert_eq!(one(no_source, &InputSpec::new(Format::Canonical, Some(Source::Crm))).unwrap().0, Source::Crm);
    assert_eq!(one(no_source, &InputSpec::default()), Err(RejectReason::MissingField));
    assert_eq!(one(SEGMENT_QUOTE, &InputSpec::new(Format::Canonical, None)), Err(RejectReason::WrongShape));
}

#[test]
fn a_segment_quote_on_a_crm_topic_reaches_the_journey() {
    use microfunnel::core::{Engine, Output};
    let j = std::sync::Arc::new(journey());
    let run = |spec: &InputSpec| {
        let mut engine = Engine::new(std::sync::Arc::clone(&j));
        let mut out = Vec::new();
        let mut memory = CrmMemory::default();
        for (_, r) in decode_input(SEGMENT_QUOTE, spec, &j, &Limits::default(), &mut memory) {
            engine.apply(&r.unwrap(), &mut out);
        }
        out
    };
    let rejected =
        |out: &[Output]| out.iter().any(|o| matches!(o, Output::Rejected { reason: RejectReason::SourceMismatch, .. }));
    assert!(rejected(&run(&InputSpec::default())), "auto: a Segment call is web, quote_sent is crm");
    let out = run(&InputSpec::new(Format::Segment, Some(Source::Crm)));
    assert!(!rejected(&out) && out.iter().any(|o| matches!(o, Output::StageChanged { .. })), "{out:?}");
}

#[test]
fn mapped_fields_by_pointer_with_time_units() {
    let specs = load("mapped", ORDERS).unwrap().input_specs();
    let orders = &specs[2];
    let order =
        br#"{"order":{"id":98112,"placed_at":1772442000},"customer":{"ref":"cus_77","email":"Dana@Example.COM"}}"#;
    assert_eq!(one(order, orders).unwrap(), (Source::Web, "cus_77".into(), 1_772_442_000_000));
    let j = journey();
    let ev = decode_input(order, orders, &j, &Limits::default(), &mut CrmMemory::default()).next().unwrap().1.unwrap();
    assert_eq!(ev.signal, j.lookup("order_placed"));
    assert_eq!(ev.email.as_deref(), Some("dana@example.com"));
    // Milliseconds where seconds are declared: far beyond `max_event_time`.
    let ms = br#"{"order":{"id":1,"placed_at":1772442000000},"customer":{"ref":"cus_77"}}"#;
    assert_eq!(one(ms, orders), Err(RejectReason::BadTimestamp));
    let missing = br#"{"order":{"id":1,"placed_at":1772442000}}"#;
    assert_eq!(one(missing, orders), Err(RejectReason::MissingField));
    assert_eq!(one(b"[1,2]", orders), Err(RejectReason::WrongShape));
}

fn microfunnel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_microfunnel"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run microfunnel")
}

#[test]
fn check_config_shows_each_topics_format() {
    let path = config_file("check", ORDERS);
    let out = microfunnel(&["check-config", "--config", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("[inputs.crm-events]\nformat = \"hubspot\""), "{text}");
    assert!(text.contains("[inputs.web-events]\nformat = \"auto\""), "unconfigured topics shown as auto: {text}");
    assert!(text.contains("time_unit = \"epoch_s\""), "{text}");
}

#[test]
fn replay_takes_format_and_source_per_file_or_from_a_config() {
    let hub = "tests/fixtures/crm/hubspot.jsonl";
    let summary = |out: &Output| -> serde_json::Value {
        let text = String::from_utf8(out.stdout.clone()).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    };
    let out = microfunnel(&["replay", "--format", "hubspot", hub]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(summary(&out)["stats"]["events"], 5);
    // Two files, one format each, in input-topic order.
    let out = microfunnel(&[
        "replay",
        "--format",
        "segment",
        "--format",
        "hubspot",
        "--source",
        "web",
        "--source",
        "crm",
        "tests/fixtures/segment-sample.jsonl",
        hub,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(summary(&out)["stats"]["events"].as_u64().unwrap() > 5);
    // The config's [inputs]: file k is kafka.input_topics[k].
    let path = config_file("replay", ORDERS);
    let out = microfunnel(&["replay", "--config", path.to_str().unwrap(), "tests/fixtures/segment-sample.jsonl", hub]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(summary(&out)["stats"]["events"].as_u64().unwrap() > 5);
    let out = microfunnel(&["replay", "--format", "hubspt", hub]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown format"));
    let out = microfunnel(&["replay", "--format", "hubspot", "--format", "segment", "--format", "auto", hub]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("once per file"));
}
