//! The changelog port and its record format, both directions.
//!
//! Changelog partition p holds shard p's state as Kafka Streams keeps a store's changelog:
//!
//! | key                  | value                                                        |
//! |----------------------|--------------------------------------------------------------|
//! | prospect id (UTF-8)  | `P` + the prospect record (`Engine::encode_changelog_record`) |
//! | prospect id          | none (a tombstone: a prospect the state no longer holds)     |
//! | [`META_KEY`]         | `M` + seq u64 + n u32 + n × (topic, next i64) + shard meta    |
//! | `\0crm/` + topic + CRM key | `C` + CRM entry (`core::crm::bytes`), or none (removed)   |
//! | [`CRM_STATE_KEY`]    | `C` + complete u8 (the CRM memories hold all the state covers) |
//! | `\0id/` + identifier | `I` + kind u8 + first seen (an identity map's identifier)       |
//! | `\0ln/` + len`:` + a + b | `L` + reason u8 (an accepted identity link)               |
//! | [`OUTBOX_KEY`]       | `O` + the shard's outbox as of the checkpoint (`core::engine::outbox`), or `S` + parts u32 + its first part, or none (empty) |
//! | `\0outbox/` + n     | `O` + part n of a split outbox, or none (a part the outbox no longer has) |
//!
//! Integers are little-endian, strings length-prefixed (`core::snapshot::Enc`). One checkpoint
//! writes its changed prospects, the tombstones owed, then one checkpoint record that closes
//! them. Reading ([`Fold`]) installs prospect records only when a later checkpoint record
//! confirms them; records after the last checkpoint record belong to a checkpoint that did not
//! finish and are reported (the next checkpoint rewrites or deletes them).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use crate::core::crm;
pub use crate::core::engine::outbox::OUTBOX_KEY;
use crate::core::engine::outbox::{self, OUTBOX_TAG};
use crate::core::identity::{self, IdentityRecord};
use crate::core::snapshot::{Dec, Enc};
use crate::core::{Engine, Journey, PartsCopy, ProspectIx, SlotDigests, StateError};

use super::ChangelogPosition;

mod kafka;

pub use kafka::KafkaChangelog;

/// Key of the checkpoint records (compaction keeps the newest).
/// How many changed prospects ahead a capture asks for their memory (half as many for their
/// ids' text, which needs where the id lies first).
const PREFETCH_AHEAD: usize = 16;

pub const META_KEY: &[u8] = b"\0microfunnel.checkpoint";

/// Key of the record saying whether the CRM memories are complete; every checkpoint of state
/// version 4 on writes it.
pub const CRM_STATE_KEY: &[u8] = b"\0crm.state";

/// Prefix of the keys of CRM memory entries: then the topic (length-prefixed) and the entry's
/// key (`core::crm::bytes::encode_key`).
pub const CRM_PREFIX: &[u8] = b"\0crm/";

/// Why a changelog write or read failed.
#[derive(Debug, thiserror::Error)]
pub enum ChangelogError {
    #[error("a changelog record for shard {shard} could not be enqueued")]
    Enqueue { shard: i32 },
    #[error("{count} changelog records of shard {shard} refused by the broker")]
    Refused { shard: i32, count: u64 },
    #[error("the checkpoint record of shard {shard} was refused by the broker")]
    CheckpointRefused { shard: i32 },
    #[error("changelog records of shard {shard} not acknowledged before the deadline")]
    Deadline { shard: i32 },
    #[error("changelog of shard {shard} unreadable: {reason}")]
    Unreadable { shard: i32, reason: String },
}

/// Where a shard's changelog lives: appends checkpoints, reads them back.
pub trait Changelog: Send + Sync {
    /// The topic (a snapshot's [`ChangelogPosition`] names it).
    fn topic(&self) -> &str;
    /// Appends one checkpoint's records to partition `shard`, in order, and returns once every
    /// one is durable: the position right after the checkpoint record (the last of `batch`).
    /// Any record refused, or not acknowledged by `deadline`, fails the whole append.
    fn append(&self, shard: i32, batch: &Batch, deadline: Instant) -> Result<ChangelogPosition, ChangelogError>;
    /// Opens partition `shard` for reading.
    fn open(&self, shard: i32) -> Result<Box<dyn ChangelogReader + '_>, ChangelogError>;
}

/// Called with each record read: offset, key, value (`None`: a tombstone).
pub type Visit<'a> = dyn FnMut(i64, &[u8], Option<&[u8]>) + 'a;

/// One partition, opened for reading.
pub trait ChangelogReader {
    /// The offsets the partition holds: `low..high` (nothing when `high <= low`).
    fn extent(&self) -> (i64, i64);
    /// Reads from offset `from` (`None`: the first offset held) to the end, calling `visit`
    /// with each record's offset, key and value (`None`: a tombstone).
    fn read(&mut self, from: Option<i64>, visit: &mut Visit<'_>) -> Result<(), ChangelogError>;
}

impl<C: Changelog + ?Sized> Changelog for Arc<C> {
    fn topic(&self) -> &str {
        (**self).topic()
    }
    fn append(&self, shard: i32, batch: &Batch, deadline: Instant) -> Result<ChangelogPosition, ChangelogError> {
        (**self).append(shard, batch, deadline)
    }
    fn open(&self, shard: i32) -> Result<Box<dyn ChangelogReader + '_>, ChangelogError> {
        (**self).open(shard)
    }
}

/// One checkpoint's records, encoded into one reusable buffer: prospect records and tombstones,
/// then the checkpoint record.
#[derive(Default)]
pub struct Batch {
    buf: Vec<u8>,
    /// Per record: its key's bytes in `buf`, and its value's (`None`: a tombstone).
    records: Vec<(Range<usize>, Option<Range<usize>>)>,
}

impl Batch {
    /// Encodes a checkpoint of `engine`: the `changed` prospects, a tombstone for each id of
    /// `tombstones` the engine does not hold, and the checkpoint record (sequence `seq`, next
    /// input offset per topic `positions`, the engine's meta state).
    pub fn checkpoint(
        &mut self,
        engine: &Engine,
        changed: &[ProspectIx],
        tombstones: &[String],
        seq: u64,
        positions: &BTreeMap<String, i64>,
    ) {
        self.checkpoint_each(engine, changed, tombstones, seq, positions, |_| {});
    }

    /// [`Batch::checkpoint`] with the state digest brought up to date in the same pass (the
    /// capture's, in the barrier): each changed prospect's digest right after its record, while
    /// its state is in cache, then the `freed` slots and those with expiring extras.
    #[allow(clippy::too_many_arguments)]
    pub fn checkpoint_digested(
        &mut self,
        engine: &Engine,
        changed: &[ProspectIx],
        freed: &[u32],
        tombstones: &[String],
        seq: u64,
        positions: &BTreeMap<String, i64>,
        digests: &mut SlotDigests,
    ) {
        digests.prepare(engine);
        self.checkpoint_each(engine, changed, tombstones, seq, positions, |ix| digests.set(engine, ix.0));
        freed.iter().for_each(|&i| digests.set(engine, i));
        digests.settle(engine);
    }

    /// [`Batch::checkpoint`], calling `each` with every changed prospect right after encoding
    /// it (while its state is in cache: the capture's digests per slot).
    pub fn checkpoint_each(
        &mut self,
        engine: &Engine,
        changed: &[ProspectIx],
        tombstones: &[String],
        seq: u64,
        positions: &BTreeMap<String, i64>,
        mut each: impl FnMut(ProspectIx),
    ) {
        self.buf.clear();
        self.records.clear();
        for (k, &ix) in changed.iter().enumerate() {
            // Changed prospects are scattered over the shard: ask for the memory of those a
            // few ahead, so their cache misses overlap with this one's work.
            if let Some(&ahead) = changed.get(k + PREFETCH_AHEAD) {
                engine.prefetch_prospect(ahead);
            }
            if let Some(&ahead) = changed.get(k + PREFETCH_AHEAD / 2) {
                engine.prefetch_id(ahead);
            }
            let key = self.push_bytes(engine.prospect_id_bytes(ix));
            let at = self.buf.len();
            self.buf.push(b'P');
            engine.encode_changelog_record(ix, &mut self.buf);
            self.records.push((key, Some(at..self.buf.len())));
            each(ix);
        }
        self.tail(engine, tombstones, seq, positions);
    }

    /// The records of a checkpoint other than its prospects' (the tombstones owed, the CRM
    /// entries, identifiers and links taken, the checkpoint record), encoded from `engine` on
    /// the processing thread; the prospects' records come from a copy of their parts
    /// ([`Engine::copy_changed`]), encoded on the writer thread by [`Batch::prepend_copied`].
    pub fn checkpoint_tail(
        &mut self,
        engine: &Engine,
        tombstones: &[String],
        seq: u64,
        positions: &BTreeMap<String, i64>,
    ) {
        self.buf.clear();
        self.records.clear();
        self.tail(engine, tombstones, seq, positions);
    }

    /// The changed prospects' records, encoded from a capture's `copy`, put before the records
    /// [`Batch::checkpoint_tail`] wrote: the batch is then the one [`Batch::checkpoint`] gives
    /// for the same state, byte for byte. With `digests` (a copy taken with them), the digests
    /// per slot brought up to date from the same parts.
    pub fn prepend_copied(&mut self, copy: &PartsCopy, mut digests: Option<&mut SlotDigests>) {
        let tail = self.records.len();
        if let Some(d) = digests.as_deref_mut() {
            d.begin_copy(copy.slot_count());
        }
        let mut scratch = Vec::with_capacity(256);
        for k in 0..copy.len() {
            let parts = copy.parts(k);
            if let Some(p) = &parts
                && copy.is_record(k)
            {
                let key = self.push_bytes(p.id);
                let at = self.buf.len();
                self.buf.push(b'P');
                p.encode_changelog_record(&mut self.buf);
                self.records.push((key, Some(at..self.buf.len())));
            }
            if let Some(d) = digests.as_deref_mut() {
                let v = parts.map_or(0, |p| p.digest(|dim, id| copy.value_name(dim, id), &mut scratch));
                d.put(copy.slot(k), v);
            }
        }
        if let Some(d) = digests {
            d.end_copy(copy.timed());
        }
        self.records.rotate_left(tail);
    }

    fn tail(&mut self, engine: &Engine, tombstones: &[String], seq: u64, positions: &BTreeMap<String, i64>) {
        // Before the identity records: an identifier or link owed a tombstone (an unfinished
        // checkpoint's, which the state did not hold at the restore) that the map holds again
        // is written after it, so the newer record wins at the next read.
        for id in tombstones {
            if engine.find(id).is_none() {
                let key = self.push_bytes(id.as_bytes());
                self.records.push((key, None));
            }
        }
        self.crm_records(engine);
        self.identity_records(engine);
        self.outbox_record(engine);
        let key = self.push_bytes(META_KEY);
        let at = self.buf.len();
        self.buf.push(b'M');
        let mut w = Enc(&mut self.buf);
        w.u64(seq);
        w.u32(positions.len() as u32);
        for (t, &next) in positions {
            w.bytes(t.as_bytes());
            w.i64(next);
        }
        engine.encode_meta(&mut self.buf);
        self.records.push((key, Some(at..self.buf.len())));
    }

    /// The CRM memory entries the capture carries (changed since the previous checkpoint; a
    /// tombstone for each removed or evicted one), then the completeness record.
    fn crm_records(&mut self, engine: &Engine) {
        for (topic, memory) in engine.crm().memories() {
            for (kind, key, entry) in memory.taken() {
                let k = self.buf.len();
                self.buf.extend_from_slice(CRM_PREFIX);
                let mut w = Enc(&mut self.buf);
                w.bytes(topic.as_bytes());
                crm::bytes::encode_key(kind, key, &mut w);
                let key = k..self.buf.len();
                let value = entry.map(|(entry, stamp)| {
                    let at = self.buf.len();
                    self.buf.push(b'C');
                    crm::bytes::encode_entry(&entry, stamp, &mut Enc(&mut self.buf));
                    at..self.buf.len()
                });
                self.records.push((key, value));
            }
        }
        let key = self.push_bytes(CRM_STATE_KEY);
        let at = self.buf.len();
        self.buf.push(b'C');
        self.buf.push(u8::from(engine.crm().is_complete()));
        self.records.push((key, Some(at..self.buf.len())));
    }

    /// The identifiers and links the capture carries (added or changed since the previous
    /// checkpoint; `core::identity`).
    fn identity_records(&mut self, engine: &Engine) {
        let Some(map) = engine.identity_map() else { return };
        for (k, v) in map.taken_records() {
            let key = self.push_bytes(k.as_bytes());
            let value = v.map(|v| self.push_bytes(&v));
            self.records.push((key, value));
        }
    }

    /// The shard's outbox as the capture sealed it ([`Engine::seal_outbox`]): its parts, each
    /// within `message.max.bytes`, and tombstones for the parts the previous one had beyond
    /// them (the first part's once the outbox is empty; none when the changelog's record is a
    /// tombstone already).
    fn outbox_record(&mut self, engine: &Engine) {
        let Some(sealed) = engine.outbox_sealed() else { return };
        let parts = sealed.cuts.len();
        for n in 0..sealed.keys {
            let key = self.push_bytes(&outbox::outbox_part_key(n));
            let value = (n < parts).then(|| {
                let at = self.buf.len();
                if n == 0 && parts > 1 {
                    self.buf.push(outbox::OUTBOX_SPLIT_TAG);
                    Enc(&mut self.buf).u32(parts as u32);
                } else {
                    self.buf.push(OUTBOX_TAG);
                }
                let start = if n == 0 { 0 } else { sealed.cuts[n - 1] };
                outbox::encode_outbox(sealed.records[start..sealed.cuts[n]].iter(), &mut self.buf);
                at..self.buf.len()
            });
            self.records.push((key, value));
        }
    }

    fn push_bytes(&mut self, bytes: &[u8]) -> Range<usize> {
        let at = self.buf.len();
        self.buf.extend_from_slice(bytes);
        at..self.buf.len()
    }

    /// How many records (the checkpoint record included).
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Drops the records and lets go of their buffers' memory.
    pub fn release(&mut self) {
        self.buf = Vec::new();
        self.records = Vec::new();
    }

    /// Record `i`: key and value (`None`: a tombstone).
    pub fn record(&self, i: usize) -> (&[u8], Option<&[u8]>) {
        let (k, v) = &self.records[i];
        (&self.buf[k.clone()], v.as_ref().map(|v| &self.buf[v.clone()]))
    }

    /// Every record in order; the checkpoint record is the last.
    pub fn records(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        (0..self.records.len()).map(|i| self.record(i))
    }
}

/// Reads a shard's changelog records, in offset order, onto a base state.
pub struct Fold {
    engine: Engine,
    positions: BTreeMap<String, i64>,
    seq: u64,
    /// Records read since the last checkpoint record, by key (the newest wins).
    staged: HashMap<Vec<u8>, Option<Vec<u8>>>,
    stats: FoldStats,
    /// Offset after the last checkpoint record applied.
    next: Option<i64>,
}

/// What a [`Fold`] read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FoldStats {
    /// Checkpoint records applied.
    pub checkpoints: u64,
    /// Prospect records installed.
    pub records: u64,
    /// Bytes read (keys and values).
    pub bytes: u64,
    /// Records skipped as undecodable (each logged).
    pub bad: u64,
}

/// The state a [`Fold`] ends with.
pub struct Folded {
    pub engine: Engine,
    /// Next offset per input topic, as of the last checkpoint record applied.
    pub positions: BTreeMap<String, i64>,
    pub seq: u64,
    /// Ids written by a checkpoint that did not finish, which the state does not hold.
    pub tombstones: Vec<String>,
    /// Prospects whose records (of an unfinished checkpoint) are ahead of the state.
    pub rewrite: Vec<String>,
    pub stats: FoldStats,
    /// The offset after the last checkpoint record applied (`None`: none was read).
    pub next: Option<i64>,
}

impl Fold {
    /// Starts from `engine` at `positions` and checkpoint `seq` (a snapshot), or an empty engine.
    pub fn new(engine: Engine, positions: BTreeMap<String, i64>, seq: u64) -> Fold {
        Fold { engine, positions, seq, staged: HashMap::new(), stats: FoldStats::default(), next: None }
    }

    /// An empty engine for `journey`.
    pub fn empty(journey: &Arc<Journey>) -> Fold {
        Fold::new(Engine::new(Arc::clone(journey)), BTreeMap::new(), 0)
    }

    /// Takes in the record at `offset`.
    pub fn push(&mut self, shard: i32, offset: i64, key: &[u8], value: Option<&[u8]>) {
        self.stats.bytes += (key.len() + value.map_or(0, <[u8]>::len)) as u64;
        if key != META_KEY {
            self.staged.insert(key.to_vec(), value.map(<[u8]>::to_vec));
            return;
        }
        let Some(meta) = value.and_then(|p| p.strip_prefix(b"M")) else {
            self.stats.bad += 1;
            tracing::error!(shard, offset, "checkpoint record without a value in the changelog; skipped");
            return;
        };
        let mut r = Dec::new(meta);
        let parsed = checkpoint_header(&mut r).and_then(|h| self.engine.decode_meta(&mut r).map(|v| (h, v)));
        let ((seq, positions), version) = match parsed {
            Ok(h) => h,
            Err(e) => {
                self.stats.bad += 1;
                tracing::error!(shard, offset, error = %e, "bad checkpoint record in the changelog; skipped");
                return;
            }
        };
        self.crm_confirmed(shard, version);
        self.identity_confirmed(shard);
        self.outbox_confirmed(shard);
        for (id, rec) in self.staged.drain() {
            let Ok(id) = std::str::from_utf8(&id) else { continue };
            // A tombstone: the prospect left memory (retention) or was never held.
            let Some(rec) = rec else {
                self.engine.forget(id);
                continue;
            };
            let Some(body) = rec.strip_prefix(b"P") else { continue };
            match self.engine.decode_changelog_record(&mut Dec::new(body)) {
                Ok(decoded) => {
                    if self.engine.install(id, decoded).is_err() {
                        tracing::error!(shard, "prospect arena full while restoring");
                    }
                    self.stats.records += 1;
                }
                Err(e) => {
                    self.stats.bad += 1;
                    tracing::error!(shard, error = %e, "bad prospect record in the changelog; skipped");
                }
            }
        }
        self.positions = positions;
        self.seq = seq;
        self.stats.checkpoints += 1;
        self.next = Some(offset + 1);
    }

    /// Installs the staged CRM records a checkpoint record (of state `version`) confirms and
    /// takes them out of `staged`. A checkpoint of version 3 or older carries no CRM memory:
    /// the memories are then incomplete.
    fn crm_confirmed(&mut self, shard: i32, version: u32) {
        let mut complete = version >= 4;
        let crm: Vec<Vec<u8>> = self.staged.keys().filter(|k| is_crm_key(k)).cloned().collect();
        for k in crm {
            let v = self.staged.remove(&k).flatten();
            if k == CRM_STATE_KEY {
                complete = v.as_deref() == Some(b"C\x01");
                continue;
            }
            let installed = crm_key(&k).and_then(|(topic, kind, key)| {
                let entry = match v.as_deref().map(|v| v.strip_prefix(b"C")) {
                    None => None,
                    Some(Some(body)) => Some(crm::bytes::decode_entry(kind, &mut Dec::new(body))?),
                    Some(None) => return Err(StateError::Invalid { what: "crm record tag", at: 0 }),
                };
                self.engine.restore_crm_entry(&topic, kind, key, entry);
                Ok(())
            });
            match installed {
                Ok(()) => self.stats.records += 1,
                Err(e) => {
                    self.stats.bad += 1;
                    tracing::error!(shard, error = %e, "bad CRM memory record in the changelog; skipped");
                }
            }
        }
        self.engine.set_crm_complete(complete);
    }

    /// Installs the staged identity records a checkpoint record confirms (identifiers first,
    /// then links, each in key order) and takes them out of `staged`.
    fn identity_confirmed(&mut self, shard: i32) {
        let keys: Vec<Vec<u8>> = self.staged.keys().filter(|k| is_identity_key(k)).cloned().collect();
        let mut records = Vec::with_capacity(keys.len());
        for k in keys {
            // A tombstone: the identifier was pruned (its person left memory), or an unfinished
            // checkpoint's record is deleted; a link goes with its identifiers.
            let Some(v) = self.staged.remove(&k).flatten() else {
                if let Some(key) = k.strip_prefix(identity::ID_RECORD.as_bytes())
                    && let Ok(key) = std::str::from_utf8(key)
                {
                    self.engine.forget_identity(key);
                }
                continue;
            };
            match identity_record(&k, &v) {
                Ok(r) => records.push(r),
                Err(e) => {
                    self.stats.bad += 1;
                    tracing::error!(shard, error = %e, "bad identity record in the changelog; skipped");
                }
            }
        }
        records.sort_by(|a, b| match (a, b) {
            (IdentityRecord::Id { key: x, .. }, IdentityRecord::Id { key: y, .. }) => x.cmp(y),
            (IdentityRecord::Id { .. }, IdentityRecord::Link { .. }) => std::cmp::Ordering::Less,
            (IdentityRecord::Link { .. }, IdentityRecord::Id { .. }) => std::cmp::Ordering::Greater,
            (IdentityRecord::Link { a: x, b: y, .. }, IdentityRecord::Link { a: u, b: w, .. }) => (x, y).cmp(&(u, w)),
        });
        for r in records {
            match self.engine.restore_identity(r) {
                Ok(true) => self.stats.records += 1,
                Ok(false) => {}
                Err(e) => {
                    self.stats.bad += 1;
                    tracing::error!(shard, error = %e, "identity record in the changelog that does not apply; skipped");
                }
            }
        }
    }

    /// The outbox records a checkpoint record confirms (taken out of `staged`): the outbox to
    /// send again at a restore of that checkpoint, read from its first part and the parts that
    /// one counts; a tombstone empties it, and a checkpoint without one leaves it as it was.
    fn outbox_confirmed(&mut self, shard: i32) {
        let keys: Vec<(usize, Vec<u8>)> =
            self.staged.keys().filter_map(|k| outbox::outbox_part(k).map(|n| (n, k.clone()))).collect();
        let mut parts: BTreeMap<usize, Option<Vec<u8>>> = BTreeMap::new();
        for (n, k) in keys {
            parts.insert(n, self.staged.remove(&k).flatten());
        }
        let Some(first) = parts.remove(&0) else { return };
        let written = parts.last_key_value().map_or(1, |(&n, _)| n + 1);
        let records = (|| {
            let Some(first) = first else { return Ok(Vec::new()) };
            let (count, body) = match first.split_first() {
                Some((&OUTBOX_TAG, body)) => (1, body),
                Some((&outbox::OUTBOX_SPLIT_TAG, rest)) => {
                    let mut r = Dec::new(rest);
                    let count = r.u32("outbox parts")? as usize;
                    (count, &rest[4..])
                }
                _ => return Err(StateError::Invalid { what: "outbox record tag", at: 0 }),
            };
            let mut records = outbox::decode_outbox(&mut Dec::new(body))?;
            for n in 1..count {
                let part = parts.get(&n).and_then(|v| v.as_deref());
                let Some(body) = part.and_then(|v| v.strip_prefix(&[OUTBOX_TAG])) else {
                    return Err(StateError::Invalid { what: "outbox part", at: n });
                };
                records.extend(outbox::decode_outbox(&mut Dec::new(body))?);
            }
            Ok(records)
        })();
        match records {
            Ok(records) => self.engine.restore_outbox(records, written),
            Err(e) => {
                self.stats.bad += 1;
                tracing::error!(shard, error = %e, "bad outbox record in the changelog; skipped");
            }
        }
    }

    /// What it read so far.
    pub fn stats(&self) -> FoldStats {
        self.stats
    }

    /// The state as of the last checkpoint record read, and what an unfinished checkpoint after
    /// it wrote.
    pub fn finish(self) -> Folded {
        let Fold { mut engine, positions, seq, mut staged, stats, next } = self;
        let (mut tombstones, mut rewrite) = (Vec::new(), Vec::new());
        // An unfinished checkpoint's outbox records: the next checkpoint writes the outbox's.
        let unfinished: Vec<(usize, Vec<u8>)> =
            staged.keys().filter_map(|k| outbox::outbox_part(k).map(|n| (n, k.clone()))).collect();
        if let Some(keys) = unfinished.iter().map(|(n, _)| n + 1).max() {
            engine.outbox_unfinished(keys);
        }
        for (_, k) in unfinished {
            staged.remove(&k);
        }
        engine.finish_crm_restore();
        engine.finish_identity_restore();
        let (identity, staged): (Vec<_>, Vec<_>) = staged.into_iter().partition(|(k, _)| is_identity_key(k));
        let (crm, staged): (Vec<_>, Vec<_>) = staged.into_iter().map(|(k, _)| k).partition(|k| is_crm_key(k));
        // CRM entries an unfinished checkpoint wrote: the next checkpoint rewrites or deletes them.
        let mut unfinished_crm = Vec::new();
        for k in crm {
            if let Ok((topic, kind, key)) = crm_key(&k) {
                unfinished_crm.push((topic, kind, key));
            }
        }
        for id in staged {
            let Ok(id) = String::from_utf8(id) else { continue };
            if engine.find(&id).is_some() { rewrite.push(id) } else { tombstones.push(id) }
        }
        tombstones.sort();
        rewrite.sort();
        engine.take_changed();
        engine.crm_take_taken();
        // Identity records an unfinished checkpoint wrote: rewritten if the state holds the
        // identifier, deleted otherwise (a link the state does not hold must not join groups
        // at a later read).
        for (k, v) in identity {
            let Ok(key) = String::from_utf8(k) else { continue };
            let delete = match v.as_deref().map(|v| identity_record(key.as_bytes(), v)) {
                Some(Ok(r)) => engine.unfinished_identity_record(&r),
                _ => true,
            };
            if delete {
                tombstones.push(key);
            }
        }
        for (topic, kind, key) in unfinished_crm {
            engine.mark_crm_entry(&topic, kind, key);
        }
        Folded { engine, positions, seq, tombstones, rewrite, stats, next }
    }
}

fn is_identity_key(k: &[u8]) -> bool {
    k.starts_with(identity::ID_RECORD.as_bytes()) || k.starts_with(identity::LINK_RECORD.as_bytes())
}

/// The identity record of a key and value.
fn identity_record(k: &[u8], value: &[u8]) -> Result<IdentityRecord, StateError> {
    let key = std::str::from_utf8(k).map_err(|_| StateError::Invalid { what: "identity record key", at: 0 })?;
    IdentityRecord::read(key, value).unwrap_or(Err(StateError::Invalid { what: "identity record key", at: 0 }))
}

fn is_crm_key(k: &[u8]) -> bool {
    k == CRM_STATE_KEY || k.starts_with(CRM_PREFIX)
}

/// A CRM entry record's key: topic, entry kind and key.
fn crm_key(k: &[u8]) -> Result<(String, crm::EntryKind, crm::Key), StateError> {
    let body = k.strip_prefix(CRM_PREFIX).ok_or(StateError::Invalid { what: "crm record key", at: 0 })?;
    let mut r = Dec::new(body);
    let topic = r.str("crm topic")?.to_string();
    let (kind, key) = crm::bytes::decode_key(&mut r)?;
    Ok((topic, kind, key))
}

/// The start of a checkpoint record: sequence and input positions.
fn checkpoint_header(r: &mut Dec<'_>) -> Result<(u64, BTreeMap<String, i64>), StateError> {
    let seq = r.u64("checkpoint seq")?;
    let n = r.u32("positions")?;
    let mut positions = BTreeMap::new();
    for _ in 0..n {
        let t = r.str("topic")?.to_string();
        positions.insert(t, r.i64("position")?);
    }
    Ok((seq, positions))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{self, Limits};
    use crate::traffic::{Generator, Options};

    fn journey() -> Arc<Journey> {
        Arc::new(Journey::from_toml_str(include_str!("../../../deploy/journeys/b2b.toml")).unwrap())
    }

    /// An engine fed events `from..to` of a generated stream.
    fn feed(engine: &mut Engine, from: usize, to: usize) {
        let journey = Arc::clone(engine.journey());
        let opts = Options { prospects: 150, seed: 5, malformed_share: 0.0, ..Options::default() };
        let mut g = Generator::new(opts, &journey, false).unwrap();
        let (mut line, mut key, mut outs) = (Vec::new(), String::new(), Vec::new());
        for n in 0..to {
            assert!(g.next_into(&mut line, &mut key).is_some());
            if n >= from {
                engine.apply(&codec::decode(&line, &journey, &Limits::default()).unwrap(), &mut outs);
            }
        }
    }

    fn fold(records: &[(Vec<u8>, Option<Vec<u8>>)], journey: &Arc<Journey>) -> Folded {
        let mut f = Fold::empty(journey);
        for (offset, (k, v)) in records.iter().enumerate() {
            f.push(0, offset as i64, k, v.as_deref());
        }
        f.finish()
    }

    fn owned(batch: &Batch) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        batch.records().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect()
    }

    #[test]
    fn checkpoints_read_back_to_the_same_state_and_an_unfinished_one_is_reported_not_applied() {
        let journey = journey();
        let mut engine = Engine::new(Arc::clone(&journey));
        let mut log = Vec::new();
        let mut batch = Batch::default();
        feed(&mut engine, 0, 300);
        let positions = BTreeMap::from([("web".to_string(), 300)]);
        let changed = engine.take_changed();
        batch.checkpoint(&engine, &changed, &[], 1, &positions);
        assert_eq!(batch.record(batch.len() - 1).0, META_KEY, "the checkpoint record closes the batch");
        log.extend(owned(&batch));
        feed(&mut engine, 300, 500);
        let positions2 = BTreeMap::from([("web".to_string(), 500), ("crm".to_string(), 7)]);
        let changed = engine.take_changed();
        batch.checkpoint(&engine, &changed, &["gone-1".to_string()], 2, &positions2);
        log.extend(owned(&batch));
        let at_two = engine.digest();

        let read = fold(&log, &journey);
        assert_eq!((read.engine.digest(), read.seq, &read.positions), (at_two, 2, &positions2));
        assert_eq!(read.stats.checkpoints, 2);
        assert!(read.tombstones.is_empty() && read.rewrite.is_empty());

        // Checkpoint 3 wrote its prospect records and a tombstone, not its checkpoint record.
        feed(&mut engine, 500, 600);
        let changed = engine.take_changed();
        batch.checkpoint(&engine, &changed, &["gone-2".to_string()], 3, &positions2);
        let mut unfinished = log.clone();
        unfinished.extend(owned(&batch).into_iter().take(batch.len() - 1));
        let read = fold(&unfinished, &journey);
        assert_eq!((read.engine.digest(), read.seq), (at_two, 2), "nothing unconfirmed is applied");
        let (known, new): (Vec<String>, Vec<String>) =
            changed.iter().map(|&ix| engine.prospect_id(ix).to_string()).partition(|id| read.engine.find(id).is_some());
        let mut new = new;
        new.push("gone-2".to_string());
        new.sort();
        let mut known = known;
        known.sort();
        assert_eq!(read.rewrite, known, "prospects the state holds are rewritten next time");
        assert_eq!(read.tombstones, new, "ids the state does not hold are deleted next time");
    }

    fn crm_change(engine: &mut Engine, topic: &str, id: &str, value: &str, at: i64) {
        use crate::core::crm::{Previous, UnknownPrevious};
        let key = ("deal", id, "dealstage");
        let m = engine.crm_memory(topic);
        m.transition(key, Some(value), crate::core::Ts(at), &Previous::Unknown, UnknownPrevious::Fire, false);
    }

    #[test]
    fn crm_memory_entries_are_confirmed_by_the_checkpoint_record_and_evictions_delete_them() {
        let mut journey = (*journey()).clone();
        journey.crm.max_entries = 3;
        let journey = Arc::new(journey);
        let mut engine = Engine::new(Arc::clone(&journey));
        let (mut log, mut batch) = (Vec::new(), Batch::default());
        let positions = BTreeMap::from([("hubspot".to_string(), 3)]);
        for (i, id) in ["1", "2", "3"].iter().enumerate() {
            crm_change(&mut engine, "hubspot", id, "appointmentscheduled", i as i64);
        }
        engine.crm_memory("hubspot").link("deal", "1", "c-1");
        let changed = engine.take_changed();
        batch.checkpoint(&engine, &changed, &[], 1, &positions);
        engine.settle_taken(true);
        let crm_records = owned(&batch).iter().filter(|(k, _)| k.starts_with(CRM_PREFIX)).count();
        assert_eq!(crm_records, 4, "three values (one evicted: a tombstone) and a link");
        log.extend(owned(&batch));
        // Checkpoint 2: deal 2 changes; deal 4 evicts deal 3.
        crm_change(&mut engine, "hubspot", "2", "contractsent", 10);
        crm_change(&mut engine, "hubspot", "4", "contractsent", 11);
        let changed = engine.take_changed();
        batch.checkpoint(&engine, &changed, &[], 2, &positions);
        engine.settle_taken(true);
        log.extend(owned(&batch));

        let read = fold(&log, &journey);
        assert_eq!(read.engine.crm(), engine.crm(), "the memory reads back with its eviction order");
        assert!(read.engine.crm().is_complete());
        assert!(!read.engine.has_changes(), "nothing is owed after a read");

        // Checkpoint 3 wrote a CRM record but not its checkpoint record: not applied, owed.
        crm_change(&mut engine, "hubspot", "4", "closedwon", 12);
        let changed = engine.take_changed();
        batch.checkpoint(&engine, &changed, &[], 3, &positions);
        engine.settle_taken(true);
        let mut unfinished = log.clone();
        unfinished.extend(owned(&batch).into_iter().take(batch.len() - 1));
        let mut read = fold(&unfinished, &journey);
        assert!(read.tombstones.is_empty() && read.rewrite.is_empty(), "CRM keys are not prospect ids");
        assert!(read.engine.has_changes(), "the unfinished CRM record is rewritten next time");
        assert_ne!(read.engine.crm(), engine.crm());
        read.engine.take_changed();
        batch.checkpoint(&read.engine, &[], &[], 3, &positions);
        assert_eq!(owned(&batch).iter().filter(|(k, _)| k.starts_with(CRM_PREFIX)).count(), 1);
    }

    #[test]
    fn a_checkpoint_of_state_version_3_leaves_the_crm_memory_incomplete() {
        let journey = journey();
        let mut engine = Engine::new(Arc::clone(&journey));
        feed(&mut engine, 0, 50);
        let mut record = b"M".to_vec();
        let mut w = Enc(&mut record);
        w.u64(1);
        w.u32(0);
        let mut meta = Vec::new();
        engine.encode_meta(&mut meta);
        // The same meta under version 3 (its layout did not change with version 4).
        meta[..4].copy_from_slice(&3u32.to_le_bytes());
        record.extend_from_slice(&meta);
        let read = fold(&[(META_KEY.to_vec(), Some(record))], &journey);
        assert_eq!(read.stats.checkpoints, 1);
        assert!(!read.engine.crm().is_complete());
    }

    fn identity_journey() -> Arc<Journey> {
        let text = format!("{}\n[identity]\nresolve = true\n", include_str!("../../../deploy/journeys/b2b.toml"));
        Arc::new(Journey::from_toml_str(&text).unwrap())
    }

    fn segment(engine: &mut Engine, line: &str) {
        let journey = Arc::clone(engine.journey());
        engine.apply(&codec::decode(line.as_bytes(), &journey, &Limits::default()).unwrap(), &mut Vec::new());
    }

    fn identify(user: &str, anon: &str, at: &str, email: &str) -> String {
        format!(
            r#"{{"type":"identify","userId":"{user}","anonymousId":"{anon}","messageId":"{user}-{anon}-{at}","timestamp":"{at}","traits":{{"email":"{email}"}}}}"#
        )
    }

    fn checkpoint(engine: &mut Engine, batch: &mut Batch, seq: u64) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        let changed = engine.take_changed();
        batch.checkpoint(engine, &changed, &[], seq, &BTreeMap::from([("web".to_string(), seq as i64)]));
        engine.settle_taken(true);
        owned(batch)
    }

    #[test]
    fn the_identity_map_reads_back_from_the_changelog_and_an_unfinished_link_is_deleted() {
        let journey = identity_journey();
        let mut engine = Engine::new(Arc::clone(&journey));
        let mut batch = Batch::default();
        segment(&mut engine, &identify("usr_1", "anon-1", "2026-03-02T10:00:00Z", "ana@x.example"));
        segment(&mut engine, &identify("usr_2", "anon-2", "2026-03-02T11:00:00Z", "bo@y.example"));
        let mut log = checkpoint(&mut engine, &mut batch, 1);
        let ids = log.iter().filter(|(k, _)| k.starts_with(identity::ID_RECORD.as_bytes())).count();
        let links = log.iter().filter(|(k, _)| k.starts_with(identity::LINK_RECORD.as_bytes())).count();
        assert_eq!((ids, links), (6, 4), "two users, two devices, two emails; each joined twice");
        // Checkpoint 2: anon-1 was seen earlier than first thought (first-seen changes).
        segment(
            &mut engine,
            r#"{"type":"page","anonymousId":"anon-1","messageId":"p-0","timestamp":"2026-03-01T09:00:00Z"}"#,
        );
        log.extend(checkpoint(&mut engine, &mut batch, 2));
        let live = engine.identity_map().unwrap().resolution();

        let read = fold(&log, &journey);
        assert_eq!(
            read.engine.identity_map().unwrap().resolution(),
            live,
            "same identifiers, kinds, times, canonical ids"
        );
        assert_eq!(read.engine.digest(), engine.digest());
        assert!(!read.engine.has_changes());

        // Checkpoint 3 links usr_2 to usr_1 by email, but its checkpoint record is lost.
        segment(&mut engine, &identify("usr_2", "anon-3", "2026-03-03T10:00:00Z", "ana@x.example"));
        let unfinished = checkpoint(&mut engine, &mut batch, 3);
        let mut cut = log.clone();
        cut.extend(unfinished.into_iter().take(batch.len() - 1));
        let read = fold(&cut, &journey);
        assert_eq!(read.engine.identity_map().unwrap().resolution(), live, "nothing unconfirmed is applied");
        let deleted: Vec<&String> = read.tombstones.iter().filter(|t| t.starts_with(identity::LINK_RECORD)).collect();
        assert!(!deleted.is_empty(), "the unconfirmed links are deleted next time: {:?}", read.tombstones);
        assert!(read.tombstones.iter().any(|t| t == &format!("{}anon-3", identity::ID_RECORD)));
    }

    /// A crash between an identity record and its checkpoint record, a restore from the
    /// changelog alone, a re-execution that (in another order) reaches only part of what the
    /// crashed run had linked before the next checkpoint, that checkpoint, and a changelog-only
    /// restore again: the map read back is the live one (the unfinished records the state does
    /// not hold are deleted, those it holds written again, none of them treated as a prospect
    /// id), and again after the rest of the re-execution and one more checkpoint. Whether the
    /// re-execution brings back an identifier the restore owes a tombstone for before that
    /// checkpoint (its record follows the tombstone in the batch) or after it.
    #[test]
    fn an_unfinished_checkpoints_identity_records_are_settled_by_the_next_one() {
        let journey = identity_journey();
        let second = identify("usr_1", "anon-2", "2026-03-02T12:00:00Z", "ana@x.example");
        let first_seen =
            r#"{"type":"page","anonymousId":"anon-1","messageId":"p-0","timestamp":"2026-03-01T09:00:00Z"}"#;
        let third = identify("usr_2", "anon-3", "2026-03-03T10:00:00Z", "ana@x.example");
        let map = |e: &Engine| e.identity_map().unwrap().resolution();
        // Re-executed before the next checkpoint: only the second line (anon-1's record of the
        // crashed run, seen earlier, is ahead of the state; anon-3's and usr_2's are not in
        // it), or the second and the third (anon-3 and usr_2 come back).
        for rerun in [vec![&second[..]], vec![&second[..], &third[..]]] {
            let mut engine = Engine::new(Arc::clone(&journey));
            engine.track_removals(true);
            let mut batch = Batch::default();
            let positions = |seq: u64| BTreeMap::from([("web".to_string(), seq as i64)]);
            segment(&mut engine, &identify("usr_1", "anon-1", "2026-03-02T10:00:00Z", "ana@x.example"));
            let mut log = checkpoint(&mut engine, &mut batch, 1);
            // The crashed run: all three, then a checkpoint whose record never got written.
            let mut crashed = engine.clone();
            for line in [&second, first_seen, &third] {
                segment(&mut crashed, line);
            }
            let unfinished = checkpoint(&mut crashed, &mut batch, 2);
            log.extend(unfinished.into_iter().take(batch.len() - 1));

            let read = fold(&log, &journey);
            assert!(read.rewrite.iter().all(|id| !id.starts_with('\0')), "{:?}", read.rewrite);
            assert!(read.tombstones.contains(&format!("{}anon-3", identity::ID_RECORD)), "{:?}", read.tombstones);
            let mut live = read.engine;
            for id in &read.rewrite {
                if let Some(ix) = live.find(id) {
                    live.mark_changed(ix.0);
                }
            }
            live.track_removals(true);
            for line in &rerun {
                segment(&mut live, line);
            }
            let mut next = |live: &mut Engine, seq: u64, owed: &[String], log: &mut Vec<_>| {
                let changed = live.take_changed();
                let mut tombstones = owed.to_vec();
                tombstones.extend(live.take_removed().into_iter().map(String::from));
                batch.checkpoint(live, &changed, &tombstones, seq, &positions(seq));
                live.settle_taken(true);
                log.extend(owned(&batch));
            };
            next(&mut live, 2, &read.tombstones, &mut log);
            let again = fold(&log, &journey);
            assert_eq!(map(&again.engine), map(&live), "{} re-executed", rerun.len());
            assert_eq!(again.engine.digest(), live.digest());
            assert!(again.tombstones.is_empty() && again.rewrite.is_empty());
            // The rest of the re-execution, one more checkpoint, read again.
            for line in [first_seen, &third].into_iter().filter(|l| !rerun.contains(l)) {
                segment(&mut live, line);
            }
            next(&mut live, 3, &[], &mut log);
            let again = fold(&log, &journey);
            assert_eq!(map(&again.engine), map(&live), "{} re-executed", rerun.len());
            assert_eq!(again.engine.digest(), live.digest());
        }
    }

    /// The outbox record (`\0outbox`): installed when its checkpoint record confirms it,
    /// emptied by a later checkpoint's tombstone, left as it was by a checkpoint without one;
    /// one of an unfinished checkpoint is not applied, and makes the next checkpoint write the
    /// record (here a tombstone); never read as a prospect.
    #[test]
    fn the_outbox_record_is_confirmed_by_its_checkpoint_and_tombstoned_once_empty() {
        use crate::core::identity::{IdKind, LinkReason};
        use crate::core::xpart::{Ident, XRecord};
        let journey = identity_journey();
        let link = |n: i64| XRecord::Link {
            ids: ["a", "b"]
                .map(|k| Ident { key: format!("{k}{n}"), kind: IdKind::Known, first_seen: crate::core::Ts(n) })
                .to_vec(),
            reason: LinkReason::Identify,
            ts: crate::core::Ts(n),
        };
        let records = vec![(1, link(1)), (2, link(2))];
        let mut engine = Engine::new(Arc::clone(&journey));
        let mut batch = Batch::default();
        let held = |e: &Engine| e.outbox().cloned().collect::<Vec<_>>();
        // Checkpoint 1 carries two records.
        engine.restore_outbox(records.clone(), 1);
        engine.seal_outbox();
        let mut log = checkpoint(&mut engine, &mut batch, 1);
        assert!(log.iter().any(|(k, v)| k == OUTBOX_KEY && v.is_some()));
        assert_eq!(engine.settle_outbox(true), &records[..]);
        let read = fold(&log, &journey);
        assert_eq!(held(&read.engine), records, "restored to be sent again");
        assert!(read.tombstones.is_empty() && read.rewrite.is_empty() && read.engine.is_empty());
        // Checkpoint 2 holds nothing: a tombstone; checkpoint 3 writes no record at all.
        for seq in [2, 3] {
            engine.seal_outbox();
            let written = checkpoint(&mut engine, &mut batch, seq);
            let outbox: Vec<_> = written.iter().filter(|(k, _)| k == OUTBOX_KEY).collect();
            assert_eq!(outbox.len(), usize::from(seq == 2), "checkpoint {seq}");
            assert!(outbox.iter().all(|(_, v)| v.is_none()));
            log.extend(written);
            assert!(held(&fold(&log, &journey).engine).is_empty(), "checkpoint {seq}");
        }
        // Checkpoint 4 never finished: its record is not applied; the next one writes the
        // outbox record again (empty: a tombstone).
        engine.restore_outbox(records[..1].to_vec(), 1);
        engine.seal_outbox();
        let unfinished = checkpoint(&mut engine, &mut batch, 4);
        let mut cut = log.clone();
        cut.extend(unfinished.into_iter().take(batch.len() - 1));
        let read = fold(&cut, &journey);
        assert!(held(&read.engine).is_empty(), "nothing unconfirmed is applied");
        assert!(read.tombstones.is_empty() && read.rewrite.is_empty(), "{:?} {:?}", read.tombstones, read.rewrite);
        let mut restored = read.engine;
        restored.seal_outbox();
        let next = checkpoint(&mut restored, &mut batch, 4);
        assert!(next.iter().any(|(k, v)| k == OUTBOX_KEY && v.is_none()), "a tombstone after an unfinished record");
    }

    /// An outbox larger than `message.max.bytes` allows is written as parts that each fit
    /// (`\0outbox` counting them, then `\0outbox/<n>`), read back whole; a later checkpoint
    /// tombstones every part it no longer has; parts beyond the count the first part gives
    /// (left by a compacted checkpoint) are not read; an unfinished split checkpoint is not
    /// applied and the next one tombstones all its parts.
    #[test]
    fn a_split_outbox_reads_back_whole_and_its_surplus_parts_are_tombstoned() {
        use crate::core::engine::outbox::{OUTBOX_SPLIT_TAG, outbox_part, outbox_part_key};
        use crate::core::xpart::{TRANSFER_HEADROOM, XRecord};
        let journey = identity_journey();
        let forget =
            |n: i64| (n as u32 % 3, XRecord::Forget { ids: vec![format!("{n:0>40}")], ts: crate::core::Ts(n) });
        let records: Vec<_> = (0..40).map(forget).collect();
        let new = || {
            let mut e = Engine::new(Arc::clone(&journey));
            e.resolve_across(0, 3);
            e.limit_transfers(TRANSFER_HEADROOM + 600);
            e
        };
        let mut engine = new();
        let mut batch = Batch::default();
        let held = |e: &Engine| e.outbox().cloned().collect::<Vec<_>>();
        let parts = |log: &[(Vec<u8>, Option<Vec<u8>>)]| {
            log.iter().filter(|(k, _)| outbox_part(k).is_some()).cloned().collect::<Vec<_>>()
        };
        engine.restore_outbox(records.clone(), 1);
        engine.seal_outbox();
        let mut log = checkpoint(&mut engine, &mut batch, 1);
        let written = parts(&log);
        let k = written.len();
        assert!(k >= 3, "{k} parts");
        for (n, (key, value)) in written.iter().enumerate() {
            assert_eq!(key, &outbox_part_key(n));
            let value = value.as_ref().expect("a part");
            assert!(value.len() <= 620, "part {n}: {} bytes", value.len());
            assert_eq!(value[0], if n == 0 { OUTBOX_SPLIT_TAG } else { OUTBOX_TAG });
        }
        assert_eq!(held(&fold(&log, &journey).engine), records, "read back whole, in order");
        // Checkpoint 2 holds nothing: every part is tombstoned.
        assert_eq!(engine.settle_outbox(true).len(), records.len());
        engine.seal_outbox();
        let emptied = checkpoint(&mut engine, &mut batch, 2);
        let tombstones = parts(&emptied);
        assert_eq!(tombstones.len(), k);
        assert!(tombstones.iter().all(|(_, v)| v.is_none()));
        let mut two = log.clone();
        two.extend(emptied);
        assert!(held(&fold(&two, &journey).engine).is_empty());
        // A checkpoint of one part that did not know of the earlier parts (no tombstones), after
        // compaction removed checkpoint 1's record: checkpoint 1's parts beyond the first are
        // read with it, and left out (the first part counts one).
        let mut other = new();
        other.restore_outbox(records[..1].to_vec(), 1);
        other.seal_outbox();
        let one = checkpoint(&mut other, &mut Batch::default(), 3);
        assert_eq!(parts(&one).len(), 1);
        let mut compacted: Vec<_> =
            log.iter().filter(|(k, _)| outbox_part(k).is_some_and(|n| n > 0)).cloned().collect();
        compacted.extend(one);
        assert_eq!(held(&fold(&compacted, &journey).engine), records[..1].to_vec());
        // Checkpoint 1 unfinished (its record lost): nothing applied; the next checkpoint
        // tombstones each part it wrote.
        log.pop();
        let read = fold(&log, &journey);
        assert!(held(&read.engine).is_empty());
        assert!(read.tombstones.is_empty() && read.rewrite.is_empty(), "{:?} {:?}", read.tombstones, read.rewrite);
        let mut restored = read.engine;
        restored.seal_outbox();
        let next = checkpoint(&mut restored, &mut batch, 2);
        let next = parts(&next);
        assert_eq!(next.len(), k, "every part of the unfinished checkpoint");
        assert!(next.iter().all(|(_, v)| v.is_none()));
    }
}
