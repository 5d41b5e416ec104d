//! `Journey::validate`: checks a `RawJourney` (the file as written) and builds the `Journey` the
//! engine runs on, or says what is wrong and where.

use std::collections::HashMap;

use super::raw::RawJourney;
use super::{
    GhostRule, HotCondition, HotRule, Journey, JourneyError, MAX_HOT_RULES, MAX_SIGNALS, MAX_STAGES, MAX_TRACKED,
    Names, SignalDef, SignalId, StageDef, StageId, StallRule, match_key, normalize_name,
};
use crate::core::time::{Span, parse_rfc3339};

fn invalid(at: impl Into<String>, problem: impl Into<String>) -> JourneyError {
    JourneyError::Invalid { at: at.into(), problem: problem.into() }
}

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
    pub(super) fn validate(raw: RawJourney) -> Result<Journey, JourneyError> {
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

        let crm = crate::core::crm::CrmTable::validate(raw.crm, |at, n| signal_of(at, n, &names))?;

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
            crm,
        })
    }
}
