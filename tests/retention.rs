//! Retention in the engine (what `replay` runs): prospects leave memory after their stage's
//! span without events, or at the prospect cap; what that leaves behind (funnel, cooldowns),
//! a return, restores and changelog tombstones, and memory that stays flat under churn.

use std::collections::BTreeMap;
use std::sync::Arc;

use microfunnel::codec::{self, Limits};
use microfunnel::core::time::{MS_PER_DAY, parse_rfc3339};
use microfunnel::core::{Engine, ExpireReason, Journey, Output, Ts};
use microfunnel::store::Batch;
use microfunnel::store::changelog::Fold;
use microfunnel::traffic::{Generator, Options};
use serde_json::{Value, json};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

/// Aware prospects leave after 2 days without events, deciding ones after 1 (shorter than the
/// 72-hour alert cooldown), every other stage after 10.
const RETENTION: &str = "\n[retention]\nafter_days = 10\n[retention.stages]\naware = 2\ndeciding = 1\n";

fn journey(extra: &str) -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(&format!("{B2B}{extra}")).expect("journey loads"))
}

fn retained() -> Arc<Journey> {
    journey(RETENTION)
}

fn day(d: f64) -> Ts {
    Ts(parse_rfc3339("2026-03-02T09:00:00Z").unwrap().0 + (d * MS_PER_DAY as f64).round() as i64)
}

struct Shard {
    engine: Engine,
    n: u32,
}

impl Shard {
    fn new(journey: Arc<Journey>) -> Shard {
        Shard { engine: Engine::new(journey), n: 0 }
    }

    fn send(&mut self, prospect: &str, source: &str, kind: &str, at: Ts) -> Vec<Output> {
        self.n += 1;
        let line = json!({
            "event_id": format!("evt-{}", self.n), "prospect_id": prospect, "source": source,
            "type": kind, "ts": at.to_string(),
        })
        .to_string();
        let journey = Arc::clone(self.engine.journey());
        let ev = codec::decode(line.as_bytes(), &journey, &Limits::default()).unwrap();
        let mut out = Vec::new();
        self.engine.apply(&ev, &mut out);
        out
    }

    fn web(&mut self, prospect: &str, kind: &str, at: Ts) -> Vec<Output> {
        self.send(prospect, "web", kind, at)
    }

    /// Two other prospects' events at `at`: the shard's clock moves there. They stay active.
    fn time_passes(&mut self, at: Ts) -> Vec<Output> {
        let mut out = self.web("clock-1", "page_viewed", at);
        out.extend(self.web("clock-2", "page_viewed", at));
        out
    }

    fn json(&self, o: &Output) -> Value {
        let mut buf = Vec::new();
        codec::write_output(&self.engine, o, &mut buf).unwrap();
        serde_json::from_slice(&buf).unwrap()
    }
}

/// The expiries in `out` (of prospects other than the two that move the clock).
fn expired(engine: &Engine, out: &[Output]) -> Vec<(Ts, ExpireReason)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Expired { prospect, at, reason, .. } if !engine.prospect_id(*prospect).starts_with("clock-") => {
                Some((*at, *reason))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_prospect_without_events_for_its_stages_span_expires_and_its_funnel_counts_stay() {
    let mut s = Shard::new(retained());
    let aware = s.engine.journey().stage_by_name("aware").unwrap().0 as usize;
    s.web("anon-1", "page_viewed", day(0.0));
    s.web("anon-2", "page_viewed", day(0.0));
    s.web("anon-2", "page_viewed", day(1.5));
    s.time_passes(day(1.0));
    let before = s.engine.funnel().clone();
    assert_eq!(s.engine.len(), 4);

    // The watermark at day 2.5: anon-1's due (day 0 + 2) has passed, anon-2's (day 3.5) has
    // not, nor the clock prospects' (day 3).
    let mut out = Vec::new();
    s.engine.advance_to(day(2.5), &mut out);
    assert_eq!(expired(&s.engine, &out), vec![(day(2.0), ExpireReason::Retention)]);
    let o = out
        .iter()
        .find(|o| matches!(o, Output::Expired { prospect, .. } if s.engine.prospect_id(*prospect) == "anon-1"))
        .unwrap();
    assert_eq!(
        s.json(o),
        json!({"kind": "expired", "prospect": "anon-1", "stage": "aware",
               "classification": "no_current_opportunity", "reason": "retention",
               "last_event_at": day(0.0).to_string(), "at": day(2.0).to_string()})
    );
    assert_eq!(s.engine.find("anon-1"), None);
    assert!(s.engine.find("anon-2").is_some());
    assert_eq!((s.engine.len(), s.engine.census().prospects), (3, 3));
    assert_eq!(s.engine.stats().expired, 1);
    let after = s.engine.funnel();
    assert_eq!(after.in_stage[aware], before.in_stage[aware] - 1, "in_stage drops it");
    assert_eq!(after.reached, before.reached, "what it reached stays counted");
    assert_eq!(after.transitions, before.transitions);

    // anon-2 went on at day 1.5: it leaves at day 3.5.
    let mut out = Vec::new();
    s.engine.advance_to(day(4.0), &mut out);
    assert_eq!(expired(&s.engine, &out), vec![(day(3.5), ExpireReason::Retention)]);
}

#[test]
fn without_retention_nothing_expires() {
    let mut s = Shard::new(journey(""));
    s.web("anon-1", "page_viewed", day(0.0));
    let out = s.time_passes(day(400.0));
    assert!(expired(&s.engine, &out).is_empty());
    assert!(s.engine.find("anon-1").is_some());
}

#[test]
fn a_prospect_that_comes_back_after_expiry_starts_fresh() {
    let mut s = Shard::new(retained());
    s.web("usr-1", "page_viewed", day(0.0));
    s.web("usr-1", "content_downloaded", day(0.1));
    s.web("usr-1", "page_viewed", day(0.2));
    // interested: the 10-day default.
    let out = s.time_passes(day(11.5));
    assert_eq!(expired(&s.engine, &out), vec![(day(10.2), ExpireReason::Retention)]);
    let out = s.web("usr-1", "page_viewed", day(12.0));
    assert!(out.iter().any(|o| matches!(o, Output::StageChanged { from: None, .. })), "a new prospect: {out:?}");
    let v = s.engine.view(s.engine.find("usr-1").unwrap(), None);
    assert_eq!(v.stage, "aware");
    assert_eq!(v.signal_counts, vec![("page_viewed".to_string(), 1)]);
    assert_eq!(v.stages_entered.len(), 1);
}

#[test]
fn an_event_after_the_due_time_expires_the_prospect_as_the_watermark_would() {
    // The same events; in `b` the watermark passes anon-1's due time before its next event, in
    // `a` that event arrives first. Both end in the same state with the same expiry.
    let run = |advance: bool| {
        let mut s = Shard::new(retained());
        s.web("anon-1", "page_viewed", day(0.0));
        s.time_passes(day(1.0));
        let mut out = Vec::new();
        if advance {
            s.engine.advance_to(day(2.1), &mut out);
        }
        out.extend(s.web("anon-1", "page_viewed", day(2.5)));
        (s.engine.digest(), expired(&s.engine, &out), s.engine.stats().expired)
    };
    let (a, b) = (run(false), run(true));
    assert_eq!(a.1, vec![(day(2.0), ExpireReason::Retention)]);
    assert_eq!(a, b);
}

/// A prospect that leaves memory within its alert cooldown and comes back: the cooldown holds.
#[test]
fn an_alert_cooldown_in_force_survives_expiry_and_a_restore() {
    let mut s = Shard::new(retained());
    let out = s.send("usr-9", "web", "quote_requested", day(0.0));
    assert!(out.iter().any(|o| matches!(o, Output::HotLead(_))));
    // deciding: 1 day; the cooldown is 72 hours.
    let out = s.time_passes(day(2.5));
    assert_eq!(expired(&s.engine, &out), vec![(day(1.0), ExpireReason::Retention)]);
    assert_eq!(s.engine.find("usr-9"), None);
    assert_eq!(s.engine.kept_cooldowns().len(), 1);

    // A restore in between keeps the cooldown (state version 4).
    let mut bytes = Vec::new();
    s.engine.encode_state(&mut bytes);
    let restored = Engine::decode_state(retained(), &bytes).unwrap();
    assert_eq!(restored.kept_cooldowns(), s.engine.kept_cooldowns());
    assert_eq!(restored.digest(), s.engine.digest());
    assert_eq!(restored.stats(), s.engine.stats());
    let mut r = Shard { engine: restored, n: s.n };

    for shard in [&mut s, &mut r] {
        let out = shard.send("usr-9", "web", "quote_requested", day(2.6));
        assert!(!out.iter().any(|o| matches!(o, Output::HotLead(_))), "within the cooldown: {out:?}");
        assert!(out.iter().any(|o| matches!(o, Output::HotLeadSuppressed(_))));
    }
    assert_eq!(r.engine.digest(), s.engine.digest());

    // After the cooldown, a returning prospect alerts again.
    let mut s = Shard::new(retained());
    s.send("usr-9", "web", "quote_requested", day(0.0));
    s.time_passes(day(2.5));
    s.time_passes(day(4.5));
    assert!(s.engine.kept_cooldowns().is_empty(), "lapsed cooldowns are dropped");
    let out = s.send("usr-9", "web", "quote_requested", day(4.6));
    assert!(out.iter().any(|o| matches!(o, Output::HotLead(_))));
}

fn generated(prospects: u64, seed: u64, journey: &Journey) -> Vec<Vec<u8>> {
    let opts = Options { prospects, seed, malformed_share: 0.0, days: 60.0, ..Options::default() };
    let mut g = Generator::new(opts, journey, false).unwrap();
    let (mut line, mut key, mut lines) = (Vec::new(), String::new(), Vec::new());
    while g.next_into(&mut line, &mut key).is_some() {
        lines.push(line.clone());
    }
    lines
}

fn apply(engine: &mut Engine, line: &[u8], out: &mut Vec<Output>) {
    let journey = Arc::clone(engine.journey());
    for (_, ev) in codec::decode_each(line, &journey, &Limits::default()) {
        if let Ok(ev) = ev {
            engine.apply(&ev, out);
        }
    }
}

/// A restore from a snapshot in the middle of a run with expiries continues exactly like the
/// engine that never stopped (snapshot chains under churn: `tests/chain.rs`).
#[test]
fn restores_under_churn_match_the_engine_that_never_stopped() {
    let j = retained();
    let lines = generated(600, 7, &j);
    let mut live = Engine::new(Arc::clone(&j));
    let mut out = Vec::new();
    let mut restored: Option<Engine> = None;
    let mut expiries = 0;
    for (n, line) in lines.iter().enumerate() {
        apply(&mut live, line, &mut out);
        if let Some(r) = restored.as_mut() {
            let mut other = Vec::new();
            apply(r, line, &mut other);
            let names = |o: &[Output], e: &Engine| {
                o.iter()
                    .map(|o| {
                        let mut b = Vec::new();
                        codec::write_output(e, o, &mut b).unwrap();
                        String::from_utf8(b).unwrap()
                    })
                    .collect::<Vec<_>>()
            };
            assert_eq!(names(&other, r), names(&out, &live), "line {n}");
        }
        expiries += expired(&live, &out).len();
        out.clear();
        if n == lines.len() / 2 {
            let mut bytes = Vec::new();
            live.encode_state(&mut bytes);
            restored = Some(Engine::decode_state(Arc::clone(&j), &bytes).unwrap());
        }
    }
    assert!(expiries > 100, "the run expires prospects: {expiries}");
    assert!(live.stats().expired > 100);
    let r = restored.unwrap();
    assert_eq!(r.digest(), live.digest());
    assert_eq!(r.len(), live.len());
    assert_eq!(r.stats(), live.stats());
    assert_eq!(r.funnel(), live.funnel());
}

/// Waves of one-visit prospects, each wave gone before the next 2 days later: the engine's
/// memory stops growing once the first waves have left (slots and ids are reused).
#[test]
fn memory_stays_flat_under_churn() {
    let mut s = Shard::new(retained());
    let mut bytes = Vec::new();
    for wave in 0..24 {
        let at = day(3.0 * f64::from(wave));
        for k in 0..3_000 {
            s.web(&format!("anon-{wave}-{k:05}-{}", "x".repeat(k % 24)), "page_viewed", at);
        }
        s.time_passes(at);
        assert!(s.engine.len() <= 3_000 + 2 + 3_000, "wave {wave}: {}", s.engine.len());
        bytes.push(s.engine.heap_bytes());
    }
    assert!(s.engine.stats().expired >= 22 * 3_000, "{}", s.engine.stats().expired);
    // Without reuse each wave would add about 3,000 x 250 bytes; the arena and the timer heap
    // settle within a few waves (garbage is compacted when it passes half the arena).
    let (early, late) = (bytes[12], *bytes.last().unwrap());
    assert!(late <= early + early / 20, "heap bytes: wave 12 {early}, wave 23 {late} ({bytes:?})");
    assert!(late < 3 * bytes[1], "{bytes:?}");
}

#[test]
fn at_the_cap_the_least_recently_active_leave_first() {
    let mut s = Shard::new(journey("\n[retention]\nmax_prospects_per_shard = 128\n"));
    for k in 0..128 {
        s.web(&format!("p-{k:03}"), "page_viewed", day(f64::from(k) / 1000.0));
    }
    // p-000 is active again: p-001 and p-002 are now the least recently active.
    s.web("p-000", "page_viewed", day(0.5));
    let out = s.web("p-new", "page_viewed", day(0.6));
    let gone: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Expired { prospect, reason: ExpireReason::Capacity, .. } => {
                Some(s.engine.prospect_id(*prospect).to_string())
            }
            _ => None,
        })
        .collect();
    assert_eq!(gone, vec!["p-001", "p-002"], "1/64 of the cap, least recently active first");
    assert_eq!(s.engine.len(), 127);
    assert!(s.engine.find("p-000").is_some() && s.engine.find("p-new").is_some());
    assert_eq!(s.engine.stats().evicted, 2);
    for k in 0..1_000 {
        s.web(&format!("q-{k}"), "page_viewed", day(1.0));
        assert!(s.engine.len() <= 128);
    }
    assert_eq!(s.engine.len() as u64 + s.engine.stats().evicted, 128 + 1 + 1_000);
}

/// The changelog: ids that left memory are tombstoned at the next checkpoint, and a restore
/// (changelog alone, or a snapshot topped up) no longer holds them.
#[test]
fn expired_prospects_are_tombstoned_in_the_changelog_and_gone_after_a_restore() {
    let j = retained();
    let mut s = Shard::new(Arc::clone(&j));
    s.engine.track_removals(true);
    let mut log: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let checkpoint = |e: &mut Engine, seq: u64, log: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>| {
        let changed = e.take_changed();
        let tombstones: Vec<String> = e.take_removed().into_iter().map(String::from).collect();
        let mut batch = Batch::default();
        batch.checkpoint(e, &changed, &tombstones, seq, &BTreeMap::from([("web".to_string(), seq as i64)]));
        log.extend(batch.records().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))));
        tombstones
    };
    s.web("anon-1", "page_viewed", day(0.0));
    s.web("anon-2", "page_viewed", day(0.0));
    s.time_passes(day(1.0));
    assert!(checkpoint(&mut s.engine, 1, &mut log).is_empty());
    let mut snapshot = Vec::new();
    s.engine.encode_state(&mut snapshot);
    let at_one = log.len();

    s.web("anon-2", "page_viewed", day(2.0));
    s.time_passes(day(3.5));
    s.time_passes(day(3.5));
    assert_eq!(s.engine.find("anon-1"), None);
    let mut gone = checkpoint(&mut s.engine, 2, &mut log);
    gone.sort();
    assert_eq!(gone, vec!["anon-1".to_string(), "clock-1".to_string(), "clock-2".to_string()]);
    let tombstones: Vec<_> = log[at_one..].iter().filter(|(_, v)| v.is_none()).map(|(k, _)| k.clone()).collect();
    assert_eq!(tombstones, vec![b"anon-1".to_vec()], "clock-1 and clock-2 came back: no tombstone");

    let fold = |base: Engine, from: usize| {
        let mut f = Fold::new(base, BTreeMap::new(), 0);
        for (o, (k, v)) in log.iter().enumerate().skip(from) {
            f.push(0, o as i64, k, v.as_deref());
        }
        f.finish().engine
    };
    let alone = fold(Engine::new(Arc::clone(&j)), 0);
    let topped = fold(Engine::decode_state(Arc::clone(&j), &snapshot).unwrap(), at_one);
    for e in [&alone, &topped] {
        assert_eq!(e.find("anon-1"), None);
        assert_eq!(e.digest(), s.engine.digest());
        assert_eq!(e.len(), s.engine.len());
        assert_eq!(e.stats(), s.engine.stats());
    }
}

#[test]
fn retention_settings_are_checked_by_key() {
    for (extra, needle) in [
        ("\n[retention]\nafter_days = -1\n", "retention"),
        ("\n[retention]\n[retention.stages]\nawre = 3\n", "retention.stages.awre"),
        ("\n[retention]\nmax_prospects_per_shard = 0\n", "retention.max_prospects_per_shard"),
        ("\n[retention]\nafter_dayz = 3\n", "after_dayz"),
    ] {
        let err = Journey::from_toml_str(&format!("{B2B}{extra}")).err().unwrap_or_else(|| panic!("{extra} loads"));
        assert!(err.to_string().contains(needle), "{extra}: {err}");
    }
}

/// The example in `deploy/journeys/b2b.toml`, uncommented, is a valid `[retention]`.
#[test]
fn the_example_in_the_b2b_journey_is_valid() {
    let from = B2B.find("# [retention]\n").expect("the example is in b2b.toml");
    let example: String =
        B2B[from..].lines().take_while(|l| l.starts_with("# ")).map(|l| format!("{}\n", &l[2..])).collect();
    let j = journey(&format!("\n{example}"));
    let r = &j.retention;
    let days = |stage: &str| r.after(j.stage_by_name(stage).unwrap()).map(|s| s.0 / MS_PER_DAY);
    assert_eq!(
        (days("aware"), days("won"), days("lost"), days("interested")),
        (Some(180), Some(365), Some(365), Some(180))
    );
    let anonymous = |stage: &str| r.after_for(j.stage_by_name(stage).unwrap(), true).map(|s| s.0 / MS_PER_DAY);
    assert_eq!((anonymous("aware"), anonymous("won"), anonymous("interested")), (Some(30), Some(365), Some(180)));
    assert_eq!(r.max_prospects, Some(2_000_000));
}

/// Ties in last event time are broken by a hash of the id, not by slot: two shards that hold the
/// same prospects in other slots evict the same ones.
#[test]
fn evictions_do_not_depend_on_slot_order() {
    let evicted = |order: &mut dyn Iterator<Item = u32>| {
        let mut s = Shard::new(journey("\n[retention]\nmax_prospects_per_shard = 64\n"));
        for k in order {
            s.web(&format!("p-{k:03}"), "page_viewed", day(0.0));
        }
        let out = s.web("p-new", "page_viewed", day(0.0));
        let mut gone: Vec<String> = out
            .iter()
            .filter_map(|o| match o {
                Output::Expired { prospect, .. } => Some(s.engine.prospect_id(*prospect).to_string()),
                _ => None,
            })
            .collect();
        gone.sort();
        gone
    };
    let (a, b) = (evicted(&mut (0..64)), evicted(&mut (0..64).rev()));
    assert_eq!(a.len(), 1);
    assert_eq!(a, b);
}

/// `check-journey` says what leaves memory and when.
#[test]
fn check_journey_summarises_retention() {
    let path = std::env::temp_dir().join(format!("retention-check-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        format!("{B2B}{RETENTION}max_prospects_per_shard = 5000\n").replace(
            "[retention.stages]\naware = 2\ndeciding = 1\nmax_prospects_per_shard = 5000\n",
            "max_prospects_per_shard = 5000\n[retention.stages]\naware = 2\ndeciding = 1\n",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_microfunnel"))
        .args(["check-journey", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    let line = text.lines().find(|l| l.starts_with("retention:")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("aware 2 days") && line.contains("deciding 1 days") && line.contains("interested 10 days"),
        "{line}"
    );
    assert!(line.contains("at most 5000 prospects per shard"), "{line}");
}

/// A freed slot drops its breakdown values (the next prospect in it starts with none), and a
/// full state with freed slots keeps every held prospect's values (they are written by
/// position in the state, not by slot).
#[test]
fn an_expired_prospects_breakdown_values_leave_with_it_and_survive_a_restore_for_the_others() {
    let mut s = Shard::new(retained());
    let with_campaign = |s: &mut Shard, prospect: &str, campaign: &str, at: Ts| {
        s.n += 1;
        let line = json!({
            "event_id": format!("evt-{}", s.n), "prospect_id": prospect, "source": "web",
            "type": "page_viewed", "ts": at.to_string(), "properties": {"utm_campaign": campaign},
        })
        .to_string();
        let journey = Arc::clone(s.engine.journey());
        let ev = codec::decode(line.as_bytes(), &journey, &Limits::default()).unwrap();
        s.engine.apply(&ev, &mut Vec::new());
    };
    let campaign = |e: &Engine, p: &str| {
        let ix = e.find(p).unwrap_or_else(|| panic!("{p} is held"));
        e.attributed(ix).into_iter().find(|(d, _)| *d == "campaign").and_then(|(_, v)| v.map(str::to_string))
    };
    with_campaign(&mut s, "usr_old", "spring_launch", day(0.0));
    s.time_passes(day(1.0));
    with_campaign(&mut s, "usr_kept", "autumn_webinar", day(1.0));
    assert_eq!(campaign(&s.engine, "usr_old").as_deref(), Some("spring_launch"));
    // usr_old (aware, 2 days) leaves; the others stay active.
    s.time_passes(day(5.0));
    with_campaign(&mut s, "usr_kept", "autumn_webinar", day(5.0));
    assert!(s.engine.find("usr_old").is_none(), "usr_old expired");
    let mut bytes = Vec::new();
    s.engine.encode_state(&mut bytes);
    let restored = Engine::decode_state(Arc::clone(s.engine.journey()), &bytes).unwrap();
    assert_eq!(restored.digest(), s.engine.digest());
    assert_eq!(campaign(&restored, "usr_kept").as_deref(), Some("autumn_webinar"));
    // A new prospect takes the freed slot and starts with no campaign.
    s.web("usr_new", "page_viewed", day(5.5));
    s.web("usr_new", "page_viewed", day(5.6));
    assert_eq!(campaign(&s.engine, "usr_new"), None);
    assert_eq!(campaign(&s.engine, "usr_kept").as_deref(), Some("autumn_webinar"));
}

/// Retention together with identity resolution is refused (merged-away ids would stay in memory
/// uncounted by expiry and unevictable by the cap), and an absurd span is refused by key.
#[test]
fn absurd_spans_are_refused_naming_the_key() {
    let err = |extra: &str| match Journey::from_toml_str(&format!("{B2B}{extra}")) {
        Ok(_) => panic!("accepted: {extra}"),
        Err(e) => e.to_string(),
    };
    let huge = err("\n[retention]\nafter_days = 1e300\n");
    assert!(huge.contains("retention") && huge.contains("at most 36500"), "{huge}");
    let staged = err("\n[retention.stages]\naware = 1e9\n");
    assert!(staged.contains("retention.stages.aware"), "{staged}");
}

// ---- retention together with identity resolution -------------------------------------------

fn with_identity(extra: &str) -> Arc<Journey> {
    journey(&format!("{extra}\n[identity]\nresolve = true\n"))
}

impl Shard {
    /// A Segment call: `track` of `event`, or `identify` linking `anon` to `user`.
    fn seg(&mut self, kind: &str, event: &str, user: Option<&str>, anon: &str, at: Ts) -> Vec<Output> {
        self.n += 1;
        let mut v = json!({"type": kind, "anonymousId": anon, "messageId": format!("msg-{}", self.n), "timestamp": at.to_string()});
        if let Some(u) = user {
            v["userId"] = json!(u);
        }
        if !event.is_empty() {
            v["event"] = json!(event);
        }
        let journey = Arc::clone(self.engine.journey());
        let line = v.to_string();
        let ev = codec::decode(line.as_bytes(), &journey, &Limits::default()).unwrap();
        let mut out = Vec::new();
        self.engine.apply(&ev, &mut out);
        out
    }

    fn map_len(&self) -> usize {
        self.engine.identity_map().unwrap().len()
    }
}

/// A person of two ids (a visitor who signed up) is one prospect: the merged-away id leaves
/// memory at the merge, the person expires once (under its canonical id), and its ids leave
/// the identity map with it.
#[test]
fn with_identity_a_merged_prospect_expires_once_and_its_ids_leave_the_map() {
    let mut s = Shard::new(with_identity(RETENTION));
    s.seg("page", "", None, "anon-1", day(0.0));
    let out = s.seg("identify", "", Some("usr-1"), "anon-1", day(0.1));
    assert!(out.iter().any(|o| matches!(o, Output::ProspectMerged { .. })), "{out:?}");
    s.time_passes(day(0.2));
    assert_eq!(s.engine.find("anon-1"), None, "the merged-away id holds no record");
    assert_eq!((s.engine.len(), s.engine.census().prospects), (3, 3));
    assert_eq!(s.map_len(), 4, "anon-1, usr-1, clock-1, clock-2");

    let out = s.time_passes(day(20.0));
    let gone: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Expired { prospect, .. } => Some(s.engine.prospect_id(*prospect).to_string()),
            _ => None,
        })
        .filter(|id| !id.starts_with("clock-"))
        .collect();
    assert_eq!(gone, ["usr-1"]);
    assert_eq!(s.engine.len(), 2);
    assert_eq!(s.map_len(), 2, "the person's ids left the map");
    assert_eq!(s.engine.linked_ids("anon-1"), ("anon-1", vec!["anon-1"]));
    assert_eq!(s.engine.funnel().in_stage.iter().sum::<u64>(), 2);
}

/// A person who left memory with an alert cooldown in force, seen again under a new device
/// that identifies as the same user: a fresh prospect (nothing of the old one) whose alert
/// is still held by the cooldown; the old device is a stranger now.
#[test]
fn an_expired_person_linking_again_starts_fresh_but_keeps_its_cooldown() {
    let mut s = Shard::new(with_identity(RETENTION));
    s.seg("page", "", None, "anon-9", day(0.0));
    s.seg("identify", "", Some("usr-9"), "anon-9", day(0.01));
    let out = s.seg("track", "Quote Requested", Some("usr-9"), "anon-9", day(0.02));
    assert!(out.iter().any(|o| matches!(o, Output::HotLead(_))), "{out:?}");
    // deciding: 1 day; the cooldown is 72 hours.
    s.time_passes(day(2.5));
    assert_eq!(s.engine.find("usr-9"), None);
    assert_eq!(s.engine.kept_cooldowns().len(), 1);

    s.seg("page", "", None, "anon-7", day(2.6));
    let out = s.seg("identify", "", Some("usr-9"), "anon-7", day(2.61));
    assert!(out.iter().any(|o| matches!(o, Output::ProspectMerged { .. })), "{out:?}");
    assert!(s.engine.kept_cooldowns().is_empty(), "the merge that made usr-9 again took its cooldown");
    let out = s.seg("track", "Quote Requested", None, "anon-7", day(2.7));
    assert!(!out.iter().any(|o| matches!(o, Output::HotLead(_))), "within the cooldown: {out:?}");
    assert!(out.iter().any(|o| matches!(o, Output::HotLeadSuppressed(_))), "{out:?}");
    let usr = s.engine.view(s.engine.find("usr-9").unwrap(), None);
    let count = |name: &str| usr.signal_counts.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    assert_eq!((count("page_viewed"), count("quote_requested"), count("identified")), (1, 1, 1), "{usr:?}");
    assert_eq!(s.engine.linked_ids("usr-9"), ("usr-9", vec!["anon-7", "usr-9"]));
    // The first device's link left with the old person.
    s.seg("page", "", None, "anon-9", day(2.8));
    assert!(s.engine.find("anon-9").is_some());
    assert_eq!(s.engine.linked_ids("anon-9"), ("anon-9", vec!["anon-9"]));
}

/// At the cap, people of two ids count once (a merged-away id holds no slot), the least
/// recently active person leaves whole, and the map stays within the cap's people.
#[test]
fn the_cap_with_merges_counts_people_and_bounds_the_map() {
    let mut s = Shard::new(with_identity("\n[retention]\nmax_prospects_per_shard = 128\n"));
    for k in 0..100 {
        s.seg("page", "", None, &format!("anon-{k}"), day(f64::from(k) / 1000.0));
        s.seg("identify", "", Some(&format!("usr-{k}")), &format!("anon-{k}"), day(f64::from(k) / 1000.0 + 0.0001));
    }
    assert_eq!((s.engine.len(), s.map_len()), (100, 200));
    for k in 0..2_000 {
        let at = day(1.0 + f64::from(k) / 1000.0);
        s.seg("page", "", None, &format!("v-{k}"), at);
        if k % 2 == 0 {
            s.seg("identify", "", Some(&format!("u-{k}")), &format!("v-{k}"), at);
        }
        assert!(s.engine.len() <= 128, "{k}: {}", s.engine.len());
        assert!(s.map_len() <= 2 * 128, "{k}: {}", s.map_len());
    }
    assert!(s.engine.find("usr-0").is_none() && s.engine.linked_ids("anon-0").1 == ["anon-0"]);
}

fn generated_segment(prospects: u64, seed: u64, days: f64, journey: &Journey) -> Vec<Vec<u8>> {
    let opts = Options { prospects, seed, malformed_share: 0.0, days, segment_share: 1.0, ..Options::default() };
    let mut g = Generator::new(opts, journey, false).unwrap();
    let (mut line, mut key, mut lines) = (Vec::new(), String::new(), Vec::new());
    while g.next_into(&mut line, &mut key).is_some() {
        lines.push(line.clone());
    }
    lines
}

/// A long generated run (people arriving over a year, visitors identifying themselves): the
/// identity map holds about the people in memory, not every id ever seen.
#[test]
fn the_identity_map_stays_bounded_under_a_long_generated_run() {
    let j = with_identity(RETENTION);
    let lines = generated_segment(4_000, 11, 365.0, &j);
    let mut e = Engine::new(Arc::clone(&j));
    let (mut out, mut most) = (Vec::new(), 0);
    for line in &lines {
        apply(&mut e, line, &mut out);
        out.clear();
        let map = e.identity_map().unwrap().len();
        most = most.max(map);
        assert!(map <= 3 * e.len() + 64, "map {map}, prospects {}", e.len());
    }
    assert!(e.identity_stats().merged > 500, "{:?}", e.identity_stats());
    assert!(e.stats().expired > 2_000, "{}", e.stats().expired);
    assert!(most < 1_500, "at most {most} identifiers for 4,000 people and their devices");
}

/// With identity resolution and retention: checkpoints to a changelog (tombstones for ids
/// merged away, expired, and pruned from the map) and snapshots; a restore from the changelog
/// alone and from a snapshot topped up from it equals the live engine (state and
/// resolution).
#[test]
fn with_identity_restores_from_snapshot_and_changelog_equal_the_live_engine() {
    let j = with_identity(RETENTION);
    let lines = generated_segment(800, 3, 120.0, &j);
    let mut live = Engine::new(Arc::clone(&j));
    live.track_removals(true);
    let mut log: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let (mut snapshot, mut at_snapshot, mut out) = (Vec::new(), 0, Vec::new());
    let mut seq = 0;
    for (n, line) in lines.iter().enumerate() {
        apply(&mut live, line, &mut out);
        out.clear();
        if n % 97 == 0 || n + 1 == lines.len() {
            seq += 1;
            let changed = live.take_changed();
            let tombstones: Vec<String> = live.take_removed().into_iter().map(String::from).collect();
            let mut batch = Batch::default();
            let positions = BTreeMap::from([("web".to_string(), n as i64)]);
            batch.checkpoint(&live, &changed, &tombstones, seq, &positions);
            log.extend(batch.records().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))));
            live.settle_taken(true);
            if n >= lines.len() / 2 && snapshot.is_empty() {
                live.encode_state(&mut snapshot);
                at_snapshot = log.len();
            }
        }
    }
    let id_tombstones = log.iter().filter(|(k, v)| v.is_none() && k.starts_with(b"\0id/")).count();
    assert!(id_tombstones > 100, "pruned identifiers are tombstoned: {id_tombstones}");
    assert!(live.stats().expired > 100 && live.identity_stats().merged > 50);
    let fold = |base: Engine, from: usize| {
        let mut f = Fold::new(base, BTreeMap::new(), 0);
        for (o, (k, v)) in log.iter().enumerate().skip(from) {
            f.push(0, o as i64, k, v.as_deref());
        }
        f.finish().engine
    };
    let alone = fold(Engine::new(Arc::clone(&j)), 0);
    let topped = fold(Engine::decode_state(Arc::clone(&j), &snapshot).unwrap(), at_snapshot);
    let resolution = live.identity_map().unwrap().resolution();
    for (name, e) in [("changelog alone", &alone), ("snapshot + changelog", &topped)] {
        assert_eq!(e.digest(), live.digest(), "{name}");
        assert_eq!((e.len(), e.stats()), (live.len(), live.stats()), "{name}");
        let r = e.identity_map().unwrap().resolution();
        assert!(
            r == resolution,
            "{name}: {} identifiers resolve otherwise than the live {}",
            r.len(),
            resolution.len()
        );
        assert_eq!(e.kept_cooldowns(), live.kept_cooldowns(), "{name}");
    }
}

/// A link to a person whose expiry fell due (nothing moved the watermark past it yet): the
/// person leaves first, as before any event of it, and the link joins the new person.
#[test]
fn a_link_to_a_person_past_due_expires_it_first() {
    let mut s = Shard::new(with_identity(RETENTION));
    s.seg("track", "Quote Requested", Some("usr-5"), "anon-4", day(0.0));
    assert_eq!(s.engine.linked_ids("usr-5"), ("usr-5", vec!["anon-4", "usr-5"]));
    // deciding: 1 day. The identify at day 1.5 is the shard's next event.
    let out = s.seg("identify", "", Some("usr-5"), "anon-5", day(1.5));
    let expired: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Expired { at, .. } => Some(*at),
            _ => None,
        })
        .collect();
    assert_eq!(expired, [day(1.0)]);
    assert_eq!(s.engine.linked_ids("usr-5"), ("usr-5", vec!["anon-5", "usr-5"]), "the new person's link");
    assert_eq!(s.engine.linked_ids("anon-4"), ("anon-4", vec!["anon-4"]));
    assert_eq!(s.engine.kept_cooldowns().len(), 0, "the returning person took its cooldown");
}

// ---- a span for anonymous prospects ---------------------------------------------------------

/// Known prospects leave after 30 days (aware: 20); anonymous ones (an `anonymousId` never
/// identified) in `aware` after 2, in other stages after 7.
const ANONYMOUS: &str = "\n[retention]\nafter_days = 30\nanonymous_after_days = 7\n[retention.stages]\naware = 20\n[retention.anonymous]\naware = 2\n";

impl Shard {
    /// A Segment `page` call of an anonymous visitor.
    fn visit(&mut self, anon: &str, at: Ts) -> Vec<Output> {
        self.seg("page", "", None, anon, at)
    }

    fn anonymous(&self, id: &str) -> Option<bool> {
        self.engine.find(id).map(|ix| self.engine.prospect(ix).is_anonymous())
    }

    fn expired_ids(&self, out: &[Output]) -> Vec<(String, Ts)> {
        out.iter()
            .filter_map(|o| match o {
                Output::Expired { prospect, at, .. } => Some((self.engine.prospect_id(*prospect).to_string(), *at)),
                _ => None,
            })
            .filter(|(id, _)| !id.starts_with("clock-"))
            .collect()
    }
}

/// The anonymous span wins over the stage's span for anonymous prospects: a stage entry under
/// `[retention.anonymous]`, else `anonymous_after_days`, else the known span.
#[test]
fn the_anonymous_span_takes_precedence_for_anonymous_prospects_only() {
    let j = journey(ANONYMOUS);
    let r = &j.retention;
    let days = |stage: &str, anonymous: bool| {
        r.after_for(j.stage_by_name(stage).unwrap(), anonymous).map(|s| s.0 / MS_PER_DAY)
    };
    assert_eq!((days("aware", true), days("interested", true), days("won", true)), (Some(2), Some(7), Some(7)));
    assert_eq!((days("aware", false), days("interested", false), days("won", false)), (Some(20), Some(30), Some(30)));
    // Only an anonymous table: anonymous prospects of other stages keep the known span (none).
    let j = journey("\n[retention.anonymous]\naware = 2\n");
    let r = &j.retention;
    assert!(r.expires());
    assert_eq!(r.after_for(j.stage_by_name("aware").unwrap(), true).map(|s| s.0 / MS_PER_DAY), Some(2));
    assert_eq!(r.after_for(j.stage_by_name("aware").unwrap(), false), None);
    assert_eq!(r.after_for(j.stage_by_name("interested").unwrap(), true), None);
}

#[test]
fn anonymous_aware_visitors_leave_after_the_anonymous_span_while_known_ones_stay() {
    let mut s = Shard::new(journey(ANONYMOUS));
    s.visit("anon-1", day(0.0));
    s.web("usr-1", "page_viewed", day(0.0));
    // A Segment call with a `userId` is the known user's, its `anonymousId` beside it.
    s.seg("page", "", Some("usr-2"), "anon-2", day(0.0));
    assert_eq!(
        (s.anonymous("anon-1"), s.anonymous("usr-1"), s.anonymous("usr-2")),
        (Some(true), Some(false), Some(false))
    );
    let view = |id: &str| s.engine.view(s.engine.find(id).unwrap(), None).anonymous;
    assert!(view("anon-1") && !view("usr-1"), "the prospect view says it (GET /prospects, inspect-snapshot)");
    s.time_passes(day(1.0));
    let mut out = Vec::new();
    s.engine.advance_to(day(3.0), &mut out);
    assert_eq!(s.expired_ids(&out), vec![("anon-1".to_string(), day(2.0))]);
    assert!(s.engine.find("usr-1").is_some() && s.engine.find("usr-2").is_some(), "known visitors stay");
    out.clear();
    s.engine.advance_to(day(20.5), &mut out);
    let mut gone = s.expired_ids(&out);
    gone.sort();
    assert_eq!(gone, vec![("usr-1".to_string(), day(20.0)), ("usr-2".to_string(), day(20.0))], "the known span");
}

/// A visitor who becomes known before the anonymous span ends stays for the known span, its due
/// moved when the flag cleared: by a merge into its known user id (identity resolution), or by
/// a known event for its own id.
#[test]
fn a_visitor_who_identifies_before_the_span_stays() {
    let mut s = Shard::new(with_identity(ANONYMOUS));
    s.visit("anon-2", day(0.0));
    s.visit("anon-9", day(0.0));
    assert_eq!(s.anonymous("anon-2"), Some(true));
    let out = s.seg("identify", "", Some("usr-2"), "anon-2", day(1.0));
    assert!(out.iter().any(|o| matches!(o, Output::ProspectMerged { .. })), "{out:?}");
    assert_eq!(s.anonymous("usr-2"), Some(false), "the canonical id of a group with a known id is known");
    // An `alias` call links and applies no signal: the merge alone makes the person known.
    s.visit("anon-7", day(0.5));
    let alias = json!({"type": "alias", "previousId": "anon-7", "userId": "usr-7", "messageId": "alias-7",
                       "timestamp": day(1.0).to_string()})
    .to_string();
    let ev = codec::decode(alias.as_bytes(), &Arc::clone(s.engine.journey()), &Limits::default()).unwrap();
    let mut out = Vec::new();
    s.engine.apply(&ev, &mut out);
    assert!(out.iter().any(|o| matches!(o, Output::ProspectMerged { .. })), "{out:?}");
    assert_eq!(s.anonymous("usr-7"), Some(false));
    s.time_passes(day(1.5));
    let mut out = Vec::new();
    s.engine.advance_to(day(5.0), &mut out);
    assert_eq!(s.expired_ids(&out), vec![("anon-9".to_string(), day(2.0))], "only the one who stayed anonymous");
    assert!(s.engine.find("usr-2").is_some() && s.engine.find("usr-7").is_some());

    // Without identity resolution: a known event for the id itself.
    let mut s = Shard::new(journey(ANONYMOUS));
    s.visit("visitor-3", day(0.0));
    s.web("visitor-3", "page_viewed", day(1.0));
    assert_eq!(s.anonymous("visitor-3"), Some(false));
    s.time_passes(day(1.5));
    let mut out = Vec::new();
    s.engine.advance_to(day(5.0), &mut out);
    assert!(s.expired_ids(&out).is_empty(), "{:?}", s.expired_ids(&out));
    // An anonymous call afterwards does not make it anonymous again.
    s.visit("visitor-3", day(5.0));
    assert_eq!(s.anonymous("visitor-3"), Some(false));
}

/// The anonymous flag is state: a restore from a snapshot and one from the changelog alone keep
/// it, so the restored engines expire the anonymous visitor at the anonymous span, as the live
/// one does (a restore that lost it would keep it for the known span).
#[test]
fn restores_from_snapshot_and_changelog_keep_the_anonymous_flag() {
    let j = journey(ANONYMOUS);
    let mut s = Shard::new(Arc::clone(&j));
    s.engine.track_removals(true);
    s.visit("anon-1", day(0.0));
    s.web("usr-1", "page_viewed", day(0.0));
    s.visit("visitor-3", day(0.0));
    s.web("visitor-3", "page_viewed", day(0.5));
    s.time_passes(day(1.0));
    let changed = s.engine.take_changed();
    let mut batch = Batch::default();
    batch.checkpoint(&s.engine, &changed, &[], 1, &BTreeMap::from([("web".to_string(), 1)]));
    let log: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        batch.records().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
    let mut snapshot = Vec::new();
    s.engine.encode_state(&mut snapshot);

    let mut f = Fold::new(Engine::new(Arc::clone(&j)), BTreeMap::new(), 0);
    for (o, (k, v)) in log.iter().enumerate() {
        f.push(0, o as i64, k, v.as_deref());
    }
    let from_changelog = f.finish().engine;
    let from_snapshot = Engine::decode_state(Arc::clone(&j), &snapshot).unwrap();
    let mut live_out = Vec::new();
    s.engine.advance_to(day(3.0), &mut live_out);
    assert_eq!(s.expired_ids(&live_out), vec![("anon-1".to_string(), day(2.0))]);
    for (name, mut e) in [("snapshot", from_snapshot), ("changelog", from_changelog)] {
        let flag = |e: &Engine, id: &str| e.prospect(e.find(id).unwrap()).is_anonymous();
        assert!(flag(&e, "anon-1") && !flag(&e, "usr-1") && !flag(&e, "visitor-3"), "{name}");
        let mut out = Vec::new();
        e.advance_to(day(3.0), &mut out);
        let gone: Vec<&str> = out
            .iter()
            .filter_map(|o| match o {
                Output::Expired { prospect, .. } => Some(e.prospect_id(*prospect)),
                _ => None,
            })
            .collect();
        assert_eq!(gone, ["anon-1"], "{name}");
        assert_eq!(e.digest(), s.engine.digest(), "{name}");
    }
}

/// Generated traffic with identity resolution (anonymous visitors, sign-ups, merges) under an
/// anonymous span: restores from a snapshot and from the changelog alone equal the live engine.
#[test]
fn with_identity_and_an_anonymous_span_restores_equal_the_live_engine() {
    let j = with_identity(ANONYMOUS);
    let lines = generated_segment(600, 5, 90.0, &j);
    let mut live = Engine::new(Arc::clone(&j));
    live.track_removals(true);
    let mut log: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
    let (mut snapshot, mut at_snapshot, mut out, mut anonymous_expired) = (Vec::new(), 0, Vec::new(), 0);
    for (n, line) in lines.iter().enumerate() {
        apply(&mut live, line, &mut out);
        for o in &out {
            if let Output::Expired { stage, at, last_event, .. } = o {
                // aware: 2 days anonymous (the due is rounded up to the second), 20 known.
                if live.journey().stage(*stage).name == "aware" && at.0 - last_event.0 < 3 * MS_PER_DAY {
                    anonymous_expired += 1;
                }
            }
        }
        out.clear();
        if n % 89 == 0 || n + 1 == lines.len() {
            let changed = live.take_changed();
            let tombstones: Vec<String> = live.take_removed().into_iter().map(String::from).collect();
            let mut batch = Batch::default();
            batch.checkpoint(
                &live,
                &changed,
                &tombstones,
                n as u64 + 1,
                &BTreeMap::from([("web".to_string(), n as i64)]),
            );
            log.extend(batch.records().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))));
            live.settle_taken(true);
            if n >= lines.len() / 2 && snapshot.is_empty() {
                live.encode_state(&mut snapshot);
                at_snapshot = log.len();
            }
        }
    }
    assert!(anonymous_expired > 50, "anonymous visitors leave at their span: {anonymous_expired}");
    let fold = |base: Engine, from: usize| {
        let mut f = Fold::new(base, BTreeMap::new(), 0);
        for (o, (k, v)) in log.iter().enumerate().skip(from) {
            f.push(0, o as i64, k, v.as_deref());
        }
        f.finish().engine
    };
    let alone = fold(Engine::new(Arc::clone(&j)), 0);
    let topped = fold(Engine::decode_state(Arc::clone(&j), &snapshot).unwrap(), at_snapshot);
    let anonymous = |e: &Engine| e.iter_ids().filter(|&(ix, _)| e.prospect(ix).is_anonymous()).count();
    assert!(anonymous(&live) > 0);
    for (name, e) in [("changelog alone", &alone), ("snapshot + changelog", &topped)] {
        assert_eq!(e.digest(), live.digest(), "{name}");
        assert_eq!(anonymous(e), anonymous(&live), "{name}");
        assert_eq!((e.len(), e.stats()), (live.len(), live.stats()), "{name}");
    }
}

#[test]
fn anonymous_retention_settings_are_checked_by_key() {
    for (extra, needle) in [
        ("\n[retention]\nanonymous_after_days = -1\n", "anonymous_after_days"),
        (
            "\n[retention]\nanonymous_after_days = 0\n",
            "retention.anonymous_after_days: `anonymous_after_days` must be a positive number of days, got 0; leave it out",
        ),
        ("\n[retention]\nafter_days = 0\n", "retention.after_days:"),
        ("\n[retention]\nanonymous_after_days = 1e9\n", "at most 36500"),
        ("\n[retention.anonymous]\nawre = 3\n", "retention.anonymous.awre"),
        ("\n[retention.anonymous]\naware = 0\n", "retention.anonymous.aware"),
        ("\n[retention.anonymous]\nafter_days = 3\n", "write `anonymous_after_days` under [retention]"),
    ] {
        let err = Journey::from_toml_str(&format!("{B2B}{extra}")).err().unwrap_or_else(|| panic!("{extra} loads"));
        assert!(err.to_string().contains(needle), "{extra}: {err}");
    }
}
