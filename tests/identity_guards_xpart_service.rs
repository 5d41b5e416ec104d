//! The email guard across partitions in the service: TWO instances of one consumer group
//! against a real Kafka-API broker (Tansu, see `support`), input topics with three partitions.
//! Ten CRM contacts share one email (homed on partition 0): four on partition 1, seen first,
//! become one person (`max_known_ids` 4); six on partition 2 are refused at the email's home and
//! stay apart, although they share a partition that has not heard of the accepted person (there,
//! linking each with the email on its own view would join them to one another). Each contact is
//! produced once the previous one settled (nothing in flight on the identity topic); the people
//! equal `replay --partitions 3`'s.

mod payloads;
mod support;

use std::path::Path;
use std::time::Duration;

use payloads::crm as crm_line;
use serde_json::Value;
use support::*;

const PARTITIONS: u32 = 3;
const LIMIT: Duration = Duration::from_secs(120);

/// The first `n` keys `{prefix}0`, `{prefix}1`, ... in `partition`.
fn keys_in_partition(prefix: &str, partition: u32, n: usize) -> Vec<String> {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .filter(|k| microfunnel::core::ids::kafka_partition(k.as_bytes(), PARTITIONS) == partition)
        .take(n)
        .collect()
}

#[test]
fn contacts_sharing_a_partition_and_an_email_refused_at_its_home_stay_apart_on_two_instances() {
    let name = "guards-xpart";
    let mut s = setup(name);
    s.kafka.resume_rewind = 0;
    s.http.query_api = true;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    resolving_journey(&mut s, "");
    let email = (0..)
        .map(|i| format!("shared{i}@x.example"))
        .find(|e| microfunnel::core::ids::kafka_partition(format!("\0{e}").as_bytes(), PARTITIONS) == 0)
        .unwrap();
    let (accepted, refused) = (keys_in_partition("crm-a-", 1, 4), keys_in_partition("crm-r-", 2, 6));
    let contacts: Vec<&String> = accepted.iter().chain(&refused).collect();
    let lines: Vec<(String, String)> = contacts
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let ts = format!("2026-03-05T{:02}:00:00Z", 8 + k);
            ((*c).clone(), crm_line("meeting_booked", c, &format!("e-{k}"), &ts, Some(&email)))
        })
        .collect();

    let (state_a, state_b) = (state_dir(&unique(&format!("{name}-a"))), state_dir(&unique(&format!("{name}-b"))));
    let (a, b) = (Process::start(&s, Some(&state_a)), Process::start(&s, Some(&state_b)));
    wait_until(LIMIT, "both instances hold shards, all three held", || {
        let (ha, hb) = (held(&a), held(&b));
        !ha.is_empty() && !hb.is_empty() && ha.len() + hb.len() == PARTITIONS as usize
    });
    let refs = [&a, &b];
    let shards = || refs.iter().flat_map(|i| i.shards().unwrap_or_default()).collect::<Vec<_>>();
    let consumer = TopicEnds::identity(&s);
    for (k, (key, line)) in lines.iter().enumerate() {
        produce(crm(&s), &[keyed(key, line.as_bytes().to_vec())]);
        wait_until(LIMIT, &format!("contact {k} settled"), || {
            identity_settled(&shards(), &s, k as i64 + 1, PARTITIONS as usize, &consumer)
        });
    }

    for c in &accepted {
        let p = prospect(&refs, c).unwrap_or_else(|| panic!("{c} answers"));
        assert_eq!(p["prospect"], accepted[0].as_str(), "{c}: {p}");
    }
    for c in &refused {
        let p = prospect(&refs, c).unwrap_or_else(|| panic!("{c} answers"));
        assert_eq!(p["prospect"], c.as_str(), "{c} stays its own person: {p}");
        assert_eq!(p["linked_ids"], serde_json::json!([c]), "{c}: {p}");
    }
    wait_until(LIMIT, "the funnel counts seven people", || {
        refs.iter().map(|i| total(&i.metrics(), "microfunnel_prospects")).sum::<f64>() == 7.0
    });
    let events = read_until(&s.kafka.topics.journey_events, "six refusals", |r| {
        r.iter().filter(|o| o.json()["kind"] == "merge_refused").count() >= 6
    });
    let refusals: Vec<Value> = events.iter().map(Out::json).filter(|v| v["kind"] == "merge_refused").collect();
    assert_eq!(refusals.len(), 6, "{refusals:?}");
    assert!(events.iter().all(|o| !show(o).contains(&email)), "no email in journey events");

    // The oracle: replay of the same lines over three partitions.
    let file = dir.join(format!("{}-crm.jsonl", s.kafka.group_id));
    std::fs::write(&file, lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let lines = replay_lines(&s.journey.path, &file);
    assert_eq!(lines.iter().filter(|l| l["kind"] == "merge_refused").count(), 6);
    let oracle = Oracle { shards: Default::default(), alerts: Default::default(), journey_events: Vec::new(), lines };
    let states = [state_a.as_path(), state_b.as_path()];
    let resolved = resolved_when_drained(shards, &s, &states, 10, PARTITIONS as usize, LIMIT);
    assert_eq!(resolved, resolved_of(&oracle));
}
