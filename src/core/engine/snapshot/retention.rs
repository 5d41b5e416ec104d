//! The retention section of the shard meta (state version 4 on): what left memory and the
//! alert cooldowns kept for prospects that left while theirs was in force.
//!
//! `R`, expired u64, evicted u64, n u32, n × (id: length-prefixed, last alert: i64 ms, hot
//! rule: u8), ids in byte order. It follows the insight counters and precedes the breakdown
//! tables in the meta, so it travels in snapshots and in every changelog checkpoint record; prospects that left are simply absent from the state (and
//! tombstoned in the changelog).

use super::wire::{Dec, Enc, StateError, len_prefixed};
use crate::core::engine::{Engine, KeptCooldown, KeptCooldowns, KeptHandoff, KeptHandoffs};

const TAG: u8 = b'R';
const HANDOFFS_TAG: u8 = b'H';

impl Engine {
    /// Writes the retention section.
    pub(super) fn encode_retention(&self, out: &mut Vec<u8>) {
        let mut w = Enc(out);
        w.u8(TAG);
        w.u64(self.stats.expired);
        w.u64(self.stats.evicted);
        w.u32(self.kept_cooldowns.len() as u32);
        for (id, k) in &self.kept_cooldowns {
            len_prefixed(out, id.as_bytes());
            let mut w = Enc(out);
            w.ts(k.last_alert);
            w.u8(k.hot_rule);
        }
    }

    /// Reads the retention section: `(expired, evicted, kept cooldowns)`.
    pub(super) fn decode_retention(&self, r: &mut Dec<'_>) -> Result<(u64, u64, KeptCooldowns), StateError> {
        let at = r.position();
        if r.u8("retention section")? != TAG {
            return Err(StateError::Invalid { what: "retention section", at });
        }
        let (expired, evicted) = (r.u64("expired")?, r.u64("evicted")?);
        let at = r.position();
        let n = r.u32("kept cooldowns")? as usize;
        if n > r.remaining() / 10 {
            return Err(StateError::Invalid { what: "kept cooldowns", at });
        }
        let rules = self.journey().hot_rules.len().max(1);
        let mut kept = KeptCooldowns::new();
        for _ in 0..n {
            let id = r.len_prefixed_str("kept cooldowns")?;
            let last_alert = r.ts("kept cooldowns")?;
            let at = r.position();
            let hot_rule = r.u8("kept cooldowns")?;
            if hot_rule as usize >= rules {
                return Err(StateError::Invalid { what: "kept cooldowns", at });
            }
            kept.insert(id.into(), KeptCooldown { last_alert, hot_rule });
        }
        Ok((expired, evicted, kept))
    }

    /// Writes the kept transfer generations (state version 6 on, last in the meta): `H`, n u32,
    /// n × (id: length-prefixed, handoff u16, freed at: i64 ms), ids in byte order.
    pub(super) fn encode_kept_handoffs(&self, out: &mut Vec<u8>) {
        let mut w = Enc(out);
        w.u8(HANDOFFS_TAG);
        w.u32(self.kept_handoffs.len() as u32);
        for (id, k) in &self.kept_handoffs {
            len_prefixed(out, id.as_bytes());
            let mut w = Enc(out);
            w.u16(k.handoff);
            w.ts(k.freed_at);
        }
    }

    /// Reads what [`Engine::encode_kept_handoffs`] wrote.
    pub(super) fn decode_kept_handoffs(r: &mut Dec<'_>) -> Result<KeptHandoffs, StateError> {
        let at = r.position();
        if r.u8("kept handoffs")? != HANDOFFS_TAG {
            return Err(StateError::Invalid { what: "kept handoffs", at });
        }
        let at = r.position();
        let n = r.u32("kept handoffs")? as usize;
        if n > r.remaining() / 11 {
            return Err(StateError::Invalid { what: "kept handoffs", at });
        }
        let mut kept = KeptHandoffs::new();
        for _ in 0..n {
            let id = r.len_prefixed_str("kept handoffs")?;
            let handoff = r.u16("kept handoffs")?;
            let freed_at = r.ts("kept handoffs")?;
            kept.insert(id.into(), KeptHandoff { handoff, freed_at });
        }
        Ok(kept)
    }
}
