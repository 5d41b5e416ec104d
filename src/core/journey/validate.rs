//! `Journey::validate`: checks a `RawJourney` (the file as written) and builds the `Journey` the
//! engine runs on. Every mistake is reported (to `Errors`), each by its key path; the journey
//! built alongside is only used when there were none.

use std::collections::HashMap;

use super::raw::{RawJourney, RawStage, RawStalled};
use super::schema::Errors;
use super::{
    GhostRule, HotCondition, HotRule, Journey, JourneyError, MAX_HOT_RULES, MAX_SIGNALS, MAX_STAGES, MAX_TRACKED,
    Names, PageRule, QuietRule, Retention, SignalDef, SignalId, SignalSource, StageDef, StageId, StallRule, match_key,
    normalize_name,
};
use crate::core::breakdown::Dimension;
use crate::core::suggest::did_you_mean;
use crate::core::time::{Span, Ts, parse_rfc3339};

impl Errors {
    /// `v` if it is a positive number, else reported (and 1.0 stands in).
    fn positive(&mut self, at: &str, what: &str, v: f64) -> f64 {
        if v.is_finite() && v > 0.0 {
            v
        } else {
            self.invalid(at, format!("`{what}` must be a positive number, got {v}"));
            1.0
        }
    }

    /// `v` if it is zero or more, else reported (and 0.0 stands in).
    fn non_negative(&mut self, at: &str, what: &str, v: f64) -> f64 {
        if v.is_finite() && v >= 0.0 {
            v
        } else {
            self.invalid(at, format!("`{what}` must be zero or more, got {v}"));
            0.0
        }
    }

    fn time(&mut self, key: &str, text: &str) -> Ts {
        parse_rfc3339(text.trim()).unwrap_or_else(|e| {
            self.invalid(format!("time.{key}"), format!("`{text}` is not an RFC 3339 time: {e}"));
            Ts(0)
        })
    }
}

/// Stage names, for lookups with a "did you mean".
struct Stages<'a> {
    ix: HashMap<&'a str, StageId>,
    known: String,
}

impl Stages<'_> {
    fn of(&self, e: &mut Errors, at: String, name: &str) -> Option<StageId> {
        let found = self.ix.get(name).copied();
        if found.is_none() {
            e.add(JourneyError::UnknownStage {
                at,
                name: name.to_string(),
                hint: did_you_mean(name, self.ix.keys().copied()),
                known: self.known.clone(),
            });
        }
        found
    }
}

/// Signal names and aliases, for lookups with a "did you mean".
struct SignalNames<'a> {
    names: Names,
    written: Vec<&'a str>,
}

impl SignalNames<'_> {
    fn of(&self, e: &mut Errors, at: String, name: &str) -> Option<SignalId> {
        let mut k = String::new();
        match_key(name, &mut k);
        let found = self.names.get(&k).copied();
        if found.is_none() {
            let hint = match did_you_mean(name, self.written.iter().copied()) {
                h if h.is_empty() => "; declare it under [[signals]] first".to_string(),
                h => h,
            };
            e.add(JourneyError::UnknownSignal { at, name: name.to_string(), hint });
        }
        found
    }
}

fn stages<'a>(raw: &'a [RawStage], e: &mut Errors) -> Stages<'a> {
    if raw.is_empty() {
        e.invalid("stages", "declare at least one [[stages]] entry");
    }
    let mut ix = HashMap::new();
    let mut prev: Option<(&str, u32)> = None;
    for (i, s) in raw.iter().enumerate() {
        if e.need_name(&s.name, &format!("stages[{i}].name")) && ix.insert(s.name.as_str(), StageId(i as u8)).is_some()
        {
            e.add(JourneyError::DuplicateStage { index: i, name: s.name.clone() });
        }
        if let Some(order) = e.need(s.order, &format!("stages[{i}].order")) {
            if let Some((p, prev_order)) = prev
                && order <= prev_order
            {
                e.add(JourneyError::NonIncreasingOrder {
                    index: i,
                    name: s.name.clone(),
                    order,
                    prev: p.to_string(),
                    prev_order,
                });
            }
            prev = Some((s.name.as_str(), order));
        }
    }
    if raw.first().is_some_and(|s| s.terminal) {
        e.invalid("stages[0]", "the first stage is where every prospect starts; it cannot be terminal");
    }
    if let Some(s) = raw.first()
        && s.outcome.is_some()
    {
        e.invalid(format!("stages[0] (`{}`)", s.name), "the first stage cannot carry an outcome");
    }
    let known = raw.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ");
    Stages { ix, known }
}

fn signals<'a>(raw: &'a RawJourney, e: &mut Errors) -> (Vec<SignalDef>, SignalNames<'a>) {
    if raw.signals.is_empty() {
        e.invalid("signals", "declare at least one [[signals]] entry");
    }
    let mut names = Names::default();
    let (mut key, mut shown) = (String::new(), String::new());
    let mut defs = Vec::with_capacity(raw.signals.len());
    for (i, s) in raw.signals.iter().take(MAX_SIGNALS).enumerate() {
        let at = format!("signals[{i}] (`{}`)", s.name);
        let id = SignalId(i as u16);
        if e.need_name(&s.name, &format!("signals[{i}].name")) {
            for n in std::iter::once(&s.name).chain(&s.aliases) {
                match_key(n, &mut key);
                if key.is_empty() {
                    e.invalid(&at, format!("name or alias `{n}` has no letters or digits"));
                    continue;
                }
                // The name as written also hits without building its key.
                if key != *n {
                    names.insert(n.clone(), id);
                }
                if let Some(prev) = names.insert(key.clone(), id)
                    && prev != id
                {
                    normalize_name(n, &mut shown);
                    e.add(JourneyError::DuplicateSignal {
                        index: i,
                        name: n.clone(),
                        key: shown.clone(),
                        first: format!("signals[{}] (`{}`)", prev.0, raw.signals[prev.0 as usize].name),
                    });
                }
            }
        }
        let source = e.need(s.source, &format!("signals[{i}].source"));
        let weight = e.need(s.weight, &format!("signals[{i}].weight"));
        let prospect_initiated = e.need(s.prospect_initiated, &format!("signals[{i}].prospect_initiated"));
        if weight.is_some_and(|w| !w.is_finite()) {
            e.invalid(&at, "`weight` must be a finite number");
        }
        defs.push(SignalDef {
            name: s.name.clone(),
            source: source.unwrap_or(SignalSource::Any),
            weight: weight.unwrap_or(0.0),
            cap: s.cap.map(|c| e.positive(&at, "cap", c)),
            prospect_initiated: prospect_initiated.unwrap_or(false),
            disqualifies: s.disqualifies,
            enters: None,
            tracked_slot: None,
        });
    }
    let written = raw.signals.iter().flat_map(|s| std::iter::once(&s.name).chain(&s.aliases)).map(String::as_str);
    (defs, SignalNames { names, written: written.collect() })
}

/// Stage definitions, with each signal's `enters` set from `entered_by`.
fn stage_defs(raw: &[RawStage], signals: &mut [SignalDef], names: &SignalNames, e: &mut Errors) -> Vec<StageDef> {
    let mut defs = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let at = format!("stages[{i}] (`{}`).entered_by", s.name);
        for n in &s.entered_by {
            let Some(sig) = names.of(e, at.clone(), n) else { continue };
            let def = &mut signals[sig.0 as usize];
            match def.enters {
                Some(prev) if prev == StageId(i as u8) => {
                    e.invalid(&at, format!("lists `{n}` twice; list each signal once"));
                }
                Some(prev) => e.add(JourneyError::SignalInTwoStages {
                    signal: def.name.clone(),
                    first: raw[prev.0 as usize].name.clone(),
                    second: s.name.clone(),
                }),
                None => def.enters = Some(StageId(i as u8)),
            }
        }
        let mut reopen_on = Vec::with_capacity(s.reopen_on.len());
        for (k, n) in s.reopen_on.iter().enumerate() {
            let at = format!("stages[{i}] (`{}`).reopen_on[{k}]", s.name);
            reopen_on.extend(names.of(e, at, n));
        }
        defs.push(StageDef {
            name: s.name.clone(),
            order: s.order.unwrap_or(0),
            next_commitment: s.next_commitment.clone(),
            next_commitment_for: s.next_commitment_for.texts(),
            terminal: s.terminal,
            outcome: s.outcome,
            reopen_on,
        });
    }
    for (i, st) in defs.iter().enumerate() {
        if i > 0 && !signals.iter().any(|s| s.enters == Some(StageId(i as u8))) {
            e.invalid(
                format!("stages[{i}] (`{}`)", st.name),
                "no signal enters this stage, so no prospect can reach it; list signals under its `entered_by`",
            );
        }
        for (k, sig) in st.reopen_on.iter().enumerate() {
            let def = &signals[sig.0 as usize];
            let earlier = def.enters.and_then(|to| defs.get(to.0 as usize)).is_some_and(|d| d.order < st.order);
            if !st.terminal && !earlier {
                e.invalid(
                    format!("stages[{i}] (`{}`).reopen_on[{k}]", st.name),
                    format!(
                        "signal `{}` does not enter an earlier stage, so it cannot move a prospect back out of this one; list a signal of an earlier stage's `entered_by`",
                        def.name
                    ),
                );
            } else if def.enters.is_none_or(|to| defs.get(to.0 as usize).is_none_or(|d| d.terminal)) {
                e.invalid(
                    format!("stages[{i}] (`{}`).reopen_on[{k}]", st.name),
                    format!(
                        "signal `{}` enters no non-terminal stage, so it cannot say where a reopened prospect goes; list it under a stage's `entered_by` or remove it here",
                        def.name
                    ),
                );
            }
        }
    }
    defs
}

/// The hot rules and the number of "last seen" slots their `after` signals need.
fn hot_rules(
    raw: &RawJourney,
    signals: &mut [SignalDef],
    names: &SignalNames,
    max_score: f64,
    e: &mut Errors,
) -> (Vec<HotRule>, usize) {
    if raw.hot_rules.len() > MAX_HOT_RULES {
        e.invalid("hot_rules", format!("at most {MAX_HOT_RULES} hot rules are supported"));
    }
    // The most points any prospect can hold, when every signal that adds points is capped.
    let reachable = signals
        .iter()
        .filter(|s| s.weight > 0.0)
        .map(|s| s.cap.map(|c| c.min(max_score)))
        .sum::<Option<f64>>()
        .map_or(max_score, |sum| sum.min(max_score));
    let mut tracked = 0usize;
    let mut rules = Vec::with_capacity(raw.hot_rules.len());
    let mut rule_names: HashMap<&str, usize> = HashMap::new();
    for (i, r) in raw.hot_rules.iter().take(MAX_HOT_RULES).enumerate() {
        let at = format!("hot_rules[{i}] (`{}`)", r.name);
        if e.need_name(&r.name, &format!("hot_rules[{i}].name")) && rule_names.insert(r.name.as_str(), i).is_some() {
            e.invalid(&at, "rule name is used twice; alert ids are derived from it");
        }
        if r.reason.trim().is_empty() {
            e.invalid(&at, "`reason` must say in words why the prospect is hot");
        }
        let condition = match (r.score_at_least, &r.signal) {
            (Some(t), None) => {
                if r.after.is_some() || r.within_days.is_some() {
                    e.invalid(&at, "`after`/`within_days` only go with `signal`, not `score_at_least`");
                }
                let t = e.positive(&at, "score_at_least", t);
                if t > reachable {
                    let why = if reachable < max_score {
                        format!("the caps of the signals that add points sum to {reachable}")
                    } else {
                        format!("scores are clamped to scoring.max_score = {max_score}")
                    };
                    e.invalid(
                        format!("{at}.score_at_least"),
                        format!("{t} can never be reached ({why}); the rule can never fire"),
                    );
                }
                Some(HotCondition::ScoreAtLeast(t))
            }
            (None, Some(sig)) => {
                let signal = names.of(e, format!("{at}.signal"), sig);
                let after = match (&r.after, r.within_days) {
                    (Some(a), Some(d)) => {
                        let window = Span::from_days(e.positive(&at, "within_days", d));
                        names.of(e, format!("{at}.after"), a).map(|a| {
                            let def = &mut signals[a.0 as usize];
                            if def.tracked_slot.is_none() {
                                if tracked == MAX_TRACKED {
                                    e.invalid(
                                        &at,
                                        format!("at most {MAX_TRACKED} distinct `after` signals are supported"),
                                    );
                                } else {
                                    def.tracked_slot = Some(tracked as u8);
                                    tracked += 1;
                                }
                            }
                            (a, window)
                        })
                    }
                    (None, None) => None,
                    _ => {
                        e.invalid(&at, "`after` and `within_days` go together: set both or neither");
                        None
                    }
                };
                signal.map(|signal| HotCondition::Signal { signal, after })
            }
            _ => {
                e.invalid(&at, "set exactly one of `score_at_least` or `signal`");
                None
            }
        };
        if let Some(condition) = condition {
            let priority = r.priority.unwrap_or_else(|| HotRule::default_priority(&condition));
            rules.push(HotRule { name: r.name.clone(), reason: r.reason.clone(), condition, priority });
        }
    }
    (rules, tracked)
}

/// Most `[[segment.pages]]` rules; each page call may try all of them.
const MAX_PAGE_RULES: usize = 256;

fn page_rules(raw: &RawJourney, names: &SignalNames, e: &mut Errors) -> Vec<PageRule> {
    let pages = &raw.segment.pages;
    if pages.len() > MAX_PAGE_RULES {
        e.invalid("segment.pages", format!("at most {MAX_PAGE_RULES} page rules are supported"));
    }
    let mut rules = Vec::with_capacity(pages.len());
    for (i, r) in pages.iter().take(MAX_PAGE_RULES).enumerate() {
        let at = format!("segment.pages[{i}]");
        let signal = if e.need_name(&r.signal, &format!("{at}.signal")) {
            names.of(e, format!("{at}.signal"), &r.signal)
        } else {
            None
        };
        let mut pattern = |key: &str, p: &Option<String>| {
            p.as_deref().and_then(|p| match glob::Pattern::new(p) {
                Ok(p) => Some(p),
                Err(err) => {
                    e.invalid(format!("{at}.{key}"), format!("`{p}` is not a pattern: {err}"));
                    None
                }
            })
        };
        let (name, category) = (pattern("name", &r.name), pattern("category", &r.category));
        let (path, url) = (pattern("path", &r.path), pattern("url", &r.url));
        if [&r.name, &r.category, &r.path, &r.url].iter().all(|p| p.is_none()) {
            e.invalid(
                &at,
                "set at least one of `name`, `category`, `path`, `url` (without one the rule matches every page)",
            );
        }
        if let Some(signal) = signal {
            rules.push(PageRule { signal, name, category, path, url });
        }
    }
    rules
}

impl Journey {
    pub(super) fn validate(raw: RawJourney, e: &mut Errors) -> Journey {
        e.need_name(&raw.name, "name");
        if raw.stages.len() > MAX_STAGES {
            e.invalid("stages", format!("at most {MAX_STAGES} stages are supported"));
        }
        if raw.signals.len() > MAX_SIGNALS {
            e.invalid("signals", format!("at most {MAX_SIGNALS} signals are supported"));
        }
        let raw_stages = &raw.stages[..raw.stages.len().min(MAX_STAGES)];
        let stage_names = stages(raw_stages, e);
        let (mut signals, names) = signals(&raw, e);
        let stages = stage_defs(raw_stages, &mut signals, &names, e);

        let scoring = e.need(raw.scoring.as_ref(), "scoring");
        let half_life = scoring.and_then(|s| e.need(s.half_life_days, "scoring.half_life_days"));
        let half_life = Span::from_days(half_life.map_or(1.0, |d| e.positive("scoring", "half_life_days", d)));
        let max_score = scoring.map_or(1.0, |s| e.positive("scoring", "max_score", s.max_score));
        let (hot_rules, tracked) = hot_rules(&raw, &mut signals, &names, max_score, e);

        let hot = e.need(raw.hot.as_ref(), "hot");
        let cooldown = hot.and_then(|h| e.need(h.cooldown_hours, "hot.cooldown_hours"));
        let hot_for = hot.and_then(|h| e.need(h.hot_for_days, "hot.hot_for_days"));

        let ghost = raw.ghosted.as_ref().and_then(|g| {
            let days = e.need(g.days, "ghosted.days").map(|d| e.positive("ghosted", "days", d));
            let after = if e.need_name(&g.after, "ghosted.after") {
                names.of(e, "ghosted.after".into(), &g.after)
            } else {
                None
            };
            Some(GhostRule { after: after?, window: Span::from_days(days?) })
        });
        let mut watched = |table: &str, s: &RawStalled| {
            let days = e.need(s.days, &format!("{table}.days")).map(|d| e.positive(table, "days", d));
            if s.stages.is_empty() {
                e.invalid(format!("{table}.stages"), "list the stages it watches");
            }
            let mut mask = 0u32;
            for (i, n) in s.stages.iter().enumerate() {
                mask |= stage_names.of(e, format!("{table}.stages[{i}]"), n).map_or(0, |s| 1 << s.0);
            }
            Some((Span::from_days(days?), mask))
        };
        let stall = raw.stalled.as_ref().and_then(|s| watched("stalled", s));
        let stall = stall.map(|(window, stages)| StallRule { window, stages });
        let quiet = raw.gone_quiet.as_ref().and_then(|s| watched("gone_quiet", s));
        let quiet = quiet.map(|(window, stages)| QuietRule { window, stages });
        let mut opportunity_stages = 0u32;
        for (i, n) in raw.classification.opportunity_stages.iter().enumerate() {
            let at = format!("classification.opportunity_stages[{i}]");
            opportunity_stages |= stage_names.of(e, at, n).map_or(0, |s| 1 << s.0);
        }
        let seg = &raw.segment;
        let page_signal = seg.page.as_deref().and_then(|n| names.of(e, "segment.page".into(), n));
        let screen_signal = seg.screen.as_deref().and_then(|n| names.of(e, "segment.screen".into(), n));
        let identify_signal = seg.identify.as_deref().and_then(|n| names.of(e, "segment.identify".into(), n));
        let page_rules = page_rules(&raw, &names, e);

        let min_event_time = e.time("min_event_time", &raw.time.min_event_time);
        let max_event_time = e.time("max_event_time", &raw.time.max_event_time);
        if max_event_time <= min_event_time {
            e.invalid("time.max_event_time", "must be later than `time.min_event_time`");
        }
        let mut placeholder_ids = Vec::with_capacity(raw.identity.placeholder_ids.len());
        for (i, p) in raw.identity.placeholder_ids.iter().enumerate() {
            let p = p.trim();
            if p.is_empty() {
                e.invalid(
                    format!("identity.placeholder_ids[{i}]"),
                    "must not be blank (blank ids already count as absent)",
                );
            }
            placeholder_ids.push(p.to_string());
        }
        let placeholder_max_len = placeholder_ids.iter().map(String::len).max().unwrap_or(0);
        let zero_ids = placeholder_ids.iter().any(|p| p == "0");
        for (key, v) in
            [("max_known_ids", raw.identity.max_known_ids), ("max_anonymous_ids", raw.identity.max_anonymous_ids)]
        {
            if v == 0 {
                e.invalid(format!("identity.{key}"), "must be at least 1");
            }
        }
        let dedup_days = raw.identity.transfer_dedup_days;
        if !(dedup_days.is_finite() && dedup_days > 0.0 && dedup_days <= MAX_RETENTION_DAYS) {
            e.invalid(
                "identity.transfer_dedup_days",
                format!(
                    "must be a positive number of days, at most {MAX_RETENTION_DAYS}, got {dedup_days}; leave it out for \
                     the default of 7 days, or set the longest time (event time) a transfer of the identity topic may \
                     be delivered again after its person left memory"
                ),
            );
        }
        let transfer_dedup =
            Span::from_days(if dedup_days.is_finite() { dedup_days.clamp(0.0, MAX_RETENTION_DAYS) } else { 0.0 });
        let identity = raw.identity.resolve.then_some(crate::core::identity::IdentityLimits {
            max_known_ids: raw.identity.max_known_ids,
            max_anonymous_ids: raw.identity.max_anonymous_ids,
        });
        let lateness = e.non_negative("time", "allowed_lateness_hours", raw.time.allowed_lateness_hours);
        // At most 1,000,000 hours (114 years): beyond that nothing is ever late anyway.
        if lateness > 1_000_000.0 {
            e.invalid("time", format!("`allowed_lateness_hours` must be at most 1000000, got {lateness}"));
        }

        let crm = crate::core::crm::CrmTable::validate(raw.crm.clone(), |at, n| {
            let mut k = String::new();
            match_key(n, &mut k);
            names.names.get(&k).copied().ok_or_else(|| JourneyError::UnknownSignal {
                at,
                name: n.to_string(),
                hint: did_you_mean(n, names.written.iter().copied()),
            })
        })
        .unwrap_or_else(|err| {
            e.add(err);
            crate::core::crm::CrmTable::default()
        });

        let horizon = e.positive("insight", "alert_horizon_days", raw.insight.alert_horizon_days);
        let bands = &raw.insight.score_bands;
        if bands.len() > super::MAX_SCORE_BANDS {
            e.invalid(
                "insight.score_bands",
                format!("at most {} bounds, got {}; merge neighbouring bands", super::MAX_SCORE_BANDS, bands.len()),
            );
        }
        if bands.iter().any(|b| !b.is_finite()) || bands.windows(2).any(|w| w[0] >= w[1]) {
            e.invalid("insight.score_bands", "must be finite numbers in strictly ascending order, e.g. [10, 25, 50]");
        }
        let breakdowns = breakdowns(&raw, &names, &stage_names, e);
        let retention = retention(&raw.retention, raw_stages.len(), &stage_names, e);

        Journey {
            name: raw.name.clone(),
            description: raw.description.clone(),
            stages,
            signals,
            hot_rules,
            decay_rate: std::f64::consts::LN_2 / half_life.0.max(1) as f64,
            half_life,
            max_score,
            allowed_lateness: Span::from_hours(lateness.min(1_000_000.0)),
            max_ahead: Span::from_hours(e.positive("time", "max_ahead_hours", raw.time.max_ahead_hours)),
            dedup_window: Span::from_hours(e.non_negative("time", "dedup_hours", raw.time.dedup_hours)),
            outcome_correction: Span::from_hours(e.non_negative(
                "time",
                "outcome_correction_hours",
                raw.time.outcome_correction_hours,
            )),
            alert_cooldown: Span::from_hours(cooldown.map_or(0.0, |c| e.non_negative("hot", "cooldown_hours", c))),
            hot_for: Span::from_days(hot_for.map_or(1.0, |h| e.positive("hot", "hot_for_days", h))),
            ghost,
            stall,
            quiet,
            opportunity_stages,
            next_commitment_for: raw.classification.next_commitment.texts(),
            page_signal,
            screen_signal,
            identify_signal,
            page_rules,
            unmapped: seg.unmapped_events,
            min_event_time,
            max_event_time,
            placeholder_ids,
            placeholder_max_len,
            zero_ids,
            identity,
            transfer_dedup,
            tracked,
            names: names.names,
            crm,
            alert_horizon: Span::from_days(horizon),
            score_bands: bands.iter().copied().take(super::MAX_SCORE_BANDS).collect(),
            breakdowns,
            retention,
        }
    }
}

/// Most dimensions and segments a journey may split its funnel by.
const MAX_DIMENSIONS: usize = 16;

/// `[breakdowns]`: dimensions and segments, each mistake reported by its key path.
fn breakdowns(raw: &RawJourney, names: &SignalNames, stages: &Stages, e: &mut Errors) -> Vec<Dimension> {
    use crate::core::breakdown::{Attribution, Field, MAX_VALUES_LIMIT, normalize};
    let b = &raw.breakdowns;
    let mut out = Vec::new();
    let limit = |e: &mut Errors, at: &str, v: usize, max: usize| {
        if v == 0 || v > max {
            e.invalid(at, format!("must be between 1 and {max}, got {v}"));
        }
    };
    limit(e, "breakdowns.top_k", b.top_k, MAX_VALUES_LIMIT);
    limit(e, "breakdowns.max_values", b.max_values, MAX_VALUES_LIMIT);
    if b.dimensions.len() + b.segments.len() > MAX_DIMENSIONS {
        e.invalid("breakdowns", format!("at most {MAX_DIMENSIONS} dimensions and segments together"));
    }
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut name_ok = |e: &mut Errors, at: String, name: &str| {
        if name.is_empty() {
            e.add(JourneyError::Missing { at: format!("{at}.name") });
        } else if !name.bytes().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_') {
            e.invalid(
                format!("{at}.name"),
                format!("`{name}`: use lower-case letters, digits and `_` (it is a metric label value and `?by=`)"),
            );
        } else if let Some(first) = seen.insert(name.to_string(), at.clone()) {
            e.invalid(
                format!("{at}.name"),
                format!("`{name}` is already the name of {first}; give each a unique name"),
            );
        }
    };
    for (i, d) in b.dimensions.iter().enumerate() {
        let at = format!("breakdowns.dimensions[{i}]");
        name_ok(e, at.clone(), &d.name);
        let field = Field::parse(&d.field);
        if field.is_none() {
            if d.field.is_empty() {
                e.add(JourneyError::Missing { at: format!("{at}.field") });
            } else {
                e.invalid(
                    format!("{at}.field"),
                    format!("unknown field `{}`; use one of {}", d.field, Field::NAMES.join(", ")),
                );
            }
        }
        let attribution = match (d.attribution.as_deref(), &d.at_stage) {
            (Some(_), Some(_)) => {
                e.invalid(
                    format!("{at}.at_stage"),
                    "set either `attribution` (first_touch, last_touch) or `at_stage`, not both",
                );
                None
            }
            (None | Some("first_touch"), None) => Some(Attribution::FirstTouch),
            (Some("last_touch"), None) => Some(Attribution::LastTouch),
            (Some(other), None) => {
                e.invalid(
                    format!("{at}.attribution"),
                    format!("unknown attribution `{other}`; use first_touch, last_touch, or `at_stage = \"<stage>\"`"),
                );
                None
            }
            (None, Some(stage)) => stages.of(e, format!("{at}.at_stage"), stage).map(Attribution::AtStage),
        };
        let top_k = d.top_k.unwrap_or(b.top_k);
        let max_values = d.max_values.unwrap_or(b.max_values);
        limit(e, &format!("{at}.top_k"), top_k, MAX_VALUES_LIMIT);
        limit(e, &format!("{at}.max_values"), max_values, MAX_VALUES_LIMIT);
        let mut allow: Vec<String> = Vec::with_capacity(d.allow.len());
        if d.allow.len() > MAX_VALUES_LIMIT {
            e.invalid(format!("{at}.allow"), format!("at most {MAX_VALUES_LIMIT} values"));
        }
        for (k, v) in d.allow.iter().enumerate() {
            let Some(f) = field.and_then(Field::touch_index) else { break };
            match normalize(f, std::borrow::Cow::Borrowed(v)) {
                None => e.invalid(format!("{at}.allow[{k}]"), "must not be blank or hold control characters"),
                Some(n) if allow.iter().any(|a| *a == n) => e.invalid(
                    format!("{at}.allow[{k}]"),
                    format!("`{n}` is listed twice (values are compared normalised)"),
                ),
                Some(n) => allow.push(n.into_owned()),
            }
        }
        if let (Some(field), Some(attribution)) = (field, attribution) {
            out.push(Dimension { name: d.name.clone(), field, attribution, top_k, max_values, allow });
        }
    }
    for (i, s) in b.segments.iter().enumerate() {
        let at = format!("breakdowns.segments[{i}]");
        name_ok(e, at.clone(), &s.name);
        let signal = if e.need_name(&s.signal, &format!("{at}.signal")) {
            names.of(e, format!("{at}.signal"), &s.signal)
        } else {
            None
        };
        let before = match &s.before_stage {
            Some(st) => stages.of(e, format!("{at}.before_stage"), st).map(Some),
            None => Some(None),
        };
        if let (Some(signal), Some(before)) = (signal, before) {
            out.push(Dimension {
                name: s.name.clone(),
                field: Field::Segment { signal, before },
                attribution: Attribution::FirstTouch,
                top_k: 1,
                max_values: 1,
                allow: Vec::new(),
            });
        }
    }
    out
}

/// Most prospects `[retention] max_prospects_per_shard` may allow (the interner's index limit).
const MAX_PROSPECTS_PER_SHARD: u64 = 100_000_000;

/// Longest `[retention]` span: a hundred years (longer would overflow event time).
const MAX_RETENTION_DAYS: f64 = 36_500.0;

/// `[retention]`: the default span, per-stage spans by stage name, the prospect cap.
fn retention(raw: &super::raw::RawRetention, stages: usize, stage_names: &Stages<'_>, e: &mut Errors) -> Retention {
    let days = |e: &mut Errors, at: &str, what: &str, d: f64| {
        if d.is_finite() && d > MAX_RETENTION_DAYS {
            e.invalid(
                at,
                format!("`{what}` must be at most {MAX_RETENTION_DAYS} days, got {d}; leave it out to keep prospects"),
            );
        }
        if !(d.is_finite() && d > 0.0) {
            e.invalid(
                at,
                format!(
                    "`{what}` must be a positive number of days, got {d}; leave it out to keep prospects in memory"
                ),
            );
            return MAX_RETENTION_DAYS;
        }
        d.min(MAX_RETENTION_DAYS)
    };
    let default = raw.after_days.map(|d| Span::from_days(days(e, "retention.after_days", "after_days", d)));
    let mut after = vec![default; stages];
    for (name, &d) in &raw.stages {
        let at = format!("retention.stages.{name}");
        let span = Span::from_days(days(e, &at, name, d));
        if let Some(s) = stage_names.of(e, at, name) {
            after[s.0 as usize] = Some(span);
        }
    }
    // Anonymous prospects: their stage's entry, else their default, else the known span.
    let anonymous_default = raw
        .anonymous_after_days
        .map(|d| Span::from_days(days(e, "retention.anonymous_after_days", "anonymous_after_days", d)));
    let mut anonymous: Vec<Option<Span>> = after.iter().map(|&a| anonymous_default.or(a)).collect();
    for (name, &d) in &raw.anonymous {
        let at = format!("retention.anonymous.{name}");
        if name == "after_days" {
            let fix = "this table takes stage names; for every stage write `anonymous_after_days` under [retention]";
            e.invalid(&at, fix.to_string());
            continue;
        }
        let span = Span::from_days(days(e, &at, name, d));
        if let Some(s) = stage_names.of(e, at, name) {
            anonymous[s.0 as usize] = Some(span);
        }
    }
    if after.iter().chain(&anonymous).all(Option::is_none) {
        after.clear();
        anonymous.clear();
    }
    let max_prospects = raw.max_prospects_per_shard.map(|n| {
        if !(1..=MAX_PROSPECTS_PER_SHARD).contains(&n) {
            e.invalid(
                "retention.max_prospects_per_shard",
                format!("must be between 1 and {MAX_PROSPECTS_PER_SHARD}, got {n}"),
            );
        }
        n.clamp(1, MAX_PROSPECTS_PER_SHARD) as u32
    });
    Retention { after, anonymous, max_prospects }
}
