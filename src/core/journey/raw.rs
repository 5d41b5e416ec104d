//! The journey file as written: the serde `Raw*` structs and the defaults of optional settings.
//! `Journey::validate` (`validate.rs`) turns a `RawJourney` into a `Journey`. Required keys are
//! `Option`s (or empty defaults) here, so that one missing key does not stop the reading of the
//! rest: `validate` reports each one by its key path.

use serde::Deserialize;

use super::{Outcome, SignalSource, UnmappedPolicy};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawJourney {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) description: String,
    pub(super) scoring: Option<RawScoring>,
    #[serde(default)]
    pub(super) time: RawTime,
    pub(super) hot: Option<RawHot>,
    #[serde(default)]
    pub(super) stages: Vec<RawStage>,
    #[serde(default)]
    pub(super) signals: Vec<RawSignal>,
    #[serde(default)]
    pub(super) hot_rules: Vec<RawHotRule>,
    pub(super) ghosted: Option<RawGhosted>,
    pub(super) stalled: Option<RawStalled>,
    pub(super) gone_quiet: Option<RawStalled>,
    #[serde(default)]
    pub(super) classification: RawClassification,
    #[serde(default)]
    pub(super) segment: RawSegment,
    #[serde(default)]
    pub(super) identity: RawIdentity,
    #[serde(default)]
    pub(super) crm: crate::core::crm::RawCrm,
    #[serde(default)]
    pub(super) insight: RawInsight,
    #[serde(default)]
    pub(super) breakdowns: RawBreakdowns,
    #[serde(default)]
    pub(super) retention: RawRetention,
}

/// `[insight]`: how the hot rules' accuracy is measured.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInsight {
    #[serde(default = "default_alert_horizon_days")]
    pub(super) alert_horizon_days: f64,
    #[serde(default = "default_score_bands")]
    pub(super) score_bands: Vec<f64>,
}

impl Default for RawInsight {
    fn default() -> Self {
        RawInsight { alert_horizon_days: default_alert_horizon_days(), score_bands: default_score_bands() }
    }
}

fn default_alert_horizon_days() -> f64 {
    90.0
}

fn default_score_bands() -> Vec<f64> {
    vec![10.0, 25.0, 50.0, 100.0]
}

/// `[breakdowns]`: the funnel split by dimension (`core::breakdown`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBreakdowns {
    #[serde(default = "default_top_k")]
    pub(super) top_k: usize,
    #[serde(default = "default_max_values")]
    pub(super) max_values: usize,
    #[serde(default)]
    pub(super) dimensions: Vec<RawDimension>,
    #[serde(default)]
    pub(super) segments: Vec<RawSegmentDimension>,
}

impl Default for RawBreakdowns {
    fn default() -> Self {
        RawBreakdowns {
            top_k: default_top_k(),
            max_values: default_max_values(),
            dimensions: Vec::new(),
            segments: Vec::new(),
        }
    }
}

fn default_top_k() -> usize {
    crate::core::breakdown::DEFAULT_TOP_K
}

fn default_max_values() -> usize {
    crate::core::breakdown::DEFAULT_MAX_VALUES
}

/// `[[breakdowns.dimensions]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDimension {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) field: String,
    pub(super) attribution: Option<String>,
    pub(super) at_stage: Option<String>,
    pub(super) top_k: Option<usize>,
    pub(super) max_values: Option<usize>,
    #[serde(default)]
    pub(super) allow: Vec<String>,
}

/// `[[breakdowns.segments]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSegmentDimension {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) signal: String,
    pub(super) before_stage: Option<String>,
}

/// `[retention]`: how long a prospect without events stays in memory, and the prospect cap.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub(super) after_days: Option<f64>,
    /// Stage name -> days, overriding `after_days` for that stage.
    #[serde(default)]
    pub(super) stages: std::collections::BTreeMap<String, f64>,
    pub(super) max_prospects_per_shard: Option<u64>,
    /// Days for anonymous prospects (an `anonymousId` never identified), every stage not in
    /// `[retention.anonymous]`; overrides the known prospects' spans.
    pub(super) anonymous_after_days: Option<f64>,
    /// Stage name -> days for anonymous prospects, overriding `anonymous_after_days`.
    #[serde(default)]
    pub(super) anonymous: std::collections::BTreeMap<String, f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawScoring {
    pub(super) half_life_days: Option<f64>,
    #[serde(default = "default_max_score")]
    pub(super) max_score: f64,
}

fn default_max_score() -> f64 {
    1000.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTime {
    #[serde(default = "default_lateness_hours")]
    pub(super) allowed_lateness_hours: f64,
    #[serde(default = "default_max_ahead_hours")]
    pub(super) max_ahead_hours: f64,
    #[serde(default = "default_dedup_hours")]
    pub(super) dedup_hours: f64,
    #[serde(default = "default_outcome_correction_hours")]
    pub(super) outcome_correction_hours: f64,
    #[serde(default = "default_min_event_time")]
    pub(super) min_event_time: String,
    #[serde(default = "default_max_event_time")]
    pub(super) max_event_time: String,
}

impl Default for RawTime {
    fn default() -> Self {
        RawTime {
            allowed_lateness_hours: default_lateness_hours(),
            max_ahead_hours: default_max_ahead_hours(),
            dedup_hours: default_dedup_hours(),
            outcome_correction_hours: default_outcome_correction_hours(),
            min_event_time: default_min_event_time(),
            max_event_time: default_max_event_time(),
        }
    }
}

fn default_max_ahead_hours() -> f64 {
    24.0
}

fn default_dedup_hours() -> f64 {
    24.0
}

fn default_outcome_correction_hours() -> f64 {
    24.0
}

fn default_max_event_time() -> String {
    DEFAULT_MAX_EVENT_TIME.to_string()
}

/// `[time] max_event_time` when the journey does not set it: a static bound that catches clocks
/// set to sentinel years (9999); clocks merely days ahead are handled by `max_ahead_hours`.
pub const DEFAULT_MAX_EVENT_TIME: &str = "2100-01-01T00:00:00Z";

fn default_min_event_time() -> String {
    DEFAULT_MIN_EVENT_TIME.to_string()
}

/// `[time] min_event_time` when the journey does not set it.
pub const DEFAULT_MIN_EVENT_TIME: &str = "2000-01-01T00:00:00Z";

/// `[identity] placeholder_ids` when the journey does not set it: what broken tracking code sends
/// as a user id (an unset JavaScript variable, a stringified null or object, a zeroed UUID). The
/// entry `0` also stands for every id made of zeros and dashes (see `Journey::is_placeholder_id`).
pub const DEFAULT_PLACEHOLDER_IDS: [&str; 11] = [
    "undefined",
    "null",
    "none",
    "nil",
    "anonymous",
    "guest",
    "[object Object]",
    "n/a",
    "0",
    "-1",
    "00000000-0000-0000-0000-000000000000",
];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIdentity {
    #[serde(default = "default_placeholder_ids")]
    pub(super) placeholder_ids: Vec<String>,
    /// Identity resolution within a shard (replay only until the identity map is persisted).
    #[serde(default)]
    pub(super) resolve: bool,
    #[serde(default = "default_max_known_ids")]
    pub(super) max_known_ids: u32,
    #[serde(default = "default_max_anonymous_ids")]
    pub(super) max_anonymous_ids: u32,
    /// Days of event time a transfer generation is remembered after its record left memory.
    #[serde(default = "default_transfer_dedup_days")]
    pub(super) transfer_dedup_days: f64,
}

impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity {
            placeholder_ids: default_placeholder_ids(),
            resolve: false,
            max_known_ids: default_max_known_ids(),
            max_anonymous_ids: default_max_anonymous_ids(),
            transfer_dedup_days: default_transfer_dedup_days(),
        }
    }
}

fn default_max_known_ids() -> u32 {
    crate::core::identity::IdentityLimits::default().max_known_ids
}

fn default_max_anonymous_ids() -> u32 {
    crate::core::identity::IdentityLimits::default().max_anonymous_ids
}

fn default_transfer_dedup_days() -> f64 {
    crate::core::engine::KEPT_HANDOFF_SPAN.0 as f64 / crate::core::time::MS_PER_DAY as f64
}

fn default_placeholder_ids() -> Vec<String> {
    DEFAULT_PLACEHOLDER_IDS.iter().map(|s| s.to_string()).collect()
}

fn default_lateness_hours() -> f64 {
    24.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHot {
    pub(super) cooldown_hours: Option<f64>,
    pub(super) hot_for_days: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStage {
    #[serde(default)]
    pub(super) name: String,
    pub(super) order: Option<u32>,
    #[serde(default)]
    pub(super) entered_by: Vec<String>,
    #[serde(default)]
    pub(super) next_commitment: String,
    #[serde(default)]
    pub(super) next_commitment_for: RawByClass,
    #[serde(default)]
    pub(super) terminal: bool,
    pub(super) outcome: Option<Outcome>,
    #[serde(default)]
    pub(super) reopen_on: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSignal {
    #[serde(default)]
    pub(super) name: String,
    pub(super) source: Option<SignalSource>,
    pub(super) weight: Option<f64>,
    pub(super) cap: Option<f64>,
    pub(super) prospect_initiated: Option<bool>,
    #[serde(default)]
    pub(super) aliases: Vec<String>,
    #[serde(default)]
    pub(super) disqualifies: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHotRule {
    #[serde(default)]
    pub(super) name: String,
    #[serde(default)]
    pub(super) reason: String,
    pub(super) score_at_least: Option<f64>,
    pub(super) signal: Option<String>,
    pub(super) after: Option<String>,
    pub(super) within_days: Option<f64>,
    pub(super) priority: Option<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGhosted {
    #[serde(default)]
    pub(super) after: String,
    pub(super) days: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStalled {
    pub(super) days: Option<f64>,
    #[serde(default)]
    pub(super) stages: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawClassification {
    #[serde(default)]
    pub(super) opportunity_stages: Vec<String>,
    #[serde(default)]
    pub(super) next_commitment: RawByClass,
}

/// A text per classification (`next_commitment_for`, `[classification] next_commitment`).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawByClass {
    pub(super) current_opportunity: Option<String>,
    pub(super) no_current_opportunity: Option<String>,
    pub(super) not_a_prospect: Option<String>,
}

impl RawByClass {
    /// In the order of `Classification::ALL`.
    pub(super) fn texts(&self) -> [String; 3] {
        [&self.current_opportunity, &self.no_current_opportunity, &self.not_a_prospect]
            .map(|t| t.as_deref().unwrap_or("").trim().to_string())
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSegment {
    pub(super) page: Option<String>,
    pub(super) screen: Option<String>,
    pub(super) identify: Option<String>,
    #[serde(default)]
    pub(super) unmapped_events: UnmappedPolicy,
    /// `[[segment.pages]]`: page and screen calls mapped by name, category, path or URL.
    #[serde(default)]
    pub(super) pages: Vec<RawPageRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPageRule {
    #[serde(default)]
    pub(super) signal: String,
    pub(super) name: Option<String>,
    pub(super) category: Option<String>,
    pub(super) path: Option<String>,
    pub(super) url: Option<String>,
}
