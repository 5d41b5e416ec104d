//! Journey files: the shipped ones load, and every mistake is refused with a message that names
//! the key (and, where it has one, the entry) at fault.

use microfunnel::core::journey::{HotCondition, SignalSource, UnmappedPolicy};
use microfunnel::core::time::{MS_PER_DAY, MS_PER_HOUR};
use microfunnel::core::{EventKind, Journey, JourneyError, Span};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");
const ECOMMERCE: &str = include_str!("../deploy/journeys/ecommerce.toml");

/// The b2b journey with `from` (present exactly once) replaced by `to`.
fn b2b_with(from: &str, to: &str) -> String {
    assert_eq!(B2B.matches(from).count(), 1, "b2b.toml should contain {from:?} exactly once");
    B2B.replace(from, to)
}

fn load_err(text: &str) -> JourneyError {
    match Journey::from_toml_str(text) {
        Ok(_) => panic!("journey should be refused"),
        Err(e) => e,
    }
}

fn assert_names(err: &JourneyError, words: &[&str]) {
    let msg = err.to_string();
    for w in words {
        assert!(msg.contains(w), "message {msg:?} should name {w:?}");
    }
}

// ---- shipped journeys -------------------------------------------------------------------------

#[test]
fn shipped_b2b_journey_loads() {
    let j = Journey::from_toml_str(B2B).unwrap();
    assert_eq!(j.name, "b2b");
    let stages: Vec<&str> = j.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(stages, ["aware", "interested", "evaluating", "deciding", "won", "adopting", "advocating", "lost"]);
    assert!(j.stage(j.stage_by_name("lost").unwrap()).terminal);
    assert_eq!(j.signals.len(), 21);
    assert_eq!(
        j.hot_rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
        ["clarification_after_quote", "quote_requested", "engaged"]
    );
    match j.hot_rules[0].condition {
        HotCondition::Signal { signal, after: Some((after, within)) } => {
            assert_eq!(j.signal(signal).name, "quote_clarification_requested");
            assert_eq!(j.signal(after).name, "quote_sent");
            assert_eq!(within, Span(14 * MS_PER_DAY));
        }
        ref other => panic!("{other:?}"),
    }
    assert!(matches!(j.hot_rules[2].condition, HotCondition::ScoreAtLeast(t) if t == 60.0));
    assert_eq!(j.half_life, Span(14 * MS_PER_DAY));
    assert_eq!(j.max_score, 200.0);
    assert_eq!(j.allowed_lateness, Span(24 * MS_PER_HOUR));
    assert_eq!(j.alert_cooldown, Span(72 * MS_PER_HOUR));
    assert_eq!(j.hot_for, Span(7 * MS_PER_DAY));
    let ghost = j.ghost.unwrap();
    assert_eq!((j.signal(ghost.after).name.as_str(), ghost.window), ("quote_sent", Span(5 * MS_PER_DAY)));
    let stall = j.stall.unwrap();
    assert_eq!(stall.window, Span(21 * MS_PER_DAY));
    let watched = |name: &str| stall.stages & (1 << j.stage_by_name(name).unwrap().0) != 0;
    assert!(watched("evaluating") && watched("deciding") && !watched("aware"));
    assert_eq!(j.unmapped, UnmappedPolicy::Ignore);
    assert_eq!(j.signal(j.lookup("deal_won").unwrap()).source, SignalSource::Crm);
    assert_eq!(j.signal(j.lookup("quote_requested").unwrap()).source, SignalSource::Any);
    assert!(j.signal(j.lookup("disqualified").unwrap()).disqualifies);
}

#[test]
fn shipped_ecommerce_journey_loads() {
    let j = Journey::from_toml_str(ECOMMERCE).unwrap();
    assert_eq!(j.name, "ecommerce");
    assert_eq!(j.stages.len(), 8);
    assert_eq!(j.allowed_lateness, Span(2 * MS_PER_HOUR));
    assert_eq!(j.signal(j.ghost.unwrap().after).name, "checkout_started");
    assert_eq!(j.lookup("Product Added").map(|s| j.signal(s).name.as_str()), Some("add_to_cart"));
    assert_eq!(j.lookup("Order Completed").map(|s| j.signal(s).name.as_str()), Some("order_completed"));
}

#[test]
fn names_resolve_by_alias_regardless_of_case_and_separators() {
    let j = Journey::from_toml_str(B2B).unwrap();
    let demo = j.lookup("demo_requested").unwrap();
    for name in ["Demo Requested", "demo-requested", "DEMO_REQUESTED", "  demo   requested "] {
        assert_eq!(j.lookup(name), Some(demo), "{name}");
        assert_eq!(j.resolve(EventKind::Named, name), Some(demo));
    }
    assert_eq!(j.lookup("Whitepaper Downloaded"), j.lookup("content_downloaded"));
    assert_eq!(j.lookup("Demo Request"), None);
    assert_eq!(j.resolve(EventKind::Page, ""), j.lookup("page_viewed"));
    assert_eq!(j.resolve(EventKind::Screen, ""), j.lookup("page_viewed"));
    assert_eq!(j.resolve(EventKind::Identify, ""), j.lookup("identified"));
}

// ---- each JourneyError ------------------------------------------------------------------------

#[test]
fn unknown_signal_in_a_stage_is_named() {
    let err = load_err(&b2b_with(
        r#"entered_by = ["demo_requested", "meeting_booked", "add_to_cart"]"#,
        r#"entered_by = ["demo_requestd", "meeting_booked", "add_to_cart"]"#,
    ));
    assert!(matches!(err, JourneyError::UnknownSignal { .. }), "{err:?}");
    assert_names(&err, &["stages[2]", "evaluating", "entered_by", "`demo_requestd`"]);
}

#[test]
fn unknown_signal_in_a_hot_rule_is_named() {
    let err = load_err(&b2b_with(
        r#"after = "quote_sent"
within_days = 14"#,
        r#"after = "quote_snt"
within_days = 14"#,
    ));
    assert!(matches!(err, JourneyError::UnknownSignal { .. }), "{err:?}");
    assert_names(&err, &["hot_rules[0]", "clarification_after_quote", ".after", "`quote_snt`"]);

    let err = load_err(&b2b_with(r#"signal = "quote_requested""#, r#"signal = "quote_requestd""#));
    assert_names(&err, &["hot_rules[1]", ".signal", "`quote_requestd`"]);

    let err = load_err(&b2b_with(r#"after = "quote_sent"     #"#, r#"after = "quote_mailed"     #"#));
    assert_names(&err, &["ghosted.after", "`quote_mailed`"]);

    let err = load_err(&b2b_with(r#"identify = "identified""#, r#"identify = "identity""#));
    assert_names(&err, &["segment.identify", "`identity`"]);
}

#[test]
fn unknown_stage_is_named() {
    let err =
        load_err(&b2b_with("\nstages = [\"evaluating\", \"deciding\"]", "\nstages = [\"evaluating\", \"decide\"]"));
    assert!(matches!(err, JourneyError::UnknownStage { .. }), "{err:?}");
    assert_names(&err, &["stalled.stages[1]", "`decide`", "known stages: aware, interested"]);

    let err = load_err(&b2b_with(
        r#"opportunity_stages = ["evaluating", "deciding"]"#,
        r#"opportunity_stages = ["Evaluating", "deciding"]"#,
    ));
    assert_names(&err, &["classification.opportunity_stages[0]", "`Evaluating`"]);
}

#[test]
fn duplicate_signal_name_or_alias_is_named() {
    // An alias that normalises to another signal's name.
    let err = load_err(&b2b_with(
        r#"aliases = ["Ad Clicked", "Promotion Clicked"]"#,
        r#"aliases = ["Ad Clicked", "Promotion Clicked", "Page-Viewed"]"#,
    ));
    assert!(matches!(err, JourneyError::DuplicateSignal { index: 1, .. }), "{err:?}");
    assert_names(&err, &["signals[1]", "`Page-Viewed`", "`page_viewed`", "signals[0] (`page_viewed`)"]);

    // The same alias on two signals.
    let err = load_err(&b2b_with(
        r#"aliases = ["Whitepaper Downloaded", "Ebook Downloaded", "Case Study Downloaded"]"#,
        r#"aliases = ["Whitepaper Downloaded", "Ebook Downloaded", "Case Study Downloaded", "Signed Up"]"#,
    ));
    assert_names(&err, &["signals[5]", "`Signed Up`", "`signed_up`", "signals[3] (`content_downloaded`)"]);

    // A signal declared twice.
    let err = load_err(&format!(
        "{B2B}\n[[signals]]\nname = \"Demo Requested\"\nsource = \"web\"\nweight = 1.0\nprospect_initiated = true\n"
    ));
    assert!(matches!(err, JourneyError::DuplicateSignal { index: 21, .. }), "{err:?}");
    assert_names(&err, &["signals[21]", "`Demo Requested`", "signals[8] (`demo_requested`)"]);
}

#[test]
fn an_alias_equal_to_its_own_name_is_fine() {
    let text = b2b_with(r#"aliases = ["Demo Requested"]"#, r#"aliases = ["Demo Requested", "demo_requested"]"#);
    assert!(Journey::from_toml_str(&text).is_ok());
}

#[test]
fn non_increasing_stage_order_is_named() {
    let err = load_err(&b2b_with("name = \"interested\"\norder = 20", "name = \"interested\"\norder = 10"));
    assert_eq!(
        err,
        JourneyError::NonIncreasingOrder {
            index: 1,
            name: "interested".into(),
            order: 10,
            prev: "aware".into(),
            prev_order: 10
        }
    );
    assert_names(&err, &["stages[1]", "`interested`", "order 10", "`aware`"]);
    let err = load_err(&b2b_with("order = 99", "order = 65"));
    assert_names(&err, &["stages[7]", "`lost`", "order 65", "70 of `advocating`"]);
}

#[test]
fn duplicate_stage_is_named() {
    let err = load_err(&b2b_with("name = \"adopting\"", "name = \"won\""));
    assert_eq!(err, JourneyError::DuplicateStage { index: 5, name: "won".into() });
    assert_names(&err, &["stages[5]", "`won`"]);
}

#[test]
fn signal_in_two_stages_is_named() {
    let err = load_err(&b2b_with(
        r#"entered_by = ["email_subscribed", "content_downloaded", "webinar_registered", "account_created"]"#,
        r#"entered_by = ["email_subscribed", "content_downloaded", "webinar_registered", "account_created", "Demo Requested"]"#,
    ));
    assert_eq!(
        err,
        JourneyError::SignalInTwoStages {
            signal: "demo_requested".into(),
            first: "interested".into(),
            second: "evaluating".into()
        }
    );
    assert_names(&err, &["`demo_requested`", "`interested`", "`evaluating`"]);
}

#[test]
fn unknown_keys_are_rejected() {
    for (from, to, key) in [
        ("half_life_days = 14", "half_life = 14", "half_life"),
        ("cooldown_hours = 72", "cooldown_hours = 72\nquiet_hours = 8", "quiet_hours"),
        (
            "name = \"page_viewed\"\nsource = \"web\"",
            "name = \"page_viewed\"\nsorce = \"web\"\nsource = \"web\"",
            "sorce",
        ),
        ("[ghosted]", "[ghosted]\nafter_days = 5", "after_days"),
        ("[classification]", "[classification]\nhot_stages = []", "hot_stages"),
        ("[segment]", "[segment]\ntrack = \"page_viewed\"", "track"),
    ] {
        let err = load_err(&b2b_with(from, to));
        assert!(matches!(err, JourneyError::Schema { .. }), "{key}: {err:?}");
        assert_names(&err, &[&format!("{key}: unknown key")]);
    }
    let err = load_err(&format!("{B2B}\n[alerts]\nslack_channel = \"#sales\"\n"));
    assert_names(&err, &["alerts: unknown key", "`hot_rules`"]);
}

#[test]
fn bad_numbers_are_named() {
    for (from, to, words) in [
        ("half_life_days = 14", "half_life_days = 0", &["scoring", "`half_life_days`", "positive", "got 0"][..]),
        ("max_score = 200", "max_score = -200", &["scoring", "`max_score`", "-200"]),
        (
            "allowed_lateness_hours = 24",
            "allowed_lateness_hours = -1",
            &["time", "`allowed_lateness_hours`", "zero or more"],
        ),
        ("cooldown_hours = 72", "cooldown_hours = nan", &["hot", "`cooldown_hours`", "NaN"]),
        ("hot_for_days = 7", "hot_for_days = 0", &["hot", "`hot_for_days`"]),
        ("within_days = 14", "within_days = -14", &["hot_rules[0]", "`within_days`", "-14"]),
        ("score_at_least = 60.0", "score_at_least = 0", &["hot_rules[2]", "`engaged`", "`score_at_least`"]),
        ("days = 5", "days = 0", &["ghosted", "`days`"]),
        ("days = 21", "days = inf", &["stalled", "`days`", "inf"]),
        ("weight = 25.0", "weight = inf", &["signals[8]", "`demo_requested`", "`weight`", "finite"]),
        ("cap = 24.0", "cap = 0", &["signals[3]", "`content_downloaded`", "`cap`"]),
    ] {
        let err = load_err(&b2b_with(from, to));
        assert!(matches!(err, JourneyError::Invalid { .. }), "{to}: {err:?}");
        assert_names(&err, words);
    }
}

#[test]
fn numbers_of_the_wrong_type_name_the_key() {
    for (from, to, key) in [
        ("half_life_days = 14", "half_life_days = \"14\"", "half_life_days"),
        ("name = \"aware\"\norder = 10", "name = \"aware\"\norder = -10", "order"),
        ("name = \"aware\"\norder = 10", "name = \"aware\"\norder = 10.5", "order"),
        ("weight = 25.0", "weight = \"high\"", "weight"),
    ] {
        let err = load_err(&b2b_with(from, to));
        assert!(matches!(err, JourneyError::Schema { .. }), "{to}: {err:?}");
        assert_names(&err, &[&format!(".{key}: ")]);
    }
}

#[test]
fn structural_mistakes_are_named() {
    let cases: Vec<(String, &[&str])> = vec![
        (b2b_with(r#"name = "b2b""#, r#"name = " ""#), &["name", "empty"]),
        (
            b2b_with("name = \"aware\"\norder = 10", "name = \"aware\"\norder = 10\nterminal = true"),
            &["stages[0]", "terminal"],
        ),
        (
            b2b_with("name = \"aware\"\norder = 10", "name = \"aware\"\norder = 10\noutcome = \"won\""),
            &["stages[0]", "outcome"],
        ),
        (
            b2b_with(r#"name = "engaged""#, r#"name = "quote_requested""#),
            &["hot_rules[2]", "`quote_requested`", "twice"],
        ),
        (b2b_with(r#"reason = "Asked for a quote""#, r#"reason = """#), &["hot_rules[1]", "`reason`"]),
        (b2b_with("within_days = 14\n", ""), &["hot_rules[0]", "`after`", "`within_days`"]),
        (
            b2b_with("score_at_least = 60.0", "score_at_least = 60.0\nsignal = \"demo_requested\""),
            &["hot_rules[2]", "`score_at_least`", "`signal`"],
        ),
        (
            b2b_with("score_at_least = 60.0", "score_at_least = 60.0\nwithin_days = 3"),
            &["hot_rules[2]", "`after`/`within_days`", "`score_at_least`"],
        ),
        (
            b2b_with("name = \"page_viewed\"\nsource", "name = \"--\"\nsource"),
            &["signals[0]", "`--`", "no letters or digits"],
        ),
        (
            b2b_with(
                "source = \"crm\"\nweight = 0.0\nprospect_initiated = false\ndisqualifies",
                "source = \"phone\"\nweight = 0.0\nprospect_initiated = false\ndisqualifies",
            ),
            &["signals[20] (`disqualified`).source: unknown value `phone`", "`web`, `crm`, `any`"],
        ),
        ("name = \"x\"".to_string(), &["stages: declare at least one [[stages]] entry"]),
        ("not toml at all = = =".to_string(), &["not valid TOML"]),
    ];
    for (text, words) in cases {
        let err = load_err(&text);
        assert_names(&err, words);
    }
}

#[test]
fn a_minimal_journey_loads_with_defaults() {
    let j = Journey::from_toml_str(
        r#"
name = "minimal"
[scoring]
half_life_days = 7
[hot]
cooldown_hours = 0
hot_for_days = 1
[[stages]]
name = "visiting"
order = 1
entered_by = ["Visited"]
[[signals]]
name = "Visited"
source = "any"
weight = 1
prospect_initiated = true
"#,
    )
    .unwrap();
    assert_eq!(j.max_score, 1000.0);
    assert_eq!(j.allowed_lateness, Span(24 * MS_PER_HOUR));
    assert!(j.ghost.is_none() && j.stall.is_none() && j.hot_rules.is_empty());
    assert_eq!(j.unmapped, UnmappedPolicy::Ignore);
    assert_eq!(j.resolve(EventKind::Page, ""), None);
    assert_eq!(j.lookup("visited"), Some(microfunnel::core::SignalId(0)));
}

#[test]
fn a_signal_listed_twice_in_one_stage_is_named_as_such() {
    let text = b2b_with(
        r#"entered_by = ["page_viewed", "ad_clicked"]"#,
        r#"entered_by = ["page_viewed", "ad_clicked", "page_viewed"]"#,
    );
    assert_names(&load_err(&text), &["aware", "entered_by", "page_viewed", "twice"]);
}

#[test]
fn allowed_lateness_is_bounded() {
    let text = b2b_with("allowed_lateness_hours = 24", "allowed_lateness_hours = 2000000");
    assert_names(&load_err(&text), &["allowed_lateness_hours", "1000000"]);
}

#[test]
fn transfer_dedup_days_defaults_to_seven_and_is_checked() {
    let with = |v: &str| format!("{B2B}\n[identity]\nresolve = true\n{v}");
    let j = Journey::from_toml_str(&with("")).unwrap();
    assert_eq!(j.transfer_dedup, Span(7 * MS_PER_DAY));
    let j = Journey::from_toml_str(&with("transfer_dedup_days = 30\n")).unwrap();
    assert_eq!(j.transfer_dedup, Span(30 * MS_PER_DAY));
    for v in ["0", "-1", "nan", "40000"] {
        let err = load_err(&with(&format!("transfer_dedup_days = {v}\n")));
        assert!(matches!(err, JourneyError::Invalid { .. }), "{v}: {err:?}");
        assert_names(&err, &["identity.transfer_dedup_days", "positive number of days", "leave it out"]);
    }
}

// ---- every mistake at once --------------------------------------------------------------------

fn all_errors(text: &str) -> Vec<String> {
    match Journey::parse(text) {
        Ok(_) => panic!("journey should be refused"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn five_mistakes_in_one_file_give_five_errors_in_one_run() {
    let text = B2B
        .replace("cooldown_hours = 72", "cooldown_hrs = 72")
        .replace("name = \"aware\"\norder = 10", "name = \"aware\"\norder = \"ten\"")
        .replace(
            "[[hot_rules]]\nname = \"quote_requested\"\nsignal = \"quote_requested\"",
            "[[hot_rules]]\nname = \"quote_requested\"\nsignal = \"quote_requestd\"",
        )
        .replace(
            "opportunity_stages = [\"evaluating\", \"deciding\"]",
            "opportunity_stages = [\"evaluatng\", \"deciding\"]",
        )
        .replace("score_at_least = 60.0", "score_at_least = 600.0");
    let errors = all_errors(&text);
    assert_eq!(errors.len(), 5, "{errors:#?}");
    let expected = [
        "hot.cooldown_hrs: unknown key; did you mean `cooldown_hours`?",
        "stages[0] (`aware`).order: wrong type: string \"ten\", expected u32",
        "hot_rules[1] (`quote_requested`).signal: unknown signal `quote_requestd`; did you mean `quote_requested`?",
        "hot_rules[2] (`engaged`).score_at_least: 600 can never be reached (scores are clamped to scoring.max_score = 200); the rule can never fire",
        "classification.opportunity_stages[0]: unknown stage `evaluatng`; did you mean `evaluating`?",
    ];
    for want in expected {
        assert!(errors.iter().any(|e| e.starts_with(want)), "{want:?} not in {errors:#?}");
    }
    // The missing-key report does not repeat a key already reported for its type or spelling.
    assert!(!errors.iter().any(|e| e.contains("missing")), "{errors:#?}");
}

#[test]
fn missing_required_keys_are_each_named() {
    let text = B2B.replace("hot_for_days = 7", "").replace("weight = 25.0\n", "");
    let errors = all_errors(&text);
    assert_eq!(
        errors,
        ["signals[8].weight: missing; this key is required", "hot.hot_for_days: missing; this key is required"]
    );
}

#[test]
fn unreachable_rules_and_stages_are_flagged() {
    // A stage no signal enters.
    let text = b2b_with(r#"entered_by = ["referral_made"]"#, "");
    assert_eq!(
        all_errors(&text),
        [
            "stages[6] (`advocating`): no signal enters this stage, so no prospect can reach it; list signals under its `entered_by`"
        ]
    );
    // A score no prospect can reach when every signal that adds points is capped.
    let capped = r#"
name = "capped"
[scoring]
half_life_days = 7
[hot]
cooldown_hours = 0
hot_for_days = 1
[[stages]]
name = "visiting"
order = 1
entered_by = ["visited"]
[[signals]]
name = "visited"
source = "any"
weight = 1
cap = 5
prospect_initiated = true
[[hot_rules]]
name = "busy"
reason = "busy"
score_at_least = 6
"#;
    let errors = all_errors(capped);
    assert_eq!(errors.len(), 1);
    assert!(errors[0].contains("hot_rules[0] (`busy`).score_at_least: 6 can never be reached"), "{errors:?}");
    assert!(Journey::parse(&capped.replace("score_at_least = 6", "score_at_least = 5")).is_ok());
}

#[test]
fn unknown_names_without_a_close_match_say_how_to_fix_them() {
    let text = b2b_with(r#"after = "quote_sent"     #"#, r#"after = "zzz"     #"#);
    assert_eq!(all_errors(&text), ["ghosted.after: unknown signal `zzz`; declare it under [[signals]] first"]);
}

#[test]
fn page_rules_are_checked() {
    let text = format!(
        "{B2B}
[[segment.pages]]
path = \"/pricing[\"
signal = \"pricing_viewd\"

[[segment.pages]]
signal = \"page_viewed\"
"
    );
    let errors = all_errors(&text);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors[0].starts_with("segment.pages[0].signal: unknown signal `pricing_viewd`"), "{errors:#?}");
    assert!(errors[1].starts_with("segment.pages[0].path: `/pricing[` is not a pattern"), "{errors:#?}");
    assert!(errors[2].starts_with("segment.pages[1]: set at least one of"), "{errors:#?}");
}

#[test]
fn reopen_on_a_stage_after_the_sale_must_move_back() {
    // `adopting` (after `won`) may be left again only for an earlier stage.
    let text = b2b_with(
        r#"entered_by = ["product_used"]"#,
        "entered_by = [\"product_used\"]\nreopen_on = [\"referral_made\", \"deal_won\"]",
    );
    assert_eq!(
        all_errors(&text),
        [
            "stages[5] (`adopting`).reopen_on[0]: signal `referral_made` does not enter an earlier stage, so it cannot move a prospect back out of this one; list a signal of an earlier stage's `entered_by`"
        ]
    );
}
