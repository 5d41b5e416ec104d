//! The changelog port and its record format, both directions.
//!
//! Changelog partition p holds shard p's state as Kafka Streams keeps a store's changelog:
//!
//! | key                  | value                                                        |
//! |----------------------|--------------------------------------------------------------|
//! | prospect id (UTF-8)  | `P` + the prospect record (`Engine::encode_changelog_record`) |
//! | prospect id          | none (a tombstone: a prospect the state no longer holds)     |
//! | [`META_KEY`]         | `M` + seq u64 + n u32 + n × (topic, next i64) + shard meta    |
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

use crate::core::snapshot::{Dec, Enc};
use crate::core::{Engine, Journey, ProspectIx, StateError};

use super::ChangelogPosition;

mod kafka;

pub use kafka::KafkaChangelog;

/// Key of the checkpoint records (compaction keeps the newest).
pub const META_KEY: &[u8] = b"\0microfunnel.checkpoint";

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
        self.buf.clear();
        self.records.clear();
        for &ix in changed {
            let key = self.push_bytes(engine.prospect_id(ix).as_bytes());
            let at = self.buf.len();
            self.buf.push(b'P');
            engine.encode_changelog_record(ix, &mut self.buf);
            self.records.push((key, Some(at..self.buf.len())));
        }
        for id in tombstones {
            if engine.find(id).is_none() {
                let key = self.push_bytes(id.as_bytes());
                self.records.push((key, None));
            }
        }
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
}

impl Fold {
    /// Starts from `engine` at `positions` and checkpoint `seq` (a snapshot), or an empty engine.
    pub fn new(engine: Engine, positions: BTreeMap<String, i64>, seq: u64) -> Fold {
        Fold { engine, positions, seq, staged: HashMap::new(), stats: FoldStats::default() }
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
        let parsed = checkpoint_header(&mut r).and_then(|h| self.engine.decode_meta(&mut r).map(|_| h));
        let (seq, positions) = match parsed {
            Ok(h) => h,
            Err(e) => {
                self.stats.bad += 1;
                tracing::error!(shard, offset, error = %e, "bad checkpoint record in the changelog; skipped");
                return;
            }
        };
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
    }

    /// The state as of the last checkpoint record read, and what an unfinished checkpoint after
    /// it wrote.
    pub fn finish(self) -> Folded {
        let Fold { mut engine, positions, seq, staged, stats } = self;
        let (mut tombstones, mut rewrite) = (Vec::new(), Vec::new());
        for id in staged.into_keys() {
            let Ok(id) = String::from_utf8(id) else { continue };
            if engine.find(&id).is_some() { rewrite.push(id) } else { tombstones.push(id) }
        }
        tombstones.sort();
        rewrite.sort();
        engine.take_changed();
        Folded { engine, positions, seq, tombstones, rewrite, stats }
    }
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
}
