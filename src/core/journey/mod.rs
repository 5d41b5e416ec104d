//! The journey definition: stages of the customer's buying journey, the signals that mark them,
//! scoring, hot rules (micro-certainties), silence timers and classification. Loaded from TOML
//! and validated once; the engine only ever sees a valid `Journey`.

mod raw;
mod schema;
mod validate;

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use serde::Deserialize;

use super::event::{EventKind, Source};
use super::prospect::Classification;
use super::time::{Span, Ts};
pub use crate::core::suggest::suggest;
pub use raw::{DEFAULT_MAX_EVENT_TIME, DEFAULT_MIN_EVENT_TIME, DEFAULT_PLACEHOLDER_IDS};

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
    /// An unknown key, a value of the wrong type, an unknown value of a fixed set.
    #[error("{at}: {problem}")]
    Schema { at: String, problem: String },
    #[error("{at}: missing; this key is required")]
    Missing { at: String },
    #[error("{at}: {problem}")]
    Invalid { at: String, problem: String },
    #[error("{at}: unknown signal `{name}`{hint}")]
    UnknownSignal { at: String, name: String, hint: String },
    #[error("{at}: unknown stage `{name}`{hint}; known stages: {known}")]
    UnknownStage { at: String, name: String, hint: String, known: String },
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

/// Every mistake found in one journey file (what the file's shape gets wrong first, then what
/// its values get wrong), one per line when displayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JourneyErrors(pub Vec<JourneyError>);

impl std::fmt::Display for JourneyErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for JourneyErrors {}

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
    /// `next_commitment_for`: per classification (in the order of `Classification::ALL`), empty
    /// where not set.
    pub next_commitment_for: [String; 3],
    pub terminal: bool,
    pub outcome: Option<Outcome>,
    /// Signals that move a prospect out of this stage again, back to the stage the signal
    /// enters: a lost deal the CRM reopens (a terminal stage), a churned customer won back (a
    /// stage after the sale; the signal enters an earlier stage).
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
    /// How strong the rule is: an alert of a rule with a higher priority than the rule of the
    /// prospect's last alert goes out within that alert's cooldown (a weaker or equal one is
    /// suppressed). Default [`HotRule::default_priority`].
    pub priority: u8,
}

impl HotRule {
    /// A rule's priority when the journey does not set one: a sequence rule (a signal within a
    /// window after another) 20, a signal rule 10, a score rule 0.
    pub fn default_priority(condition: &HotCondition) -> u8 {
        match condition {
            HotCondition::ScoreAtLeast(_) => 0,
            HotCondition::Signal { after: None, .. } => 10,
            HotCondition::Signal { after: Some(_), .. } => 20,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct GhostRule {
    pub after: SignalId,
    pub window: Span,
}

/// Gone quiet: no prospect-initiated signal within the window after the last one (or after
/// entering the stage, if later) while in a watched stage.
#[derive(Clone, Copy, Debug)]
pub struct QuietRule {
    pub window: Span,
    /// Bit `i` set: stage `i` is watched.
    pub stages: u32,
}

/// `[retention]`: a prospect with no event for its stage's span of event time leaves memory
/// (an anonymous one after its own span, when the journey sets one); a shard holds at most
/// `max_prospects` (the least recently active leave first).
#[derive(Clone, Debug, Default)]
pub struct Retention {
    /// Per stage (by `StageId`): the span without events after which a known prospect in that
    /// stage leaves memory; `None`: never. Empty when `[retention]` sets no span of either kind.
    pub after: Vec<Option<Span>>,
    /// The same for anonymous prospects (`[retention.anonymous]`, else `anonymous_after_days`,
    /// else the known span); empty when `after` is.
    pub anonymous: Vec<Option<Span>>,
    /// `max_prospects_per_shard`.
    pub max_prospects: Option<u32>,
}

impl Retention {
    /// How long a known prospect in `stage` stays without events (`None`: for ever).
    pub fn after(&self, stage: StageId) -> Option<Span> {
        self.after.get(stage.0 as usize).copied().flatten()
    }

    /// How long a prospect in `stage` stays without events, anonymous or known.
    pub fn after_for(&self, stage: StageId, anonymous: bool) -> Option<Span> {
        let spans = if anonymous { &self.anonymous } else { &self.after };
        spans.get(stage.0 as usize).copied().flatten()
    }

    /// Whether any stage expires (for known or anonymous prospects).
    pub fn expires(&self) -> bool {
        self.after.iter().chain(&self.anonymous).any(Option::is_some)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct StallRule {
    pub window: Span,
    /// Bit `i` set: stage `i` is watched.
    pub stages: u32,
}

/// A `[[segment.pages]]` rule: a page or screen call whose fields match every pattern the rule
/// sets raises `signal` instead of the `[segment]` default. Patterns are globs (`*`, `?`,
/// `[abc]`), matched ignoring ASCII case.
#[derive(Clone, Debug)]
pub struct PageRule {
    pub signal: SignalId,
    pub name: Option<glob::Pattern>,
    pub category: Option<glob::Pattern>,
    /// Matched against `properties.path`, else the path of `properties.url`.
    pub path: Option<glob::Pattern>,
    pub url: Option<glob::Pattern>,
}

/// The fields of a Segment page or screen call that `[[segment.pages]]` rules look at.
#[derive(Clone, Copy, Debug, Default)]
pub struct PageFields<'a> {
    pub name: Option<&'a str>,
    pub category: Option<&'a str>,
    pub path: Option<&'a str>,
    pub url: Option<&'a str>,
}

impl PageFields<'_> {
    /// `path`, or the path of `url` (`https://host/pricing?x` -> `/pricing`).
    fn path(&self) -> Option<&str> {
        self.path.or_else(|| {
            let url = self.url?;
            let rest = url.split_once("://").map_or(url, |(_, r)| r);
            let path = &rest[rest.find('/')?..];
            Some(path.split(['?', '#']).next().unwrap_or(path))
        })
    }
}

impl PageRule {
    fn matches(&self, f: &PageFields) -> bool {
        const OPTS: glob::MatchOptions = glob::MatchOptions {
            case_sensitive: false,
            require_literal_separator: false,
            require_literal_leading_dot: false,
        };
        let ok = |p: &Option<glob::Pattern>, v: Option<&str>| match p {
            None => true,
            Some(p) => v.is_some_and(|v| p.matches_with(v, OPTS)),
        };
        ok(&self.name, f.name) && ok(&self.category, f.category) && ok(&self.path, f.path()) && ok(&self.url, f.url)
    }
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
    pub quiet: Option<QuietRule>,
    /// Bit `i` set: a prospect in stage `i` is a current opportunity.
    pub opportunity_stages: u32,
    /// `[classification] next_commitment`: per classification (in the order of
    /// `Classification::ALL`), empty where not set.
    pub next_commitment_for: [String; 3],
    pub page_signal: Option<SignalId>,
    pub screen_signal: Option<SignalId>,
    pub identify_signal: Option<SignalId>,
    /// `[[segment.pages]]`, in file order; the first match wins.
    pub page_rules: Vec<PageRule>,
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
    /// The list holds `0`: ids of zeros and dashes are placeholders too.
    zero_ids: bool,
    /// `[identity] resolve = true`: identity resolution within a shard, with these guards.
    pub identity: Option<crate::core::identity::IdentityLimits>,
    /// `[identity] transfer_dedup_days`: how long (event time, past the watermark when it left
    /// memory) a shard keeps the transfer generation of an id's freed record, so a transfer
    /// delivered again within it still counts once (an id homed on the shard: twice as long).
    pub transfer_dedup: Span,
    /// `[breakdowns]`: the dimensions and segments the funnel is split by (empty: none).
    pub breakdowns: Vec<crate::core::breakdown::Dimension>,
    /// `[crm]`: CRM object changes that are signals (see [`crate::core::crm`]).
    pub crm: crate::core::crm::CrmTable,
    /// `[insight] alert_horizon_days`: a hot rule's match counts toward its precision and
    /// capture when the win came within this span after it.
    pub alert_horizon: Span,
    /// `[insight] score_bands`: ascending lower bounds; band 0 is below the first bound, band
    /// `k` from bound `k - 1` (inclusive) to bound `k`.
    pub score_bands: Vec<f64>,
    /// `[retention]`: when prospects leave memory (off unless configured).
    pub retention: Retention,
    /// Number of per-prospect "last seen" slots (`SignalDef::tracked_slot`).
    pub tracked: usize,
    names: Names,
}

/// Most `[insight] score_bands` bounds a journey may name.
pub const MAX_SCORE_BANDS: usize = 16;

impl Journey {
    /// The score band (index into `score_bands` + 1 bands) a score falls in.
    pub fn score_band(&self, score: f64) -> usize {
        self.score_bands.iter().take_while(|&&b| score >= b).count()
    }
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

impl Journey {
    /// Parses and validates a journey from TOML text; the first mistake found.
    pub fn from_toml_str(text: &str) -> Result<Journey, JourneyError> {
        Self::parse(text).map_err(|e| e.0.into_iter().next().unwrap_or(JourneyError::Toml("cannot be read".into())))
    }

    /// Parses and validates a journey from TOML text; every mistake found.
    pub fn parse(text: &str) -> Result<Journey, JourneyErrors> {
        let mut errors = schema::Errors::default();
        let journey = schema::read(text, &mut errors).map(|raw| Self::validate(raw, &mut errors));
        match journey {
            Some(j) if errors.list.is_empty() => Ok(j),
            _ => Err(JourneyErrors(errors.list)),
        }
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

    /// Maps a page or screen call by the first `[[segment.pages]]` rule its fields match, else
    /// by the `[segment]` default of its kind.
    pub fn resolve_page(&self, kind: EventKind, fields: &PageFields) -> Option<SignalId> {
        match self.page_rules.iter().find(|r| r.matches(fields)) {
            Some(r) => Some(r.signal),
            None => self.resolve(kind, ""),
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
    /// `[identity] placeholder_ids`: a value broken tracking code sends instead of an id. When the
    /// list holds `0`, every id made only of zeros and dashes (`000`, a zeroed UUID) is one too.
    pub fn is_placeholder_id(&self, id: &str) -> bool {
        let id = id.trim();
        if id.len() <= self.placeholder_max_len && self.placeholder_ids.iter().any(|p| p.eq_ignore_ascii_case(id)) {
            return true;
        }
        id.starts_with('0') && self.zero_ids && id.bytes().all(|b| b == b'0' || b == b'-')
    }

    pub fn signal(&self, id: SignalId) -> &SignalDef {
        &self.signals[id.0 as usize]
    }

    pub fn stage(&self, id: StageId) -> &StageDef {
        &self.stages[id.0 as usize]
    }

    /// The next micro-commitment to ask of a prospect in `stage` classified `class`: the
    /// stage's text for the classification, else the stage's text, else the journey's text for
    /// the classification (empty if none applies).
    pub fn next_commitment(&self, stage: StageId, class: Classification) -> &str {
        let c = Classification::ALL.iter().position(|k| *k == class).unwrap_or(0);
        let st = self.stage(stage);
        [&st.next_commitment_for[c], &st.next_commitment, &self.next_commitment_for[c]]
            .into_iter()
            .find(|t| !t.is_empty())
            .map_or("", String::as_str)
    }

    pub fn stage_by_name(&self, name: &str) -> Option<StageId> {
        self.stages.iter().position(|s| s.name == name).map(|i| StageId(i as u8))
    }

    pub fn first_stage(&self) -> StageId {
        StageId(0)
    }
}
