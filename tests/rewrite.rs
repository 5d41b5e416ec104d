//! A base rewritten from base + deltas prospect by prospect (`SnapshotStore::compact`), on real
//! files, with retention, identity resolution, CRM memories and breakdowns on: the new base
//! holds the live state (digest, meta, CRM memories, identity resolution) and is what a restore
//! reads back, and the rewrite's peak heap stays well below what decoding the chain whole takes
//! (the heap is counted by this test binary's allocator, across threads: the peak test runs
//! with the other test held off by a lock).

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use microfunnel::codec::{self, Limits};
use microfunnel::core::crm::{Previous, UnknownPrevious};
use microfunnel::core::{Engine, Journey, SlotDigests, Ts};
use microfunnel::store::{Batch, DeltaFacts, FileStore, Pending, SnapshotStore};
use microfunnel::traffic::model::Model;
use microfunnel::traffic::{Generator, Options};

/// The heap in use and its peak since the last [`reset_peak`].
struct Counting;

static IN_USE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let now = IN_USE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            IN_USE.fetch_sub(layout.size(), Ordering::Relaxed);
            let now = IN_USE.fetch_add(new_size, Ordering::Relaxed) + new_size;
            PEAK.fetch_max(now, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Held by each test: the heap is counted for the whole process.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Heap above what was in use when it started, at its peak, while `f` ran.
fn peak_of<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = IN_USE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let r = f();
    (r, PEAK.load(Ordering::Relaxed) - start)
}

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");
const CAMPAIGNS: &str = include_str!("../deploy/gen/campaigns.toml");
const SHARD: i32 = 0;

/// Short retention spans: prospects expire within the stream.
const RETENTION: &str = "\n[retention]\nafter_days = 8\n[retention.stages]\naware = 3\n";

/// b2b (breakdowns by campaign and source) with `extra`.
fn journey(extra: &str) -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(&format!("{B2B}{extra}")).expect("journey loads"))
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
}

fn tempdir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("rewrite-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A shard's live engine, and a file store holding a base of the first `base_share` of the
/// stream (as a restore writes it) and six deltas over the rest: changed, new and expired
/// prospects, identity and CRM records.
fn chain(
    journey: &Arc<Journey>,
    dir: &std::path::Path,
    prospects: u64,
    crm: bool,
    base_share: f64,
) -> (Engine, FileStore, u64) {
    let model: Model = toml::from_str(CAMPAIGNS).expect("campaigns model");
    let opts = Options { prospects, days: 50.0, seed: 5, malformed_share: 0.0, model, ..Options::default() };
    let mut g = Generator::new(opts, journey, false).expect("generator");
    let mut lines = Vec::new();
    let (mut line, mut key) = (Vec::new(), String::new());
    while g.next_into(&mut line, &mut key).is_some() {
        lines.push(line.clone());
    }
    let (mut engine, mut outs, limits) = (Engine::new(Arc::clone(journey)), Vec::new(), Limits::default());
    engine.track_removals(true);
    let mut apply = |engine: &mut Engine, lines: &[Vec<u8>], n: usize| {
        for l in lines {
            engine.apply(&codec::decode(l, journey, &limits).expect("generated events decode"), &mut outs);
            outs.clear();
        }
        if crm {
            crm_change(engine, n);
        }
    };
    let store = FileStore::new(dir, "g", 2);
    let base = (lines.len() as f64 * base_share) as usize;
    apply(&mut engine, &lines[..base], 0);
    engine.take_changed();
    engine.take_removed();
    engine.settle_taken(true);
    store.save(pending(1), &engine).expect("base written");
    let mut digests = SlotDigests::of(&engine);
    let (mut batch, mut held, mut freed) = (Batch::default(), Vec::new(), Vec::new());
    let mut seq = 1;
    for (n, chunk) in lines[base..].chunks(lines[base..].len() / 6 + 1).enumerate() {
        apply(&mut engine, chunk, n + 1);
        engine.take_changed_slots(&mut held, &mut freed);
        let tombstones: Vec<String> = engine.take_removed().into_iter().map(String::from).collect();
        seq += 1;
        let what = pending(seq);
        batch.checkpoint_digested(&engine, &held, &freed, &tombstones, seq, &what.positions, &mut digests);
        let facts = DeltaFacts { prev: seq - 1, prospects: engine.len() as u64, digest: digests.digest() };
        store.save_delta(what, facts, &batch, journey).expect("delta written");
        engine.settle_taken(true);
    }
    assert_eq!(store.latest(SHARD).0.expect("the chain reads").deltas.len(), 6);
    (engine, store, seq)
}

#[test]
fn a_base_rewritten_record_by_record_is_the_live_state() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let journey = journey(&format!("{RETENTION}\n[identity]\nresolve = true\n"));
    let dir = tempdir("state");
    let (engine, store, seq) = chain(&journey, &dir, 6000, true, 0.66);
    assert!(engine.stats().expired > 100, "prospects expired: {}", engine.stats().expired);
    assert!(engine.identity_stats().merged > 10, "identity merges: {}", engine.identity_stats().merged);
    assert!(engine.breakdown_tables().iter().any(|t| t.values.len() > 2), "breakdown values are state");

    // Streamed, not the whole decode it falls back to should the digest differ.
    let (decoded, decode_peak) =
        peak_of(|| store.latest(SHARD).0.expect("the chain reads").engine(Arc::clone(&journey)));
    drop(decoded);
    let (header, rewrite_peak) = peak_of(|| store.compact(SHARD, &journey).expect("rewrite").expect("deltas to fold"));
    eprintln!("peak heap: rewrite {rewrite_peak} B, whole decode {decode_peak} B");
    assert!(rewrite_peak < decode_peak, "streamed: {rewrite_peak} B, a whole decode: {decode_peak} B");

    // The new base is the live state, as a full capture of it writes it.
    let mut full = Vec::new();
    let full_digest = engine.encode_state_digest(&mut full, true);
    assert_eq!(header.seq, seq);
    assert_eq!(header.digest, format!("{full_digest:016x}"), "the digest of a full capture");
    assert_eq!(header.prospects, engine.len() as u64);
    assert_eq!(header.prev, None, "a base");
    let chain = store.latest(SHARD).0.expect("the new base reads");
    assert_eq!((chain.base.header.seq, chain.deltas.len()), (seq, 0));
    assert_eq!(chain.base.body.len(), full.len(), "a full capture's size (prospects in another order)");
    let restored = chain.engine(Arc::clone(&journey)).expect("the new base decodes");
    assert_eq!(restored.digest(), engine.digest());
    assert_eq!(restored.len(), engine.len());
    assert_eq!(restored.funnel(), engine.funnel());
    assert_eq!(restored.stats(), engine.stats());
    assert_eq!(restored.crm(), engine.crm(), "CRM memories");
    assert_eq!(restored.kept_cooldowns(), engine.kept_cooldowns());
    let (mut a, mut b) = (Vec::new(), Vec::new());
    restored.encode_meta(&mut a);
    engine.encode_meta(&mut b);
    assert_eq!(a, b, "meta: funnel, stats, breakdown tables, retention");
    assert_eq!(
        restored.identity_map().expect("identity on").resolution(),
        engine.identity_map().expect("identity on").resolution(),
        "identity: same identifiers, kinds, times, canonical ids"
    );
    for (ix, id) in engine.iter_ids() {
        let r = restored.find(id).unwrap_or_else(|| panic!("{id} restored"));
        assert_eq!(restored.attributed(r), engine.attributed(ix), "{id}: breakdown values");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The rewrite holds the bytes it reads and writes, not the state decoded: beyond the chain's
/// bytes (deltas about half the base's, as `checkpoint.rewrite_share` lets them grow), its peak
/// heap (mostly the new base's buffer) is below what decoding the chain whole adds (the engine
/// and the records staged by the fold), which the rewrite took before it streamed, and then
/// encoded the new base besides.
#[test]
fn a_base_rewrite_peaks_well_below_a_whole_decode() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let journey = journey("");
    let dir = tempdir("peak");
    let (engine, store, _) = chain(&journey, &dir, 8000, false, 0.85);
    let ((decoded, chain_bytes, base_bytes), decode_peak) = peak_of(|| {
        let chain = store.latest(SHARD).0.expect("the chain reads");
        let decoded = chain.engine(Arc::clone(&journey)).expect("the chain decodes");
        (decoded, chain.bytes() as usize, chain.base.body.len())
    });
    let delta_share = (chain_bytes - base_bytes) as f64 / base_bytes as f64;
    assert!((0.3..0.8).contains(&delta_share), "deltas about half the base: {delta_share:.2}");
    assert_eq!(decoded.digest(), engine.digest());
    drop(decoded);
    let (header, rewrite_peak) = peak_of(|| store.compact(SHARD, &journey).expect("rewrite").expect("deltas to fold"));
    assert_eq!(header.digest, format!("{:016x}", engine.digest()));
    let (rewrite, decode) = (rewrite_peak.saturating_sub(chain_bytes), decode_peak.saturating_sub(chain_bytes));
    eprintln!(
        "peak heap beyond the chain's {chain_bytes} B: rewrite {rewrite} B, whole decode {decode} B; deltas / base {delta_share:.2}"
    );
    assert!(
        (rewrite as f64) < 0.9 * decode as f64,
        "beyond the chain's {chain_bytes} B, the rewrite's peak heap ({rewrite} B) is well below a whole decode's ({decode} B)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
