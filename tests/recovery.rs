//! Fault tests: kill the service anywhere, restart it, move shards between instances, damage its
//! snapshots; the final per-prospect state must equal what an uninterrupted `replay` computes
//! (the oracle), and every alert the oracle emits must have been emitted.
//!
//! Each test generates its own stream (`gen`, ~200k events over ~24k prospects, Segment and
//! canonical, duplicates, out-of-order and malformed lines) into one input topic of 4 partitions,
//! keyed by prospect. The oracle is `replay --partitions 4 --no-advance --digest` over the same
//! lines (the same seed): one engine per partition, in partition order, time advanced by events
//! only, which is what the service does with `pipeline.idle_advance_ms = 0`. The service reports
//! each shard's last checkpoint (offsets covered and state digest) at `GET /shards`; a run is
//! finished when the checkpoints cover every input message.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use microfunnel::config::Settings;
use serde_json::Value;
use support::*;

const PARTITIONS: i32 = 4;

/// The fault tests run one at a time: each drives several service processes and a paced
/// producer, and on 2 cores running them together only makes each slower.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}
const PROSPECTS: &str = "24000";
/// How long a whole run may take (debug build, rebalances after kills included).
const FINISH: Duration = Duration::from_secs(300);

/// One test's topics: a single input topic (so a shard's input order is the file's order),
/// output topics, a group.
fn setup_one_topic(test: &str) -> Settings {
    let mut s = settings(test);
    s.kafka.input_topics = vec![format!("{}-events", s.kafka.group_id)];
    s.kafka.partitions = PARTITIONS;
    create_topics(&s);
    s
}

/// The stream's lines, written by `gen` to a file (the oracle reads it).
fn generate(seed: u64) -> (PathBuf, usize) {
    let file = std::env::temp_dir().join(format!("{}.jsonl", unique("recovery-stream")));
    let st = bin()
        .args(["gen", "--prospects", PROSPECTS, "--seed", &seed.to_string(), "--quiet", "--out"])
        .arg(&file)
        .status()
        .unwrap();
    assert!(st.success());
    let n = std::fs::read_to_string(&file).unwrap().lines().count();
    assert!(n >= 200_000, "a stream of at least 200k events: {n}");
    (file, n)
}

/// The same lines into the input topic, paced at `rate` events/s (0 = as fast as possible).
fn feed(s: &Settings, seed: u64, rate: u32) -> Child {
    let topic = &s.kafka.input_topics[0];
    bin()
        .args(["gen", "--prospects", PROSPECTS, "--seed", &seed.to_string(), "--quiet", "--brokers", brokers()])
        .args(["--web-topic", topic, "--crm-topic", topic, "--rate", &rate.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

struct Oracle {
    digest: u64,
    alerts: BTreeSet<String>,
}

fn oracle(file: &Path) -> Oracle {
    let out = bin()
        .args(["replay", "--partitions", &PARTITIONS.to_string(), "--no-advance", "--digest"])
        .arg(file)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut alerts = BTreeSet::new();
    let mut digest = None;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        match v["kind"].as_str() {
            Some("hot_lead") => {
                alerts.insert(v["alert_id"].as_str().unwrap().to_string());
            }
            Some("digest") if v.get("partition").is_none() => {
                digest = Some(u64::from_str_radix(v["digest"].as_str().unwrap(), 16).unwrap());
            }
            _ => {}
        }
    }
    assert!(alerts.len() > 100, "the stream raises alerts: {}", alerts.len());
    Oracle { digest: digest.expect("a total digest line"), alerts }
}

/// What every fault test starts from: its topics, the stream in the input topic's future
/// (`feed` produces it), the oracle of that stream, a snapshot directory and a log file.
struct Case {
    s: Settings,
    seed: u64,
    total: usize,
    oracle: Oracle,
    state: PathBuf,
    log: PathBuf,
}

fn case(name: &str, seed: u64) -> Case {
    let s = setup_one_topic(name);
    let (file, total) = generate(seed);
    let oracle = oracle(&file);
    // 100 MB per case: only the oracle reads it.
    std::fs::remove_file(&file).unwrap();
    let state = state_dir(&unique(&format!("{name}-state")));
    let log = std::env::temp_dir().join(format!("{}.log", unique(name)));
    Case { s, seed, total, oracle, state, log }
}

/// One service process.
struct Instance {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
}

impl Instance {
    fn start(s: &Settings, state: &Path, log: &Path, changelog: bool) -> Instance {
        Self::start_as(s, &s.kafka.group_id, state, log, changelog, "0.3")
    }

    /// Starts an instance in consumer group `group`, its state under `state/<group>/`, the
    /// changelog topic named after the test's own group.
    /// `rewrite_share`: `checkpoint.rewrite_share` (low: bases rewritten from base + deltas often).
    fn start_as(s: &Settings, group: &str, state: &Path, log: &Path, changelog: bool, rewrite_share: &str) -> Instance {
        let port = free_port();
        let logfile = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = bin()
            .args(["run", "--config", "deploy/config/local.toml"])
            .env("MICROFUNNEL__KAFKA__BROKERS", brokers())
            .env("MICROFUNNEL__KAFKA__GROUP_ID", group)
            .env("MICROFUNNEL__CHECKPOINT__CHANGELOG_TOPIC", format!("{}-changelog", s.kafka.group_id))
            .env("MICROFUNNEL__KAFKA__INPUT_TOPICS", &s.kafka.input_topics[0])
            .env("MICROFUNNEL__KAFKA__TOPICS__HOT_LEADS", &s.kafka.topics.hot_leads)
            .env("MICROFUNNEL__KAFKA__TOPICS__JOURNEY_EVENTS", &s.kafka.topics.journey_events)
            .env("MICROFUNNEL__KAFKA__TOPICS__FUNNEL", &s.kafka.topics.funnel)
            .env("MICROFUNNEL__KAFKA__TOPICS__DEAD_LETTER", &s.kafka.topics.dead_letter)
            .env("MICROFUNNEL__KAFKA__SESSION_TIMEOUT_MS", "6000")
            .env("MICROFUNNEL__HTTP__LISTEN", format!("127.0.0.1:{port}"))
            .env("MICROFUNNEL__PIPELINE__IDLE_ADVANCE_MS", "0")
            .env("MICROFUNNEL__PIPELINE__COMMIT_INTERVAL_MS", "300")
            .env("MICROFUNNEL__PIPELINE__FUNNEL_INTERVAL_MS", "2000")
            .env("MICROFUNNEL__CHECKPOINT__DIR", state)
            .env("MICROFUNNEL__CHECKPOINT__CHANGELOG", changelog.to_string())
            .env("MICROFUNNEL__CHECKPOINT__REWRITE_SHARE", rewrite_share)
            .env("MICROFUNNEL__LOG__LEVEL", "info,librdkafka=warn")
            .stdout(Stdio::null())
            .stderr(logfile)
            .spawn()
            .unwrap();
        Instance { child: Some(child), port, log: log.to_path_buf() }
    }

    fn shards(&self) -> Option<Vec<Value>> {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        let (code, body) = http_get(([127, 0, 0, 1], self.port).into(), "/shards");
        (code == 200)
            .then(|| serde_json::from_str::<Value>(&body).ok())?
            .map(|v| v["shards"].as_array().cloned().unwrap_or_default())
    }

    fn ready(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            && http_get(([127, 0, 0, 1], self.port).into(), "/readyz").0 == 200
    }

    fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    fn sigterm(&mut self) {
        let mut c = self.child.take().expect("running");
        let st = Command::new("kill").args(["-TERM", &c.id().to_string()]).status().unwrap();
        assert!(st.success());
        let started = Instant::now();
        let status = loop {
            if let Some(st) = c.try_wait().unwrap() {
                break st;
            }
            assert!(started.elapsed() < Duration::from_secs(40), "no exit within the shutdown deadline");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0), "graceful stop exits 0; log: {}", self.log.display());
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Progress of a set of instances: messages covered by checkpoints, and the summed digest
/// once every partition's checkpoint is reported.
fn progress(instances: &[&Instance]) -> (i64, Option<u64>, Vec<Value>) {
    let mut covered = 0;
    let mut digest = 0u64;
    let mut seen = BTreeSet::new();
    let mut all = Vec::new();
    for i in instances {
        for sh in i.shards().unwrap_or_default() {
            let p = sh["partition"].as_i64().unwrap();
            if let Some(c) = sh["checkpoint"].as_object() {
                covered += c["positions"].as_object().unwrap().values().map(|v| v.as_i64().unwrap()).sum::<i64>();
                if let Some(d) = c["digest"].as_str() {
                    digest = digest.wrapping_add(u64::from_str_radix(d, 16).unwrap());
                    seen.insert(p);
                }
            }
            all.push(sh);
        }
    }
    (covered, (seen.len() == PARTITIONS as usize).then_some(digest), all)
}

/// Waits until the instances' checkpoints cover all `total` messages; returns the state digest.
fn finish(instances: &[&Instance], total: usize) -> (u64, Vec<Value>) {
    let deadline = Instant::now() + FINISH;
    loop {
        let (covered, digest, shards) = progress(instances);
        if covered == total as i64
            && let Some(d) = digest
        {
            return (d, shards);
        }
        assert!(Instant::now() < deadline, "not finished within {FINISH:?}: {covered} of {total} covered; {shards:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every alert on the hot-leads topic once the oracle's are all there (or, failing, after 30 s):
/// (distinct ids, records).
fn alerts_emitted(s: &Settings, oracle: &Oracle) -> (BTreeSet<String>, usize) {
    let give_up = Instant::now() + Duration::from_secs(30);
    let checked = std::cell::Cell::new(0);
    let read = read_until(&s.kafka.topics.hot_leads, "every oracle alert", |r| {
        // Parsing every record on every poll would be quadratic: check only once enough arrived
        // (extras can only be repeats), and then at most once per 500 new records.
        if Instant::now() > give_up {
            return true;
        }
        if r.len() < oracle.alerts.len() || r.len() < checked.get() {
            return false;
        }
        checked.set(r.len() + 500);
        let ids: BTreeSet<String> =
            r.iter().map(|o| o.json()["alert_id"].as_str().unwrap_or_default().to_string()).collect();
        oracle.alerts.is_subset(&ids)
    });
    let ids: BTreeSet<String> = read.iter().map(|o| o.json()["alert_id"].as_str().unwrap().to_string()).collect();
    let missing: Vec<&String> = oracle.alerts.difference(&ids).take(5).collect();
    let extra: Vec<&String> = ids.difference(&oracle.alerts).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "alerts: {} oracle, {} emitted; {} missing (e.g. {missing:?}), {} not in the oracle (e.g. {extra:?})",
        oracle.alerts.len(),
        ids.len(),
        oracle.alerts.difference(&ids).count(),
        ids.difference(&oracle.alerts).count()
    );
    (ids, read.len())
}

/// A snapshot write is in progress: a temp file ending in `suffix` (`.snap.tmp`: a base,
/// written at a restore or rewritten from base + deltas; `.delta.tmp`: a checkpoint's delta)
/// written in the last half second.
fn snapshot_tmp_exists(state: &Path, suffix: &str) -> bool {
    fn walk(d: &Path, suffix: &str) -> bool {
        std::fs::read_dir(d).is_ok_and(|rd| {
            rd.filter_map(Result::ok).any(|e| {
                let p = e.path();
                let fresh = || {
                    e.metadata()
                        .and_then(|m| m.modified())
                        .is_ok_and(|t| t.elapsed().is_ok_and(|a| a < Duration::from_millis(500)))
                };
                if p.is_dir() { walk(&p, suffix) } else { p.to_string_lossy().ends_with(suffix) && fresh() }
            })
        })
    }
    walk(state, suffix)
}

fn log_count(log: &Path, needle: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches(needle).count()
}

#[test]
fn an_uninterrupted_run_equals_the_oracle() {
    let _serial = serial();
    let Case { s, seed, total, oracle, state, log } = case("baseline", 55);
    let mut feeder = feed(&s, seed, 0);
    let inst = Instance::start(&s, &state, &log, true);
    assert!(feeder.wait().unwrap().success());
    let (digest, shards) = finish(&[&inst], total);
    assert_eq!(digest, oracle.digest, "the service's state equals the replay's (log: {})", log.display());
    let (ids, records) = alerts_emitted(&s, &oracle);
    assert_eq!(records, ids.len(), "no fault, no repeat");

    // Bases were rewritten from base + deltas while the service consumed, and each shard's
    // newest chain on disk is the state of its last checkpoint.
    let rewrites = log_count(&log, "snapshot base rewritten from base + deltas");
    assert!(rewrites >= PARTITIONS as usize, "bases rewritten while consuming: {rewrites}");
    let journey = std::sync::Arc::new(
        microfunnel::core::Journey::from_toml_str(include_str!("../deploy/journeys/b2b.toml")).unwrap(),
    );
    for sh in &shards {
        let p = sh["partition"].as_i64().unwrap();
        let dir = state.join(&s.kafka.group_id).join(format!("shard-{p:04}"));
        let (chain, rejected) = microfunnel::store::newest_chain_in(&dir);
        assert!(rejected.is_empty(), "shard {p}: {rejected:?}");
        let chain = chain.unwrap_or_else(|| panic!("shard {p} has a chain"));
        assert!(chain.base.header.seq > 0, "shard {p}: a rewritten base");
        let engine = chain.engine(std::sync::Arc::clone(&journey)).unwrap();
        let want = sh["checkpoint"]["digest"].as_str().unwrap();
        assert_eq!(format!("{:016x}", engine.digest()), want, "shard {p}: base + deltas = the last checkpoint");
    }
}

#[test]
fn kill_9_anywhere_loses_nothing() {
    let _serial = serial();
    let Case { s, seed, total, oracle, state, log } = case("kill9", 101);
    let mut feeder = feed(&s, seed, 20_000);

    // A fixed pseudo-random schedule: some kills land during start-up (group join, restore),
    // others while consuming, where a checkpoint is written every 300 ms.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut rand = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut kills, mut during_startup, mut covered_at_kills) = (0, 0, Vec::new());
    let (mut during_delta, mut during_base) = (0, 0);
    // Tansu 0.6 never expires the group member of a killed process (Apache Kafka does after
    // `session.timeout.ms`), and ignores static membership, so its partitions would stay with a
    // ghost. Each restart therefore joins a group of its own; its state directory is the same
    // one (`state/<group>` links to it) and the changelog topic is the same. The service never
    // relies on the group's committed offsets to resume (it seeks to its state's offsets), so
    // this is the same recovery path; it is even stricter, as no committed offset can help.
    let shared = state.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    let mut generation = 0;
    let mut next_group = || {
        generation += 1;
        let g = format!("{}-g{generation}", s.kafka.group_id);
        std::os::unix::fs::symlink(&shared, state.join(&g)).unwrap();
        g
    };
    while kills < 12 {
        // A base rewrite after every checkpoint: kills aimed at one land in one.
        let mut inst = Instance::start_as(&s, &next_group(), &state, &log, true, "0");
        // Every fourth kill aims at start-up (joining the group, restoring), the others anywhere.
        let delay = Duration::from_millis(if kills % 4 == 1 { 50 + rand() % 300 } else { 300 + rand() % 6_000 });
        let until = Instant::now() + delay;
        // Every third kill, and the first two (while the input still flows), wait for a
        // snapshot write, if one is seen in time: the first a delta, the others a base (a
        // rewrite from base + deltas, or the base a restore writes; a base of this size is
        // written in tens of milliseconds, so one aim in a few lands inside it).
        let aim = (kills % 3 == 2 || kills < 2).then_some(if kills == 0 { ".delta.tmp" } else { ".snap.tmp" });
        let until = if aim.is_some() { until + Duration::from_secs(10) } else { until };
        // Readiness and progress are sampled every 50 ms while waiting, not between seeing the
        // aimed file and the kill: a write (a base of this size takes tens of milliseconds)
        // must still be under way when the kill lands.
        let (mut ready, mut covered, mut sampled) = (false, 0, None::<Instant>);
        loop {
            if sampled.is_none_or(|t| t.elapsed() >= Duration::from_millis(50)) {
                ready = inst.ready();
                covered = progress(&[&inst]).0;
                sampled = Some(Instant::now());
            }
            if Instant::now() >= until || aim.is_some_and(|a| snapshot_tmp_exists(&state, a)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let (delta, base) = (snapshot_tmp_exists(&state, ".delta.tmp"), snapshot_tmp_exists(&state, ".snap.tmp"));
        inst.kill9();
        covered_at_kills.push(covered);
        kills += 1;
        during_startup += usize::from(!ready);
        during_delta += usize::from(delta);
        during_base += usize::from(base);
    }
    let last = Instance::start_as(&s, &next_group(), &state, &log, true, "0.3");
    assert!(feeder.wait().unwrap().success(), "all input produced");
    let (digest, shards) = finish(&[&last], total);
    assert_eq!(digest, oracle.digest, "final per-prospect state equals the uninterrupted replay");
    let (ids, records) = alerts_emitted(&s, &oracle);
    let restore_secs = shards.iter().map(|s| s["restore_seconds"].as_f64().unwrap()).fold(0.0, f64::max);
    eprintln!(
        "kill -9 loop: {kills} kills ({during_startup} during start-up, {during_delta} during a delta write, \
         {during_base} during a base write), \
         covered at kills {covered_at_kills:?} of {total}; alerts {} distinct, {} records ({} duplicates); \
         last restore {restore_secs:.3} s; snapshot-unusable reports {}",
        ids.len(),
        records,
        records - ids.len(),
        log_count(&log, "snapshot unusable")
    );
    assert!(
        covered_at_kills.iter().any(|&c| c > 0 && c < total as i64),
        "kills landed mid-stream: {covered_at_kills:?}"
    );
    assert!(during_startup > 0, "some kills hit start-up");
    // Base writes (a rewrite of a whole shard) last long enough to be hit reliably; a delta
    // write lasts milliseconds, so whether a kill lands in one is reported, not required.
    assert!(during_base > 0, "kills landed in a snapshot write: {during_delta} delta, {during_base} base");
    assert_eq!(digest, oracle.digest, "final per-prospect state equals the uninterrupted replay");
    assert_eq!(ids, oracle.alerts, "every oracle alert emitted; extras only as repeats of the same alert_id");
}

#[test]
fn graceful_restarts_give_the_same_state_and_no_duplicate_alert() {
    let _serial = serial();
    let Case { s, seed, total, oracle, state, log } = case("graceful", 202);
    let mut feeder = feed(&s, seed, 25_000);
    let mut covered = Vec::new();
    for _ in 0..4 {
        let mut inst = Instance::start(&s, &state, &log, true);
        wait_until(Duration::from_secs(60), "ready", || inst.ready());
        let from = progress(&[&inst]).0;
        wait_until(FINISH, "progress", || progress(&[&inst]).0 > from + 20_000 || progress(&[&inst]).0 == total as i64);
        covered.push(progress(&[&inst]).0);
        inst.sigterm();
    }
    let last = Instance::start(&s, &state, &log, true);
    assert!(feeder.wait().unwrap().success());
    let (digest, shards) = finish(&[&last], total);
    assert_eq!(digest, oracle.digest, "final per-prospect state equals the uninterrupted replay");
    let (ids, records) = alerts_emitted(&s, &oracle);
    eprintln!(
        "graceful restarts: 4 stops at {covered:?} of {total}; alerts {} records, {} distinct; restored from {:?}",
        records,
        ids.len(),
        shards.iter().map(|s| s["restored_from"].as_str().unwrap().to_string()).collect::<Vec<_>>()
    );
    assert!(covered.iter().any(|&c| c < total as i64), "stops landed mid-stream: {covered:?}");
    assert_eq!(digest, oracle.digest);
    assert_eq!(ids, oracle.alerts);
    assert_eq!(records, oracle.alerts.len(), "after graceful stops nothing is emitted twice");
}

#[test]
fn a_stopped_instances_shards_restore_on_the_other_from_the_changelog() {
    let _serial = serial();
    let Case { s, seed, total, oracle, state: state_a, log } = case("handover", 303);
    let state_b = state_dir(&unique("handover-b"));
    let mut feeder = feed(&s, seed, 25_000);
    let mut a = Instance::start(&s, &state_a, &log, true);
    // B joins only once A holds every shard, so B never held (nor snapshotted) the partitions
    // A keeps: whatever B gets of them at the handover can only come from the changelog.
    wait_until(Duration::from_secs(60), "A holds every shard", || {
        a.ready() && a.shards().unwrap_or_default().len() == PARTITIONS as usize
    });
    let b = Instance::start(&s, &state_b, &log, true);
    wait_until(Duration::from_secs(60), "both instances hold shards", || {
        let (na, nb) = (a.shards().unwrap_or_default().len(), b.shards().unwrap_or_default().len());
        na > 0 && nb > 0 && na + nb == PARTITIONS as usize
    });
    let a_parts: BTreeSet<i64> = a.shards().unwrap().iter().map(|s| s["partition"].as_i64().unwrap()).collect();
    wait_until(FINISH, "A checkpoints some progress", || progress(&[&a]).0 > 20_000);
    a.sigterm();
    assert!(feeder.wait().unwrap().success());
    let (digest, shards) = finish(&[&b], total);
    assert_eq!(digest, oracle.digest, "final per-prospect state equals the uninterrupted replay");
    let from: BTreeMap<i64, String> = shards
        .iter()
        .map(|s| (s["partition"].as_i64().unwrap(), s["restored_from"].as_str().unwrap().to_string()))
        .collect();
    let (ids, records) = alerts_emitted(&s, &oracle);
    eprintln!(
        "handover: A held {a_parts:?}; B restored {from:?}; restore seconds {:?}; alerts {records} records, {} distinct",
        shards.iter().map(|s| s["restore_seconds"].as_f64().unwrap()).collect::<Vec<_>>(),
        ids.len()
    );
    for p in &a_parts {
        assert_eq!(
            from[p], "changelog",
            "A's partition {p} restored on B from the changelog (B has no snapshot of it)"
        );
    }
    assert_eq!(digest, oracle.digest);
    assert_eq!(ids, oracle.alerts);
}

#[test]
fn damaged_or_missing_snapshots_are_detected_and_recovery_reaches_the_same_state() {
    let _serial = serial();
    let Case { s, seed, total, oracle, state, log } = case("corrupt", 404);
    // Changelog off: recovery must come from the local files alone (and replay).
    let mut feeder = feed(&s, seed, 30_000);
    let mut first = Instance::start(&s, &state, &log, false);
    wait_until(FINISH, "several checkpoints per shard", || {
        first.shards().unwrap_or_default().iter().filter(|s| s["checkpoint"]["seq"].as_u64().unwrap_or(0) >= 3).count()
            == PARTITIONS as usize
            && progress(&[&first]).0 > 30_000
    });
    first.sigterm();
    let shard_dir = |p: i32| state.join(&s.kafka.group_id).join(format!("shard-{p:04}"));
    let newest = |p: i32| {
        let mut files: Vec<PathBuf> = std::fs::read_dir(shard_dir(p))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|f| f.to_string_lossy().ends_with(".snap"))
            .collect();
        files.sort();
        files
    };
    for p in 0..PARTITIONS {
        assert!(newest(p).len() >= 2, "shard {p} keeps previous snapshots");
    }
    // Shard 0: truncated; shard 1: a flipped byte; shard 2: newest deleted; shard 3: all deleted.
    let f0 = newest(0).pop().unwrap();
    let b = std::fs::read(&f0).unwrap();
    std::fs::write(&f0, &b[..b.len() / 2]).unwrap();
    let f1 = newest(1).pop().unwrap();
    let mut b = std::fs::read(&f1).unwrap();
    let n = b.len();
    b[n - 100] ^= 0xff;
    std::fs::write(&f1, &b).unwrap();
    std::fs::remove_file(newest(2).pop().unwrap()).unwrap();
    for f in newest(3) {
        std::fs::remove_file(f).unwrap();
    }

    let last = Instance::start(&s, &state, &log, false);
    assert!(feeder.wait().unwrap().success());
    let (digest, shards) = finish(&[&last], total);
    assert_eq!(digest, oracle.digest, "final per-prospect state equals the uninterrupted replay");
    let from: BTreeMap<i64, String> = shards
        .iter()
        .map(|s| (s["partition"].as_i64().unwrap(), s["restored_from"].as_str().unwrap().to_string()))
        .collect();
    let (ids, records) = alerts_emitted(&s, &oracle);
    let unusable = log_count(&log, "snapshot unusable");
    eprintln!(
        "corruption: restored from {from:?}; {unusable} unusable snapshots reported; restore seconds {:?}; alerts {records} records, {} distinct",
        shards.iter().map(|s| s["restore_seconds"].as_f64().unwrap()).collect::<Vec<_>>(),
        ids.len()
    );
    assert_eq!(unusable, 2, "the truncated and the flipped files are reported");
    assert!(log_count(&log, "truncated") >= 1 && log_count(&log, "checksum mismatch") >= 1);
    for p in 0..3 {
        assert_eq!(from[&p], "snapshot", "shard {p} falls back to its previous snapshot");
    }
    assert_eq!(from[&3], "none", "shard 3, with no snapshot left, replays its input from the beginning");
    assert_eq!(digest, oracle.digest);
    assert_eq!(ids, oracle.alerts);
}
