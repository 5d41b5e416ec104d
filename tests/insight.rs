//! How accurate the hot rules are (`[insight]`): precision, capture and lead time against
//! outcomes within a horizon, win rate by score band, what hot leads did first, later
//! milestones. Against a count the test makes itself from the generator's truth file, on
//! hand-written cases through the public API, and through a checkpoint's bytes.

mod support;

use std::collections::BTreeMap;
use std::sync::Arc;

use microfunnel::codec::{self, Limits};
use microfunnel::core::funnel::{ANY_RULE, FunnelReport, RuleQuality};
use microfunnel::core::snapshot::Dec;
use microfunnel::core::time::{MS_PER_DAY, parse_rfc3339};
use microfunnel::core::{Engine, Journey, Output, Ts};
use serde_json::{Value, json};
use support::{bin, unique};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

fn journey_with(insight: &str) -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(&format!("{B2B}\n[insight]\n{insight}\n")).expect("journey loads"))
}

fn t0() -> Ts {
    parse_rfc3339("2026-03-02T09:00:00Z").unwrap()
}

fn day(d: i64) -> Ts {
    Ts(t0().0 + d * MS_PER_DAY)
}

struct Feed {
    engine: Engine,
    n: u32,
}

impl Feed {
    fn new(journey: Arc<Journey>) -> Feed {
        Feed { engine: Engine::new(journey), n: 0 }
    }

    fn send(&mut self, prospect: &str, source: &str, kind: &str, at: Ts) {
        self.n += 1;
        let line = json!({"event_id": format!("e-{}", self.n), "prospect_id": prospect, "source": source,
                          "type": kind, "ts": at.to_string()})
        .to_string();
        let journey = Arc::clone(self.engine.journey());
        let ev = codec::decode(line.as_bytes(), &journey, &Limits::default()).unwrap();
        let mut out = Vec::new();
        self.engine.apply(&ev, &mut out);
        assert!(!out.iter().any(|o| matches!(o, Output::Rejected { .. })), "{line}: {out:?}");
    }

    fn report(&self) -> FunnelReport {
        self.engine.funnel().report(self.engine.journey())
    }
}

fn rule<'a>(r: &'a FunnelReport, name: &str) -> &'a RuleQuality {
    r.rules.iter().find(|q| q.rule == name).unwrap_or_else(|| panic!("no rule {name}"))
}

fn cells(q: &RuleQuality) -> [u64; 3] {
    [q.won, q.won_later, q.lost]
}

/// Four people: a quote request then a win 5 days later (within the horizon), another won 120
/// days later (beyond it), a third lost, a fourth won without any rule matching it.
fn four_people(f: &mut Feed) {
    for p in ["usr_a", "usr_b", "usr_c"] {
        f.send(p, "web", "content_downloaded", day(0));
        f.send(p, "web", "quote_requested", day(1));
    }
    f.send("usr_a", "crm", "deal_won", day(6));
    f.send("usr_b", "crm", "deal_won", day(121));
    f.send("usr_c", "crm", "deal_lost", day(4));
    f.send("usr_d", "crm", "deal_won", day(7));
}

#[test]
fn a_rule_counts_an_outcome_after_its_match_as_a_win_within_the_horizon_a_later_win_or_a_loss() {
    let mut f = Feed::new(journey_with("alert_horizon_days = 90"));
    four_people(&mut f);
    let r = f.report();
    assert_eq!((r.outcomes.won, r.outcomes.lost), (3, 1));
    let q = rule(&r, "quote_requested");
    assert_eq!(cells(q), [1, 1, 1], "{q:?}");
    assert_eq!((q.precision, q.capture), (0.3333, 0.3333), "{q:?}");
    // usr_a's 5 days fall in the (3 d, 7 d] bucket; usr_b's win is beyond the horizon.
    let median = q.lead_time_median.as_ref().expect("one win within the horizon");
    assert_eq!((median.from_secs, median.to_secs), (3.0 * 86_400.0, Some(7.0 * 86_400.0)));
    assert_eq!(cells(rule(&r, ANY_RULE)), [1, 1, 1]);
    assert_eq!(cells(rule(&r, "clarification_after_quote")), [0, 0, 0]);

    // A horizon of 200 days takes usr_b's win in.
    let mut f = Feed::new(journey_with("alert_horizon_days = 200"));
    four_people(&mut f);
    assert_eq!(cells(rule(&f.report(), "quote_requested")), [2, 0, 1]);
}

#[test]
fn a_reopened_deal_takes_its_outcome_back_from_the_rules_and_the_score_bands() {
    let mut f = Feed::new(journey_with("alert_horizon_days = 90\nscore_bands = [10, 40]"));
    four_people(&mut f);
    let before = f.report();
    let bands: Vec<[u64; 2]> = before.score_bands.iter().map(|b| [b.won, b.lost]).collect();
    // usr_d had no score before its win, and usr_b's decayed over 120 days (band < 10); usr_a
    // and usr_c had the download and the quote request days before (8 + 30, decayed a little:
    // band 10 - 40).
    assert_eq!(bands, vec![[2, 0], [1, 1], [0, 0]], "{:?}", before.score_bands);
    // The CRM reopens usr_c's lost deal with a new quote.
    f.send("usr_c", "crm", "quote_sent", day(10));
    let after = f.report();
    assert_eq!(cells(rule(&after, "quote_requested")), [1, 1, 0]);
    assert_eq!(after.score_bands.iter().map(|b| b.lost).sum::<u64>(), 0, "{:?}", after.score_bands);
}

#[test]
fn what_hot_leads_did_first_and_later_milestones_count_each_person_once() {
    let mut f = Feed::new(journey_with(""));
    four_people(&mut f);
    // Two people download and never turn hot; one of the hot ones subscribes afterwards.
    f.send("usr_e", "web", "content_downloaded", day(2));
    f.send("usr_f", "web", "content_downloaded", day(2));
    f.send("usr_a", "web", "email_subscribed", day(3));
    let r = f.report();
    let row = r.hot_first.iter().find(|h| h.signal == "content_downloaded").unwrap();
    // Hot: usr_a, usr_b, usr_c (all downloaded first). Never hot: usr_d, usr_e, usr_f (two
    // downloaded).
    assert_eq!((row.hot, row.hot_share, row.not_hot, row.not_hot_share), (3, 1.0, 2, 0.6667), "{row:?}");
    assert_eq!(row.lift, Some(1.5));
    let sub = r.hot_first.iter().find(|h| h.signal == "email_subscribed").unwrap();
    assert_eq!((sub.hot, sub.not_hot, sub.lift), (0, 0, Some(0.0).filter(|_| false)), "after turning hot: {sub:?}");
    let m = r.milestones.iter().find(|m| m.signal == "content_downloaded").unwrap();
    assert_eq!(m.shown, 5);
    let reached: BTreeMap<&str, u64> = m.reached.iter().map(|x| (x.stage.as_str(), x.prospects)).collect();
    // Three of the five who downloaded asked for a quote (deciding); two of them won.
    assert_eq!((reached["deciding"], reached["won"]), (3, 2), "{reached:?}");
}

#[test]
fn drop_off_counts_the_last_step_before_a_silence_and_a_pair_rule_reads_as_a_signal() {
    let mut f = Feed::new(journey_with(""));
    // Both ask for a quote and get one; usr_p asks what a line means (the pair), usr_q goes
    // silent: ghosted 5 days after the quote with `quote_requested` as its last step.
    for p in ["usr_p", "usr_q"] {
        f.send(p, "web", "quote_requested", day(0));
        f.send(p, "crm", "quote_sent", day(1));
    }
    f.send("usr_p", "crm", "quote_clarification_requested", day(2));
    f.send("usr_p", "crm", "deal_won", day(9));
    f.send("usr_q", "crm", "deal_lost", day(30));
    f.engine.advance_to(day(40), &mut Vec::new());
    let r = f.report();
    let d = r.drop_off.iter().find(|d| d.signal == "quote_requested").unwrap();
    assert_eq!((d.shown, d.silent, d.rate), (2, 1, 0.5), "{d:?}");
    let c = r.drop_off.iter().find(|d| d.signal == "quote_clarification_requested").unwrap();
    assert_eq!((c.shown, c.silent), (1, 0), "{c:?}");
    let pair = r.pairs.iter().find(|p| p.rule == "clarification_after_quote").expect("the sequence rule's pair");
    assert_eq!(
        (pair.signal.as_str(), pair.after.as_str(), pair.within_days),
        ("quote_clarification_requested", "quote_sent", 14.0)
    );
    assert_eq!((pair.won, pair.lost), (1, 0), "{pair:?}");
    // The pair matched on day 2 (the clarification), the win came on day 9.
    assert_eq!((pair.time_to_won.count, pair.time_to_won.mean_secs), (1, Some(7.0 * 86_400.0)), "{pair:?}");
    assert_eq!(pair.time_to_lost.count, 0);
    assert_eq!(r.pairs.len(), 1, "only sequence rules name pairs");
}

#[test]
fn the_rules_record_and_the_insight_counters_survive_a_checkpoint_and_a_changelog_record() {
    let mut f = Feed::new(journey_with(""));
    four_people(&mut f);
    let mut bytes = Vec::new();
    f.engine.encode_state(&mut bytes);
    let back = Engine::decode_state(Arc::clone(f.engine.journey()), &bytes).unwrap();
    assert_eq!(back.digest(), f.engine.digest());
    assert_eq!(back.funnel(), f.engine.funnel());
    let ix = f.engine.find("usr_b").unwrap();
    let mut rec = Vec::new();
    f.engine.encode_changelog_record(ix, &mut rec);
    let decoded = back.decode_changelog_record(&mut Dec::new(&rec)).unwrap();
    assert_eq!(decoded.extras.alerted, vec![(1, day(1))], "quote_requested (rule 1) matched on day 1");
    // An open prospect that matched keeps the record for its outcome after a restore.
    let mut g = Feed::new(journey_with(""));
    g.send("usr_x", "web", "quote_requested", day(1));
    let mut bytes = Vec::new();
    g.engine.encode_state(&mut bytes);
    g.engine = Engine::decode_state(Arc::clone(g.engine.journey()), &bytes).unwrap();
    g.send("usr_x", "crm", "deal_won", day(3));
    assert_eq!(cells(rule(&g.report(), "quote_requested")), [1, 0, 0]);
}

/// The signal table's time from a signal to the outcome, on hand-written people: `usr_a`
/// downloaded on day 0, asked for a quote on day 1 and won on day 6; `usr_c` did the same and
/// lost on day 4; a quote on day 1 that arrives after the day-0 download was seen on day 2
/// dates the signal from day 0 (first shown, in event time).
#[test]
fn the_time_from_a_signal_to_the_outcome_runs_from_its_first_showing() {
    let mut f = Feed::new(journey_with(""));
    four_people(&mut f);
    f.send("usr_a", "web", "content_downloaded", day(3));
    let r = f.report();
    let sig = |name: &str| r.signals.iter().find(|s| s.signal == name).unwrap_or_else(|| panic!("no {name}"));
    let bucket = |t: &Option<microfunnel::core::funnel::TimeToOutcome>| {
        let m = t.as_ref().unwrap().median.clone().unwrap();
        (m.from_secs / 86_400.0, m.to_secs.map(|s| s / 86_400.0))
    };
    let dl = sig("content_downloaded");
    // Won: usr_a after 6 days, usr_b after 121 days (median: the first of two, 6 days).
    assert_eq!(dl.time_to_won.as_ref().unwrap().count, 2);
    assert_eq!(bucket(&dl.time_to_won), (3.0, Some(7.0)), "{dl:?}");
    assert_eq!(dl.time_to_won.as_ref().unwrap().mean_secs, Some((6.0 + 121.0) / 2.0 * 86_400.0));
    assert_eq!(bucket(&dl.time_to_lost), (3.0, Some(7.0)), "usr_c lost 4 days after: {dl:?}");
    let quote = sig("quote_requested");
    assert_eq!(quote.time_to_won.as_ref().unwrap().mean_secs, Some((5.0 + 120.0) / 2.0 * 86_400.0));
    assert_eq!(bucket(&quote.time_to_lost), (1.0, Some(3.0)), "3 days: {quote:?}");
    // Out of order: a download dated before the one held moves the first showing earlier.
    let mut g = Feed::new(journey_with(""));
    g.send("usr_e", "web", "content_downloaded", day(2));
    g.send("usr_e", "web", "quote_requested", day(3));
    g.send("usr_e", "web", "content_downloaded", day(-10));
    g.send("usr_e", "crm", "deal_won", day(4));
    let r = g.report();
    let dl = r.signals.iter().find(|s| s.signal == "content_downloaded").unwrap();
    assert_eq!(dl.time_to_won.as_ref().unwrap().mean_secs, Some(14.0 * 86_400.0), "{dl:?}");
}

/// First-shown times are state (version 5): through a full state and a changelog record an
/// open prospect keeps them, so its later outcome is measured from them; the funnel's times
/// come with the meta. A version-4 state has none and loads.
#[test]
fn first_shown_times_survive_a_checkpoint_and_a_changelog_record() {
    let mut f = Feed::new(journey_with(""));
    f.send("usr_x", "web", "content_downloaded", day(0));
    f.send("usr_x", "web", "quote_requested", day(1));
    f.send("usr_y", "web", "content_downloaded", day(0));
    f.send("usr_y", "crm", "deal_won", day(2));
    let mut bytes = Vec::new();
    f.engine.encode_state(&mut bytes);
    let back = Engine::decode_state(Arc::clone(f.engine.journey()), &bytes).unwrap();
    assert_eq!(back.digest(), f.engine.digest());
    assert_eq!(back.funnel(), f.engine.funnel());
    assert!(back.funnel().signal_to_outcome.iter().any(|h| h[0].count == 1), "usr_y's win");
    let ix = f.engine.find("usr_x").unwrap();
    let shown: Vec<_> = back.first_shown(back.find("usr_x").unwrap()).collect();
    assert_eq!(shown, f.engine.first_shown(ix).collect::<Vec<_>>());
    assert_eq!(shown.len(), 2, "{shown:?}");
    let mut rec = Vec::new();
    f.engine.encode_changelog_record(ix, &mut rec);
    let decoded = back.decode_changelog_record(&mut Dec::new(&rec)).unwrap();
    let mut fresh = Engine::new(Arc::clone(f.engine.journey()));
    let at = fresh.install("usr_x", decoded).unwrap();
    assert_eq!(fresh.first_shown(at).collect::<Vec<_>>(), shown);
    assert_eq!(fresh.prospect_digest(at), f.engine.prospect_digest(ix));
    // The restored prospect's win is measured from its day-0 download.
    let mut g = Feed { engine: back, n: 100 };
    g.send("usr_x", "crm", "deal_won", day(10));
    let r = g.report();
    let dl = r.signals.iter().find(|s| s.signal == "content_downloaded").unwrap();
    assert_eq!(dl.time_to_won.as_ref().unwrap().mean_secs, Some(6.0 * 86_400.0), "(2 + 10) / 2 days: {dl:?}");
}

#[test]
fn a_bad_insight_section_is_refused_naming_the_key() {
    for (text, key) in [
        ("alert_horizon_days = 0", "insight"),
        ("score_bands = [50, 10]", "insight.score_bands"),
        ("score_bands = [1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17]", "insight.score_bands"),
    ] {
        let Err(err) = Journey::from_toml_str(&format!("{B2B}\n[insight]\n{text}\n")) else {
            panic!("{text} is accepted")
        };
        let err = err.to_string();
        assert!(err.contains(key), "{text}: {err}");
    }
}

/// The rules' accuracy from `replay` equals what the test counts itself from the generator's
/// truth file (each person's outcome and when) and the alerts `replay` printed (each rule's
/// first match per prospect, sent or held by the cooldown).
#[test]
fn hot_rule_accuracy_equals_a_count_from_the_truth_file() {
    let dir = std::env::temp_dir().join(unique("insight"));
    std::fs::create_dir_all(&dir).unwrap();
    let (traffic, truth, journey) = (dir.join("t.jsonl"), dir.join("truth.jsonl"), dir.join("j.toml"));
    // 14 days splits the generated wins between within and beyond the horizon.
    std::fs::write(&journey, format!("{B2B}\n[insight]\nalert_horizon_days = 14\n")).unwrap();
    let st = bin()
        .args(["gen", "--prospects", "8000", "--seed", "11", "--quiet", "--out"])
        .arg(&traffic)
        .arg("--truth")
        .arg(&truth)
        .status()
        .unwrap();
    assert!(st.success());
    let out = bin().arg("replay").arg("--journey").arg(&journey).arg(&traffic).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ms = |s: &str| parse_rfc3339(s).unwrap().0;
    let mut first: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut summary = Value::Null;
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        match v["kind"].as_str() {
            Some("hot_lead" | "hot_lead_suppressed") => {
                let p = v["prospect"].as_str().unwrap().to_string();
                for r in v["rules"].as_array().unwrap() {
                    let at = ms(v["at"].as_str().unwrap());
                    let e = first.entry((p.clone(), r.as_str().unwrap().to_string())).or_insert(at);
                    *e = (*e).min(at);
                }
            }
            Some("funnel_summary") => summary = v,
            _ => {}
        }
    }
    let mut earliest: BTreeMap<String, i64> = BTreeMap::new();
    for ((p, _), &t) in &first {
        let e = earliest.entry(p.clone()).or_insert(t);
        *e = (*e).min(t);
    }
    let outcomes: BTreeMap<String, (String, i64)> = std::fs::read_to_string(&truth)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["outcome"] != "open")
        .map(|v| {
            (
                v["prospect"].as_str().unwrap().into(),
                (v["outcome"].as_str().unwrap().into(), ms(v["outcome_at"].as_str().unwrap())),
            )
        })
        .collect();
    let wins = outcomes.values().filter(|(o, _)| o == "won").count() as u64;
    let horizon = 14 * MS_PER_DAY;
    let mut expected: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    let mut leads = Vec::new();
    let matches = first.iter().map(|((p, r), &t)| (p.clone(), r.clone(), t));
    for (p, r, t) in matches.chain(earliest.iter().map(|(p, &t)| (p.clone(), ANY_RULE.to_string(), t))) {
        let Some((o, at)) = outcomes.get(&p) else { continue };
        if t > *at {
            continue;
        }
        let cell = match o.as_str() {
            "won" if at - t <= horizon => 0,
            "won" => 1,
            _ => 2,
        };
        expected.entry(r.clone()).or_default()[cell] += 1;
        if cell == 0 && r == ANY_RULE {
            leads.push((at - t) as f64 / 1000.0);
        }
    }
    assert_eq!(summary["outcomes"]["won"].as_u64(), Some(wins), "the truth file's wins");
    let rules = summary["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 4, "three rules and `any`");
    for q in rules {
        let name = q["rule"].as_str().unwrap();
        let got = [&q["won"], &q["won_later"], &q["lost"]].map(|v| v.as_u64().unwrap());
        let want = expected.get(name).copied().unwrap_or_default();
        assert_eq!(got, want, "rule {name}");
        let capture = (want[0] as f64 / wins as f64 * 10_000.0).round() / 10_000.0;
        assert_eq!(q["capture"].as_f64(), Some(capture), "rule {name}");
    }
    let any = &expected[ANY_RULE];
    assert!(any[0] > 20 && any[1] > 20 && any[2] > 20, "the case covers every cell: {any:?}");
    // The median lead time of `any` lies in the bucket the report names.
    leads.sort_by(f64::total_cmp);
    let median = leads[(leads.len() - 1) / 2];
    let bucket = &rules[3]["lead_time_median"];
    let (from, to) = (bucket["from_secs"].as_f64().unwrap(), bucket["to_secs"].as_f64().unwrap_or(f64::INFINITY));
    assert!(from < median && median <= to, "median {median} s in ({from}, {to}]");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The median time from each signal to the outcome in `replay`'s summary equals the median the
/// test computes itself, to the bucket: each person's first event of the signal in the traffic
/// file (at or before the outcome) to the truth file's `outcome_at`.
#[test]
fn median_time_from_each_signal_to_the_outcome_equals_one_from_the_truth_file() {
    let dir = std::env::temp_dir().join(unique("insight-times"));
    std::fs::create_dir_all(&dir).unwrap();
    let (traffic, truth) = (dir.join("t.jsonl"), dir.join("truth.jsonl"));
    let st = bin()
        .args(["gen", "--prospects", "6000", "--seed", "5", "--quiet", "--out"])
        .arg(&traffic)
        .arg("--truth")
        .arg(&truth)
        .status()
        .unwrap();
    assert!(st.success());
    let journey = journey_with("");
    let b2b = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/journeys/b2b.toml");
    let out = bin().args(["replay", "--summary-only", "--journey", b2b]).arg(&traffic).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|v| v["kind"] == "funnel_summary")
        .expect("a funnel_summary");
    let ms = |s: &str| parse_rfc3339(s).unwrap().0;
    let outcomes: BTreeMap<String, (usize, i64)> = std::fs::read_to_string(&truth)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["outcome"] != "open")
        .map(|v| {
            let o = if v["outcome"] == "won" { 0 } else { 1 };
            (v["prospect"].as_str().unwrap().into(), (o, ms(v["outcome_at"].as_str().unwrap())))
        })
        .collect();
    // Each person's first event time per validated signal, from the traffic file.
    let mut first: BTreeMap<(String, u16), i64> = BTreeMap::new();
    let text = std::fs::read_to_string(&traffic).unwrap();
    for line in text.lines() {
        for (_, ev) in codec::decode_each(line.as_bytes(), &journey, &Limits::default()) {
            let Ok(ev) = ev else { continue };
            let Some(sig) = ev.signal.or_else(|| journey.resolve(ev.kind, &ev.name)) else { continue };
            let def = journey.signal(sig);
            if !microfunnel::core::funnel::validated(&journey, def) || !def.source.admits(ev.source) {
                continue;
            }
            let e = first.entry((ev.prospect.to_string(), sig.0)).or_insert(ev.ts.0);
            *e = (*e).min(ev.ts.0);
        }
    }
    let mut times: BTreeMap<(u16, usize), Vec<f64>> = BTreeMap::new();
    for ((p, sig), t) in &first {
        let Some(&(o, at)) = outcomes.get(p) else { continue };
        if *t <= at {
            // The engine keeps first-shown times to the second.
            times.entry((*sig, o)).or_default().push((at / 1000 * 1000 - t / 1000 * 1000) as f64 / 1000.0);
        }
    }
    let buckets = microfunnel::core::funnel::TIME_BUCKETS_SECS;
    let bucket_of = |secs: f64| buckets.iter().position(|&b| secs <= b).unwrap_or(buckets.len());
    let mut checked = 0;
    for row in summary["signals"].as_array().unwrap() {
        let sig = journey.lookup(row["signal"].as_str().unwrap()).unwrap();
        for (o, key) in [(0, "time_to_won"), (1, "time_to_lost")] {
            let mut v = times.remove(&(sig.0, o)).unwrap_or_default();
            let got = &row[key];
            let n = got["count"].as_u64().unwrap();
            // Events dated before the outcome but sent after it are not counted with it.
            let want = v.len() as u64;
            assert!(n <= want && n * 100 >= want * 98, "{} {key}: {n} measured, {want} in the file", row["signal"]);
            if v.is_empty() {
                continue;
            }
            v.sort_by(f64::total_cmp);
            let median = v[(v.len() - 1) / 2];
            let k = bucket_of(median);
            let m = &got["median"];
            let from = if k == 0 { 0.0 } else { buckets[k - 1] };
            assert_eq!(m["from_secs"].as_f64(), Some(from), "{} {key}: median {median} s, got {m}", row["signal"]);
            assert_eq!(m["to_secs"].as_f64(), buckets.get(k).copied(), "{} {key}", row["signal"]);
            checked += 1;
        }
    }
    assert!(checked >= 10, "enough signals with outcomes: {checked}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// An identity merge keeps the earlier first showing of each signal: a download made before
/// signing up, under the anonymous id, dates the signed-up user's win, whether the user id is
/// new at the link (the anonymous state moves) or had its own download (the two fold).
#[test]
fn a_merged_person_keeps_the_earliest_first_showing_of_each_signal() {
    let journey = Arc::new(Journey::from_toml_str(&format!("{B2B}\n[identity]\nresolve = true\n")).unwrap());
    let seg = |kind: &str, event: &str, user: &str, anon: &str, id: &str, ts: &str| {
        let user = if user.is_empty() { "null".to_string() } else { format!("\"{user}\"") };
        let anon = if anon.is_empty() { "null".to_string() } else { format!("\"{anon}\"") };
        let event = if event.is_empty() { String::new() } else { format!(r#","event":"{event}""#) };
        format!(
            r#"{{"type":"{kind}"{event},"userId":{user},"anonymousId":{anon},"messageId":"{id}","timestamp":"{ts}"}}"#
        )
    };
    let won = json!({"event_id": "c-1", "prospect_id": "usr_1", "source": "crm", "type": "deal_won",
                     "ts": "2026-03-12T09:00:00Z"})
    .to_string();
    let download =
        |user: &str, anon: &str, id: &str, ts: &str| seg("track", "Whitepaper Downloaded", user, anon, id, ts);
    let moved = [
        download("", "anon-1", "m-1", "2026-03-02T09:00:00Z"),
        download("usr_1", "anon-1", "m-2", "2026-03-04T09:00:00Z"),
        won.clone(),
    ];
    let folded = [
        download("", "anon-1", "m-1", "2026-03-02T09:00:00Z"),
        download("usr_1", "", "m-2", "2026-03-04T09:00:00Z"),
        seg("identify", "", "usr_1", "anon-1", "m-3", "2026-03-05T09:00:00Z"),
        won,
    ];
    for (case, lines) in [("moved", &moved[..]), ("folded", &folded[..])] {
        let mut engine = Engine::new(Arc::clone(&journey));
        let mut out = Vec::new();
        for line in lines {
            let ev = codec::decode(line.as_bytes(), &journey, &Limits::default()).unwrap();
            engine.apply(&ev, &mut out);
        }
        assert!(out.iter().any(|o| matches!(o, Output::ProspectMerged { .. })), "{case}: {out:?}");
        let usr = engine.find("usr_1").expect("the canonical id");
        let dl = journey.lookup("content_downloaded").unwrap();
        let shown: Vec<_> = engine.first_shown(usr).filter(|&(s, _)| s == dl.0).collect();
        assert_eq!(
            shown,
            vec![(dl.0, parse_rfc3339("2026-03-02T09:00:00Z").unwrap())],
            "{case}: the anonymous download"
        );
        let r = engine.funnel().report(&journey);
        let row = r.signals.iter().find(|s| s.signal == "content_downloaded").unwrap();
        let t = row.time_to_won.as_ref().unwrap();
        assert_eq!((t.count, t.mean_secs), (1, Some(10.0 * 86_400.0)), "{case}: {row:?}");
    }
}

/// A prospect that leaves memory (retention) takes its first-shown times with it: a new
/// prospect in its slot starts with none.
#[test]
fn a_freed_slot_starts_with_no_first_showing() {
    let mut f = Feed::new(Arc::new(
        Journey::from_toml_str(&format!("{B2B}\n[retention]\nafter_days = 10\n[retention.stages]\naware = 2\n"))
            .unwrap(),
    ));
    f.send("p-1", "web", "content_downloaded", day(0));
    let slot = f.engine.find("p-1").unwrap();
    for d in [15, 16] {
        f.send("clock-1", "web", "page_viewed", day(d));
        f.send("clock-2", "web", "page_viewed", day(d));
    }
    assert!(f.engine.find("p-1").is_none(), "p-1 expired");
    f.send("p-2", "web", "page_viewed", day(17));
    let p2 = f.engine.find("p-2").unwrap();
    assert_eq!(p2, slot, "p-2 reuses p-1's slot");
    let pv = f.engine.journey().lookup("page_viewed").unwrap();
    assert_eq!(f.engine.first_shown(p2).collect::<Vec<_>>(), vec![(pv.0, day(17))]);
}

/// The milestone table's time from a signal's first showing to first reaching each later stage:
/// the four people download on day 0 (interested at once), ask for a quote on day 1
/// (evaluating and deciding), two win on days 6 and 121.
#[test]
fn the_time_from_a_signal_to_each_later_milestone() {
    let mut f = Feed::new(journey_with(""));
    four_people(&mut f);
    let r = f.report();
    let m = r.milestones.iter().find(|m| m.signal == "content_downloaded").unwrap();
    let stage = |name: &str| m.reached.iter().find(|s| s.stage == name).unwrap().time_to_reach.clone();
    let days = |t: &microfunnel::core::funnel::TimeToOutcome| (t.count, t.mean_secs.map(|s| s / 86_400.0));
    assert_eq!(days(&stage("interested")), (3, Some(0.0)));
    assert_eq!(days(&stage("evaluating")), (3, Some(1.0)));
    assert_eq!(days(&stage("deciding")), (3, Some(1.0)));
    assert_eq!(days(&stage("won")), (2, Some(63.5)), "days 6 and 121");
    assert_eq!(stage("won").buckets.iter().sum::<u64>(), 2);
    // Through a full state, the table comes back.
    let mut bytes = Vec::new();
    f.engine.encode_state(&mut bytes);
    let back = Engine::decode_state(Arc::clone(f.engine.journey()), &bytes).unwrap();
    assert_eq!(back.funnel().signal_stage_time, f.engine.funnel().signal_stage_time);
}
