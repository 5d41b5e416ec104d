//! Snapshot write and restore for large shards (1M and 10M prospects by default):
//! - pause: the state capture on the processing thread; goal < 50 ms at 1M. Three figures:
//!   the first capture into a fresh spare (page faults included), a full copy into a warm
//!   spare, and the steady state: an incremental capture after `MICROFUNNEL_BENCH_CHANGED`
//!   more events (default 100,000, i.e. a checkpoint every 100k events) on random prospects;
//! - checkpoint: encode + write + fsync + rename on the writer thread; goal < 1 s at 1M;
//! - restore: read + checksums + decode (interning every id again); goal < 2 s at 1M;
//!
//! each next to a baseline measured in the same run on the same bytes: writing + fsyncing the
//! file image with `std::fs::write`, and reading it back with `std::fs::read`.
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
use microfunnel::core::{Engine, Journey};
use microfunnel::store::{self, FileStore, Pending, SnapshotStore};

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
        let t = Instant::now();
        let engine = build(n, &journey);
        eprintln!("built {n} prospects in {:.1} s", t.elapsed().as_secs_f64());
        let dir = work.join(format!("snapshot-{n}"));
        let _ = std::fs::remove_dir_all(&dir);
        let store = FileStore::new(&dir, "bench", 2);

        let mut engine = engine;
        let mut spare = Engine::new(Arc::clone(&journey));
        let t = Instant::now();
        engine.capture_into(&mut spare);
        let pause_first = t.elapsed().as_secs_f64();
        // A full copy into a warm spare: the capture of another engine (a clone) into it.
        let mut other = engine.clone();
        let t = Instant::now();
        let inc = other.capture_into(&mut spare);
        let pause_full = t.elapsed().as_secs_f64();
        assert!(!inc, "a clone's capture is a full copy");
        drop(other);
        let mut spare = Engine::new(Arc::clone(&journey));
        engine.capture_into(&mut spare);
        let changed = touch(&mut engine, n, &journey);
        engine.take_changed();
        let t = Instant::now();
        let inc = engine.capture_into(&mut spare);
        let pause = t.elapsed().as_secs_f64();
        assert!(inc, "steady state captures are incremental");
        let captured = spare;

        let what = Pending {
            group: "bench".into(),
            shard: 0,
            seq: 1,
            written_at: "2026-11-23T00:00:00Z".into(),
            positions: BTreeMap::from([("events".to_string(), n as i64)]),
            changelog: None,
        };
        // Phases of the checkpoint, timed apart (the save below does all of them again).
        let t = Instant::now();
        let mut body = Vec::new();
        captured.encode_state(&mut body);
        let encode = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let digest = captured.digest();
        let digest_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut body = Vec::new();
        assert_eq!(captured.encode_state_digest(&mut body, true), digest);
        let encode_digest = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let body_hash = microfunnel::core::ids::hash64(1, &body);
        let hash_s = t.elapsed().as_secs_f64();
        drop(body);

        let t = Instant::now();
        let header = store.save(what, &captured).expect("snapshot written");
        let checkpoint = t.elapsed().as_secs_f64();
        assert_eq!(header.digest, format!("{digest:016x}"));
        std::hint::black_box(body_hash);
        drop(captured);
        let path = store.list(0).expect("list")[0].clone();
        let bytes = std::fs::metadata(&path).expect("file").len();

        // Baseline: the same bytes written and fsynced with std.
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

        let t = Instant::now();
        let checked = store::read(&path).expect("snapshot reads back");
        let read_s = t.elapsed().as_secs_f64();
        let restored = checked.engine(Arc::clone(&journey)).expect("snapshot decodes");
        let restore = t.elapsed().as_secs_f64();
        assert_eq!(restored.len() as u64, n);
        assert_eq!(format!("{:016x}", restored.digest()), header.digest, "restored state equals the written one");

        let line = serde_json::json!({
            "prospects": n,
            "snapshot_bytes": bytes,
            "bytes_per_prospect": bytes as f64 / n as f64,
            "pause_s": pause,
            "pause_events": changed,
            "pause_first_capture_s": pause_first,
            "pause_full_copy_s": pause_full,
            "checkpoint_s": checkpoint,
            "write_baseline_s": write_baseline,
            "checkpoint_encode_s": encode,
            "checkpoint_digest_s": digest_s,
            "checkpoint_encode_and_digest_s": encode_digest,
            "checkpoint_hash_s": hash_s,
            "restore_s": restore,
            "restore_read_check_s": read_s,
            "read_baseline_s": read_baseline,
        });
        println!("{line}");
        writeln!(results, "{line}").expect("results written");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
