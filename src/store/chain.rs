//! Chains of snapshot files: a base (a full state, `<seq>.snap`) and the deltas after it
//! (`<seq>.delta`), each delta one checkpoint's changelog records (the bytes `Batch` encodes:
//! changed prospects, tombstones, CRM entries, identifiers and links, then the checkpoint record
//! with the shard meta), so every part of the state a checkpoint writes to the changelog rides
//! along without being listed here. Restoring a chain decodes the base and folds the deltas
//! onto it in order ([`Fold`], as a changelog top-up does).
//!
//! Delta file: the snapshot container of `file.rs` (magic, version, JSON header with `prev`,
//! header checksum), then the body:
//! ```text
//! n        u32 LE   records, the checkpoint record last
//! n ×      klen u32 LE, key, present u8 (0: a tombstone), [vlen u32 LE, value]
//! ```
//! A delta names the checkpoint it follows (`prev`): a chain is a base and the deltas that
//! follow it one after the other; a damaged or missing delta ends the chain there (a later one
//! that does not follow the chain's end is not applied). The implementation is generic over
//! [`Images`], where a store keeps named byte images (files, or memory).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::changelog::{Batch, Fold, FoldStats};
use super::file::{FILE_SEED, head, parse};
use super::{Checked, FORMAT_VERSION, Header, Pending, SnapshotError, SnapshotStore};
use crate::core::StateError;
use crate::core::ids::hash64;
use crate::core::snapshot::{Dec, ProspectRecord, STATE_VERSION, StateWriter, journey_fingerprint};
use crate::core::{Engine, Journey};

/// What a delta says of the state after it, computed when its records were captured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeltaFacts {
    /// The checkpoint the delta applies to (the end of the store's chain).
    pub prev: u64,
    /// Prospects held after it.
    pub prospects: u64,
    /// The state digest after it ([`Engine::digest`]).
    pub digest: u64,
}

/// Where a store's chain of one shard ends, and its size: what decides a compaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChainTip {
    /// The newest checkpoint of the chain (the base's, or the newest delta's).
    pub seq: u64,
    pub base_seq: u64,
    /// Body bytes of the base and of the deltas after it.
    pub base_bytes: u64,
    pub delta_bytes: u64,
    pub deltas: u32,
}

impl ChainTip {
    /// Whether the deltas passed `share` of the base (then the base is rewritten).
    pub fn due(&self, share: f64) -> bool {
        self.deltas > 0 && self.delta_bytes as f64 >= share * self.base_bytes as f64
    }
}

/// A base and the deltas that follow it, each read and checked.
pub struct Chain {
    pub base: Checked,
    pub deltas: Vec<Checked>,
}

impl Chain {
    /// The header of the chain's newest file: the checkpoint the chain's state is.
    pub fn header(&self) -> &Header {
        self.deltas.last().map_or(&self.base.header, |d| &d.header)
    }

    /// The chain's newest file.
    pub fn path(&self) -> &Path {
        self.deltas.last().map_or(&self.base.path, |d| &d.path)
    }

    /// Body bytes read (base and deltas).
    pub fn bytes(&self) -> u64 {
        self.base.body.len() as u64 + self.deltas.iter().map(|d| d.body.len() as u64).sum::<u64>()
    }

    fn tip(&self) -> ChainTip {
        ChainTip {
            seq: self.header().seq,
            base_seq: self.base.header.seq,
            base_bytes: self.base.header.body_len,
            delta_bytes: self.deltas.iter().map(|d| d.header.body_len).sum(),
            deltas: self.deltas.len() as u32,
        }
    }

    /// The chain's state for `journey`: the base decoded, each delta's records folded onto it in
    /// order; with deltas, the result's digest must equal the newest delta's.
    pub fn engine(&self, journey: Arc<Journey>) -> Result<Engine, SnapshotError> {
        let engine = self.base.engine(journey)?;
        if self.deltas.is_empty() {
            return Ok(engine);
        }
        let b = &self.base.header;
        let mut fold = Fold::new(engine, b.positions.clone(), b.seq);
        for d in &self.deltas {
            let bad = |reason: String| SnapshotError::Delta { path: d.path.clone(), reason };
            let before = fold.stats();
            let mut i = 0;
            for_each_record(&d.body, |key, value| {
                fold.push(d.header.shard, i, key, value);
                i += 1;
            })
            .map_err(bad)?;
            one_checkpoint(before, fold.stats()).map_err(bad)?;
        }
        let folded = fold.finish();
        let found = format!("{:016x}", folded.engine.digest());
        let newest = self.header();
        if found != newest.digest {
            return Err(SnapshotError::Digest {
                path: self.path().to_path_buf(),
                expected: newest.digest.clone(),
                found,
            });
        }
        Ok(folded.engine)
    }
}

/// Encodes a checkpoint's records as a delta body.
fn encode_body(batch: &Batch, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    for (key, value) in batch.records() {
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        match value {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                out.extend_from_slice(v);
            }
        }
    }
}

/// Calls `visit` with each record of a delta body, in order.
fn for_each_record<'b>(body: &'b [u8], mut visit: impl FnMut(&'b [u8], Option<&'b [u8]>)) -> Result<(), String> {
    fn take<'b>(body: &'b [u8], at: &mut usize, n: usize) -> Result<&'b [u8], String> {
        let end = at.checked_add(n).filter(|&e| e <= body.len()).ok_or_else(|| format!("body cut at byte {at}"))?;
        let s = &body[*at..end];
        *at = end;
        Ok(s)
    }
    let u32_at = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let mut at = 0usize;
    let n = u32_at(take(body, &mut at, 4)?);
    for _ in 0..n {
        let klen = u32_at(take(body, &mut at, 4)?);
        let key = take(body, &mut at, klen)?;
        let value = match take(body, &mut at, 1)?[0] {
            0 => None,
            1 => {
                let vlen = u32_at(take(body, &mut at, 4)?);
                Some(take(body, &mut at, vlen)?)
            }
            t => return Err(format!("record presence byte {t}")),
        };
        visit(key, value);
    }
    if take(body, &mut at, 1).is_ok() {
        return Err("bytes after the last record".to_string());
    }
    Ok(())
}

/// What a store keeps: named byte images per shard, each written durably and atomically.
pub(crate) trait Images {
    /// The name shown for an image (a file's path).
    fn path(&self, shard: i32, name: &str) -> PathBuf;
    /// Writes `parts` one after the other as image `name`, atomically and durably.
    fn put(&self, shard: i32, name: &str, parts: &[&[u8]]) -> Result<(), SnapshotError>;
    fn get(&self, shard: i32, name: &str) -> Result<Vec<u8>, SnapshotError>;
    /// Names of the shard's images, any order (others than bases and deltas are ignored).
    fn names(&self, shard: i32) -> Result<Vec<String>, SnapshotError>;
    fn remove(&self, shard: i32, name: &str);
}

/// A store that keeps each shard's snapshots as a chain of [`Images`] (`FileStore`,
/// `MemStore`): the port is the same chain functions over any of them.
pub(crate) trait Chained: Images {
    /// Bases kept per shard, each with the deltas after it.
    fn keep(&self) -> usize;
    fn tips(&self) -> &Tips;
}

impl<T: Chained + Send> SnapshotStore for T {
    fn save(&self, what: Pending, engine: &Engine) -> Result<Header, SnapshotError> {
        let _busy = self.tips().busy();
        save_base(self, self.tips(), self.keep(), what, engine)
    }

    fn save_delta(
        &self,
        what: Pending,
        delta: DeltaFacts,
        batch: &Batch,
        journey: &Journey,
    ) -> Result<Header, SnapshotError> {
        let _busy = self.tips().busy();
        save_delta(self, self.tips(), self.keep(), what, delta, batch, journey)
    }

    fn latest(&self, shard: i32) -> (Option<Chain>, Vec<SnapshotError>) {
        let _busy = self.tips().busy();
        latest(self, Some(self.tips()), shard, None)
    }

    fn list(&self, shard: i32) -> Result<Vec<PathBuf>, SnapshotError> {
        list(self, shard)
    }

    fn tip(&self, shard: i32) -> Option<ChainTip> {
        self.tips().get(shard)
    }

    fn compact(&self, shard: i32, journey: &Arc<Journey>) -> Result<Option<Header>, SnapshotError> {
        let _busy = self.tips().busy();
        compact(self, self.tips(), self.keep(), shard, journey)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Base,
    Delta,
}

fn name(seq: u64, kind: Kind) -> String {
    match kind {
        Kind::Base => format!("{seq:020}.snap"),
        Kind::Delta => format!("{seq:020}.delta"),
    }
}

fn parse_name(name: &str) -> Option<(u64, Kind)> {
    if let Some(s) = name.strip_suffix(".snap") {
        return Some((s.parse().ok()?, Kind::Base));
    }
    Some((name.strip_suffix(".delta")?.parse().ok()?, Kind::Delta))
}

/// The shard's bases and deltas, by sequence number.
fn entries(images: &impl Images, shard: i32) -> Result<Vec<(u64, Kind, String)>, SnapshotError> {
    let mut out: Vec<(u64, Kind, String)> =
        images.names(shard)?.into_iter().filter_map(|n| parse_name(&n).map(|(s, k)| (s, k, n))).collect();
    out.sort();
    Ok(out)
}

/// Where each store's chains end (set by saves and loads of this process).
/// Chain operations of one store hold `busy`, so a compaction on the writer thread and a
/// restore on the pipeline thread never interleave their reads and writes of one shard's files.
#[derive(Default)]
pub(crate) struct Tips(Mutex<HashMap<i32, ChainTip>>, Mutex<()>);

impl Tips {
    pub(crate) fn busy(&self) -> std::sync::MutexGuard<'_, ()> {
        self.1.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, shard: i32) -> Option<ChainTip> {
        self.lock().get(&shard).copied()
    }

    fn set(&self, shard: i32, tip: Option<ChainTip>) {
        match tip {
            Some(t) => self.lock().insert(shard, t),
            None => self.lock().remove(&shard),
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, ChainTip>> {
        // Every change is one call: a panic elsewhere leaves the map consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removes images numbered after `seq` (a future a restore did not take: they must not extend a
/// chain that reaches `seq` again), then bases beyond the newest `keep` and deltas no kept base
/// needs.
fn prune(images: &impl Images, shard: i32, keep: usize, seq: u64) -> Result<(), SnapshotError> {
    let all = entries(images, shard)?;
    for (s, _, n) in &all {
        if *s > seq {
            images.remove(shard, n);
        }
    }
    let bases: Vec<u64> = all.iter().filter(|(s, k, _)| *k == Kind::Base && *s <= seq).map(|e| e.0).collect();
    let Some(&oldest_kept) = bases.len().checked_sub(keep.min(bases.len())).and_then(|i| bases.get(i)) else {
        return Ok(());
    };
    for (s, k, n) in &all {
        if *s <= seq && (*s < oldest_kept || (*k == Kind::Delta && *s == oldest_kept)) {
            images.remove(shard, n);
        }
    }
    Ok(())
}

/// Writes a base and makes it the shard's chain.
pub(crate) fn save_base(
    images: &impl Images,
    tips: &Tips,
    keep: usize,
    what: Pending,
    engine: &Engine,
) -> Result<Header, SnapshotError> {
    let mut body = Vec::new();
    let digest = engine.encode_state_digest(&mut body, true);
    put_base(images, tips, keep, what, engine.journey(), engine.len() as u64, digest, &body)
}

/// Writes `body`, a full state of `prospects` prospects with digest `digest`, as a base and
/// makes it the shard's chain.
#[allow(clippy::too_many_arguments)]
fn put_base(
    images: &impl Images,
    tips: &Tips,
    keep: usize,
    what: Pending,
    journey: &Journey,
    prospects: u64,
    digest: u64,
    body: &[u8],
) -> Result<Header, SnapshotError> {
    let header = header(&what, journey, prospects, digest, body, None);
    images.put(what.shard, &name(what.seq, Kind::Base), &[&head(&header), body])?;
    let tip = ChainTip { seq: what.seq, base_seq: what.seq, base_bytes: header.body_len, delta_bytes: 0, deltas: 0 };
    tips.set(what.shard, Some(tip));
    prune(images, what.shard, keep, what.seq)?;
    Ok(header)
}

/// Writes a delta on the shard's chain, which must end at `delta.prev`.
pub(crate) fn save_delta(
    images: &impl Images,
    tips: &Tips,
    keep: usize,
    what: Pending,
    delta: DeltaFacts,
    batch: &Batch,
    journey: &Journey,
) -> Result<Header, SnapshotError> {
    let tip = tips.get(what.shard);
    let Some(mut tip) = tip.filter(|t| t.seq == delta.prev) else {
        return Err(SnapshotError::NoChain { shard: what.shard, prev: delta.prev, tip: tip.map(|t| t.seq) });
    };
    let mut body = Vec::with_capacity(batch.len() * 64);
    encode_body(batch, &mut body);
    let header = header(&what, journey, delta.prospects, delta.digest, &body, Some(delta.prev));
    images.put(what.shard, &name(what.seq, Kind::Delta), &[&head(&header), &body])?;
    tip.seq = what.seq;
    tip.delta_bytes += header.body_len;
    tip.deltas += 1;
    tips.set(what.shard, Some(tip));
    prune(images, what.shard, keep, what.seq)?;
    Ok(header)
}

fn header(what: &Pending, journey: &Journey, prospects: u64, digest: u64, body: &[u8], prev: Option<u64>) -> Header {
    Header {
        format_version: FORMAT_VERSION,
        state_version: STATE_VERSION,
        group: what.group.clone(),
        shard: what.shard,
        seq: what.seq,
        written_at: what.written_at.clone(),
        journey: journey.name.clone(),
        journey_fingerprint: format!("{:016x}", journey_fingerprint(journey)),
        positions: what.positions.clone(),
        changelog: what.changelog.clone(),
        prospects,
        digest: format!("{digest:016x}"),
        body_len: body.len() as u64,
        body_hash: format!("{:016x}", hash64(FILE_SEED, body)),
        prev,
    }
}

fn read(images: &impl Images, shard: i32, name: &str) -> Result<Checked, SnapshotError> {
    let path = images.path(shard, name);
    parse(&path, images.get(shard, name)?)
}

/// The newest chain whose files pass every check, ending at or before checkpoint `upto`; with
/// `exact`, only a chain ending exactly at `upto`. Makes it the shard's chain in `tips`.
pub(crate) fn latest(
    images: &impl Images,
    tips: Option<&Tips>,
    shard: i32,
    upto: Option<u64>,
) -> (Option<Chain>, Vec<SnapshotError>) {
    let mut rejected = Vec::new();
    let all = match entries(images, shard) {
        Ok(a) => a,
        Err(e) => return (None, vec![e]),
    };
    let all: Vec<_> = all.into_iter().filter(|(s, _, _)| upto.is_none_or(|u| *s <= u)).collect();
    let mut deltas: Vec<(u64, Option<Checked>)> = Vec::new();
    for (s, k, n) in all.iter().rev() {
        if *k != Kind::Base {
            continue;
        }
        let base = match read(images, shard, n) {
            Ok(b) => b,
            Err(e) => {
                rejected.push(e);
                continue;
            }
        };
        // Deltas after this base, read once and shared by the bases tried.
        let mut chain = Chain { base, deltas: Vec::new() };
        let mut at = *s;
        for (ds, dk, dn) in &all {
            if *dk != Kind::Delta || *ds <= at {
                continue;
            }
            let slot = match deltas.iter().position(|d| d.0 == *ds) {
                Some(i) => i,
                None => {
                    let d = match read(images, shard, dn) {
                        Ok(d) => Some(d),
                        Err(e) => {
                            rejected.push(e);
                            None
                        }
                    };
                    deltas.push((*ds, d));
                    deltas.len() - 1
                }
            };
            let follows = deltas[slot].1.as_ref().is_some_and(|d| d.header.prev == Some(at));
            if follows {
                at = *ds;
                // Restores try older bases only when the newer ones are unreadable, so each
                // delta joins one chain; `inspect-snapshot` (`upto`) may try several.
                let d = if upto.is_some() { deltas[slot].1.as_ref().map(Checked::copy) } else { deltas[slot].1.take() };
                chain.deltas.extend(d);
            }
        }
        if upto.is_some_and(|u| chain.header().seq != u) {
            continue;
        }
        if let Some(t) = tips {
            t.set(shard, Some(chain.tip()));
        }
        return (Some(chain), rejected);
    }
    if let Some(t) = tips {
        t.set(shard, None);
    }
    (None, rejected)
}

/// Image paths of the shard, newest first (a base before a delta of the same checkpoint).
pub(crate) fn list(images: &impl Images, shard: i32) -> Result<Vec<PathBuf>, SnapshotError> {
    let mut all = entries(images, shard)?;
    all.reverse();
    Ok(all.into_iter().map(|(_, _, n)| images.path(shard, &n)).collect())
}

/// Rewrites the newest chain into a base of its newest checkpoint: streamed, prospect by
/// prospect ([`rewrite`]); should that give another digest than the newest delta's (a state
/// the streamed merge does not read as a restore would), from the chain decoded whole.
pub(crate) fn compact(
    images: &impl Images,
    tips: &Tips,
    keep: usize,
    shard: i32,
    journey: &Arc<Journey>,
) -> Result<Option<Header>, SnapshotError> {
    let (chain, rejected) = latest(images, Some(tips), shard, None);
    for e in &rejected {
        tracing::error!(shard, error = %e, "snapshot file rejected while rewriting the base; trying the previous one");
    }
    let Some(chain) = chain.filter(|c| !c.deltas.is_empty()) else { return Ok(None) };
    let h = chain.header();
    let what = Pending {
        group: h.group.clone(),
        shard,
        seq: h.seq,
        written_at: h.written_at.clone(),
        positions: h.positions.clone(),
        changelog: h.changelog.clone(),
    };
    let mut body = Vec::new();
    match rewrite(&chain, journey, &mut body) {
        Ok((digest, prospects)) if format!("{digest:016x}") == h.digest => {
            drop(chain);
            return put_base(images, tips, keep, what, journey, prospects, digest, &body).map(Some);
        }
        Ok((digest, _)) => tracing::warn!(
            shard,
            expected = %h.digest,
            found = %format!("{digest:016x}"),
            "streamed base rewrite gave another digest; rewriting from the chain decoded whole"
        ),
        Err(e) => {
            tracing::warn!(shard, error = %e, "streamed base rewrite failed; rewriting from the chain decoded whole")
        }
    }
    drop(body);
    let engine = chain.engine(Arc::clone(journey))?;
    drop(chain);
    save_base(images, tips, keep, what, &engine).map(Some)
}

/// A delta read whole: exactly one checkpoint record and no bad record since `before`.
fn one_checkpoint(before: FoldStats, after: FoldStats) -> Result<(), String> {
    if after.checkpoints != before.checkpoints + 1 || after.bad != before.bad {
        return Err(format!(
            "{} bad records, {} checkpoint records",
            after.bad - before.bad,
            after.checkpoints - before.checkpoints
        ));
    }
    Ok(())
}

/// The chain's state written into `out` as a full state (a base body) without decoding it
/// whole: the base's shard-level parts and the deltas' CRM, identity and checkpoint records
/// folded into an engine without prospects; then the base's prospects one at a time, each
/// replaced by the newest delta record of its id or left out for a tombstone; then the ids
/// only the deltas hold, by id. Returns the state's digest and prospect count.
fn rewrite(chain: &Chain, journey: &Arc<Journey>, out: &mut Vec<u8>) -> Result<(u64, u64), SnapshotError> {
    let base = &chain.base;
    let (shell, prospects) = Engine::decode_state_shell(Arc::clone(journey), &base.body).map_err(state(&base.path))?;
    let mut fold = Fold::new(shell, base.header.positions.clone(), base.header.seq);
    let mut newest: HashMap<&[u8], Option<&[u8]>> = HashMap::new();
    for d in &chain.deltas {
        let bad = |reason: String| SnapshotError::Delta { path: d.path.clone(), reason };
        let before = fold.stats();
        let mut i = 0;
        for_each_record(&d.body, |key, value| {
            // Prospect ids have no control characters; the other records' keys start with NUL.
            if key.first() == Some(&0) {
                fold.push(d.header.shard, i, key, value);
            } else {
                newest.insert(key, value);
            }
            i += 1;
        })
        .map_err(bad)?;
        one_checkpoint(before, fold.stats()).map_err(bad)?;
    }
    let shell = fold.finish().engine;
    out.reserve(base.body.len() + chain.deltas.iter().map(|d| d.body.len()).sum::<usize>() / 2);
    let mut w = StateWriter::start(&shell, out);
    let newest_path = chain.path();
    let record = |v| prospect_record(&shell, v, newest_path);
    prospects.for_each(&shell, state(&base.path), |id, rec| -> Result<(), SnapshotError> {
        match newest.remove(id.as_bytes()) {
            None => w.push(out, id, rec),
            Some(None) => {}
            Some(Some(v)) => w.push(out, id, &record(v)?),
        }
        Ok(())
    })?;
    let mut added: Vec<(&[u8], &[u8])> = newest.into_iter().filter_map(|(k, v)| Some((k, v?))).collect();
    added.sort_unstable();
    for (k, v) in added {
        let Ok(id) = std::str::from_utf8(k) else { continue };
        w.push(out, id, &record(v)?);
    }
    Ok(w.finish(out))
}

fn state(path: &Path) -> impl Fn(StateError) -> SnapshotError + '_ {
    move |source| SnapshotError::State { path: path.to_path_buf(), source }
}

/// A delta's prospect record (`P` + the changelog record), read by `shell`.
fn prospect_record<'v>(shell: &Engine, v: &'v [u8], path: &Path) -> Result<ProspectRecord<'v>, SnapshotError> {
    let body = v.strip_prefix(b"P").ok_or_else(|| SnapshotError::Delta {
        path: path.to_path_buf(),
        reason: "a prospect record without its tag".to_string(),
    })?;
    shell.decode_changelog_record(&mut Dec::new(body)).map_err(state(path))
}

/// The images of one directory (`inspect-snapshot` of a delta).
struct Dir(PathBuf);

impl Images for Dir {
    fn path(&self, _: i32, name: &str) -> PathBuf {
        self.0.join(name)
    }
    fn put(&self, _: i32, name: &str, _: &[&[u8]]) -> Result<(), SnapshotError> {
        Err(SnapshotError::Io { path: self.0.join(name), source: std::io::ErrorKind::Unsupported.into() })
    }
    fn get(&self, _: i32, name: &str) -> Result<Vec<u8>, SnapshotError> {
        let path = self.0.join(name);
        std::fs::read(&path).map_err(super::io_err(&path))
    }
    fn names(&self, _: i32) -> Result<Vec<String>, SnapshotError> {
        let rd = std::fs::read_dir(&self.0).map_err(super::io_err(&self.0))?;
        Ok(rd.filter_map(Result::ok).filter_map(|e| e.file_name().into_string().ok()).collect())
    }
    fn remove(&self, _: i32, _: &str) {}
}

/// The chain that ends at the snapshot file `path` (a base: that base alone; a delta: the
/// newest usable base of its directory and the deltas up to it), and the files rejected on the
/// way. `None` when no complete chain ends there.
pub fn chain_ending_at(path: &Path) -> (Option<Chain>, Vec<SnapshotError>) {
    let dir = path.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    let Some((seq, kind)) = path.file_name().and_then(|n| n.to_str()).and_then(parse_name) else {
        return match super::read(path) {
            Ok(base) => (Some(Chain { base, deltas: Vec::new() }), Vec::new()),
            Err(e) => (None, vec![e]),
        };
    };
    if kind == Kind::Base {
        return match super::read(path) {
            Ok(base) => (Some(Chain { base, deltas: Vec::new() }), Vec::new()),
            Err(e) => (None, vec![e]),
        };
    }
    latest(&Dir(dir), None, 0, Some(seq))
}

/// The newest usable chain of a shard directory (what a restore would load), and the files
/// rejected on the way.
pub fn newest_chain_in(dir: &Path) -> (Option<Chain>, Vec<SnapshotError>) {
    latest(&Dir(dir.to_path_buf()), None, 0, None)
}
