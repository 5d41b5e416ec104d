//! The funnel by breakdown value as Prometheus gauges. Label values are the journey's dimension
//! names and, per dimension, at most `top_k` values plus `other` and `none` (`no` for a
//! segment): the report ranks values over the shards summed and folds the rest into `other`,
//! so whatever the input, a dimension never has more than `top_k + 2` values here. Series of a
//! value that left the top K are removed at the next publish.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use prometheus::{IntGaugeVec, Opts, Registry};

use crate::core::Journey;
use crate::core::breakdown::{BreakdownReport, ValueReport};

#[derive(Clone)]
pub struct BreakdownGauges {
    /// `microfunnel_breakdown_prospects_reached{dimension,value,stage}`.
    pub reached: IntGaugeVec,
    /// `microfunnel_breakdown_outcomes{dimension,value,outcome}`.
    pub outcomes: IntGaugeVec,
    /// `microfunnel_breakdown_hot_leads{dimension,value}`.
    pub hot_leads: IntGaugeVec,
    /// `microfunnel_breakdown_folded_touches{dimension}`.
    pub folded: IntGaugeVec,
    /// The (dimension, value) pairs published last, to remove those no longer shown.
    shown: Arc<Mutex<BTreeSet<(String, String)>>>,
}

impl BreakdownGauges {
    pub fn new(r: &Registry) -> prometheus::Result<BreakdownGauges> {
        let gauge = |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntGaugeVec> {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            r.register(Box::new(g.clone()))?;
            Ok(g)
        };
        Ok(BreakdownGauges {
            reached: gauge(
                "microfunnel_breakdown_prospects_reached",
                "Prospects that reached each non-terminal stage, per [breakdowns] dimension and value (the top K values by prospects, `other`, `none`), summed over this instance's shards.",
                &["dimension", "value", "stage"],
            )?,
            outcomes: gauge(
                "microfunnel_breakdown_outcomes",
                "Prospects that reached an outcome (won or lost), per breakdown dimension and value.",
                &["dimension", "value", "outcome"],
            )?,
            hot_leads: gauge(
                "microfunnel_breakdown_hot_leads",
                "Prospects that raised at least one hot-lead alert, per breakdown dimension and value.",
                &["dimension", "value"],
            )?,
            folded: gauge(
                "microfunnel_breakdown_folded_touches",
                "Touches whose value found no slot in its shard's table (max_values, or not on the allow-list) and were attributed as `other`, summed over this instance's shards.",
                &["dimension"],
            )?,
            shown: Arc::default(),
        })
    }

    /// Sets the gauges from the reports of this instance's shards summed.
    pub fn publish(&self, journey: &Journey, reports: &[BreakdownReport]) {
        let mut now = BTreeSet::new();
        for r in reports {
            self.folded.with_label_values(&[&r.dimension]).set(r.folded_touches as i64);
            for v in r.values.iter().chain([&r.other, &r.none]) {
                self.value(journey, &r.dimension, v);
                now.insert((r.dimension.clone(), v.value.clone()));
            }
        }
        let Ok(mut shown) = self.shown.lock() else { return };
        for (d, v) in shown.difference(&now) {
            for s in journey.stages.iter().filter(|s| !s.terminal) {
                let _ = self.reached.remove_label_values(&[d, v, &s.name]);
            }
            for o in ["won", "lost"] {
                let _ = self.outcomes.remove_label_values(&[d, v, o]);
            }
            let _ = self.hot_leads.remove_label_values(&[d, v]);
        }
        *shown = now;
    }

    fn value(&self, journey: &Journey, dimension: &str, v: &ValueReport) {
        for (s, c) in journey.stages.iter().zip(&v.stages) {
            if !s.terminal {
                self.reached.with_label_values(&[dimension, &v.value, &s.name]).set(c.reached as i64);
            }
        }
        self.outcomes.with_label_values(&[dimension, &v.value, "won"]).set(v.outcomes.won as i64);
        self.outcomes.with_label_values(&[dimension, &v.value, "lost"]).set(v.outcomes.lost as i64);
        self.hot_leads.with_label_values(&[dimension, &v.value]).set(v.hot_leads as i64);
    }
}
