//! The outbox: identity records (`core::xpart`) a shard produced, held as shard state until
//! the checkpoint that covers the calls that produced them is durable, and only then sent.
//!
//! A shard that sent a `Transfer` (or a `Forward`) and died before its next checkpoint
//! re-executes its inputs from the last one, possibly in another order (the event-time merge
//! of its partitions depends on arrival), and may never decide that record again: the
//! receiver folded state the restored sender still holds. Held here, a record leaves only
//! once the state that decided it is durable, and a restore sends the outbox of the
//! checkpoint it restores again (receivers drop duplicates: transfers by generation, forwards
//! by event id; links and forgets are idempotent).
//!
//! Three parts, in the order the records were produced:
//! - `sent`: the outbox of the last durable (or restored) checkpoint, handed to the producer;
//!   acknowledged by the next barrier's flush, which precedes the next capture, so that
//!   capture drops them;
//! - `sealed`: taken by a capture whose checkpoint is not durable yet (in flight, or failed:
//!   then the next capture carries them again);
//! - `pending`: produced since the last capture.
//!
//! A checkpoint carries `sealed` (after the capture moved `pending` into it) in the changelog
//! as parts that each fit the producer's `message.max.bytes` (the limit transfers keep,
//! [`Engine::limit_transfers`]): the first under [`OUTBOX_KEY`] (tag [`OUTBOX_TAG`] when it is
//! the only one; [`OUTBOX_SPLIT_TAG`] + the number of parts `u32` when more follow), part `n`
//! under `\0outbox/<n>` ([`outbox_part_key`]), tag [`OUTBOX_TAG`]. Each checkpoint that writes
//! the outbox replaces every part and tombstones those the previous one had beyond its own
//! (the first part's tombstone: the outbox is empty); a reader takes the parts the first one
//! counts. A full state carries all three parts as section `O` (`snapshot/sections.rs`),
//! absent when empty: a restore finds what it must send again in either. Bytes of a body:
//! count `u32`, then per record the partition it goes to `u32` and the record's bytes
//! (`XRecord::encode`, `u32` length-prefixed). Not part of any digest: replay sends every
//! record at once.
//!
//! A `Progress` record held for a partition supersedes the one held before it for the same
//! partition that was not sent yet (pending, or sealed by a checkpoint that failed): only the
//! newest stays, at its own place, so it still follows every record queued before it (an ask
//! it drops is kept in the newer one).

use std::collections::HashSet;

use super::Engine;
use super::snapshot::{Dec, Enc, StateError};
use crate::core::xpart::{DEFAULT_MESSAGE_MAX_BYTES, TRANSFER_HEADROOM, XRecord};

/// Key of a shard's outbox record in the changelog (ids refuse control characters); the first
/// part of a split outbox.
pub const OUTBOX_KEY: &[u8] = b"\0outbox";

/// Tag of an outbox record's value: the whole outbox, or a part after the first.
pub const OUTBOX_TAG: u8 = b'O';

/// Tag of the first part of an outbox split in several records: then the number of parts `u32`.
pub const OUTBOX_SPLIT_TAG: u8 = b'S';

/// The changelog key of outbox part `n` (0: [`OUTBOX_KEY`]).
pub fn outbox_part_key(n: usize) -> Vec<u8> {
    let mut key = OUTBOX_KEY.to_vec();
    if n > 0 {
        key.extend_from_slice(format!("/{n}").as_bytes());
    }
    key
}

/// The part number of an outbox key (`None`: not an outbox key).
pub fn outbox_part(key: &[u8]) -> Option<usize> {
    let rest = key.strip_prefix(OUTBOX_KEY)?;
    if rest.is_empty() {
        return Some(0);
    }
    std::str::from_utf8(rest.strip_prefix(b"/")?).ok()?.parse().ok().filter(|&n| n > 0)
}

/// Bytes of an outbox part besides its records' (key, tag, counts), with room to spare for
/// the record batch's framing: a part's records take at most `message.max.bytes` less this.
const PART_HEADROOM: usize = TRANSFER_HEADROOM;

/// The bytes a record takes in an outbox body.
fn body_len(r: &XRecord, scratch: &mut Vec<u8>) -> usize {
    scratch.clear();
    r.encode(scratch);
    8 + scratch.len()
}

/// The last capture's changelog write of the outbox ([`Engine::outbox_sealed`]).
pub struct SealedOutbox<'a> {
    /// The records, in order.
    pub records: &'a [(u32, XRecord)],
    /// Where each part ends in `records` (none: the outbox is empty).
    pub cuts: &'a [usize],
    /// How many part keys the write covers: those past `cuts.len()` get tombstones.
    pub keys: usize,
}

/// A shard's identity records waiting for durability (module docs).
#[derive(Clone, Default)]
pub(super) struct Outbox {
    sent: Vec<(u32, XRecord)>,
    sealed: Vec<(u32, XRecord)>,
    pending: Vec<(u32, XRecord)>,
    /// How many part keys of the changelog may hold records (the next capture that seals fewer
    /// parts tombstones the rest; at least 1 once anything may have been written).
    recorded: usize,
    /// Whether the last capture's checkpoint writes the outbox record (records or tombstone).
    write: bool,
    /// Where each part of `sealed` ends, as the last capture split it.
    cuts: Vec<usize>,
    /// How many part keys the last capture's write covers.
    keys: usize,
    /// The body bytes of `sent` and `sealed`, summed when they last changed (a capture's split,
    /// a restore), so the gauges do not encode them again.
    settled_bytes: usize,
}

/// Keeps only the last `Progress` record for each partition in `records[from..]` (module
/// docs); an ask of a dropped one goes to the one kept.
fn coalesce_progress(records: &mut Vec<(u32, XRecord)>, from: usize) {
    let mut seen: HashSet<u32> = HashSet::new();
    let mut asked: HashSet<u32> = HashSet::new();
    let mut drop = vec![false; records.len() - from];
    for (i, (p, r)) in records[from..].iter_mut().enumerate().rev() {
        if let XRecord::Progress { asking, .. } = r {
            if seen.insert(*p) {
                continue;
            }
            if *asking {
                asked.insert(*p);
            }
            drop[i] = true;
        }
    }
    if seen.is_empty() || !drop.contains(&true) {
        return;
    }
    let mut i = 0;
    records.retain(|_| {
        let keep = i < from || !drop[i - from];
        i += 1;
        keep
    });
    for (p, r) in records[from..].iter_mut() {
        if let XRecord::Progress { asking, .. } = r
            && asked.contains(p)
        {
            *asking = true;
        }
    }
}

impl Engine {
    /// Holds the identity records the last calls produced ([`Engine::take_identity_records`])
    /// until a checkpoint covering them is durable; returns how many.
    pub fn hold_identity_records(&mut self) -> usize {
        let records = self.take_identity_records();
        let n = records.len();
        let progress = records.iter().any(|(_, r)| matches!(r, XRecord::Progress { .. }));
        self.outbox.pending.extend(records);
        if progress {
            coalesce_progress(&mut self.outbox.pending, 0);
        }
        n
    }

    /// A checkpoint's capture, after the barrier's flush (which acknowledged what was sent):
    /// drops the sent records and seals the pending ones with those of checkpoints that
    /// failed, split in parts that each fit `message.max.bytes`; [`Engine::outbox_sealed`] is
    /// then the checkpoint's outbox.
    pub fn seal_outbox(&mut self) {
        let max = self.xpart.as_deref().map_or(0, |x| x.message_max_bytes);
        let budget = if max == 0 { DEFAULT_MESSAGE_MAX_BYTES } else { max }.saturating_sub(PART_HEADROOM);
        let o = &mut self.outbox;
        o.sent.clear();
        let pending = std::mem::take(&mut o.pending);
        let progress = pending.iter().any(|(_, r)| matches!(r, XRecord::Progress { .. }));
        o.sealed.extend(pending);
        if progress {
            coalesce_progress(&mut o.sealed, 0);
        }
        o.cuts.clear();
        let (mut part, mut scratch) = (0, Vec::with_capacity(256));
        o.settled_bytes = 0;
        for (i, (_, r)) in o.sealed.iter().enumerate() {
            let len = body_len(r, &mut scratch);
            o.settled_bytes += len;
            // A part holds at least one record (a record alone fits: transfers are bounded).
            if part > 0 && part + len > budget {
                o.cuts.push(i);
                part = 0;
            }
            part += len;
        }
        if !o.sealed.is_empty() {
            o.cuts.push(o.sealed.len());
        }
        o.write = !o.sealed.is_empty() || o.recorded > 0;
        o.keys = o.cuts.len().max(o.recorded);
        o.recorded = o.cuts.len();
    }

    /// The last capture's outbox: its records and parts, or `None` when its checkpoint writes
    /// no outbox record (the changelog's is already a tombstone or absent).
    pub fn outbox_sealed(&self) -> Option<SealedOutbox<'_>> {
        let o = &self.outbox;
        o.write.then_some(SealedOutbox { records: &o.sealed, cuts: &o.cuts, keys: o.keys })
    }

    /// The checkpoint that sealed the outbox settled: when durable, the sealed records are
    /// the ones to send now (returned); otherwise they stay sealed for the next checkpoint.
    pub fn settle_outbox(&mut self, durable: bool) -> &[(u32, XRecord)] {
        let o = &mut self.outbox;
        o.write = false;
        if !durable {
            // What the changelog holds is unknown: the next checkpoint writes every part again.
            o.recorded = o.recorded.max(o.keys).max(1);
            return &[];
        }
        let sealed = std::mem::take(&mut o.sealed);
        o.sent.extend(sealed);
        &o.sent
    }

    /// Whether the outbox holds any record (a checkpoint is due: to seal it, or to drop what
    /// was sent and acknowledged).
    pub fn outbox_held(&self) -> bool {
        let o = &self.outbox;
        !o.pending.is_empty() || !o.sealed.is_empty() || !o.sent.is_empty()
    }

    /// Every record held: sent (not yet known acknowledged), sealed, pending.
    pub fn outbox(&self) -> impl Iterator<Item = &(u32, XRecord)> {
        let o = &self.outbox;
        o.sent.iter().chain(&o.sealed).chain(&o.pending)
    }

    /// How many records the outbox holds and the bytes they take (as encoded in its body).
    pub fn outbox_size(&self) -> (usize, usize) {
        let o = &self.outbox;
        let mut scratch = Vec::with_capacity(256);
        let pending: usize = o.pending.iter().map(|(_, r)| body_len(r, &mut scratch)).sum();
        (o.sent.len() + o.sealed.len() + o.pending.len(), o.settled_bytes + pending)
    }

    /// The outbox of the checkpoint being restored (its changelog records, or a full state's
    /// section), to be sent again: replaces what is held. `keys`: how many part keys of the
    /// changelog may hold records (a full state does not know: 1). A checkpoint after it writes
    /// the outbox record (records or tombstone).
    pub fn restore_outbox(&mut self, records: Vec<(u32, XRecord)>, keys: usize) {
        let mut scratch = Vec::with_capacity(256);
        let settled_bytes = records.iter().map(|(_, r)| body_len(r, &mut scratch)).sum();
        self.outbox = Outbox { sealed: records, recorded: keys.max(1), settled_bytes, ..Outbox::default() };
    }

    /// An unfinished checkpoint wrote outbox part keys below `keys`: the next one writes them
    /// again.
    pub fn outbox_unfinished(&mut self, keys: usize) {
        self.outbox.recorded = self.outbox.recorded.max(keys).max(1);
    }
}

/// Writes `records` as an outbox body (module docs).
pub fn encode_outbox<'a>(records: impl ExactSizeIterator<Item = &'a (u32, XRecord)>, out: &mut Vec<u8>) {
    Enc(out).u32(records.len() as u32);
    let mut buf = Vec::with_capacity(256);
    for (p, r) in records {
        buf.clear();
        r.encode(&mut buf);
        let mut w = Enc(out);
        w.u32(*p);
        w.bytes(&buf);
    }
}

/// Reads an outbox body.
pub fn decode_outbox(r: &mut Dec<'_>) -> Result<Vec<(u32, XRecord)>, StateError> {
    let at = r.position();
    let n = r.u32("outbox count")? as usize;
    if n > r.remaining() / 8 {
        return Err(StateError::Invalid { what: "outbox count", at });
    }
    let mut records = Vec::with_capacity(n);
    for _ in 0..n {
        let p = r.u32("outbox partition")?;
        records.push((p, XRecord::decode(r.bytes("outbox record")?)?));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::core::journey::Journey;
    use crate::core::snapshot::StateWriter;
    use crate::core::time::Ts;

    fn forget(n: i64) -> (u32, XRecord) {
        (n as u32 % 3, XRecord::Forget { ids: vec![format!("id-{n}"), format!("other-{n}")], ts: Ts(n) })
    }

    /// The gauges' size is every held record's body bytes, whichever step of the cycle
    /// (restored, sealed, sent, failed, pending) the records are at.
    #[test]
    fn the_outbox_size_counts_every_held_record() {
        let text = format!("{}\n[identity]\nresolve = true\n", include_str!("../../../deploy/journeys/b2b.toml"));
        let mut engine = Engine::new(Arc::new(Journey::from_toml_str(&text).unwrap()));
        let encoded = |e: &Engine| {
            let mut scratch = Vec::new();
            let held: Vec<_> = e.outbox().collect();
            (held.len(), held.iter().map(|(_, r)| body_len(r, &mut scratch)).sum::<usize>())
        };
        engine.restore_outbox(vec![forget(1), forget(2)], 1);
        assert_eq!(engine.outbox_size(), encoded(&engine), "restored");
        engine.settle_outbox(true);
        engine.outbox.pending.push(forget(30));
        assert_eq!(engine.outbox_size(), encoded(&engine), "sent and pending");
        engine.seal_outbox();
        engine.outbox.pending.push(forget(400));
        assert_eq!(engine.outbox_size(), encoded(&engine), "sealed and pending");
        engine.settle_outbox(false);
        engine.seal_outbox();
        assert_eq!(engine.outbox_size(), encoded(&engine), "a failed checkpoint's sealed again");
        engine.settle_outbox(true);
        assert_eq!(engine.outbox_size(), encoded(&engine), "sent");
        assert_eq!(engine.outbox_size().0, 2);
    }

    /// A full state carries the outbox as section `O` (sent, sealed and pending records, in
    /// that order), read back as the outbox to send again; a state whose outbox is empty has
    /// no such section; a base rewritten from a shell keeps it.
    #[test]
    fn a_full_state_carries_the_outbox_and_an_empty_one_adds_nothing() {
        let text = format!("{}\n[identity]\nresolve = true\n", include_str!("../../../deploy/journeys/b2b.toml"));
        let journey = Arc::new(Journey::from_toml_str(&text).unwrap());
        let mut engine = Engine::new(Arc::clone(&journey));
        let mut empty = Vec::new();
        engine.encode_state(&mut empty);
        engine.restore_outbox(vec![forget(1), forget(2)], 1);
        assert_eq!(engine.settle_outbox(true).len(), 2, "sent");
        engine.restore_outbox(vec![forget(1), forget(2)], 1);
        engine.settle_outbox(true);
        engine.outbox.pending.push(forget(3));
        engine.seal_outbox();
        engine.outbox.pending.push(forget(4));
        let all: Vec<_> = [forget(3), forget(4)].into();
        assert_eq!(engine.outbox().cloned().collect::<Vec<_>>(), all, "the capture dropped what was sent");
        let mut bytes = Vec::new();
        engine.encode_state(&mut bytes);
        assert!(bytes.len() > empty.len());
        let back = Engine::decode_state(Arc::clone(&journey), &bytes).unwrap();
        assert_eq!(back.outbox().cloned().collect::<Vec<_>>(), all);
        // Restored: the next capture writes the changelog's outbox record.
        let mut back = back;
        back.seal_outbox();
        assert_eq!(back.outbox_sealed().map(|s| (s.records, s.cuts, s.keys)), Some((&all[..], &[2][..], 1)));
        // A base written prospect by prospect from a shell.
        let (shell, _) = Engine::decode_state_shell(Arc::clone(&journey), &bytes).unwrap();
        let mut rewritten = Vec::new();
        StateWriter::start(&shell, &mut rewritten).finish(&mut rewritten);
        assert_eq!(rewritten, bytes);
        // Nothing held: the state is what it was before the outbox existed.
        let mut none = Engine::new(Arc::clone(&journey));
        none.restore_outbox(Vec::new(), 1);
        let mut again = Vec::new();
        none.encode_state(&mut again);
        assert_eq!(again, empty);
    }

    /// Only the newest `Progress` held for a partition and not sent stays (pending, or sealed by
    /// a checkpoint that failed), at its own place: after every record queued before it; an
    /// ask it supersedes is kept; records for other partitions and of other kinds stay.
    #[test]
    fn a_newer_progress_supersedes_the_one_held_for_its_partition() {
        let text = format!("{}\n[identity]\nresolve = true\n", include_str!("../../../deploy/journeys/b2b.toml"));
        let mut engine = Engine::new(Arc::new(Journey::from_toml_str(&text).unwrap()));
        engine.resolve_across(0, 3);
        let progress = |w: i64, asking: bool| XRecord::Progress {
            partition: 0,
            watermark: Ts(w),
            seen: Ts(w),
            idle: false,
            asking,
        };
        let forget = |n: i64| XRecord::Forget { ids: vec![format!("id-{n}")], ts: Ts(n) };
        engine.send_to(1, progress(1, true));
        engine.send_to(2, progress(1, false));
        engine.send_to(1, forget(1));
        assert_eq!(engine.hold_identity_records(), 3);
        engine.send_to(1, progress(2, false));
        engine.hold_identity_records();
        let held = |e: &Engine| e.outbox().cloned().collect::<Vec<_>>();
        assert_eq!(held(&engine), vec![(2, progress(1, false)), (1, forget(1)), (1, progress(2, true))]);
        // Sealed by a checkpoint that failed: a newer one pending supersedes it there too.
        engine.seal_outbox();
        engine.settle_outbox(false);
        engine.send_to(2, progress(3, false));
        engine.send_to(2, forget(2));
        engine.hold_identity_records();
        engine.seal_outbox();
        let sealed = vec![(1, forget(1)), (1, progress(2, true)), (2, progress(3, false)), (2, forget(2))];
        assert_eq!(engine.outbox_sealed().map(|s| s.records.to_vec()), Some(sealed.clone()));
        // Sent ones are not touched: the next capture's progress is held beside them.
        assert_eq!(engine.settle_outbox(true), &sealed[..]);
        engine.send_to(1, progress(4, false));
        engine.hold_identity_records();
        assert_eq!(held(&engine), [sealed, vec![(1, progress(4, false))]].concat());
    }
}
