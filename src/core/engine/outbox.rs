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
//! A checkpoint carries `sealed` (after the capture moved `pending` into it) as one changelog
//! record per shard ([`OUTBOX_KEY`], replaced each checkpoint, a tombstone once empty), and a
//! full state carries all three parts as section `O` (`snapshot/sections.rs`), absent when
//! empty: a restore finds what it must send again in either. Bytes: count `u32`, then per
//! record the partition it goes to `u32` and the record's bytes (`XRecord::encode`, `u32`
//! length-prefixed). Not part of any digest: replay sends every record at once.

use super::Engine;
use super::snapshot::{Dec, Enc, StateError};
use crate::core::xpart::XRecord;

/// Key of a shard's outbox record in the changelog (ids refuse control characters).
pub const OUTBOX_KEY: &[u8] = b"\0outbox";

/// Tag of an outbox record's value.
pub const OUTBOX_TAG: u8 = b'O';

/// A shard's identity records waiting for durability (module docs).
#[derive(Clone, Default)]
pub(super) struct Outbox {
    sent: Vec<(u32, XRecord)>,
    sealed: Vec<(u32, XRecord)>,
    pending: Vec<(u32, XRecord)>,
    /// Whether the changelog's outbox record may hold records (the next capture that seals
    /// nothing writes a tombstone).
    recorded: bool,
    /// Whether the last capture's checkpoint writes the outbox record (records or tombstone).
    write: bool,
}

impl Engine {
    /// Holds the identity records the last calls produced ([`Engine::take_identity_records`])
    /// until a checkpoint covering them is durable; returns how many.
    pub fn hold_identity_records(&mut self) -> usize {
        let records = self.take_identity_records();
        let n = records.len();
        self.outbox.pending.extend(records);
        n
    }

    /// A checkpoint's capture, after the barrier's flush (which acknowledged what was sent):
    /// drops the sent records and seals the pending ones with those of checkpoints that
    /// failed; [`Engine::outbox_sealed`] is then the checkpoint's outbox.
    pub fn seal_outbox(&mut self) {
        let o = &mut self.outbox;
        o.sent.clear();
        let pending = std::mem::take(&mut o.pending);
        o.sealed.extend(pending);
        o.write = !o.sealed.is_empty() || o.recorded;
        o.recorded = !o.sealed.is_empty();
    }

    /// The records the last capture sealed, and whether its checkpoint writes the outbox record
    /// (`false`: no record, the changelog's is already a tombstone or absent).
    pub fn outbox_sealed(&self) -> (&[(u32, XRecord)], bool) {
        (&self.outbox.sealed, self.outbox.write)
    }

    /// The checkpoint that sealed the outbox settled: when durable, the sealed records are
    /// the ones to send now (returned); otherwise they stay sealed for the next checkpoint.
    pub fn settle_outbox(&mut self, durable: bool) -> &[(u32, XRecord)] {
        let o = &mut self.outbox;
        o.write = false;
        if !durable {
            // What the changelog holds is unknown: the next checkpoint writes the record.
            o.recorded = true;
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

    /// The outbox of the checkpoint being restored (its changelog record, or a full state's
    /// section), to be sent again: replaces what is held. A checkpoint after it writes the
    /// outbox record (records or tombstone).
    pub fn restore_outbox(&mut self, records: Vec<(u32, XRecord)>) {
        self.outbox = Outbox { sealed: records, recorded: true, ..Outbox::default() };
    }

    /// An unfinished checkpoint wrote an outbox record: the next one writes it again.
    pub fn outbox_unfinished(&mut self) {
        self.outbox.recorded = true;
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
        engine.restore_outbox(vec![forget(1), forget(2)]);
        assert_eq!(engine.settle_outbox(true).len(), 2, "sent");
        engine.restore_outbox(vec![forget(1), forget(2)]);
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
        assert_eq!(back.outbox_sealed(), (&all[..], true));
        // A base written prospect by prospect from a shell.
        let (shell, _) = Engine::decode_state_shell(Arc::clone(&journey), &bytes).unwrap();
        let mut rewritten = Vec::new();
        StateWriter::start(&shell, &mut rewritten).finish(&mut rewritten);
        assert_eq!(rewritten, bytes);
        // Nothing held: the state is what it was before the outbox existed.
        let mut none = Engine::new(Arc::clone(&journey));
        none.restore_outbox(Vec::new());
        let mut again = Vec::new();
        none.encode_state(&mut again);
        assert_eq!(again, empty);
    }
}
