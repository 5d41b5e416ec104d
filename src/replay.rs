//! `microfunnel replay`: run the engine over a JSONL file, write every output as a JSON line.
//!
//! With `partitions > 1` it shards like the service: each event goes to the engine of
//! [`kafka_partition`] of its prospect id, the partition a Kafka producer keyed by prospect puts
//! it in, so the same file gives the state the service's shards would hold.
//!
//! With several files, one per input topic, [`run_merged`] merges each shard's lines from the
//! files by event time with the service's rule ([`crate::pipeline::merge`]).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt::Display;
use std::io::{self, BufRead, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::codec::{self, InputSpec, Limits};
use crate::core::crm::CrmMemory;
use crate::core::ids::kafka_partition;
use crate::core::unmapped::UnmappedNames;
use crate::core::xpart::XRecord;
use crate::core::{Census, Engine, Event, Journey, Output, RejectReason, Stats, Ts};
use crate::pipeline::merge::{self, Decision, Input};

/// Most shards `--partitions` accepts (each is an engine; Kafka topics rarely have more).
pub const MAX_PARTITIONS: u32 = 10_000;

/// How far event time moves once the input is exhausted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Each shard to its own largest event time.
    LastEvent,
    /// Every shard to this instant.
    Until(Ts),
    /// Not at all: each watermark stays at its largest event time minus the allowed lateness,
    /// as in the service with wall-clock idle advancement off.
    Stay,
}

pub struct Options {
    pub limits: Limits,
    /// Where time goes at the end.
    pub end: End,
    /// Also print digest line(s) of the final per-prospect state.
    pub digest: bool,
    /// Print only the final summary (and digest), not every output.
    pub summary_only: bool,
    /// Shards, as Kafka partitions of the input topics (1 to [`MAX_PARTITIONS`]; 0 counts as 1).
    pub partitions: u32,
    /// Prospects with an outcome a signal needs not to be flagged `small_sample` in the summary
    /// ([`crate::core::funnel::MIN_SAMPLE`] by default).
    pub min_sample: u64,
    /// How each input file is decoded (file `k` by `inputs[k]`; a file beyond the list is
    /// `auto`).
    pub inputs: Vec<InputSpec>,
}

impl Options {
    fn spec(&self, file: usize) -> InputSpec {
        self.inputs.get(file).cloned().unwrap_or_default()
    }
}

/// Totals of a replay run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Totals {
    pub lines: u64,
    /// Events refused, by the decoder (a batch counts each bad item) or by the engine.
    pub rejected: u64,
    pub outputs: u64,
    /// The decoder's share of `rejected`.
    pub rejected_by_decoder: u64,
    /// `rejected` by reason, indexed as [`RejectReason::ALL`].
    pub rejected_by_reason: [u64; RejectReason::ALL.len()],
    /// `hot_lead_suppressed` outputs by hot rule (indexed as the journey's `hot_rules`; a
    /// suppressed alert counts once for each rule that fired).
    pub suppressed_by_rule: Vec<u64>,
    /// Events whose name maps to no signal, by name (bounded).
    pub unmapped: UnmappedNames,
    /// CRM files' memories at the end: entries held and entries evicted past `[crm]
    /// max_entries`, summed (`None` without a CRM-format file).
    pub crm_memory: Option<crate::codec::outbound::CrmMemoryCounts>,
}

/// How many of the most frequent unmapped names the summary lists.
pub const UNMAPPED_TOP: usize = 20;

impl Totals {
    fn count_crm_memory(&mut self, crm: bool, memory: &CrmMemory) {
        if crm {
            let c = self.crm_memory.get_or_insert_with(Default::default);
            c.entries += memory.len() as u64;
            c.evicted += memory.evicted();
        }
    }

    fn reject(&mut self, reason: RejectReason) {
        self.rejected += 1;
        if let Some(i) = RejectReason::ALL.iter().position(|r| *r == reason) {
            self.rejected_by_reason[i] += 1;
        }
    }
}

/// Where an input came from, for messages: `line N` or `line N item K` (`batch[K]`).
#[derive(Clone, Copy)]
struct At {
    line: u64,
    item: Option<usize>,
}

impl std::fmt::Display for At {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.item {
            Some(k) => write!(f, "line {} item {k}", self.line),
            None => write!(f, "line {}", self.line),
        }
    }
}

/// Reads JSONL from `input` (each line one event or a Segment `{"batch":[...]}`), writes outputs
/// and a final funnel summary to `out`, rejected lines (with line number, batch item and reason)
/// to `err`. Same input, same bytes out. Outputs come in input
/// order, then those of the final time advance shard by shard. Returns the engines, shard `p` at
/// index `p`.
pub fn run(
    journey: Arc<Journey>,
    opts: &Options,
    mut input: impl BufRead,
    mut out: impl Write,
    mut err: impl Write,
) -> io::Result<(Vec<Engine>, Totals)> {
    let partitions = opts.partitions.max(1);
    let mut shards = engines(&journey, partitions);
    let mut topic = IdentityTopic::new(partitions as usize);
    let mut totals = Totals::default();
    let mut line = Vec::with_capacity(1024);
    let mut outputs = Vec::with_capacity(16);
    let mut buf = Vec::with_capacity(4096);
    let mut n = 0u64;
    // One CRM memory for the file (see `run_merged`).
    let (spec, mut memory) = (opts.spec(0), CrmMemory::with_limit(journey.crm.max_entries).untracked());
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        n += 1;
        let bytes = trim_newline(&line);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        totals.lines += 1;
        // A batch envelope is one Kafka message: all its events go to the shard of its first
        // one, as in the service (which applies a message's events in the shard it arrives on).
        let mut shard = None;
        for (item, result) in codec::decode_input(bytes, &spec, &journey, &opts.limits, &mut memory) {
            let at = At { line: n, item };
            let ev = match result {
                Ok(ev) => ev,
                Err(e) => {
                    totals.reject(e.reason());
                    totals.rejected_by_decoder += 1;
                    writeln!(err, "{at}: {}: {e}", e.reason().as_str())?;
                    continue;
                }
            };
            let p = *shard.get_or_insert_with(|| {
                if partitions == 1 { 0 } else { kafka_partition(ev.prospect.as_bytes(), partitions) as usize }
            });
            let engine = &mut shards[p];
            totals.unmapped.saw(&ev);
            engine.apply(&ev, &mut outputs);
            flush(engine, &mut outputs, &mut buf, &mut totals, at, opts.summary_only, &mut out, &mut err)?;
            topic.collect(engine)?;
            topic.drain(&mut shards, &mut outputs, &mut buf, &mut totals, at, opts.summary_only, &mut out, &mut err)?;
        }
    }
    totals.count_crm_memory(spec.format.is_crm(), &memory);
    let at = At { line: n, item: None };
    finish(&journey, opts, &mut shards, &mut topic, &mut totals, at, &mut buf, &mut out, &mut err)?;
    out.flush()?;
    Ok((shards, totals))
}

/// One input file of [`run_merged`]: a name for messages, and its lines.
pub struct Named<R> {
    pub name: String,
    pub input: R,
}

/// A decoded line waiting in its shard's queue for its file.
struct Queued<'a> {
    ev: Event<'a>,
    /// The merge key: the event time of the line's first event (a batch envelope is one
    /// message, merged as a whole, as in the service).
    key: Ts,
    line: u64,
    file: usize,
}

/// [`run`] over several files, one per input topic in `kafka.input_topics` order (e.g. web, then
/// CRM): each shard's lines are merged from the files by event time exactly as the service
/// merges a shard's input partitions ([`merge::decide`]; the files are complete, so a file with
/// nothing left for a shard is caught up and nothing is waited for). Outputs come in one global
/// order that is, per shard, the merge order: repeatedly the shard whose next line has the
/// smallest event time (ties: the lower shard) applies it; then the final time advance shard by
/// shard. Rejected lines go to `err` first, file by file (`line N of NAME: ...`). The files are
/// read into memory.
///
/// CRM formats: each file has one [`CrmMemory`] (previous values, contact links), read in the
/// file's order. The service holds one per shard and topic; the two agree when the CRM topic is
/// keyed by the prospect (the contact), as co-partitioning requires, since every message about
/// an object then arrives in the shard of its contact.
pub fn run_merged<R: Read>(
    journey: Arc<Journey>,
    opts: &Options,
    inputs: Vec<Named<R>>,
    mut out: impl Write,
    mut err: impl Write,
) -> io::Result<(Vec<Engine>, Totals)> {
    let partitions = opts.partitions.max(1) as usize;
    let mut data = Vec::with_capacity(inputs.len());
    for mut f in inputs {
        let mut bytes = Vec::new();
        f.input.read_to_end(&mut bytes)?;
        data.push((f.name, bytes));
    }
    let mut totals = Totals::default();
    // queues[shard][file]
    let mut queues: Vec<Vec<VecDeque<Queued<'_>>>> =
        (0..partitions).map(|_| (0..data.len()).map(|_| VecDeque::new()).collect()).collect();
    for (file, (name, bytes)) in data.iter().enumerate() {
        let (spec, mut memory) = (opts.spec(file), CrmMemory::with_limit(journey.crm.max_entries).untracked());
        for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
            let line_no = i as u64 + 1;
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            totals.lines += 1;
            let mut first: Option<(usize, Ts)> = None;
            for (item, result) in codec::decode_input(line, &spec, &journey, &opts.limits, &mut memory) {
                match result {
                    Ok(ev) => {
                        let (p, key) = *first.get_or_insert_with(|| {
                            let p = if partitions == 1 {
                                0
                            } else {
                                kafka_partition(ev.prospect.as_bytes(), partitions as u32) as usize
                            };
                            (p, ev.ts)
                        });
                        queues[p][file].push_back(Queued { ev, key, line: line_no, file });
                    }
                    Err(e) => {
                        totals.reject(e.reason());
                        totals.rejected_by_decoder += 1;
                        let at = At { line: line_no, item };
                        writeln!(err, "{at} of {name}: {}: {e}", e.reason().as_str())?;
                    }
                }
            }
        }
        totals.count_crm_memory(spec.format.is_crm(), &memory);
    }
    let mut shards = engines(&journey, partitions as u32);
    let mut topic = IdentityTopic::new(partitions);
    let (mut outputs, mut buf) = (Vec::with_capacity(16), Vec::with_capacity(4096));
    // Nothing is ever behind, so the merge never looks at the clock; it still takes one.
    let now = Instant::now();
    // Each shard's next pick, smallest event time first, ties to the lower shard.
    let mut next: BinaryHeap<Reverse<(Ts, usize)>> =
        (0..partitions).filter_map(|p| pick(&queues[p], now).map(|(_, ts)| Reverse((ts, p)))).collect();
    let mut last = Loc { line: 0, name: "" };
    while let Some(Reverse((_, p))) = next.pop() {
        let Some((file, _)) = pick(&queues[p], now) else { continue };
        let Some(q) = queues[p][file].pop_front() else { continue };
        totals.unmapped.saw(&q.ev);
        shards[p].apply(&q.ev, &mut outputs);
        last = Loc { line: q.line, name: &data[q.file].0 };
        flush(&shards[p], &mut outputs, &mut buf, &mut totals, &last, opts.summary_only, &mut out, &mut err)?;
        topic.collect(&mut shards[p])?;
        topic.drain(&mut shards, &mut outputs, &mut buf, &mut totals, &last, opts.summary_only, &mut out, &mut err)?;
        if let Some((_, ts)) = pick(&queues[p], now) {
            next.push(Reverse((ts, p)));
        }
    }
    finish(&journey, opts, &mut shards, &mut topic, &mut totals, &last, &mut buf, &mut out, &mut err)?;
    out.flush()?;
    Ok((shards, totals))
}

/// One engine per shard; with identity resolution and several shards, each told its
/// partition, so that identities resolve across partitions ([`IdentityTopic`]).
fn engines(journey: &Arc<Journey>, partitions: u32) -> Vec<Engine> {
    (0..partitions)
        .map(|p| {
            let mut e = Engine::new(Arc::clone(journey));
            e.resolve_across(p, partitions);
            e
        })
        .collect()
}

/// The identity topic as replay models it (`[identity] resolve` with several partitions): one
/// queue per partition, fed with the records the shards send (through their bytes, as the
/// service sends them). After each input message the queues are drained: repeatedly the head
/// with the smallest event time (ties: the lower partition) is applied to its partition's
/// shard, whose records join the queues in turn; propagation stops once no home of a group
/// learns anything new. So replay shows the state the service reaches once the topic is
/// drained.
struct IdentityTopic {
    queues: Vec<VecDeque<XRecord>>,
    bytes: Vec<u8>,
    /// Records queued (a drain with none touches no queue).
    queued: usize,
}

/// More records in one drain than this means propagation does not stop: a bug, reported.
const MAX_DRAIN: usize = 10_000_000;

impl IdentityTopic {
    fn new(partitions: usize) -> IdentityTopic {
        IdentityTopic { queues: (0..partitions).map(|_| VecDeque::new()).collect(), bytes: Vec::new(), queued: 0 }
    }

    fn collect(&mut self, engine: &mut Engine) -> io::Result<()> {
        for (p, r) in engine.take_identity_records() {
            self.bytes.clear();
            r.encode(&mut self.bytes);
            let r = XRecord::decode(&self.bytes).map_err(io::Error::other)?;
            self.queues[p as usize].push_back(r);
            self.queued += 1;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn drain(
        &mut self,
        shards: &mut [Engine],
        outputs: &mut Vec<Output>,
        buf: &mut Vec<u8>,
        totals: &mut Totals,
        at: impl Display + Copy,
        summary_only: bool,
        out: &mut impl Write,
        err: &mut impl Write,
    ) -> io::Result<()> {
        for _ in 0..MAX_DRAIN {
            if self.queued == 0 {
                return Ok(());
            }
            let head = self.queues.iter().enumerate().filter_map(|(p, q)| q.front().map(|r| (r.ts(), p))).min();
            let Some((_, p)) = head else { return Ok(()) };
            let Some(r) = self.queues[p].pop_front() else { return Ok(()) };
            self.queued -= 1;
            shards[p].apply_identity_record(r, outputs);
            flush(&shards[p], outputs, buf, totals, at, summary_only, out, err)?;
            self.collect(&mut shards[p])?;
        }
        Err(io::Error::other(format!("{at}: identity records did not settle after {MAX_DRAIN} records")))
    }
}

/// Where a line came from, for messages: `N of NAME`.
struct Loc<'a> {
    line: u64,
    name: &'a str,
}

impl Display for Loc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {} of {}", self.line, self.name)
    }
}

/// Which file's head a shard processes next, and its event time: the service's merge rule with
/// every file complete (an empty queue is caught up, so it never waits).
fn pick(files: &[VecDeque<Queued<'_>>], now: Instant) -> Option<(usize, Ts)> {
    let heads: Vec<Input> = files
        .iter()
        .map(|q| q.front().map_or(Input::CaughtUp, |h| Input::Head { ts: Some(h.key), seq: h.line }))
        .collect();
    match merge::decide(&heads, None, now, Duration::ZERO) {
        Decision::Take { input, .. } | Decision::TakeAfterTimeout { input, .. } => {
            files[input].front().map(|h| (input, h.key))
        }
        Decision::Wait | Decision::Idle => None,
    }
}

/// The end of a run: each shard's final time advance (its outputs attributed to `at`; the
/// identity records it caused, such as the `Forget`s of people who expired, drained), the
/// summary, the digests, and everything still buffered written out.
#[allow(clippy::too_many_arguments)]
fn finish(
    journey: &Journey,
    opts: &Options,
    shards: &mut [Engine],
    topic: &mut IdentityTopic,
    totals: &mut Totals,
    at: impl Display + Copy,
    buf: &mut Vec<u8>,
    out: &mut impl Write,
    err: &mut impl Write,
) -> io::Result<()> {
    let mut outputs = Vec::new();
    for engine in shards.iter_mut() {
        let end = match opts.end {
            End::LastEvent => Some(engine.max_event_time()),
            End::Until(t) => Some(t),
            End::Stay => None,
        };
        if let Some(t) = end {
            engine.advance_to(t, &mut outputs);
        }
        flush(engine, &mut outputs, buf, totals, at, opts.summary_only, out, err)?;
        topic.collect(engine)?;
    }
    topic.drain(shards, &mut outputs, buf, totals, at, opts.summary_only, out, err)?;
    write_summary(journey, shards, totals, opts.min_sample, buf)?;
    if opts.digest {
        write_digests(shards, buf);
    }
    out.write_all(buf)
}

/// One `funnel_summary` over all shards: stats, census and funnel counters summed, the latest
/// shard watermark. With one shard, exactly that engine's figures, except that `stats.rejected`
/// also counts the events the decoder refused, and `stats.rejected_by_reason` splits it.
fn write_summary(
    journey: &Journey,
    shards: &[Engine],
    totals: &Totals,
    min_sample: u64,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    let Some((first, rest)) = shards.split_first() else { return Ok(()) };
    let (mut stats, mut census, mut funnel) = (first.stats().clone(), first.census(), first.funnel().clone());
    let mut watermark = first.watermark();
    for e in rest {
        add_stats(&mut stats, e.stats());
        add_census(&mut census, &e.census());
        funnel.absorb(e.funnel());
        watermark = watermark.max(e.watermark());
    }
    stats.rejected += totals.rejected_by_decoder;
    let identity = journey.identity.map(|_| {
        shards.iter().fold(crate::core::IdentityStats::default(), |mut t, e| {
            let s = e.identity_stats();
            (t.merged, t.refused, t.routed) = (t.merged + s.merged, t.refused + s.refused, t.routed + s.routed);
            t
        })
    });
    let by_reason: Vec<(&str, u64)> = RejectReason::ALL
        .iter()
        .zip(totals.rejected_by_reason)
        .filter(|(_, n)| *n > 0)
        .map(|(r, n)| (r.as_str(), n))
        .collect();
    let by_rule: Vec<(&str, u64)> =
        journey.hot_rules.iter().zip(&totals.suppressed_by_rule).map(|(r, n)| (r.name.as_str(), *n)).collect();
    let report = funnel.report_with(journey, min_sample);
    let breakdowns = crate::core::breakdown::report(journey, shards, min_sample);
    let figures = codec::outbound::Figures {
        watermark,
        stats: &stats,
        census: &census,
        funnel: &report,
        breakdowns: &breakdowns,
        breakdown_counts: &[],
    };
    let (unmapped, unmapped_other) = totals.unmapped.top(UNMAPPED_TOP);
    let counts = codec::outbound::ReplayCounts {
        rejected_by_reason: &by_reason,
        alerts_suppressed_by_rule: &by_rule,
        unmapped_top: &unmapped,
        unmapped_other,
        identity: identity.as_ref(),
        crm_memory: totals.crm_memory.as_ref(),
    };
    codec::write_report(&figures, &counts, buf).map_err(io::Error::other)?;
    buf.push(b'\n');
    Ok(())
}

/// One digest line, or with several shards one per shard and then their total (the wrapping sum,
/// as [`Engine::digest`] is itself a sum over prospects).
fn write_digests(shards: &[Engine], buf: &mut Vec<u8>) {
    // With identity resolution, `resolved`: what does not depend on how the shards' inputs and
    // the identity topic interleave (`Engine::resolved_digest`).
    let identity = shards.first().is_some_and(|e| e.identity_map().is_some());
    let line = |partition: Option<usize>, prospects: usize, digest: u64, resolved: u64| {
        let partition = partition.map(|p| format!("\"partition\":{p},")).unwrap_or_default();
        let resolved = if identity { format!(",\"resolved\":\"{resolved:016x}\"") } else { String::new() };
        format!("{{\"kind\":\"digest\",{partition}\"prospects\":{prospects},\"digest\":\"{digest:016x}\"{resolved}}}\n")
    };
    let (mut prospects, mut digest, mut resolved) = (0, 0u64, 0u64);
    for (p, e) in shards.iter().enumerate() {
        let (d, r) = (e.digest(), if identity { e.resolved_digest() } else { 0 });
        if shards.len() > 1 {
            buf.extend_from_slice(line(Some(p), e.len(), d, r).as_bytes());
        }
        prospects += e.len();
        digest = digest.wrapping_add(d);
        resolved = resolved.wrapping_add(r);
    }
    buf.extend_from_slice(line(None, prospects, digest, resolved).as_bytes());
}

// Destructured so that a new counter cannot be forgotten in the sum.
fn add_stats(into: &mut Stats, s: &Stats) {
    let Stats {
        events,
        applied,
        duplicates,
        late,
        unmapped,
        ignored,
        rejected,
        stage_changes,
        hot_leads,
        alerts_suppressed,
        ghosted,
        stalled,
        ahead,
        duplicate_conflicts,
        reopened,
        expired,
        evicted,
    } = s;
    into.expired += expired;
    into.evicted += evicted;
    into.ahead += ahead;
    into.duplicate_conflicts += duplicate_conflicts;
    into.reopened += reopened;
    into.events += events;
    into.applied += applied;
    into.duplicates += duplicates;
    into.late += late;
    into.unmapped += unmapped;
    into.ignored += ignored;
    into.rejected += rejected;
    into.stage_changes += stage_changes;
    into.hot_leads += hot_leads;
    into.alerts_suppressed += alerts_suppressed;
    into.ghosted += ghosted;
    into.stalled += stalled;
}

fn add_census(into: &mut Census, c: &Census) {
    let Census {
        prospects,
        hot,
        ghosted,
        stalled,
        gone_quiet,
        current_opportunity,
        no_current_opportunity,
        not_a_prospect,
    } = c;
    into.gone_quiet += gone_quiet;
    into.prospects += prospects;
    into.hot += hot;
    into.ghosted += ghosted;
    into.stalled += stalled;
    into.current_opportunity += current_opportunity;
    into.no_current_opportunity += no_current_opportunity;
    into.not_a_prospect += not_a_prospect;
}

fn trim_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[allow(clippy::too_many_arguments)]
fn flush(
    engine: &Engine,
    outputs: &mut Vec<Output>,
    buf: &mut Vec<u8>,
    totals: &mut Totals,
    at: impl Display,
    summary_only: bool,
    out: &mut impl Write,
    err: &mut impl Write,
) -> io::Result<()> {
    for o in outputs.drain(..) {
        if let Output::Rejected { reason, detail } = &o {
            totals.reject(*reason);
            writeln!(err, "{at}: {}: {detail}", reason.as_str())?;
            continue;
        }
        if let Output::HotLeadSuppressed(s) = &o {
            let rules = engine.journey().hot_rules.len();
            totals.suppressed_by_rule.resize(rules, 0);
            for (r, n) in totals.suppressed_by_rule.iter_mut().enumerate() {
                *n += u64::from(s.rules & (1 << r) != 0);
            }
        }
        totals.outputs += 1;
        if summary_only {
            continue;
        }
        codec::write_output(engine, &o, buf).map_err(io::Error::other)?;
        buf.push(b'\n');
    }
    if buf.len() >= 64 * 1024 {
        out.write_all(buf)?;
        buf.clear();
    }
    Ok(())
}
