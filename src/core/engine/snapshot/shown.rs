//! State version 5's first-shown part: per prospect, when it first showed each validated signal
//! (layout 2's extension bit 1, changelog record tag 5), and the funnel's time from a signal to
//! the outcome (at the end of the meta).

use super::wire::{Dec, Enc, StateError};
use crate::core::funnel::{Funnel, Histogram};

/// The changelog record tag of a prospect's first-shown times.
pub(super) const RECORD_TAG: u8 = 5;

/// A prospect's first-shown times: count u16, then (signal u16, seconds since the epoch u32)
/// each, by signal.
pub(super) fn encode_shown(shown: &[u64], out: &mut Vec<u8>) {
    let mut w = Enc(out);
    w.u16(shown.len() as u16);
    for &e in shown {
        w.u16((e >> 32) as u16);
        w.u32(e as u32);
    }
}

/// Reads [`encode_shown`]'s bytes into `into` (packed entries), checked against the journey's
/// signal count: signals ascending, each once.
pub(super) fn decode_shown(r: &mut Dec<'_>, signals: usize, into: &mut Vec<u64>) -> Result<(), StateError> {
    let at = r.position();
    let n = r.u16("first-shown times")? as usize;
    if n == 0 || n > signals || n > r.remaining() / 6 {
        return Err(StateError::Invalid { what: "first-shown times", at });
    }
    into.clear();
    for _ in 0..n {
        let sig = r.u16("first-shown times")?;
        let secs = r.u32("first-shown times")?;
        if sig as usize >= signals || into.last().is_some_and(|&p| (p >> 32) as u16 >= sig) {
            return Err(StateError::Invalid { what: "first-shown times", at });
        }
        into.push((u64::from(sig) << 32) | u64::from(secs));
    }
    Ok(())
}

/// The funnel's times to the outcome (meta, state version 5): per signal from its first showing,
/// then per hot rule from its first match, each a u32 row count and per row the won and the lost
/// histogram; then the milestones' times, a u32 count (signals x stages) and one histogram each.
/// A histogram is `u8` 0 when empty, else `u8` 1, 11 buckets u64, sum f64, count u64 (most are
/// empty: a journey's signals x stages).
pub(super) fn encode_signal_times(f: &Funnel, out: &mut Vec<u8>) {
    let mut w = Enc(out);
    for table in [&f.signal_to_outcome, &f.rule_to_outcome] {
        w.u32(table.len() as u32);
        for h in table.iter().flatten() {
            encode_histogram(&mut w, h);
        }
    }
    w.u32(f.signal_stage_time.len() as u32);
    for h in &f.signal_stage_time {
        encode_histogram(&mut w, h);
    }
}

fn encode_histogram(w: &mut Enc<'_>, h: &Histogram) {
    if *h == Histogram::default() {
        w.u8(0);
        return;
    }
    w.u8(1);
    h.buckets.iter().for_each(|&x| w.u64(x));
    w.f64(h.sum_secs);
    w.u64(h.count);
}

fn decode_histogram(r: &mut Dec<'_>, what: &'static str) -> Result<Histogram, StateError> {
    let at = r.position();
    let mut h = Histogram::default();
    match r.u8(what)? {
        0 => return Ok(h),
        1 => {}
        _ => return Err(StateError::Invalid { what, at }),
    }
    for x in &mut h.buckets {
        *x = r.u64(what)?;
    }
    h.sum_secs = r.f64(what)?;
    h.count = r.u64(what)?;
    Ok(h)
}

/// Reads [`encode_signal_times`]'s bytes; a table of another length than this journey's
/// (signals, hot rules, signals x stages) is read and dropped.
pub(super) fn decode_signal_times(r: &mut Dec<'_>, f: &mut Funnel) -> Result<(), StateError> {
    for (into, what) in
        [(&mut f.signal_to_outcome, "signal to outcome times"), (&mut f.rule_to_outcome, "rule to outcome times")]
    {
        let table = decode_rows(r, 2, what)?;
        if table.len() == into.len() * 2 {
            *into = table.chunks(2).map(|c| [c[0].clone(), c[1].clone()]).collect();
        }
    }
    let table = decode_rows(r, 1, "signal to stage times")?;
    if table.len() == f.signal_stage_time.len() {
        f.signal_stage_time = table;
    }
    Ok(())
}

/// A u32 row count, then `per_row` histograms per row, flattened.
fn decode_rows(r: &mut Dec<'_>, per_row: usize, what: &'static str) -> Result<Vec<Histogram>, StateError> {
    let at = r.position();
    let n = r.u32(what)? as usize;
    // Each histogram takes at least its presence byte.
    if n > r.remaining() / per_row {
        return Err(StateError::Invalid { what, at });
    }
    (0..n * per_row).map(|_| decode_histogram(r, what)).collect()
}
