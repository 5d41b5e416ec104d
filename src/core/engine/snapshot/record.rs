//! One prospect's record, both layouts (module docs of [`super`]): layout 1 for the changelog
//! and state version 1, the compact layout 2 for full states since version 2, and the extras.

use super::parts::Parts;
use super::wire::{Dec, Enc, StateError, len_prefixed, sparse, unsparse};
use crate::core::engine::{Engine, Extras};
use crate::core::ids::ProspectIx;
use crate::core::journey::StageId;
use crate::core::prospect::{NO_SIGNAL, Prospect, RECENT_IDS};
use crate::core::time::Ts;

const NO_EMAIL: u32 = u32::MAX;

/// Bits of layout 2's extension byte (presence mask bit 15, state version 4), each saying what
/// follows it, in bit order: the prospect's last signal (u16).
const EXT_LAST_SIGNAL: u8 = 1;
/// Extension bit 1 (state version 5): the prospect's first-shown times
/// ([`super::shown::encode_shown`]).
const EXT_SHOWN: u8 = 1 << 1;
/// Extension bit 2 (state version 6): the prospect's `more_flags` byte (its bits:
/// [`MORE_FLAGS_KNOWN`]).
const EXT_MORE_FLAGS: u8 = 1 << 2;
/// The extension bits this build reads, by state version.
fn ext_known(version: u32) -> u8 {
    match version {
        ..=4 => EXT_LAST_SIGNAL,
        5 => EXT_LAST_SIGNAL | EXT_SHOWN,
        _ => EXT_LAST_SIGNAL | EXT_SHOWN | EXT_MORE_FLAGS | EXT_HANDOFF,
    }
}

/// The bits of `Prospect::more_flags` this build knows (a record with others is refused).
const MORE_FLAGS_KNOWN: u8 = crate::core::prospect::ANONYMOUS;
/// Changelog trailer tag of a prospect's `more_flags` byte (state version 6).
const RECORD_TAG_MORE_FLAGS: u8 = 6;
/// Extension bit 3 (state version 6, set only by builds that resolve identities across
/// partitions with transfer generations): the prospect's `handoff` (u16), set only when not 0.
const EXT_HANDOFF: u8 = 1 << 3;
/// Changelog trailer tag of a prospect's `handoff` (u16, only when not 0; state version 6).
const HANDOFF_TAG: u8 = 7;

/// One prospect's whole state, decoded and checked against the journey, ready to install.
pub struct ProspectRecord<'a> {
    pub fixed: Prospect,
    pub stage_times: Vec<u32>,
    pub counts: Vec<u16>,
    pub marks: Vec<Ts>,
    pub email: Option<&'a str>,
    /// Older event ids and waiting sequence signals (state version 3; empty before).
    pub extras: Extras,
    /// Attributed breakdown values, one per dimension (changelog records since state version
    /// 4; empty: none).
    pub slots: crate::core::breakdown::SlotRecord,
    /// When it first showed each validated signal, packed as `FirstShown` holds them (state
    /// version 5, changelog tag 5; empty: none).
    pub shown: Vec<u64>,
}

impl ProspectRecord<'_> {
    pub(super) fn empty() -> Self {
        ProspectRecord {
            fixed: Prospect::new(StageId(0), Ts::NONE),
            stage_times: Vec::new(),
            counts: Vec::new(),
            marks: Vec::new(),
            email: None,
            extras: Extras::default(),
            slots: Vec::new(),
            shown: Vec::new(),
        }
    }
}

impl Engine {
    /// Writes one prospect's record (without its id).
    pub fn encode_prospect(&self, ix: ProspectIx, out: &mut Vec<u8>) {
        self.with_parts(ix, |p| p.encode_prospect(out));
    }

    /// A changelog record: layout 1 ([`Engine::encode_prospect`]), then, when the prospect has
    /// any, its extras (tag 1: older ids and waiting signals; tag 2, since state version 4:
    /// the hot rules that matched it; records without a tag, from older builds, have none).
    /// The same bytes as [`Parts::encode_changelog_record`] of a capture's copy.
    pub fn encode_changelog_record(&self, ix: ProspectIx, out: &mut Vec<u8>) {
        self.with_parts(ix, |p| p.encode_changelog_record(out));
    }

    /// Reads a record written by [`Engine::encode_changelog_record`] (of any build).
    pub fn decode_changelog_record<'a>(&self, r: &mut Dec<'a>) -> Result<ProspectRecord<'a>, StateError> {
        let mut rec = self.decode_prospect(r)?;
        let mut last = 0;
        while !r.is_empty() {
            let at = r.position();
            let tag = r.u8("extras tag")?;
            // Tags in ascending order, each at most once.
            if tag <= last {
                return Err(StateError::Invalid { what: "extras tag", at });
            }
            last = tag;
            match tag {
                1 => {
                    let alerted = std::mem::take(&mut rec.extras.alerted);
                    rec.extras = decode_extras(r, self.journey().hot_rules.len())?;
                    rec.extras.alerted = alerted;
                }
                2 => rec.extras.alerted = decode_alerted(r, self.journey().hot_rules.len())?,
                3 => rec.fixed.last_signal = self.checked_signal(r)?,
                super::breakdown::RECORD_TAG => {
                    let dims = r.u8("breakdown dimensions")? as usize;
                    rec.slots = super::breakdown::read_slots(r, dims)?;
                }
                super::shown::RECORD_TAG => {
                    super::shown::decode_shown(r, self.journey().signals.len(), &mut rec.shown)?
                }
                RECORD_TAG_MORE_FLAGS => rec.fixed.set_more_flags(checked_more_flags(r)?),
                HANDOFF_TAG => rec.fixed.set_handoff(checked_handoff(r)?),
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
        Ok(ProspectRecord {
            fixed,
            stage_times,
            counts,
            marks,
            email,
            extras: Extras::default(),
            slots: Vec::new(),
            shown: Vec::new(),
        })
    }

    /// One prospect in record layout 2 (see the module docs).
    pub(super) fn encode_compact(&self, ix: ProspectIx, out: &mut Vec<u8>) {
        self.with_parts(ix, |p| p.encode_compact(out));
    }

    /// A prospect's last signal (state version 4), checked against this engine's journey.
    fn checked_signal(&self, r: &mut Dec<'_>) -> Result<u16, StateError> {
        let at = r.position();
        let s = r.u16("last signal")?;
        if s as usize >= self.journey().signals.len() {
            return Err(StateError::Invalid { what: "last signal", at });
        }
        Ok(s)
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
        let free = flags & crate::core::prospect::FREE != 0;
        if stage as usize >= j.stages.len()
            || bad_rule
            || free
            || recent_pos as usize >= RECENT_IDS
            || !score.is_finite()
        {
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
            last_signal: NO_SIGNAL,
            more: 0,
        })
    }

    /// Reads one record of layout 2 into `rec` (reusing its buffers) and checks it against
    /// this engine's journey.
    pub(super) fn decode_compact<'a>(
        &self,
        r: &mut Dec<'a>,
        rec: &mut ProspectRecord<'a>,
        version: u32,
    ) -> Result<(), StateError> {
        let j = self.journey();
        let mask = r.u16("presence mask")?;
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
        if mask & (1 << 14) != 0 {
            rec.extras.alerted = decode_alerted(r, j.hot_rules.len())?;
        }
        if mask & (1 << 15) != 0 {
            let at = r.position();
            let ext = r.u8("extension byte")?;
            if ext == 0 || ext & !ext_known(version) != 0 {
                return Err(StateError::Invalid { what: "extension byte", at });
            }
            if ext & EXT_LAST_SIGNAL != 0 {
                rec.fixed.last_signal = self.checked_signal(r)?;
            }
            if ext & EXT_SHOWN != 0 {
                super::shown::decode_shown(r, j.signals.len(), &mut rec.shown)?;
            } else {
                rec.shown.clear();
            }
            if ext & EXT_MORE_FLAGS != 0 {
                rec.fixed.set_more_flags(checked_more_flags(r)?);
            }
            if ext & EXT_HANDOFF != 0 {
                rec.fixed.set_handoff(checked_handoff(r)?);
            }
        } else {
            rec.shown.clear();
        }
        Ok(())
    }
}

/// A prospect's `more_flags` byte (state version 6): set, and only bits this build knows.
fn checked_more_flags(r: &mut Dec<'_>) -> Result<u8, StateError> {
    let at = r.position();
    let b = r.u8("more flags")?;
    if b == 0 || b & !MORE_FLAGS_KNOWN != 0 {
        return Err(StateError::Invalid { what: "more flags", at });
    }
    Ok(b)
}

/// A prospect's `handoff` (state version 6): at most `prospect::HANDOFF_MAX`.
fn checked_handoff(r: &mut Dec<'_>) -> Result<u16, StateError> {
    let at = r.position();
    let h = r.u16("handoff")?;
    if h > crate::core::prospect::HANDOFF_MAX {
        return Err(StateError::Invalid { what: "handoff", at });
    }
    Ok(h)
}

impl Parts<'_> {
    /// Record layout 1 (without the id).
    pub fn encode_prospect(&self, out: &mut Vec<u8>) {
        let p = self.fixed;
        let mut w = Enc(out);
        w.f64(p.score);
        for t in [p.score_at, p.last_activity, p.stage_entered, p.ghost_due, p.stall_due, p.hot_until, p.last_alert] {
            w.ts(t);
        }
        p.recent.iter().for_each(|&r| w.u64(r));
        for b in [p.stage.0, p.flags, p.hot_rule, p.recent_pos] {
            w.u8(b);
        }
        self.stage_times.iter().for_each(|&v| w.u32(v));
        self.counts.iter().for_each(|&v| w.u16(v));
        self.marks.iter().for_each(|&t| w.ts(t));
        match self.email {
            Some(e) => w.bytes(e.as_bytes()),
            None => w.u32(NO_EMAIL),
        }
    }

    /// Record layout 2 (see the module docs), as a full state holds it (without the id).
    pub fn encode_compact(&self, out: &mut Vec<u8>) {
        let p = self.fixed;
        let times = [p.score_at, p.last_activity, p.stage_entered, p.ghost_due, p.stall_due, p.hot_until, p.last_alert];
        let email = self.email;
        let mut mask = 0u16;
        for (k, t) in times.iter().enumerate() {
            mask |= u16::from(!t.is_none()) << k;
        }
        mask |= u16::from(p.score.to_bits() != 0) << 7;
        for (k, r) in p.recent.iter().enumerate() {
            mask |= u16::from(*r != 0) << (8 + k);
        }
        mask |= u16::from(email.is_some()) << 12;
        let extras = self.extras;
        let (has_extras, has_alerted) =
            extras.map_or((false, false), |x| (!x.seen.is_empty() || !x.waiting.is_empty(), !x.alerted.is_empty()));
        mask |= u16::from(has_extras) << 13;
        mask |= u16::from(has_alerted) << 14;
        // Bit 15: an extension byte follows the record, each of its bits saying what comes after
        // it (state version 4; a record with none of them has no byte).
        let ext = (u8::from(p.last_signal != NO_SIGNAL) * EXT_LAST_SIGNAL)
            | (u8::from(!self.shown.is_empty()) * EXT_SHOWN)
            | (u8::from(p.more_flags() != 0) * EXT_MORE_FLAGS)
            | (u8::from(p.handoff() != 0) * EXT_HANDOFF);
        mask |= u16::from(ext != 0) << 15;
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
        sparse(out, self.stage_times, |&v| v != 0, |out, v| out.extend_from_slice(&v.to_le_bytes()));
        sparse(out, self.counts, |&v| v != 0, |out, v| out.extend_from_slice(&v.to_le_bytes()));
        sparse(out, self.marks, |t| !t.is_none(), |out, t| out.extend_from_slice(&t.0.to_le_bytes()));
        if let Some(e) = email {
            len_prefixed(out, e.as_bytes());
        }
        if let Some(x) = extras {
            if has_extras {
                encode_extras(x, out);
            }
            if has_alerted {
                encode_alerted(&x.alerted, out);
            }
        }
        if ext != 0 {
            out.push(ext);
        }
        if ext & EXT_LAST_SIGNAL != 0 {
            out.extend_from_slice(&p.last_signal.to_le_bytes());
        }
        if ext & EXT_SHOWN != 0 {
            super::shown::encode_shown(self.shown, out);
        }
        if ext & EXT_MORE_FLAGS != 0 {
            out.push(p.more_flags());
        }
        if ext & EXT_HANDOFF != 0 {
            out.extend_from_slice(&p.handoff().to_le_bytes());
        }
    }

    /// A changelog record ([`Engine::encode_changelog_record`]): layout 1, then the tagged
    /// parts the prospect has, tags ascending.
    pub fn encode_changelog_record(&self, out: &mut Vec<u8>) {
        self.encode_prospect(out);
        if let Some(x) = self.extras {
            if !x.seen.is_empty() || !x.waiting.is_empty() {
                out.push(1);
                encode_extras(x, out);
            }
            if !x.alerted.is_empty() {
                out.push(2);
                encode_alerted(&x.alerted, out);
            }
        }
        let last_signal = self.fixed.last_signal;
        if last_signal != NO_SIGNAL {
            out.push(3);
            out.extend_from_slice(&last_signal.to_le_bytes());
        }
        if !self.slots.is_empty() {
            let mut w = Enc(out);
            w.u8(super::breakdown::RECORD_TAG);
            w.u8(self.slots.len() as u8);
            for s in self.slots {
                w.u16(s.value);
                w.u32(s.at);
            }
        }
        if !self.shown.is_empty() {
            out.push(super::shown::RECORD_TAG);
            super::shown::encode_shown(self.shown, out);
        }
        let more = self.fixed.more_flags();
        if more != 0 {
            out.extend_from_slice(&[RECORD_TAG_MORE_FLAGS, more]);
        }
        let handoff = self.fixed.handoff();
        if handoff != 0 {
            out.push(HANDOFF_TAG);
            out.extend_from_slice(&handoff.to_le_bytes());
        }
    }
}

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

/// The hot rules that matched a prospect (state version 4): count u8, (rule u8, time i64) each,
/// by rule, each rule once.
fn encode_alerted(alerted: &[(u8, Ts)], out: &mut Vec<u8>) {
    let mut w = Enc(out);
    w.u8(alerted.len() as u8);
    for &(r, t) in alerted {
        w.u8(r);
        w.ts(t);
    }
}

fn decode_alerted(r: &mut Dec<'_>, hot_rules: usize) -> Result<Vec<(u8, Ts)>, StateError> {
    let at = r.position();
    let n = r.u8("matched hot rules")? as usize;
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let rule = r.u8("matched hot rules")?;
        let t = r.ts("matched hot rules")?;
        if rule as usize >= hot_rules || v.last().is_some_and(|&(p, _)| p >= rule) || t.is_none() {
            return Err(StateError::Invalid { what: "matched hot rules", at });
        }
        v.push((rule, t));
    }
    Ok(v)
}
