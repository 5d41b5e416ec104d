//! Identity resolution in the engine, within one shard (`[identity] resolve = true`): the
//! issue's scenarios through the decoder and `Engine::apply`, as `replay --partitions 1` runs
//! them.

mod payloads;

use std::sync::Arc;

use microfunnel::codec::{self, Limits};
use microfunnel::core::identity::{LinkReason, RefuseReason};
use microfunnel::core::{Engine, Journey, Output, ProspectView};
use payloads::{crm, seg};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

fn journey(extra: &str) -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(&format!("{B2B}\n[identity]\nresolve = true\n{extra}")).unwrap())
}

/// The issue's flow: anonymous browsing and a download, signup with an email, a CRM quote for a
/// contact with that email, then a clarification.
fn flow() -> Vec<String> {
    vec![
        seg("page", "", None, "anon-1", "m-1", "2026-03-02T09:00:00Z", None),
        seg("track", "Whitepaper Downloaded", None, "anon-1", "m-2", "2026-03-02T09:05:00Z", None),
        seg("identify", "", Some("usr_1"), "anon-1", "m-3", "2026-03-03T10:00:00Z", Some("Ana@X.example")),
        crm("quote_sent", "crm-77", "c-1", "2026-03-05T10:00:00Z", Some("ana@x.example ")),
        crm("quote_clarification_requested", "crm-77", "c-2", "2026-03-06T10:00:00Z", None),
    ]
}

/// A run's outputs, with each merge's ids read when it happened (a merged-away id's slot is
/// freed and reused from the next call on).
#[derive(Debug)]
struct Outs {
    all: Vec<Output>,
    merged: Vec<(String, String, LinkReason)>,
}

impl std::ops::Deref for Outs {
    type Target = Vec<Output>;
    fn deref(&self) -> &Vec<Output> {
        &self.all
    }
}

fn run(journey: &Arc<Journey>, lines: &[String]) -> (Engine, Outs) {
    let mut engine = Engine::new(Arc::clone(journey));
    let (mut all, mut merged) = (Vec::new(), Vec::new());
    for line in lines {
        let ev = codec::decode(line.as_bytes(), journey, &Limits::default()).unwrap();
        let mut out = Vec::new();
        engine.apply(&ev, &mut out);
        for o in &out {
            if let Output::ProspectMerged { from, into, reason, .. } = o {
                merged.push((engine.prospect_id(*from).to_string(), engine.prospect_id(*into).to_string(), *reason));
            }
        }
        all.extend(out);
    }
    (engine, Outs { all, merged })
}

fn count(view: &ProspectView, signal: &str) -> u16 {
    view.signal_counts.iter().find(|(s, _)| s == signal).map_or(0, |(_, c)| *c)
}

fn merges(_: &Engine, out: &Outs) -> Vec<(String, String, LinkReason)> {
    out.merged.clone()
}

fn alerts(engine: &Engine, out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::HotLead(h) => Some(engine.prospect_id(h.prospect).to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn web_then_crm_is_one_person_with_one_alert_and_its_web_history() {
    let j = journey("");
    let (engine, out) = run(&j, &flow());
    // The contact's first event links it by email before it has a prospect: nothing to fold,
    // the event goes to usr_1 at once.
    assert_eq!(merges(&engine, &out), [("anon-1".into(), "usr_1".into(), LinkReason::Identify)]);
    assert_eq!(alerts(&engine, &out), ["usr_1"], "{out:?}");
    let usr = engine.find("usr_1").unwrap();
    let view = engine.view(usr, None);
    for s in ["page_viewed", "content_downloaded", "identified", "quote_sent", "quote_clarification_requested"] {
        assert_eq!(count(&view, s), 1, "{s} in {view:?}");
    }
    assert_eq!(engine.email(usr), Some("ana@x.example"));
    // The funnel and the census count one person.
    assert_eq!(engine.census().prospects, 1);
    assert_eq!(engine.funnel().in_stage.iter().sum::<u64>(), 1);
    assert_eq!(engine.linked_ids("crm-77"), ("usr_1", vec!["anon-1", "crm-77", "usr_1"]));
    assert_eq!((engine.identity_stats().merged, engine.identity_stats().refused), (1, 0));
    assert!(engine.find("crm-77").is_none(), "the contact never had a prospect of its own");
}

#[test]
fn crm_first_gives_the_same_person() {
    let j = journey("");
    let lines = flow();
    // The CRM side first, then the web side (each side in its own order).
    let reordered: Vec<String> = lines[3..].iter().chain(&lines[..3]).cloned().collect();
    let (a, _) = run(&j, &lines);
    let (b, out) = run(&j, &reordered);
    assert_eq!(b.linked_ids("anon-1"), ("usr_1", vec!["anon-1", "crm-77", "usr_1"]));
    let (va, vb) = (a.view(a.find("usr_1").unwrap(), None), b.view(b.find("usr_1").unwrap(), None));
    assert_eq!(va.signal_counts, vb.signal_counts);
    assert_eq!((&va.stage, &va.stages_entered, &va.email), (&vb.stage, &vb.stages_entered, &vb.email));
    assert_eq!(va.score, vb.score);
    assert_eq!(b.census().prospects, 1);
    assert_eq!(b.funnel().in_stage, a.funnel().in_stage);
    assert_eq!(b.funnel().reached, a.funnel().reached);
    // In this order the clarification arrived before any link: the CRM contact alerted alone.
    assert_eq!(alerts(&b, &out), ["crm-77"]);
}

#[test]
fn two_devices_of_one_user_are_one_prospect() {
    let j = journey("");
    let lines = vec![
        seg("page", "", None, "phone", "m-1", "2026-03-02T09:00:00Z", None),
        seg("page", "", None, "laptop", "m-2", "2026-03-02T10:00:00Z", None),
        seg("identify", "", Some("usr_1"), "phone", "m-3", "2026-03-03T09:00:00Z", None),
        seg("identify", "", Some("usr_1"), "laptop", "m-4", "2026-03-03T10:00:00Z", None),
        seg("page", "", None, "laptop", "m-5", "2026-03-04T10:00:00Z", None),
    ];
    let (engine, _) = run(&j, &lines);
    assert_eq!(engine.linked_ids("phone"), ("usr_1", vec!["laptop", "phone", "usr_1"]));
    let v = engine.view(engine.find("usr_1").unwrap(), None);
    assert_eq!(count(&v, "page_viewed"), 3, "{v:?}");
    assert_eq!(engine.census().prospects, 1);
    assert_eq!(engine.identity_stats().routed, 1, "the later anonymous page view went to usr_1");
}

#[test]
fn a_placeholder_user_id_merges_no_visitors() {
    let j = journey("");
    let lines: Vec<String> = (0..20)
        .map(|i| seg("identify", "", Some("0"), &format!("anon-{i}"), &format!("m-{i}"), "2026-03-02T09:00:00Z", None))
        .collect();
    let (engine, out) = run(&j, &lines);
    assert!(merges(&engine, &out).is_empty());
    assert_eq!(engine.census().prospects, 20);
}

#[test]
fn an_email_shared_beyond_the_limit_is_refused_and_emitted() {
    let j = journey("max_known_ids = 2\n");
    let lines: Vec<String> = (1..=3)
        .map(|i| {
            let (user, id, ts) = (format!("usr_{i}"), format!("m-{i}"), format!("2026-03-0{i}T09:00:00Z"));
            seg("identify", "", Some(&user), &format!("anon-{i}"), &id, &ts, Some("team@x.example"))
        })
        .collect();
    let (engine, out) = run(&j, &lines);
    let refused: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::MergeRefused { ids, reason, .. } => Some((ids.clone(), *reason)),
            _ => None,
        })
        .collect();
    assert_eq!(refused, [(Box::new(["usr_3".to_string(), "usr_1".to_string()]), RefuseReason::TooManyKnownIds)]);
    assert_eq!(engine.identity_stats().refused, 1);
    assert_eq!(engine.linked_ids("usr_3").0, "usr_3");
    // Its JSON on journey-events names ids, never the email.
    let mut buf = Vec::new();
    let o = out.iter().find(|o| matches!(o, Output::MergeRefused { .. })).unwrap();
    codec::write_output(&engine, o, &mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    assert!(
        text.starts_with(r#"{"kind":"merge_refused","ids":["usr_3","usr_1"],"reason":"too_many_known_ids""#),
        "{text}"
    );
    assert!(!text.contains('@'));
}

#[test]
fn off_by_default_nothing_merges() {
    let j = Arc::new(Journey::from_toml_str(B2B).unwrap());
    assert!(j.identity.is_none());
    let (engine, out) = run(&j, &flow());
    assert!(merges(&engine, &out).is_empty());
    assert_eq!(engine.census().prospects, 3);
}

/// `replay --partitions 1` over the flow: the same one alert and merge, the summary's identity
/// counts (`tests/identity_service.rs` runs the service with the switch on).
#[test]
fn replay_resolves_identities() {
    use std::process::Command;

    let dir = std::env::temp_dir().join(format!("microfunnel-identity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let journey = dir.join("b2b-identity.toml");
    std::fs::write(&journey, format!("{B2B}\n[identity]\nresolve = true\n")).unwrap();
    let events = dir.join("flow.jsonl");
    std::fs::write(&events, flow().join("\n") + "\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_microfunnel"))
        .args(["replay", "--partitions", "1", "--journey"])
        .arg(&journey)
        .arg(&events)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let of = |kind: &str| lines.iter().filter(|l| l["kind"] == kind).collect::<Vec<_>>();
    let alerts = of("hot_lead");
    assert_eq!(alerts.len(), 1, "{lines:?}");
    assert_eq!(alerts[0]["prospect"], "usr_1");
    assert_eq!(alerts[0]["email"], "ana@x.example");
    let merged = of("prospect_merged");
    assert_eq!((merged.len(), &merged[0]["from"], &merged[0]["into"]), (1, &"anon-1".into(), &"usr_1".into()));
    let summary = of("funnel_summary");
    assert_eq!(summary[0]["stats"]["identity"]["merged"], 1, "{:?}", summary[0]);
    assert_eq!(summary[0]["census"]["prospects"], 1);

    std::fs::remove_dir_all(&dir).ok();
}

/// The generator knows each person: its traffic (the default mix of Segment and canonical
/// envelopes) through the engine with identity resolution gives exactly one prospect per
/// generated person, named as the truth file names it (the canonical id: the user id once the
/// traffic names it, else the anonymous id); several hundred more without resolution.
#[test]
fn generated_people_are_one_prospect_each_named_as_the_truth_file_names_them() {
    use std::collections::BTreeSet;

    use microfunnel::traffic::{Generator, Options};

    for seed in [5, 6] {
        let opts = Options { prospects: 400, seed, ..Options::default() };
        let run = |j: &Arc<Journey>| {
            let mut generator = Generator::new(opts.clone(), j, true).unwrap();
            let (mut line, mut key, mut truth) = (Vec::new(), String::new(), BTreeSet::new());
            let mut engine = Engine::new(Arc::clone(j));
            let mut out = Vec::new();
            while generator.next_into(&mut line, &mut key).is_some() {
                truth.extend(generator.drain_truth().map(|t| t.prospect));
                for (_, ev) in codec::decode_each(&line, j, &Limits::default()) {
                    if let Ok(ev) = ev {
                        engine.apply(&ev, &mut out);
                    }
                }
            }
            truth.extend(generator.drain_truth().map(|t| t.prospect));
            let held: BTreeSet<String> = engine.iter_ids().map(|(_, id)| id.to_string()).collect();
            (truth, held, engine.census().prospects, engine.identity_stats().refused)
        };
        let (truth, held, prospects, refused) = run(&journey(""));
        assert_eq!((truth.len(), prospects, refused), (400, 400, 0), "seed {seed}");
        assert_eq!(held, truth, "seed {seed}: the replayed prospects are the truth file's people");
        let (_, _, without, _) = run(&Arc::new(Journey::from_toml_str(B2B).unwrap()));
        assert!(without > 550, "seed {seed}: {without}");
    }
}

/// An id folded away can become canonical again when an earlier event of it arrives late: the
/// person's state moves back onto it, and the funnel still counts one person.
#[test]
fn an_earlier_event_can_make_a_folded_id_canonical_again() {
    let j = journey("");
    let lines = vec![
        crm("meeting_booked", "usr_b", "e-1", "2026-03-02T10:00:00Z", Some("dana@x.example")),
        crm("meeting_booked", "usr_a", "e-2", "2026-03-02T12:00:00Z", None),
        crm("meeting_booked", "usr_a", "e-3", "2026-03-02T13:00:00Z", Some("dana@x.example")),
        crm("quote_sent", "usr_a", "e-4", "2026-03-02T08:00:00Z", None),
    ];
    let (engine, out) = run(&j, &lines);
    assert_eq!(
        merges(&engine, &out),
        [
            ("usr_a".into(), "usr_b".into(), LinkReason::Email),
            ("usr_b".into(), "usr_a".into(), LinkReason::CanonicalRule)
        ]
    );
    assert_eq!(engine.linked_ids("usr_b"), ("usr_a", vec!["usr_a", "usr_b"]));
    let v = engine.view(engine.find("usr_a").unwrap(), None);
    assert_eq!((count(&v, "meeting_booked"), count(&v, "quote_sent")), (3, 1), "{v:?}");
    assert_eq!(engine.census().prospects, 1);
    assert_eq!(engine.funnel().in_stage.iter().sum::<u64>(), 1);
}

/// The hot-lead alerts of a run: (prospect, rules, signal, event id, time).
fn hot_leads(engine: &Engine, j: &Journey, out: &[Output]) -> Vec<(String, String, String, String, String)> {
    out.iter()
        .filter_map(|o| match o {
            Output::HotLead(h) => {
                let rules: Vec<&str> = (0..j.hot_rules.len())
                    .filter(|r| h.rules & (1 << r) != 0)
                    .map(|r| j.hot_rules[r].name.as_str())
                    .collect();
                Some((
                    engine.prospect_id(h.prospect).to_string(),
                    rules.join("+"),
                    j.signal(h.signal).name.clone(),
                    h.event_id.clone(),
                    {
                        let mut t = String::new();
                        microfunnel::core::time::write_rfc3339(h.at, &mut t).unwrap();
                        t
                    },
                ))
            }
            _ => None,
        })
        .collect()
}

fn alert_ids(out: &[Output]) -> Vec<String> {
    out.iter()
        .filter_map(|o| match o {
            Output::HotLead(h) => Some(h.alert_id.clone()),
            _ => None,
        })
        .collect()
}

/// Web engagement of 49 points under an anonymous id, a CRM meeting of 15 under the user id:
/// neither reaches the `engaged` threshold of 60, the sum does, so the merge alerts, in either
/// arrival order, at the merge's time.
#[test]
fn a_score_crossed_only_by_the_sum_alerts_at_the_merge() {
    let j = journey("");
    let web = vec![
        seg("track", "Demo Requested", None, "anon-2", "w-1", "2026-03-02T09:00:00Z", None),
        seg("track", "Whitepaper Downloaded", None, "anon-2", "w-2", "2026-03-02T09:05:00Z", None),
        seg("track", "Ebook Downloaded", None, "anon-2", "w-3", "2026-03-02T09:10:00Z", None),
        seg("track", "Case Study Downloaded", None, "anon-2", "w-4", "2026-03-02T09:15:00Z", None),
    ];
    let crm_side = vec![crm("meeting_booked", "usr_2", "c-1", "2026-03-02T10:00:00Z", None)];
    let link = seg("identify", "", Some("usr_2"), "anon-2", "w-5", "2026-03-02T11:00:00Z", None);
    let mut ids = Vec::new();
    for lines in [[web.clone(), crm_side.clone()].concat(), [crm_side, web].concat()] {
        let (engine, out) = run(&j, &[lines, vec![link.clone()]].concat());
        assert_eq!(merges(&engine, &out), [("anon-2".into(), "usr_2".into(), LinkReason::Identify)]);
        assert_eq!(
            hot_leads(&engine, &j, &out),
            [(
                "usr_2".into(),
                "engaged".into(),
                "content_downloaded".into(),
                "merge:anon-2".into(),
                "2026-03-02T11:00:00.000Z".into()
            )],
            "{out:?}"
        );
        ids.push(alert_ids(&out));
    }
    assert_eq!(ids[0], ids[1]);
}

/// A quote under one id, its clarification under another within the rule's 14 days: the merge
/// fires `clarification_after_quote` at the clarification's time, naming its event, whichever
/// id held which and whichever arrived first.
#[test]
fn a_sequence_rule_across_ids_fires_at_the_merge_within_its_window() {
    let j = journey("");
    let mut ids = Vec::new();
    for (anchor_id, signal_id) in [("crm-77", "usr_1"), ("usr_1", "crm-77")] {
        for anchor_first in [true, false] {
            let known = crm("meeting_booked", "usr_1", "c-0", "2026-03-03T10:00:00Z", Some("ana@x.example"));
            let anchor = crm("quote_sent", anchor_id, "c-1", "2026-03-05T12:00:00Z", None);
            let signal = crm("quote_clarification_requested", signal_id, "c-2", "2026-03-06T10:00:00Z", None);
            let link = crm("reviewing_with_partners", "crm-77", "c-3", "2026-03-06T12:00:00Z", Some("ana@x.example"));
            let lines =
                if anchor_first { vec![known, anchor, signal, link] } else { vec![known, signal, anchor, link] };
            let (engine, out) = run(&j, &lines);
            assert_eq!(merges(&engine, &out), [("crm-77".into(), "usr_1".into(), LinkReason::Email)]);
            assert_eq!(
                hot_leads(&engine, &j, &out),
                [(
                    "usr_1".into(),
                    "clarification_after_quote".into(),
                    "quote_clarification_requested".into(),
                    "c-2".into(),
                    "2026-03-06T10:00:00.000Z".into()
                )],
                "anchor under {anchor_id}, anchor first {anchor_first}: {out:?}"
            );
            ids.push(alert_ids(&out));
        }
    }
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
}

/// The same two ids, but the merge comes after the watermark passed the clarification (another
/// prospect's traffic moved the shard's clock two days on): a late merge fires no sequence rule.
#[test]
fn a_late_merge_fires_no_sequence_rule() {
    let j = journey("");
    let lines = vec![
        crm("meeting_booked", "usr_1", "c-0", "2026-03-03T10:00:00Z", Some("ana@x.example")),
        crm("quote_sent", "crm-77", "c-1", "2026-03-05T12:00:00Z", None),
        crm("quote_clarification_requested", "usr_1", "c-2", "2026-03-06T10:00:00Z", None),
        crm("meeting_booked", "usr_9", "c-9", "2026-03-08T12:00:00Z", None),
        crm("meeting_booked", "usr_8", "c-8", "2026-03-08T12:00:00Z", None),
        crm("reviewing_with_partners", "crm-77", "c-3", "2026-03-08T13:00:00Z", Some("ana@x.example")),
    ];
    let (engine, out) = run(&j, &lines);
    assert_eq!(merges(&engine, &out), [("crm-77".into(), "usr_1".into(), LinkReason::Email)]);
    assert!(engine.watermark() > microfunnel::core::time::parse_rfc3339("2026-03-06T10:00:00Z").unwrap());
    assert!(hot_leads(&engine, &j, &out).is_empty(), "{out:?}");
}

/// `usr_3` alerted on a quote request (priority 10); a merge within the 72-hour cooldown whose
/// sum crosses the `engaged` score (priority 0) is held back, in either arrival order.
#[test]
fn no_second_alert_inside_the_cooldown_at_a_merge() {
    let j = journey("");
    let web = vec![
        seg("track", "Demo Requested", None, "anon-3", "w-1", "2026-03-02T09:00:00Z", None),
        seg("track", "Whitepaper Downloaded", None, "anon-3", "w-2", "2026-03-02T09:05:00Z", None),
        seg("track", "Ebook Downloaded", None, "anon-3", "w-3", "2026-03-02T09:10:00Z", None),
        seg("track", "Case Study Downloaded", None, "anon-3", "w-4", "2026-03-02T09:15:00Z", None),
    ];
    let crm_side = vec![crm("quote_requested", "usr_3", "c-1", "2026-03-02T10:00:00Z", None)];
    let link = seg("identify", "", Some("usr_3"), "anon-3", "w-5", "2026-03-02T11:00:00Z", None);
    for lines in [[web.clone(), crm_side.clone()].concat(), [crm_side, web].concat()] {
        let (engine, out) = run(&j, &[lines, vec![link.clone()]].concat());
        assert_eq!(merges(&engine, &out), [("anon-3".into(), "usr_3".into(), LinkReason::Identify)]);
        let alerts = hot_leads(&engine, &j, &out);
        assert_eq!(alerts.len(), 1, "{out:?}");
        assert_eq!((alerts[0].0.as_str(), alerts[0].1.as_str()), ("usr_3", "quote_requested"));
        let held: Vec<_> = out
            .iter()
            .filter_map(|o| match o {
                Output::HotLeadSuppressed(s) => Some((engine.prospect_id(s.prospect).to_string(), s.rules, s.held_by)),
                _ => None,
            })
            .collect();
        assert_eq!(held, [("usr_3".to_string(), 1 << 2, 1)], "{out:?}");
    }
}

/// The same through the binaries: `gen --truth` then `replay --partitions 1` with identity on
/// counts one prospect per truth line.
#[test]
fn gen_then_replay_counts_one_prospect_per_truth_line() {
    use std::process::Command;

    let dir = std::env::temp_dir().join(format!("microfunnel-identity-gen-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let journey = dir.join("b2b-identity.toml");
    std::fs::write(&journey, format!("{B2B}\n[identity]\nresolve = true\n")).unwrap();
    let (events, truth) = (dir.join("events.jsonl"), dir.join("truth.jsonl"));
    let bin = env!("CARGO_BIN_EXE_microfunnel");
    let st = Command::new(bin)
        .args(["gen", "--prospects", "400", "--seed", "7", "--quiet", "--out"])
        .arg(&events)
        .arg("--truth")
        .arg(&truth)
        .status()
        .unwrap();
    assert!(st.success());
    let out = Command::new(bin)
        .args(["replay", "--partitions", "1", "--journey"])
        .arg(&journey)
        .arg(&events)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|l| l["kind"] == "funnel_summary")
        .unwrap();
    let people = std::fs::read_to_string(&truth).unwrap().lines().count();
    assert_eq!(people, 400);
    assert_eq!(summary["census"]["prospects"], 400, "{}", summary["census"]);
    std::fs::remove_dir_all(&dir).ok();
}
