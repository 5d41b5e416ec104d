//! The CRM memory as shard state, at `[crm] max_entries` entries (default 200,000):
//! - heap bytes per entry (values: a HubSpot deal's `dealstage`; links: deal → contact);
//! - the checkpoint capture's copy of the memory (on the processing thread): incremental after
//!   1,000 changes, with nothing changed, and a full copy; next to a baseline measured in the
//!   same run: `clone_from` of a `std::collections::HashMap<String, String>` with as many
//!   entries;
//! - encoding the state section and reading it back (restore);
//! - changes per second below the limit and at it (every change then evicts the oldest entry).
//!
//!   cargo bench --bench crm_memory
//!   MICROFUNNEL_BENCH_CRM=1000000 cargo bench --bench crm_memory
//!
//! Prints one JSON line per size, then one for the identity map's capture (a full copy, and an
//! incremental one after each of ten rounds of 1,000 more links: median and worst) at
//! `MICROFUNNEL_BENCH_IDENTITY` identifiers (default 1,000,000: half users, each linked to an
//! anonymous id).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use microfunnel::core::crm::{CrmMemory, Previous, UnknownPrevious};
use microfunnel::core::identity::{IdKind, IdentityLimits, IdentityMap, LinkReason};
use microfunnel::core::{Engine, Journey, Ts};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

fn fill(m: &mut CrmMemory, from: u64, n: u64) {
    for i in from..from + n {
        let id = format!("{}", 18_200_000_000u64 + i);
        if i % 2 == 0 {
            m.transition(
                ("deal", &id, "dealstage"),
                Some("contractsent"),
                Ts(i as i64),
                &Previous::Unknown,
                UnknownPrevious::Fire,
                false,
            );
        } else {
            m.link("deal", &id, &format!("{}", 900_000 + i / 2));
        }
    }
}

fn main() {
    let sizes: Vec<u64> = std::env::var("MICROFUNNEL_BENCH_CRM")
        .unwrap_or_else(|_| "200000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    for n in sizes {
        let text = B2B.replace("max_entries = 200000", &format!("max_entries = {n}"));
        let journey = Arc::new(Journey::from_toml_str(&text).expect("journey"));
        let mut engine = Engine::new(Arc::clone(&journey));
        let t = Instant::now();
        fill(engine.crm_memory("crm"), 0, n);
        let fill_s = t.elapsed().as_secs_f64();
        let heap = engine.crm_memory("crm").heap_bytes();

        // Capture: the changed entries' changelog records encoded (the first capture, then one
        // after 1000 changes, then one with nothing changed).
        let positions = std::collections::BTreeMap::new();
        let mut batch = microfunnel::store::Batch::default();
        let changed = engine.take_changed();
        batch.checkpoint(&engine, &changed, &[], 1, &positions);
        engine.settle_taken(true);
        fill(engine.crm_memory("crm"), n, 1000);
        let t = Instant::now();
        let changed = engine.take_changed();
        batch.checkpoint(&engine, &changed, &[], 2, &positions);
        let capture = t.elapsed().as_secs_f64();
        engine.settle_taken(true);
        let t = Instant::now();
        let changed = engine.take_changed();
        batch.checkpoint(&engine, &changed, &[], 3, &positions);
        let capture_idle = t.elapsed().as_secs_f64();
        engine.settle_taken(true);
        // A full copy of the memory (a clone), for scale.
        let t = Instant::now();
        let spare = engine.clone();
        let capture_full = t.elapsed().as_secs_f64();
        // Baseline: the same strings in a std HashMap, cloned into a warm one.
        let base: HashMap<String, String> =
            (0..n).map(|i| (format!("deal/{}/dealstage", 18_200_000_000u64 + i), "contractsent".to_string())).collect();
        let mut warm = base.clone();
        let t = Instant::now();
        warm.clone_from(&base);
        let baseline = t.elapsed().as_secs_f64();

        let t = Instant::now();
        let mut bytes = Vec::new();
        spare.encode_state(&mut bytes);
        let encode = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let back = Engine::decode_state(Arc::clone(&journey), &bytes).expect("decodes");
        let restore = t.elapsed().as_secs_f64();
        assert_eq!(back.crm(), spare.crm());

        // Changes at the limit: each evicts the least recently changed entry.
        let k = n.min(200_000);
        let mut below = CrmMemory::with_limit((2 * n + 2 * k) as usize);
        fill(&mut below, 0, n);
        let t = Instant::now();
        fill(&mut below, n, k);
        let below_rate = k as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        fill(engine.crm_memory("crm"), 2 * n, k);
        let at_limit_rate = k as f64 / t.elapsed().as_secs_f64();
        assert!(engine.crm_evicted() >= k);

        let line = format!(
            "{{\"entries\":{n},\"fill_s\":{fill_s:.3},\"heap_bytes_per_entry\":{:.0},\"capture_after_1000_changes_ms\":{:.2},\"capture_unchanged_ms\":{:.2},\"capture_full_ms\":{:.2},\"hashmap_clone_baseline_ms\":{:.2},\"section_bytes_per_entry\":{:.1},\"encode_ms\":{:.2},\"restore_ms\":{:.2},\"changes_per_s_below_limit\":{below_rate:.0},\"changes_per_s_at_limit\":{at_limit_rate:.0}}}",
            heap as f64 / n as f64,
            capture * 1e3,
            capture_idle * 1e3,
            capture_full * 1e3,
            baseline * 1e3,
            bytes.len() as f64 / n as f64,
            encode * 1e3,
            restore * 1e3,
        );
        println!("{line}");
    }
    let ids: u64 = std::env::var("MICROFUNNEL_BENCH_IDENTITY").ok().and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let mut map = IdentityMap::new();
    let (limits, mut out) = (IdentityLimits::default(), Vec::new());
    for i in 0..ids / 2 {
        let (user, anon) = (format!("usr_{i:012x}"), format!("anon-{i:016x}"));
        map.link(
            (&user, IdKind::Known),
            (&anon, IdKind::Anonymous),
            Ts(i as i64),
            LinkReason::Identify,
            &limits,
            &mut out,
        );
        out.clear();
    }
    map.take_changes();
    let mut spare = IdentityMap::new();
    map.capture_into(&mut spare, false);
    let t = Instant::now();
    map.capture_into(&mut spare, false);
    let full = t.elapsed().as_secs_f64();
    // 1,000 more people identify themselves, then an incremental capture; ten rounds (a round
    // in which the spare's tables or node array grow pays that growth, as the live map did).
    let mut rounds = Vec::new();
    for r in 0..10 {
        let from = ids / 2 + r * 1000;
        for i in from..from + 1000 {
            let (user, anon) = (format!("usr_{i:012x}"), format!("anon-{i:016x}"));
            let (u, a) = ((user.as_str(), IdKind::Known), (anon.as_str(), IdKind::Anonymous));
            map.link(u, a, Ts(i as i64), LinkReason::Identify, &limits, &mut out);
        }
        map.take_changes();
        let t = Instant::now();
        map.capture_into(&mut spare, true);
        rounds.push(t.elapsed().as_secs_f64());
    }
    rounds.sort_by(f64::total_cmp);
    let (median, worst) = (rounds[rounds.len() / 2], rounds[rounds.len() - 1]);
    println!(
        "{{\"identity_ids\":{},\"heap_bytes_per_id\":{:.0},\"capture_full_copy_ms\":{:.2},\"capture_after_1000_links_median_ms\":{:.2},\"capture_after_1000_links_worst_ms\":{:.2}}}",
        map.len(),
        map.heap_bytes() as f64 / map.len() as f64,
        full * 1e3,
        median * 1e3,
        worst * 1e3
    );
}
