//! A canonical id that flips back, in the service: two instances of one consumer group against
//! the real broker (Tansu, see `support`), input topics with three partitions, two CRM contacts
//! of one person on two partitions and their email on the third. `x` folds into `y`, a late
//! sighting of `x` makes it canonical again (its home revives it; `y`'s state comes back to it),
//! a later one of `y` flips it back (`x` transferred a second time, which must not be taken for
//! a redelivery). Each step is produced once the previous one took effect. The people equal
//! `replay --partitions 3`'s once the identity topic is drained, also when the instance holding
//! `x`'s home is killed with SIGKILL after the first flip (its shards restored from the
//! changelog by the other instance: the transfer generations are state).

mod payloads;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use payloads::crm as crm_line;
use support::*;

const PARTITIONS: u32 = 3;
const LIMIT: Duration = Duration::from_secs(120);

fn journey_file(dir: &Path, name: &str) -> PathBuf {
    let b2b = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/journeys/b2b.toml")).unwrap();
    let path = dir.join(format!("{name}-journey.toml"));
    std::fs::write(&path, format!("{b2b}\n[identity]\nresolve = true\n")).unwrap();
    path
}

fn flips_across_two_instances(name: &str, kill: bool) {
    let mut s = setup(name);
    s.kafka.resume_rewind = 0;
    s.http.query_api = true;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    s.journey.path = journey_file(dir, &s.kafka.group_id);
    let email = (0..)
        .map(|i| format!("ana{i}@x.example"))
        .find(|e| microfunnel::core::ids::kafka_partition(format!("\0{e}").as_bytes(), PARTITIONS) == 2)
        .unwrap();
    let (x, y) = (key_in_partition("crm-x-", 0, PARTITIONS), key_in_partition("crm-y-", 1, PARTITIONS));
    let e = Some(email.as_str());
    let lines = [
        (&y, crm_line("meeting_booked", &y, "f-1", "2026-03-05T10:00:00Z", e)),
        (&x, crm_line("quote_sent", &x, "f-2", "2026-03-05T11:00:00Z", e)),
        (&x, crm_line("reviewing_with_partners", &x, "f-3", "2026-03-05T09:00:00Z", None)),
        (&y, crm_line("quote_clarification_requested", &y, "f-4", "2026-03-05T08:00:00Z", None)),
        (&x, crm_line("reviewing_with_partners", &x, "f-5", "2026-03-05T12:00:00Z", None)),
    ];
    let (state_a, state_b) = (state_dir(&unique(&format!("{name}-a"))), state_dir(&unique(&format!("{name}-b"))));
    let a = Process::start(&s, Some(&state_a));
    let b = Process::start(&s, Some(&state_b));
    wait_until(LIMIT, "both instances hold shards, all three held", || {
        let (ha, hb) = (held(&a), held(&b));
        !ha.is_empty() && !hb.is_empty() && ha.len() + hb.len() == PARTITIONS as usize
    });
    let mut instances = vec![a, b];
    let step = |instances: &[Process], k: usize, what: &str, done: &dyn Fn(&[&Process]) -> bool| {
        produce(crm(&s), &[keyed(lines[k].0, lines[k].1.as_bytes().to_vec())]);
        let refs: Vec<&Process> = instances.iter().collect();
        let deadline = std::time::Instant::now() + LIMIT;
        while !done(&refs) {
            if std::time::Instant::now() > deadline {
                let views: Vec<_> = [&x, &y].iter().map(|id| prospect(&refs, id)).collect();
                let logs: Vec<_> = refs.iter().map(|i| i.log.display().to_string()).collect();
                panic!("timed out waiting until {what}: {views:?}, logs {logs:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let resolves_to = |refs: &[&Process], id: &str, canonical: &str, signals: &[(&str, u64)]| {
        prospect(refs, id)
            .is_some_and(|p| p["prospect"] == canonical && signals.iter().all(|&(sig, n)| count(&p, sig) == n))
    };
    step(&instances, 0, "y's meeting", &|r| resolves_to(r, &y, &y, &[("meeting_booked", 1)]));
    step(&instances, 1, "x folded into y", &|r| resolves_to(r, &x, &y, &[("meeting_booked", 1), ("quote_sent", 1)]));
    let all = [("meeting_booked", 1), ("quote_sent", 1), ("reviewing_with_partners", 1)];
    step(&instances, 2, "x canonical again, holding the person", &|r| resolves_to(r, &y, &x, &all));
    if kill {
        // The instance holding x's home dies without a checkpoint or leaving the group.
        kill9_holder_of(&mut instances, 0, &s, PARTITIONS as usize, LIMIT);
        // Before the next step, the survivor has re-read (and checkpointed) every identity
        // record the dead instance's shards had sent: `y`'s home, restored from before the link
        // that made `x` canonical, decides `y`'s transfer again (a redelivery where `x` lives).
        // (Had `y`'s late sighting come first there, the re-execution would decide otherwise;
        // the outbox keeps a transfer from leaving before its checkpoint, so nothing the dead
        // instance decided after it had left: `tests/identity_outbox_service.rs`.)
        let topic = format!("{}.identity", s.kafka.group_id);
        let ends = TopicEnds::identity(&s).ends();
        let sent: Vec<i64> = (0..PARTITIONS as i32).map(|p| ends[&p]).collect();
        let survivor = &instances[0];
        wait_until(LIMIT, "the survivor re-read the identity topic", || {
            survivor.shards().unwrap_or_default().iter().all(|sh| {
                let p = sh["partition"].as_i64().unwrap() as usize;
                sh["checkpoint"]["positions"][&topic].as_i64().unwrap_or(0) >= sent[p]
            })
        });
    }
    let all = [
        ("meeting_booked", 1),
        ("quote_sent", 1),
        ("reviewing_with_partners", 1),
        ("quote_clarification_requested", 1),
    ];
    step(&instances, 3, "y canonical again, holding the person", &|r| resolves_to(r, &x, &y, &all));
    let all = [
        ("meeting_booked", 1),
        ("quote_sent", 1),
        ("reviewing_with_partners", 2),
        ("quote_clarification_requested", 1),
    ];
    step(&instances, 4, "x's later event routed to y", &|r| resolves_to(r, &x, &y, &all));
    let refs: Vec<&Process> = instances.iter().collect();
    wait_until(LIMIT, "one person held", || {
        refs.iter().map(|i| total(&i.metrics(), "microfunnel_prospects_total")).sum::<f64>() == 1.0
    });

    let web_file = dir.join(format!("{}-web.jsonl", s.kafka.group_id));
    let crm_file = dir.join(format!("{}-crm.jsonl", s.kafka.group_id));
    std::fs::write(&web_file, "").unwrap();
    std::fs::write(&crm_file, lines.iter().map(|(_, l)| l.as_str()).collect::<Vec<_>>().join("\n") + "\n").unwrap();
    let journey_arg = s.journey.path.display().to_string();
    let oracle = oracle_with(&web_file, &crm_file, PARTITIONS as usize, &["--journey", &journey_arg]);
    let shards = || refs.iter().flat_map(|i| i.shards().unwrap_or_default()).collect::<Vec<_>>();
    let states = [state_a.as_path(), state_b.as_path()];
    let resolved = resolved_when_drained(shards, &s, &states, lines.len() as i64, PARTITIONS as usize, LIMIT);
    assert_eq!(resolved, resolved_of(&oracle));
}

#[test]
fn an_id_canonical_again_twice_on_two_instances_resolves_as_replay() {
    flips_across_two_instances("flip-two", false);
}

#[test]
fn kill_9_after_the_first_flip_keeps_the_transfer_generations() {
    flips_across_two_instances("flip-kill", true);
}
