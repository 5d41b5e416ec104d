//! Engine throughput on generated traffic (`microfunnel gen`'s realistic mix) over 100k and 1M
//! prospects. Baselines measured in the same run: serde_json parsing the same lines into a
//! `serde_json::Value`, and skimming them with `IgnoredAny` (the least work serde_json can do);
//! the plain consumer's typed parse with serde_json and with sonic-rs (SIMD, the fastest found).
//!
//! `apply_only` applies pre-decoded events one `Engine::apply` at a time and times the engine
//! only, the way the pipeline runs it: before each batch of `BATCH` lines is applied, its lines
//! are read once, untimed, as decoding them would have just done (decoded events borrow their
//! strings from the payloads). Without that, every event's id would be a cold read from a
//! multi-gigabyte corpus, a cost the service never pays and the engine cannot change.
//!
//! `hostile_ids` applies 40,000 Segment page calls from 40,000 new anonymous ids chosen offline
//! to share a home slot under the interner's former fixed table hash (`hash64` with a published
//! seed), and 40,000 of the same shape at random, in the same run; it also interns both id sets
//! with the current keyed hash and with the former fixed hash (kept here, in the bench only).
//!
//! `cargo bench --bench engine`; `MICROFUNNEL_BENCH_PROSPECTS=100000` limits the scales;
//! `cargo bench --bench engine -- hostile_ids` runs only the hostile-id group.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use serde::de::IgnoredAny;

use microfunnel::codec::{Limits, decode, decode_with_serde};
use microfunnel::core::ids::{Interner, KeyedHash, TableHash, hash64};
use microfunnel::core::{Engine, Event, Journey};
use microfunnel::traffic::{Generator, Options};

/// What a plain consumer reads from either format: borrowed, unknown fields skipped.
#[derive(serde::Deserialize)]
#[allow(dead_code)]
struct Envelope<'a> {
    event_id: Option<&'a str>,
    #[serde(rename = "messageId")]
    message_id: Option<&'a str>,
    prospect_id: Option<&'a str>,
    #[serde(rename = "userId")]
    user_id: Option<&'a str>,
    #[serde(rename = "anonymousId")]
    anonymous_id: Option<&'a str>,
    source: Option<&'a str>,
    #[serde(rename = "type")]
    kind: Option<&'a str>,
    event: Option<&'a str>,
    ts: Option<&'a str>,
    timestamp: Option<&'a str>,
}

/// Lines per batch in `apply_only`: what one consumer poll might hand over.
const BATCH: usize = 512;

/// Events `events` of the corpus, decoded from the lines at `bytes`.
struct Batch {
    events: std::ops::Range<usize>,
    bytes: std::ops::Range<usize>,
}

/// Reads one byte of every cache line of `bytes` (brings a batch's lines into the cache, as
/// decoding them would).
fn warm(bytes: &[u8]) {
    black_box(bytes.iter().step_by(64).fold(0u8, |a, &b| a.wrapping_add(b)));
}

struct Corpus {
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
}

impl Corpus {
    fn lines(&self) -> impl Iterator<Item = &[u8]> {
        self.spans.iter().map(|&(s, e)| &self.bytes[s..e])
    }
}

fn journey() -> Arc<Journey> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/journeys/b2b.toml")).unwrap();
    Arc::new(Journey::from_toml_str(&text).unwrap())
}

fn corpus(journey: &Journey, prospects: u64) -> Corpus {
    let opts = Options { prospects, seed: 7, ..Options::default() };
    let mut g = Generator::new(opts, journey, false).unwrap();
    let (mut line, mut key) = (Vec::new(), String::new());
    let mut c = Corpus { bytes: Vec::new(), spans: Vec::new() };
    while g.next_into(&mut line, &mut key).is_some() {
        let s = c.bytes.len();
        c.bytes.extend_from_slice(&line);
        c.spans.push((s, c.bytes.len()));
    }
    c
}

fn scales() -> Vec<u64> {
    std::env::var("MICROFUNNEL_BENCH_PROSPECTS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![100_000, 1_000_000])
}

fn engine(c: &mut Criterion) {
    let journey = journey();
    let limits = Limits::default();
    for prospects in scales() {
        let corpus = corpus(&journey, prospects);
        // Events decoded `BATCH` lines at a time, with the byte span of those lines.
        let (mut events, mut batches): (Vec<Event<'_>>, Vec<Batch>) = (Vec::new(), Vec::new());
        for spans in corpus.spans.chunks(BATCH) {
            let first = events.len();
            events.extend(spans.iter().filter_map(|&(s, e)| decode(&corpus.bytes[s..e], &journey, &limits).ok()));
            let bytes = spans[0].0..spans[spans.len() - 1].1;
            batches.push(Batch { events: first..events.len(), bytes });
        }
        let n = corpus.spans.len() as u64;
        let label = format!("{}k_prospects", prospects / 1000);
        let mut group = c.benchmark_group(format!("engine/{label}"));
        group.throughput(Throughput::Elements(n));
        group.sample_size(10);
        group.warm_up_time(Duration::from_millis(500));
        group.measurement_time(Duration::from_secs(if prospects >= 1_000_000 { 40 } else { 8 }));

        group.bench_function(BenchmarkId::from_parameter("parse_only_value"), |b| {
            b.iter(|| {
                for l in corpus.lines() {
                    black_box(serde_json::from_slice::<serde_json::Value>(l).ok());
                }
            })
        });
        group.bench_function(BenchmarkId::from_parameter("parse_only_ignored_any"), |b| {
            b.iter(|| {
                for l in corpus.lines() {
                    black_box(serde_json::from_slice::<IgnoredAny>(l).ok());
                }
            })
        });
        group.bench_function(BenchmarkId::from_parameter("parse_only_typed"), |b| {
            b.iter(|| {
                for l in corpus.lines() {
                    black_box(serde_json::from_slice::<Envelope<'_>>(l).ok());
                }
            })
        });
        // The cheapest typed parse found for these payloads (sonic-rs, SIMD): the floor of what
        // any decode of them costs (BENCHMARKS.md "what bounds the per-CPU goal").
        group.bench_function(BenchmarkId::from_parameter("parse_only_typed_sonic"), |b| {
            b.iter(|| {
                for l in corpus.lines() {
                    black_box(sonic_rs::from_slice::<Envelope<'_>>(l).ok());
                }
            })
        });
        group.bench_function(BenchmarkId::from_parameter("decode_only"), |b| {
            b.iter(|| {
                for l in corpus.lines() {
                    black_box(decode(l, &journey, &limits).ok());
                }
            })
        });
        group.bench_function(BenchmarkId::from_parameter("decode_only_serde_path"), |b| {
            b.iter(|| {
                for l in corpus.lines() {
                    black_box(decode_with_serde(l, &journey, &limits).ok());
                }
            })
        });
        group.bench_function(BenchmarkId::from_parameter("decode_apply"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut engine = Engine::new(Arc::clone(&journey));
                    let mut out = Vec::with_capacity(64);
                    let t = Instant::now();
                    for l in corpus.lines() {
                        if let Ok(ev) = decode(l, &journey, &limits) {
                            engine.apply(&ev, &mut out);
                        }
                        out.clear();
                    }
                    total += t.elapsed();
                    black_box(&engine);
                }
                total
            })
        });
        group.throughput(Throughput::Elements(events.len() as u64));
        group.bench_function(BenchmarkId::from_parameter("apply_only"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut engine = Engine::new(Arc::clone(&journey));
                    let mut out = Vec::with_capacity(64);
                    for batch in &batches {
                        warm(&corpus.bytes[batch.bytes.clone()]);
                        let t = Instant::now();
                        for ev in &events[batch.events.clone()] {
                            engine.apply(ev, &mut out);
                            out.clear();
                        }
                        total += t.elapsed();
                    }
                    black_box(&engine);
                }
                total
            })
        });
        group.finish();
    }
}

/// The interner's table hash before it was keyed: `hash64` with the seed published in the
/// source. Kept here only, to measure the attack and the cost of the keyed hash.
#[derive(Clone, Default, PartialEq)]
struct FixedSeed;

impl TableHash for FixedSeed {
    fn hash(&self, id: &[u8]) -> u64 {
        hash64(0x6d69_6372_6f66_756e, id)
    }
}

/// Ids in `hostile_ids`: what one busy partition might see from one attacker.
const HOSTILE_IDS: usize = 40_000;

/// `n` UUID v4 anonymous ids (a browser's shape) whose [`FixedSeed`] hash has its top 12 bits 0:
/// they share slot 0 in every table of up to 4,096 slots and the first line (16 slots) of a
/// table of 65,536 (where 40,000 ids land), so under that hash they form one probe run.
fn crafted_ids(n: usize) -> Vec<String> {
    let mut id = *b"6f1c2a9e-0d4b-4e7a-9c3f-000000000000";
    let (mut ids, mut counter) = (Vec::with_capacity(n), 0u64);
    while ids.len() < n {
        counter += 1;
        for (k, b) in id[24..].iter_mut().rev().enumerate() {
            *b = b"0123456789abcdef"[(counter >> (4 * k) & 15) as usize];
        }
        if FixedSeed.hash(&id) >> 52 == 0 {
            ids.push(String::from_utf8(id.to_vec()).unwrap());
        }
    }
    ids
}

/// `n` random UUID v4 ids (xorshift, fixed seed).
fn random_ids(n: usize) -> Vec<String> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..n)
        .map(|_| {
            let (a, b) = (next(), next());
            microfunnel::traffic::render::uuid4(a, b)
        })
        .collect()
}

/// One Segment page call per id, a second apart.
fn page_calls(ids: &[String]) -> Vec<Vec<u8>> {
    ids.iter()
        .enumerate()
        .map(|(n, id)| {
            let (m, s) = (n / 60 % 60, n % 60);
            format!(
                r#"{{"type":"page","anonymousId":"{id}","messageId":"ajs-{n}","timestamp":"2026-03-02T{:02}:{m:02}:{s:02}.000Z","properties":{{"path":"/pricing"}}}}"#,
                9 + n / 3600
            )
            .into_bytes()
        })
        .collect()
}

fn intern_all<S: TableHash>(ids: &[String]) -> Interner<S> {
    let mut i = Interner::<S>::default();
    for id in ids {
        black_box(i.intern(id).unwrap());
    }
    i
}

fn hostile_ids(c: &mut Criterion) {
    let journey = journey();
    let limits = Limits::default();
    let sets = [("crafted", crafted_ids(HOSTILE_IDS)), ("random", random_ids(HOSTILE_IDS))];
    for (name, ids) in &sets {
        let keyed = intern_all::<KeyedHash>(ids);
        let fixed = intern_all::<FixedSeed>(ids);
        eprintln!(
            "hostile_ids/{name}: longest probe {} slots with the keyed hash, {} with the fixed hash",
            keyed.max_probe_len(),
            fixed.max_probe_len()
        );
    }
    let mut group = c.benchmark_group("hostile_ids");
    group.throughput(Throughput::Elements(HOSTILE_IDS as u64));
    group.sample_size(10);
    // Flat: the fixed hash over crafted ids takes about a second per iteration.
    group.sampling_mode(SamplingMode::Flat);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(5));
    for (name, ids) in &sets {
        let lines = page_calls(ids);
        let events: Vec<Event<'_>> = lines.iter().map(|l| decode(l, &journey, &limits).unwrap()).collect();
        let mut engine = Engine::new(Arc::clone(&journey));
        events.iter().for_each(|ev| engine.apply(ev, &mut Vec::new()));
        assert_eq!(engine.len(), HOSTILE_IDS, "one prospect per id");
        group.bench_function(BenchmarkId::new("apply_only", name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let mut engine = Engine::new(Arc::clone(&journey));
                    let mut out = Vec::with_capacity(64);
                    let t = Instant::now();
                    for ev in &events {
                        engine.apply(ev, &mut out);
                        out.clear();
                    }
                    total += t.elapsed();
                    black_box(&engine);
                }
                total
            })
        });
    }
    for (name, ids) in &sets {
        group.bench_function(BenchmarkId::new("intern_keyed_hash", name), |b| b.iter(|| intern_all::<KeyedHash>(ids)));
        group.bench_function(BenchmarkId::new("intern_fixed_hash", name), |b| b.iter(|| intern_all::<FixedSeed>(ids)));
    }
    group.finish();
}

criterion_group!(benches, engine, hostile_ids);
criterion_main!(benches);
