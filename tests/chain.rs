//! Snapshot chains (a base and deltas of each checkpoint's changelog records): base + deltas
//! restore exactly the live engine's state with every part of it on (retention expiring
//! prospects, identity merges, CRM memories, breakdowns); a damaged or truncated delta ends the
//! chain, and the changelog tops the last complete chain up to the same state; bases are
//! rewritten from base + deltas and kept as `checkpoint.keep` says.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use microfunnel::codec::{self, Limits};
use microfunnel::core::crm::{Previous, UnknownPrevious};
use microfunnel::core::{Engine, Journey, SlotDigests, Ts};
use microfunnel::store::changelog::Fold;
use microfunnel::store::{
    Batch, Changelog, DeltaFacts, FileStore, Header, MemChangelog, MemStore, Pending, SnapshotError, SnapshotStore,
};
use microfunnel::traffic::{Generator, Options};
use proptest::prelude::*;

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");
const SHARD: i32 = 0;
const TOPIC: &str = "chain-changelog";

/// Aware prospects leave after 2 days without events, deciding ones after 1, others after 10.
const RETENTION: &str = "\n[retention]\nafter_days = 10\n[retention.stages]\naware = 2\ndeciding = 1\n";
const IDENTITY: &str = "\n[identity]\nresolve = true\n";

fn journey(extra: &str) -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(&format!("{B2B}{extra}")).expect("journey loads"))
}

fn stream(journey: &Journey, prospects: u64, seed: u64, segment_share: f64) -> Vec<Vec<u8>> {
    let opts = Options { prospects, seed, malformed_share: 0.0, days: 60.0, segment_share, ..Options::default() };
    let mut g = Generator::new(opts, journey, false).unwrap();
    let (mut line, mut key, mut out) = (Vec::new(), String::new(), Vec::new());
    while g.next_into(&mut line, &mut key).is_some() {
        out.push(line.clone());
    }
    out
}

fn apply(engine: &mut Engine, line: &[u8]) {
    let journey = Arc::clone(engine.journey());
    let mut out = Vec::new();
    for (_, ev) in codec::decode_each(line, &journey, &Limits::default()) {
        if let Ok(ev) = ev {
            engine.apply(&ev, &mut out);
        }
    }
}

/// A CRM deal stage change remembered in the engine's CRM memory (its own state section).
fn crm_change(engine: &mut Engine, n: usize) {
    let id = format!("deal-{}", n % 37);
    let stage = ["appointmentscheduled", "contractsent", "closedwon"][n % 3];
    let m = engine.crm_memory("hubspot");
    m.transition(
        ("deal", &id, "dealstage"),
        Some(stage),
        Ts(n as i64),
        &Previous::Unknown,
        UnknownPrevious::Fire,
        false,
    );
    if n.is_multiple_of(5) {
        m.link("deal", &id, &format!("contact-{}", n % 11));
    }
}

/// A live shard checkpointed as the service does it: per checkpoint, the changed prospects'
/// changelog records (and tombstones of those that left memory) go to the changelog and, as
/// a delta, to the snapshot store.
struct Live {
    engine: Engine,
    digests: SlotDigests,
    seq: u64,
    batch: Batch,
    changelog: MemChangelog,
    /// The digest after each checkpoint.
    digests_at: BTreeMap<u64, u64>,
}

fn pending(seq: u64) -> Pending {
    Pending {
        group: "g".into(),
        shard: SHARD,
        seq,
        written_at: "2026-11-30T03:00:00Z".into(),
        positions: BTreeMap::from([("events".to_string(), seq as i64 * 10)]),
        changelog: None,
    }
}

impl Live {
    /// A new shard whose store holds a base of its empty state (as a restore writes it).
    fn new(journey: Arc<Journey>, store: &dyn SnapshotStore) -> Live {
        let mut engine = Engine::new(journey);
        engine.track_removals(true);
        store.save(pending(0), &engine).unwrap();
        Live {
            digests: SlotDigests::of(&engine),
            engine,
            seq: 0,
            batch: Batch::default(),
            changelog: MemChangelog::new(TOPIC),
            digests_at: BTreeMap::from([(0, 0)]),
        }
    }

    fn checkpoint(&mut self, store: &dyn SnapshotStore) -> Header {
        let (mut held, mut freed) = (Vec::new(), Vec::new());
        self.engine.take_changed_slots(&mut held, &mut freed);
        let tombstones: Vec<String> = self.engine.take_removed().into_iter().map(String::from).collect();
        let prev = self.seq;
        self.seq += 1;
        let mut what = pending(self.seq);
        // As the barrier captures: records and digests in one pass.
        self.batch.checkpoint_digested(
            &self.engine,
            &held,
            &freed,
            &tombstones,
            self.seq,
            &what.positions,
            &mut self.digests,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        what.changelog = Some(self.changelog.append(SHARD, &self.batch, deadline).unwrap());
        let facts = DeltaFacts { prev, prospects: self.engine.len() as u64, digest: self.digests.digest() };
        let header = store.save_delta(what, facts, &self.batch, self.engine.journey()).unwrap();
        self.engine.settle_taken(true);
        assert_eq!(
            header.digest,
            format!("{:016x}", self.engine.digest()),
            "checkpoint {}: digest kept per slot",
            self.seq
        );
        self.digests_at.insert(self.seq, self.engine.digest());
        header
    }
}

/// The restored state: the store's newest chain, topped up from the changelog after it.
fn restore(journey: &Arc<Journey>, store: &dyn SnapshotStore, changelog: &MemChangelog) -> (Engine, u64, usize) {
    let (chain, _) = store.latest(SHARD);
    let chain = chain.expect("a chain loads");
    let deltas = chain.deltas.len();
    let engine = chain.engine(Arc::clone(journey)).expect("the chain decodes");
    let h = chain.header();
    let mut fold = Fold::new(engine, h.positions.clone(), h.seq);
    let from = h.changelog.as_ref().map(|p| p.next);
    let mut reader = changelog.open(SHARD).unwrap();
    reader.read(from, &mut |offset, key, value| fold.push(SHARD, offset, key, value)).unwrap();
    let folded = fold.finish();
    (folded.engine, folded.seq, deltas)
}

/// Runs `lines` through a live shard with a checkpoint every `every` lines (CRM changes
/// between them), checking after each that base + deltas hold exactly the live state.
fn run(journey: &Arc<Journey>, lines: &[Vec<u8>], every: usize, store: &dyn SnapshotStore, share: f64) -> Live {
    let mut live = Live::new(Arc::clone(journey), store);
    for (n, chunk) in lines.chunks(every).enumerate() {
        chunk.iter().for_each(|l| apply(&mut live.engine, l));
        crm_change(&mut live.engine, n);
        live.checkpoint(store);
        let chain = store.latest(SHARD).0.expect("the chain loads");
        let restored = chain.engine(Arc::clone(journey)).unwrap_or_else(|e| panic!("checkpoint {}: {e}", live.seq));
        assert_eq!(restored.digest(), live.engine.digest(), "checkpoint {}: base + deltas", live.seq);
        assert_eq!(restored.len(), live.engine.len());
        assert_eq!(restored.funnel(), live.engine.funnel());
        assert_eq!(restored.stats(), live.engine.stats());
        assert_eq!(restored.crm(), live.engine.crm(), "checkpoint {}: CRM memory", live.seq);
        assert_eq!(restored.kept_cooldowns(), live.engine.kept_cooldowns());
        let (mut a, mut b) = (Vec::new(), Vec::new());
        restored.encode_meta(&mut a);
        live.engine.encode_meta(&mut b);
        assert_eq!(a, b, "checkpoint {}: meta (funnel, stats, breakdown tables, retention)", live.seq);
        if store.tip(SHARD).is_some_and(|t| t.due(share)) {
            store.compact(SHARD, journey).unwrap();
        }
    }
    live
}

#[test]
fn base_and_deltas_restore_the_live_state_with_retention_crm_and_breakdowns() {
    let j = journey(RETENTION);
    assert!(!j.breakdowns.is_empty(), "breakdowns on");
    let lines = stream(&j, 600, 7, 0.5);
    let store = MemStore::new("g", 3);
    let live = run(&j, &lines, 97, &store, f64::INFINITY);
    assert!(live.engine.stats().expired > 100, "retention expired prospects: {}", live.engine.stats().expired);
    assert!(live.engine.crm().memories().any(|(_, m)| m.len() > 10), "CRM memory is state");
    let chain = store.latest(SHARD).0.unwrap();
    assert_eq!(chain.base.header.seq, 0, "never rewritten: one base and every delta");
    assert_eq!(chain.deltas.len() as u64, live.seq);
}

#[test]
fn base_and_deltas_restore_the_live_state_with_identity_merges() {
    let j = journey(IDENTITY);
    let lines = stream(&j, 400, 11, 1.0);
    let store = MemStore::new("g", 3);
    let live = run(&j, &lines, 131, &store, 1.0);
    let merged = live.engine.identity_stats().merged;
    assert!(merged > 20, "identity merges happened: {merged}");
    let restored = store.latest(SHARD).0.unwrap().engine(Arc::clone(&j)).unwrap();
    let (a, b) = (restored.identity_map().unwrap(), live.engine.identity_map().unwrap());
    assert_eq!(a.len(), b.len(), "the identity map reads back");
    for (_, id) in live.engine.iter_ids().take(200) {
        assert_eq!(restored.linked_ids(id), live.engine.linked_ids(id), "{id}: same group, same canonical id");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
    /// Any stream, any checkpoint cadence, any rewrite share: the newest chain is the live state.
    #[test]
    fn any_cadence_and_rewrite_share_restore_the_live_state(seed in 1u64..1000, every in 20usize..400, share in 0.0f64..2.0) {
        let j = journey(RETENTION);
        let lines = stream(&j, 150, seed, 0.5);
        let store = MemStore::new("g", 2);
        let live = run(&j, &lines, every, &store, share);
        let (restored, seq, _) = restore(&j, &store, &live.changelog);
        prop_assert_eq!(seq, live.seq);
        prop_assert_eq!(restored.digest(), live.engine.digest());
    }
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("microfunnel-chain-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn files(dir: &Path) -> Vec<String> {
    let mut f: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    f.sort();
    f
}

/// A damaged delta (truncated, a flipped byte, deleted) ends the chain before it: the restore
/// uses the last complete chain and tops it up from the changelog, reaching the live state, and
/// never applies a delta that does not follow the chain's end.
#[test]
fn a_damaged_or_truncated_delta_ends_the_chain_and_the_changelog_tops_it_up() {
    let j = journey(RETENTION);
    let lines = stream(&j, 300, 5, 0.5);
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 3] = [
        (
            "truncate",
            |p| {
                let b = std::fs::read(p).unwrap();
                std::fs::write(p, &b[..b.len() - 9]).unwrap();
            },
            "truncated",
        ),
        (
            "flip",
            |p| {
                let mut b = std::fs::read(p).unwrap();
                let n = b.len();
                b[n - 30] ^= 0x20;
                std::fs::write(p, &b).unwrap();
            },
            "body checksum",
        ),
        ("delete", |p| std::fs::remove_file(p).unwrap(), ""),
    ];
    for (name, damage, expect) in cases {
        let dir = tempdir(name);
        let store = FileStore::new(&dir, "g", 3);
        let live = run(&j, &lines, 200, &store, f64::INFINITY);
        assert!(live.seq >= 6, "{name}: several deltas ({})", live.seq);
        let shard_dir = store.shard_dir(SHARD);
        // Checkpoint 3's delta is damaged; 4 and later follow it, so they cannot apply.
        damage(&shard_dir.join(format!("{:020}.delta", 3)));
        let fresh = FileStore::new(&dir, "g", 3);
        let (chain, rejected) = fresh.latest(SHARD);
        let chain = chain.unwrap();
        assert_eq!(chain.header().seq, 2, "{name}: the chain ends before the damaged delta");
        let state = chain.engine(Arc::clone(&j)).unwrap();
        assert_eq!(state.digest(), live.digests_at[&2], "{name}: the state of checkpoint 2, never a wrong one");
        if !expect.is_empty() {
            assert!(rejected.iter().any(|e| e.to_string().contains(expect)), "{name}: {rejected:?}");
        }
        let (restored, seq, deltas) = restore(&j, &fresh, &live.changelog);
        assert_eq!((seq, deltas), (live.seq, 2), "{name}: the changelog tops up checkpoints 3..{}", live.seq);
        assert_eq!(restored.digest(), live.engine.digest(), "{name}: the live state");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The base is damaged: the previous base and the deltas after it make the chain.
#[test]
fn a_damaged_base_falls_back_to_the_previous_base_and_its_deltas() {
    let j = journey(RETENTION);
    let lines = stream(&j, 300, 9, 0.5);
    let dir = tempdir("base");
    let store = FileStore::new(&dir, "g", 3);
    let live = run(&j, &lines, 150, &store, 0.6);
    let bases: Vec<String> = files(&store.shard_dir(SHARD)).into_iter().filter(|f| f.ends_with(".snap")).collect();
    assert!(bases.len() >= 2, "rewrites made bases: {bases:?}");
    let newest = store.shard_dir(SHARD).join(bases.last().unwrap());
    let mut b = std::fs::read(&newest).unwrap();
    let n = b.len();
    b[n / 2] ^= 0xff;
    std::fs::write(&newest, &b).unwrap();
    let fresh = FileStore::new(&dir, "g", 3);
    let (chain, rejected) = fresh.latest(SHARD);
    let chain = chain.unwrap();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(chain.base.path != newest && !chain.deltas.is_empty());
    assert_eq!(chain.header().seq, live.seq, "the older base's deltas reach the newest checkpoint");
    assert_eq!(chain.engine(Arc::clone(&j)).unwrap().digest(), live.engine.digest());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bases are rewritten from base + deltas once the deltas pass the share; `keep` bases stay,
/// each with the deltas after it; a delta that does not follow the store's chain is refused.
#[test]
fn rewrites_keep_the_newest_bases_and_a_delta_must_follow_the_chain() {
    let j = journey(RETENTION);
    let lines = stream(&j, 300, 3, 0.5);
    let dir = tempdir("keep");
    let store = FileStore::new(&dir, "g", 2);
    let mut live = run(&j, &lines, 60, &store, 0.3);
    let names = files(&store.shard_dir(SHARD));
    let bases: Vec<u64> = names.iter().filter_map(|f| f.strip_suffix(".snap")).map(|s| s.parse().unwrap()).collect();
    let deltas: Vec<u64> = names.iter().filter_map(|f| f.strip_suffix(".delta")).map(|s| s.parse().unwrap()).collect();
    assert_eq!(bases.len(), 2, "keep = 2 bases: {names:?}");
    assert!(deltas.iter().all(|&d| d > bases[0]), "only deltas after the older kept base: {names:?}");
    assert!(names.iter().all(|f| !f.ends_with(".tmp")));
    // The older kept base and its deltas are a complete chain too.
    let tip = store.tip(SHARD).unwrap();
    assert_eq!(tip.seq, live.seq);

    // A delta that says it follows another checkpoint than the chain's end is refused.
    apply(&mut live.engine, &lines[0]);
    let batch = Batch::default();
    let facts = DeltaFacts { prev: live.seq + 5, prospects: 0, digest: 0 };
    let err = store.save_delta(pending(live.seq + 6), facts, &batch, &j).unwrap_err();
    assert!(matches!(err, SnapshotError::NoChain { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `inspect-snapshot` reads the chain: a shard directory (its newest chain), a delta (the chain
/// that ends at it), and reports a damaged delta (exit 1).
#[test]
fn inspect_snapshot_reads_a_chain_from_a_directory_or_a_delta() {
    let j = journey(RETENTION);
    let lines = stream(&j, 200, 4, 0.5);
    let dir = tempdir("inspect");
    let store = FileStore::new(&dir, "g", 3);
    let live = run(&j, &lines, 150, &store, f64::INFINITY);
    let journey_file = dir.join("journey.toml");
    std::fs::write(&journey_file, format!("{B2B}{RETENTION}")).unwrap();
    let inspect = |path: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_microfunnel"))
            .args(["inspect-snapshot", path.to_str().unwrap(), "--journey", journey_file.to_str().unwrap()])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
        (out.status.code(), v)
    };
    let shard_dir = store.shard_dir(SHARD);
    let (code, v) = inspect(&shard_dir);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["digest_matches"], true);
    assert_eq!(v["header"]["seq"], live.seq);
    assert_eq!(v["deltas"].as_array().unwrap().len() as u64, live.seq);
    assert_eq!(v["header"]["digest"], format!("{:016x}", live.engine.digest()));
    let (code, v) = inspect(&shard_dir.join(format!("{:020}.delta", 2)));
    assert_eq!(code, Some(0), "{v}");
    assert_eq!((v["header"]["seq"].as_u64(), v["deltas"].as_array().unwrap().len()), (Some(2), 2));
    assert_eq!(v["header"]["digest"], format!("{:016x}", live.digests_at[&2]));
    let delta = shard_dir.join(format!("{:020}.delta", 1));
    let b = std::fs::read(&delta).unwrap();
    std::fs::write(&delta, &b[..b.len() / 2]).unwrap();
    let (code, v) = inspect(&shard_dir.join(format!("{:020}.delta", 2)));
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["checksums"], "failed");
    assert!(v["rejected"][0].as_str().unwrap().contains("truncated"), "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}
