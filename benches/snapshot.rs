//! Snapshot chains for large shards (1M and 10M prospects by default):
//! - pause: the capture on the processing thread after `MICROFUNNEL_BENCH_CHANGED` more events
//!   (default 100,000, i.e. a checkpoint every 100k events) on random prospects: the changed
//!   prospects taken, the records other than theirs encoded, their parts copied into the reused
//!   copy (buffers sized by an earlier capture, as in the service; with
//!   `MICROFUNNEL_BENCH_FRESH_BUFFER` set, empty ones, as at the first checkpoint after a
//!   restore); goal < 50 ms at 1M. Next to it, in the same run on the same state: the writer's
//!   encoding and digests from the copy, and the capture as it was before (records and digests
//!   from the engine on the processing thread: `pause_engine_side_s`);
//! - checkpoint: the delta written (encode + write + fsync + rename) on the writer thread;
//!   goal < 1 s at 1M; also the base written at a restore (encode + digest + write + fsync)
//!   and the base rewrite from base + delta (read, decode, fold, digest check, write);
//! - restore: the chain, base + one delta (read + checksums + decode + fold + digest check);
//!   goal < 2 s at 1M;
//! - peak resident memory of a base rewrite above what was resident before it, next to the
//!   RSS the engine took when it was built: the rewrite as `compact` streams it, and the
//!   whole-decode rewrite it replaced (the chain decoded, then encoded), on the same chain;
//!
//! each next to a baseline measured in the same run on the same bytes: writing + fsyncing the
//! base's file image with `std::fs::write`, and reading it back with `std::fs::read`.
//!
//!   cargo bench --bench snapshot                                    # 1M and 10M
//!   MICROFUNNEL_BENCH_SNAPSHOT=1000000 cargo bench --bench snapshot
//!
//! Prints one JSON line per size (also appended to target/bench-work/snapshot.jsonl).

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use microfunnel::codec::{self, Limits};
use microfunnel::core::{Engine, Journey, PartsCopy, SlotDigests};
use microfunnel::store::{Batch, DeltaFacts, FileStore, Pending, SnapshotStore};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

/// A realistic spread of state: every prospect browses and signs up; every 4th requests a demo
/// and a quote (arming timers and look-back marks); every 3rd has an email.
fn build(n: u64, journey: &Arc<Journey>) -> Engine {
    let mut engine = Engine::new(Arc::clone(journey));
    let limits = Limits::default();
    let mut out = Vec::new();
    let day = 86_400_000i64;
    let base = 1_767_571_200_000i64;
    let mut line = String::with_capacity(256);
    for i in 0..n {
        let t = base + (i as i64 * 7) % (60 * day);
        let steps: &[&str] = if i % 4 == 0 {
            &["page_viewed", "account_created", "demo_requested", "quote_requested"]
        } else {
            &["page_viewed", "account_created"]
        };
        for (k, ty) in steps.iter().enumerate() {
            line.clear();
            let email = if i % 3 == 0 && k == 1 { format!(",\"email\":\"p{i}@example.com\"") } else { String::new() };
            let ts = microfunnel::core::Ts(t + k as i64 * 3_600_000).to_string();
            line.push_str(&format!(
                r#"{{"event_id":"e{i}-{k}","prospect_id":"usr_{i:012x}","source":"web","type":"{ty}","ts":"{ts}"{email}}}"#
            ));
            let ev = codec::decode(line.as_bytes(), journey, &limits).expect("bench events decode");
            engine.apply(&ev, &mut out);
            out.clear();
        }
    }
    engine
}

/// Applies `MICROFUNNEL_BENCH_CHANGED` more events (default 100,000) to prospects spread over
/// the whole shard: what happens between two checkpoints. Returns the number of events.
fn touch(engine: &mut Engine, n: u64, journey: &Arc<Journey>) -> u64 {
    let k: u64 = std::env::var("MICROFUNNEL_BENCH_CHANGED").ok().and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let limits = Limits::default();
    let mut out = Vec::new();
    // Right after the shard's latest event: the traffic goes on (timers due meanwhile fire).
    let base = engine.max_event_time().0 + 1;
    for e in 0..k {
        let i = (e.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % n;
        let ts = microfunnel::core::Ts(base + e as i64).to_string();
        let line = format!(
            r#"{{"event_id":"t{e}","prospect_id":"usr_{i:012x}","source":"web","type":"content_downloaded","ts":"{ts}"}}"#
        );
        let ev = codec::decode(line.as_bytes(), journey, &limits).expect("bench events decode");
        engine.apply(&ev, &mut out);
        out.clear();
    }
    k
}

/// A line of /proc/self/status in bytes (`VmRSS:`, `VmHWM:`).
fn rss(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.split_whitespace().next()?.parse().ok());
    kb.unwrap_or(0u64) * 1024
}

/// Returns the memory freed so far to the OS (glibc keeps it in its arenas otherwise).
fn trim() {
    // SAFETY: `malloc_trim` only returns free memory of the allocator's arenas to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs `f`, with its peak resident memory above the RSS before it (the peak reset first:
/// `5` written to /proc/self/clear_refs).
fn peak_rss_of<R>(f: impl FnOnce() -> R) -> (R, u64) {
    trim();
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = rss("VmRSS:");
    let r = f();
    let peak = rss("VmHWM:").saturating_sub(before);
    trim();
    (r, peak)
}

fn main() {
    let sizes: Vec<u64> = std::env::var("MICROFUNNEL_BENCH_SNAPSHOT")
        .unwrap_or_else(|_| "1000000,10000000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let journey = Arc::new(Journey::from_toml_str(B2B).expect("b2b journey"));
    let work = std::path::Path::new("target/bench-work");
    std::fs::create_dir_all(work).expect("bench work dir");
    let mut results =
        std::fs::OpenOptions::new().create(true).append(true).open(work.join("snapshot.jsonl")).expect("results file");
    for n in sizes {
        trim();
        let before = rss("VmRSS:");
        let t = Instant::now();
        let engine = build(n, &journey);
        let engine_rss = rss("VmRSS:").saturating_sub(before);
        eprintln!("built {n} prospects in {:.1} s", t.elapsed().as_secs_f64());
        let dir = work.join(format!("snapshot-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        let store = FileStore::new(&dir, "bench", 2);

        let mut engine = engine;
        let what = |seq: u64| Pending {
            group: "bench".into(),
            shard: 0,
            seq,
            written_at: "2026-11-23T00:00:00Z".into(),
            positions: BTreeMap::from([("events".to_string(), n as i64)]),
            changelog: None,
        };
        // The base a restore writes (the shard not processing yet): encode + digest + write.
        engine.take_changed();
        let t = Instant::now();
        let base = store.save(what(0), &engine).expect("base written");
        let checkpoint_base = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut digests = SlotDigests::of(&engine);
        let digests_init = t.elapsed().as_secs_f64();
        assert_eq!(format!("{:016x}", digests.digest()), base.digest);
        let path = store.list(0).expect("list")[0].clone();
        let bytes = std::fs::metadata(&path).expect("file").len();

        // Steady state: events between two checkpoints, then the capture (the pause).
        let changed = touch(&mut engine, n, &journey);
        let (mut held, mut freed, mut batch) = (Vec::new(), Vec::new(), Batch::default());
        let (mut copy, mut own) = (PartsCopy::default(), Batch::default());
        let positions = BTreeMap::from([("events".to_string(), n as i64)]);
        // The service reuses each shard's batch and copy (they come back from the writer):
        // their buffers are as large as the largest checkpoint so far. Sized here by a capture
        // of as many prospects, unless `MICROFUNNEL_BENCH_FRESH_BUFFER` asks for the first
        // checkpoint's pause (empty buffers growing while they are filled).
        let fresh_buffer = std::env::var_os("MICROFUNNEL_BENCH_FRESH_BUFFER").is_some();
        if !fresh_buffer {
            let sizing: Vec<_> = (0..changed.min(n) as u32).map(microfunnel::core::ProspectIx).collect();
            batch.checkpoint(&engine, &sizing, &[], 1, &positions);
            own.checkpoint(&engine, &sizing, &[], 1, &positions);
            engine.copy_changed(&sizing, &[], Some(&digests), &mut copy);
        }
        let t = Instant::now();
        engine.take_changed_slots(&mut held, &mut freed);
        let pause_take = t.elapsed().as_secs_f64();
        // The pause as the barrier takes it: the records other than the prospects' (tombstones,
        // CRM, identity, the checkpoint record), then the changed prospects' parts copied.
        let mut own_digests = digests.clone();
        batch.checkpoint_tail(&engine, &[], 1, &positions);
        let pause_tail = t.elapsed().as_secs_f64() - pause_take;
        engine.copy_changed(&held, &freed, Some(&digests), &mut copy);
        let pause = t.elapsed().as_secs_f64();
        // The writer thread's part of it: records and digests from the copy.
        let t = Instant::now();
        batch.prepend_copied(&copy, Some(&mut digests));
        let writer_encode = t.elapsed().as_secs_f64();
        // Before: the same capture encoded and digested from the engine on the processing
        // thread (run second, so it finds more of the changed prospects in cache).
        let t = Instant::now();
        own.checkpoint_digested(&engine, &held, &freed, &[], 1, &positions, &mut own_digests);
        let pause_engine_side = t.elapsed().as_secs_f64() + pause_take;
        assert!(own.records().eq(batch.records()), "the copy's records are the engine's");
        assert_eq!(own_digests.digest(), digests.digest(), "the copy's digest is the engine's");
        drop(own);
        let facts = DeltaFacts { prev: 0, prospects: engine.len() as u64, digest: digests.digest() };

        // The writer thread's part: the delta.
        let t = Instant::now();
        let header = store.save_delta(what(1), facts, &batch, &journey).expect("delta written");
        let checkpoint = t.elapsed().as_secs_f64();
        engine.settle_taken(true);
        let digest = engine.digest();
        assert_eq!(header.digest, format!("{digest:016x}"), "the digest kept per slot is the state's");
        let delta_bytes = header.body_len;
        let changed_prospects = held.len();
        drop(batch);

        // Baseline: the base's bytes written and fsynced with std.
        let image = std::fs::read(&path).expect("read image");
        let copy = dir.join("baseline.bin");
        let t = Instant::now();
        let mut f = std::fs::File::create(&copy).expect("baseline file");
        f.write_all(&image).expect("baseline write");
        f.sync_all().expect("baseline fsync");
        let write_baseline = t.elapsed().as_secs_f64();
        drop(image);

        let t = Instant::now();
        let image = std::fs::read(&copy).expect("baseline read");
        let read_baseline = t.elapsed().as_secs_f64();
        drop(image);
        let _ = std::fs::remove_file(&copy);

        // Restore: base + delta, as a restore loads them.
        let t = Instant::now();
        let (chain, rejected) = store.latest(0);
        let chain = chain.expect("the chain reads back");
        assert!(rejected.is_empty() && chain.deltas.len() == 1);
        let read_s = t.elapsed().as_secs_f64();
        let restored = chain.engine(Arc::clone(&journey)).expect("the chain decodes");
        let restore = t.elapsed().as_secs_f64();
        assert_eq!(restored.len() as u64, n);
        assert_eq!(restored.digest(), digest, "restored state equals the live one");
        drop((restored, chain));

        // Peak resident memory of a rewrite above the RSS before it, next to the engine's own
        // (RSS growth while it was built): the rewrite as it was before (the chain decoded
        // whole, then encoded as a base, in memory) and as `compact` streams it now.
        let whole = peak_rss_of(|| {
            let chain = store.latest(0).0.expect("the chain reads back");
            let decoded = chain.engine(Arc::clone(&journey)).expect("the chain decodes");
            let mut body = Vec::new();
            decoded.encode_state_digest(&mut body, true)
        });
        assert_eq!(format!("{:016x}", whole.0), header.digest);
        // The base rewrite from base + delta (the writer thread, after reporting).
        let t = Instant::now();
        let (rewritten, rewrite_rss) =
            peak_rss_of(|| store.compact(0, &journey).expect("rewrite").expect("a delta to fold"));
        let rewrite = t.elapsed().as_secs_f64();
        assert_eq!(rewritten.digest, header.digest);
        drop(engine);

        let line = serde_json::json!({
            "prospects": n,
            "snapshot_bytes": bytes,
            "bytes_per_prospect": bytes as f64 / n as f64,
            "pause_s": pause,
            "pause_events": changed,
            "pause_prospects_changed": changed_prospects,
            "pause_fresh_buffer": fresh_buffer,
            "pause_take_s": pause_take,
            "pause_tail_s": pause_tail,
            "pause_copy_s": pause - pause_take - pause_tail,
            "pause_engine_side_s": pause_engine_side,
            "writer_encode_s": writer_encode,
            "delta_bytes": delta_bytes,
            "checkpoint_s": checkpoint,
            "checkpoint_base_s": checkpoint_base,
            "digests_init_s": digests_init,
            "rewrite_s": rewrite,
            "engine_rss_bytes": engine_rss,
            "rewrite_peak_rss_bytes": rewrite_rss,
            "rewrite_whole_decode_peak_rss_bytes": whole.1,
            "write_baseline_s": write_baseline,
            "restore_s": restore,
            "restore_read_check_s": read_s,
            "read_baseline_s": read_baseline,
        });
        println!("{line}");
        writeln!(results, "{line}").expect("results written");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
