//! Funnel breakdowns: the funnel split by where prospects came from (UTM source, medium,
//! campaign, referrer domain) or by what they did (a segment the journey names), with bounded
//! cardinality.
//!
//! - [`Dimension`]: one configured split (`[[breakdowns.dimensions]]`, `[[breakdowns.segments]]`),
//!   validated with the journey.
//! - [`Touch`]: the dimension values one event carries, normalised ([`normalize`]); the decoder
//!   fills it.
//! - [`Attributions`] (`state.rs`): per shard, each dimension's value table and, per prospect and
//!   dimension, the attributed value as a small id with the time of its touch. Part of the
//!   engine's state.
//! - [`BreakdownTable`] (`table.rs`): counts per value, read from the prospects' state, summable
//!   across shards by value; [`BreakdownTable::report`] keeps the top K values and works out
//!   conversions, win rates and the signal table per value.
//!
//! Cardinality is bounded by construction: a shard gives a slot to at most `max_values` distinct
//! values per dimension (the first ones attributed, in the order the shard applies events, which
//! replay and the service share); a later new value is attributed as `other`. With an
//! allow-list, only those values get slots. Reports and metrics then keep the `top_k` values by
//! prospects (over every shard summed) and fold the rest into `other`, so a dimension never shows
//! more than `top_k + 2` values (`other` and `none` apart).

use std::borrow::Cow;

use super::engine::Engine;
use super::journey::{Journey, SignalId, StageId};

mod state;
pub(crate) mod table;

pub use state::{Attributions, Slot, SlotRecord, ValueTable};
pub use table::{BreakdownReport, BreakdownTable, ValueCounts, ValueReport};

/// Longest value kept, in bytes (cut at a character boundary).
pub const MAX_VALUE_BYTES: usize = 100;

/// Default number of values a report or metric shows per dimension.
pub const DEFAULT_TOP_K: usize = 25;

/// Default number of distinct values one shard gives a slot per dimension.
pub const DEFAULT_MAX_VALUES: usize = 200;

/// Upper bound of `max_values` and of an allow-list (value ids are `u16`).
pub const MAX_VALUES_LIMIT: usize = 10_000;

/// Value id of a prospect without a value.
pub const NONE: u16 = 0;
/// Value id of a value folded into `other`.
pub const OTHER: u16 = 1;

/// Which value of an event a dimension reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    UtmSource,
    UtmMedium,
    UtmCampaign,
    /// The host of the page's referrer, lower-cased, without a leading `www.`.
    ReferrerDomain,
    /// Whether the prospect showed `signal` (before entering `before`, when set): value `yes`.
    Segment {
        signal: SignalId,
        before: Option<StageId>,
    },
}

impl Field {
    /// The config names of the touch fields.
    pub const NAMES: [&'static str; 4] = ["utm_source", "utm_medium", "utm_campaign", "referrer_domain"];

    pub fn parse(s: &str) -> Option<Field> {
        Some(match s {
            "utm_source" => Field::UtmSource,
            "utm_medium" => Field::UtmMedium,
            "utm_campaign" => Field::UtmCampaign,
            "referrer_domain" => Field::ReferrerDomain,
            _ => return None,
        })
    }

    /// The index of a touch field in [`Touch::values`]; `None` for a segment.
    pub fn touch_index(self) -> Option<usize> {
        match self {
            Field::UtmSource => Some(0),
            Field::UtmMedium => Some(1),
            Field::UtmCampaign => Some(2),
            Field::ReferrerDomain => Some(3),
            Field::Segment { .. } => None,
        }
    }
}

/// Which of a prospect's touches gives its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attribution {
    /// The earliest touch by event time (ties: the one applied first).
    FirstTouch,
    /// The latest touch by event time (ties: the one applied last).
    LastTouch,
    /// The latest touch at or before the prospect entered this stage; until it does, the latest
    /// touch so far.
    AtStage(StageId),
}

/// One configured dimension.
#[derive(Clone, Debug, PartialEq)]
pub struct Dimension {
    /// The name reports, metrics (`dimension` label) and `?by=` use.
    pub name: String,
    pub field: Field,
    pub attribution: Attribution,
    /// Values shown by reports and metrics (the rest is `other`).
    pub top_k: usize,
    /// Distinct values one shard gives a slot (the rest is `other`).
    pub max_values: usize,
    /// Only these values (normalised as the field is), in this order; empty: any value.
    pub allow: Vec<String>,
}

impl Dimension {
    pub fn is_segment(&self) -> bool {
        matches!(self.field, Field::Segment { .. })
    }

    /// The values that hold a slot from the start: the allow-list, or `yes` for a segment.
    pub(crate) fn seeded(&self) -> Vec<String> {
        if self.is_segment() { vec!["yes".into()] } else { self.allow.clone() }
    }

    /// The label of prospects without a value: `none`, or `no` for a segment.
    pub fn none_label(&self) -> &'static str {
        if self.is_segment() { "no" } else { "none" }
    }
}

/// The dimension values one event carries, normalised; `None` where it carries none.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Touch<'a> {
    /// `utm_source`, `utm_medium`, `utm_campaign`, referrer domain (see [`Field::touch_index`]).
    pub values: [Option<Cow<'a, str>>; 4],
}

impl<'a> Touch<'a> {
    pub fn is_empty(&self) -> bool {
        self.values.iter().all(Option::is_none)
    }

    /// Sets field `i` from `raw` (normalised) unless it is set already: the decoder offers the
    /// sources of a field in order of precedence.
    pub fn offer(&mut self, i: usize, raw: Cow<'a, str>) {
        if self.values[i].is_none() {
            self.values[i] = normalize(i, raw);
        }
    }

    pub fn into_owned(self) -> Touch<'static> {
        Touch { values: self.values.map(|v| v.map(|s| Cow::Owned(s.into_owned()))) }
    }
}

/// A value as the field's convention has it: trimmed, at most [`MAX_VALUE_BYTES`] bytes, and
/// lower-cased for `utm_source`, `utm_medium` and the referrer domain (channel names and host
/// names are case-insensitive by convention; a campaign name keeps its case). Blank values and
/// values with control characters are no value.
pub fn normalize(field: usize, raw: Cow<'_, str>) -> Option<Cow<'_, str>> {
    let t = raw.trim();
    if t.is_empty() || t.chars().any(char::is_control) {
        return None;
    }
    let mut end = t.len().min(MAX_VALUE_BYTES);
    while !t.is_char_boundary(end) {
        end -= 1;
    }
    if field != 2 && t[..end].chars().any(char::is_uppercase) {
        return Some(Cow::Owned(t[..end].to_lowercase()));
    }
    Some(match raw {
        Cow::Borrowed(b) => Cow::Borrowed(&b.trim()[..end]),
        Cow::Owned(o) => Cow::Owned(o.trim()[..end].to_string()),
    })
}

/// Every engine's tables summed, per dimension (one per dimension of the journey).
pub fn sum_tables<'e>(journey: &Journey, engines: impl IntoIterator<Item = &'e Engine>) -> Vec<BreakdownTable> {
    let mut total: Vec<BreakdownTable> = journey.breakdowns.iter().map(|d| BreakdownTable::new(journey, d)).collect();
    for e in engines {
        for (t, o) in total.iter_mut().zip(e.breakdown_tables()) {
            t.absorb(&o);
        }
    }
    total
}

/// The report of every dimension over these engines (shards) together.
pub fn report<'e>(
    journey: &Journey,
    engines: impl IntoIterator<Item = &'e Engine>,
    min_sample: u64,
) -> Vec<BreakdownReport> {
    sum_tables(journey, engines)
        .iter()
        .zip(&journey.breakdowns)
        .map(|(t, d)| t.report(journey, d, min_sample))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_trimmed_bounded_and_lower_cased_by_field() {
        let n = |f, s: &str| normalize(f, Cow::Borrowed(s)).map(Cow::into_owned);
        assert_eq!(n(0, "  Google "), Some("google".into()));
        assert_eq!(n(2, " Spring-Launch "), Some("Spring-Launch".into()));
        assert_eq!(n(2, "   "), None);
        assert_eq!(n(2, "a\u{7}b"), None);
        let long = "é".repeat(80);
        let v = n(2, &long).unwrap();
        assert!(v.len() <= MAX_VALUE_BYTES && v.chars().all(|c| c == 'é'), "{v}");
        assert_eq!(normalize(0, Cow::Owned(" CPC ".into())).as_deref(), Some("cpc"));
    }
}
