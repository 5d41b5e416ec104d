//! Engine throughput on generated traffic (`microfunnel gen`'s realistic mix) over 100k and 1M
//! prospects. Baselines measured in the same run: serde_json parsing the same lines into a
//! `serde_json::Value`, and skimming them with `IgnoredAny` (the least work serde_json can do).
//!
//! `apply_only` applies pre-decoded events one `Engine::apply` at a time and times the engine
//! only, the way the pipeline runs it: before each batch of `BATCH` lines is applied, its lines
//! are read once, untimed, as decoding them would have just done (decoded events borrow their
//! strings from the payloads). Without that, every event's id would be a cold read from a
//! multi-gigabyte corpus, a cost the service never pays and the engine cannot change.
//!
//! `cargo bench --bench engine`; `MICROFUNNEL_BENCH_PROSPECTS=100000` limits the scales.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde::de::IgnoredAny;

use microfunnel::codec::{Limits, decode, decode_with_serde};
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

criterion_group!(benches, engine);
criterion_main!(benches);
