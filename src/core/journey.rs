//! The journey definition: stages of the customer's buying journey, the signals that mark them,
//! scoring, hot rules (micro-certainties), silence timers and classification. Loaded from TOML
//! and validated once; the engine only ever sees a valid `Journey`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::Deserialize;

use super::event::{EventKind, Source};
use super::time::{Span, Ts, parse_rfc3339};

/// Index of a stage in `Journey::stages` (stages are kept in increasing order).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StageId(pub u8);

/// Index of a signal in `Journey::signals`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SignalId(pub u16);

pub const MAX_STAGES: usize = 32;
pub const MAX_SIGNALS: usize = 1024;
pub const MAX_HOT_RULES: usize = 32;
pub const MAX_TRACKED: usize = 8;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JourneyError {
    #[error("journey file is not valid TOML: {0}")]
    Toml(String),
    #[error("{at}: {problem}")]
    Invalid { at: String, problem: String },
    #[error("{at}: unknown signal `{name}`; declare it under [[signals]] first")]
    UnknownSignal { at: String, name: String },
    #[error("{at}: unknown stage `{name}`; known stages: {known}")]
    UnknownStage { at: String, name: String, known: String },
    #[error(
        "signals[{index}]: `{name}` (normalised `{key}`) is already declared by {first}; each signal name and alias must be unique"
    )]
    DuplicateSignal { index: usize, name: String, key: String, first: String },
    #[error("stages[{index}]: stage `{name}` is declared twice")]
    DuplicateStage { index: usize, name: String },
    #[error(
        "stages[{index}] (`{name}`): order {order} is not greater than {prev_order} of `{prev}`; list stages in strictly increasing order"
    )]
    NonIncreasingOrder { index: usize, name: String, order: u32, prev: String, prev_order: u32 },
    #[error(
        "signal `{signal}` enters both stage `{first}` and stage `{second}`; a signal may mark entry into one stage only"
    )]
    SignalInTwoStages { signal: String, first: String, second: String },
}

fn invalid(at: impl Into<String>, problem: impl Into<String>) -> JourneyError {
    JourneyError::Invalid { at: at.into(), problem: problem.into() }
}

// ---- the file as written ----------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJourney {
    name: String,
    #[serde(default)]
    description: String,
    scoring: RawScoring,
    #[serde(default)]
    time: RawTime,
    hot: RawHot,
    stages: Vec<RawStage>,
    signals: Vec<RawSignal>,
    #[serde(default)]
    hot_rules: Vec<RawHotRule>,
    ghosted: Option<RawGhosted>,
    stalled: Option<RawStalled>,
    #[serde(default)]
    classification: RawClassification,
    #[serde(default)]
    segment: RawSegment,
    #[serde(default)]
    identity: RawIdentity,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScoring {
    half_life_days: f64,
    #[serde(default = "default_max_score")]
    max_score: f64,
}

fn default_max_score() -> f64 {
    1000.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTime {
    #[serde(default = "default_lateness_hours")]
    allowed_lateness_hours: f64,
    #[serde(default = "default_max_ahead_hours")]
    max_ahead_hours: f64,
    #[serde(default = "default_dedup_hours")]
    dedup_hours: f64,
    #[serde(default = "default_outcome_correction_hours")]
    outcome_correction_hours: f64,
    #[serde(default = "default_min_event_time")]
    min_event_time: String,
    #[serde(default = "default_max_event_time")]
    max_event_time: String,
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
/// as a user id (an unset JavaScript variable, a stringified null, a zeroed UUID).
pub const DEFAULT_PLACEHOLDER_IDS: [&str; 9] =
    ["undefined", "null", "none", "nil", "anonymous", "n/a", "0", "-1", "00000000-0000-0000-0000-000000000000"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(default = "default_placeholder_ids")]
    placeholder_ids: Vec<String>,
}

impl Default for RawIdentity {
    fn default() -> Self {
        RawIdentity { placeholder_ids: default_placeholder_ids() }
    }
}

fn default_placeholder_ids() -> Vec<String> {
    DEFAULT_PLACEHOLDER_IDS.iter().map(|s| s.to_string()).collect()
}

fn default_lateness_hours() -> f64 {
    24.0
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHot {
    cooldown_hours: f64,
    hot_for_days: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStage {
    name: String,
    order: u32,
    #[serde(default)]
    entered_by: Vec<String>,
    #[serde(default)]
    next_commitment: String,
    #[serde(default)]
    terminal: bool,
    outcome: Option<Outcome>,
    #[serde(default)]
    reopen_on: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignal {
    name: String,
    source: SignalSource,
    weight: f64,
    cap: Option<f64>,
    prospect_initiated: bool,
    #[serde(default)]
    aliases: Vec<String>,
    #[serde(default)]
    disqualifies: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHotRule {
    name: String,
    reason: String,
    score_at_least: Option<f64>,
    signal: Option<String>,
    after: Option<String>,
    within_days: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGhosted {
    after: String,
    days: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStalled {
    days: f64,
    stages: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawClassification {
    #[serde(default)]
    opportunity_stages: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSegment {
    page: Option<String>,
    screen: Option<String>,
    identify: Option<String>,
    #[serde(default)]
    unmapped_events: UnmappedPolicy,
}

// ---- the validated journey --------------------------------------------------------------

/// Which source may send a signal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignalSource {
    Web,
    Crm,
    Any,
}

impl SignalSource {
    pub fn admits(self, source: Source) -> bool {
        matches!(
            (self, source),
            (SignalSource::Any, _) | (SignalSource::Web, Source::Web) | (SignalSource::Crm, Source::Crm)
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SignalSource::Web => "web",
            SignalSource::Crm => "crm",
            SignalSource::Any => "any",
        }
    }
}

/// What to do with an event whose name maps to no signal.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmappedPolicy {
    /// Count it (`unmapped` in the funnel stats) and move on: sites send many events a journey
    /// does not care about.
    #[default]
    Ignore,
    /// Reject it (dead-letter in the service).
    Reject,
}

/// The sales outcome a stage stands for, used to validate signals against real results.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Won,
    Lost,
}

#[derive(Clone, Debug)]
pub struct StageDef {
    pub name: String,
    pub order: u32,
    pub next_commitment: String,
    pub terminal: bool,
    pub outcome: Option<Outcome>,
    /// Terminal stages only: signals that move a prospect out of this stage again (a lost deal
    /// the CRM reopens), back to the stage the signal enters.
    pub reopen_on: Vec<SignalId>,
}

#[derive(Clone, Debug)]
pub struct SignalDef {
    pub name: String,
    pub source: SignalSource,
    pub weight: f64,
    /// Cap on the undecayed points one prospect can collect from this signal.
    pub cap: Option<f64>,
    pub prospect_initiated: bool,
    pub disqualifies: bool,
    /// The stage this signal marks entry into, if any.
    pub enters: Option<StageId>,
    /// Slot in the per-prospect "last seen" table, for signals hot rules look back to.
    pub tracked_slot: Option<u8>,
}

#[derive(Clone, Debug)]
pub enum HotCondition {
    /// The decayed score crosses the threshold from below.
    ScoreAtLeast(f64),
    /// The signal happens, optionally within a window after another one.
    Signal { signal: SignalId, after: Option<(SignalId, Span)> },
}

#[derive(Clone, Debug)]
pub struct HotRule {
    pub name: String,
    pub reason: String,
    pub condition: HotCondition,
}

#[derive(Clone, Copy, Debug)]
pub struct GhostRule {
    pub after: SignalId,
    pub window: Span,
}

#[derive(Clone, Copy, Debug)]
pub struct StallRule {
    pub window: Span,
    /// Bit `i` set: stage `i` is watched.
    pub stages: u32,
}

#[derive(Clone, Debug)]
pub struct Journey {
    pub name: String,
    pub description: String,
    pub stages: Vec<StageDef>,
    pub signals: Vec<SignalDef>,
    pub hot_rules: Vec<HotRule>,
    pub half_life: Span,
    /// `ln 2 / half_life` per millisecond.
    pub decay_rate: f64,
    pub max_score: f64,
    pub allowed_lateness: Span,
    /// An event more than this ahead of the shard's clock does not move it until another
    /// prospect's event confirms the time (a client clock set ahead).
    pub max_ahead: Span,
    /// Event ids are remembered (per prospect) until the watermark is this far past their time.
    pub dedup_window: Span,
    /// Within this span after an outcome, a contradicting outcome replaces it (a CRM mis-click
    /// corrected); later, an outcome stands (a won customer's lost upsell is not a lost deal).
    pub outcome_correction: Span,
    pub alert_cooldown: Span,
    pub hot_for: Span,
    pub ghost: Option<GhostRule>,
    pub stall: Option<StallRule>,
    /// Bit `i` set: a prospect in stage `i` is a current opportunity.
    pub opportunity_stages: u32,
    pub page_signal: Option<SignalId>,
    pub screen_signal: Option<SignalId>,
    pub identify_signal: Option<SignalId>,
    pub unmapped: UnmappedPolicy,
    /// Events before this instant are refused (`bad_timestamp`): a client clock reset to 1970,
    /// a zero timestamp.
    pub min_event_time: Ts,
    /// Events after this are rejected `bad_timestamp` (out of range).
    pub max_event_time: Ts,
    /// Ids that mean "no id" (`[identity] placeholder_ids`), trimmed; see
    /// [`Journey::is_placeholder_id`].
    pub placeholder_ids: Vec<String>,
    /// Length of the longest placeholder id, to dismiss real ids without comparing.
    placeholder_max_len: usize,
    /// Number of per-prospect "last seen" slots (`SignalDef::tracked_slot`).
    pub tracked: usize,
    names: Names,
}

/// Hashes signal names with the crate's fast stable hash (names are config, not attacker input).
#[derive(Default)]
struct NameHasher(u64);

impl Hasher for NameHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0 = super::ids::hash64(self.0, bytes);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

type Names = HashMap<String, SignalId, BuildHasherDefault<NameHasher>>;

/// Lower-cases and joins words with `_`: "Demo Requested", "demo-requested" and
/// "demo_requested" all become "demo_requested". The display form of a name; names are matched
/// by [`match_key`], which also ignores where the words break ("demoRequested").
pub fn normalize_name(name: &str, out: &mut String) {
    out.clear();
    let mut pending_sep = false;
    for c in name.chars() {
        if c.is_alphanumeric() {
            if pending_sep && !out.is_empty() {
                out.push('_');
            }
            pending_sep = false;
            out.extend(c.to_lowercase());
        } else {
            pending_sep = true;
        }
    }
}

/// The key names are matched by: letters and digits only, lower-cased. Two names that differ
/// only in case and separators ("Demo Requested", "demo_requested", "demoRequested",
/// "DemoRequested", "demo-requested") have the same key.
pub fn match_key(name: &str, out: &mut String) {
    out.clear();
    for c in name.chars().filter(|c| c.is_alphanumeric()) {
        out.extend(c.to_lowercase());
    }
}

/// Longest ASCII name whose key [`Journey::lookup`] builds on the stack.
const STACK_KEY: usize = 96;

fn positive(at: &str, what: &str, v: f64) -> Result<f64, JourneyError> {
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(invalid(at, format!("`{what}` must be a positive number, got {v}")))
    }
}

/// At most 1,000,000 hours (114 years): beyond that nothing is ever late anyway.
fn lateness_hours(v: f64) -> Result<f64, JourneyError> {
    let v = non_negative("time", "allowed_lateness_hours", v)?;
    if v > 1_000_000.0 {
        return Err(invalid("time", format!("`allowed_lateness_hours` must be at most 1000000, got {v}")));
    }
    Ok(v)
}

fn non_negative(at: &str, what: &str, v: f64) -> Result<f64, JourneyError> {
    if v.is_finite() && v >= 0.0 { Ok(v) } else { Err(invalid(at, format!("`{what}` must be zero or more, got {v}"))) }
}

impl Journey {
    /// Parses and validates a journey from TOML text.
    pub fn from_toml_str(text: &str) -> Result<Journey, JourneyError> {
        let raw: RawJourney = toml::from_str(text).map_err(|e| JourneyError::Toml(e.to_string()))?;
        Self::validate(raw)
    }

    fn validate(raw: RawJourney) -> Result<Journey, JourneyError> {
        if raw.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        // Stages.
        if raw.stages.is_empty() {
            return Err(invalid("stages", "declare at least one [[stages]] entry"));
        }
        if raw.stages.len() > MAX_STAGES {
            return Err(invalid("stages", format!("at most {MAX_STAGES} stages are supported")));
        }
        let mut stage_ix: HashMap<&str, StageId> = HashMap::new();
        for (i, s) in raw.stages.iter().enumerate() {
            if s.name.trim().is_empty() {
                return Err(invalid(format!("stages[{i}].name"), "must not be empty"));
            }
            if stage_ix.insert(s.name.as_str(), StageId(i as u8)).is_some() {
                return Err(JourneyError::DuplicateStage { index: i, name: s.name.clone() });
            }
            if i > 0 && s.order <= raw.stages[i - 1].order {
                let p = &raw.stages[i - 1];
                return Err(JourneyError::NonIncreasingOrder {
                    index: i,
                    name: s.name.clone(),
                    order: s.order,
                    prev: p.name.clone(),
                    prev_order: p.order,
                });
            }
        }
        if raw.stages[0].terminal {
            return Err(invalid("stages[0]", "the first stage is where every prospect starts; it cannot be terminal"));
        }
        let known_stages = raw.stages.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
        let stage_of = |at: String, name: &str| -> Result<StageId, JourneyError> {
            stage_ix.get(name).copied().ok_or_else(|| JourneyError::UnknownStage {
                at,
                name: name.to_string(),
                known: known_stages.clone(),
            })
        };

        // Signals and their names.
        if raw.signals.is_empty() {
            return Err(invalid("signals", "declare at least one [[signals]] entry"));
        }
        if raw.signals.len() > MAX_SIGNALS {
            return Err(invalid("signals", format!("at most {MAX_SIGNALS} signals are supported")));
        }
        let mut names = Names::default();
        let (mut key, mut shown) = (String::new(), String::new());
        let mut signals = Vec::with_capacity(raw.signals.len());
        for (i, s) in raw.signals.iter().enumerate() {
            let at = format!("signals[{i}] (`{}`)", s.name);
            if s.name.trim().is_empty() {
                return Err(invalid(format!("signals[{i}].name"), "must not be empty"));
            }
            if !s.weight.is_finite() {
                return Err(invalid(&at, "`weight` must be a finite number"));
            }
            let cap = match s.cap {
                Some(c) => Some(positive(&at, "cap", c)?),
                None => None,
            };
            let id = SignalId(i as u16);
            for n in std::iter::once(&s.name).chain(&s.aliases) {
                match_key(n, &mut key);
                if key.is_empty() {
                    return Err(invalid(&at, format!("name or alias `{n}` has no letters or digits")));
                }
                // The name as written also hits without building its key.
                if key != *n {
                    names.insert(n.clone(), id);
                }
                if let Some(prev) = names.insert(key.clone(), id)
                    && prev != id
                {
                    normalize_name(n, &mut shown);
                    return Err(JourneyError::DuplicateSignal {
                        index: i,
                        name: n.clone(),
                        key: shown.clone(),
                        first: format!("signals[{}] (`{}`)", prev.0, raw.signals[prev.0 as usize].name),
                    });
                }
            }
            signals.push(SignalDef {
                name: s.name.clone(),
                source: s.source,
                weight: s.weight,
                cap,
                prospect_initiated: s.prospect_initiated,
                disqualifies: s.disqualifies,
                enters: None,
                tracked_slot: None,
            });
        }
        let signal_of = |at: String, name: &str, names: &Names| -> Result<SignalId, JourneyError> {
            let mut k = String::new();
            match_key(name, &mut k);
            names.get(&k).copied().ok_or_else(|| JourneyError::UnknownSignal { at, name: name.to_string() })
        };

        // Stage entry signals.
        let mut stages = Vec::with_capacity(raw.stages.len());
        for (i, s) in raw.stages.iter().enumerate() {
            for n in &s.entered_by {
                let sig = signal_of(format!("stages[{i}] (`{}`).entered_by", s.name), n, &names)?;
                let def = &mut signals[sig.0 as usize];
                if def.enters == Some(StageId(i as u8)) {
                    return Err(invalid(
                        format!("stages[{i}] (`{}`).entered_by", s.name),
                        format!("lists `{n}` twice; list each signal once"),
                    ));
                }
                if let Some(prev) = def.enters {
                    return Err(JourneyError::SignalInTwoStages {
                        signal: def.name.clone(),
                        first: raw.stages[prev.0 as usize].name.clone(),
                        second: s.name.clone(),
                    });
                }
                def.enters = Some(StageId(i as u8));
            }
            if s.outcome.is_some() && i == 0 {
                return Err(invalid(format!("stages[0] (`{}`)", s.name), "the first stage cannot carry an outcome"));
            }
            let mut reopen_on = Vec::with_capacity(s.reopen_on.len());
            for (k, n) in s.reopen_on.iter().enumerate() {
                let at = format!("stages[{i}] (`{}`).reopen_on[{k}]", s.name);
                if !s.terminal {
                    return Err(invalid(
                        at,
                        "only a terminal stage can be reopened; remove `reopen_on` or set `terminal = true`",
                    ));
                }
                reopen_on.push(signal_of(at, n, &names)?);
            }
            stages.push(StageDef {
                name: s.name.clone(),
                order: s.order,
                next_commitment: s.next_commitment.clone(),
                terminal: s.terminal,
                outcome: s.outcome,
                reopen_on,
            });
        }

        for (i, st) in stages.iter().enumerate() {
            for (k, sig) in st.reopen_on.iter().enumerate() {
                let def = &signals[sig.0 as usize];
                if def.enters.is_none_or(|to| stages[to.0 as usize].terminal) {
                    return Err(invalid(
                        format!("stages[{i}] (`{}`).reopen_on[{k}]", st.name),
                        format!(
                            "signal `{}` enters no non-terminal stage, so it cannot say where a reopened prospect goes; list it under a stage's `entered_by` or remove it here",
                            def.name
                        ),
                    ));
                }
            }
        }

        // Hot rules.
        if raw.hot_rules.len() > MAX_HOT_RULES {
            return Err(invalid("hot_rules", format!("at most {MAX_HOT_RULES} hot rules are supported")));
        }
        let mut tracked = 0usize;
        let mut hot_rules = Vec::with_capacity(raw.hot_rules.len());
        let mut rule_names: HashMap<&str, usize> = HashMap::new();
        for (i, r) in raw.hot_rules.iter().enumerate() {
            let at = format!("hot_rules[{i}] (`{}`)", r.name);
            if r.name.trim().is_empty() {
                return Err(invalid(format!("hot_rules[{i}].name"), "must not be empty"));
            }
            if rule_names.insert(r.name.as_str(), i).is_some() {
                return Err(invalid(&at, "rule name is used twice; alert ids are derived from it"));
            }
            if r.reason.trim().is_empty() {
                return Err(invalid(&at, "`reason` must say in words why the prospect is hot"));
            }
            let condition = match (r.score_at_least, &r.signal) {
                (Some(t), None) => {
                    if r.after.is_some() || r.within_days.is_some() {
                        return Err(invalid(&at, "`after`/`within_days` only go with `signal`, not `score_at_least`"));
                    }
                    HotCondition::ScoreAtLeast(positive(&at, "score_at_least", t)?)
                }
                (None, Some(sig)) => {
                    let signal = signal_of(format!("{at}.signal"), sig, &names)?;
                    let after = match (&r.after, r.within_days) {
                        (Some(a), Some(d)) => {
                            let a = signal_of(format!("{at}.after"), a, &names)?;
                            let def = &mut signals[a.0 as usize];
                            if def.tracked_slot.is_none() {
                                if tracked == MAX_TRACKED {
                                    return Err(invalid(
                                        &at,
                                        format!("at most {MAX_TRACKED} distinct `after` signals are supported"),
                                    ));
                                }
                                def.tracked_slot = Some(tracked as u8);
                                tracked += 1;
                            }
                            Some((a, Span::from_days(positive(&at, "within_days", d)?)))
                        }
                        (None, None) => None,
                        _ => {
                            return Err(invalid(&at, "`after` and `within_days` go together: set both or neither"));
                        }
                    };
                    HotCondition::Signal { signal, after }
                }
                _ => {
                    return Err(invalid(&at, "set exactly one of `score_at_least` or `signal`"));
                }
            };
            hot_rules.push(HotRule { name: r.name.clone(), reason: r.reason.clone(), condition });
        }

        let ghost = match &raw.ghosted {
            Some(g) => Some(GhostRule {
                after: signal_of("ghosted.after".into(), &g.after, &names)?,
                window: Span::from_days(positive("ghosted", "days", g.days)?),
            }),
            None => None,
        };
        let stall = match &raw.stalled {
            Some(s) => {
                let mut mask = 0u32;
                for (i, n) in s.stages.iter().enumerate() {
                    mask |= 1 << stage_of(format!("stalled.stages[{i}]"), n)?.0;
                }
                Some(StallRule { window: Span::from_days(positive("stalled", "days", s.days)?), stages: mask })
            }
            None => None,
        };
        let mut opportunity_stages = 0u32;
        for (i, n) in raw.classification.opportunity_stages.iter().enumerate() {
            opportunity_stages |= 1 << stage_of(format!("classification.opportunity_stages[{i}]"), n)?.0;
        }
        let opt_signal = |at: &str, n: &Option<String>| -> Result<Option<SignalId>, JourneyError> {
            n.as_deref().map(|n| signal_of(at.into(), n, &names)).transpose()
        };
        let page_signal = opt_signal("segment.page", &raw.segment.page)?;
        let screen_signal = opt_signal("segment.screen", &raw.segment.screen)?;
        let identify_signal = opt_signal("segment.identify", &raw.segment.identify)?;

        let min_event_time = parse_rfc3339(raw.time.min_event_time.trim()).map_err(|e| {
            invalid("time.min_event_time", format!("`{}` is not an RFC 3339 time: {e}", raw.time.min_event_time))
        })?;
        let max_event_time = parse_rfc3339(raw.time.max_event_time.trim()).map_err(|e| {
            invalid("time.max_event_time", format!("`{}` is not an RFC 3339 time: {e}", raw.time.max_event_time))
        })?;
        if max_event_time <= min_event_time {
            return Err(invalid("time.max_event_time", "must be later than `time.min_event_time`"));
        }
        let mut placeholder_ids = Vec::with_capacity(raw.identity.placeholder_ids.len());
        for (i, p) in raw.identity.placeholder_ids.iter().enumerate() {
            let p = p.trim();
            if p.is_empty() {
                return Err(invalid(
                    format!("identity.placeholder_ids[{i}]"),
                    "must not be blank (blank ids already count as absent)",
                ));
            }
            placeholder_ids.push(p.to_string());
        }
        let placeholder_max_len = placeholder_ids.iter().map(String::len).max().unwrap_or(0);

        let half_life = Span::from_days(positive("scoring", "half_life_days", raw.scoring.half_life_days)?);
        Ok(Journey {
            name: raw.name,
            description: raw.description,
            stages,
            signals,
            hot_rules,
            decay_rate: std::f64::consts::LN_2 / half_life.0 as f64,
            half_life,
            max_score: positive("scoring", "max_score", raw.scoring.max_score)?,
            allowed_lateness: Span::from_hours(lateness_hours(raw.time.allowed_lateness_hours)?),
            max_ahead: Span::from_hours(positive("time", "max_ahead_hours", raw.time.max_ahead_hours)?),
            dedup_window: Span::from_hours(non_negative("time", "dedup_hours", raw.time.dedup_hours)?),
            outcome_correction: Span::from_hours(non_negative(
                "time",
                "outcome_correction_hours",
                raw.time.outcome_correction_hours,
            )?),
            alert_cooldown: Span::from_hours(non_negative("hot", "cooldown_hours", raw.hot.cooldown_hours)?),
            hot_for: Span::from_days(positive("hot", "hot_for_days", raw.hot.hot_for_days)?),
            ghost,
            stall,
            opportunity_stages,
            page_signal,
            screen_signal,
            identify_signal,
            unmapped: raw.segment.unmapped_events,
            min_event_time,
            max_event_time,
            placeholder_ids,
            placeholder_max_len,
            tracked,
            names,
        })
    }

    /// Maps an event to its signal: page/screen/identify calls by the `[segment]` table, named
    /// events by signal name or alias, tolerant of case and separators. Segment `group` and
    /// `alias` calls map to no signal.
    pub fn resolve(&self, kind: EventKind, name: &str) -> Option<SignalId> {
        match kind {
            EventKind::Page => self.page_signal,
            EventKind::Screen => self.screen_signal,
            EventKind::Identify => self.identify_signal,
            EventKind::Group | EventKind::Alias => None,
            EventKind::Named => self.lookup(name),
        }
    }

    /// Signal by name or alias, compared by [`match_key`]. Names as declared hit at once; other
    /// ASCII spellings build their key on the stack; neither allocates.
    pub fn lookup(&self, name: &str) -> Option<SignalId> {
        if let Some(&s) = self.names.get(name) {
            return Some(s);
        }
        if name.is_ascii() && name.len() <= STACK_KEY {
            let mut buf = [0u8; STACK_KEY];
            let mut n = 0;
            for b in name.bytes().filter(u8::is_ascii_alphanumeric) {
                buf[n] = b.to_ascii_lowercase();
                n += 1;
            }
            // Only ASCII letters and digits were written.
            let key = std::str::from_utf8(&buf[..n]).ok()?;
            return self.names.get(key).copied();
        }
        let mut key = String::with_capacity(name.len());
        match_key(name, &mut key);
        self.names.get(&key).copied()
    }

    /// True when `id` (surrounding whitespace ignored, ASCII case ignored) is one of
    /// `[identity] placeholder_ids`: a value broken tracking code sends instead of an id.
    pub fn is_placeholder_id(&self, id: &str) -> bool {
        let id = id.trim();
        id.len() <= self.placeholder_max_len && self.placeholder_ids.iter().any(|p| p.eq_ignore_ascii_case(id))
    }

    pub fn signal(&self, id: SignalId) -> &SignalDef {
        &self.signals[id.0 as usize]
    }

    pub fn stage(&self, id: StageId) -> &StageDef {
        &self.stages[id.0 as usize]
    }

    pub fn stage_by_name(&self, name: &str) -> Option<StageId> {
        self.stages.iter().position(|s| s.name == name).map(|i| StageId(i as u8))
    }

    pub fn first_stage(&self) -> StageId {
        StageId(0)
    }
}
