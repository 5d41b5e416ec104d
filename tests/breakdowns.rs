//! Funnel breakdowns (issue 21) without a broker: attribution rules on hand-written events
//! (first touch, last touch, at a stage, a segment, identity merges, the slot cap), the state
//! round trips, journey validation, and generated traffic whose campaigns' true win rates differ,
//! checked against counts made here from the generated lines.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use microfunnel::codec::{self, Limits};
use microfunnel::core::snapshot::Dec;
use microfunnel::core::{Engine, Journey, Output};
use serde_json::{Value, json};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

/// The b2b journey with `breakdowns` (TOML) instead of its own `[breakdowns]`, and `extra`.
fn journey_with(breakdowns: &str, extra: &str) -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(&journey_text(breakdowns, extra)).unwrap_or_else(|e| panic!("{e}")))
}

fn journey_text(breakdowns: &str, extra: &str) -> String {
    let (head, rest) = B2B.split_once("[breakdowns]").unwrap();
    let tail = &rest[rest.find("# ---- CRM changes").unwrap()..];
    format!("{head}{breakdowns}\n{extra}\n{tail}")
}

const DIMENSIONS: &str = r#"
[breakdowns]
[[breakdowns.dimensions]]
name = "first"
field = "utm_campaign"
[[breakdowns.dimensions]]
name = "last"
field = "utm_campaign"
attribution = "last_touch"
[[breakdowns.dimensions]]
name = "at_evaluating"
field = "utm_campaign"
at_stage = "evaluating"
[[breakdowns.dimensions]]
name = "source"
field = "utm_source"
max_values = 2
[[breakdowns.segments]]
name = "content_first"
signal = "content_downloaded"
before_stage = "evaluating"
"#;

/// A canonical envelope at `day` (of January 2026) and `hour`, with `utm_*` properties.
fn ev(prospect: &str, n: u32, kind: &str, day: u32, utm: Option<(&str, &str)>) -> Vec<u8> {
    let mut props = json!({});
    if let Some((source, campaign)) = utm {
        props = json!({ "utm_source": source, "utm_medium": "cpc", "utm_campaign": campaign });
    }
    json!({
        "event_id": format!("{prospect}-{n}"), "prospect_id": prospect, "source": "web", "type": kind,
        "ts": format!("2026-01-{day:02}T10:00:00Z"), "properties": props,
    })
    .to_string()
    .into_bytes()
}

fn apply_all(engine: &mut Engine, lines: &[Vec<u8>]) {
    let journey = Arc::clone(engine.journey());
    let mut out: Vec<Output> = Vec::new();
    for l in lines {
        let e = codec::decode(l, &journey, &Limits::default()).unwrap_or_else(|e| panic!("{e}"));
        engine.apply(&e, &mut out);
    }
}

fn values(engine: &Engine, prospect: &str) -> BTreeMap<String, Option<String>> {
    let ix = engine.find(prospect).unwrap();
    engine.attributed(ix).into_iter().map(|(d, v)| (d.to_string(), v.map(str::to_string))).collect()
}

fn expect(pairs: &[(&str, Option<&str>)]) -> BTreeMap<String, Option<String>> {
    pairs.iter().map(|(d, v)| (d.to_string(), v.map(str::to_string))).collect()
}

/// The same four touches, in time order for one prospect and shuffled for another: first touch,
/// last touch and the segment depend on event time only; the value at a stage is the last touch
/// before the prospect entered it.
#[test]
fn first_touch_last_touch_and_the_value_at_a_stage_differ_as_documented() {
    let mut engine = Engine::new(journey_with(DIMENSIONS, ""));
    let walk = |p: &str| {
        [
            ev(p, 1, "page_viewed", 5, Some(("google", "brand"))),
            ev(p, 2, "content_downloaded", 6, Some(("linkedin", "playbook"))),
            ev(p, 3, "demo_requested", 7, None),
            ev(p, 4, "page_viewed", 9, Some(("newsletter", "retarget"))),
        ]
    };
    apply_all(&mut engine, &walk("in-order"));
    let [a, b, c, d] = walk("shuffled");
    apply_all(&mut engine, &[d, a, c, b]);
    // Content only after the demo: not in the segment.
    apply_all(
        &mut engine,
        &[ev("late-content", 1, "demo_requested", 7, None), ev("late-content", 2, "content_downloaded", 8, None)],
    );
    let want = expect(&[
        ("first", Some("brand")),
        ("last", Some("retarget")),
        ("at_evaluating", Some("playbook")),
        ("source", Some("google")),
        ("content_first", Some("yes")),
    ]);
    assert_eq!(values(&engine, "in-order"), want);
    let view = engine.view(engine.find("in-order").unwrap(), None);
    assert!(view.breakdowns.contains(&("at_evaluating".to_string(), Some("playbook".to_string()))), "{view:?}");
    let shuffled = values(&engine, "shuffled");
    for d in ["first", "last", "source", "content_first"] {
        assert_eq!(shuffled[d], want[d], "{d} depends on event time only");
    }
    assert_eq!(values(&engine, "late-content")["content_first"], None);
}

/// A shard gives `max_values` distinct values a slot; later new values are `other` (counted),
/// kept apart from `none`; reports fold values beyond the top K into `other`.
#[test]
fn values_beyond_the_cap_are_other_and_counted() {
    let mut engine = Engine::new(journey_with(DIMENSIONS, ""));
    let lines: Vec<Vec<u8>> = (0..5)
        .map(|i| ev(&format!("p{i}"), 1, "page_viewed", 5 + i, Some((&format!("src{i}"), "c"))))
        .chain([ev("direct", 1, "page_viewed", 5, None)])
        .collect();
    apply_all(&mut engine, &lines);
    let source: Vec<Option<String>> = (0..5).map(|i| values(&engine, &format!("p{i}"))["source"].clone()).collect();
    let other = Some("other".to_string());
    assert_eq!(source, [Some("src0".into()), Some("src1".into()), other.clone(), other.clone(), other]);
    assert_eq!(values(&engine, "direct")["source"], None);
    let tables = engine.breakdown_tables();
    let t = tables.iter().find(|t| t.dimension == "source").unwrap();
    assert_eq!((t.values.len(), t.other.prospects, t.none.prospects, t.folded_touches), (2, 3, 1, 3));
    let report = microfunnel::core::breakdown::report(engine.journey(), [&engine], 30);
    let r = report.iter().find(|r| r.dimension == "source").unwrap();
    assert_eq!((r.values.len(), r.other.prospects, r.none.prospects), (2, 3, 1));
}

/// The attributed values survive a full state and a changelog record, and count in the digest.
#[test]
fn attributed_values_are_state_and_round_trip() {
    let journey = journey_with(DIMENSIONS, "");
    let mut engine = Engine::new(Arc::clone(&journey));
    apply_all(
        &mut engine,
        &[
            ev("p1", 1, "page_viewed", 5, Some(("google", "brand"))),
            ev("p1", 2, "content_downloaded", 6, Some(("bing", "playbook"))),
            ev("p2", 1, "page_viewed", 5, None),
        ],
    );
    let mut bytes = Vec::new();
    engine.encode_state(&mut bytes);
    let back = Engine::decode_state(Arc::clone(&journey), &bytes).unwrap();
    assert_eq!(back.digest(), engine.digest());
    assert_eq!(values(&back, "p1"), values(&engine, "p1"));
    let lens = |e: &Engine| e.attributions().tables().iter().map(|t| t.len()).collect::<Vec<_>>();
    assert_eq!(lens(&back), lens(&engine));
    assert_eq!(lens(&engine), [1, 2, 2, 1, 1], "a value takes a slot when attributed: first touch one, last touch two");

    // A changelog record of p1 and the checkpoint meta install the same values elsewhere.
    let mut meta = Vec::new();
    engine.encode_meta(&mut meta);
    let ix = engine.find("p1").unwrap();
    let mut rec = Vec::new();
    engine.encode_changelog_record(ix, &mut rec);
    let mut fresh = Engine::new(Arc::clone(&journey));
    fresh.decode_meta(&mut Dec::new(&meta)).unwrap();
    let r = fresh.decode_changelog_record(&mut Dec::new(&rec)).unwrap();
    fresh.install("p1", r).unwrap();
    assert_eq!(values(&fresh, "p1"), values(&engine, "p1"));
    assert_eq!(fresh.prospect_digest(fresh.find("p1").unwrap()), engine.prospect_digest(ix));

    // Without the values the digest differs: they are part of the state.
    let mut other = Engine::new(journey_with("", ""));
    apply_all(
        &mut other,
        &[
            ev("p1", 1, "page_viewed", 5, Some(("google", "brand"))),
            ev("p1", 2, "content_downloaded", 6, Some(("bing", "playbook"))),
        ],
    );
    assert_ne!(other.prospect_digest(other.find("p1").unwrap()), engine.prospect_digest(ix));
}

fn segment_track(
    anonymous: &str,
    user: Option<&str>,
    event: &str,
    n: u32,
    day: u32,
    campaign: Option<&str>,
) -> Vec<u8> {
    let mut v = json!({
        "type": "track", "event": event, "anonymousId": anonymous, "userId": user,
        "messageId": format!("{anonymous}-{n}"), "timestamp": format!("2026-01-{day:02}T10:00:00Z"),
        "context": {},
    });
    if let Some(c) = campaign {
        v["context"]["campaign"] = json!({ "name": c, "source": "google", "medium": "cpc" });
    }
    v.to_string().into_bytes()
}

/// Identity resolution folds an anonymous visitor into the user it becomes: first touch is the
/// earlier touch's value, whichever id had it.
#[test]
fn an_identity_merge_keeps_the_earlier_first_touch() {
    let journey = journey_with(DIMENSIONS, "[identity]\nresolve = true\n");
    let mut engine = Engine::new(journey);
    apply_all(
        &mut engine,
        &[
            // The user's own touch is later than the device's.
            segment_track("dev-9", Some("usr-9"), "Whitepaper Downloaded", 2, 8, Some("late-campaign")),
            segment_track("dev-1", None, "Promotion Clicked", 1, 3, Some("early-campaign")),
            segment_track("dev-1", Some("usr-1"), "Whitepaper Downloaded", 2, 8, Some("late-campaign")),
        ],
    );
    let v = values(&engine, "usr-1");
    assert_eq!(v["first"].as_deref(), Some("early-campaign"), "{v:?}");
    assert_eq!(v["last"].as_deref(), Some("late-campaign"), "{v:?}");
    assert_eq!(values(&engine, "usr-9")["first"].as_deref(), Some("late-campaign"));
}

#[test]
fn configuration_mistakes_name_the_key_and_the_fix() {
    let bad = r#"
[breakdowns]
top_k = 0
[[breakdowns.dimensions]]
name = "campaign"
field = "utm_campain"
[[breakdowns.dimensions]]
name = "campaign"
field = "utm_source"
attribution = "first_click"
[[breakdowns.dimensions]]
name = "Medium"
field = "utm_medium"
attribution = "last_touch"
at_stage = "evaluating"
[[breakdowns.dimensions]]
name = "at"
field = "utm_medium"
at_stage = "evaluatng"
[[breakdowns.segments]]
name = "seg"
signal = "content_download"
"#;
    let err = Journey::parse(&journey_text(bad, "")).unwrap_err().to_string();
    for needle in [
        "breakdowns.top_k: must be between 1 and",
        "breakdowns.dimensions[0].field: unknown field `utm_campain`; use one of utm_source, utm_medium, utm_campaign, referrer_domain",
        "breakdowns.dimensions[1].name: `campaign` is already the name of breakdowns.dimensions[0]",
        "breakdowns.dimensions[1].attribution: unknown attribution `first_click`; use first_touch, last_touch",
        "breakdowns.dimensions[2].name: `Medium`: use lower-case letters",
        "breakdowns.dimensions[2].at_stage: set either `attribution`",
        "breakdowns.dimensions[3].at_stage: unknown stage `evaluatng`",
        "breakdowns.segments[0].signal: unknown signal `content_download`",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

// ---- generated traffic --------------------------------------------------------------------------

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_microfunnel"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// The campaign a generated line names (as the decoder documents its sources), its prospect and
/// time in milliseconds; `None` for a line that is not a JSON object.
fn touch_of_line(v: &Value) -> Option<(String, i64, Option<String>)> {
    let s = |v: &Value| v.as_str().map(str::to_string);
    let prospect = s(&v["prospect_id"]).or_else(|| s(&v["userId"])).or_else(|| s(&v["anonymousId"]))?;
    let ts = s(&v["ts"]).or_else(|| s(&v["timestamp"]))?;
    let ts = microfunnel::core::time::parse_rfc3339(&ts).ok()?.0;
    let from_url = |u: &Value| {
        let u = u.as_str()?;
        let q = u.split_once('?')?.1;
        q.split('&').find_map(|kv| kv.strip_prefix("utm_campaign=")).map(str::to_string)
    };
    let campaign = s(&v["context"]["campaign"]["name"])
        .or_else(|| from_url(&v["context"]["page"]["url"]))
        .or_else(|| s(&v["properties"]["utm_campaign"]))
        .or_else(|| from_url(&v["properties"]["url"]));
    Some((prospect, ts, campaign))
}

/// Generated traffic from campaigns whose true win rates differ (deploy/gen/campaigns.toml):
/// replay ranks the campaign whose prospects truly won most first, and its prospects per
/// campaign equal a first-touch count made here from the generated lines.
#[test]
fn generated_campaigns_rank_by_true_win_rate_and_counts_match_the_lines() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (events, truth) = (dir.join("breakdowns-campaigns.jsonl"), dir.join("breakdowns-truth.jsonl"));
    let out = bin()
        .args(["gen", "--prospects", "6000", "--days", "120", "--seed", "21", "--quiet"])
        .args(["--model", "deploy/gen/campaigns.toml", "--out"])
        .arg(&events)
        .arg("--truth")
        .arg(&truth)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The truth: each campaign's won / (won + lost) over its decided prospects.
    let mut true_rates: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for l in std::fs::read_to_string(&truth).unwrap().lines() {
        let t: Value = serde_json::from_str(l).unwrap();
        if let (Some(c), Some(o)) = (t["campaign"].as_str(), t["outcome"].as_str()) {
            let e = true_rates.entry(c.to_string()).or_default();
            match o {
                "won" => e.0 += 1,
                "lost" => e.1 += 1,
                _ => {}
            }
        }
    }
    let rate = |(w, l): (u64, u64)| w as f64 / (w + l).max(1) as f64;
    let best = true_rates.iter().max_by(|a, b| rate(*a.1).total_cmp(&rate(*b.1))).unwrap().0.clone();
    assert_eq!(best, "spring-launch", "the model's best campaign also won most in this sample: {true_rates:?}");

    // First touch per prospect, counted from the lines: the earliest line naming a campaign.
    let mut first: HashMap<String, (i64, String)> = HashMap::new();
    for l in std::fs::read_to_string(&events).unwrap().lines() {
        let Ok(v) = serde_json::from_str::<Value>(l) else { continue };
        // Touches count on the events a journey applies: not on the generator's one event
        // name no signal maps.
        if v["type"] == "video_played" || v["event"] == "Video Played" {
            continue;
        }
        if let Some((p, ts, Some(c))) = touch_of_line(&v) {
            let e = first.entry(p).or_insert((ts, c.clone()));
            if ts < e.0 {
                *e = (ts, c);
            }
        }
    }
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for (_, c) in first.values() {
        *expected.entry(c.clone()).or_default() += 1;
    }

    let out = bin().args(["replay", "--summary-only", "--partitions", "3"]).arg(&events).output().unwrap();
    assert!(out.status.success());
    let summary: Value = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["kind"] == "funnel_summary")
        .unwrap();
    let campaign = summary["breakdowns"].as_array().unwrap().iter().find(|b| b["dimension"] == "campaign").unwrap();
    let values = campaign["values"].as_array().unwrap();
    let counted: BTreeMap<String, u64> =
        values.iter().map(|v| (v["value"].as_str().unwrap().to_string(), v["prospects"].as_u64().unwrap())).collect();
    assert_eq!(counted, expected, "prospects per campaign (first touch) equal the count from the lines");
    assert_eq!(campaign["other"]["prospects"], 0);
    let held = summary["census"]["prospects"].as_u64().unwrap();
    assert_eq!(counted.values().sum::<u64>() + campaign["none"]["prospects"].as_u64().unwrap(), held);

    assert_eq!(values[0]["value"], "spring-launch", "the best campaign ranks first: {values:#?}");
    assert_eq!(values[0]["small_sample"], false);
    let ranked: Vec<&str> =
        values.iter().filter(|v| v["small_sample"] == false).map(|v| v["value"].as_str().unwrap()).collect();
    assert_eq!(ranked.last(), Some(&"display-retarget"), "the worst campaign ranks last: {ranked:?}");

    // `--report --by campaign` prints the same ranking as a table.
    let out = bin().args(["replay", "--report", "--by", "campaign"]).arg(&events).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let table = &text[text.find("\nBy campaign").expect("a campaign table")..];
    let first_row = table.lines().nth(4).unwrap();
    assert!(first_row.trim_start().starts_with("spring-launch"), "{table}");
    let out = bin().args(["replay", "--report", "--by", "campaing"]).arg(&events).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--by campaing: journey `b2b` has no breakdown dimension"));
}

/// A state written under other dimensions loads with no values: attribution starts again
/// (version-3 states, without a breakdown part, load in `tests/snapshot.rs`).
#[test]
fn a_state_of_other_dimensions_loads_without_values() {
    let mut engine = Engine::new(journey_with(DIMENSIONS, ""));
    apply_all(&mut engine, &[ev("p1", 1, "page_viewed", 5, Some(("google", "brand")))]);
    let mut bytes = Vec::new();
    engine.encode_state(&mut bytes);
    let renamed = journey_with(&DIMENSIONS.replace("name = \"first\"", "name = \"first_campaign\""), "");
    let back = Engine::decode_state(Arc::clone(&renamed), &bytes).unwrap();
    assert!(values(&back, "p1").values().all(Option::is_none), "{:?}", values(&back, "p1"));
    assert_eq!(back.attributions().tables()[0].len(), 0);
    let plain = Engine::decode_state(journey_with("", ""), &bytes).unwrap();
    assert_eq!((plain.len(), plain.attributions().tables().len()), (1, 0));

    // Without dimensions the state still ends with an (empty) breakdown section: tag, length
    // 5, no dimensions, no prospects. Cut off, the state is refused.
    let mut bytes = Vec::new();
    plain.encode_state(&mut bytes);
    let n = bytes.len();
    assert_eq!(bytes[n - 10..], [b'B', 5, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert!(Engine::decode_state(journey_with("", ""), &bytes[..n - 10]).is_err());
}

/// A model's campaigns are checked before anything is generated.
#[test]
fn a_model_with_bad_campaigns_is_refused_by_key() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for (model, needle) in [
        ("[[campaigns]]\nname = \"a b\"\nsource = \"s\"\nmedium = \"m\"\nshare = 0.5\n", "campaigns[0]: name \"a b\""),
        (
            "[[campaigns]]\nname = \"a\"\nsource = \"s\"\nmedium = \"m\"\nshare = 0.7\n[[campaigns]]\nname = \"b\"\nsource = \"s\"\nmedium = \"m\"\nshare = 0.7\n",
            "shares add up to 1.4",
        ),
    ] {
        let file = dir.join("breakdowns-bad-model.toml");
        std::fs::write(&file, model).unwrap();
        let out = bin().args(["gen", "--prospects", "1", "--quiet", "--model"]).arg(&file).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--model") && err.contains(needle), "{err}");
    }
}

proptest::proptest! {
    /// Touches at distinct times, applied in any order: first touch is the earliest's value,
    /// last touch the latest's, every dimension the same as in time order.
    #[test]
    fn first_and_last_touch_do_not_depend_on_arrival_order(
        touches in proptest::collection::vec((0u32..27, 0usize..4), 1..8),
        seed in proptest::prelude::any::<u64>(),
    ) {
        let mut days: Vec<(u32, usize)> = Vec::new();
        for (d, c) in touches {
            if !days.iter().any(|(x, _)| *x == d + 1) {
                days.push((d + 1, c));
            }
        }
        let names = ["alpha", "beta", "gamma", "delta"];
        let lines: Vec<Vec<u8>> = days
            .iter()
            .enumerate()
            .map(|(i, (d, c))| ev("p", i as u32, "page_viewed", *d, Some(("src", names[*c]))))
            .collect();
        let mut shuffled = lines.clone();
        let mut s = seed;
        for i in (1..shuffled.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            shuffled.swap(i, (s >> 33) as usize % (i + 1));
        }
        let journey = journey_with(DIMENSIONS, "");
        let (mut a, mut b) = (Engine::new(Arc::clone(&journey)), Engine::new(journey));
        apply_all(&mut a, &lines);
        apply_all(&mut b, &shuffled);
        let earliest = names[days.iter().min_by_key(|(d, _)| *d).unwrap().1];
        let latest = names[days.iter().max_by_key(|(d, _)| *d).unwrap().1];
        let vb = values(&b, "p");
        proptest::prop_assert_eq!(vb["first"].as_deref(), Some(earliest));
        proptest::prop_assert_eq!(vb["last"].as_deref(), Some(latest));
        proptest::prop_assert_eq!(values(&a, "p"), vb);
    }
}
