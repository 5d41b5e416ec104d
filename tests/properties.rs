//! Properties of the engine over generated event sequences (canonical and Segment payloads, a
//! few prospects, the b2b journey): determinism, idempotence under duplicates, independence of
//! prospects from how their events interleave, and bounded scores.

use std::sync::Arc;

use microfunnel::codec::{self, Limits};
use microfunnel::core::journey::SignalSource;
use microfunnel::core::time::{MS_PER_DAY, MS_PER_HOUR, MS_PER_SEC, parse_rfc3339};
use microfunnel::core::{Engine, Journey, Output, Ts};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{Value, json};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

/// Prospects: three known users and an anonymous visitor (Segment `userId: null`).
const PROSPECTS: [(&str, Option<&str>); 4] = [
    ("usr_8812", Some("Dana.Whitfield@Northwind.example")),
    ("usr_4410", Some("Marcus.Oyelaran@Fabrikam.example")),
    ("usr_9920", Some("LI.WEI@CONTOSO.EXAMPLE")),
    ("3b1f6c2e-9d0a-4f5e-8a77-2c1d9e4b5a60", None),
];

fn b2b() -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(B2B).unwrap())
}

/// b2b with a lateness far beyond any generated time span: nothing is ever late and timers only
/// fire on a prospect's own later events or the final `advance_to`.
fn b2b_never_late() -> Arc<Journey> {
    let from = "allowed_lateness_hours = 24 ";
    assert_eq!(B2B.matches(from).count(), 1);
    Arc::new(Journey::from_toml_str(&B2B.replace(from, "allowed_lateness_hours = 1000000 ")).unwrap())
}

fn t0() -> Ts {
    parse_rfc3339("2026-03-02T09:00:00Z").unwrap()
}

#[derive(Clone, Debug)]
enum Action {
    /// Prospect `prospect` shows signal `signal` (an index into the journey's signals),
    /// `minutes` after the previous event (negative: it happened earlier, possibly late).
    Event { prospect: usize, signal: usize, minutes: i64, segment: bool },
    /// A Segment track call that no signal names.
    Unmapped { prospect: usize, minutes: i64 },
    /// Event time passes with no events (the shell's idle tick).
    Advance { hours: i64 },
}

/// One input to the engine.
#[derive(Clone, Debug)]
enum Step {
    Line { bytes: Vec<u8>, mapped: bool },
    Advance(Ts),
}

fn title_case(name: &str) -> String {
    name.split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next().map(|f| f.to_uppercase().chain(c).collect::<String>()).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The payload a real source would send for this signal: CRM signals as canonical CRM events,
/// web signals as Segment calls or canonical web events.
fn payload(journey: &Journey, prospect: usize, signal: usize, segment: bool, at: Ts, event_id: &str) -> Vec<u8> {
    let def = &journey.signals[signal];
    let (id, email) = PROSPECTS[prospect];
    let source = match def.source {
        SignalSource::Crm => "crm",
        SignalSource::Web => "web",
        SignalSource::Any if segment => "web",
        SignalSource::Any => "crm",
    };
    let v = if source == "web" && segment {
        let mut v = match def.name.as_str() {
            "page_viewed" => json!({"type": "page", "name": "Pricing", "properties": {"path": "/pricing",
                "url": "https://www.acme-analytics.example/pricing?utm_source=google&utm_medium=cpc"}}),
            "identified" => json!({"type": "identify", "traits": {"email": email, "company": {"name": "Acme"}}}),
            name => json!({"type": "track", "event": title_case(name), "properties": {"plan": "growth", "seats": 25}}),
        };
        if email.is_some() {
            v["userId"] = json!(id);
            v["context"] = json!({"traits": {"email": email}, "campaign": {"source": "newsletter"}});
        } else {
            v["userId"] = json!(null);
            v["anonymousId"] = json!(id);
        }
        v["messageId"] = json!(event_id);
        v["timestamp"] = json!(at.to_string());
        v["sentAt"] = json!(Ts(at.0 + 150).to_string());
        v
    } else {
        json!({"event_id": event_id, "prospect_id": id, "source": source, "type": def.name, "ts": at.to_string(),
            "properties": {"owner": "k.osei", "deal": {"amount": {"value": 14400, "currency": "USD"}}}})
    };
    v.to_string().into_bytes()
}

fn unmapped_payload(prospect: usize, at: Ts, event_id: &str) -> Vec<u8> {
    json!({"type": "track", "event": "Pricing Calculator Used", "userId": PROSPECTS[prospect].0,
        "messageId": event_id, "timestamp": at.to_string()})
    .to_string()
    .into_bytes()
}

fn materialize(journey: &Journey, actions: &[Action]) -> Vec<Step> {
    let mut clock = t0();
    let mut steps = Vec::with_capacity(actions.len());
    for (n, a) in actions.iter().enumerate() {
        let id = format!("evt-{n:05}");
        match *a {
            Action::Event { prospect, signal, minutes, segment } => {
                clock = Ts(clock.0 + minutes * 60 * MS_PER_SEC);
                steps.push(Step::Line { bytes: payload(journey, prospect, signal, segment, clock, &id), mapped: true });
            }
            Action::Unmapped { prospect, minutes } => {
                clock = Ts(clock.0 + minutes * 60 * MS_PER_SEC);
                steps.push(Step::Line { bytes: unmapped_payload(prospect, clock, &id), mapped: false });
            }
            Action::Advance { hours } => {
                clock = Ts(clock.0 + hours * MS_PER_HOUR);
                steps.push(Step::Advance(clock));
            }
        }
    }
    steps
}

struct Run {
    engine: Engine,
    /// Every output as written by `codec::write_output`.
    outputs: Vec<String>,
}

/// Feeds `steps`, then advances to `end`, checking the invariants that hold after every step.
fn run(journey: &Arc<Journey>, steps: &[Step], end: Ts) -> Run {
    let mut engine = Engine::new(Arc::clone(journey));
    let mut outputs = Vec::new();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut emit = |engine: &Engine, out: &mut Vec<Output>, outputs: &mut Vec<String>| {
        for o in out.drain(..) {
            check_output(engine, &o);
            buf.clear();
            codec::write_output(engine, &o, &mut buf).unwrap();
            outputs.push(String::from_utf8(buf.clone()).unwrap());
        }
    };
    for step in steps {
        match step {
            Step::Line { bytes, .. } => {
                let ev = codec::decode(bytes, journey, &Limits::default())
                    .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)));
                engine.apply(&ev, &mut out);
            }
            Step::Advance(t) => engine.advance_to(*t, &mut out),
        }
        emit(&engine, &mut out, &mut outputs);
        check_state(&engine);
    }
    engine.advance_to(end, &mut out);
    emit(&engine, &mut out, &mut outputs);
    check_state(&engine);
    Run { engine, outputs }
}

fn check_output(engine: &Engine, o: &Output) {
    let j = engine.journey();
    match o {
        Output::StageChanged { from: Some(from), to, .. } => {
            // Forward only, except a terminal stage reopened (`reopen_on`) and an outcome
            // corrected to a terminal one (`time.outcome_correction_hours`).
            let reopened =
                j.stage(*from).terminal && j.stage(*from).reopen_on.iter().any(|s| j.signal(*s).enters == Some(*to));
            assert!(
                j.stage(*to).order > j.stage(*from).order || reopened || j.stage(*to).terminal,
                "stages move forward only: {o:?}"
            );
        }
        Output::HotLead(h) => assert!(h.score.abs() <= j.max_score, "{o:?}"),
        Output::Rejected { .. } => panic!("generated events are all acceptable: {o:?}"),
        _ => {}
    }
}

fn check_state(engine: &Engine) {
    let j = engine.journey();
    let s = engine.stats();
    assert_eq!(s.events, s.applied + s.duplicates + s.unmapped + s.rejected, "{s:?}");
    for (ix, _) in engine.iter_ids() {
        let p = engine.prospect(ix);
        assert!(p.score.is_finite() && p.score.abs() <= j.max_score, "score {} out of bounds", p.score);
        let view = engine.view(ix, Some(Ts(p.score_at.0 + 3 * MS_PER_DAY)));
        assert!(view.score.abs() <= j.max_score, "view score {}", view.score);
    }
}

fn end_of(steps: &[Step]) -> Ts {
    let last = steps
        .iter()
        .map(|s| match s {
            Step::Line { bytes, .. } => {
                let v: Value = serde_json::from_slice(bytes).unwrap();
                let ts = v.get("ts").or_else(|| v.get("timestamp")).and_then(Value::as_str).unwrap();
                parse_rfc3339(ts).unwrap()
            }
            Step::Advance(t) => *t,
        })
        .max()
        .unwrap_or(t0());
    Ts(last.0 + 60 * MS_PER_DAY)
}

// ---- generators -------------------------------------------------------------------------------

fn gap_minutes(allow_backwards: bool) -> BoxedStrategy<i64> {
    let forward = prop_oneof![
        4 => 0i64..=240,               // same session
        3 => 240i64..=4 * 1440,        // a few days
        2 => 4 * 1440i64..=8 * 1440,   // across the 5-day ghost window
        1 => 8 * 1440i64..=25 * 1440,  // across the 21-day stall window
    ];
    if allow_backwards { prop_oneof![6 => forward, 1 => -2 * 1440i64..0].boxed() } else { forward.boxed() }
}

fn signal_index(journey: &Journey) -> impl Strategy<Value = usize> + use<> {
    let n = journey.signals.len();
    let hot: Vec<usize> = ["quote_requested", "quote_sent", "quote_clarification_requested", "demo_requested"]
        .iter()
        .map(|s| journey.lookup(s).unwrap().0 as usize)
        .collect();
    // Bias towards the signals behind hot rules and timers so sequences reach them.
    prop_oneof![3 => 0..n, 1 => prop::sample::select(hot)]
}

fn action(journey: &Journey) -> impl Strategy<Value = Action> + use<> {
    prop_oneof![
        12 => (0..PROSPECTS.len(), signal_index(journey), gap_minutes(true), any::<bool>())
            .prop_map(|(prospect, signal, minutes, segment)| Action::Event { prospect, signal, minutes, segment }),
        1 => (0..PROSPECTS.len(), gap_minutes(true)).prop_map(|(prospect, minutes)| Action::Unmapped { prospect, minutes }),
        1 => (1i64..=30 * 24).prop_map(|hours| Action::Advance { hours }),
    ]
}

fn actions() -> impl Strategy<Value = Vec<Action>> {
    prop::collection::vec(action(&b2b()), 1..60)
}

/// Many strong signals in quick succession: the clamp, not the decay, has to hold the line.
fn bursts() -> impl Strategy<Value = Vec<Action>> {
    let journey = b2b();
    let strong: Vec<usize> = ["quote_requested", "demo_requested", "meeting_booked", "unsubscribed"]
        .iter()
        .map(|s| journey.lookup(s).unwrap().0 as usize)
        .collect();
    let signal = prop_oneof![1 => signal_index(&journey), 2 => prop::sample::select(strong)];
    prop::collection::vec((0..2usize, signal, 0i64..=90, any::<bool>()), 1..120).prop_map(|v| {
        v.into_iter()
            .map(|(prospect, signal, minutes, segment)| Action::Event { prospect, signal, minutes, segment })
            .collect()
    })
}

/// One prospect's own events in time order: (signal, minutes after its previous event, segment).
type Own = Vec<(usize, i64, bool)>;

fn own_sequences() -> impl Strategy<Value = Vec<Own>> {
    let journey = b2b();
    let own = prop::collection::vec((signal_index(&journey), gap_minutes(false), any::<bool>()), 0..15);
    prop::collection::vec(own, PROSPECTS.len())
}

/// Lines for each prospect's own sequence, in its own time order, with ids unique per event.
fn own_lines(journey: &Journey, seqs: &[Own]) -> Vec<Vec<Step>> {
    seqs.iter()
        .enumerate()
        .map(|(p, seq)| {
            let mut clock = t0();
            seq.iter()
                .enumerate()
                .map(|(k, &(signal, minutes, segment))| {
                    clock = Ts(clock.0 + minutes * 60 * MS_PER_SEC);
                    let id = format!("p{p}-e{k:03}");
                    Step::Line { bytes: payload(journey, p, signal, segment, clock, &id), mapped: true }
                })
                .collect()
        })
        .collect()
}

/// Merges per-prospect sequences, taking the next event of prospect `picks[i] % remaining`.
fn interleave(per_prospect: &[Vec<Step>], picks: &[usize]) -> Vec<Step> {
    let mut next = vec![0usize; per_prospect.len()];
    let mut merged = Vec::new();
    let mut picks = picks.iter().copied().cycle();
    loop {
        let open: Vec<usize> = (0..per_prospect.len()).filter(|&p| next[p] < per_prospect[p].len()).collect();
        if open.is_empty() {
            return merged;
        }
        let p = open[picks.next().unwrap_or(0) % open.len()];
        merged.push(per_prospect[p][next[p]].clone());
        next[p] += 1;
    }
}

fn outputs_of(run: &Run, prospect: &str) -> Vec<String> {
    run.outputs.iter().filter(|o| serde_json::from_str::<Value>(o).unwrap()["prospect"] == prospect).cloned().collect()
}

// ---- properties -------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn same_events_give_same_outputs_and_digest(actions in actions()) {
        let journey = b2b();
        let steps = materialize(&journey, &actions);
        let end = end_of(&steps);
        let a = run(&journey, &steps, end);
        let b = run(&journey, &steps, end);
        prop_assert_eq!(&a.outputs, &b.outputs);
        prop_assert_eq!(a.engine.digest(), b.engine.digest());
        prop_assert_eq!(a.engine.stats(), b.engine.stats());
        prop_assert_eq!(a.engine.census(), b.engine.census());
        prop_assert_eq!(a.engine.funnel(), b.engine.funnel());
        for (ix, id) in a.engine.iter_ids() {
            let ib = b.engine.find(id).unwrap();
            prop_assert_eq!(a.engine.view(ix, Some(end)), b.engine.view(ib, Some(end)));
        }
    }

    #[test]
    fn duplicates_change_nothing(actions in actions(), dup in prop::collection::vec(any::<bool>(), 60)) {
        let journey = b2b();
        let steps = materialize(&journey, &actions);
        let end = end_of(&steps);
        let mut with_dups = Vec::new();
        let mut inserted = 0u64;
        let mut inserted_unmapped = 0u64;
        for (step, &d) in steps.iter().zip(&dup) {
            with_dups.push(step.clone());
            if let (Step::Line { mapped, .. }, true) = (step, d) {
                with_dups.push(step.clone());
                if *mapped { inserted += 1 } else { inserted_unmapped += 1 }
            }
        }
        let a = run(&journey, &steps, end);
        let b = run(&journey, &with_dups, end);
        prop_assert_eq!(&a.outputs, &b.outputs);
        prop_assert_eq!(a.engine.digest(), b.engine.digest());
        prop_assert_eq!(b.engine.stats().duplicates, a.engine.stats().duplicates + inserted);
        prop_assert_eq!(b.engine.stats().unmapped, a.engine.stats().unmapped + inserted_unmapped);
        prop_assert_eq!(b.engine.stats().applied, a.engine.stats().applied);
        prop_assert_eq!(b.engine.funnel(), a.engine.funnel());
    }

    #[test]
    fn interleaving_prospects_does_not_change_any_prospect(
        seqs in own_sequences(),
        picks in prop::collection::vec(any::<usize>(), 1..64),
    ) {
        let journey = b2b_never_late();
        let per_prospect = own_lines(&journey, &seqs);
        // One prospect after another, and a random interleaving keeping each one's order.
        let sequential: Vec<Step> = per_prospect.iter().flatten().cloned().collect();
        let mixed = interleave(&per_prospect, &picks);
        prop_assert_eq!(mixed.len(), sequential.len());
        let end = end_of(&sequential);
        let a = run(&journey, &sequential, end);
        let b = run(&journey, &mixed, end);
        prop_assert_eq!(a.engine.stats().late + b.engine.stats().late, 0);
        prop_assert_eq!(a.engine.len(), b.engine.len());
        for (ia, id) in a.engine.iter_ids() {
            let ib = b.engine.find(id).unwrap();
            prop_assert_eq!(a.engine.prospect_digest(ia), b.engine.prospect_digest(ib), "prospect {}", id);
            prop_assert_eq!(a.engine.view(ia, Some(end)), b.engine.view(ib, Some(end)));
            prop_assert_eq!(outputs_of(&a, id), outputs_of(&b, id), "prospect {}", id);
        }
        prop_assert_eq!(a.engine.digest(), b.engine.digest());
        prop_assert_eq!(a.engine.census(), b.engine.census());
    }

    #[test]
    fn score_stays_within_max_score(actions in bursts()) {
        let journey = b2b();
        let steps = materialize(&journey, &actions);
        let r = run(&journey, &steps, end_of(&steps));
        for (ix, _) in r.engine.iter_ids() {
            let p = r.engine.prospect(ix);
            prop_assert!(p.score.abs() <= journey.max_score);
            prop_assert!(r.engine.view(ix, None).score.abs() <= journey.max_score);
        }
    }
}

#[test]
fn the_generators_reach_the_interesting_outputs() {
    // Guard against a generator that silently stops producing what the properties are about.
    let journey = b2b();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut seen = std::collections::BTreeSet::new();
    let mut max_score = 0.0f64;
    for _ in 0..200 {
        let actions = actions().new_tree(&mut runner).unwrap().current();
        let steps = materialize(&journey, &actions);
        let r = run(&journey, &steps, end_of(&steps));
        for o in &r.outputs {
            let v: Value = serde_json::from_str(o).unwrap();
            seen.insert(v["kind"].as_str().unwrap().to_string());
        }
        for (ix, _) in r.engine.iter_ids() {
            max_score = max_score.max(r.engine.prospect(ix).score);
        }
    }
    for _ in 0..50 {
        let actions = bursts().new_tree(&mut runner).unwrap().current();
        let steps = materialize(&journey, &actions);
        let r = run(&journey, &steps, end_of(&steps));
        for (ix, _) in r.engine.iter_ids() {
            max_score = max_score.max(r.engine.prospect(ix).score);
        }
    }
    for kind in ["stage_changed", "hot_lead", "ghosted", "stalled", "late"] {
        assert!(seen.contains(kind), "generated sequences never produced {kind}: {seen:?}");
    }
    assert_eq!(max_score, journey.max_score, "some burst should hit the score clamp");
}
