//! A full state read and written prospect by prospect, so that a base can be rewritten from a
//! base and the records after it without decoding the whole state (`store/chain.rs`): the
//! shard-level parts (meta, CRM memories, identity map) go into an engine without prospects
//! ([`Engine::decode_state_shell`]), the base's prospects are read one at a time
//! ([`StateProspects::for_each`]) and each prospect of the new state is written as it comes
//! ([`StateWriter`]), with its digest, as [`Engine::encode_state_digest`] writes it.

use std::sync::Arc;

use super::ProspectRecord;
use super::parts::Parts;
use super::wire::{Dec, Enc, StateError, len_prefixed};
use crate::core::breakdown::{Slot, SlotRecord};
use crate::core::engine::Engine;
use crate::core::journey::Journey;

/// The prospects of a full state, in its bytes, with the breakdown slots section `B` holds
/// for them (by position).
pub struct StateProspects<'a> {
    version: u32,
    count: u32,
    bytes: &'a [u8],
    slots: Vec<(u32, SlotRecord)>,
}

impl StateProspects<'_> {
    /// Prospects in the state.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Calls `f` with each prospect's id and record (its breakdown slots included), in the
    /// state's order, checked against `engine`'s journey (the shell's).
    /// A record that does not read is `err` of its error.
    pub fn for_each<E>(
        &self,
        engine: &Engine,
        err: impl Fn(StateError) -> E,
        mut f: impl FnMut(&str, &ProspectRecord<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut r = Dec::new(self.bytes);
        let mut rec = ProspectRecord::empty();
        let mut slots = self.slots.iter().peekable();
        for pos in 0..self.count {
            let id = engine.read_prospect(&mut r, self.version, &mut rec).map_err(&err)?;
            rec.slots.clear();
            if let Some((_, s)) = slots.next_if(|(p, _)| *p == pos) {
                rec.slots.extend_from_slice(s);
            }
            f(id, &rec)?;
        }
        Ok(())
    }
}

impl Engine {
    /// A full state's shard-level parts (meta, CRM memories, identity map) read into a new
    /// engine that holds none of its prospects, and where the prospects are, to be read one at
    /// a time. The same checks as [`Engine::decode_state`] (every record is parsed).
    pub fn decode_state_shell(journey: Arc<Journey>, bytes: &[u8]) -> Result<(Engine, StateProspects<'_>), StateError> {
        let mut engine = Engine::new(journey);
        let mut r = Dec::new(bytes);
        let version = engine.decode_meta(&mut r)?;
        let n = r.u32("prospect count")?;
        if n as usize > bytes.len() / 8 {
            return Err(StateError::Invalid { what: "prospect count", at: r.position() - 4 });
        }
        let start = r.position();
        let mut rec = ProspectRecord::empty();
        for _ in 0..n {
            engine.read_prospect(&mut r, version, &mut rec)?;
        }
        let end = r.position();
        let mut slots = Vec::new();
        engine.decode_sections_into(&mut r, version, Some((&mut slots, n)))?;
        if !r.is_empty() {
            return Err(StateError::Invalid { what: "trailing bytes", at: r.position() });
        }
        slots.sort_by_key(|(p, _)| *p);
        Ok((engine, StateProspects { version, count: n, bytes: &bytes[start..end], slots }))
    }

    /// Reads one prospect of a full state of `version`: its id, and its record into `rec`.
    pub(super) fn read_prospect<'a>(
        &self,
        r: &mut Dec<'a>,
        version: u32,
        rec: &mut ProspectRecord<'a>,
    ) -> Result<&'a str, StateError> {
        if version == 1 {
            let id = r.str("prospect id")?;
            *rec = self.decode_prospect(r)?;
            Ok(id)
        } else {
            let id = r.len_prefixed_str("prospect id")?;
            self.decode_compact(r, rec, version)?;
            Ok(id)
        }
    }
}

/// Writes a full state of the current version one prospect at a time: the meta and the
/// shard-level sections are `shell`'s, the prospects those pushed.
pub struct StateWriter<'e> {
    shell: &'e Engine,
    count_at: usize,
    count: u32,
    /// Section `B`'s entries so far, and how many.
    breakdown: Vec<u8>,
    with_slots: u32,
    digest: u64,
    buf: Vec<u8>,
}

impl<'e> StateWriter<'e> {
    /// Starts the state in `out`: `shell`'s meta.
    pub fn start(shell: &'e Engine, out: &mut Vec<u8>) -> StateWriter<'e> {
        shell.encode_meta(out);
        let count_at = out.len();
        Enc(out).u32(0);
        StateWriter {
            shell,
            count_at,
            count: 0,
            breakdown: Vec::new(),
            with_slots: 0,
            digest: 0,
            buf: Vec::with_capacity(256),
        }
    }

    /// Writes one prospect, as an engine holding `rec` under `id` would (its extras as they
    /// are in force at the shell's watermark).
    pub fn push(&mut self, out: &mut Vec<u8>, id: &str, rec: &ProspectRecord<'_>) {
        let shell = self.shell;
        let live = if rec.extras.is_empty() { None } else { shell.live_of(&rec.extras) };
        let on = shell.attr.is_on() && rec.slots.len() == shell.attr.dims;
        let slots: &[Slot] = if on && rec.slots.iter().any(|s| *s != Slot::default()) { &rec.slots } else { &[] };
        let parts = Parts {
            id: id.as_bytes(),
            fixed: &rec.fixed,
            stage_times: &rec.stage_times,
            counts: &rec.counts,
            marks: &rec.marks,
            email: rec.email,
            extras: live.as_deref(),
            slots,
            shown: &rec.shown,
        };
        len_prefixed(out, id.as_bytes());
        parts.encode_compact(out);
        let d = parts.digest(|dim, v| shell.value_name(dim, v), &mut self.buf);
        self.digest = self.digest.wrapping_add(d);
        if !slots.is_empty() {
            let mut w = Enc(&mut self.breakdown);
            w.u32(self.count);
            for s in slots {
                w.u16(s.value);
                w.u32(s.at);
            }
            self.with_slots += 1;
        }
        self.count += 1;
    }

    /// Ends the state: the prospect count, then the shell's sections with the prospects'
    /// breakdown slots. Returns the state's digest ([`Engine::digest`]) and prospect count.
    pub fn finish(self, out: &mut Vec<u8>) -> (u64, u64) {
        out[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        let (dims, n, body) = (self.shell.attr.dims as u8, self.with_slots, &self.breakdown);
        self.shell.encode_sections_with(out, |w| {
            w.u8(dims);
            w.u32(n);
            w.0.extend_from_slice(body);
        });
        (self.digest, u64::from(self.count))
    }
}
