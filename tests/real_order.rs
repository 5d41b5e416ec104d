//! Issue "correct on real traffic", engine kinds: bad client clocks, arrival order within the
//! allowed lateness, redeliveries, reopened deals and corrected outcomes. Each example of the
//! issue is a test through `replay` (the oracle the service is held to), with variants.

use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::Journey;
use microfunnel::core::time::parse_rfc3339;
use microfunnel::replay::{self, End, Options};
use proptest::prelude::*;
use serde_json::{Value, json};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

fn b2b() -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(B2B).unwrap())
}

struct Run {
    outputs: Vec<Value>,
    summary: Value,
    stderr: String,
}

fn run_on(journey: Arc<Journey>, lines: &[String], end: End, partitions: u32) -> Run {
    let input = lines.join("\n") + "\n";
    let opts = Options {
        limits: Limits::default(),
        end,
        digest: false,
        summary_only: false,
        partitions,
        min_sample: microfunnel::core::funnel::MIN_SAMPLE,
        inputs: Vec::new(),
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    replay::run(journey, &opts, input.as_bytes(), &mut out, &mut err).unwrap();
    let mut outputs: Vec<Value> =
        String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let summary = outputs.pop().unwrap();
    assert_eq!(summary["kind"], "funnel_summary");
    Run { outputs, summary, stderr: String::from_utf8(err).unwrap() }
}

fn run(lines: &[&str], end: End) -> Run {
    run_on(b2b(), &lines.iter().map(|l| l.to_string()).collect::<Vec<_>>(), end, 1)
}

fn until(ts: &str) -> End {
    End::Until(parse_rfc3339(ts).unwrap())
}

impl Run {
    fn of(&self, kind: &str) -> Vec<&Value> {
        self.outputs.iter().filter(|o| o["kind"] == kind).collect()
    }

    fn stat(&self, name: &str) -> u64 {
        self.summary["stats"][name].as_u64().unwrap_or_else(|| panic!("no stat {name}: {}", self.summary["stats"]))
    }
}

fn canonical(id: &str, prospect: &str, source: &str, kind: &str, ts: &str) -> String {
    json!({"event_id": id, "prospect_id": prospect, "source": source, "type": kind, "ts": ts}).to_string()
}

// ---- 1. one bad client clock must not own a shard's time ------------------------------------

#[test]
fn a_year_9999_page_view_does_not_make_the_next_quote_request_late() {
    let r = run(
        &[
            r#"{"type":"page","anonymousId":"anon-y9","messageId":"m-0701","timestamp":"9999-05-28T13:13:23.260Z"}"#,
            r#"{"type":"track","event":"Quote Requested","userId":"usr_7002","messageId":"m-0702","timestamp":"2026-03-02T09:10:00.000Z"}"#,
        ],
        End::LastEvent,
    );
    assert!(r.of("late").is_empty(), "{:?}", r.outputs);
    // A sentinel year is refused outright: after `time.max_event_time`.
    assert!(r.stderr.starts_with("line 1: bad_timestamp:") && r.stderr.contains("out of range"), "{}", r.stderr);
    let changes = r.of("stage_changed");
    assert_eq!(changes.len(), 1);
    assert_eq!((&changes[0]["from"], &changes[0]["to"]), (&Value::Null, &json!("deciding")));
    let hot = r.of("hot_lead");
    assert_eq!(hot.len(), 1);
    assert_eq!(hot[0]["prospect"], "usr_7002");
    assert_eq!(hot[0]["rules"], json!(["quote_requested"]));
    // The year-9999 time moves nothing: no timer fires at the end of the replay.
    assert!(r.of("stalled").is_empty() && r.of("ghosted").is_empty(), "{:?}", r.outputs);
}

#[test]
fn a_device_days_ahead_in_the_middle_of_traffic_does_not_move_the_watermark() {
    let mut lines = vec![
        canonical("a1", "usr_a", "web", "demo_requested", "2026-03-02T09:00:00Z"),
        canonical("b1", "usr_b", "web", "page_viewed", "2026-03-02T09:05:00Z"),
        // A phone whose clock is three days ahead.
        canonical("x1", "anon-fast", "web", "page_viewed", "2026-03-05T09:06:00Z"),
        canonical("x2", "anon-fast", "web", "content_downloaded", "2026-03-05T09:07:00Z"),
    ];
    // Everyone else goes on at the real time: nothing of theirs is late.
    lines.push(canonical("a2", "usr_a", "crm", "quote_sent", "2026-03-02T10:00:00Z"));
    lines.push(canonical("a3", "usr_a", "crm", "quote_clarification_requested", "2026-03-02T11:00:00Z"));
    let r = run_on(b2b(), &lines, End::Stay, 1);
    assert!(r.of("late").is_empty(), "{:?}", r.outputs);
    assert_eq!(r.of("hot_lead").len(), 1, "{:?}", r.outputs);
    assert_eq!(r.stat("ahead"), 2, "both events of the fast device arrived too far ahead");
    // The watermark follows the real traffic, not the fast device.
    assert_eq!(r.summary["watermark"], "2026-03-01T11:00:00.000Z");
}

#[test]
fn a_fast_clock_as_a_fresh_shards_first_event_is_healed_by_the_real_traffic() {
    let lines = vec![
        canonical("x1", "anon-fast", "web", "page_viewed", "2026-03-12T09:00:00Z"),
        canonical("a1", "usr_a", "web", "demo_requested", "2026-03-02T09:00:00Z"),
        canonical("b1", "usr_b", "web", "page_viewed", "2026-03-02T09:05:00Z"),
        canonical("a2", "usr_a", "crm", "quote_sent", "2026-03-02T10:00:00Z"),
        canonical("a3", "usr_a", "crm", "quote_clarification_requested", "2026-03-02T11:00:00Z"),
    ];
    let r = run_on(b2b(), &lines, End::Stay, 1);
    assert!(r.of("late").is_empty(), "{:?}", r.outputs);
    assert_eq!(r.of("hot_lead").len(), 1);
}

#[test]
fn two_prospects_confirm_a_real_jump_in_time_and_timers_fire() {
    // A real gap in traffic (a quiet weekend) moves the clock once a second prospect confirms it.
    let lines = vec![
        canonical("a1", "usr_a", "web", "demo_requested", "2026-03-02T09:00:00Z"),
        canonical("a2", "usr_a", "crm", "quote_sent", "2026-03-02T10:00:00Z"),
        canonical("b1", "usr_b", "web", "page_viewed", "2026-03-09T09:00:00Z"),
        canonical("c1", "usr_c", "web", "page_viewed", "2026-03-09T09:30:00Z"),
    ];
    let r = run_on(b2b(), &lines, End::Stay, 1);
    let ghosted = r.of("ghosted");
    assert_eq!(ghosted.len(), 1, "{:?}", r.outputs);
    assert_eq!(ghosted[0]["prospect"], "usr_a");
    // One lone event of b alone would not have done it.
    let r = run_on(b2b(), &lines[..3], End::Stay, 1);
    assert!(r.of("ghosted").is_empty(), "{:?}", r.outputs);
}

// ---- 2. arrival order within the allowed lateness -------------------------------------------

#[test]
fn a_clarification_synced_before_its_quote_still_makes_the_prospect_hot_and_not_ghosted() {
    let lines = [
        r#"{"event_id":"c1","prospect_id":"usr_b1","source":"crm","type":"quote_clarification_requested","ts":"2026-03-03T10:20:00Z"}"#,
        r#"{"event_id":"q1","prospect_id":"usr_b1","source":"crm","type":"quote_sent","ts":"2026-03-03T10:00:00Z"}"#,
    ];
    let r = run(&lines, until("2026-03-10T00:00:00Z"));
    let hot = r.of("hot_lead");
    assert_eq!(hot.len(), 1, "{:?}", r.outputs);
    assert_eq!(hot[0]["rules"], json!(["clarification_after_quote"]));
    assert_eq!(hot[0]["event_id"], "c1");
    assert_eq!(hot[0]["at"], "2026-03-03T10:20:00.000Z");
    assert!(r.of("ghosted").is_empty(), "{:?}", r.outputs);

    // In order, the same alert (same id: it names the same event).
    let mut in_order = lines;
    in_order.reverse();
    let r2 = run(&in_order, until("2026-03-10T00:00:00Z"));
    assert_eq!(r2.of("hot_lead"), hot);
    assert!(r2.of("ghosted").is_empty());
}

#[test]
fn a_clarification_outside_the_window_of_a_late_arriving_quote_stays_cold() {
    // The quote came 20 days before the question: outside the 14-day window in any order.
    let lines = [
        canonical("q1", "usr_b2", "crm", "quote_sent", "2026-03-03T10:00:00Z"),
        canonical("p1", "usr_b2", "web", "page_viewed", "2026-03-23T10:00:00Z"),
        canonical("c1", "usr_b2", "crm", "quote_clarification_requested", "2026-03-23T10:20:00Z"),
    ];
    let r = run_on(b2b(), &lines, End::Stay, 1);
    assert!(r.of("hot_lead").is_empty(), "{:?}", r.outputs);
}

#[test]
fn prospect_activity_that_arrived_before_the_quote_keeps_the_ghost_timer_off() {
    // A page view 2 hours after the quote, synced before it: the prospect did not go silent.
    let lines = [
        canonical("p1", "usr_g1", "web", "page_viewed", "2026-03-03T12:00:00Z"),
        canonical("q1", "usr_g1", "crm", "quote_sent", "2026-03-03T10:00:00Z"),
    ];
    let r = run_on(b2b(), &lines, until("2026-03-20T00:00:00Z"), 1);
    assert!(r.of("ghosted").is_empty(), "{:?}", r.outputs);
    // Activity before the quote does not count: silence after it is ghosting.
    let lines = [
        canonical("p1", "usr_g2", "web", "page_viewed", "2026-03-03T09:00:00Z"),
        canonical("q1", "usr_g2", "crm", "quote_sent", "2026-03-03T10:00:00Z"),
    ];
    let r = run_on(b2b(), &lines, until("2026-03-20T00:00:00Z"), 1);
    assert_eq!(r.of("ghosted").len(), 1, "{:?}", r.outputs);
}

/// Signals whose effect does not depend on arrival order by construction: no caps (which
/// occurrences score would depend on order), no negative weights and no score rule (a crossing
/// from below depends on the path), no outcomes (tested on their own), at most one quote.
const ORDER_FREE: [&str; 8] = [
    "email_subscribed",
    "webinar_registered",
    "account_created",
    "demo_requested",
    "quote_requested",
    "meeting_booked",
    "quote_clarification_requested",
    "reviewing_with_partners",
];

fn order_journey() -> Arc<Journey> {
    // No score rule and no cooldown: which of two alerts inside one cooldown window is sent
    // depends on which arrives first, by design (at most one alert per window).
    let text = B2B.replace("cooldown_hours = 72", "cooldown_hours = 0");
    let cut = text.find("[[hot_rules]]\nname = \"engaged\"").unwrap();
    let end = text[cut..].find("# ---- silence timers").unwrap() + cut;
    Arc::new(Journey::from_toml_str(&format!("{}{}", &text[..cut], &text[end..])).unwrap())
}

fn final_state(journey: &Arc<Journey>, lines: &[String]) -> (Value, Vec<(Value, Value, Value)>) {
    let opts = Options {
        limits: Limits::default(),
        end: until("2026-04-30T00:00:00Z"),
        digest: false,
        summary_only: false,
        partitions: 1,
        min_sample: microfunnel::core::funnel::MIN_SAMPLE,
        inputs: Vec::new(),
    };
    let input = lines.join("\n") + "\n";
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (engines, _) = replay::run(Arc::clone(journey), &opts, input.as_bytes(), &mut out, &mut err).unwrap();
    let e = &engines[0];
    let ix = e.find("usr_p").unwrap();
    let mut view = serde_json::to_value(e.view(ix, None)).unwrap();
    let score = view["score"].as_f64().unwrap();
    view["score"] = json!((score * 1000.0).round() / 1000.0);
    let mut alerts: Vec<_> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|o| o["kind"] == "hot_lead")
        .map(|o| (o["alert_id"].clone(), o["rules"].clone(), o["at"].clone()))
        .collect();
    alerts.sort_by_key(|a| a.0.to_string());
    (view, alerts)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// Any permutation of one prospect's events within the allowed lateness gives the same final
    /// state and the same alerts.
    #[test]
    fn arrival_order_within_the_lateness_does_not_change_the_result(
        events in prop::collection::vec((0usize..ORDER_FREE.len(), 0i64..3600), 1..9),
        quote in prop::option::of(0i64..3600),
        seed in any::<u64>(),
    ) {
        let t0 = parse_rfc3339("2026-03-02T00:00:00Z").unwrap().0;
        let at = |s: i64| microfunnel::core::Ts(t0 + s * 1000).to_string();
        let mut lines: Vec<String> = events
            .iter()
            .enumerate()
            .map(|(i, &(s, t))| {
                let sig = ORDER_FREE[s];
                let src = if matches!(sig, "meeting_booked" | "quote_clarification_requested" | "reviewing_with_partners") { "crm" } else { "web" };
                // Distinct seconds: the order of two events at the same instant is not defined.
                canonical(&format!("e{i}"), "usr_p", src, sig, &at(t * 16 + i as i64))
            })
            .collect();
        if let Some(t) = quote {
            lines.push(canonical("quote", "usr_p", "crm", "quote_sent", &at(t * 16 + 15)));
        }
        let journey = order_journey();
        let mut sorted = lines.clone();
        sorted.sort_by_key(|l| serde_json::from_str::<Value>(l).unwrap()["ts"].as_str().unwrap().to_string());
        let expected = final_state(&journey, &sorted);
        // A deterministic shuffle from the seed.
        let mut shuffled = lines;
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(final_state(&journey, &shuffled), expected);
    }
}

// ---- 3. redeliveries --------------------------------------------------------------------------

#[test]
fn a_redelivered_message_id_after_four_other_events_is_still_a_duplicate() {
    let r = run(
        &[
            r#"{"type":"track","event":"Demo Requested","userId":"usr_d1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z"}"#,
            r#"{"type":"track","event":"Webinar Registered","userId":"usr_d1","messageId":"m-2","timestamp":"2026-03-02T09:01:00.000Z"}"#,
            r#"{"type":"track","event":"Whitepaper Downloaded","userId":"usr_d1","messageId":"m-3","timestamp":"2026-03-02T09:02:00.000Z"}"#,
            r#"{"type":"track","event":"Ebook Downloaded","userId":"usr_d1","messageId":"m-4","timestamp":"2026-03-02T09:03:00.000Z"}"#,
            r#"{"type":"page","userId":"usr_d1","messageId":"m-5","timestamp":"2026-03-02T09:04:00.000Z"}"#,
            r#"{"type":"track","event":"Demo Requested","userId":"usr_d1","messageId":"m-1","timestamp":"2026-03-02T09:00:00.000Z"}"#,
        ],
        End::LastEvent,
    );
    let changes = r.of("stage_changed");
    assert_eq!(changes.len(), 1, "{:?}", r.outputs);
    assert_eq!((&changes[0]["from"], &changes[0]["to"]), (&Value::Null, &json!("evaluating")));
    assert!(r.of("hot_lead").is_empty(), "{:?}", r.outputs);
    assert_eq!(r.stat("duplicates"), 1);
}

#[test]
fn redeliveries_are_dropped_for_the_whole_window_however_many_events_came_between() {
    let mut lines = vec![canonical("first", "usr_d2", "web", "demo_requested", "2026-03-02T09:00:00Z")];
    for i in 0..40 {
        lines.push(canonical(&format!("pv{i}"), "usr_d2", "web", "email_subscribed", "2026-03-02T10:00:00Z"));
    }
    // Other prospects move time 30 hours on: the id is still remembered (watermark 06:00 next
    // day is within 24 h of 09:00).
    lines.push(canonical("o1", "usr_o1", "web", "page_viewed", "2026-03-03T15:00:00Z"));
    lines.push(canonical("o2", "usr_o2", "web", "page_viewed", "2026-03-03T15:00:00Z"));
    lines.push(canonical("first", "usr_d2", "web", "demo_requested", "2026-03-02T09:00:00Z"));
    let r = run_on(b2b(), &lines, End::Stay, 1);
    assert_eq!(r.stat("duplicates"), 1);
    // A checkpoint in between keeps the window: the state round-trips with its older ids.
    let r4 = run_on(b2b(), &lines, End::Stay, 4);
    assert_eq!(r4.stat("duplicates"), 1);
}

#[test]
fn an_id_reused_for_another_signal_is_applied_and_counted_as_a_conflict() {
    let lines = [
        canonical("crm-42", "usr_d3", "crm", "meeting_booked", "2026-03-02T09:00:00Z"),
        canonical("crm-42", "usr_d3", "crm", "quote_sent", "2026-03-02T10:00:00Z"),
        canonical("crm-42", "usr_d3", "crm", "quote_sent", "2026-03-02T10:00:00Z"),
    ];
    let r = run_on(b2b(), &lines, End::Stay, 1);
    assert_eq!(r.stat("duplicate_conflicts"), 1);
    assert_eq!(r.stat("duplicates"), 1, "the quote's own redelivery is still a duplicate");
    assert_eq!(r.of("stage_changed").last().unwrap()["to"], "deciding");
}

// ---- 6. deals reopen, outcomes get corrected -----------------------------------------------

#[test]
fn a_lost_deal_reopened_by_a_new_quote_moves_back_and_can_turn_hot() {
    let r = run(
        &[
            r#"{"event_id":"l1","prospect_id":"usr_f1","source":"crm","type":"deal_lost","ts":"2026-03-10T09:00:00Z"}"#,
            r#"{"event_id":"q2","prospect_id":"usr_f1","source":"crm","type":"quote_sent","ts":"2026-04-22T09:00:00Z"}"#,
            r#"{"event_id":"c2","prospect_id":"usr_f1","source":"crm","type":"quote_clarification_requested","ts":"2026-04-23T09:00:00Z"}"#,
        ],
        End::LastEvent,
    );
    let changes = r.of("stage_changed");
    let back = changes.iter().find(|c| c["from"] == "lost").expect("reopened");
    assert_eq!((&back["to"], &back["signal"]), (&json!("deciding"), &json!("quote_sent")));
    let hot = r.of("hot_lead");
    assert_eq!(hot.len(), 1, "{:?}", r.outputs);
    assert_eq!((&hot[0]["rules"], &hot[0]["event_id"]), (&json!(["clarification_after_quote"]), &json!("c2")));
    assert_eq!(r.summary["outcomes"]["lost"], 0, "{}", r.summary["outcomes"]);
    assert_eq!(r.stat("reopened"), 1);
}

#[test]
fn a_win_corrected_to_a_loss_minutes_later_counts_as_lost() {
    let lines = [
        canonical("w1", "usr_f2", "crm", "deal_won", "2026-03-10T09:00:00Z"),
        canonical("l1", "usr_f2", "crm", "deal_lost", "2026-03-10T09:07:00Z"),
    ];
    let r = run_on(b2b(), &lines, End::Stay, 1);
    assert_eq!(r.of("stage_changed").last().unwrap()["to"], "lost");
    let o = &r.summary["outcomes"];
    assert_eq!((o["won"].as_u64(), o["lost"].as_u64()), (Some(0), Some(1)), "{o}");
    // Arrived in the other order: the latest outcome (by event time) still wins.
    let mut rev = lines.clone();
    rev.reverse();
    let r = run_on(b2b(), &rev, End::Stay, 1);
    let o = &r.summary["outcomes"];
    assert_eq!((o["won"].as_u64(), o["lost"].as_u64()), (Some(0), Some(1)), "{o}");
}

#[test]
fn a_loss_long_after_a_win_is_a_lost_upsell_not_a_lost_customer() {
    let lines = [
        canonical("w1", "usr_f3", "crm", "deal_won", "2026-03-10T09:00:00Z"),
        canonical("l1", "usr_f3", "crm", "deal_lost", "2026-05-10T09:00:00Z"),
    ];
    let r = run_on(b2b(), &lines, End::Stay, 1);
    assert_eq!(r.of("stage_changed").len(), 1);
    assert_eq!(r.summary["outcomes"]["won"], 1);
}

#[test]
fn a_lost_deal_won_later_counts_as_won_and_an_earlier_dated_win_does_not_undo_a_loss() {
    let lines = [
        canonical("l1", "usr_f4", "crm", "deal_lost", "2026-03-10T09:00:00Z"),
        canonical("w1", "usr_f4", "crm", "deal_won", "2026-03-20T09:00:00Z"),
    ];
    let r = run_on(b2b(), &lines, End::Stay, 1);
    let o = &r.summary["outcomes"];
    assert_eq!((o["won"].as_u64(), o["lost"].as_u64()), (Some(1), Some(0)), "{o}");
    let lines = [
        canonical("l1", "usr_f5", "crm", "deal_lost", "2026-03-10T09:00:00Z"),
        canonical("w1", "usr_f5", "crm", "deal_won", "2026-03-10T08:00:00Z"),
    ];
    let r = run_on(b2b(), &lines, End::Stay, 1);
    let o = &r.summary["outcomes"];
    assert_eq!((o["won"].as_u64(), o["lost"].as_u64()), (Some(0), Some(1)), "{o}");
    assert!(r.stderr.is_empty());
}

#[test]
fn reopen_on_is_validated_at_load() {
    let bad = B2B.replace("reopen_on = [\"quote_sent\",", "reopen_on = [\"quote_sentt\",");
    let err = Journey::from_toml_str(&bad).unwrap_err().to_string();
    assert!(err.contains("reopen_on[0]") && err.contains("quote_sentt"), "{err}");
    let bad = B2B.replace("reopen_on = [\"quote_sent\",", "reopen_on = [\"deal_lost\", \"quote_sent\",");
    let err = Journey::from_toml_str(&bad).unwrap_err().to_string();
    assert!(err.contains("reopen_on[0]") && err.contains("non-terminal"), "{err}");
}

// ---- batch envelopes are one message -------------------------------------------------------

#[test]
fn a_batch_envelope_goes_whole_to_the_shard_of_its_first_event() {
    use microfunnel::core::ids::kafka_partition;
    let (a, b) = (
        "usr_a",
        (0..)
            .map(|i| format!("usr_b{i}"))
            .find(|b| kafka_partition(b.as_bytes(), 4) != kafka_partition(b"usr_a", 4))
            .unwrap(),
    );
    let line = json!({"batch": [
        {"type": "track", "event": "Demo Requested", "userId": a, "messageId": "m-1", "timestamp": "2026-03-02T09:00:00.000Z"},
        {"type": "track", "event": "Demo Requested", "userId": b, "messageId": "m-2", "timestamp": "2026-03-02T09:01:00.000Z"},
    ]})
    .to_string();
    let opts = Options {
        limits: Limits::default(),
        end: End::Stay,
        digest: false,
        summary_only: true,
        partitions: 4,
        min_sample: microfunnel::core::funnel::MIN_SAMPLE,
        inputs: Vec::new(),
    };
    let (engines, _) =
        replay::run(b2b(), &opts, format!("{line}\n").as_bytes(), std::io::sink(), std::io::sink()).unwrap();
    let home = &engines[kafka_partition(a.as_bytes(), 4) as usize];
    assert!(
        home.find(a).is_some() && home.find(&b).is_some(),
        "both events in the first event's shard, as the service applies a message"
    );
    assert_eq!(engines.iter().map(|e| e.len()).sum::<usize>(), 2);
}

#[test]
fn a_far_ahead_second_event_of_a_fresh_shard_moves_the_clock_only_to_the_first() {
    // The shard's first event, then another prospect's clock in 2099 (or days ahead): the clock
    // is confirmed at the first event's time and goes no further.
    for ahead in ["2099-06-01T00:00:00Z", "2026-03-11T09:00:00Z"] {
        let lines = vec![
            canonical("a1", "usr_a", "web", "demo_requested", "2026-03-02T09:00:00Z"),
            canonical("x1", "anon-fast", "web", "page_viewed", ahead),
            canonical("b1", "usr_b", "crm", "quote_sent", "2026-03-02T06:00:00Z"),
            canonical("c1", "usr_c", "web", "page_viewed", "2026-03-02T10:00:00Z"),
        ];
        let r = run_on(b2b(), &lines, End::LastEvent, 1);
        assert!(r.of("late").is_empty(), "{ahead}: {:?}", r.outputs);
        assert_eq!(r.summary["watermark"], "2026-03-02T10:00:00.000Z", "{ahead}: the end advances to the real time");
        assert!(r.of("ghosted").is_empty(), "{ahead}: no timer fires from the fast clock");
    }
}
