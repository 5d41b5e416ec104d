//! What each assigned shard is doing, for `GET /shards`: restoring or running, where its state
//! came from, and its last completed checkpoint (offsets covered and state digest).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct ShardStatus {
    pub partition: i32,
    /// `restoring` or `running`.
    pub state: &'static str,
    /// `snapshot`, `changelog`, `snapshot+changelog`, `none` (replayed from the beginning),
    /// `empty` (nothing persisted: started at the committed offsets).
    pub restored_from: &'static str,
    pub restore_seconds: f64,
    pub prospects: u64,
    pub checkpoint: Option<CheckpointStatus>,
}

impl ShardStatus {
    pub fn restoring(partition: i32) -> ShardStatus {
        ShardStatus {
            partition,
            state: "restoring",
            restored_from: "empty",
            restore_seconds: 0.0,
            prospects: 0,
            checkpoint: None,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CheckpointStatus {
    pub seq: u64,
    /// Next offset per input topic: the checkpointed state covers everything before.
    pub positions: BTreeMap<String, i64>,
    /// `Engine::digest` of the checkpointed state (with local snapshots on).
    pub digest: Option<String>,
    pub prospects: u64,
    pub snapshot_seconds: f64,
}

/// Shared between the pipeline (writes) and the HTTP endpoint (reads).
#[derive(Clone, Default)]
pub struct Status(Arc<Mutex<BTreeMap<i32, ShardStatus>>>);

impl Status {
    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, ShardStatus>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set(&self, partition: i32, s: ShardStatus) {
        self.map().insert(partition, s);
    }

    pub fn update(&self, partition: i32, f: impl FnOnce(&mut ShardStatus)) {
        if let Some(s) = self.map().get_mut(&partition) {
            f(s);
        }
    }

    pub fn remove(&self, partition: i32) -> Option<ShardStatus> {
        self.map().remove(&partition)
    }

    pub fn snapshot(&self) -> Vec<ShardStatus> {
        self.map().values().cloned().collect()
    }

    /// Whether any assigned shard is still restoring.
    pub fn restoring(&self) -> bool {
        self.map().values().any(|s| s.state == "restoring")
    }
}
