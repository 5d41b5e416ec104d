//! An in-memory [`SnapshotStore`], for tests and tools; nothing survives the process.

use std::collections::BTreeMap;
use std::io;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Checked, Header, Pending, SnapshotError, SnapshotStore, encode, parse};
use crate::core::Engine;

/// Snapshots held in memory, for tests and tools; nothing survives the process.
///
/// Each save keeps the complete file image [`FileStore`](super::FileStore) would write, and
/// loading runs the same checks on it, so what loads back is what a file would have given. Files
/// are named `mem:<group>/shard-<shard>/<seq>.snap` (names only: nothing is on disk); the newest
/// `keep` are kept per shard. With [`MemStore::fail_saves`] on, every save fails as a full disk
/// would, and nothing is stored.
pub struct MemStore {
    group: String,
    keep: usize,
    fail: AtomicBool,
    /// Per shard, file images by sequence number.
    shards: Mutex<BTreeMap<i32, BTreeMap<u64, Vec<u8>>>>,
}

impl MemStore {
    pub fn new(group: &str, keep: usize) -> MemStore {
        MemStore {
            group: group.to_string(),
            keep: keep.max(1),
            fail: AtomicBool::new(false),
            shards: Mutex::new(BTreeMap::new()),
        }
    }

    /// From now on, every save fails (`true`) or succeeds again (`false`).
    pub fn fail_saves(&self, fail: bool) {
        self.fail.store(fail, Ordering::Release);
    }

    fn path(&self, shard: i32, seq: u64) -> PathBuf {
        PathBuf::from(format!("mem:{}/shard-{shard:04}/{seq:020}.snap", self.group))
    }

    fn images(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, BTreeMap<u64, Vec<u8>>>> {
        // A panic while holding the lock leaves the map consistent (every change is one call).
        self.shards.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SnapshotStore for MemStore {
    fn save(&self, what: Pending, engine: &Engine) -> Result<Header, SnapshotError> {
        if self.fail.load(Ordering::Acquire) {
            return Err(SnapshotError::Io {
                path: self.path(what.shard, what.seq),
                source: io::Error::new(io::ErrorKind::StorageFull, "MemStore: saves fail (fail_saves)"),
            });
        }
        let (header, image) = encode(&what, engine);
        let mut shards = self.images();
        let files = shards.entry(what.shard).or_default();
        files.insert(what.seq, image);
        while files.len() > self.keep {
            files.pop_first();
        }
        Ok(header)
    }

    fn latest(&self, shard: i32) -> (Option<Checked>, Vec<SnapshotError>) {
        let newest_first: Vec<(u64, Vec<u8>)> = match self.images().get(&shard) {
            Some(files) => files.iter().rev().map(|(&seq, image)| (seq, image.clone())).collect(),
            None => Vec::new(),
        };
        let mut rejected = Vec::new();
        for (seq, image) in newest_first {
            match parse(&self.path(shard, seq), image) {
                Ok(c) => return (Some(c), rejected),
                Err(e) => rejected.push(e),
            }
        }
        (None, rejected)
    }

    fn list(&self, shard: i32) -> Result<Vec<PathBuf>, SnapshotError> {
        let shards = self.images();
        let seqs: Vec<u64> = shards.get(&shard).map(|files| files.keys().rev().copied().collect()).unwrap_or_default();
        Ok(seqs.into_iter().map(|seq| self.path(shard, seq)).collect())
    }
}
