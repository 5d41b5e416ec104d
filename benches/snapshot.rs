//! Snapshot write and restore for large shards (1M and 10M prospects by default):
//! - pause: the state capture on the processing thread (a copy of the engine); goal < 50 ms at 1M;
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
use microfunnel::snapshot::{self, FileStore, Pending, SnapshotStore};

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

        let t = Instant::now();
        let captured = engine.clone();
        let pause = t.elapsed().as_secs_f64();

        let what = Pending {
            group: "bench".into(),
            shard: 0,
            seq: 1,
            written_at: "2026-11-23T00:00:00Z".into(),
            positions: BTreeMap::from([("events".to_string(), n as i64)]),
            changelog: None,
        };
        let t = Instant::now();
        let header = store.save(what, &captured).expect("snapshot written");
        let checkpoint = t.elapsed().as_secs_f64();
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
        let checked = snapshot::read(&path).expect("snapshot reads back");
        let restored = checked.engine(Arc::clone(&journey)).expect("snapshot decodes");
        let restore = t.elapsed().as_secs_f64();
        assert_eq!(restored.len() as u64, n);
        assert_eq!(format!("{:016x}", restored.digest()), header.digest, "restored state equals the written one");

        let line = serde_json::json!({
            "prospects": n,
            "snapshot_bytes": bytes,
            "bytes_per_prospect": bytes as f64 / n as f64,
            "pause_s": pause,
            "checkpoint_s": checkpoint,
            "write_baseline_s": write_baseline,
            "restore_s": restore,
            "read_baseline_s": read_baseline,
        });
        println!("{line}");
        writeln!(results, "{line}").expect("results written");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
