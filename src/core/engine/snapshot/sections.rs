//! Shard-level sections of a full state (version 4 on), after the prospects: each is a tag
//! byte, a u32 length and its body, so a reader can tell where one ends. A full state of
//! version 3 or older has none.
//!
//! | tag | body |
//! |-----|------|
//! | `C` | the CRM memories (`engine/crm.rs`, [`crate::core::engine::CrmState`]) |
//! | `I` | the identity map: `u8` 1 and [`IdentityMap::encode`] with `[identity] resolve`, else `u8` 0 |
//! | `B` | the prospects' breakdown values (`breakdown.rs`): `u8` dimension count, `u32` count, then per prospect with a value or touch its position `u32` and per dimension value id `u16` + touch time `u32` |
//!
//! | `O` | the outbox (`engine/outbox.rs`): identity records held until their checkpoint is durable; written only when not empty, so states without it are unchanged (read from version 6 on) |
//!
//! Every section but `O` is written, in this order; a reader requires each once and refuses
//! unknown tags.

use super::breakdown::read_breakdown_section;
use super::wire::{Dec, Enc, StateError};
use crate::core::breakdown::SlotRecord;
use crate::core::engine::outbox::{decode_outbox, encode_outbox};
use crate::core::engine::{CrmState, Engine};
use crate::core::identity::IdentityMap;

const CRM: u8 = b'C';
const IDENTITY: u8 = b'I';
const BREAKDOWN: u8 = b'B';
const OUTBOX: u8 = b'O';

impl Engine {
    /// Writes the shard-level sections (current version).
    pub(super) fn encode_sections(&self, out: &mut Vec<u8>) {
        self.encode_sections_with(out, |w| self.encode_breakdown_section(w));
    }

    /// [`Engine::encode_sections`] with section `B`'s body written by `breakdown` (a state
    /// written prospect by prospect: `rewrite.rs`).
    pub(super) fn encode_sections_with(&self, out: &mut Vec<u8>, breakdown: impl FnOnce(&mut Enc<'_>)) {
        section(out, CRM, |w| self.crm.encode(w));
        section(out, IDENTITY, |w| match self.identity.as_deref() {
            Some(map) => {
                w.u8(1);
                map.encode(w);
            }
            None => w.u8(0),
        });
        section(out, BREAKDOWN, breakdown);
        let outbox: Vec<_> = self.outbox().collect();
        if !outbox.is_empty() {
            section(out, OUTBOX, |w| encode_outbox(outbox.iter().copied(), w.0));
        }
    }

    /// Reads the sections a state of `version` has; an older state has none, and its CRM
    /// memories are marked incomplete (rebuilt by the service, see `engine/crm.rs`).
    pub(super) fn decode_sections(&mut self, r: &mut Dec<'_>, version: u32) -> Result<(), StateError> {
        self.decode_sections_into(r, version, None)
    }

    /// [`Engine::decode_sections`]; with `slots`, section `B`'s entries go there instead of
    /// into this engine's prospects (a state of that many prospects read without them).
    pub(super) fn decode_sections_into(
        &mut self,
        r: &mut Dec<'_>,
        version: u32,
        slots: Option<(&mut Vec<(u32, SlotRecord)>, u32)>,
    ) -> Result<(), StateError> {
        let mut slots = slots;
        if version < 4 {
            self.set_crm_complete(false);
            return Ok(());
        }
        let (mut crm, mut identity, mut breakdown, mut outbox) = (false, false, false, false);
        while !r.is_empty() {
            let at = r.position();
            let tag = r.u8("section tag")?;
            let body = r.bytes("section")?;
            let mut b = Dec::new(body);
            match tag {
                CRM if !crm => {
                    self.crm = CrmState::decode(&mut b, self.journey.crm.max_entries)?;
                    crm = true;
                }
                IDENTITY if !identity => {
                    let at = b.position();
                    let map = match b.u8("identity present")? {
                        0 => None,
                        1 => Some(IdentityMap::decode(&mut b)?),
                        _ => return Err(StateError::Invalid { what: "identity present", at }),
                    };
                    // A map written with resolution on is dropped when it is off now; with it
                    // on and no map written, the shard starts with an empty one.
                    if self.identity.is_some() {
                        self.identity = Some(Box::new(map.unwrap_or_default()));
                    }
                    identity = true;
                }
                BREAKDOWN if !breakdown => {
                    match slots.as_mut() {
                        Some((into, n)) => read_breakdown_section(&mut b, *n, into)?,
                        None => self.decode_breakdown_section(&mut b)?,
                    }
                    breakdown = true;
                }
                OUTBOX if !outbox && version >= 6 => {
                    let records = decode_outbox(&mut b)?;
                    self.restore_outbox(records, 1);
                    outbox = true;
                }
                _ => return Err(StateError::Invalid { what: "section tag", at }),
            }
            if !b.is_empty() {
                return Err(StateError::Invalid { what: "section length", at });
            }
        }
        // Every section of the version is written, so a missing one is a truncated state.
        if !crm || !identity || !breakdown {
            let what = match (crm, identity) {
                (false, _) => "crm section",
                (_, false) => "identity section",
                _ => "breakdown section",
            };
            return Err(StateError::Truncated { what, at: r.position() });
        }
        Ok(())
    }
}

/// Tag, u32 length, body written by `body`.
fn section(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Enc<'_>)) {
    out.push(tag);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    body(&mut Enc(out));
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}
