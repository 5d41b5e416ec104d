//! A state transfer across partitions fits the producer's `message.max.bytes`: a prospect whose
//! dedup memory (older event ids kept for `[time] dedup_hours`) would make its record larger
//! leaves out its oldest event ids, counted; the newest still deduplicate where it arrives.

mod payloads;

use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::ids::kafka_partition;
use microfunnel::core::xpart::{DEFAULT_MESSAGE_MAX_BYTES, XRecord};
use microfunnel::core::{Engine, Journey};
use payloads::seg;

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");
const PARTITIONS: u32 = 3;
/// Page views of one anonymous visitor within the dedup window: 16 bytes each in its record,
/// about 1.04 MB in all (signal counts stop at 65,535).
const PAGES: usize = 65_000;

fn journey() -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(&format!("{B2B}\n[identity]\nresolve = true\n")).unwrap())
}

fn key_in_partition(prefix: &str, partition: u32) -> String {
    (0..).map(|i| format!("{prefix}{i}")).find(|k| kafka_partition(k.as_bytes(), PARTITIONS) == partition).unwrap()
}

fn page(anon: &str, n: usize) -> String {
    let ms = n * 10;
    let ts = format!("2026-03-02T09:{:02}:{:02}.{:03}Z", ms / 60_000, ms / 1000 % 60, ms % 1000);
    seg("page", "", None, anon, &format!("p-{n}"), &ts, None)
}

struct Run {
    shards: Vec<Engine>,
    /// Each transfer's message size as the output producer sends it (key + value).
    transfer_bytes: Vec<usize>,
}

fn shards(j: &Arc<Journey>, message_max_bytes: Option<usize>) -> Vec<Engine> {
    (0..PARTITIONS)
        .map(|p| {
            let mut e = Engine::new(Arc::clone(j));
            e.resolve_across(p, PARTITIONS);
            if let Some(m) = message_max_bytes {
                e.limit_transfers(m);
            }
            e
        })
        .collect()
}

/// Applies `lines` to their shards, delivering every identity record (through its bytes).
fn run(shards: &mut [Engine], lines: &[String]) -> Vec<usize> {
    let j = Arc::clone(shards[0].journey());
    let (mut out, mut sizes, mut buf) = (Vec::new(), Vec::new(), Vec::new());
    for line in lines {
        let ev = microfunnel::codec::decode(line.as_bytes(), &j, &Limits::default()).unwrap();
        let p = kafka_partition(ev.prospect.as_bytes(), PARTITIONS) as usize;
        shards[p].apply(&ev, &mut out);
        let mut pending: std::collections::VecDeque<(u32, XRecord)> = shards[p].take_identity_records().into();
        while let Some((p, r)) = pending.pop_front() {
            buf.clear();
            r.encode(&mut buf);
            if matches!(r, XRecord::Transfer { .. }) {
                sizes.push(r.key().len() + buf.len());
            }
            let r = XRecord::decode(&buf).unwrap();
            shards[p as usize].apply_identity_record(r, &mut out);
            pending.extend(shards[p as usize].take_identity_records());
        }
    }
    sizes
}

fn flow(anon: &str, user: &str) -> Run {
    let j = journey();
    let mut shards = shards(&j, None);
    let mut lines: Vec<String> = (0..PAGES).map(|n| page(anon, n)).collect();
    lines.push(seg("identify", "", Some(user), anon, "m-id", "2026-03-02T10:00:00Z", Some("ana@x.example")));
    let transfer_bytes = run(&mut shards, &lines);
    Run { shards, transfer_bytes }
}

#[test]
fn a_transfer_with_a_huge_dedup_memory_fits_the_message_size_keeping_its_newest_event_ids() {
    let (anon, user) = (key_in_partition("anon-", 0), key_in_partition("usr_", 1));
    let Run { mut shards, transfer_bytes } = flow(&anon, &user);
    assert_eq!(transfer_bytes.len(), 1, "the visitor's state moved to the user's partition");
    assert!(transfer_bytes[0] <= DEFAULT_MESSAGE_MAX_BYTES, "{} bytes", transfer_bytes[0]);
    // The oldest ids were left out, counted; most were kept.
    let dropped = shards[0].xpart_stats().unwrap().dedup_keys_dropped;
    assert!(dropped > 0 && (dropped as usize) < PAGES / 2, "{dropped} dropped");
    let home = kafka_partition(user.as_bytes(), PARTITIONS) as usize;
    let views = |e: &Engine| e.view(e.find(&user).unwrap(), None).signal_counts;
    let pages = |e: &Engine| views(e).iter().find(|(s, _)| s == "page_viewed").map(|(_, c)| *c);
    assert_eq!(pages(&shards[home]), Some(PAGES as u16));
    // The newest page views are still known where the person now lives: redelivered, they
    // count nothing; the oldest one was left out and counts again (the documented loss).
    let duplicates = |e: &Engine| e.stats().duplicates;
    let before = duplicates(&shards[home]);
    run(&mut shards, &[page(&anon, PAGES - 1), page(&anon, PAGES - 10_000)]);
    assert_eq!(duplicates(&shards[home]), before + 2);
    assert_eq!(pages(&shards[home]), Some(PAGES as u16));
    run(&mut shards, &[page(&anon, 0)]);
    assert_eq!(pages(&shards[home]), Some(PAGES as u16 + 1));
}

/// The bound follows the configured `message.max.bytes`: smaller, more ids are left out.
#[test]
fn the_bound_follows_the_configured_message_size() {
    let (anon, user) = (key_in_partition("anon-", 0), key_in_partition("usr_", 1));
    let j = journey();
    let max = 64 * 1024;
    let mut shards = shards(&j, Some(max));
    let mut lines: Vec<String> = (0..10_000).map(|n| page(&anon, n)).collect();
    lines.push(seg("identify", "", Some(&user), &anon, "m-id", "2026-03-02T10:00:00Z", None));
    let sizes = run(&mut shards, &lines);
    assert_eq!(sizes.len(), 1);
    assert!(sizes[0] <= max && sizes[0] > max / 2, "{} bytes", sizes[0]);
    let dropped = shards[0].xpart_stats().unwrap().dedup_keys_dropped;
    assert!(dropped > 10_000 - 4 - (max as u64) / 16, "{dropped} dropped");
    assert_eq!(shards[0].take_transfer_drops(), (dropped, 0));
    assert_eq!(shards[0].take_transfer_drops(), (0, 0));
}
