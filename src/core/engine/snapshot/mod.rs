//! The snapshot data model: a shard's engine state as bytes and back, pure.
//!
//! Two granularities share one prospect record layout:
//! - the **shard meta** (watermark, stats, funnel aggregates, journey shape), and
//! - one **prospect record** per prospect (fixed state, stage entry times, counts per signal,
//!   look-back marks, email).
//!
//! A full state is `meta, count, (id, record) * count`. Every integer is little-endian; the
//! layout is versioned by [`STATE_VERSION`] (written first in the meta) and never changes within
//! a version. Timers are not stored: they are rebuilt from each prospect's `ghost_due` /
//! `stall_due`.
//!
//! Two record layouts:
//! - **layout 1** ([`Engine::encode_prospect`]): every field at a fixed size. Full states of
//!   version 1 use it, and so does the changelog, record by record, in every version (a
//!   compacted changelog keeps records written by older builds next to newer ones, so its
//!   record layout never changes).
//! - **layout 2** (full states of versions 2 and 3): compact. A presence mask says
//!   which times, score, recent event ids and email are set, and one bitmap per per-journey
//!   array (stage entry times, counts per signal, look-back marks) says which entries are not
//!   empty; only those are written. A typical prospect takes about half the bytes of layout 1,
//!   which halves the time to write and fsync a snapshot.

use std::sync::Arc;

use super::{Engine, Stats};
use crate::core::funnel::{Funnel, Histogram, TIME_BUCKETS_SECS};
use crate::core::ids;
use crate::core::journey::Journey;
use crate::core::time::Ts;

mod breakdown;
mod parts;
mod record;
mod retention;
mod rewrite;
mod sections;
mod shown;
mod wire;

pub use parts::Parts;
pub use record::ProspectRecord;
pub use rewrite::{StateProspects, StateWriter};
use wire::len_prefixed;
pub use wire::{Dec, Enc, StateError};

/// Version of the state layout below (the file format adds its own header around it).
pub const STATE_VERSION: u32 = 7;

/// The state versions this build reads.
pub const STATE_VERSIONS: std::ops::RangeInclusive<u32> = 1..=STATE_VERSION;

/// A fingerprint of the journey's shape (stage, signal and look-back names in order): state
/// written under one journey is usable under another with the same fingerprint (weights,
/// windows and texts may differ).
pub fn journey_fingerprint(journey: &Journey) -> u64 {
    let mut buf = Vec::with_capacity(512);
    for s in &journey.stages {
        buf.extend_from_slice(s.name.as_bytes());
        buf.push(0);
    }
    buf.push(1);
    for s in &journey.signals {
        buf.extend_from_slice(s.name.as_bytes());
        buf.push(0);
        buf.push(s.tracked_slot.map_or(0xff, |t| t));
    }
    ids::hash64(ids::SEED_DIGEST ^ 0x0053_4841_5045, &buf)
}

impl Engine {
    /// Writes the shard-level part of the state: journey shape, watermark, stats, funnel.
    pub fn encode_meta(&self, out: &mut Vec<u8>) {
        self.encode_meta_version(out, STATE_VERSION);
    }

    /// The meta as state `version` has it (older versions lack the fields added since).
    fn encode_meta_version(&self, out: &mut Vec<u8>, version: u32) {
        let j = self.journey();
        let mut w = Enc(out);
        w.u32(version);
        w.u64(journey_fingerprint(j));
        w.bytes(j.name.as_bytes());
        w.u16(j.stages.len() as u16);
        w.u16(j.signals.len() as u16);
        w.u16(j.tracked as u16);
        w.ts(self.watermark());
        w.ts(self.max_event_time());
        let s = self.stats();
        for v in [
            s.events,
            s.applied,
            s.duplicates,
            s.late,
            s.unmapped,
            s.rejected,
            s.stage_changes,
            s.hot_leads,
            s.alerts_suppressed,
            s.ghosted,
            s.stalled,
        ] {
            w.u64(v);
        }
        if version >= 3 {
            for v in [s.ahead, s.duplicate_conflicts, s.reopened, s.ignored] {
                w.u64(v);
            }
            let (leap, leap_from) = self.leap;
            w.ts(leap);
            w.u64(leap_from);
        }
        let f = self.funnel();
        for v in [&f.in_stage, &f.reached, &f.transitions, &f.ghosted, &f.stalled, &f.terminated_from] {
            v.iter().for_each(|&x| w.u64(x));
        }
        for h in &f.time_in_stage {
            h.buckets.iter().for_each(|&x| w.u64(x));
            w.f64(h.sum_secs);
            w.u64(h.count);
        }
        for so in &f.signal_outcomes {
            w.u64(so[0]);
            w.u64(so[1]);
        }
        w.u64(f.outcomes[0]);
        w.u64(f.outcomes[1]);
        if version >= 4 {
            // Decoded in this order: the insight counters, retention, then the breakdown tables.
            encode_insight(f, &mut *w.0);
            self.encode_retention(&mut *w.0);
            self.encode_breakdown_meta(&mut w);
        }
        if version >= 5 {
            shown::encode_signal_times(f, &mut *w.0);
        }
        if version >= 6 {
            self.encode_kept_handoffs(&mut *w.0);
        }
    }

    /// Replaces the shard-level part of the state with what [`Engine::encode_meta`] wrote;
    /// returns the state version it was written with (the meta itself is the same in all).
    pub fn decode_meta(&mut self, r: &mut Dec<'_>) -> Result<u32, StateError> {
        let at = r.position();
        let version = r.u32("state version")?;
        if !STATE_VERSIONS.contains(&version) {
            return Err(StateError::Invalid { what: "state version", at });
        }
        let fp = r.u64("journey fingerprint")?;
        let name = r.str("journey name")?.to_string();
        let j = Arc::clone(self.journey());
        let expected_fp = journey_fingerprint(&j);
        let shape = (r.u16("stage count")?, r.u16("signal count")?, r.u16("tracked count")?);
        if fp != expected_fp || shape != (j.stages.len() as u16, j.signals.len() as u16, j.tracked as u16) {
            return Err(StateError::Journey { found: name, found_fp: fp, expected: j.name.clone(), expected_fp });
        }
        let watermark = r.ts("watermark")?;
        let max_event = r.ts("max event time")?;
        let mut st = [0u64; 15];
        for v in &mut st[..11] {
            *v = r.u64("stats")?;
        }
        let mut leap = (Ts::NONE, 0);
        if version >= 3 {
            for v in &mut st[11..] {
                *v = r.u64("stats")?;
            }
            leap = (r.ts("leap")?, r.u64("leap")?);
        }
        let mut funnel = Funnel::new(&j);
        for v in [
            &mut funnel.in_stage,
            &mut funnel.reached,
            &mut funnel.transitions,
            &mut funnel.ghosted,
            &mut funnel.stalled,
            &mut funnel.terminated_from,
        ] {
            for x in v.iter_mut() {
                *x = r.u64("funnel")?;
            }
        }
        for h in &mut funnel.time_in_stage {
            let mut b = [0u64; TIME_BUCKETS_SECS.len() + 1];
            for x in &mut b {
                *x = r.u64("time in stage")?;
            }
            *h = Histogram { buckets: b, sum_secs: r.f64("time in stage")?, count: r.u64("time in stage")? };
        }
        for so in &mut funnel.signal_outcomes {
            *so = [r.u64("signal outcomes")?, r.u64("signal outcomes")?];
        }
        funnel.outcomes = [r.u64("outcomes")?, r.u64("outcomes")?];
        if version >= 4 {
            decode_insight(r, &mut funnel)?;
        }
        let (expired, evicted, kept) =
            if version >= 4 { self.decode_retention(r)? } else { (0, 0, Default::default()) };
        let stats = Stats {
            events: st[0],
            applied: st[1],
            duplicates: st[2],
            late: st[3],
            unmapped: st[4],
            ignored: st[14],
            rejected: st[5],
            stage_changes: st[6],
            hot_leads: st[7],
            alerts_suppressed: st[8],
            ghosted: st[9],
            stalled: st[10],
            ahead: st[11],
            duplicate_conflicts: st[12],
            reopened: st[13],
            expired,
            evicted,
        };
        self.kept_cooldowns = kept;
        self.watermark = watermark;
        self.max_event_ts = max_event;
        self.leap = leap;
        self.stats = stats;
        self.funnel = funnel;
        if version >= 4 {
            self.decode_breakdown_meta(r)?;
        }
        if version >= 5 {
            shown::decode_signal_times(r, &mut self.funnel)?;
        }
        self.kept_handoffs = if version >= 6 { Engine::decode_kept_handoffs(r)? } else { Default::default() };
        Ok(version)
    }

    /// The whole state in the current version: meta, then every prospect with its id
    /// (record layout 2).
    pub fn encode_state(&self, out: &mut Vec<u8>) {
        self.encode_state_digest(out, false);
    }

    /// [`Engine::encode_state`], and with `digest` also [`Engine::digest`] computed in the
    /// same pass over the prospects (a snapshot needs both; one pass reads the state once).
    pub fn encode_state_digest(&self, out: &mut Vec<u8>, digest: bool) -> u64 {
        let j = self.journey();
        // An upper bound (a typical record takes half of it): growing a body of gigabytes by
        // doubling would copy it; pages reserved but never written cost nothing.
        out.reserve(64 + self.len() * (64 + 4 * j.stages.len() + 2 * j.signals.len() + 8 * j.tracked));
        self.encode_meta(out);
        Enc(out).u32(self.len() as u32);
        let (mut sum, mut buf) = (0u64, Vec::with_capacity(256));
        for (ix, id) in self.iter_ids() {
            len_prefixed(out, id.as_bytes());
            self.encode_compact(ix, out);
            if digest {
                sum = sum.wrapping_add(self.prospect_digest_with(ix, &mut buf));
            }
        }
        self.encode_sections(out);
        sum
    }

    /// The whole state in layout 1 (the format of version-1 files), for tests and tools.
    pub fn encode_state_v1(&self, out: &mut Vec<u8>) {
        self.encode_meta_version(out, 1);
        Enc(out).u32(self.len() as u32);
        for (ix, id) in self.iter_ids() {
            Enc(out).bytes(id.as_bytes());
            self.encode_prospect(ix, out);
        }
    }

    /// Rebuilds an engine from a full state of any supported version; nothing is marked
    /// changed.
    pub fn decode_state(journey: Arc<Journey>, bytes: &[u8]) -> Result<Engine, StateError> {
        let mut engine = Engine::new(journey);
        let mut r = Dec::new(bytes);
        let version = engine.decode_meta(&mut r)?;
        let n = r.u32("prospect count")?;
        // A count the bytes cannot hold is damage, not a reason to reserve gigabytes.
        if n as usize > bytes.len() / 8 {
            return Err(StateError::Invalid { what: "prospect count", at: r.position() - 4 });
        }
        engine.reserve(n as usize);
        let mut rec = ProspectRecord::empty();
        for _ in 0..n {
            let at = r.position();
            let id = if version == 1 {
                let id = r.str("prospect id")?;
                rec = engine.decode_prospect(&mut r)?;
                id
            } else {
                let id = r.len_prefixed_str("prospect id")?;
                engine.decode_compact(&mut r, &mut rec, version)?;
                id
            };
            engine.restore_prospect(id, &rec).map_err(|_| StateError::Invalid { what: "prospect id", at })?;
        }
        engine.decode_sections(&mut r, version)?;
        if !r.is_empty() {
            return Err(StateError::Invalid { what: "trailing bytes", at: r.position() });
        }
        engine.finish_restore();
        Ok(engine)
    }
}

/// The insight counters of the funnel (state version 4): each table as a u32 count of u64s then
/// the u64s (histograms: 11 buckets, sum f64, count), so that a journey whose hot rules, score
/// bands, signals or stages changed in number restores with that table restarted at zero
/// rather than refused.
fn encode_insight(f: &Funnel, out: &mut Vec<u8>) {
    let mut w = Enc(out);
    let flat = |w: &mut Enc<'_>, v: &mut dyn Iterator<Item = u64>, n: usize| {
        w.u32(n as u32);
        v.for_each(|x| w.u64(x));
    };
    flat(&mut w, &mut f.rule_outcomes.iter().flatten().copied(), f.rule_outcomes.len() * 3);
    w.u32(f.rule_lead.len() as u32);
    for h in &f.rule_lead {
        h.buckets.iter().for_each(|&x| w.u64(x));
        w.f64(h.sum_secs);
        w.u64(h.count);
    }
    flat(&mut w, &mut f.band_outcomes.iter().flatten().copied(), f.band_outcomes.len() * 2);
    flat(&mut w, &mut f.signal_shown.iter().copied(), f.signal_shown.len());
    flat(&mut w, &mut f.signal_reached.iter().copied(), f.signal_reached.len());
    flat(&mut w, &mut f.signal_hot.iter().copied(), f.signal_hot.len());
    flat(&mut w, &mut f.signal_after_hot.iter().copied(), f.signal_after_hot.len());
    flat(&mut w, &mut f.signal_silences.iter().copied(), f.signal_silences.len());
    w.u64(f.hot_prospects);
}

fn decode_insight(r: &mut Dec<'_>, f: &mut Funnel) -> Result<(), StateError> {
    // A table of another length than this journey's is read and dropped.
    fn table(r: &mut Dec<'_>, into: &mut [u64], what: &'static str) -> Result<(), StateError> {
        let at = r.position();
        let n = r.u32(what)? as usize;
        if n > r.remaining() / 8 {
            return Err(StateError::Invalid { what, at });
        }
        let v = (0..n).map(|_| r.u64(what)).collect::<Result<Vec<_>, _>>()?;
        if n == into.len() {
            into.copy_from_slice(&v);
        }
        Ok(())
    }
    let mut rules = vec![0u64; f.rule_outcomes.len() * 3];
    table(r, &mut rules, "rule outcomes")?;
    for (row, c) in f.rule_outcomes.iter_mut().zip(rules.chunks(3)) {
        row.copy_from_slice(c);
    }
    let at = r.position();
    let n = r.u32("rule lead times")? as usize;
    if n > r.remaining() / ((TIME_BUCKETS_SECS.len() + 3) * 8) {
        return Err(StateError::Invalid { what: "rule lead times", at });
    }
    let mut leads = Vec::with_capacity(n);
    for _ in 0..n {
        let mut b = [0u64; TIME_BUCKETS_SECS.len() + 1];
        for x in &mut b {
            *x = r.u64("rule lead times")?;
        }
        leads.push(Histogram { buckets: b, sum_secs: r.f64("rule lead times")?, count: r.u64("rule lead times")? });
    }
    if n == f.rule_lead.len() {
        f.rule_lead = leads;
    }
    let mut bands = vec![0u64; f.band_outcomes.len() * 2];
    table(r, &mut bands, "score band outcomes")?;
    for (row, c) in f.band_outcomes.iter_mut().zip(bands.chunks(2)) {
        row.copy_from_slice(c);
    }
    table(r, &mut f.signal_shown, "signals shown")?;
    table(r, &mut f.signal_reached, "signals before stages")?;
    table(r, &mut f.signal_hot, "signals before hot")?;
    table(r, &mut f.signal_after_hot, "signals after hot")?;
    table(r, &mut f.signal_silences, "silences after signals")?;
    f.hot_prospects = r.u64("hot prospects")?;
    Ok(())
}
