//! In-memory stores, for tests and tools: [`MemStore`] (snapshots) and [`MemChangelog`];
//! nothing survives the process.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use std::time::Instant;

use super::chain::{self, Images, Tips};
use super::{Batch, Changelog, ChangelogError, ChangelogPosition, ChangelogReader, SnapshotError, Visit};

/// Snapshots held in memory, for tests and tools; nothing survives the process.
///
/// Each save keeps the complete file image [`FileStore`](super::FileStore) would write, under
/// the same name, and loading runs the same checks on it, so what loads back is what a file
/// would have given. Images are named `mem:<group>/shard-<shard>/<seq>.snap` or `.delta`
/// (names only: nothing is on disk), kept as a [`FileStore`](super::FileStore) keeps files.
/// With [`MemStore::fail_saves`] on, every save fails as a full disk would, and nothing is
/// stored.
pub struct MemStore {
    group: String,
    keep: usize,
    fail: AtomicBool,
    /// Per shard, images by name.
    shards: Mutex<BTreeMap<i32, BTreeMap<String, Vec<u8>>>>,
    tips: Tips,
}

impl MemStore {
    pub fn new(group: &str, keep: usize) -> MemStore {
        MemStore {
            group: group.to_string(),
            keep: keep.max(1),
            fail: AtomicBool::new(false),
            shards: Mutex::new(BTreeMap::new()),
            tips: Tips::default(),
        }
    }

    /// From now on, every save fails (`true`) or succeeds again (`false`).
    pub fn fail_saves(&self, fail: bool) {
        self.fail.store(fail, Ordering::Release);
    }

    /// The base image of checkpoint `seq` of `shard`, if kept.
    pub fn image(&self, shard: i32, seq: u64) -> Option<Vec<u8>> {
        self.images().get(&shard)?.get(&format!("{seq:020}.snap")).cloned()
    }

    /// Replaces the bytes of image `name` of `shard` (`None`: removes it), as damage on disk
    /// would; returns whether it existed.
    pub fn damage(&self, shard: i32, name: &str, bytes: Option<Vec<u8>>) -> bool {
        let mut shards = self.images();
        let Some(files) = shards.get_mut(&shard) else { return false };
        match bytes {
            Some(b) => files.get_mut(name).map(|v| *v = b).is_some(),
            None => files.remove(name).is_some(),
        }
    }

    /// The bytes of image `name` of `shard`.
    pub fn bytes(&self, shard: i32, name: &str) -> Option<Vec<u8>> {
        self.images().get(&shard)?.get(name).cloned()
    }

    fn images(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, BTreeMap<String, Vec<u8>>>> {
        // A panic while holding the lock leaves the map consistent (every change is one call).
        self.shards.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Images for MemStore {
    fn path(&self, shard: i32, name: &str) -> PathBuf {
        PathBuf::from(format!("mem:{}/shard-{shard:04}/{name}", self.group))
    }

    fn put(&self, shard: i32, name: &str, parts: &[&[u8]]) -> Result<(), SnapshotError> {
        if self.fail.load(Ordering::Acquire) {
            return Err(SnapshotError::Io {
                path: self.path(shard, name),
                source: io::Error::new(io::ErrorKind::StorageFull, "MemStore: saves fail (fail_saves)"),
            });
        }
        self.images().entry(shard).or_default().insert(name.to_string(), parts.concat());
        Ok(())
    }

    fn get(&self, shard: i32, name: &str) -> Result<Vec<u8>, SnapshotError> {
        self.images()
            .get(&shard)
            .and_then(|f| f.get(name))
            .cloned()
            .ok_or_else(|| SnapshotError::Io { path: self.path(shard, name), source: io::ErrorKind::NotFound.into() })
    }

    fn names(&self, shard: i32) -> Result<Vec<String>, SnapshotError> {
        Ok(self.images().get(&shard).map(|f| f.keys().cloned().collect()).unwrap_or_default())
    }

    fn remove(&self, shard: i32, name: &str) {
        if let Some(f) = self.images().get_mut(&shard) {
            f.remove(name);
        }
    }
}

impl chain::Chained for MemStore {
    fn keep(&self) -> usize {
        self.keep
    }

    fn tips(&self) -> &Tips {
        &self.tips
    }
}

/// What a [`MemChangelog`] refuses, as a broker could.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Refuse {
    /// Nothing: every append succeeds.
    #[default]
    Nothing,
    /// Every record: an append writes nothing and fails.
    Records,
    /// The checkpoint record only: the prospect records are written, the append fails (as a
    /// crash between the two would leave the log).
    CheckpointRecord,
}

/// One changelog record: key and value (`None`: a tombstone).
pub type MemRecord = (Vec<u8>, Option<Vec<u8>>);

/// A changelog held in memory, partition per shard, offsets from 0; for tests and tools.
pub struct MemChangelog {
    topic: String,
    refuse: Mutex<Refuse>,
    unreadable: AtomicBool,
    partitions: Mutex<BTreeMap<i32, Vec<MemRecord>>>,
}

impl MemChangelog {
    pub fn new(topic: &str) -> MemChangelog {
        MemChangelog {
            topic: topic.to_string(),
            refuse: Mutex::new(Refuse::Nothing),
            unreadable: AtomicBool::new(false),
            partitions: Mutex::new(BTreeMap::new()),
        }
    }

    /// From now on, appends are refused as `refuse` says.
    pub fn refuse(&self, refuse: Refuse) {
        *self.refuse.lock().unwrap_or_else(|e| e.into_inner()) = refuse;
    }

    /// From now on, opening a partition fails (`true`) or works again (`false`).
    pub fn unreadable(&self, unreadable: bool) {
        self.unreadable.store(unreadable, Ordering::Release);
    }

    /// The records of partition `shard`, in offset order.
    pub fn records(&self, shard: i32) -> Vec<MemRecord> {
        self.log().get(&shard).cloned().unwrap_or_default()
    }

    fn log(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Vec<MemRecord>>> {
        self.partitions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Changelog for MemChangelog {
    fn topic(&self) -> &str {
        &self.topic
    }

    fn append(&self, shard: i32, batch: &Batch, _deadline: Instant) -> Result<ChangelogPosition, ChangelogError> {
        let refuse = *self.refuse.lock().unwrap_or_else(|e| e.into_inner());
        if batch.is_empty() {
            return Err(ChangelogError::Enqueue { shard });
        }
        if refuse == Refuse::Records {
            return Err(ChangelogError::Refused { shard, count: batch.len() as u64 });
        }
        let mut log = self.log();
        let part = log.entry(shard).or_default();
        let owned = |(k, v): (&[u8], Option<&[u8]>)| (k.to_vec(), v.map(<[u8]>::to_vec));
        part.extend(batch.records().take(batch.len() - 1).map(owned));
        if refuse == Refuse::CheckpointRecord {
            return Err(ChangelogError::CheckpointRefused { shard });
        }
        part.push(owned(batch.record(batch.len() - 1)));
        Ok(ChangelogPosition { topic: self.topic.clone(), next: part.len() as i64 })
    }

    fn open(&self, shard: i32) -> Result<Box<dyn ChangelogReader + '_>, ChangelogError> {
        if self.unreadable.load(Ordering::Acquire) {
            return Err(ChangelogError::Unreadable { shard, reason: "MemChangelog: unreadable".to_string() });
        }
        Ok(Box::new(MemReader { records: self.records(shard) }))
    }
}

/// A copy of one partition, taken when it was opened.
struct MemReader {
    records: Vec<MemRecord>,
}

impl ChangelogReader for MemReader {
    fn extent(&self) -> (i64, i64) {
        (0, self.records.len() as i64)
    }

    fn read(&mut self, from: Option<i64>, visit: &mut Visit<'_>) -> Result<(), ChangelogError> {
        let from = from.unwrap_or(0).max(0) as usize;
        for (offset, (k, v)) in self.records.iter().enumerate().skip(from) {
            visit(offset as i64, k, v.as_deref());
        }
        Ok(())
    }
}
