//! Where shard state is persisted: two ports and their implementations.
//!
//! - [`SnapshotStore`]: shard state as a chain, a base (a full state, `<seq>.snap`) and the
//!   deltas after it (`<seq>.delta`: one checkpoint's changelog records each), with the input
//!   offsets they cover (`chain.rs`: chains, deltas, compaction into a new base).
//!   [`FileStore`] (`file.rs`: the file format, atomic writes) is the default; [`MemStore`]
//!   keeps the same images in memory for tests and tools.
//! - [`Changelog`]: per-prospect records and checkpoint records in a compacted log, so a shard
//!   can move between instances. [`KafkaChangelog`] (`changelog/kafka.rs`) writes and reads the
//!   Kafka topic; [`MemChangelog`] keeps partitions in memory for tests. The record bytes, both
//!   directions, are `changelog/mod.rs` ([`Batch`] encodes, [`changelog::Fold`] decodes).
//!
//! Which of them a shard restores from is decided by `pipeline::restore::plan`, from what each
//! reported.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::core::{Engine, Journey, StateError};

mod chain;
pub mod changelog;
mod file;
mod mem;

pub use chain::{Chain, ChainTip, DeltaFacts, chain_ending_at, newest_chain_in};
pub use changelog::{Batch, Changelog, ChangelogError, ChangelogReader, KafkaChangelog, META_KEY, Visit};
pub use file::{FileStore, encode, read};
pub use mem::{MemChangelog, MemRecord, MemStore, Refuse};

pub const MAGIC: &[u8; 8] = b"MFSNAP\r\n";
pub const FORMAT_VERSION: u32 = 1;

/// What a snapshot covers, readable without decoding the body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format_version: u32,
    pub state_version: u32,
    pub group: String,
    pub shard: i32,
    /// Checkpoint sequence number of this shard (grows by one per checkpoint).
    pub seq: u64,
    /// Wall-clock time of the write, RFC 3339 (information only).
    pub written_at: String,
    pub journey: String,
    pub journey_fingerprint: String,
    /// Next offset to read per input topic: the state covers everything before it.
    pub positions: BTreeMap<String, i64>,
    /// Changelog position right after this checkpoint's records (topping up reads from here).
    pub changelog: Option<ChangelogPosition>,
    pub prospects: u64,
    /// Order-independent digest of every prospect's state (`Engine::digest`), hex.
    pub digest: String,
    pub body_len: u64,
    pub body_hash: String,
    /// A delta: the sequence number of the checkpoint it applies to (its base's or the previous
    /// delta's); absent in a base. A delta's `prospects` and `digest` are the state's after it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangelogPosition {
    pub topic: String,
    pub next: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("{path}: not a microfunnel snapshot (bad magic bytes)")]
    Magic { path: PathBuf },
    #[error("{path}: snapshot format version {found} is not supported (this build reads 1..={FORMAT_VERSION})")]
    Version { path: PathBuf, found: u32 },
    #[error("{path}: truncated: {what}")]
    Truncated { path: PathBuf, what: String },
    #[error("{path}: header checksum mismatch (file corrupt)")]
    HeaderChecksum { path: PathBuf },
    #[error("{path}: header is not valid: {reason}")]
    Header { path: PathBuf, reason: String },
    #[error("{path}: body checksum mismatch (file corrupt)")]
    BodyChecksum { path: PathBuf },
    #[error("{path}: {source}")]
    State { path: PathBuf, source: StateError },
    #[error("{path}: state digest {found} after the chain, the delta says {expected} (chain unusable)")]
    Digest { path: PathBuf, expected: String, found: String },
    #[error("{path}: delta records do not apply: {reason}")]
    Delta { path: PathBuf, reason: String },
    #[error(
        "shard {shard}: a delta follows checkpoint {prev}, but the chain in this store ends at {tip:?} (a base is needed)"
    )]
    NoChain { shard: i32, prev: u64, tip: Option<u64> },
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.to_path_buf(), source }
}

/// A snapshot read and checked, body not yet decoded.
pub struct Checked {
    pub path: PathBuf,
    pub header: Header,
    pub body: Vec<u8>,
}

impl Checked {
    fn copy(&self) -> Checked {
        Checked { path: self.path.clone(), header: self.header.clone(), body: self.body.clone() }
    }

    /// Decodes the body into an engine for `journey`.
    pub fn engine(&self, journey: Arc<Journey>) -> Result<Engine, SnapshotError> {
        Engine::decode_state(journey, &self.body)
            .map_err(|source| SnapshotError::State { path: self.path.clone(), source })
    }
}

/// What a checkpoint's file covers.
#[derive(Clone, Debug)]
pub struct Pending {
    pub group: String,
    pub shard: i32,
    pub seq: u64,
    pub written_at: String,
    pub positions: BTreeMap<String, i64>,
    pub changelog: Option<ChangelogPosition>,
}

/// Where shard snapshots live: per shard a chain of a base and deltas. The filesystem store
/// ([`FileStore`]) is the default; [`MemStore`] keeps the same images in memory (tests and
/// tools); others (a shared volume, object storage) implement the same calls.
pub trait SnapshotStore: Send {
    /// Writes a base (a full state) durably; later deltas of the shard apply to it. Returns its
    /// header.
    fn save(&self, what: Pending, engine: &Engine) -> Result<Header, SnapshotError>;
    /// Writes one checkpoint's changelog records durably as a delta on the chain this store
    /// holds for the shard, which must end at checkpoint `delta.prev` ([`SnapshotError::NoChain`]
    /// otherwise: save a base first).
    fn save_delta(
        &self,
        what: Pending,
        delta: DeltaFacts,
        batch: &Batch,
        journey: &Journey,
    ) -> Result<Header, SnapshotError>;
    /// The newest chain of `shard` whose files pass every check (a base and the deltas that
    /// follow it, up to the first missing or damaged one), and why other files did not. Later
    /// deltas apply to that chain.
    fn latest(&self, shard: i32) -> (Option<Chain>, Vec<SnapshotError>);
    /// Snapshot files of `shard` (bases and deltas), newest first.
    fn list(&self, shard: i32) -> Result<Vec<PathBuf>, SnapshotError>;
    /// Where this store's chain of `shard` ends and its size (`None`: no chain saved or loaded
    /// by this process).
    fn tip(&self, shard: i32) -> Option<ChainTip>;
    /// Rewrites the newest chain into one base (from the files, never from a live engine):
    /// the chain's state, checked against the newest delta's digest, written as a base of the
    /// newest delta's checkpoint. `None` when there is no chain or it has no delta.
    fn compact(&self, shard: i32, journey: &Arc<Journey>) -> Result<Option<Header>, SnapshotError>;
}

impl<S: SnapshotStore + Sync + ?Sized> SnapshotStore for Arc<S> {
    fn save(&self, what: Pending, engine: &Engine) -> Result<Header, SnapshotError> {
        (**self).save(what, engine)
    }
    fn save_delta(
        &self,
        what: Pending,
        delta: DeltaFacts,
        batch: &Batch,
        journey: &Journey,
    ) -> Result<Header, SnapshotError> {
        (**self).save_delta(what, delta, batch, journey)
    }
    fn latest(&self, shard: i32) -> (Option<Chain>, Vec<SnapshotError>) {
        (**self).latest(shard)
    }
    fn list(&self, shard: i32) -> Result<Vec<PathBuf>, SnapshotError> {
        (**self).list(shard)
    }
    fn tip(&self, shard: i32) -> Option<ChainTip> {
        (**self).tip(shard)
    }
    fn compact(&self, shard: i32, journey: &Arc<Journey>) -> Result<Option<Header>, SnapshotError> {
        (**self).compact(shard, journey)
    }
}
