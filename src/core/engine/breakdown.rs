//! Funnel breakdowns in the engine: each applied event's touch attributed to its prospect
//! (`core::breakdown::Attributions`), and the per-value tables read from the prospects' state.

use super::Engine;
use crate::core::breakdown::{Attributions, BreakdownTable, NONE, OTHER};
use crate::core::event::Event;
use crate::core::ids::ProspectIx;
use crate::core::journey::SignalId;
use crate::core::prospect;

impl Engine {
    /// Attributes the touch of an applied event (after its stage move, so that an at-stage
    /// attribution and a segment see the stage it entered).
    pub(super) fn attribute(&mut self, ix: ProspectIx, ev: &Event<'_>, sig: SignalId) {
        let i = ix.0 as usize;
        let stage_times = self.store.stage_times(i);
        self.attr.observe(&self.journey.breakdowns, i, ev.touch.as_deref(), sig, ev.ts, stage_times);
    }

    /// The attribution state: value tables and per-prospect slots.
    pub fn attributions(&self) -> &Attributions {
        &self.attr
    }

    /// Prospect `ix`'s value per dimension (`None`: none; `other` for a folded value).
    pub fn attributed(&self, ix: ProspectIx) -> Vec<(&str, Option<&str>)> {
        let j = &self.journey;
        (0..j.breakdowns.len())
            .map(|d| {
                let v = self.attr.value(ix.0 as usize, d);
                let name = match v {
                    NONE => None,
                    OTHER => Some("other"),
                    id => self.attr.tables()[d].name(id),
                };
                (j.breakdowns[d].name.as_str(), name)
            })
            .collect()
    }

    /// One table per dimension: every prospect held counted under its value (redirects and freed
    /// slots left out).
    pub fn breakdown_tables(&self) -> Vec<BreakdownTable> {
        let j = &self.journey;
        let mut tables: Vec<BreakdownTable> = j.breakdowns.iter().map(|d| BreakdownTable::new(j, d)).collect();
        if tables.is_empty() {
            return tables;
        }
        for (d, t) in tables.iter_mut().enumerate() {
            t.folded_touches = self.attr.tables()[d].folded;
        }
        let measured = crate::core::breakdown::table::measured_signals(j);
        for i in 0..self.store.len() {
            let p = self.store.fixed(i);
            if p.has(prospect::REDIRECT | prospect::FREE) {
                continue;
            }
            let (times, counts) = (self.store.stage_times(i), self.store.counts(i));
            for (d, t) in tables.iter_mut().enumerate() {
                let id = self.attr.value(i, d);
                let name = self.attr.tables()[d].name(id);
                t.entry(j, name, id == OTHER).count(j, p, times, counts, &measured);
            }
        }
        tables
    }
}
