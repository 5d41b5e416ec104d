//! In-process identity resolution across partitions: one engine per partition and the
//! identity topic between them, delivered in order (FIFO per partition), with the helpers the
//! in-process tests share (journeys, ids homed on a partition, replay's shards, what the shards
//! hold). Included by the tests that need it (`#[path = "support/cluster.rs"] mod cluster;`).

use std::collections::VecDeque;
use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::ids::kafka_partition;
use microfunnel::core::time::parse_rfc3339;
use microfunnel::core::xpart::XRecord;
use microfunnel::core::{Engine, Event, Journey, Output, ProspectView};
use microfunnel::replay::{self, End, Options};

pub const PARTITIONS: u32 = 3;

pub const B2B: &str = include_str!("../../deploy/journeys/b2b.toml");

/// The b2b journey with identity resolution on, and `extra` after it.
#[allow(dead_code)]
pub fn resolving(extra: &str) -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(&format!("{B2B}\n[identity]\nresolve = true\n{extra}")).unwrap())
}

/// The first id `{prefix}0`, `{prefix}1`, ... homed on `partition` (of [`PARTITIONS`]).
#[allow(dead_code)]
pub fn on(partition: u32, prefix: &str) -> String {
    (0..).map(|i| format!("{prefix}{i}")).find(|k| kafka_partition(k.as_bytes(), PARTITIONS) == partition).unwrap()
}

/// One engine per partition of `partitions`, each resolving across them.
#[allow(dead_code)]
pub fn engines(j: &Arc<Journey>, partitions: u32) -> Vec<Engine> {
    (0..partitions)
        .map(|p| {
            let mut e = Engine::new(Arc::clone(j));
            e.resolve_across(p, partitions);
            e
        })
        .collect()
}

/// Partition `p`'s engine restored from `bytes` (its `encode_state`), its expiry gated.
#[allow(dead_code)]
pub fn restore(j: &Arc<Journey>, bytes: &[u8], p: u32) -> Engine {
    let mut restored = Engine::decode_state(Arc::clone(j), bytes).unwrap();
    restored.resolve_across(p, PARTITIONS);
    restored.gate_expiry();
    restored
}

/// Partition `p`'s `live` engine as a restore loads it, `how` being `"snapshot"` (its full
/// state) or `"changelog"` (a checkpoint of what changed, folded onto an empty engine); its
/// digest survives, and it resolves across partitions.
#[allow(dead_code)]
pub fn restored_as(how: &str, j: &Arc<Journey>, live: &Engine, p: usize) -> Engine {
    use microfunnel::store::changelog::{Batch, Fold};
    use std::collections::BTreeMap;
    let mut live = live.clone();
    let mut e = if how == "snapshot" {
        let mut bytes = Vec::new();
        live.encode_state(&mut bytes);
        Engine::decode_state(Arc::clone(j), &bytes).unwrap()
    } else {
        let changed = live.take_changed();
        let mut batch = Batch::default();
        batch.checkpoint(&live, &changed, &[], 1, &BTreeMap::from([("crm".to_string(), 5)]));
        let mut f = Fold::new(Engine::new(Arc::clone(j)), BTreeMap::new(), 0);
        for (o, (k, v)) in batch.records().enumerate() {
            f.push(p as i32, o as i64, k, v);
        }
        f.finish().engine
    };
    assert_eq!(e.digest(), live.digest(), "{how}, shard {p}");
    e.resolve_across(p as u32, PARTITIONS);
    e
}

/// The lines of generated traffic.
#[allow(dead_code)]
pub fn generated(opts: microfunnel::traffic::Options, j: &Journey) -> Vec<String> {
    let mut g = microfunnel::traffic::Generator::new(opts, j, true).unwrap();
    let (mut line, mut key, mut lines) = (Vec::new(), String::new(), Vec::new());
    while g.next_into(&mut line, &mut key).is_some() {
        lines.push(String::from_utf8(line.clone()).unwrap());
    }
    lines
}

/// Replay's options: `--summary-only`, over `partitions`, ending with `end`.
#[allow(dead_code)]
pub fn replay_options(partitions: u32, end: End) -> Options {
    Options {
        limits: Limits::default(),
        end,
        digest: false,
        summary_only: true,
        partitions,
        min_sample: 30,
        inputs: Vec::new(),
    }
}

/// Replay of `lines` with `opts`: the shards, and what it wrote to stdout and stderr.
#[allow(dead_code)]
pub fn replay_with(j: &Arc<Journey>, lines: &[String], opts: &Options) -> (Vec<Engine>, Vec<u8>, Vec<u8>) {
    let input = lines.join("\n") + "\n";
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let (shards, _) = replay::run(Arc::clone(j), opts, input.as_bytes(), &mut out, &mut err).unwrap();
    (shards, out, err)
}

/// Replay's shards over `partitions` (`--summary-only`), ending with `end`.
#[allow(dead_code)]
pub fn replay_shards(j: &Arc<Journey>, lines: &[String], partitions: u32, end: End) -> Vec<Engine> {
    replay_with(j, lines, &replay_options(partitions, end)).0
}

/// [`replay_shards`], no line refused.
#[allow(dead_code)]
pub fn replay_clean(j: &Arc<Journey>, lines: &[String], partitions: u32, end: End) -> Vec<Engine> {
    let (shards, _, err) = replay_with(j, lines, &replay_options(partitions, end));
    assert!(err.is_empty(), "{}", String::from_utf8_lossy(&err));
    shards
}

/// The people (`resolved_digest`) over all shards.
#[allow(dead_code)]
pub fn resolved(shards: &[Engine]) -> u64 {
    shards.iter().fold(0u64, |a, e| a.wrapping_add(e.resolved_digest()))
}

/// The prospects held over all shards.
#[allow(dead_code)]
pub fn people(shards: &[Engine]) -> u64 {
    shards.iter().map(|e| e.census().prospects).sum()
}

/// The funnel's stage counts summed over shards.
#[allow(dead_code)]
pub fn in_stage(shards: &[Engine]) -> Vec<u64> {
    let mut sum = vec![0; shards[0].funnel().in_stage.len()];
    for e in shards {
        for (s, n) in sum.iter_mut().zip(&e.funnel().in_stage) {
            *s += n;
        }
    }
    sum
}

/// The person's prospect wherever it lives (the one that is not a redirect).
#[allow(dead_code)]
pub fn person(shards: &[Engine], id: &str) -> ProspectView {
    let found: Vec<ProspectView> = shards
        .iter()
        .filter_map(|e| e.find(id).map(|ix| (e, ix)))
        .filter(|(e, ix)| !e.prospect(*ix).has(microfunnel::core::prospect::REDIRECT))
        .map(|(e, ix)| e.view(ix, None))
        .collect();
    assert_eq!(found.len(), 1, "{id} live on {} shards", found.len());
    found.into_iter().next().unwrap()
}

/// One step of a shard reading at its own pace: of its next input (when `ready`) and the head of
/// its identity partition, the earlier (the head whenever there is no input to take).
#[allow(dead_code)]
pub fn step(
    shard: &mut Engine,
    input: &mut VecDeque<Event<'static>>,
    topic: &mut VecDeque<XRecord>,
    ready: bool,
    out: &mut Vec<Output>,
) {
    let take_record = match (input.front().filter(|_| ready), topic.front()) {
        (Some(ev), Some(r)) => r.ts() < ev.ts,
        (None, Some(_)) => true,
        _ => false,
    };
    if take_record {
        let r = topic.pop_front().unwrap();
        shard.apply_identity_record(r, out);
    } else {
        let ev = input.pop_front().unwrap();
        shard.apply(&ev, out);
    }
}

/// One round of progress: every shard publishes (`idle[p]`) and the records are delivered
/// (those they cause wait for the next round). Whether any record was sent.
#[allow(dead_code)]
pub fn progress_round(shards: &mut [Engine], idle: &[bool], out: &mut Vec<Output>) -> bool {
    let mut records = Vec::new();
    for (p, e) in shards.iter_mut().enumerate() {
        e.publish_progress(idle[p], false, out);
        records.extend(e.take_identity_records());
    }
    let sent = !records.is_empty();
    for (q, r) in records {
        shards[q as usize].apply_identity_record(r, out);
    }
    sent
}

/// Engines of [`PARTITIONS`] partitions, and the identity topic between them.
pub struct Cluster {
    pub j: Arc<Journey>,
    pub shards: Vec<Engine>,
    pub queue: VecDeque<(u32, XRecord)>,
    pub out: Vec<Output>,
    /// Every record delivered, in order.
    pub delivered: Vec<(u32, XRecord)>,
}

#[allow(dead_code)]
impl Cluster {
    pub fn new(j: Arc<Journey>) -> Cluster {
        let shards = engines(&j, PARTITIONS);
        Cluster { j, shards, queue: VecDeque::new(), out: Vec::new(), delivered: Vec::new() }
    }

    /// One input line, applied on its partition; the identity topic drained after it.
    pub fn send(&mut self, line: &str) {
        self.apply(line);
        self.drain();
    }

    /// One input line applied on its partition; the records it causes are queued, not delivered.
    pub fn apply(&mut self, line: &str) {
        let ev = microfunnel::codec::decode(line.as_bytes(), &self.j, &Limits::default()).unwrap();
        let p = kafka_partition(ev.prospect.as_bytes(), PARTITIONS) as usize;
        self.shards[p].apply(&ev, &mut self.out);
        self.queue.extend(self.shards[p].take_identity_records());
    }

    /// Delivers every queued identity record, and those they cause.
    pub fn drain(&mut self) {
        while let Some((p, r)) = self.queue.pop_front() {
            self.delivered.push((p, r.clone()));
            self.shards[p as usize].apply_identity_record(r, &mut self.out);
            self.queue.extend(self.shards[p as usize].take_identity_records());
        }
    }

    /// Partition `p`'s clock advanced to `to`; the records it causes are queued, not delivered.
    pub fn advance(&mut self, p: usize, to: &str) {
        self.shards[p].advance_to(parse_rfc3339(to).unwrap(), &mut self.out);
        self.queue.extend(self.shards[p].take_identity_records());
    }

    /// The transfers delivered so far.
    pub fn transfers(&self) -> Vec<(u32, XRecord)> {
        self.delivered.iter().filter(|(_, r)| matches!(r, XRecord::Transfer { .. })).cloned().collect()
    }

    pub fn digests(&self) -> Vec<u64> {
        self.shards.iter().map(Engine::digest).collect()
    }
}
