//! Restoring a shard on assignment, as a plan: the stores report facts (the newest usable
//! snapshot and the changelog position it covers; the changelog partition's extent), the pure
//! [`plan`] decides where the shard restores from, and [`restore`] executes the decision.
//!
//! The order of preference: a snapshot topped up from the changelog from the position it
//! records, the changelog alone, then nothing (the inputs are replayed). Changelog prospect
//! records are installed only when a later checkpoint record confirms them; records after the
//! last checkpoint record belong to a checkpoint that did not finish and are rewritten or
//! deleted at the next checkpoint.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::core::{Engine, Journey};
use crate::store::changelog::{Fold, Folded};
use crate::store::{Changelog, ChangelogPosition, ChangelogReader, SnapshotStore};
use crate::telemetry::Metrics;

use super::status::RestoreSource;

/// What the snapshot store reported: its newest snapshot that loads.
#[derive(Clone, Copy, Debug)]
pub struct SnapshotFacts<'a> {
    /// The changelog position right after the snapshot's checkpoint (`None`: written with the
    /// changelog off).
    pub changelog: Option<&'a ChangelogPosition>,
}

/// What the changelog reported.
#[derive(Clone, Copy, Debug)]
pub enum ChangelogFacts<'a> {
    /// No changelog is configured.
    Off,
    /// Configured, but its reader could not be set up or its extent read.
    Unreadable,
    /// The shard's partition of `topic` holds offsets `low..high` (nothing when `high <= low`).
    Extent { topic: &'a str, low: i64, high: i64 },
}

/// Where a shard restores from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestorePlan {
    /// Nothing is persisted at all: an empty engine, inputs from the group's committed offsets.
    Empty,
    /// Nothing usable is persisted: an empty engine, inputs replayed from the beginning.
    Replay,
    /// The snapshot as it is (nothing in the changelog beyond it, or no position in it).
    Snapshot,
    /// The snapshot, then the changelog from offset `from`, the position it records.
    SnapshotTopUp { from: i64 },
    /// The changelog alone, from the start of the partition.
    Changelog,
}

/// Decides where a shard restores from, given whether checkpoints are persisted at all and what
/// the snapshot store and the changelog reported. Pure.
pub fn plan(persists: bool, snapshot: Option<SnapshotFacts<'_>>, changelog: ChangelogFacts<'_>) -> RestorePlan {
    if !persists {
        return RestorePlan::Empty;
    }
    let extent = match changelog {
        ChangelogFacts::Extent { topic, low, high } => Some((topic, low, high)),
        ChangelogFacts::Off | ChangelogFacts::Unreadable => None,
    };
    match (snapshot, extent) {
        (Some(s), Some((topic, low, high))) => match s.changelog {
            // Records beyond the snapshot's position: top it up from there.
            Some(p) if p.topic == topic && high > low && p.next < high => RestorePlan::SnapshotTopUp { from: p.next },
            // Nothing beyond it, or a position in no changelog (or another one): as it is.
            _ => RestorePlan::Snapshot,
        },
        (Some(_), None) => RestorePlan::Snapshot,
        (None, Some((_, low, high))) if high > low => RestorePlan::Changelog,
        (None, _) => RestorePlan::Replay,
    }
}

impl RestorePlan {
    /// What the restored state came from, once executed: a changelog read that found no
    /// checkpoint record added nothing.
    pub fn source(self, checkpoints_read: u64) -> RestoreSource {
        match (self, checkpoints_read > 0) {
            (RestorePlan::Empty, _) => RestoreSource::Empty,
            (RestorePlan::Replay, _) | (RestorePlan::Changelog, false) => RestoreSource::Replay,
            (RestorePlan::Snapshot, _) | (RestorePlan::SnapshotTopUp { .. }, false) => RestoreSource::Snapshot,
            (RestorePlan::SnapshotTopUp { .. }, true) => RestoreSource::SnapshotAndChangelog,
            (RestorePlan::Changelog, true) => RestoreSource::Changelog,
        }
    }
}

/// A shard's state as restored, and where its inputs continue.
pub struct Restored {
    pub engine: Engine,
    /// Next offset per input topic (missing = from the beginning).
    pub positions: BTreeMap<String, i64>,
    pub seq: u64,
    /// Where the state came from.
    pub source: RestoreSource,
    /// Ids a crashed checkpoint wrote to the changelog for prospects this state does not hold.
    pub tombstones: Vec<String>,
    /// Prospects whose changelog records are ahead of this state: rewrite them next time.
    pub rewrite: Vec<String>,
    /// Where the restored checkpoint ends in the changelog (`None`: unknown, or no changelog).
    pub changelog: Option<ChangelogPosition>,
    /// Whether the state is the snapshot store's chain as it is (the next delta can follow it);
    /// otherwise a base of it must be written first.
    pub chained: bool,
}

impl Restored {
    fn fresh(journey: &Arc<Journey>, source: RestoreSource) -> Restored {
        Restored {
            engine: Engine::new(Arc::clone(journey)),
            positions: BTreeMap::new(),
            seq: 0,
            source,
            tombstones: Vec::new(),
            rewrite: Vec::new(),
            changelog: None,
            chained: false,
        }
    }
}

/// What restoring needs.
pub struct RestoreEnv<'a> {
    /// Whether checkpoints are persisted at all (`checkpoint.persists()`).
    pub persists: bool,
    pub journey: &'a Arc<Journey>,
    pub store: Option<&'a dyn SnapshotStore>,
    pub changelog: Option<&'a dyn Changelog>,
    pub metrics: &'a Metrics,
}

/// A snapshot loaded from the store.
struct Loaded {
    engine: Engine,
    positions: BTreeMap<String, i64>,
    seq: u64,
    changelog: Option<ChangelogPosition>,
}

/// Restores a shard: reads the facts (loads the newest usable snapshot, opens the changelog and
/// reads its extent), asks [`plan`], and executes the plan. A changelog that fails while being
/// read falls back to the snapshot as it is (loaded again), or to a replay.
pub fn restore(shard: i32, env: &RestoreEnv<'_>) -> Restored {
    let loaded = env.store.and_then(|store| load_snapshot(shard, store, env));
    let mut reader: Option<Box<dyn ChangelogReader + '_>> = None;
    let changelog = match env.changelog {
        None => ChangelogFacts::Off,
        Some(c) => match c.open(shard) {
            Ok(r) => {
                let (low, high) = r.extent();
                reader = Some(r);
                ChangelogFacts::Extent { topic: c.topic(), low, high }
            }
            Err(e) => {
                tracing::error!(shard, error = %e, "changelog unreadable; using the local snapshot or replaying");
                ChangelogFacts::Unreadable
            }
        },
    };
    let end = match changelog {
        ChangelogFacts::Extent { high, .. } => high,
        ChangelogFacts::Off | ChangelogFacts::Unreadable => 0,
    };
    let snapshot = loaded.as_ref().map(|l| SnapshotFacts { changelog: l.changelog.as_ref() });
    let decided = plan(env.persists, snapshot, changelog);
    tracing::debug!(shard, plan = ?decided, "restore planned");
    let from = match decided {
        RestorePlan::Empty => return Restored::fresh(env.journey, decided.source(0)),
        RestorePlan::Replay => {
            // Nothing in the changelog (or nothing readable): the fresh state covers what it
            // holds, so a snapshot of this state, later, is topped up from its end (another
            // instance may write checkpoints there meanwhile), not taken as it is.
            let mut fresh = Restored::fresh(env.journey, decided.source(0));
            if let (ChangelogFacts::Extent { topic, high, .. }, Some(_)) = (changelog, &reader) {
                fresh.changelog = Some(ChangelogPosition { topic: topic.to_string(), next: high });
            }
            return fresh;
        }
        RestorePlan::Snapshot => return as_it_is(loaded, env),
        RestorePlan::SnapshotTopUp { from } => Some(from),
        RestorePlan::Changelog => None,
    };
    let Some(mut reader) = reader else { return as_it_is(loaded, env) };
    let had_snapshot = loaded.is_some();
    let snapshot_position = loaded.as_ref().and_then(|l| l.changelog.clone());
    let mut fold = match loaded {
        Some(Loaded { engine, positions, seq, .. }) => Fold::new(engine, positions, seq),
        None => Fold::empty(env.journey),
    };
    let read = reader.read(from, &mut |offset, key, value| fold.push(shard, offset, key, value));
    if let Err(e) = read {
        // The fold may hold part of the log: start again from the snapshot alone.
        tracing::error!(shard, error = %e, "changelog unreadable; using the local snapshot or replaying");
        let again = env.store.and_then(|store| load_snapshot(shard, store, env));
        if again.is_none() && had_snapshot {
            tracing::error!(shard, "state lost; replaying the inputs from the beginning");
        }
        return as_it_is(again, env);
    }
    let Folded { engine, positions, seq, tombstones, rewrite, stats, next } = fold.finish();
    let chained = had_snapshot && stats.checkpoints == 0;
    let changelog = match (next, env.changelog) {
        (Some(next), Some(c)) => Some(ChangelogPosition { topic: c.topic().to_string(), next }),
        // No checkpoint record read from the start of the partition: the state covers what
        // the read saw (its unfinished records are settled by the next checkpoint).
        (None, Some(c)) if !had_snapshot => Some(ChangelogPosition { topic: c.topic().to_string(), next: end }),
        _ => snapshot_position,
    };
    env.metrics.restore_records.with_label_values(&["changelog"]).inc_by(stats.records);
    env.metrics.restore_bytes.with_label_values(&["changelog"]).inc_by(stats.bytes);
    let source = decided.source(stats.checkpoints);
    tracing::info!(
        shard,
        source = source.as_str(),
        checkpoints = stats.checkpoints,
        records = stats.records,
        seq,
        unfinished = tombstones.len() + rewrite.len(),
        "changelog read"
    );
    Restored { engine, positions, seq, source, tombstones, rewrite, changelog, chained }
}

/// The loaded snapshot as it is, or nothing (replay).
fn as_it_is(loaded: Option<Loaded>, env: &RestoreEnv<'_>) -> Restored {
    match loaded {
        Some(Loaded { engine, positions, seq, changelog }) => Restored {
            engine,
            positions,
            seq,
            source: RestoreSource::Snapshot,
            tombstones: Vec::new(),
            rewrite: Vec::new(),
            changelog,
            chained: true,
        },
        None => Restored::fresh(env.journey, RestoreSource::Replay),
    }
}

/// The newest snapshot chain (a base and its deltas) that passes every check and decodes
/// (rejected files are logged and the previous chain tried).
fn load_snapshot(shard: i32, store: &dyn SnapshotStore, env: &RestoreEnv<'_>) -> Option<Loaded> {
    let (latest, rejected) = store.latest(shard);
    for e in &rejected {
        tracing::error!(shard, error = %e, "snapshot unusable; trying the previous one");
    }
    let c = latest?;
    match c.engine(Arc::clone(env.journey)) {
        Ok(engine) => {
            env.metrics.restore_records.with_label_values(&["snapshot"]).inc_by(engine.len() as u64);
            env.metrics.restore_bytes.with_label_values(&["snapshot"]).inc_by(c.bytes());
            let h = c.header();
            tracing::info!(shard, seq = h.seq, prospects = engine.len(), deltas = c.deltas.len(), file = %c.path().display(), "snapshot loaded");
            Some(Loaded { engine, positions: h.positions.clone(), seq: h.seq, changelog: h.changelog.clone() })
        }
        Err(e) => {
            tracing::error!(shard, error = %e, "snapshot unusable");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOPIC: &str = "microfunnel-changelog";

    fn at(topic: &str, next: i64) -> ChangelogPosition {
        ChangelogPosition { topic: topic.to_string(), next }
    }

    fn extent(low: i64, high: i64) -> ChangelogFacts<'static> {
        ChangelogFacts::Extent { topic: TOPIC, low, high }
    }

    fn snapshot(position: Option<&ChangelogPosition>) -> Option<SnapshotFacts<'_>> {
        Some(SnapshotFacts { changelog: position })
    }

    #[test]
    fn a_snapshot_is_preferred_and_topped_up_from_its_position() {
        let p = at(TOPIC, 40);
        assert_eq!(plan(true, snapshot(Some(&p)), extent(0, 100)), RestorePlan::SnapshotTopUp { from: 40 });
        // Compaction removed the start of the partition: still from the snapshot's position.
        assert_eq!(plan(true, snapshot(Some(&p)), extent(30, 100)), RestorePlan::SnapshotTopUp { from: 40 });
        assert_eq!(plan(true, snapshot(Some(&p)), extent(0, 41)), RestorePlan::SnapshotTopUp { from: 40 });
    }

    #[test]
    fn a_snapshot_with_nothing_after_its_position_is_used_as_it_is() {
        let p = at(TOPIC, 100);
        assert_eq!(plan(true, snapshot(Some(&p)), extent(0, 100)), RestorePlan::Snapshot);
        assert_eq!(plan(true, snapshot(Some(&p)), extent(0, 90)), RestorePlan::Snapshot);
        assert_eq!(plan(true, snapshot(Some(&p)), extent(5, 5)), RestorePlan::Snapshot);
    }

    #[test]
    fn a_snapshot_without_a_changelog_position_is_used_as_it_is() {
        // Written with the changelog off: never topped up, never replaced by the changelog.
        assert_eq!(plan(true, snapshot(None), extent(0, 100)), RestorePlan::Snapshot);
        // A position in another changelog topic says nothing about this one.
        let other = at("another-changelog", 10);
        assert_eq!(plan(true, snapshot(Some(&other)), extent(0, 100)), RestorePlan::Snapshot);
    }

    #[test]
    fn a_snapshot_is_used_as_it_is_when_the_changelog_cannot_be_read() {
        let p = at(TOPIC, 40);
        assert_eq!(plan(true, snapshot(Some(&p)), ChangelogFacts::Unreadable), RestorePlan::Snapshot);
    }

    #[test]
    fn the_changelog_alone_when_there_is_no_usable_snapshot() {
        assert_eq!(plan(true, None, extent(0, 100)), RestorePlan::Changelog);
        assert_eq!(plan(true, None, extent(60, 100)), RestorePlan::Changelog);
    }

    #[test]
    fn replay_when_neither_store_has_anything() {
        assert_eq!(plan(true, None, extent(0, 0)), RestorePlan::Replay);
        assert_eq!(plan(true, None, extent(100, 100)), RestorePlan::Replay);
        assert_eq!(plan(true, None, ChangelogFacts::Unreadable), RestorePlan::Replay);
    }

    #[test]
    fn with_the_changelog_off_the_snapshot_or_replay() {
        let p = at(TOPIC, 40);
        assert_eq!(plan(true, snapshot(Some(&p)), ChangelogFacts::Off), RestorePlan::Snapshot);
        assert_eq!(plan(true, snapshot(None), ChangelogFacts::Off), RestorePlan::Snapshot);
        assert_eq!(plan(true, None, ChangelogFacts::Off), RestorePlan::Replay);
    }

    #[test]
    fn nothing_persisted_starts_empty() {
        assert_eq!(plan(false, None, ChangelogFacts::Off), RestorePlan::Empty);
    }

    #[test]
    fn the_source_says_what_the_executed_plan_found() {
        use RestoreSource as S;
        let top_up = RestorePlan::SnapshotTopUp { from: 7 };
        assert_eq!(top_up.source(2), S::SnapshotAndChangelog);
        assert_eq!(top_up.source(0), S::Snapshot, "records without a checkpoint record add nothing");
        assert_eq!(RestorePlan::Changelog.source(1), S::Changelog);
        assert_eq!(RestorePlan::Changelog.source(0), S::Replay);
        assert_eq!(RestorePlan::Snapshot.source(0), S::Snapshot);
        assert_eq!(RestorePlan::Replay.source(0), S::Replay);
        assert_eq!(RestorePlan::Empty.source(0), S::Empty);
    }
}
