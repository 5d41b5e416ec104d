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

use super::{Engine, Extras, Stats};
use crate::core::funnel::{Funnel, Histogram, TIME_BUCKETS_SECS};
use crate::core::ids::{self, ProspectIx};
use crate::core::journey::{Journey, StageId};
use crate::core::prospect::{Prospect, RECENT_IDS};
use crate::core::time::Ts;

/// Version of the state layout below (the file format adds its own header around it).
pub const STATE_VERSION: u32 = 3;

/// The state versions this build reads.
pub const STATE_VERSIONS: std::ops::RangeInclusive<u32> = 1..=STATE_VERSION;

const NO_EMAIL: u32 = u32::MAX;

/// Why bytes could not be read back as state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("state ends early: reading {what} at byte {at}")]
    Truncated { what: &'static str, at: usize },
    #[error("invalid {what} at byte {at}")]
    Invalid { what: &'static str, at: usize },
    #[error(
        "state was written for journey `{found}` (fingerprint {found_fp:016x}); the configured journey `{expected}` has fingerprint {expected_fp:016x}; stages and signals differ, so the state cannot be used"
    )]
    Journey { found: String, found_fp: u64, expected: String, expected_fp: u64 },
}

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

/// Appends little-endian values to a buffer.
pub struct Enc<'a>(pub &'a mut Vec<u8>);

impl Enc<'_> {
    pub fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub fn f64(&mut self, v: f64) {
        self.u64(v.to_bits());
    }
    pub fn ts(&mut self, t: Ts) {
        self.i64(t.0);
    }
    pub fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
}

/// Reads what [`Enc`] wrote, failing with the byte position instead of panicking.
pub struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Dec<'a> {
        Dec { buf, pos: 0 }
    }
    pub fn position(&self) -> usize {
        self.pos
    }
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }
    pub fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], StateError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(StateError::Truncated { what, at: self.pos })?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], StateError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }
    pub fn u8(&mut self, what: &'static str) -> Result<u8, StateError> {
        Ok(self.take(1, what)?[0])
    }
    pub fn u16(&mut self, what: &'static str) -> Result<u16, StateError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }
    pub fn u32(&mut self, what: &'static str) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    pub fn u64(&mut self, what: &'static str) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    pub fn i64(&mut self, what: &'static str) -> Result<i64, StateError> {
        Ok(i64::from_le_bytes(self.array(what)?))
    }
    pub fn f64(&mut self, what: &'static str) -> Result<f64, StateError> {
        Ok(f64::from_bits(self.u64(what)?))
    }
    pub fn ts(&mut self, what: &'static str) -> Result<Ts, StateError> {
        Ok(Ts(self.i64(what)?))
    }
    pub fn bytes(&mut self, what: &'static str) -> Result<&'a [u8], StateError> {
        let n = self.u32(what)? as usize;
        self.take(n, what)
    }
    /// A length written by `len_prefixed` (one byte, or 255 then four), then UTF-8 bytes.
    pub fn len_prefixed_str(&mut self, what: &'static str) -> Result<&'a str, StateError> {
        let at = self.pos;
        let n = match self.u8(what)? {
            255 => self.u32(what)? as usize,
            n => n as usize,
        };
        std::str::from_utf8(self.take(n, what)?).map_err(|_| StateError::Invalid { what, at })
    }
    pub fn str(&mut self, what: &'static str) -> Result<&'a str, StateError> {
        let at = self.pos;
        std::str::from_utf8(self.bytes(what)?).map_err(|_| StateError::Invalid { what, at })
    }
}

/// One prospect's whole state, decoded and checked against the journey, ready to install.
pub struct ProspectRecord<'a> {
    pub fixed: Prospect,
    pub stage_times: Vec<u32>,
    pub counts: Vec<u16>,
    pub marks: Vec<Ts>,
    pub email: Option<&'a str>,
    /// Older event ids and waiting sequence signals (state version 3; empty before).
    pub extras: Extras,
}

impl ProspectRecord<'_> {
    fn empty() -> Self {
        ProspectRecord {
            fixed: Prospect::new(StageId(0), Ts::NONE),
            stage_times: Vec::new(),
            counts: Vec::new(),
            marks: Vec::new(),
            email: None,
            extras: Extras::default(),
        }
    }
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
        };
        self.watermark = watermark;
        self.max_event_ts = max_event;
        self.leap = leap;
        self.stats = stats;
        self.funnel = funnel;
        Ok(version)
    }

    /// Writes one prospect's record (without its id).
    pub fn encode_prospect(&self, ix: ProspectIx, out: &mut Vec<u8>) {
        let (p, stage_times, counts, marks) = self.prospect_parts(ix);
        let mut w = Enc(out);
        w.f64(p.score);
        for t in [p.score_at, p.last_activity, p.stage_entered, p.ghost_due, p.stall_due, p.hot_until, p.last_alert] {
            w.ts(t);
        }
        p.recent.iter().for_each(|&r| w.u64(r));
        for b in [p.stage.0, p.flags, p.hot_rule, p.recent_pos] {
            w.u8(b);
        }
        stage_times.iter().for_each(|&v| w.u32(v));
        counts.iter().for_each(|&v| w.u16(v));
        marks.iter().for_each(|&t| w.ts(t));
        match self.email(ix) {
            Some(e) => w.bytes(e.as_bytes()),
            None => w.u32(NO_EMAIL),
        }
    }

    /// A changelog record: layout 1 ([`Engine::encode_prospect`]), then, when the prospect has
    /// any, its extras (tag 1; records without a tag, from older builds, have none).
    pub fn encode_changelog_record(&self, ix: ProspectIx, out: &mut Vec<u8>) {
        self.encode_prospect(ix, out);
        if let Some(x) = self.live_extras(ix) {
            out.push(1);
            encode_extras(&x, out);
        }
    }

    /// Reads a record written by [`Engine::encode_changelog_record`] (of any build).
    pub fn decode_changelog_record<'a>(&self, r: &mut Dec<'a>) -> Result<ProspectRecord<'a>, StateError> {
        let mut rec = self.decode_prospect(r)?;
        if !r.is_empty() {
            let at = r.position();
            match r.u8("extras tag")? {
                1 => rec.extras = decode_extras(r, self.journey().hot_rules.len())?,
                _ => return Err(StateError::Invalid { what: "extras tag", at }),
            }
        }
        if !r.is_empty() {
            return Err(StateError::Invalid { what: "trailing bytes", at: r.position() });
        }
        Ok(rec)
    }

    /// Reads one prospect record and checks it against this engine's journey.
    pub fn decode_prospect<'a>(&self, r: &mut Dec<'a>) -> Result<ProspectRecord<'a>, StateError> {
        let j = self.journey();
        let score = r.f64("score")?;
        let mut t = [Ts::NONE; 7];
        for v in &mut t {
            *v = r.ts("prospect times")?;
        }
        let mut recent = [0u64; RECENT_IDS];
        for v in &mut recent {
            *v = r.u64("recent event ids")?;
        }
        let at = r.position();
        let small = [r.u8("stage")?, r.u8("flags")?, r.u8("hot rule")?, r.u8("recent position")?];
        let fixed = self.checked_prospect(score, t, recent, small, at)?;
        let stage_times = (0..j.stages.len()).map(|_| r.u32("stage times")).collect::<Result<_, _>>()?;
        let counts = (0..j.signals.len()).map(|_| r.u16("signal counts")).collect::<Result<_, _>>()?;
        let marks = (0..j.tracked).map(|_| r.ts("marks")).collect::<Result<_, _>>()?;
        let at = r.position();
        let email = match r.u32("email")? {
            NO_EMAIL => None,
            n => {
                let b = r.take(n as usize, "email")?;
                Some(std::str::from_utf8(b).map_err(|_| StateError::Invalid { what: "email", at })?)
            }
        };
        Ok(ProspectRecord { fixed, stage_times, counts, marks, email, extras: Extras::default() })
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

    /// One prospect in record layout 2 (see the module docs).
    fn encode_compact(&self, ix: ProspectIx, out: &mut Vec<u8>) {
        let (p, stage_times, counts, marks) = self.prospect_parts(ix);
        let times = [p.score_at, p.last_activity, p.stage_entered, p.ghost_due, p.stall_due, p.hot_until, p.last_alert];
        let email = self.email(ix);
        let mut mask = 0u16;
        for (k, t) in times.iter().enumerate() {
            mask |= u16::from(!t.is_none()) << k;
        }
        mask |= u16::from(p.score.to_bits() != 0) << 7;
        for (k, r) in p.recent.iter().enumerate() {
            mask |= u16::from(*r != 0) << (8 + k);
        }
        mask |= u16::from(email.is_some()) << 12;
        let extras = self.live_extras(ix);
        mask |= u16::from(extras.is_some()) << 13;
        out.extend_from_slice(&mask.to_le_bytes());
        if mask & (1 << 7) != 0 {
            out.extend_from_slice(&p.score.to_bits().to_le_bytes());
        }
        for t in times.iter().filter(|t| !t.is_none()) {
            out.extend_from_slice(&t.0.to_le_bytes());
        }
        for r in p.recent.iter().filter(|&&r| r != 0) {
            out.extend_from_slice(&r.to_le_bytes());
        }
        out.extend_from_slice(&[p.stage.0, p.flags, p.hot_rule, p.recent_pos]);
        sparse(out, stage_times, |&v| v != 0, |out, v| out.extend_from_slice(&v.to_le_bytes()));
        sparse(out, counts, |&v| v != 0, |out, v| out.extend_from_slice(&v.to_le_bytes()));
        sparse(out, marks, |t| !t.is_none(), |out, t| out.extend_from_slice(&t.0.to_le_bytes()));
        if let Some(e) = email {
            len_prefixed(out, e.as_bytes());
        }
        if let Some(x) = extras {
            encode_extras(&x, out);
        }
    }

    /// A prospect's fixed state from its decoded fields (`t`: the seven times in record order,
    /// `small`: stage, flags, hot rule, recent position), checked against this engine's journey.
    fn checked_prospect(
        &self,
        score: f64,
        t: [Ts; 7],
        recent: [u64; RECENT_IDS],
        [stage, flags, hot_rule, recent_pos]: [u8; 4],
        at: usize,
    ) -> Result<Prospect, StateError> {
        let j = self.journey();
        let bad_rule = hot_rule as usize >= j.hot_rules.len().max(1);
        if stage as usize >= j.stages.len() || bad_rule || recent_pos as usize >= RECENT_IDS || !score.is_finite() {
            return Err(StateError::Invalid { what: "prospect record", at });
        }
        Ok(Prospect {
            score,
            score_at: t[0],
            last_activity: t[1],
            stage_entered: t[2],
            ghost_due: t[3],
            stall_due: t[4],
            hot_until: t[5],
            last_alert: t[6],
            recent,
            stage: StageId(stage),
            flags,
            hot_rule,
            recent_pos,
        })
    }

    /// Reads one record of layout 2 into `rec` (reusing its buffers) and checks it against
    /// this engine's journey.
    fn decode_compact<'a>(&self, r: &mut Dec<'a>, rec: &mut ProspectRecord<'a>) -> Result<(), StateError> {
        let j = self.journey();
        let at = r.position();
        let mask = r.u16("presence mask")?;
        if mask >> 14 != 0 {
            return Err(StateError::Invalid { what: "presence mask", at });
        }
        let score = if mask & (1 << 7) != 0 { r.f64("score")? } else { 0.0 };
        let mut t = [Ts::NONE; 7];
        for (k, v) in t.iter_mut().enumerate() {
            if mask & (1 << k) != 0 {
                *v = r.ts("prospect times")?;
            }
        }
        let mut recent = [0u64; RECENT_IDS];
        for (k, v) in recent.iter_mut().enumerate() {
            if mask & (1 << (8 + k)) != 0 {
                *v = r.u64("recent event ids")?;
            }
        }
        let at = r.position();
        let small = r.array::<4>("stage")?;
        rec.fixed = self.checked_prospect(score, t, recent, small, at)?;
        unsparse(r, &mut rec.stage_times, j.stages.len(), 0, "stage times", |r| r.u32("stage times"))?;
        unsparse(r, &mut rec.counts, j.signals.len(), 0, "signal counts", |r| r.u16("signal counts"))?;
        unsparse(r, &mut rec.marks, j.tracked, Ts::NONE, "marks", |r| r.ts("marks"))?;
        rec.email = if mask & (1 << 12) != 0 { Some(r.len_prefixed_str("email")?) } else { None };
        rec.extras = if mask & (1 << 13) != 0 { decode_extras(r, j.hot_rules.len())? } else { Extras::default() };
        Ok(())
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
                engine.decode_compact(&mut r, &mut rec)?;
                id
            };
            engine.restore_prospect(id, &rec).map_err(|_| StateError::Invalid { what: "prospect id", at })?;
        }
        if !r.is_empty() {
            return Err(StateError::Invalid { what: "trailing bytes", at: r.position() });
        }
        engine.finish_restore();
        Ok(engine)
    }
}

/// A length as one byte, or 255 and four bytes for 255 and more, then the bytes.
/// Extras: count of older ids, (key u64, time i64) each; count of waiting sequence signals,
/// (hot rule u8, time i64, len-prefixed event id) each.
fn encode_extras(x: &Extras, out: &mut Vec<u8>) {
    let mut w = Enc(out);
    w.u32(x.seen.len() as u32);
    for &(k, t) in &x.seen {
        w.u64(k);
        w.ts(t);
    }
    w.u32(x.waiting.len() as u32);
    for (r, t, id) in &x.waiting {
        w.u8(*r);
        w.ts(*t);
        len_prefixed(out, id.as_bytes());
        w = Enc(out);
    }
}

fn decode_extras(r: &mut Dec<'_>, hot_rules: usize) -> Result<Extras, StateError> {
    let mut x = Extras::default();
    let at = r.position();
    let n = r.u32("older event ids")? as usize;
    if n > r.remaining() / 16 {
        return Err(StateError::Invalid { what: "older event ids", at });
    }
    for _ in 0..n {
        x.seen.push((r.u64("older event ids")?, r.ts("older event ids")?));
    }
    let at = r.position();
    let n = r.u32("waiting signals")? as usize;
    if n > r.remaining() / 10 {
        return Err(StateError::Invalid { what: "waiting signals", at });
    }
    for _ in 0..n {
        let at = r.position();
        let rule = r.u8("waiting signals")?;
        if rule as usize >= hot_rules {
            return Err(StateError::Invalid { what: "waiting signals", at });
        }
        x.waiting.push((rule, r.ts("waiting signals")?, r.len_prefixed_str("waiting signals")?.into()));
    }
    Ok(x)
}

fn len_prefixed(out: &mut Vec<u8>, b: &[u8]) {
    if b.len() < 255 {
        out.push(b.len() as u8);
    } else {
        out.push(255);
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    }
    out.extend_from_slice(b);
}

/// A bitmap of which entries are set, then the set entries.
fn sparse<T: Copy>(out: &mut Vec<u8>, v: &[T], set: impl Fn(&T) -> bool, put: impl Fn(&mut Vec<u8>, T)) {
    let at = out.len();
    out.resize(at + v.len().div_ceil(8), 0);
    for (k, x) in v.iter().enumerate() {
        if set(x) {
            out[at + k / 8] |= 1 << (k % 8);
            put(out, *x);
        }
    }
}

/// Reads what [`sparse`] wrote for `n` entries into `dst`, `empty` where unset.
fn unsparse<'a, T: Copy>(
    r: &mut Dec<'a>,
    dst: &mut Vec<T>,
    n: usize,
    empty: T,
    what: &'static str,
    get: impl Fn(&mut Dec<'a>) -> Result<T, StateError>,
) -> Result<(), StateError> {
    let at = r.position();
    let bits = r.take(n.div_ceil(8), what)?;
    if !n.is_multiple_of(8) && bits[n / 8] >> (n % 8) != 0 {
        return Err(StateError::Invalid { what, at });
    }
    dst.clear();
    for k in 0..n {
        dst.push(if bits[k / 8] & (1 << (k % 8)) != 0 { get(r)? } else { empty });
    }
    Ok(())
}
