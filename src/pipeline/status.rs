//! What each assigned shard is doing, for `GET /shards`: restoring or running, where its state
//! came from, and its last completed checkpoint (offsets covered and state digest).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// What a shard is doing; serialised as `restoring` or `running`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ShardState {
    /// Its state is being restored; it processes nothing yet (`/readyz` is false).
    #[serde(rename = "restoring")]
    Restoring,
    /// Restored (or resumed) and processing its inputs.
    #[serde(rename = "running")]
    Running,
}

/// Where a shard's state came from when it was assigned; serialised as the strings below.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum RestoreSource {
    /// `snapshot`: a local snapshot alone.
    #[serde(rename = "snapshot")]
    Snapshot,
    /// `changelog`: the changelog alone, from the start of its partition.
    #[serde(rename = "changelog")]
    Changelog,
    /// `snapshot+changelog`: a local snapshot topped up from the changelog.
    #[serde(rename = "snapshot+changelog")]
    SnapshotAndChangelog,
    /// `none`: nothing usable was persisted; the inputs are replayed from the beginning.
    #[serde(rename = "none")]
    Replay,
    /// `empty`: nothing is persisted at all; the inputs start at the group's committed offsets.
    #[serde(rename = "empty")]
    Empty,
}

impl RestoreSource {
    /// The string `GET /shards` and the logs show.
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreSource::Snapshot => "snapshot",
            RestoreSource::Changelog => "changelog",
            RestoreSource::SnapshotAndChangelog => "snapshot+changelog",
            RestoreSource::Replay => "none",
            RestoreSource::Empty => "empty",
        }
    }
}

impl std::fmt::Display for RestoreSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ShardStatus {
    pub partition: i32,
    pub state: ShardState,
    pub restored_from: RestoreSource,
    pub restore_seconds: f64,
    pub prospects: u64,
    pub checkpoint: Option<CheckpointStatus>,
}

impl ShardStatus {
    pub fn restoring(partition: i32) -> ShardStatus {
        ShardStatus {
            partition,
            state: ShardState::Restoring,
            restored_from: RestoreSource::Empty,
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
    /// Identity records the shard holds that were not yet acknowledged (its outbox: those of
    /// this checkpoint, sent once it was durable, and any produced since), as the checkpoint
    /// reported; 0 with identity resolution across partitions off.
    pub outbox: u64,
    /// Of those, `progress` records (event-time progress and its renewals): they move the
    /// receivers' expiry horizons (releasing expiries held there), and once every horizon is
    /// settled they change nothing; an idle shard renews its report every renewal interval, so
    /// its outbox is seldom empty at a checkpoint.
    pub outbox_progress: u64,
}

/// A shard's outbox: its records, and how many of them are `progress` records
/// ([`CheckpointStatus::outbox_progress`]).
pub(super) fn outbox_counts(engine: &crate::core::Engine) -> (u64, u64) {
    engine.outbox().fold((0, 0), |(all, progress), (_, r)| {
        (all + 1, progress + u64::from(matches!(r, crate::core::xpart::XRecord::Progress { .. })))
    })
}

/// Shared between the pipeline (writes) and the HTTP endpoint (reads); with the group's
/// published membership (`members.rs`), which partitions the other instances hold.
#[derive(Clone, Default)]
pub struct Status {
    shards: Arc<Mutex<BTreeMap<i32, ShardStatus>>>,
    members: crate::members::Membership,
}

impl Status {
    /// A status that knows this instance's membership (its id, advertised URL and what the
    /// others published).
    pub fn with_membership(members: crate::members::Membership) -> Status {
        Status { shards: Arc::default(), members }
    }

    pub fn membership(&self) -> &crate::members::Membership {
        &self.members
    }

    fn map(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, ShardStatus>> {
        self.shards.lock().unwrap_or_else(|p| p.into_inner())
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
        self.map().values().any(|s| s.state == ShardState::Restoring)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `GET /shards` and the recovery tests read these strings: they must not change.
    #[test]
    fn states_and_sources_serialise_to_their_strings() {
        let json = |v: serde_json::Value| v.as_str().unwrap().to_string();
        for (state, s) in [(ShardState::Restoring, "restoring"), (ShardState::Running, "running")] {
            assert_eq!(json(serde_json::to_value(state).unwrap()), s);
        }
        for (source, s) in [
            (RestoreSource::Snapshot, "snapshot"),
            (RestoreSource::Changelog, "changelog"),
            (RestoreSource::SnapshotAndChangelog, "snapshot+changelog"),
            (RestoreSource::Replay, "none"),
            (RestoreSource::Empty, "empty"),
        ] {
            assert_eq!(json(serde_json::to_value(source).unwrap()), s);
            assert_eq!(source.as_str(), s);
        }
    }

    #[test]
    fn a_restoring_shard_reads_as_restoring_until_it_runs() {
        let status = Status::default();
        status.set(3, ShardStatus::restoring(3));
        assert!(status.restoring());
        let v = serde_json::to_value(status.snapshot()).unwrap();
        assert_eq!(v[0]["state"], "restoring");
        assert_eq!(v[0]["restored_from"], "empty");
        status.update(3, |s| {
            s.state = ShardState::Running;
            s.restored_from = RestoreSource::SnapshotAndChangelog;
        });
        assert!(!status.restoring());
        let v = serde_json::to_value(status.snapshot()).unwrap();
        assert_eq!(v[0]["state"], "running");
        assert_eq!(v[0]["restored_from"], "snapshot+changelog");
    }
}
