//! The traffic generator: deterministic, decodable, realistic, and its ground truth agrees with
//! what the engine measures (a planted micro-certainty shows up as predictive, noise does not).

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;

use microfunnel::codec::{self, Limits};
use microfunnel::core::funnel::MIN_SAMPLE;
use microfunnel::core::{Engine, Journey, Source};
use microfunnel::traffic::model::Outcome;
use microfunnel::traffic::{GenError, Generator, Options, Truth};
use serde_json::Value;

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");
const ECOMMERCE: &str = include_str!("../deploy/journeys/ecommerce.toml");

fn b2b() -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(B2B).unwrap())
}

struct Run {
    lines: Vec<(Source, String, Vec<u8>)>,
    truth: Vec<Truth>,
    generator: Generator,
}

fn generate(opts: Options) -> Run {
    let mut generator = Generator::new(opts, &b2b(), true).unwrap();
    let (mut line, mut key) = (Vec::new(), String::new());
    let mut lines = Vec::new();
    let mut truth = Vec::new();
    while let Some(meta) = generator.next_into(&mut line, &mut key) {
        lines.push((meta.source, key.clone(), line.clone()));
        truth.extend(generator.drain_truth());
    }
    truth.extend(generator.drain_truth());
    Run { lines, truth, generator }
}

fn opts(prospects: u64, seed: u64) -> Options {
    Options { prospects, seed, ..Options::default() }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let a = generate(opts(300, 9));
    let b = generate(opts(300, 9));
    let c = generate(opts(300, 10));
    assert!(a.lines.len() > 1000, "300 prospects give a realistic volume: {}", a.lines.len());
    assert_eq!(a.lines, b.lines);
    assert_eq!(a.truth, b.truth);
    assert_ne!(a.lines, c.lines);
}

#[test]
fn every_clean_line_decodes_and_maps_to_a_signal_with_its_key() {
    let o = Options { malformed_share: 0.0, ..opts(500, 3) };
    let run = generate(o);
    let journey = b2b();
    let (mut segment, mut canonical, mut unmapped) = (0, 0, 0);
    for (source, key, line) in &run.lines {
        let ev = codec::decode(line, &journey, &Limits::default())
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(line)));
        assert_eq!(ev.source, *source);
        assert_eq!(&*ev.prospect, key.as_str(), "Kafka key is the prospect id");
        match ev.signal {
            Some(s) => assert!(journey.signal(s).source.admits(ev.source)),
            None => unmapped += 1,
        }
        if line.starts_with(b"{\"type\"") { segment += 1 } else { canonical += 1 }
    }
    assert!(segment > 500 && canonical > 500, "both formats: {segment} Segment, {canonical} canonical");
    assert!(unmapped > 0, "some site events map to no signal, as on real sites");
    let s = run.generator.stats();
    assert_eq!(s.segment + s.canonical, s.events);
    assert_eq!(s.malformed, 0);
}

#[test]
fn segment_lines_look_like_analytics_js() {
    let run = generate(opts(200, 5));
    let seg: Vec<Value> = run
        .lines
        .iter()
        .filter(|l| l.2.starts_with(b"{\"type\""))
        .map(|l| serde_json::from_slice(&l.2).unwrap())
        .collect();
    let kinds: HashMap<&str, usize> = seg.iter().fold(HashMap::new(), |mut m, v| {
        *m.entry(v["type"].as_str().unwrap()).or_default() += 1;
        m
    });
    for k in ["page", "track", "identify"] {
        assert!(kinds.get(k).copied().unwrap_or(0) > 0, "{k} calls present: {kinds:?}");
    }
    for v in &seg {
        for f in ["messageId", "anonymousId", "originalTimestamp", "sentAt", "receivedAt", "timestamp"] {
            assert!(v[f].is_string(), "{f} in {v}");
        }
        assert_eq!(v["context"]["library"]["name"], "analytics.js");
        assert!(v["userId"].is_null() || v["userId"].is_string());
    }
    assert!(seg.iter().any(|v| v["userId"].is_null()), "anonymous calls carry userId: null");
    assert!(
        seg.iter().any(|v| v["traits"]["email"].as_str().is_some_and(|e| e.chars().any(char::is_uppercase))),
        "some identify calls carry mixed-case emails"
    );
}

#[test]
fn injected_duplicates_out_of_order_and_malformed_lines_are_what_the_engine_sees() {
    let o = Options { duplicate_share: 0.05, out_of_order_share: 0.05, malformed_share: 0.02, ..opts(1500, 11) };
    let run = generate(o);
    let journey = b2b();
    let mut engine = Engine::new(Arc::clone(&journey));
    let mut out = Vec::new();
    let mut rejected = 0;
    for (_, _, line) in &run.lines {
        match codec::decode(line, &journey, &Limits::default()) {
            Ok(ev) => engine.apply(&ev, &mut out),
            Err(_) => rejected += 1,
        }
    }
    let g = run.generator.stats();
    assert!(g.duplicates > 100 && g.malformed > 100 && g.out_of_order > 100, "{g:?}");
    assert_eq!(rejected, g.malformed, "every malformed line, and only those, is rejected");
    let e = engine.stats();
    assert!(e.duplicates >= g.duplicates * 9 / 10, "engine dropped {} of {} duplicates", e.duplicates, g.duplicates);
    assert!(e.late > 0, "a tenth of out-of-order events arrive beyond the allowed lateness");
}

#[test]
fn clean_traffic_in_time_order_has_no_late_events() {
    let o = Options { duplicate_share: 0.0, out_of_order_share: 0.0, malformed_share: 0.0, ..opts(1000, 4) };
    let run = generate(o);
    let journey = b2b();
    let mut engine = Engine::new(Arc::clone(&journey));
    let mut out = Vec::new();
    for (_, _, line) in &run.lines {
        engine.apply(&codec::decode(line, &journey, &Limits::default()).unwrap(), &mut out);
    }
    assert_eq!(engine.stats().late, 0);
    assert_eq!(engine.stats().duplicates, 0);
}

#[test]
fn ground_truth_matches_the_outcomes_the_engine_sees() {
    let run = generate(opts(4000, 21));
    let journey = b2b();
    let mut engine = Engine::new(Arc::clone(&journey));
    let mut out = Vec::new();
    for (_, _, line) in &run.lines {
        if let Ok(ev) = codec::decode(line, &journey, &Limits::default()) {
            engine.apply(&ev, &mut out);
        }
    }
    let won = run.truth.iter().filter(|t| t.outcome == Outcome::Won).count() as u64;
    let lost = run.truth.iter().filter(|t| t.outcome == Outcome::Lost).count() as u64;
    assert!(won > 20 && lost > 20, "won {won} lost {lost}");
    assert_eq!(engine.funnel().outcomes, [won, lost]);
    for t in run.truth.iter().filter(|t| t.outcome != Outcome::Open) {
        let ix = engine.find(&t.prospect).unwrap_or_else(|| panic!("{} decided but unseen", t.prospect));
        let stage = engine.view(ix, None).stage;
        match t.outcome {
            Outcome::Won => assert!(["won", "adopting", "advocating"].contains(&stage.as_str()), "{stage}"),
            Outcome::Lost => assert_eq!(stage, "lost"),
            Outcome::Open => unreachable!(),
        }
    }
}

#[test]
fn the_planted_micro_certainty_predicts_and_noise_does_not() {
    let run = generate(Options { malformed_share: 0.0, ..opts(30_000, 1) });
    let journey = b2b();
    let mut engine = Engine::new(Arc::clone(&journey));
    let mut out = Vec::new();
    for (_, _, line) in &run.lines {
        engine.apply(&codec::decode(line, &journey, &Limits::default()).unwrap(), &mut out);
    }
    let report = engine.funnel().report(&journey);
    let lift = |name: &str| report.signals.iter().find(|s| s.signal == name).map(|s| s.lift).unwrap();
    assert!(
        lift("quote_clarification_requested") > 1.4,
        "clarification lift {}",
        lift("quote_clarification_requested")
    );
    for noise in ["webinar_registered", "content_downloaded", "email_subscribed"] {
        assert!((0.85..1.15).contains(&lift(noise)), "{noise} should be noise, lift {}", lift(noise));
        let s = report.signals.iter().find(|s| s.signal == noise).unwrap();
        let [low, high] = s.lift_interval;
        assert!(low < 1.0 && 1.0 < high, "{noise}'s interval covers 1: {low}-{high}");
    }
    // The planted micro-certainty ranks first; its interval excludes 1.
    let first = &report.signals[0];
    assert_eq!(first.signal, "quote_clarification_requested", "{:?}", report.signals);
    assert!(first.lift_interval[0] > 1.0 && !first.small_sample, "{first:?}");
    let [low, high] = first.win_rate_interval;
    assert!(low < first.win_rate && first.win_rate < high && (0.0..=1.0).contains(&low) && high <= 1.0);
    // Outcomes and the seller's own actions are not signals of the buyer.
    for absent in ["deal_won", "deal_lost", "quote_sent", "meeting_booked", "disqualified"] {
        assert!(report.signals.iter().all(|s| s.signal != absent), "{absent} is listed");
    }
    // Sorted by lift, thin samples (flagged) after the others.
    let (enough, thin): (Vec<_>, Vec<_>) = report.signals.iter().partition(|s| !s.small_sample);
    assert!(enough.windows(2).all(|w| w[0].lift >= w[1].lift));
    assert_eq!(report.signals.iter().position(|s| s.small_sample).unwrap_or(enough.len()), enough.len());
    assert!(thin.iter().all(|s| s.won + s.lost < MIN_SAMPLE));
    let strict = engine.funnel().report_with(&journey, 1_000_000);
    assert!(strict.signals.iter().all(|s| s.small_sample));
}

#[test]
fn a_journey_without_the_b2b_signals_is_refused_by_name() {
    let ecommerce = Journey::from_toml_str(ECOMMERCE).unwrap();
    let err = Generator::new(opts(10, 1), &ecommerce, false).err().expect("refused");
    match &err {
        GenError::MissingSignal { journey, signal, .. } => {
            assert_eq!(journey, "ecommerce");
            assert!(!signal.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("--journey b2b"), "{err}");
    let bad = Options { duplicate_share: 1.5, ..opts(10, 1) };
    assert!(Generator::new(bad, &b2b(), false).err().unwrap().to_string().contains("--duplicates"));
}

#[test]
fn cli_writes_events_and_truth_files_deterministically() {
    let dir = std::env::temp_dir().join(format!("mf-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |name: &str, extra: &[&str]| {
        let out = dir.join(format!("{name}.jsonl"));
        let truth = dir.join(format!("{name}.truth.jsonl"));
        let status = Command::new(env!("CARGO_BIN_EXE_microfunnel"))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["gen", "--prospects", "150", "--seed", "3", "--quiet", "--out"])
            .arg(&out)
            .arg("--truth")
            .arg(&truth)
            .args(extra)
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        let stderr = String::from_utf8_lossy(&status.stderr).to_string();
        (std::fs::read(out).unwrap(), std::fs::read_to_string(truth).unwrap(), stderr)
    };
    let (a, ta, summary) = run("a", &[]);
    let (b, tb, _) = run("b", &["--rate", "100000"]);
    assert_eq!(a, b, "pacing changes timing, not content");
    assert_eq!(ta, tb);
    assert_eq!(ta.lines().count(), 150, "one truth line per prospect");
    assert!(summary.contains("lines in") && summary.contains("150 prospects"), "{summary}");
    let bad = Command::new(env!("CARGO_BIN_EXE_microfunnel"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["gen", "--journey", "deploy/journeys/ecommerce.toml", "--prospects", "5"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("ecommerce"));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn the_forecast_beats_fixed_stage_probabilities_and_is_calibrated_on_generated_traffic() {
    use microfunnel::core::forecast::{self, Options as ForecastOptions};
    use microfunnel::core::{Span, Ts};
    let run = generate(Options { malformed_share: 0.0, ..opts(20_000, 7) });
    let journey = b2b();
    let mut engine = Engine::new(Arc::clone(&journey));
    let mut out = Vec::new();
    for (_, _, line) in &run.lines {
        engine.apply(&codec::decode(line, &journey, &Limits::default()).unwrap(), &mut out);
    }
    let opts = ForecastOptions { horizon: Span::from_days(30.0), baseline: forecast::default_baseline(&journey) };
    let end = engine.watermark();
    let b = forecast::backtest(&[&engine], Ts(end.0 - opts.horizon.0), &opts).expect("b2b has a won stage");
    assert!(b.forecast.open > 1000 && b.won > 50, "a real test: {} open, {} won", b.forecast.open, b.won);
    assert!(b.brier < b.baseline_brier, "Brier {} against the fixed probabilities' {}", b.brier, b.baseline_brier);
    // The wins that happened lie in the forecast's interval.
    let [low, high] = b.forecast.expected_wins_interval;
    assert!(low <= b.won as f64 && b.won as f64 <= high, "{} won, forecast {low}-{high}", b.won);
    // Every decile with enough prospects is calibrated: its mean forecast lies in the interval
    // of the win rate observed in it.
    let checked: Vec<_> = b.calibration.iter().filter(|c| c.prospects >= 100).collect();
    assert!(!checked.is_empty());
    for c in checked {
        let [l, h] = c.observed_interval;
        assert!(l <= c.mean_forecast && c.mean_forecast <= h, "decile {c:?}");
    }
    // Only what was known at the forecast's instant is used: the same forecast from a state
    // that stops there equals the one from the whole run.
    let at = Ts(end.0 - opts.horizon.0);
    let mut early = Engine::new(Arc::clone(&journey));
    for (_, _, line) in &run.lines {
        let ev = codec::decode(line, &journey, &Limits::default()).unwrap();
        if ev.ts <= at {
            early.apply(&ev, &mut out);
        }
    }
    let (now, then) =
        (forecast::forecast(&[&engine], at, &opts).unwrap(), forecast::forecast(&[&early], at, &opts).unwrap());
    assert_eq!((now.open, now.expected_wins), (then.open, then.expected_wins));
}

/// Ids and emails name one person: user ids differ across seeds as well as people (a run per
/// seed must not reuse another run's ids shifted by one person), and no two people of a run
/// share an email (the email rule would join them).
#[test]
fn user_ids_are_unique_per_seed_and_person_and_emails_per_person() {
    use std::collections::HashSet;

    use microfunnel::traffic::render::identity;

    let mut ids = HashSet::new();
    for seed in 0..8 {
        for n in 0..2_000 {
            let id = identity(seed, n);
            assert!(ids.insert(id.user_id.clone()), "seed {seed}, person {n}: {} again", id.user_id);
        }
    }
    for seed in [5, 42] {
        let mut emails = HashSet::new();
        for n in 0..20_000 {
            let e = identity(seed, n).email.to_lowercase();
            assert!(emails.insert(e.clone()), "seed {seed}, person {n}: {e} again");
        }
    }
}
