//! Identity resolution across partitions in the service: TWO instances of one consumer group
//! against a real Kafka-API broker (Tansu, see `support`), input topics with three partitions,
//! and the flow with the anonymous id, the user id and the CRM contact id each on its
//! own partition (so the shards that own them, on different instances, must talk through the
//! identity topic). Each step is produced once the previous one took effect, as a person's
//! steps are hours apart. Exactly one hot-lead alert, for the canonical prospect (the user),
//! whose state shows the pre-signup web signals; the funnel counts one person; the people equal
//! `replay --partitions 3`'s once the identity topic is drained. Killed with SIGKILL after the
//! signup (the instance holding the user's shard), the other instance takes over and the
//! outcome is the same.

mod payloads;
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use payloads::{crm as crm_line, seg};
use serde_json::Value;
use support::*;

const PARTITIONS: u32 = 3;
const LIMIT: Duration = Duration::from_secs(120);

struct Ids {
    anon: String,
    user: String,
    contact: String,
}

/// Lines with their Kafka key.
type Keyed = Vec<(String, String)>;

/// The flow's web lines and CRM lines, each keyed by its prospect.
fn flow(ids: &Ids) -> (Keyed, Keyed) {
    let (a, u, c) = (&ids.anon, &ids.user, &ids.contact);
    let web = vec![
        (a.clone(), seg("page", "", None, a, "x-1", "2026-03-02T09:00:00Z", None)),
        (a.clone(), seg("track", "Whitepaper Downloaded", None, a, "x-2", "2026-03-02T09:05:00Z", None)),
        (u.clone(), seg("identify", "", Some(u), a, "x-3", "2026-03-03T10:00:00Z", Some("Ana@X.example"))),
    ];
    let crm = vec![
        (c.clone(), crm_line("quote_sent", c, "x-4", "2026-03-05T10:00:00Z", Some("ana@x.example "))),
        (c.clone(), crm_line("quote_clarification_requested", c, "x-5", "2026-03-06T10:00:00Z", None)),
    ];
    (web, crm)
}

fn one_person_across_two_instances(name: &str, kill: bool) {
    let mut s = setup(name);
    s.kafka.resume_rewind = 0;
    s.http.query_api = true;
    s.http.show_emails = true;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    resolving_journey(&mut s, "");
    let ids = Ids {
        anon: key_in_partition("anon-", 0, PARTITIONS),
        user: key_in_partition("usr_", 1, PARTITIONS),
        contact: key_in_partition("crm-", 2, PARTITIONS),
    };
    let (web_lines, crm_lines) = flow(&ids);
    let (state_a, state_b) = (state_dir(&unique(&format!("{name}-a"))), state_dir(&unique(&format!("{name}-b"))));
    let a = Process::start(&s, Some(&state_a));
    let b = Process::start(&s, Some(&state_b));
    wait_until(LIMIT, "both instances hold shards, all three held", || {
        let (ha, hb) = (held(&a), held(&b));
        !ha.is_empty() && !hb.is_empty() && ha.len() + hb.len() == PARTITIONS as usize
    });
    let mut instances = vec![a, b];

    // Anonymous browsing, a download, then the signup: the anonymous prospect (partition 0)
    // moves to the user's (partition 1).
    let web_records: Vec<In> = web_lines.iter().map(|(k, l)| keyed(k, l.as_bytes().to_vec())).collect();
    produce(web(&s), &web_records);
    wait_until(LIMIT, "the anonymous history folded into the user", || {
        let refs: Vec<&Process> = instances.iter().collect();
        prospect(&refs, &ids.user)
            .is_some_and(|p| count(&p, "content_downloaded") == 1 && p["prospect"] == ids.user.as_str())
    });
    let mut restored_from = Vec::new();
    if kill {
        // The instance holding the user's shard dies without a checkpoint or leaving the group.
        kill9_holder_of(&mut instances, 1, &s, PARTITIONS as usize, LIMIT);
        restored_from = instances[0].shards().unwrap().iter().map(|s| s["restored_from"].to_string()).collect();
    }
    let refs: Vec<&Process> = instances.iter().collect();

    // The CRM quote for a contact with the same email (partition 2), then the clarification.
    produce(crm(&s), &[keyed(&crm_lines[0].0, crm_lines[0].1.as_bytes().to_vec())]);
    wait_until(LIMIT, "the quote applied to the user", || {
        prospect(&refs, &ids.user).is_some_and(|p| count(&p, "quote_sent") == 1)
    });
    produce(crm(&s), &[keyed(&crm_lines[1].0, crm_lines[1].1.as_bytes().to_vec())]);
    let flow_alert = |o: &Out| o.json()["email"] == "ana@x.example";
    let alerts = read_until(&s.kafka.topics.hot_leads, "the flow's alert", |r| r.iter().any(flow_alert));
    let alerts: BTreeSet<(String, String)> = alerts
        .iter()
        .filter(|o| flow_alert(o))
        .map(Out::json)
        .map(|a| (a["prospect"].as_str().unwrap().to_string(), a["alert_id"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(alerts.len(), 1, "exactly one alert: {alerts:?}");
    let (alerted, alert_id) = alerts.into_iter().next().unwrap();
    assert_eq!(alerted, ids.user, "the alert is for the canonical prospect");

    // Any linked id answers with the canonical prospect, which shows the pre-signup signals
    // (after a kill, once the survivor has read the dead instance's partitions again: the
    // forwarded quote may reach the user's shard before its re-read web partition does).
    let steps = ["page_viewed", "content_downloaded", "identified", "quote_sent", "quote_clarification_requested"];
    wait_until(LIMIT, "the person shows every step", || {
        prospect(&refs, &ids.contact).is_some_and(|p| steps.iter().all(|sig| count(&p, sig) == 1))
    });
    let p = prospect(&refs, &ids.contact).expect("the contact resolves to the user");
    assert_eq!(p["prospect"], ids.user.as_str(), "{p}");
    for sig in steps {
        assert_eq!(count(&p, sig), 1, "{sig} in {p}");
    }
    assert_eq!(p["email"], "ana@x.example", "{p}");
    // The funnel counts one person (per-stage gauges, summed over the instances).
    wait_until(LIMIT, "the funnel counts one person", || {
        refs.iter().map(|i| total(&i.metrics(), "microfunnel_prospects")).sum::<f64>() == 1.0
    });
    // And so does the count of prospects held: people, not the redirect records transfers leave.
    wait_until(LIMIT, "one person held", || {
        refs.iter().map(|i| total(&i.metrics(), "microfunnel_prospects_total")).sum::<f64>() == 1.0
    });
    let m: Vec<String> = refs.iter().map(|i| i.metrics()).collect();
    let received = |kind: &str| -> f64 {
        m.iter().filter_map(|t| sample(t, "microfunnel_identity_records_received_total", &[("kind", kind)])).sum()
    };
    assert!(received("link") >= 1.0 && received("forward") >= 1.0, "links and the forwarded clarification");
    if !kill {
        assert!(received("transfer") >= 1.0, "the anonymous prospect's state was transferred");
        wait_until(LIMIT, "the redirect counted", || {
            refs.iter().map(|i| total(&i.metrics(), "microfunnel_identity_redirects")).sum::<f64>() >= 1.0
        });
        // `GET /funnel` counts people too, on every instance together: the redirect is not one.
        let people: u64 = refs
            .iter()
            .map(|i| {
                let (code, body) = http_get(i.addr(), "/funnel");
                assert_eq!(code, 200, "{body}");
                serde_json::from_str::<serde_json::Value>(&body).unwrap()["prospects"].as_u64().unwrap()
            })
            .sum();
        assert_eq!(people, 1, "GET /funnel counts people, not redirect records");
        // A record of the identity topic that does not decode is dead-lettered, and passed.
        let topic = format!("{}.identity", s.kafka.group_id);
        produce(&topic, &[keyed(&ids.user, b"not an identity record".to_vec())]);
        read_until(&s.kafka.topics.dead_letter, "the bad identity record", |r| {
            r.iter().any(|o| o.header("microfunnel.reason") == Some("wrong_shape"))
        });
    }

    // replay --partitions 3 over the same events: the same alert, the same people once the
    // identity topic is drained.
    let web_file = dir.join(format!("{}-web.jsonl", s.kafka.group_id));
    let crm_file = dir.join(format!("{}-crm.jsonl", s.kafka.group_id));
    std::fs::write(&web_file, web_lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    std::fs::write(&crm_file, crm_lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let journey_arg = s.journey.path.display().to_string();
    let oracle = oracle_with(&web_file, &crm_file, PARTITIONS as usize, &["--journey", &journey_arg]);
    assert_eq!(oracle.alerts, BTreeSet::from([alert_id]), "replay's one alert");
    let shards = || refs.iter().flat_map(|i| i.shards().unwrap_or_default()).collect::<Vec<_>>();
    let states = [state_a.as_path(), state_b.as_path()];
    let resolved = resolved_when_drained(shards, &s, &states, 5, PARTITIONS as usize, LIMIT);
    assert_eq!(resolved, resolved_of(&oracle), "restored from {restored_from:?}");
    // The anonymous id's own partition holds only a redirect for it: `inspect-snapshot
    // --prospect` there names the canonical id whose partition holds the person.
    let newest = states
        .iter()
        .map(|d| d.join(&s.kafka.group_id).join("shard-0000"))
        .filter(|dir| dir.is_dir())
        .max_by_key(|dir| {
            let o = bin().arg("inspect-snapshot").arg(dir).arg("--journey").arg(&s.journey.path).output().unwrap();
            serde_json::from_slice::<Value>(&o.stdout).ok().and_then(|v| v["header"]["seq"].as_u64())
        })
        .expect("a snapshot of partition 0");
    let o = bin()
        .arg("inspect-snapshot")
        .arg(&newest)
        .arg("--journey")
        .arg(&s.journey.path)
        .args(["--prospect", &ids.anon])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("is linked to `{}`", ids.user)), "{err}");
}

/// The CRM side first (the contact asks about its quote alone, and alerts alone, as replay
/// says), then the web side: the same person in the end as in the other order.
#[test]
fn crm_first_then_web_gives_the_same_person_on_two_instances() {
    let name = "xpart-rev";
    let mut s = setup(name);
    s.kafka.resume_rewind = 0;
    s.http.query_api = true;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    resolving_journey(&mut s, "");
    let ids = Ids {
        anon: key_in_partition("anon-", 0, PARTITIONS),
        user: key_in_partition("usr_", 1, PARTITIONS),
        contact: key_in_partition("crm-", 2, PARTITIONS),
    };
    let (web_lines, crm_lines) = flow(&ids);
    let (state_a, state_b) = (state_dir(&unique(&format!("{name}-a"))), state_dir(&unique(&format!("{name}-b"))));
    let (a, b) = (Process::start(&s, Some(&state_a)), Process::start(&s, Some(&state_b)));
    wait_until(LIMIT, "both instances hold shards, all three held", || {
        let (ha, hb) = (held(&a), held(&b));
        !ha.is_empty() && !hb.is_empty() && ha.len() + hb.len() == PARTITIONS as usize
    });
    let refs = [&a, &b];
    let records = |lines: &Keyed| lines.iter().map(|(k, l)| keyed(k, l.as_bytes().to_vec())).collect::<Vec<_>>();
    produce(crm(&s), &records(&crm_lines));
    wait_until(LIMIT, "the contact's quote and clarification applied", || {
        prospect(&refs, &ids.contact).is_some_and(|p| count(&p, "quote_clarification_requested") == 1)
    });
    produce(web(&s), &records(&web_lines));
    wait_until(LIMIT, "every id folded into the user", || {
        [&ids.anon, &ids.contact].iter().all(|id| {
            prospect(&refs, id).is_some_and(|p| {
                p["prospect"] == ids.user.as_str()
                    && count(&p, "content_downloaded") == 1
                    && count(&p, "quote_sent") == 1
            })
        })
    });
    let p = prospect(&refs, &ids.contact).unwrap();
    assert_eq!(p["prospect"], ids.user.as_str(), "{p}");
    for sig in ["page_viewed", "content_downloaded", "identified", "quote_sent", "quote_clarification_requested"] {
        assert_eq!(count(&p, sig), 1, "{sig} in {p}");
    }
    wait_until(LIMIT, "the funnel counts one person", || {
        refs.iter().map(|i| total(&i.metrics(), "microfunnel_prospects")).sum::<f64>() == 1.0
    });

    // replay of one file in that order (several files would be merged by event time).
    let file = dir.join(format!("{}-crm-then-web.jsonl", s.kafka.group_id));
    let lines: Vec<&str> = crm_lines.iter().chain(&web_lines).map(|(_, l)| l.as_str()).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let lines = replay_lines(&s.journey.path, &file);
    let oracle = Oracle {
        shards: Default::default(),
        alerts: lines
            .iter()
            .filter(|l| l["kind"] == "hot_lead")
            .map(|l| l["alert_id"].as_str().unwrap().to_string())
            .collect(),
        journey_events: Vec::new(),
        lines,
    };
    assert_eq!(oracle.alerts.len(), 1, "replay: the contact alerted alone");
    let alerts = read_until(&s.kafka.topics.hot_leads, "replay's alerts", |r| {
        let ids: BTreeSet<String> = r.iter().map(|o| o.json()["alert_id"].as_str().unwrap().to_string()).collect();
        oracle.alerts.is_subset(&ids)
    });
    let alert_ids: BTreeSet<String> =
        alerts.iter().map(|o| o.json()["alert_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(alert_ids, oracle.alerts, "the contact's alert, as replay gives it");
    let shards = || refs.iter().flat_map(|i| i.shards().unwrap_or_default()).collect::<Vec<_>>();
    let states = [state_a.as_path(), state_b.as_path()];
    let resolved = resolved_when_drained(shards, &s, &states, 5, PARTITIONS as usize, LIMIT);
    assert_eq!(resolved, resolved_of(&oracle));
    // The same people as the web-first order gives (replay over one file per topic merges
    // them by event time: web first).
    let web_file = dir.join(format!("{}-web.jsonl", s.kafka.group_id));
    let crm_file = dir.join(format!("{}-crm.jsonl", s.kafka.group_id));
    std::fs::write(&web_file, web_lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    std::fs::write(&crm_file, crm_lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let journey_arg = s.journey.path.display().to_string();
    let web_first = oracle_with(&web_file, &crm_file, PARTITIONS as usize, &["--journey", &journey_arg]);
    assert_eq!(resolved, resolved_of(&web_first));
}

#[test]
fn two_instances_join_ids_on_three_partitions_into_one_person_with_one_alert() {
    one_person_across_two_instances("xpart-two", false);
}

#[test]
fn kill_9_of_one_instance_mid_flow_gives_the_same_person_and_alert() {
    one_person_across_two_instances("xpart-kill", true);
}

/// An identity topic whose partition count differs from the inputs' is refused at start, the
/// error naming the key and the fix (its partition p must be shard p's).
#[test]
fn an_identity_topic_with_another_partition_count_is_refused_naming_the_key() {
    let mut s = setup("xpart-count");
    s.kafka.identity_topic = format!("{}-people", s.kafka.group_id);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(microfunnel::kafka::ensure_identity_topic(&s.kafka, &s.kafka.identity_topic, 2)).unwrap();
    let b2b = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/journeys/b2b.toml")).unwrap();
    let journey = microfunnel::core::Journey::from_toml_str(&format!("{b2b}\n[identity]\nresolve = true\n")).unwrap();
    let err = refused(&s, journey);
    assert!(err.contains("has 2 partitions but the inputs have 3") && err.contains("kafka.identity_topic"), "{err}");
}

/// `[retention]` with identity resolution on three partitions and two instances: generated
/// traffic over eight months (people going quiet and expiring on the partition of their
/// canonical id, the other homes of their identifiers told through the identity topic's
/// `Forget` records) ends, once the identity topic is drained, in the people
/// `replay --partitions 3` gives. The traffic arrives two days of event time at a time, each
/// part produced (both topics, the instances frozen meanwhile) once the previous one settled,
/// as live traffic arrives hours apart while the identity topic's round trip takes
/// milliseconds: a shard never runs a retention span ahead of the records sent to it. Halfway, the instance holding partition 1 is killed with
/// SIGKILL; the other restores its shard (from a snapshot of its own or the changelog: pruned
/// identifiers, links and redirect records as tombstones), re-executes what followed (its
/// identity records delivered twice) and carries on.
#[test]
fn retention_with_identity_across_partitions_on_two_instances_with_a_kill_9_equals_replay() {
    let mut s = setup("xpart-retention");
    s.kafka.resume_rewind = 0;
    resolving_journey(&mut s, "[retention]\nafter_days = 10\n[retention.stages]\naware = 4\n");
    let journey =
        microfunnel::core::Journey::from_toml_str(&std::fs::read_to_string(&s.journey.path).unwrap()).unwrap();
    let (web_file, crm_file) = gen_segment(&s.kafka.group_id, "300", "240");
    let journey_arg = s.journey.path.display().to_string();
    let oracle = oracle_with(&web_file, &crm_file, PARTITIONS as usize, &["--journey", &journey_arg]);
    let summary = oracle.lines.iter().find(|l| l["kind"] == "funnel_summary").unwrap();
    assert!(summary["stats"]["expired"].as_u64().unwrap() > 100, "people expire: {}", summary["stats"]);

    // Each line keyed by its prospect, as `gen --brokers` keys it, in file order, in parts of
    // two days from the generator's start (a line out of order stays in the part it arrives
    // in).
    const PART: i64 = 2 * 86_400_000;
    let start = microfunnel::core::time::parse_rfc3339("2026-01-05T00:00:00Z").unwrap().0;
    let parts = |p: &Path| -> Vec<Vec<In>> {
        let mut parts: Vec<Vec<In>> = Vec::new();
        let mut k = 0usize;
        for l in std::fs::read_to_string(p).unwrap().lines() {
            let ev = microfunnel::codec::decode_each(l.as_bytes(), &journey, &microfunnel::codec::Limits::default())
                .find_map(|(_, r)| r.ok())
                .expect("generated lines decode");
            k = k.max(((ev.ts.0 - start).max(0) / PART) as usize);
            parts.resize_with(parts.len().max(k + 1), Vec::new);
            parts[k].push(keyed(&ev.prospect, l.as_bytes().to_vec()));
        }
        parts
    };
    let (mut w, mut c) = (parts(&web_file), parts(&crm_file));
    let n = w.len().max(c.len());
    w.resize_with(n, Vec::new);
    c.resize_with(n, Vec::new);

    let (state_a, state_b) = (state_dir(&unique("xret-a")), state_dir(&unique("xret-b")));
    let mut instances = vec![Process::start(&s, Some(&state_a)), Process::start(&s, Some(&state_b))];
    wait_until(LIMIT, "both instances hold shards, all three held", || {
        let (ha, hb) = (held(&instances[0]), held(&instances[1]));
        !ha.is_empty() && !hb.is_empty() && ha.len() + hb.len() == PARTITIONS as usize
    });
    let consumer = TopicEnds::identity(&s);
    let mut messages = 0i64;
    let mut killed = false;
    for k in 0..n {
        // Both topics' part in place before the instances read it (the merge does not wait for
        // a partition that is caught up: a CRM line produced after the web part would be late).
        instances.iter().for_each(Process::freeze);
        for (topic, part) in [(web(&s), &w[k]), (crm(&s), &c[k])] {
            if !part.is_empty() {
                produce(topic, part);
                messages += part.len() as i64;
            }
        }
        instances.iter().for_each(Process::thaw);
        wait_until(LIMIT, "the part checkpointed and the identity topic drained", || {
            let shards: Vec<Value> = instances.iter().flat_map(|i| i.shards().unwrap_or_default()).collect();
            identity_settled(&shards, &s, messages, PARTITIONS as usize, &consumer)
        });
        if !killed && k >= n / 2 {
            killed = true;
            kill9_holder_of(&mut instances, 1, &s, PARTITIONS as usize, LIMIT);
        }
    }
    assert!(killed);
    let survivor = &instances[0];
    // The killed instance's shard restored from what was persisted (the survivor's snapshot of
    // it, from before the other instance joined, or the changelog), then re-executed what
    // followed: its identity records sent again.
    let shards = survivor.shards().unwrap();
    let restored = shards.iter().find(|sh| sh["partition"] == 1).map(|sh| sh["restored_from"].clone());
    assert!(
        restored.as_ref().and_then(Value::as_str).is_some_and(|r| r.starts_with("snapshot") || r == "changelog"),
        "{restored:?}"
    );
    let states = [state_a.as_path(), state_b.as_path()];
    let resolved = resolved_at_rest(&instances, &s, &states, messages, PARTITIONS as usize, LIMIT);
    assert_eq!(resolved, resolved_of(&oracle), "log {}", survivor.log.display());
    let m = survivor.metrics();
    let received = sample(&m, "microfunnel_identity_records_received_total", &[("kind", "forget")]).unwrap_or(0.0);
    assert!(received > 0.0, "forgets received");
}

/// The error of a start that is refused (before it binds its port or joins the group).
fn refused(s: &microfunnel::config::Settings, journey: microfunnel::core::Journey) -> String {
    match microfunnel::app::start(s.clone(), std::sync::Arc::new(journey)) {
        Ok(_) => panic!("the start is refused"),
        Err(e) => e.to_string(),
    }
}
