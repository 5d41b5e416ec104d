//! In-process tests of the pipeline's state, no broker: the checkpoint barrier and its commit
//! decision, revoke and assign (park, resume, restore), restore preference and idle advance,
//! against the in-memory snapshot store and changelog, with the clocks given by the test.
//!
//! Events are fed to the shards' engines directly (not through `handle`, whose outputs would
//! go to a broker); the producer exists (librdkafka needs no broker to create one) but nothing
//! is sent through it before a checkpoint, so its flush has nothing to wait for.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::CommitMode;
use rdkafka::error::KafkaResult;

use super::barrier::{Commit, Committer};
use super::status::{RestoreSource, Status};
use super::{Handles, State};
use crate::codec::{self, Limits};
use crate::config::Settings;
use crate::core::{Journey, Ts};
use crate::kafka;
use crate::store::{Changelog, MemChangelog, MemStore, Refuse, SnapshotStore};
use crate::telemetry::Metrics;
use crate::traffic::{Generator, Options};

const TOPIC: &str = "microfunnel-changelog";

/// Records the commits the barrier asks for, in order.
#[derive(Default)]
struct Recorder(RefCell<Vec<Vec<(String, i32, i64)>>>);

impl Committer for Recorder {
    fn commit(&self, offsets: &[Commit<'_>], _: CommitMode) -> KafkaResult<()> {
        self.0.borrow_mut().push(offsets.iter().map(|c| (c.topic.to_string(), c.partition, c.next)).collect());
        Ok(())
    }
}

impl Recorder {
    fn take(&self) -> Vec<Vec<(String, i32, i64)>> {
        std::mem::take(&mut self.0.borrow_mut())
    }
}

fn journey() -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(include_str!("../../deploy/journeys/b2b.toml")).unwrap())
}

fn settings() -> Settings {
    let env = [("MICROFUNNEL__KAFKA__BROKERS", "127.0.0.1:9"), ("MICROFUNNEL__KAFKA__GROUP_ID", "g")];
    Settings::load(None, env.map(|(k, v)| (k.to_string(), v.to_string()))).expect("test settings load")
}

/// A pipeline state with no shard, persisting to `store` and `changelog`.
fn state(
    journey: &Arc<Journey>,
    store: Option<Arc<MemStore>>,
    changelog: Option<Arc<MemChangelog>>,
) -> (State, Metrics, Status) {
    state_with(settings(), journey, store, changelog)
}

/// [`state`] with `settings`.
fn state_with(
    settings: Settings,
    journey: &Arc<Journey>,
    store: Option<Arc<MemStore>>,
    changelog: Option<Arc<MemChangelog>>,
) -> (State, Metrics, Status) {
    let metrics = Metrics::new(journey).unwrap();
    let status = Status::default();
    let h = Handles {
        metrics: metrics.clone(),
        ready: Arc::new(AtomicBool::new(false)),
        stop: Arc::new(AtomicBool::new(false)),
        status: status.clone(),
        queries: None,
    };
    let (producer, failed) = kafka::producer(&settings.kafka, None).expect("a producer needs no broker to exist");
    let store = store.map(|s| s as Arc<dyn SnapshotStore + Sync>);
    let changelog = changelog.map(|c| c as Arc<dyn Changelog>);
    let st = State::new(&settings, Arc::clone(journey), h, producer, failed.load(Ordering::Acquire), store, changelog)
        .expect("the state starts");
    (st, metrics, status)
}

/// The first `n` events of a generated stream (a prospect per 5 events), one JSON line each.
fn stream(journey: &Arc<Journey>, n: usize) -> Vec<Vec<u8>> {
    let opts = Options { prospects: (n as u64 / 5).max(200), seed: 21, malformed_share: 0.0, ..Options::default() };
    let mut g = Generator::new(opts, journey, false).unwrap();
    let (mut line, mut key) = (Vec::new(), String::new());
    (0..n)
        .map(|_| {
            assert!(g.next_into(&mut line, &mut key).is_some(), "the stream has {n} events");
            line.clone()
        })
        .collect()
}

/// Feeds `events` to shard `p` and moves its input positions forward by their count (events
/// alternate between the two input topics).
fn feed(st: &mut State, p: i32, events: &[Vec<u8>]) {
    let journey = Arc::clone(&st.journey);
    let shard = st.shards.get_mut(&p).expect("the shard is assigned");
    let mut outs = Vec::new();
    for (n, line) in events.iter().enumerate() {
        let ev = codec::decode(line, &journey, &Limits::default()).expect("generated events decode");
        shard.engine.apply(&ev, &mut outs);
        let t = n % shard.positions.len();
        shard.positions[t] = shard.positions[t].max(0) + 1;
    }
}

fn digest(st: &State, p: i32) -> u64 {
    st.shards[&p].engine.digest()
}

fn shards(ps: &[i32]) -> BTreeSet<i32> {
    ps.iter().copied().collect()
}

fn deadline() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// What the barrier should commit for shard `p`: its current positions.
fn positions_of(st: &State, p: i32) -> Vec<(String, i32, i64)> {
    let topics = &st.settings.kafka.input_topics;
    topics.iter().zip(&st.shards[&p].positions).filter(|(_, n)| **n >= 0).map(|(t, n)| (t.clone(), p, *n)).collect()
}

fn checkpoints(metrics: &Metrics, result: &str) -> u64 {
    metrics.checkpoints.with_label_values(&[result]).get()
}

fn restored_from(status: &Status, p: i32) -> RestoreSource {
    status.snapshot().into_iter().find(|s| s.partition == p).expect("the shard has a status").restored_from
}

#[test]
fn a_snapshot_that_cannot_be_written_commits_nothing_and_the_next_checkpoint_writes_what_it_covered() {
    let journey = journey();
    let events = stream(&journey, 600);
    let store = Arc::new(MemStore::new("g", 3));
    let (mut st, metrics, _) = state(&journey, Some(Arc::clone(&store)), None);
    let rec = Recorder::default();
    st.take_shards(&shards(&[0, 1]));
    feed(&mut st, 0, &events[..300]);
    feed(&mut st, 1, &events[300..400]);

    store.fail_saves(true);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).expect("a failed save is not a pipeline error");
    assert!(rec.take().is_empty(), "no offset is committed past a snapshot that was not written");
    assert_eq!((checkpoints(&metrics, "failed"), checkpoints(&metrics, "ok")), (1, 0));
    assert!(st.shards[&0].engine.has_changes(), "the prospects it covered are marked changed again");
    let base = store.latest(0).0.expect("the restore wrote a base of the new shard");
    assert_eq!((base.header().seq, base.header().prospects, base.deltas.len()), (0, 0, 0), "only that empty base");

    // The next checkpoint, with the store back, writes them and commits.
    store.fail_saves(false);
    feed(&mut st, 0, &events[400..450]);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    let mut want = positions_of(&st, 0);
    want.extend(positions_of(&st, 1));
    assert_eq!(rec.take(), vec![want]);
    assert_eq!((checkpoints(&metrics, "failed"), checkpoints(&metrics, "ok")), (1, 1));
    for p in [0, 1] {
        let loaded = store.latest(p).0.expect("the snapshot loads");
        assert_eq!(loaded.header().digest, format!("{:016x}", digest(&st, p)), "shard {p} is stored whole");
    }
}

#[test]
fn refused_changelog_records_commit_nothing_and_the_next_checkpoint_writes_them() {
    let journey = journey();
    let events = stream(&journey, 500);
    let changelog = Arc::new(MemChangelog::new(TOPIC));
    let (mut st, metrics, _) = state(&journey, None, Some(Arc::clone(&changelog)));
    let rec = Recorder::default();
    st.take_shards(&shards(&[0]));
    feed(&mut st, 0, &events[..200]);
    // A CRM memory entry changes with them: shard state too, handed back like the prospects.
    st.shards.get_mut(&0).unwrap().engine.crm_memory("crm").link("deal", "9", "contact-9");

    // The broker refuses every record.
    changelog.refuse(Refuse::Records);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert!(rec.take().is_empty());
    assert_eq!(checkpoints(&metrics, "failed"), 1);
    assert!(changelog.records(0).is_empty());

    // It takes the prospect records but refuses the checkpoint record: still nothing committed.
    changelog.refuse(Refuse::CheckpointRecord);
    feed(&mut st, 0, &events[200..300]);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert!(rec.take().is_empty());
    assert_eq!(checkpoints(&metrics, "failed"), 2);
    let unconfirmed = changelog.records(0).len();
    assert!(unconfirmed > 50, "the prospect records are in the log ({unconfirmed})");

    // A new owner now finds records no checkpoint record confirms: nothing to restore.
    let (mut other, _, other_status) = state(&journey, None, Some(Arc::clone(&changelog)));
    other.take_shards(&shards(&[0]));
    assert_eq!(restored_from(&other_status, 0), RestoreSource::Replay);
    assert!(other.shards[&0].engine.is_empty());

    // The broker takes everything again: the next checkpoint writes every prospect fed so far.
    changelog.refuse(Refuse::Nothing);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert_eq!(rec.take(), vec![positions_of(&st, 0)]);
    assert_eq!(checkpoints(&metrics, "ok"), 1);
    let (mut other, _, other_status) = state(&journey, None, Some(Arc::clone(&changelog)));
    other.take_shards(&shards(&[0]));
    assert_eq!(restored_from(&other_status, 0), RestoreSource::Changelog);
    assert_eq!(digest(&other, 0), digest(&st, 0), "the changelog alone holds the whole state");
    assert_eq!(other.shards[&0].positions, st.shards[&0].positions);
    assert_eq!(other.shards[&0].engine.crm(), st.shards[&0].engine.crm(), "and the CRM memory");
    assert!(other.shards[&0].engine.crm().memories().any(|(_, m)| m.contact("deal", "9") == Some("contact-9")));
}

#[test]
fn restore_prefers_snapshot_and_changelog_then_changelog_then_replay() {
    let journey = journey();
    let events = stream(&journey, 700);
    let store = Arc::new(MemStore::new("g", 3));
    let changelog = Arc::new(MemChangelog::new(TOPIC));
    let (mut st, _, _) = state(&journey, Some(Arc::clone(&store)), Some(Arc::clone(&changelog)));
    let rec = Recorder::default();
    st.take_shards(&shards(&[0]));
    feed(&mut st, 0, &events[..300]);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    let first = (digest(&st, 0), st.shards[&0].positions.clone());

    // Checkpoint 2 reaches the changelog but not the snapshot store.
    feed(&mut st, 0, &events[300..700]);
    store.fail_saves(true);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    store.fail_saves(false);
    let second = (digest(&st, 0), st.shards[&0].positions.clone());
    assert_ne!(first.0, second.0);
    assert_eq!(store.latest(0).0.unwrap().header().seq, 1);

    let restore = |store: Option<Arc<MemStore>>, changelog: Option<Arc<MemChangelog>>| {
        let (mut st, _, status) = state(&journey, store, changelog);
        st.take_shards(&shards(&[0]));
        let shard = &st.shards[&0];
        (restored_from(&status, 0), shard.engine.digest(), shard.positions.clone())
    };
    // The changelog unreadable: the snapshot as it is.
    changelog.unreadable(true);
    let snapshot = restore(Some(Arc::clone(&store)), Some(Arc::clone(&changelog)));
    assert_eq!(snapshot, (RestoreSource::Snapshot, first.0, first.1));
    changelog.unreadable(false);
    // Snapshot 1 topped up with checkpoint 2's records.
    let both = restore(Some(Arc::clone(&store)), Some(Arc::clone(&changelog)));
    assert_eq!(both, (RestoreSource::SnapshotAndChangelog, second.0, second.1.clone()));
    // That restore wrote a base of checkpoint 2 (the chain on file ended at 1): a restore
    // with the changelog unreadable now finds checkpoint 2.
    let chain = store.latest(0).0.unwrap();
    assert_eq!((chain.base.header.seq, chain.deltas.len()), (2, 0));
    assert_eq!(chain.header().digest, format!("{:016x}", second.0));
    changelog.unreadable(true);
    let snapshot = restore(Some(Arc::clone(&store)), Some(Arc::clone(&changelog)));
    assert_eq!(snapshot, (RestoreSource::Snapshot, second.0, second.1.clone()));
    changelog.unreadable(false);
    // No snapshot: the changelog alone gives the same state.
    let alone = restore(Some(Arc::new(MemStore::new("g", 3))), Some(Arc::clone(&changelog)));
    assert_eq!(alone, (RestoreSource::Changelog, second.0, second.1.clone()));
    // Neither: replay from the beginning.
    let none = restore(Some(Arc::new(MemStore::new("g", 3))), Some(Arc::new(MemChangelog::new(TOPIC))));
    assert_eq!(none.0, RestoreSource::Replay);
    assert_eq!(none.2, vec![-1, -1]);
}

/// Instance A holds shard 0 briefly while nothing is persisted yet (its restore replays and
/// writes a base of the empty state); instance B, with its own snapshot directory, then holds
/// it and checkpoints to the shared changelog; A gets it back: its base must be topped up
/// with B's checkpoints, not taken as it is (its position in the changelog is where the
/// changelog ended, not unknown).
#[test]
fn a_base_written_at_a_replay_restore_is_topped_up_with_another_instances_checkpoints() {
    let journey = journey();
    let events = stream(&journey, 300);
    let changelog = Arc::new(MemChangelog::new(TOPIC));
    let (store_a, store_b) = (Arc::new(MemStore::new("g", 3)), Arc::new(MemStore::new("g", 3)));
    let rec = Recorder::default();
    let (mut a, _, _) = state(&journey, Some(Arc::clone(&store_a)), Some(Arc::clone(&changelog)));
    a.take_shards(&shards(&[0]));
    assert!(store_a.latest(0).0.is_some(), "a base of the replayed (empty) state");
    let (mut b, _, _) = state(&journey, Some(Arc::clone(&store_b)), Some(Arc::clone(&changelog)));
    b.take_shards(&shards(&[0]));
    feed(&mut b, 0, &events);
    b.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    let at_b = (digest(&b, 0), b.shards[&0].positions.clone());
    let (mut again, _, status) = state(&journey, Some(Arc::clone(&store_a)), Some(Arc::clone(&changelog)));
    again.take_shards(&shards(&[0]));
    assert_eq!(restored_from(&status, 0), RestoreSource::SnapshotAndChangelog);
    assert_eq!((digest(&again, 0), again.shards[&0].positions.clone()), at_b);
}

#[test]
fn a_revoke_during_an_in_flight_checkpoint_commits_it_then_checkpoints_the_rest_and_parks() {
    let journey = journey();
    let events = stream(&journey, 600);
    let store = Arc::new(MemStore::new("g", 3));
    let changelog = Arc::new(MemChangelog::new(TOPIC));
    let (mut st, metrics, status) = state(&journey, Some(Arc::clone(&store)), Some(Arc::clone(&changelog)));
    let rec = Recorder::default();
    st.take_shards(&shards(&[0, 1]));
    feed(&mut st, 0, &events[..250]);
    feed(&mut st, 1, &events[250..300]);

    // Checkpoint 1 starts and is not waited for; processing goes on meanwhile.
    st.checkpoint(&rec, CommitMode::Async, deadline(), false).unwrap();
    let captured = (positions_of(&st, 0), positions_of(&st, 1));
    feed(&mut st, 0, &events[300..600]);
    assert!(st.in_flight.is_some() || !rec.0.borrow().is_empty(), "checkpoint 1 is in flight or done");

    // The revoke finishes checkpoint 1 (its commit: what was captured), then checkpoints what
    // came after (shard 0 only) and parks both shards.
    st.give_up(&rec, &shards(&[0, 1]));
    let mut first = captured.0.clone();
    first.extend(captured.1);
    assert_eq!(rec.take(), vec![first, positions_of_parked(&st, 0)]);
    assert_eq!(checkpoints(&metrics, "ok"), 2);
    assert!(st.shards.is_empty() && st.parked.len() == 2);
    let at_revoke = st.parked[&0].engine.digest();
    assert_eq!(st.parked[&0].checkpointed, st.parked[&0].positions, "the parked state is the committed one");
    assert_eq!(store.latest(0).0.unwrap().header().digest, format!("{at_revoke:016x}"));

    // Given back: resumed from the parked shard, not restored.
    st.take_shards(&shards(&[0]));
    assert_eq!(digest(&st, 0), at_revoke);
    assert!(st.parked.is_empty(), "a shard not given back is dropped");
    assert!(status.snapshot().iter().any(|s| s.partition == 0));

    // Another instance restores shard 0 from the stores: the state at the revoke.
    let (mut other, _, other_status) = state(&journey, Some(Arc::clone(&store)), Some(Arc::clone(&changelog)));
    other.take_shards(&shards(&[0]));
    assert_eq!(digest(&other, 0), at_revoke);
    assert_eq!(restored_from(&other_status, 0), RestoreSource::Snapshot);
}

/// What the barrier commits for a parked shard `p`.
fn positions_of_parked(st: &State, p: i32) -> Vec<(String, i32, i64)> {
    let topics = &st.settings.kafka.input_topics;
    topics.iter().zip(&st.parked[&p].positions).filter(|(_, n)| **n >= 0).map(|(t, n)| (t.clone(), p, *n)).collect()
}

#[test]
fn idle_shards_advance_to_the_wall_clock_minus_the_lateness_and_busy_ones_do_not() {
    let journey = journey();
    let events = stream(&journey, 4000);
    let (mut st, _, _) = state(&journey, None, None);
    st.take_shards(&shards(&[0, 1]));
    feed(&mut st, 0, &events[..2000]);
    feed(&mut st, 1, &events[2000..]);
    let t0 = Instant::now();
    for s in st.shards.values_mut() {
        s.last_input = t0;
    }
    let idle = Duration::from_secs(60);
    let ghosts = |st: &State, p: i32| {
        let s = st.shards[&p].engine.stats();
        s.ghosted + s.stalled
    };
    let before = (st.shards[&0].engine.watermark(), st.shards[&1].engine.watermark(), ghosts(&st, 0));
    // A wall clock 60 days after the data: whoever is waiting on a quote is overdue.
    let wall = Ts(before.0.0.max(before.1.0) + 60 * 86_400_000);
    let target = wall.minus(journey.allowed_lateness);

    // Input 30 s ago: not idle, nothing moves.
    st.advance_idle(idle, t0 + Duration::from_secs(30), wall);
    assert_eq!((st.shards[&0].engine.watermark(), st.shards[&1].engine.watermark()), (before.0, before.1));

    // Shard 1 had input since; shard 0 did not: only shard 0 moves, and its timers fire.
    st.shards.get_mut(&1).unwrap().last_input = t0 + Duration::from_secs(100);
    st.advance_idle(idle, t0 + Duration::from_secs(120), wall);
    assert_eq!(st.shards[&0].engine.watermark(), target);
    assert_eq!(st.shards[&1].engine.watermark(), before.1);
    assert!(ghosts(&st, 0) > before.2, "overdue silence timers fire once time moves");
    assert!(st.unflushed, "their outputs were handed to the producer");
}

/// A shard that holds no prospect (a service started before a backfill of past events) keeps
/// its clock: had it moved to the wall clock, every backfilled event would be late.
#[test]
fn an_empty_idle_shard_keeps_its_clock_so_a_later_backfill_is_not_late() {
    let journey = journey();
    let events = stream(&journey, 400);
    let (mut st, _, _) = state(&journey, None, None);
    st.take_shards(&shards(&[0]));
    let t0 = Instant::now();
    st.shards.get_mut(&0).unwrap().last_input = t0;
    let wall = Ts(crate::core::time::parse_rfc3339("2030-01-01T00:00:00Z").unwrap().0);
    st.advance_idle(Duration::from_secs(60), t0 + Duration::from_secs(120), wall);
    assert!(st.shards[&0].engine.watermark() < wall.minus(journey.allowed_lateness), "the empty shard kept its clock");
    feed(&mut st, 0, &events);
    // As late as the stream is by itself (its few deliberately out-of-order lines), no more.
    let mut alone = crate::core::Engine::new(Arc::clone(&journey));
    for line in &events {
        alone.apply(&codec::decode(line, &journey, &Limits::default()).unwrap(), &mut Vec::new());
    }
    assert!(alone.stats().late < 10);
    assert_eq!(st.shards[&0].engine.stats().late, alone.stats().late, "the backfill is applied, not late");
    assert!(!st.shards[&0].engine.is_empty());
}

#[test]
fn a_shards_last_durable_time_moves_only_when_its_state_is_durable_and_leaves_with_the_shard() {
    let journey = journey();
    let events = stream(&journey, 200);
    let store = Arc::new(MemStore::new("g", 3));
    let (mut st, metrics, _) = state(&journey, Some(Arc::clone(&store)), None);
    let rec = Recorder::default();
    let series = |p: i32| format!("microfunnel_checkpoint_last_success_timestamp_seconds{{shard=\"{p}\"}}");
    let durable = |p: i32| metrics.checkpoint_last_success.with_label_values(&[&p.to_string()]).get();
    st.take_shards(&shards(&[0, 1]));
    let (assigned, assigned_1) = (durable(0), durable(1));
    assert!(assigned > 0.0 && assigned_1 > 0.0, "a restored shard is durable as restored");

    feed(&mut st, 0, &events[..100]);
    store.fail_saves(true);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert_eq!(durable(0), assigned, "a failed checkpoint leaves the time of the last success");
    assert!(durable(1) > assigned_1, "shard 1 had nothing to write: durable as it is");

    store.fail_saves(false);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert_eq!(checkpoints(&metrics, "ok"), 1);
    assert!(durable(0) > assigned, "the checkpoint that wrote shard 0 moves its time");

    st.give_up(&rec, &shards(&[1]));
    let text = metrics.render();
    assert!(text.contains(&series(0)) && !text.contains(&series(1)), "a revoked shard's series goes: {text}");
}

/// Settings whose second input topic carries HubSpot webhooks.
fn hubspot_settings() -> (Settings, String) {
    let mut s = settings();
    let crm = s.kafka.input_topics[1].clone();
    s.inputs.insert(crm.clone(), crate::config::InputSettings { format: "hubspot".into(), ..Default::default() });
    s.kafka.resume_rewind = 0;
    (s, crm)
}

#[test]
fn a_crm_topic_starts_at_the_restored_position_with_its_memory_restored() {
    let journey = journey();
    let changelog = Arc::new(MemChangelog::new(TOPIC));
    let (settings, crm) = hubspot_settings();
    let (mut st, _, _) = state_with(settings.clone(), &journey, None, Some(Arc::clone(&changelog)));
    st.take_shards(&shards(&[0]));
    feed(&mut st, 0, &stream(&journey, 40));
    st.shards.get_mut(&0).unwrap().engine.crm_memory(&crm).link("deal", "7", "contact-7");
    let rec = Recorder::default();
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    let position = st.shards[&0].positions[1];
    assert!(position > 0);

    let (mut st, _, status) = state_with(settings, &journey, None, Some(changelog));
    st.take_shards(&shards(&[0]));
    assert_eq!(restored_from(&status, 0), RestoreSource::Changelog);
    let shard = st.shards.get_mut(&0).unwrap();
    assert!(shard.engine.crm().is_complete());
    assert_eq!(shard.engine.crm_memory(&crm).contact("deal", "7"), Some("contact-7"));
    assert_eq!(st.start_offset(&crm, 0), rdkafka::Offset::Offset(position), "no rebuild: from the position");
}

#[test]
fn a_state_without_crm_memory_rebuilds_it_once_from_the_crm_topic() {
    let journey = journey();
    let (settings, crm) = hubspot_settings();
    let (mut st, _, _) = state_with(settings, &journey, None, None);
    // A shard restored from a state of version 3: covered up to offset 2 of the CRM topic.
    let mut engine = crate::core::Engine::new(Arc::clone(&journey));
    engine.set_crm_complete(false);
    let mut shard = super::shard::Shard::new(engine, 2);
    shard.positions = vec![5, 2];
    shard.start_crm_rebuild(&st.specs);
    st.shards.insert(0, shard);
    assert_eq!(st.start_offset(&crm, 0), rdkafka::Offset::Beginning, "read from the beginning to rebuild");
    assert_eq!(st.start_offset(&st.settings.kafka.input_topics[0].clone(), 0), rdkafka::Offset::Offset(5));

    let association = br#"[{"eventId":1,"subscriptionId":9,"portalId":1,"occurredAt":1772438400000,"subscriptionType":"deal.associationChange","associationType":"DEAL_TO_CONTACT","fromObjectId":7,"toObjectId":901,"associationRemoved":false}]"#;
    let (specs, limits) = (st.specs.clone(), st.limits);
    let shard = st.shards.get_mut(&0).unwrap();
    assert!(shard.learn(1, &crm, 0, association, &specs[1], &journey, &limits));
    assert!(!shard.learn(1, &crm, 0, association, &specs[1], &journey, &limits), "a message is learnt once");
    assert!(!shard.engine.crm().is_complete(), "offset 1 is still to be learnt");
    assert!(shard.learn(1, &crm, 1, b"[]", &specs[1], &journey, &limits));
    assert!(shard.engine.crm().is_complete(), "the restored position is reached");
    assert_eq!(shard.engine.crm_memory(&crm).contact("deal", "7"), Some("901"));
    assert!(!shard.learn(1, &crm, 1, b"[]", &specs[1], &journey, &limits), "no rebuild any more");
    assert_eq!(st.start_offset(&crm, 0), rdkafka::Offset::Offset(2));
}

fn identity_journey() -> Arc<Journey> {
    let text = format!("{}\n[identity]\nresolve = true\n", include_str!("../../deploy/journeys/b2b.toml"));
    Arc::new(Journey::from_toml_str(&text).unwrap())
}

/// A pipeline state resolving identities across three partitions whose durable outboxes are
/// recorded (no broker).
fn identity_state(store: Option<Arc<MemStore>>, changelog: Option<Arc<MemChangelog>>) -> (State, Metrics, Status) {
    let (mut st, metrics, status) = state(&identity_journey(), store, changelog);
    st.identity = Some(super::identity::IdentityInput {
        input: 2,
        name: "g.identity".to_string(),
        partitions: 3,
        message_max_bytes: crate::core::xpart::DEFAULT_MESSAGE_MAX_BYTES,
        renewal: crate::core::xpart::Renewal::for_commit_interval(Duration::from_millis(200)),
        history: false,
    });
    st.identity_sink = super::identity::IdentitySink::Recorded(Vec::new());
    (st, metrics, status)
}

/// The identity records sent so far (taken).
fn sent(st: &mut State) -> Vec<(u32, crate::core::xpart::XRecord)> {
    match &mut st.identity_sink {
        super::identity::IdentitySink::Recorded(v) => std::mem::take(v),
        super::identity::IdentitySink::Producer => unreachable!("tests record"),
    }
}

/// A user id homed on partition 1 of 3, numbered `n`.
fn user_elsewhere(n: u32) -> String {
    (0..).map(|k| format!("usr-{n}-{k}")).find(|u| crate::core::xpart::home(u, 3) == 1).unwrap()
}

/// An anonymous id homed on partition 0 of 3, numbered `n`.
fn anon_here(n: u32) -> String {
    (0..).map(|k| format!("anon-{n}-{k}")).find(|a| crate::core::xpart::home(a, 3) == 0).unwrap()
}

/// Shard 0 sees an anonymous visitor homed there (`anon_here(n)`) read a whitepaper, then sign up as a user homed on
/// partition 1: its state goes there (`Transfer`, with a `Link`). The records are taken from the
/// engine as `handle` takes them (held: checkpoints are on). Returns the records produced.
fn sign_up_elsewhere(st: &mut State, n: u32, day: u32) -> Vec<(u32, crate::core::xpart::XRecord)> {
    let journey = Arc::clone(&st.journey);
    let shard = st.shards.get_mut(&0).expect("shard 0 is assigned");
    shard.engine.resolve_across(0, 3);
    let (user, anon) = (user_elsewhere(n), anon_here(n));
    let lines = [
        format!(
            r#"{{"type":"track","event":"Whitepaper Downloaded","anonymousId":"{anon}","messageId":"m-{n}-1","timestamp":"2026-03-{day:02}T10:00:00Z"}}"#
        ),
        format!(
            r#"{{"type":"identify","userId":"{user}","anonymousId":"{anon}","messageId":"m-{n}-2","timestamp":"2026-03-{day:02}T11:00:00Z","traits":{{"email":"p{n}@example.com"}}}}"#
        ),
    ];
    let before: Vec<_> = shard.engine.outbox().cloned().collect();
    for line in &lines {
        let ev = codec::decode(line.as_bytes(), &journey, &Limits::default()).expect("the events decode");
        shard.engine.apply(&ev, &mut Vec::new());
        shard.positions[0] = shard.positions[0].max(0) + 1;
        shard.engine.hold_identity_records();
    }
    let held: Vec<_> = shard.engine.outbox().cloned().collect();
    let new = held[before.len()..].to_vec();
    assert!(
        new.iter().any(|(p, r)| *p == 1 && matches!(r, crate::core::xpart::XRecord::Transfer { .. })),
        "the sign-up transfers the visitor's state to the user's partition: {new:?}"
    );
    new
}

#[test]
fn identity_records_leave_only_once_the_checkpoint_covering_them_is_durable() {
    let store = Arc::new(MemStore::new("g", 3));
    let changelog = Arc::new(MemChangelog::new(TOPIC));
    let (mut st, metrics, _) = identity_state(Some(Arc::clone(&store)), Some(Arc::clone(&changelog)));
    let rec = Recorder::default();
    st.take_shards(&shards(&[0]));
    assert!(sent(&mut st).is_empty(), "a shard restored from nothing has no outbox");
    let first = sign_up_elsewhere(&mut st, 1, 2);
    assert!(sent(&mut st).is_empty(), "nothing leaves before a checkpoint");

    // The checkpoint is captured and in flight: still nothing; once durable, the records go.
    // (The barrier polls the writer once: it may have reported already.)
    st.checkpoint(&rec, CommitMode::Sync, deadline(), false).unwrap();
    let early = sent(&mut st);
    let durable = changelog.records(0).iter().any(|(k, _)| k == crate::store::META_KEY);
    assert!(early.is_empty() || (durable && st.in_flight.is_none()), "nothing leaves before it is durable");
    st.poll_checkpoint(&rec, CommitMode::Sync, Some(deadline())).unwrap();
    assert_eq!(rec.take().len(), 1, "the checkpoint committed");
    assert_eq!([early, sent(&mut st)].concat(), first, "the durable checkpoint's outbox is sent, in order, once");

    // A checkpoint that fails (the snapshot store refuses) sends nothing; the next one sends
    // its records with its own.
    let second = sign_up_elsewhere(&mut st, 2, 3);
    store.fail_saves(true);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert_eq!(checkpoints(&metrics, "failed"), 1);
    assert!(sent(&mut st).is_empty(), "a failed checkpoint sends nothing");
    store.fail_saves(false);
    let third = sign_up_elsewhere(&mut st, 3, 4);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert_eq!(checkpoints(&metrics, "ok"), 2);
    assert_eq!(sent(&mut st), [second, third].concat(), "the failed checkpoint's records go with the next");

    // A checkpoint whose changelog append fails sends nothing either.
    let fourth = sign_up_elsewhere(&mut st, 4, 5);
    changelog.refuse(Refuse::CheckpointRecord);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert!(sent(&mut st).is_empty(), "a refused changelog append sends nothing");
    changelog.refuse(Refuse::Nothing);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert_eq!(sent(&mut st), fourth);
}

#[test]
fn checkpoints_off_send_identity_records_at_once_and_hold_nothing() {
    let (mut st, _, _) = identity_state(None, None);
    st.take_shards(&shards(&[0]));
    assert!(st.writer.is_none(), "nothing is persisted");
    let journey = Arc::clone(&st.journey);
    let shard = st.shards.get_mut(&0).unwrap();
    shard.engine.resolve_across(0, 3);
    let user = user_elsewhere(1);
    let line = format!(
        r#"{{"type":"identify","userId":"{user}","anonymousId":"anon-1","messageId":"m-1","timestamp":"2026-03-02T11:00:00Z"}}"#
    );
    shard.engine.apply(&codec::decode(line.as_bytes(), &journey, &Limits::default()).unwrap(), &mut Vec::new());
    // `handle`'s call with checkpoints off: the records go to the producer (no broker here:
    // they stay queued in it), none is held.
    let id = st.identity.clone().unwrap();
    let State { producer, metrics, shards, buf, .. } = &mut st;
    let engine = &mut shards.get_mut(&0).unwrap().engine;
    assert!(super::identity::send_records(producer, metrics, &id, engine, buf, false), "sent at once");
    assert_eq!(engine.outbox().count(), 0, "nothing held");
    assert!(!engine.outbox_held());
    use rdkafka::producer::Producer;
    producer.purge(rdkafka::producer::PurgeConfig::default().queue());
}

/// The outbox of the checkpoint a restore restores is sent again, from the snapshot chain and
/// from the changelog alone; a later checkpoint with nothing held leaves nothing to send.
#[test]
fn a_restore_sends_the_outbox_of_the_checkpoint_it_restores_again() {
    let store = Arc::new(MemStore::new("g", 3));
    let changelog = Arc::new(MemChangelog::new(TOPIC));
    let (mut st, _, _) = identity_state(Some(Arc::clone(&store)), Some(Arc::clone(&changelog)));
    let rec = Recorder::default();
    st.take_shards(&shards(&[0]));
    // Checkpoint 1 carries the first sign-up's records; checkpoint 2 the second's (a delta
    // replaces the outbox of the one before).
    let _first = sign_up_elsewhere(&mut st, 1, 2);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    sent(&mut st);
    let second = sign_up_elsewhere(&mut st, 2, 3);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert_eq!(sent(&mut st), second);

    let restore = |store: Arc<MemStore>, unreadable: bool| {
        changelog.unreadable(unreadable);
        let (mut other, _, status) = identity_state(Some(store), Some(Arc::clone(&changelog)));
        other.take_shards(&shards(&[0]));
        changelog.unreadable(false);
        (restored_from(&status, 0), sent(&mut other))
    };
    // The snapshot chain alone (base, then checkpoint 2's delta).
    assert_eq!(restore(Arc::clone(&store), true), (RestoreSource::Snapshot, second.clone()));
    // The changelog alone.
    assert_eq!(restore(Arc::new(MemStore::new("g", 3)), false), (RestoreSource::Changelog, second.clone()));
    // A base written at a restore holds it too (section `O`): the restore above from the
    // changelog alone wrote one into its own store; so does one of a compacted chain.
    let fresh = Arc::new(MemStore::new("g", 3));
    restore(Arc::clone(&fresh), false);
    assert_eq!(restore(Arc::clone(&fresh), true), (RestoreSource::Snapshot, second.clone()));

    // Checkpoint 3 holds nothing: its tombstone empties the outbox for every later restore.
    feed_one_more(&mut st);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert!(sent(&mut st).is_empty());
    assert_eq!(restore(Arc::clone(&store), true), (RestoreSource::Snapshot, Vec::new()));
    assert_eq!(restore(Arc::new(MemStore::new("g", 3)), false), (RestoreSource::Changelog, Vec::new()));
    assert_eq!(restore(Arc::clone(&fresh), false).1, Vec::new(), "a base topped up with the tombstone");
}

/// One more event on shard 0 that sends nothing across partitions.
fn feed_one_more(st: &mut State) {
    let journey = Arc::clone(&st.journey);
    let shard = st.shards.get_mut(&0).unwrap();
    let line = format!(
        r#"{{"type":"track","event":"Ad Clicked","anonymousId":"{}","messageId":"m-x","timestamp":"2026-03-09T10:00:00Z"}}"#,
        anon_here(99)
    );
    shard.engine.apply(&codec::decode(line.as_bytes(), &journey, &Limits::default()).unwrap(), &mut Vec::new());
    shard.positions[0] += 1;
    assert_eq!(shard.engine.hold_identity_records(), 0);
}

/// Review finding (issue 16): a catch-up checkpoint (up to `commit_every_messages`) of sign-ups
/// whose users live on other partitions seals thousands of transfers and links, each of which
/// fits `message.max.bytes` alone. Written as one changelog record, the changelog producer
/// refused it, every later checkpoint of the shard failed with the sealed records growing, and
/// nothing was committed or sent again. The capture now writes the outbox in parts that each
/// fit: every part is one the real changelog producer enqueues, the checkpoint after a failed
/// one is durable and sends everything in order, and a restore from the changelog alone reads
/// every part back.
#[test]
fn the_outbox_record_fits_the_changelog_producers_message_max_bytes() {
    use rdkafka::producer::{BaseRecord, Producer};
    let store = Arc::new(MemStore::new("g", 3));
    let changelog = Arc::new(MemChangelog::new(TOPIC));
    let (mut st, _, _) = identity_state(Some(store), Some(Arc::clone(&changelog)));
    let rec = Recorder::default();
    st.take_shards(&shards(&[0]));
    let journey = Arc::clone(&st.journey);
    let shard = st.shards.get_mut(&0).expect("shard 0 is assigned");
    shard.engine.resolve_across(0, 3);
    for n in 0..4000u32 {
        let (user, anon) = (user_elsewhere(n), anon_here(n));
        let day = 1 + n % 27;
        for line in [
            format!(
                r#"{{"type":"track","event":"Whitepaper Downloaded","anonymousId":"{anon}","messageId":"m-{n}-1","timestamp":"2026-03-{day:02}T10:00:00Z"}}"#
            ),
            format!(
                r#"{{"type":"identify","userId":"{user}","anonymousId":"{anon}","messageId":"m-{n}-2","timestamp":"2026-03-{day:02}T11:00:00Z","traits":{{"email":"p{n}@example.com"}}}}"#
            ),
        ] {
            let ev = codec::decode(line.as_bytes(), &journey, &Limits::default()).expect("the events decode");
            shard.engine.apply(&ev, &mut Vec::new());
            shard.positions[0] = shard.positions[0].max(0) + 1;
            shard.engine.hold_identity_records();
        }
    }
    let (held, bytes) = shard.engine.outbox_size();
    assert!(
        bytes > crate::core::xpart::DEFAULT_MESSAGE_MAX_BYTES,
        "{held} records, {bytes} bytes: more than one message"
    );
    let mut all: Vec<_> = shard.engine.outbox().cloned().collect();
    let outbox_records = |changelog: &MemChangelog| {
        let records = changelog.records(0).into_iter();
        records.filter(|(k, _)| crate::core::engine::outbox::outbox_part(k).is_some()).collect::<Vec<_>>()
    };
    // The checkpoint fails (here: the changelog refuses its checkpoint record).
    changelog.refuse(Refuse::CheckpointRecord);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    changelog.refuse(Refuse::Nothing);
    assert!(sent(&mut st).is_empty() && rec.take().is_empty(), "a failed checkpoint sends and commits nothing");
    let first = outbox_records(&changelog);
    assert!(first.len() >= 2, "the outbox is written in parts: {}", first.len());
    // One more sign-up, then the next checkpoint: durable, committed, everything sent in order.
    all.extend(sign_up_elsewhere(&mut st, 5000, 28));
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert_eq!(rec.take().len(), 1, "the next checkpoint commits");
    assert_eq!(sent(&mut st), all, "the failed checkpoint's records go with the next, in order");
    let producer = kafka::changelog_producer(&st.settings.kafka, None, TOPIC, false).unwrap();
    for (key, value) in outbox_records(&changelog) {
        let Some(value) = value else { continue };
        let record = BaseRecord::<[u8], [u8]>::to(TOPIC).partition(0).key(&key[..]).payload(&value[..]);
        assert!(
            kafka::send(&producer, record),
            "an outbox part of {} bytes that the changelog producer refuses (message.max.bytes {})",
            value.len(),
            crate::core::xpart::DEFAULT_MESSAGE_MAX_BYTES
        );
    }
    producer.purge(rdkafka::producer::PurgeConfig::default().queue());
    // A restore from the changelog alone sends the whole outbox again, every part read back.
    let (mut other, _, status) = identity_state(Some(Arc::new(MemStore::new("g", 3))), Some(Arc::clone(&changelog)));
    other.take_shards(&shards(&[0]));
    assert_eq!(restored_from(&status, 0), RestoreSource::Changelog);
    assert_eq!(sent(&mut other), all, "a restore reads every part");
}

/// `microfunnel_identity_outbox_records`/`_bytes{shard}`: what the shard's outbox holds, set at
/// each capture and when its checkpoint settles: growing while checkpoints fail, the records
/// sent (not yet acknowledged) once one is durable, nothing after the next; the series go with
/// the shard.
#[test]
fn the_outbox_gauges_show_what_each_shard_holds_and_go_with_the_shard() {
    let store = Arc::new(MemStore::new("g", 3));
    let changelog = Arc::new(MemChangelog::new(TOPIC));
    let (mut st, metrics, _) = identity_state(Some(Arc::clone(&store)), Some(Arc::clone(&changelog)));
    let rec = Recorder::default();
    st.take_shards(&shards(&[0]));
    let gauges = |metrics: &Metrics| {
        let text = metrics.render();
        let value = |name: &str| {
            let prefix = format!("{name}{{shard=\"0\"}} ");
            text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.parse::<f64>().unwrap() as usize)
        };
        (value("microfunnel_identity_outbox_records"), value("microfunnel_identity_outbox_bytes"))
    };
    let held = |st: &State| Some(st.shards[&0].engine.outbox_size()).map(|(n, b)| (Some(n), Some(b)));
    sign_up_elsewhere(&mut st, 1, 2);
    store.fail_saves(true);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    let first = gauges(&metrics);
    assert_eq!(Some(first), held(&st));
    assert!(first.0 >= Some(2) && first.1 > Some(100), "{first:?}");
    sign_up_elsewhere(&mut st, 2, 3);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    let second = gauges(&metrics);
    assert_eq!(Some(second), held(&st));
    assert!(second.0 > first.0 && second.1 > first.1, "grows while checkpoints fail: {second:?}");
    store.fail_saves(false);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert_eq!(gauges(&metrics), second, "sent, not yet acknowledged");
    assert_eq!(sent(&mut st).len(), second.0.unwrap());
    feed_one_more(&mut st);
    st.checkpoint(&rec, CommitMode::Sync, deadline(), true).unwrap();
    assert_eq!(gauges(&metrics), (Some(0), Some(0)));
    st.give_up(&rec, &shards(&[0]));
    assert_eq!(gauges(&metrics), (None, None), "a revoked shard's series go");
}

/// A pipeline state resolving identities across three partitions with `[retention]` (so
/// shards publish their progress), `idle_advance_ms` as given, checkpoints every 200 ms
/// (renewals every second), persisting to a store and a changelog; durable outboxes recorded.
fn gated_state(idle_advance_ms: u64) -> State {
    let text = format!(
        "{}\n[identity]\nresolve = true\n[retention]\nafter_days = 10\n[retention.anonymous]\naware = 3\n",
        include_str!("../../deploy/journeys/b2b.toml")
    );
    let journey = Arc::new(Journey::from_toml_str(&text).unwrap());
    let mut s = settings();
    s.pipeline.idle_advance_ms = idle_advance_ms;
    s.pipeline.commit_interval_ms = 200;
    let store = Arc::new(MemStore::new("g", 3));
    let changelog = Arc::new(MemChangelog::new(TOPIC));
    let (mut st, _, _) = state_with(s, &journey, Some(store), Some(changelog));
    st.identity = Some(super::identity::IdentityInput {
        input: 2,
        name: "g.identity".to_string(),
        partitions: 3,
        message_max_bytes: crate::core::xpart::DEFAULT_MESSAGE_MAX_BYTES,
        renewal: crate::core::xpart::Renewal::for_commit_interval(Duration::from_millis(200)),
        history: idle_advance_ms == 0,
    });
    st.identity_sink = super::identity::IdentitySink::Recorded(Vec::new());
    st
}

/// [`gated_state`] holding shard 0, fed 200 generated events and read to its end.
fn fed_gated(idle_advance_ms: u64) -> State {
    let mut st = gated_state(idle_advance_ms);
    let events = stream(&Arc::clone(&st.journey), 200);
    st.take_shards(&shards(&[0]));
    feed(&mut st, 0, &events);
    caught_up(&mut st, 0);
    st
}

/// Shard `p`'s inputs read to their end (the high watermarks a fetch cached are its positions).
fn caught_up(st: &mut State, p: i32) {
    let shard = st.shards.get_mut(&p).unwrap();
    for t in 0..shard.positions.len() {
        let high = shard.positions[t].max(0);
        shard.positions[t] = high;
        shard.inputs.set_high(t, high);
    }
}

/// The `Progress` records of shard 0 sent (durable) since the last call: (watermark, idle).
fn progress_sent(st: &mut State) -> Vec<(Ts, bool)> {
    sent(st)
        .into_iter()
        .filter_map(|(_, r)| match r {
            crate::core::xpart::XRecord::Progress { partition: 0, watermark, idle, .. } => Some((watermark, idle)),
            _ => None,
        })
        .collect()
}

/// A checkpoint made durable and its outbox sent.
fn durable(st: &mut State) {
    st.checkpoint(&Recorder::default(), CommitMode::Sync, deadline(), true).unwrap();
}

/// An idle shard (history mode: `idle_advance_ms = 0`, inputs read to their end) renews its
/// idle report every renewal interval though it says nothing new (receivers let an idle
/// report lapse), and the renewal makes the shard due, so the next checkpoint, durable, sends
/// it: an idle shard with nothing else to checkpoint still checkpoints for its renewals.
#[test]
fn an_idle_shard_renews_its_report_and_the_renewal_leaves_with_the_next_checkpoint() {
    let mut st = fed_gated(0);
    // Its inputs quiet for more than a renewal interval (1 s here) since the feed.
    let t0 = Instant::now() + Duration::from_secs(2);
    st.publish_progress(t0);
    assert!(progress_sent(&mut st).is_empty(), "held in the outbox until a checkpoint is durable");
    durable(&mut st);
    let first = progress_sent(&mut st);
    assert_eq!(first.len(), 2, "one to each other partition: {first:?}");
    assert!(first.iter().all(|(_, idle)| *idle), "caught up in history mode: idle {first:?}");
    durable(&mut st);
    assert!(!st.shards[&0].due(), "the sent outbox dropped: nothing left to checkpoint");

    // Within the renewal interval nothing new: nothing sent, nothing due.
    st.publish_progress(t0 + Duration::from_millis(500));
    assert!(!st.shards[&0].due());
    durable(&mut st);
    assert!(progress_sent(&mut st).is_empty());
    // A renewal interval after the last: renewed though nothing changed; the shard is due.
    st.publish_progress(t0 + Duration::from_millis(1100));
    assert!(st.shards[&0].due(), "the renewal in the outbox makes the shard due");
    durable(&mut st);
    assert_eq!(progress_sent(&mut st), first, "the renewal left with the checkpoint");
    st.publish_progress(t0 + Duration::from_millis(1600));
    durable(&mut st);
    assert!(progress_sent(&mut st).is_empty());
    st.publish_progress(t0 + Duration::from_millis(2200));
    durable(&mut st);
    assert_eq!(progress_sent(&mut st), first, "and again");
}

/// `GET /shards`' `checkpoint.outbox` counts what the shard's outbox held at its last
/// checkpoint, and `outbox_progress` how many of those were `progress` records (which move no
/// person: an idle shard renews its report, so its outbox is seldom empty at a checkpoint).
#[test]
fn the_shard_status_counts_the_progress_records_of_its_outbox() {
    let mut st = gated_state(0);
    st.take_shards(&shards(&[0]));
    let links = sign_up_elsewhere(&mut st, 1, 2).len();
    caught_up(&mut st, 0);
    st.publish_progress(Instant::now() + Duration::from_secs(2));
    let progress = st.shards[&0]
        .engine
        .outbox()
        .filter(|(_, r)| matches!(r, crate::core::xpart::XRecord::Progress { .. }))
        .count();
    assert!(links > 0 && progress == 2, "{links} records, {progress} progress records held");
    durable(&mut st);
    let checkpoint = |st: &State| {
        let shard = st.status.snapshot().into_iter().find(|s| s.partition == 0).expect("shard 0's status");
        let c = shard.checkpoint.expect("a checkpoint");
        (c.outbox, c.outbox_progress)
    };
    assert_eq!(checkpoint(&st), ((links + progress) as u64, progress as u64));
    durable(&mut st);
    assert_eq!(checkpoint(&st), (0, 0), "sent and acknowledged");
}

/// With the idle advance on (`idle_advance_ms` > 0), a caught-up shard that holds prospects
/// is not idle: the wall clock moves its watermark (`advance_idle`), input older than that is
/// late there anyway, so it reports its watermark and republishes it as it moves (receivers
/// count it there, and its death leaves every horizon at its last report). A shard holding no
/// prospect keeps its clock and reports idle; so does every caught-up shard in history mode.
#[test]
fn a_shard_the_idle_advance_moves_reports_its_watermark_as_it_moves() {
    let mut st = fed_gated(60_000);
    let t0 = Instant::now();
    st.shards.get_mut(&0).unwrap().last_input = t0;
    let before = st.shards[&0].engine.watermark();
    st.publish_progress(t0);
    durable(&mut st);
    assert_eq!(progress_sent(&mut st), vec![(before, false); 2], "caught up, holding prospects: its watermark");

    // No input for two minutes: the wall clock moves its watermark, and each move is sent.
    let wall = Ts(before.0 + 30 * 86_400_000);
    for (k, s) in [(0, 120), (1, 121)] {
        let now = t0 + Duration::from_secs(s);
        let wall = Ts(wall.0 + k * 1000);
        st.advance_idle(Duration::from_secs(60), now, wall);
        let moved = st.shards[&0].engine.watermark();
        assert_eq!(moved, wall.minus(st.journey.allowed_lateness));
        st.publish_progress(now);
        durable(&mut st);
        assert_eq!(progress_sent(&mut st), vec![(moved, false); 2], "the move is republished");
    }

    // History mode: the same shard reports idle.
    let mut history = fed_gated(0);
    history.publish_progress(Instant::now() + Duration::from_secs(2));
    durable(&mut history);
    assert!(progress_sent(&mut history).iter().all(|(_, idle)| *idle));
    // An empty shard with the idle advance on: its clock does not move, it reports idle.
    let mut empty = gated_state(60_000);
    empty.take_shards(&shards(&[0]));
    empty.shards.get_mut(&0).unwrap().positions.iter_mut().for_each(|p| *p = 0);
    caught_up(&mut empty, 0);
    empty.publish_progress(t0);
    durable(&mut empty);
    let sent = progress_sent(&mut empty);
    assert!(sent.len() == 2 && sent.iter().all(|(_, idle)| *idle), "{sent:?}");
}

/// History mode (`idle_advance_ms = 0`): a shard read to its end whose own inputs had traffic
/// within the renewal interval is reading, not idle: it reports its watermark, so the others
/// (and, as a reading partition, every idle one) count at their watermarks while the records
/// that traffic caused are held in outboxes until checkpoints. Traffic trickling in live (each
/// partition read to its end at every tick) otherwise made every report idle and the horizon
/// unbounded, and people expired before the links their partitions' checkpoints still held.
/// Quiet for the renewal interval, it says idle.
#[test]
fn in_history_mode_a_shard_with_recent_input_reports_its_watermark_until_quiet_for_a_renewal() {
    let mut st = fed_gated(0);
    let t0 = Instant::now();
    st.shards.get_mut(&0).unwrap().last_input = t0;
    let watermark = st.shards[&0].engine.watermark();
    st.publish_progress(t0 + Duration::from_millis(500));
    durable(&mut st);
    assert_eq!(progress_sent(&mut st), vec![(watermark, false); 2], "input 0.5 s ago: reading");
    st.publish_progress(t0 + Duration::from_millis(1500));
    durable(&mut st);
    let sent = progress_sent(&mut st);
    assert!(sent.len() == 2 && sent.iter().all(|(_, idle)| *idle), "quiet for a renewal interval: idle {sent:?}");
}

/// `microfunnel_input_redelivered_total` ("input records
/// delivered again after they had been delivered or covered by the state ..., skipped on
/// arrival") is counted only on `arrive`'s merge path. With the merge off
/// (`pipeline.merge_buffer_messages = 0`) `arrive` hands every message to `handle`, which skips
/// a record below the shard's position (a `kafka.resume_rewind` start, a repeated fetch) without
/// counting it: the counter stays 0 however many records are skipped.
#[test]
fn a_redelivered_record_is_counted_with_the_merge_off_too() {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;
    let mut s = settings();
    s.pipeline.merge_buffer_messages = 0;
    let (mut st, metrics, _) = state_with(s, &journey(), None, None);
    st.take_shards(&shards(&[0]));
    st.shards.get_mut(&0).unwrap().positions[0] = 10;
    let topic = st.settings.kafka.input_topics[0].clone();
    let line = stream(&journey(), 1).remove(0);
    let msg = OwnedMessage::new(Some(line), None, topic, Timestamp::NotAvailable, 0, 5, None);
    // What `arrive` does with `merge_buffer_messages = 0`: `self.handle(&msg, batch, wall)`.
    st.handle(&msg, Instant::now(), Ts(0));
    assert_eq!(st.shards[&0].positions[0], 10, "skipped: below the position");
    assert_eq!(metrics.input_redelivered.get(), 1, "the skipped record is counted");
}

/// What a restore must give back of a shard's checkpoint: seq, input positions, the
/// event-time clock (watermark, confirmed clock), the shard meta as encoded (stats, funnel,
/// retention, kept cooldowns and handoffs; a hash of its bytes), the prospects (digest, count),
/// the identity map's resolution and the outbox held.
#[derive(Debug, PartialEq)]
struct Restorable {
    seq: u64,
    positions: Vec<i64>,
    watermark: Ts,
    max_event_time: Ts,
    meta: u64,
    digest: u64,
    prospects: usize,
    resolved: u64,
    identity: Vec<(String, crate::core::identity::IdKind, Ts, String)>,
    outbox: Vec<(u32, crate::core::xpart::XRecord)>,
}

fn restorable(st: &State, p: i32) -> Restorable {
    let shard = &st.shards[&p];
    let mut meta = Vec::new();
    shard.engine.encode_meta(&mut meta);
    let meta = {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        meta.hash(&mut h);
        h.finish()
    };
    Restorable {
        seq: shard.seq,
        positions: shard.positions.clone(),
        watermark: shard.engine.watermark(),
        max_event_time: shard.engine.max_event_time(),
        meta,
        digest: shard.engine.digest(),
        prospects: shard.engine.len(),
        resolved: shard.engine.resolved_digest(),
        identity: shard.engine.identity_map().expect("identities are resolved").resolution(),
        outbox: shard.engine.outbox().cloned().collect(),
    }
}

/// The trial's crash, in process: two instances, three partitions, history mode
/// (`idle_advance_ms = 0`), identity resolution across partitions with `[retention]`, one
/// shared changelog, a snapshot store each. Instance A holds every shard and checkpoints shard
/// 2 once (its local chain ends at seq 1); B takes shard 2 (restored from the changelog) and
/// checkpoints it 27 more times; B dies (nothing more written); A takes shard 2 back and
/// restores its stale snapshot topped up with B's 27 checkpoints. That restore must give the
/// latest checkpoint's clock, positions, meta and prospects exactly, as the changelog alone
/// does.
#[test]
fn a_stale_local_snapshot_topped_up_with_another_instances_checkpoints_is_the_latest_checkpoint() {
    let text = format!(
        "{}\n[identity]\nresolve = true\n[retention]\nafter_days = 10\n[retention.anonymous]\naware = 3\n",
        include_str!("../../deploy/journeys/b2b.toml")
    );
    let journey = Arc::new(Journey::from_toml_str(&text).unwrap());
    let events = stream(&journey, 2_900);
    let changelog = Arc::new(MemChangelog::new(TOPIC));
    let (store_a, store_b) = (Arc::new(MemStore::new("g", 3)), Arc::new(MemStore::new("g", 3)));
    let instance = |store: &Arc<MemStore>| {
        let mut s = settings();
        s.pipeline.idle_advance_ms = 0;
        s.pipeline.commit_interval_ms = 200;
        let (mut st, _, status) = state_with(s, &journey, Some(Arc::clone(store)), Some(Arc::clone(&changelog)));
        st.identity = Some(super::identity::IdentityInput {
            input: 2,
            name: "g.identity".to_string(),
            partitions: 3,
            message_max_bytes: crate::core::xpart::DEFAULT_MESSAGE_MAX_BYTES,
            renewal: crate::core::xpart::Renewal::for_commit_interval(Duration::from_millis(200)),
            history: true,
        });
        st.identity_sink = super::identity::IdentitySink::Recorded(Vec::new());
        (st, status)
    };
    let configure = |st: &mut State, p: i32| {
        let id = st.identity.take().expect("identity resolution is on");
        id.configure(&mut st.shards.get_mut(&p).expect("the shard is assigned").engine, p as u32);
        st.identity = Some(id);
    };

    // A reads every partition; shard 2's first checkpoint (seq 1) is on A's disk and in the log.
    let (mut a, _) = instance(&store_a);
    a.take_shards(&shards(&[0, 1, 2]));
    configure(&mut a, 2);
    feed(&mut a, 2, &events[..200]);
    durable(&mut a);
    assert_eq!(store_a.latest(2).0.expect("A's chain of shard 2").header().seq, 1);
    let at_a = restorable(&a, 2);
    // B joins and takes shard 2 from A.
    a.give_up(&Recorder::default(), &shards(&[2]));
    let (mut b, b_status) = instance(&store_b);
    b.take_shards(&shards(&[2]));
    assert_eq!(restored_from(&b_status, 2), RestoreSource::Changelog);
    assert_eq!(restorable(&b, 2), at_a, "B starts at A's checkpoint");
    configure(&mut b, 2);
    for chunk in events[200..].chunks(100) {
        feed(&mut b, 2, chunk);
        durable(&mut b);
    }
    let latest = restorable(&b, 2);
    assert_eq!(latest.seq, 28, "B checkpointed shard 2 27 times after A's");
    assert_ne!(latest.watermark, at_a.watermark, "the clock moved on at B");
    assert_eq!(store_a.latest(2).0.unwrap().header().seq, 1, "A's local snapshot is stale");
    drop(b); // SIGKILL: B writes nothing more.

    // A gets shard 2 back: its stale snapshot, topped up from the changelog.
    let (mut again, status) = instance(&store_a);
    again.take_shards(&shards(&[2]));
    assert_eq!(restored_from(&status, 2), RestoreSource::SnapshotAndChangelog);
    assert_eq!(restorable(&again, 2), latest, "stale snapshot + changelog = the latest checkpoint");
    // The changelog alone gives the same.
    let (mut alone, status) = instance(&Arc::new(MemStore::new("g", 3)));
    alone.take_shards(&shards(&[2]));
    assert_eq!(restored_from(&status, 2), RestoreSource::Changelog);
    assert_eq!(restorable(&alone, 2), latest, "the changelog alone = the latest checkpoint");
    // And so does the up-to-date snapshot the top-up wrote as a base (changelog unreadable).
    changelog.unreadable(true);
    let (mut snapshot, status) = instance(&store_a);
    snapshot.take_shards(&shards(&[2]));
    assert_eq!(restored_from(&status, 2), RestoreSource::Snapshot);
    assert_eq!(restorable(&snapshot, 2), latest, "the up-to-date snapshot = the latest checkpoint");
}

/// librdkafka keeps a partition's cached watermarks across an unassign and a later assign: a
/// shard restored from a later checkpoint (another instance read on) has a position past the
/// high watermark this instance cached when it last read the partition. That input is not
/// caught up (the merge waits for its first fetch rather than taking the other inputs'
/// backlog first, which would make its records late); at the watermark, or with the cache
/// refreshed past the position, it is as before.
#[test]
fn an_input_whose_position_is_past_the_cached_high_watermark_is_not_caught_up() {
    let mut inputs = super::inputs::Inputs::new(2);
    inputs.set_high(0, 10);
    assert!(!inputs.caught_up(0, 20), "position 20 past a cached high watermark of 10: the cache is stale");
    assert!(inputs.caught_up(0, 10), "at the high watermark: caught up");
    assert!(!inputs.caught_up(0, 5), "behind it: not caught up");
    inputs.set_high(0, 20);
    assert!(inputs.caught_up(0, 20), "refreshed by a fetch: caught up");
    assert!(!inputs.caught_up(1, 0), "never fetched (-1): not caught up");
}

/// Why `tests/support`'s `resolved_at_rest` reads a checkpoint at least two after the `seq`
/// it listed once every horizon was seen settled: a shard's status `seq` moves when a
/// checkpoint *completes* (`poll_checkpoint`), and the loop captures a checkpoint
/// (`checkpoint`) before `publish_progress` in the same iteration, where a shard in history
/// mode turns idle after a quiet renewal interval, its horizon becomes unbounded and the
/// expiries it held fire (people whose identifiers are all homed on the shard expire without
/// a `Forget`: nothing in the outbox shows it). The next checkpoint to complete was captured
/// before the expiries; the one after it was captured after them (the capture takes the
/// engine's state then).
#[test]
fn the_first_checkpoint_to_complete_after_the_horizons_settled_can_predate_their_expiries() {
    let mut st = gated_state(0);
    st.take_shards(&shards(&[0]));
    let t0 = Instant::now();
    st.shards.get_mut(&0).unwrap().last_input = t0;
    // Configured and gated; reading (input just now): nothing expires by sweep until every
    // partition reported.
    st.publish_progress(t0);
    // People whose identifiers are all homed on partition 0 (anonymous visitors that never
    // identify): their expiry sends no `Forget`.
    let journey = Arc::clone(&st.journey);
    let events: Vec<Vec<u8>> = stream(&journey, 4000)
        .into_iter()
        .filter(|l| {
            let ev = codec::decode(l, &journey, &Limits::default()).expect("generated events decode");
            crate::core::xpart::home(&ev.prospect, 3) == 0 && ev.linked.is_none()
        })
        .collect();
    feed(&mut st, 0, &events);
    caught_up(&mut st, 0);
    // Partitions 1 and 2 are idle (they report so); while shard 0 reads they count at their
    // watermarks (history mode), so its expiries wait.
    let renewal = st.identity.as_ref().unwrap().renewal;
    // Their idle reports, received (and renewed) at `at`.
    let reports = |st: &mut State, at: Instant| {
        let engine = &mut st.shards.get_mut(&0).unwrap().engine;
        engine.progress_clock(at, renewal);
        for q in [1u32, 2] {
            let rec = crate::core::xpart::XRecord::Progress {
                partition: q,
                watermark: Ts(0),
                seen: crate::core::xpart::UNBOUNDED,
                idle: true,
                asking: false,
            };
            engine.apply_identity_record(rec, &mut Vec::new());
        }
    };
    reports(&mut st, t0 + Duration::from_millis(100));
    st.publish_progress(t0 + Duration::from_millis(100));
    durable(&mut st);
    durable(&mut st);
    let waiting = st.shards[&0].engine.expiries_waiting();
    assert!(waiting > 0, "expiries wait for the horizon");
    let seq = |st: &State| st.status.snapshot().into_iter().find(|s| s.partition == 0).and_then(|s| s.checkpoint);

    // One loop iteration: a checkpoint is captured (the renewal or anything else made the shard
    // due), then publish_progress: quiet for a renewal interval, shard 0 says idle, the horizon
    // is unbounded and the held expiries fire.
    st.shards.get_mut(&0).unwrap().positions[0] += 1; // due: one more input message, read to its end
    caught_up(&mut st, 0);
    let before = format!("{:016x}", digest(&st, 0));
    st.checkpoint(&Recorder::default(), CommitMode::Async, deadline(), false).unwrap();
    reports(&mut st, t0 + Duration::from_secs(3));
    st.publish_progress(t0 + Duration::from_secs(3));
    let e = &st.shards[&0].engine;
    assert_eq!(e.expiry_horizon(), Some(crate::core::xpart::UNBOUNDED), "every horizon unbounded");
    assert_eq!(e.expiries_waiting(), 0, "no expiry waiting: the gauges say settled");
    let after = format!("{:016x}", digest(&st, 0));
    assert_ne!(before, after, "the released expiries changed the state");
    // What resolved_at_rest records after horizons_settled returned.
    let listed = seq(&st).expect("a checkpoint").seq;
    // The next iteration collects the checkpoint in flight.
    st.poll_checkpoint(&Recorder::default(), CommitMode::Async, Some(deadline())).unwrap();
    let c = seq(&st).expect("a checkpoint");
    assert_eq!(c.seq, listed + 1);
    assert_eq!(c.outbox - c.outbox_progress, 0, "no record that moves people shows the expiries: {c:?}");
    assert_eq!(c.digest.as_deref(), Some(before.as_str()), "captured before the expiries");
}

/// A stale cache the position does not pass: a shard moved back to an instance that read its
/// partition to the end (cached high watermark 100, its position 100 at the revoke), restored
/// from the other instance's checkpoint at that same position (the other instance held the
/// partition while 400 more records arrived, and died before a checkpoint covered any), would
/// be caught up at the old end and the merge would take the other inputs' and the identity
/// topic's backlog first, making its own records late. The high watermark asked of the broker
/// at the assignment (500) is a floor the cache counts at least; once the cache passes it,
/// it alone counts.
#[test]
fn a_shard_restored_at_its_partitions_old_end_is_not_caught_up_below_the_end_asked_at_the_assignment() {
    let mut inputs = super::inputs::Inputs::new(3);
    // The cache from this instance's earlier read, before the partition's first fetch.
    inputs.set_high(0, 100);
    let restored = 100;
    assert!(inputs.caught_up(0, restored), "without the floor the stale cache says caught up");
    inputs.set_floor(0, 500);
    assert!(!inputs.caught_up(0, restored), "the partition's end when assigned (500): a backlog");
    assert!(inputs.caught_up(0, 500), "read to it: caught up");
    inputs.set_high(0, 620);
    assert!(!inputs.caught_up(0, 500), "a fetch cached more: the cache counts");
    assert!(inputs.caught_up(0, 620));
}

/// `progress` records move no person directly, yet they move the receivers' expiry horizons,
/// and a moved horizon releases the expiries it held: only once every horizon is settled do
/// they change nothing (README `GET /shards`' `outbox_progress`; the identity tests' "at
/// rest"). Here shard 1's checkpoint holds nothing but `progress` records (`outbox ==
/// outbox_progress`), and their delivery to shard 0 makes people expire there.
#[test]
fn an_outbox_of_progress_records_only_still_releases_expiries_at_the_receivers() {
    let mut st = gated_state(0);
    st.take_shards(&shards(&[0, 1]));
    let t0 = Instant::now();
    for p in [0, 1] {
        st.shards.get_mut(&p).unwrap().last_input = t0;
    }
    st.publish_progress(t0);
    let journey = Arc::clone(&st.journey);
    // Events of people whose identifiers are all homed on partition `p`: no identity records.
    let homed = |p: u32| -> Vec<Vec<u8>> {
        stream(&journey, 4000)
            .into_iter()
            .filter(|l| {
                let ev = codec::decode(l, &journey, &Limits::default()).expect("generated events decode");
                crate::core::xpart::home(&ev.prospect, 3) == p && ev.linked.is_none()
            })
            .collect()
    };
    feed(&mut st, 0, &homed(0));
    caught_up(&mut st, 0);
    caught_up(&mut st, 1);
    // Partition 2 (another instance) reports far ahead; the reports go round.
    let far = Ts(i64::MAX / 2);
    let deliver = |st: &mut State, records: Vec<(u32, crate::core::xpart::XRecord)>| {
        let two = crate::core::xpart::XRecord::Progress {
            partition: 2,
            watermark: far,
            seen: far,
            idle: false,
            asking: false,
        };
        for (p, rec) in records.into_iter().chain([(0, two.clone()), (1, two)]) {
            if let Some(shard) = st.shards.get_mut(&(p as i32)) {
                shard.engine.apply_identity_record(rec, &mut Vec::new());
            }
        }
    };
    for k in 1..4 {
        st.publish_progress(t0 + Duration::from_millis(10 * k));
        durable(&mut st);
        durable(&mut st);
        let records = sent(&mut st);
        deliver(&mut st, records);
    }
    let waiting = st.shards[&0].engine.expiries_waiting();
    assert!(waiting > 0, "shard 0's expiries wait for shard 1, which has read nothing");
    let held = st.shards[&0].engine.len();

    // Shard 1 reads its inputs (none of them sends an identity record) and reports progress.
    feed(&mut st, 1, &homed(1));
    caught_up(&mut st, 1);
    st.publish_progress(t0 + Duration::from_millis(50));
    durable(&mut st);
    let c = st.status.snapshot().into_iter().find(|s| s.partition == 1).and_then(|s| s.checkpoint).unwrap();
    assert!(c.outbox > 0 && c.outbox == c.outbox_progress, "only progress records: {c:?}");
    durable(&mut st);
    let records: Vec<_> = sent(&mut st).into_iter().filter(|(p, _)| *p == 0).collect();
    assert!(records.iter().all(|(_, r)| matches!(r, crate::core::xpart::XRecord::Progress { .. })));
    let shard0 = &mut st.shards.get_mut(&0).unwrap().engine;
    for (_, rec) in records {
        shard0.apply_identity_record(rec, &mut Vec::new());
    }
    let (now_waiting, now_held) = (shard0.expiries_waiting(), shard0.len());
    assert!(
        now_waiting < waiting && now_held < held,
        "progress records alone released expiries at shard 0: {waiting} -> {now_waiting} waiting, {held} -> {now_held} held"
    );
}
