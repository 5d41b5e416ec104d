//! Identity resolution across partitions (`[identity] resolve` with several shards): the ids of
//! one person on three different partitions, resolved through the identity topic's records as
//! `replay --partitions N` models them. The state once the topic is drained is the state one
//! shard reaches with every event (`--partitions 1`).

mod payloads;

use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::ids::kafka_partition;
use microfunnel::core::xpart::XRecord;
use microfunnel::core::{Engine, Journey, ProspectView};
use microfunnel::replay::{End, Options};
use payloads::{crm, seg};

#[path = "support/cluster.rs"]
mod cluster;
use cluster::{B2B, PARTITIONS, engines, on};

fn journey() -> Arc<Journey> {
    cluster::resolving("")
}

/// The anonymous id, the user id and the CRM contact id, each on its own partition.
struct Ids {
    anon: String,
    user: String,
    contact: String,
}

fn ids() -> Ids {
    Ids { anon: on(0, "anon-"), user: on(1, "usr_"), contact: on(2, "crm-") }
}

/// The flow: anonymous browsing and a download, signup with an email, a CRM quote for a
/// contact with that email, then a clarification.
fn flow(ids: &Ids) -> Vec<String> {
    let (a, u, c) = (&ids.anon, &ids.user, &ids.contact);
    vec![
        seg("page", "", None, a, "m-1", "2026-03-02T09:00:00Z", None),
        seg("track", "Whitepaper Downloaded", None, a, "m-2", "2026-03-02T09:05:00Z", None),
        seg("identify", "", Some(u), a, "m-3", "2026-03-03T10:00:00Z", Some("Ana@X.example")),
        crm("quote_sent", c, "c-1", "2026-03-05T10:00:00Z", Some("ana@x.example ")),
        crm("quote_clarification_requested", c, "c-2", "2026-03-06T10:00:00Z", None),
    ]
}

struct Run {
    shards: Vec<Engine>,
    lines: Vec<serde_json::Value>,
}

impl Run {
    fn of(&self, kind: &str) -> Vec<&serde_json::Value> {
        self.lines.iter().filter(|l| l["kind"] == kind).collect()
    }

    fn alerts(&self) -> Vec<String> {
        self.of("hot_lead").iter().map(|l| l["prospect"].as_str().unwrap().to_string()).collect()
    }

    /// The view of `id`'s prospect on its own partition's shard.
    fn view(&self, id: &str) -> ProspectView {
        let p = if self.shards.len() == 1 { 0 } else { kafka_partition(id.as_bytes(), PARTITIONS) as usize };
        let e = &self.shards[p];
        e.view(e.find(id).unwrap_or_else(|| panic!("{id} not in shard {p}")), None)
    }

    /// Every shard's answer for `id`: its canonical id and the ids linked to it.
    fn resolutions(&self, id: &str) -> Vec<(String, Vec<String>)> {
        self.shards
            .iter()
            .map(|e| {
                let (c, l) = e.linked_ids(id);
                (c.to_string(), l.into_iter().map(String::from).collect())
            })
            .collect()
    }

    fn people(&self) -> u64 {
        cluster::people(&self.shards)
    }

    fn in_stage(&self) -> Vec<u64> {
        cluster::in_stage(&self.shards)
    }
}

fn replay(lines: &[String], partitions: u32) -> Run {
    let opts = Options { summary_only: false, ..cluster::replay_options(partitions, End::Stay) };
    let (shards, out, err) = cluster::replay_with(&journey(), lines, &opts);
    // Only the generator's malformed lines are refused.
    let err = String::from_utf8(err).unwrap();
    assert!(err.lines().all(|l| l.contains("invalid_json") || l.contains("bad_timestamp")), "{err}");
    let lines = String::from_utf8(out).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    Run { shards, lines }
}

fn count(view: &ProspectView, signal: &str) -> u16 {
    view.signal_counts.iter().find(|(s, _)| s == signal).map_or(0, |(_, c)| *c)
}

/// What must not depend on the number of partitions or the arrival order.
fn same_person(a: &ProspectView, b: &ProspectView) {
    assert_eq!(a.signal_counts, b.signal_counts);
    assert_eq!((&a.stage, &a.stages_entered, &a.email), (&b.stage, &b.stages_entered, &b.email));
    assert!((a.score - b.score).abs() < 1e-9, "{} vs {}", a.score, b.score);
}

#[test]
fn ids_on_three_partitions_are_one_person_with_one_alert_and_its_web_history() {
    let ids = ids();
    let run = replay(&flow(&ids), PARTITIONS);
    assert_eq!(run.alerts(), std::slice::from_ref(&ids.user), "{:#?}", run.lines);
    let view = run.view(&ids.user);
    for s in ["page_viewed", "content_downloaded", "identified", "quote_sent", "quote_clarification_requested"] {
        assert_eq!(count(&view, s), 1, "{s} in {view:?}");
    }
    assert_eq!(view.email.as_deref(), Some("ana@x.example"));
    // One person in the census and the funnel, over all shards.
    assert_eq!(run.people(), 1);
    assert_eq!(run.in_stage().iter().sum::<u64>(), 1);
    // The anonymous prospect's state moved to the user's shard and was folded there; every
    // transfer sent was folded once, and each folded id stays a redirect where it was.
    let merged = |r: &Run| -> Vec<(serde_json::Value, serde_json::Value)> {
        r.of("prospect_merged").iter().map(|l| (l["from"].clone(), l["into"].clone())).collect()
    };
    assert!(merged(&run).contains(&(ids.anon.clone().into(), ids.user.clone().into())));
    let sent: u64 = run.shards.iter().map(|e| e.xpart_stats().unwrap().transfers_sent).sum();
    let received: u64 = run.shards.iter().map(|e| e.xpart_stats().unwrap().transfers_received).sum();
    assert!(sent >= 1 && sent == received, "{sent} sent, {received} received");
    assert_eq!(run.shards.iter().map(Engine::redirects).sum::<usize>() as u64, sent);
    // The same as one shard with every event.
    let one = replay(&flow(&ids), 1);
    assert_eq!(one.alerts(), run.alerts());
    assert_eq!(merged(&one), merged(&run));
    same_person(&view, &one.view(&ids.user));
    assert_eq!(run.in_stage(), one.in_stage());
}

#[test]
fn crm_first_gives_the_same_final_state() {
    let ids = ids();
    let lines = flow(&ids);
    let reordered: Vec<String> = lines[3..].iter().chain(&lines[..3]).cloned().collect();
    let (a, b) = (replay(&lines, PARTITIONS), replay(&reordered, PARTITIONS));
    same_person(&a.view(&ids.user), &b.view(&ids.user));
    // Every shard (each the home of one of the ids) knows the whole group and its canonical id.
    let mut group = vec![ids.anon.clone(), ids.contact.clone(), ids.user.clone()];
    group.sort();
    for run in [&a, &b] {
        for id in [&ids.anon, &ids.user, &ids.contact] {
            assert!(
                run.resolutions(id).iter().all(|r| *r == (ids.user.clone(), group.clone())),
                "{id}: {:?}",
                run.resolutions(id)
            );
        }
    }
    assert_eq!(b.people(), 1);
    assert_eq!(a.in_stage(), b.in_stage());
    // In this order the clarification arrived before any link: the CRM contact alerted alone,
    // as with one shard.
    assert_eq!(b.alerts(), replay(&reordered, 1).alerts());
}

/// A transfer delivered twice (at-least-once) folds once: the receiver keeps the transferred id
/// as a redirect record, and a transfer of an id that is already one folds nothing.
#[test]
fn a_redelivered_transfer_folds_nothing_twice() {
    let ids = ids();
    let j = journey();
    let mut shards = engines(&j, PARTITIONS);
    let mut out = Vec::new();
    let mut transfers = Vec::new();
    // Deliver every record, keeping the transfers to deliver them again.
    let mut pending: Vec<(u32, XRecord)> = Vec::new();
    for line in &flow(&ids)[..3] {
        let ev = microfunnel::codec::decode(line.as_bytes(), &j, &Limits::default()).unwrap();
        let p = kafka_partition(ev.prospect.as_bytes(), PARTITIONS) as usize;
        shards[p].apply(&ev, &mut out);
        pending.extend(shards[p].take_identity_records());
        while let Some((p, r)) = pending.pop() {
            if matches!(r, XRecord::Transfer { .. }) {
                transfers.push((p, r.clone()));
            }
            shards[p as usize].apply_identity_record(r, &mut out);
            pending.extend(shards[p as usize].take_identity_records());
        }
    }
    assert_eq!(transfers.len(), 1, "the anonymous prospect moved to the user's shard");
    let home = kafka_partition(ids.user.as_bytes(), PARTITIONS) as usize;
    let before = shards[home].view(shards[home].find(&ids.user).unwrap(), None);
    let funnel = shards[home].funnel().in_stage.clone();
    for (p, r) in transfers {
        shards[p as usize].apply_identity_record(r, &mut out);
    }
    let after = shards[home].view(shards[home].find(&ids.user).unwrap(), None);
    assert_eq!(before.signal_counts, after.signal_counts);
    assert_eq!(count(&after, "page_viewed"), 1);
    assert_eq!(shards[home].funnel().in_stage, funnel);
    assert_eq!(shards[home].xpart_stats().unwrap().transfers_duplicate, 1);
}

/// Without the identity topic (each shard alone), the same flow leaves three prospects.
#[test]
fn without_resolution_across_partitions_the_ids_stay_apart() {
    let ids = ids();
    let j = journey();
    let mut shards: Vec<Engine> = (0..PARTITIONS).map(|_| Engine::new(Arc::clone(&j))).collect();
    let mut out = Vec::new();
    for line in flow(&ids) {
        let ev = microfunnel::codec::decode(line.as_bytes(), &j, &Limits::default()).unwrap();
        shards[kafka_partition(ev.prospect.as_bytes(), PARTITIONS) as usize].apply(&ev, &mut out);
    }
    assert!(shards.iter().map(|e| e.census().prospects).sum::<u64>() > 1);
}

/// Generated traffic (400 people, every web event a Segment call): whatever the number of
/// partitions, and whether the identity topic is drained after every message or only at the
/// end, the people are the same, with the same stages, stage dates, signal counts, look-back
/// marks and last activity (`resolved_digest`), as one shard with every event gives.
#[test]
fn generated_people_resolve_alike_on_any_number_of_partitions_and_any_interleaving() {
    use microfunnel::traffic::{Generator, Options as Gen};

    let j = journey();
    let mut generator =
        Generator::new(Gen { prospects: 400, seed: 5, segment_share: 1.0, ..Gen::default() }, &j, true).unwrap();
    let (mut line, mut key, mut lines) = (Vec::new(), String::new(), Vec::new());
    while generator.next_into(&mut line, &mut key).is_some() {
        lines.push(String::from_utf8(line.clone()).unwrap());
    }
    let (resolved, people) = (cluster::resolved, cluster::people);
    let one = replay(&lines, 1);
    assert_eq!(people(&one.shards), 400);
    for n in [3, 5] {
        let run = replay(&lines, n);
        assert_eq!(resolved(&run.shards), resolved(&one.shards), "{n} partitions");
        assert_eq!(people(&run.shards), 400, "{n} partitions");
        let sent: u64 = run.shards.iter().map(|e| e.xpart_stats().unwrap().transfers_sent).sum();
        assert!(sent > 20, "{n} partitions: {sent} transfers");
    }
    // Every identity record delivered only after all the input: the same people.
    let mut shards = engines(&j, PARTITIONS);
    let (mut out, mut queue) = (Vec::new(), std::collections::VecDeque::new());
    for l in &lines {
        let mut shard = None;
        for (_, ev) in microfunnel::codec::decode_each(l.as_bytes(), &j, &Limits::default()) {
            let Ok(ev) = ev else { continue };
            let p = *shard.get_or_insert(kafka_partition(ev.prospect.as_bytes(), PARTITIONS) as usize);
            shards[p].apply(&ev, &mut out);
            queue.extend(shards[p].take_identity_records());
        }
    }
    while let Some((p, r)) = queue.pop_front() {
        shards[p as usize].apply_identity_record(r, &mut out);
        queue.extend(shards[p as usize].take_identity_records());
    }
    assert_eq!(resolved(&shards), resolved(&one.shards));
    assert_eq!(people(&shards), 400);
}

/// The identity topic's name: `<group_id>.identity` unless set; one that is also an input,
/// output or changelog topic is refused, naming the key.
#[test]
fn the_identity_topic_is_named_after_the_group_and_must_be_its_own() {
    use microfunnel::config::Settings;

    let load = |extra: &[(&str, &str)]| {
        let mut vars = vec![("MICROFUNNEL__KAFKA__BROKERS".to_string(), "localhost:9092".to_string())];
        vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        Settings::load(None, vars)
    };
    let s = load(&[("MICROFUNNEL__KAFKA__GROUP_ID", "funnel-a")]).unwrap();
    assert_eq!(s.kafka.identity_topic(), "funnel-a.identity");
    let s = load(&[("MICROFUNNEL__KAFKA__IDENTITY_TOPIC", "people")]).unwrap();
    assert_eq!(s.kafka.identity_topic(), "people");
    let e = load(&[("MICROFUNNEL__KAFKA__IDENTITY_TOPIC", "web-events")]).unwrap_err().to_string();
    assert!(e.contains("kafka.identity_topic") && e.contains("web-events"), "{e}");
}

/// `replay --partitions N` (N > 1) runs `[retention]` with identity resolution (no longer
/// refused): the flow's person, its ids on three partitions, expires once, as on one partition
/// (`tests/identity_xpart_retention.rs` holds the rest).
#[test]
fn replay_runs_retention_with_identity_across_partitions() {
    use std::process::Command;

    let dir = std::env::temp_dir().join(format!("microfunnel-xpart-retention-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let journey = dir.join("b2b-identity-retention.toml");
    std::fs::write(&journey, format!("{B2B}\n[identity]\nresolve = true\n[retention]\nafter_days = 30\n")).unwrap();
    let events = dir.join("flow.jsonl");
    std::fs::write(&events, flow(&ids()).join("\n") + "\n").unwrap();
    let replay = |partitions: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_microfunnel"))
            .args([
                "replay",
                "--summary-only",
                "--until",
                "2026-06-01T00:00:00Z",
                "--partitions",
                partitions,
                "--journey",
            ])
            .arg(&journey)
            .arg(&events)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let summary: serde_json::Value = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .find(|v: &serde_json::Value| v["kind"] == "funnel_summary")
            .unwrap();
        (summary["stats"]["expired"].clone(), summary["census"]["prospects"].clone())
    };
    assert_eq!(replay("3"), (1.into(), 0.into()));
    assert_eq!(replay("1"), replay("3"));
    std::fs::remove_dir_all(&dir).unwrap();
}
