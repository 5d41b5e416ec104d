//! The shipped SaaS free-trial journey (`deploy/journeys/saas.toml`) end to end, with Segment
//! payloads as a product would send them: a pricing-page visit, trial, activation, paying,
//! churn and a win-back; a trial user active on day one and silent since; a specific rule
//! getting through a generic rule's cooldown.

use std::sync::Arc;

use microfunnel::codec::{self, Limits};
use microfunnel::core::time::{MS_PER_DAY, MS_PER_HOUR, parse_rfc3339};
use microfunnel::core::{Engine, Journey, Output, Ts};
use serde_json::{Value, json};

const SAAS: &str = include_str!("../deploy/journeys/saas.toml");

fn saas() -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(SAAS).expect("shipped saas journey loads"))
}

/// Monday 2 March 2026, 09:00 UTC.
fn day(d: f64) -> Ts {
    let t0 = parse_rfc3339("2026-03-02T09:00:00Z").unwrap();
    Ts(t0.0 + (d * MS_PER_DAY as f64).round() as i64)
}

fn hour(h: f64) -> Ts {
    day(h * MS_PER_HOUR as f64 / MS_PER_DAY as f64)
}

struct Product {
    engine: Engine,
    n: u32,
}

impl Product {
    fn new() -> Product {
        Product { engine: Engine::new(saas()), n: 0 }
    }

    fn send(&mut self, mut payload: Value, at: Ts) -> Vec<Output> {
        self.n += 1;
        payload["messageId"] = json!(format!("ajs-{}", self.n));
        payload["timestamp"] = json!(at.to_string());
        let journey = Arc::clone(self.engine.journey());
        let bytes = payload.to_string();
        let ev = codec::decode(bytes.as_bytes(), &journey, &Limits::default()).unwrap();
        let mut out = Vec::new();
        self.engine.apply(&ev, &mut out);
        out
    }

    fn track(&mut self, user: &str, event: &str, at: Ts) -> Vec<Output> {
        self.send(json!({"type": "track", "userId": user, "event": event, "properties": {}}), at)
    }

    fn page(&mut self, user: &str, path: &str, at: Ts) -> Vec<Output> {
        let url = format!("https://app.example.com{path}?utm_source=newsletter");
        self.send(json!({"type": "page", "userId": user, "properties": {"path": path, "url": url}}), at)
    }

    fn identify(&mut self, user: &str, email: &str, at: Ts) -> Vec<Output> {
        self.send(json!({"type": "identify", "userId": user, "traits": {"email": email}}), at)
    }

    fn advance(&mut self, to: Ts) -> Vec<Output> {
        let mut out = Vec::new();
        self.engine.advance_to(to, &mut out);
        out
    }

    fn json(&self, out: &[Output], kind: &str) -> Vec<Value> {
        out.iter()
            .map(|o| {
                let mut buf = Vec::new();
                codec::write_output(&self.engine, o, &mut buf).unwrap();
                serde_json::from_slice::<Value>(&buf).unwrap()
            })
            .filter(|v| v["kind"] == kind)
            .collect()
    }

    fn stage(&self, user: &str) -> String {
        self.engine.view(self.engine.find(user).unwrap(), None).stage
    }
}

#[test]
fn trial_activation_paying_churn_and_win_back() {
    let mut p = Product::new();
    // A pricing-page visit raises its own signal (not the generic page view).
    p.page("usr_1", "/pricing", day(0.0));
    let counts = p.engine.view(p.engine.find("usr_1").unwrap(), None).signal_counts;
    assert_eq!(counts, [("pricing_viewed".to_string(), 1)]);

    let mut moves = Vec::new();
    for (event, at) in [
        ("Trial Started", day(0.1)),
        ("Integration Connected", day(1.0)),
        ("Subscription Started", day(10.0)),
        ("Subscription Cancelled", day(100.0)),
    ] {
        let out = p.track("usr_1", event, at);
        moves.extend(p.json(&out, "stage_changed").into_iter().map(|v| v["to"].as_str().unwrap().to_string()));
    }
    assert_eq!(moves, ["trial", "activated", "paying", "churned"]);
    // Churn after the sale: the latest outcome stands.
    assert_eq!(p.engine.funnel().outcomes, [0, 1], "[won, lost]");

    // A page view after churn is not a stage move; a new subscription wins the customer back.
    let out = p.page("usr_1", "/blog/x", day(120.0));
    assert!(p.json(&out, "stage_changed").is_empty());
    let out = p.track("usr_1", "Subscription Started", day(130.0));
    let back = p.json(&out, "stage_changed");
    assert_eq!((back[0]["from"].as_str(), back[0]["to"].as_str()), (Some("churned"), Some("paying")));
    assert_eq!(p.stage("usr_1"), "paying");
    assert_eq!(p.engine.funnel().outcomes, [1, 0], "[won, lost]");
    assert_eq!(p.engine.stats().reopened, 1);
}

#[test]
fn a_trial_user_active_on_day_one_and_silent_since_goes_quiet() {
    let mut p = Product::new();
    p.identify("usr_2", "Mia.Chen@Fabrikam.example", hour(0.0));
    p.track("usr_2", "Signed Up", hour(0.5));
    for h in [1.0, 2.0, 5.0, 9.0] {
        p.track("usr_2", "Report Created", hour(h));
    }
    // The window runs from the last activity (hour 9 of day one), not from the sign-up.
    let out = p.advance(hour(9.0 + 5.0 * 24.0));
    assert!(p.json(&out, "gone_quiet").is_empty());
    let out = p.advance(hour(10.0 + 5.0 * 24.0));
    let quiet = p.json(&out, "gone_quiet");
    assert_eq!(
        quiet,
        [json!({"kind": "gone_quiet", "prospect": "usr_2", "email": "mia.chen@fabrikam.example", "stage": "trial",
            "classification": "current_opportunity",
            "next_commitment": "Help them create their first report on day one",
            "since": hour(9.0).to_string(), "at": hour(9.0 + 5.0 * 24.0).to_string()})]
    );
    // A visitor who never started a trial is not watched.
    p.page("usr_3", "/docs/start", day(0.0));
    let out = p.advance(day(40.0));
    assert!(p.json(&out, "gone_quiet").iter().all(|v| v["prospect"] != "usr_3"));
}

#[test]
fn checkout_after_pricing_gets_through_the_score_rules_cooldown() {
    let mut p = Product::new();
    p.track("usr_4", "Trial Started", hour(0.0));
    p.track("usr_4", "Integration Connected", hour(1.0));
    p.track("usr_4", "Invite Sent", hour(2.0));
    p.track("usr_4", "Invite Sent", hour(2.5));
    let out = p.track("usr_4", "Invite Sent", hour(3.0));
    let alerts = p.json(&out, "hot_lead");
    assert_eq!(alerts.len(), 1, "{out:?}");
    assert_eq!(alerts[0]["rules"], json!(["engaged_trial"]));

    // Next day, inside the 48-hour cooldown: the specific micro-certainty still alerts.
    p.page("usr_4", "/pricing/teams", hour(20.0));
    let out = p.track("usr_4", "Checkout Started", hour(22.0));
    let alerts = p.json(&out, "hot_lead");
    assert_eq!(alerts.len(), 1, "{out:?}");
    assert_eq!(alerts[0]["rules"], json!(["checkout_after_pricing"]));
    assert_eq!(alerts[0]["next_commitment"], "Offer a 20-minute call to plan the rollout to their team");

    // A weaker rule inside that alert's cooldown is held back, and says so.
    let out = p.track("usr_4", "Contact Sales", hour(30.0));
    assert!(p.json(&out, "hot_lead").is_empty());
    let held = p.json(&out, "hot_lead_suppressed");
    assert_eq!(held[0]["rules"], json!(["sales_contacted"]));
    assert_eq!(held[0]["held_by"], "checkout_after_pricing");
}

// ---- gone quiet does not depend on how prospects interleave -----------------------------------

const ACTIVITY: [&str; 7] = [
    "Signed Up",
    "Report Created",
    "Integration Connected",
    "Subscription Started",
    "Subscription Cancelled",
    "Checkout Started",
    "Payment Failed",
];

fn replay_lines(lines: &[String], partitions: u32, end: Ts) -> Vec<Value> {
    use microfunnel::replay::{End, Options, run};
    let input = lines.join("\n") + "\n";
    let opts = Options {
        limits: Limits::default(),
        end: End::Until(end),
        digest: true,
        summary_only: false,
        partitions,
        min_sample: microfunnel::core::funnel::MIN_SAMPLE,
        inputs: Vec::new(),
    };
    let (mut out, mut err) = (Vec::new(), Vec::new());
    run(saas(), &opts, input.as_bytes(), &mut out, &mut err).unwrap();
    assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));
    String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

    /// Several prospects' product events in time order: one shard (every prospect's events move
    /// the shared watermark) or eight (each shard's own) give the same silences and alerts, at
    /// the same event times, and the same final state.
    #[test]
    fn silences_do_not_depend_on_how_prospects_interleave(
        events in proptest::collection::vec((0u8..6, 0usize..ACTIVITY.len(), 0u32..40 * 24), 1..60),
    ) {
        let mut events = events;
        events.sort_by_key(|&(_, _, h)| h);
        let lines: Vec<String> = events
            .iter()
            .enumerate()
            .map(|(i, &(who, what, h))| {
                json!({"type": "track", "userId": format!("usr_{who}"), "event": ACTIVITY[what],
                    "messageId": format!("m-{i}"), "timestamp": hour(f64::from(h) + i as f64 / 1000.0).to_string()})
                .to_string()
            })
            .collect();
        let end = day(60.0);
        let kinds = ["gone_quiet", "ghosted", "stalled", "hot_lead", "hot_lead_suppressed", "stage_changed"];
        let pick = |out: &[Value]| {
            let mut v: Vec<String> =
                out.iter().filter(|o| kinds.contains(&o["kind"].as_str().unwrap_or(""))).map(Value::to_string).collect();
            v.sort();
            v
        };
        let one = replay_lines(&lines, 1, end);
        let eight = replay_lines(&lines, 8, end);
        proptest::prop_assert_eq!(pick(&one), pick(&eight));
        let digest = |out: &[Value]| out.last().unwrap()["digest"].clone();
        proptest::prop_assert_eq!(digest(&one), digest(&eight));
    }
}
