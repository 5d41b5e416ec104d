//! `microfunnel check-journey NAME|FILE`: every mistake in a journey at once, or on success a
//! summary of what it does (stages, the signals that enter each, hot rules, timers).

use std::fmt::Write;
use std::path::PathBuf;

use clap::Args;

use microfunnel::core::Journey;
use microfunnel::core::journey::HotCondition;
use microfunnel::core::time::{MS_PER_DAY, MS_PER_HOUR, Span};

#[derive(Args)]
pub struct CheckJourneyArgs {
    /// The journey: a built-in journey's name (b2b, ecommerce, saas) or a TOML file.
    #[arg(value_name = "NAME|FILE", required_unless_present = "journey_flag")]
    journey: Option<PathBuf>,
    /// The same, as the other commands take it.
    #[arg(long = "journey", value_name = "NAME|FILE", id = "journey_flag", conflicts_with = "journey")]
    journey_flag: Option<PathBuf>,
}

pub fn run(args: CheckJourneyArgs) -> anyhow::Result<()> {
    let Some(path) = args.journey.or(args.journey_flag) else { anyhow::bail!("name the journey to check") };
    let journey = crate::load_journey(&path)?;
    std::io::Write::write_all(&mut std::io::stdout().lock(), summary(&journey).as_bytes())?;
    Ok(())
}

fn days(s: Span) -> String {
    let d = s.0 as f64 / MS_PER_DAY as f64;
    if d >= 1.0 || s.0 == 0 { format!("{d} days") } else { format!("{} hours", s.0 as f64 / MS_PER_HOUR as f64) }
}

/// What the journey does, in a few lines a person can check against their intent.
pub fn summary(j: &Journey) -> String {
    let mut o = String::new();
    let sig = |id: microfunnel::core::SignalId| j.signal(id).name.as_str();
    let _ = writeln!(o, "journey `{}` is valid: {}", j.name, j.description);
    let _ = writeln!(o, "stages ({}), entered forward only by their signals:", j.stages.len());
    for (i, st) in j.stages.iter().enumerate() {
        let entered: Vec<&str> =
            j.signals.iter().filter(|s| s.enters.is_some_and(|e| e.0 as usize == i)).map(|s| s.name.as_str()).collect();
        let mut notes = Vec::new();
        if i == 0 {
            notes.push("start".to_string());
        }
        if st.terminal {
            notes.push("terminal".into());
        }
        if let Some(outcome) = st.outcome {
            notes.push(format!("outcome {outcome:?}").to_lowercase());
        }
        if j.opportunity_stages & (1 << i) != 0 {
            notes.push("current opportunity".into());
        }
        let notes = if notes.is_empty() { String::new() } else { format!(" [{}]", notes.join(", ")) };
        let _ = writeln!(o, "  {:>4} {}{notes}: {}", st.order, st.name, entered.join(", "));
        if !st.reopen_on.is_empty() {
            let by: Vec<&str> = st.reopen_on.iter().map(|&s| sig(s)).collect();
            let _ = writeln!(o, "       reopened by: {}", by.join(", "));
        }
        if !st.next_commitment.is_empty() {
            let _ = writeln!(o, "       next: {}", st.next_commitment);
        }
    }
    let other: Vec<&str> = j.signals.iter().filter(|s| s.enters.is_none()).map(|s| s.name.as_str()).collect();
    let _ = writeln!(o, "signals ({}); entering no stage: {}", j.signals.len(), other.join(", "));
    let _ = writeln!(
        o,
        "hot rules ({}), cooldown {}, hot for {}:",
        j.hot_rules.len(),
        days(j.alert_cooldown),
        days(j.hot_for)
    );
    for r in &j.hot_rules {
        let when = match &r.condition {
            HotCondition::ScoreAtLeast(t) => format!("score reaches {t} (of at most {})", j.max_score),
            HotCondition::Signal { signal, after: None } => sig(*signal).to_string(),
            HotCondition::Signal { signal, after: Some((a, w)) } => {
                format!("{} within {} after {}", sig(*signal), days(*w), sig(*a))
            }
        };
        let _ = writeln!(o, "  {} (priority {}): {when}", r.name, r.priority);
    }
    let _ = writeln!(o, "timers:");
    match &j.ghost {
        Some(g) => {
            let _ =
                writeln!(o, "  ghosted: no prospect-initiated signal within {} after {}", days(g.window), sig(g.after));
        }
        None => o.push_str("  ghosted: none\n"),
    }
    match &j.stall {
        Some(s) => {
            let watched: Vec<&str> =
                (0..j.stages.len()).filter(|i| s.stages & (1 << i) != 0).map(|i| j.stages[i].name.as_str()).collect();
            let _ = writeln!(o, "  stalled: no stage advance within {} in {}", days(s.window), watched.join(", "));
        }
        None => o.push_str("  stalled: none\n"),
    }
    if let Some(q) = &j.quiet {
        let watched: Vec<&str> =
            (0..j.stages.len()).filter(|i| q.stages & (1 << i) != 0).map(|i| j.stages[i].name.as_str()).collect();
        let _ = writeln!(
            o,
            "  gone quiet: no prospect-initiated signal within {} in {}",
            days(q.window),
            watched.join(", ")
        );
    }
    let r = &j.retention;
    if r.expires() || r.max_prospects.is_some() {
        let spans = |anonymous: bool| {
            let spans: Vec<String> = (0..j.stages.len())
                .filter_map(|i| {
                    let stage = microfunnel::core::StageId(i as u8);
                    r.after_for(stage, anonymous).map(|a| format!("{} {}", j.stages[i].name, days(a)))
                })
                .collect();
            if spans.is_empty() { "never".to_string() } else { spans.join(", ") }
        };
        let cap = r.max_prospects.map_or("no cap".to_string(), |n| format!("at most {n} prospects per shard"));
        let _ = writeln!(o, "retention: leave memory after no event for: {}; {cap}", spans(false));
        if r.anonymous != r.after {
            let _ = writeln!(o, "  anonymous prospects (an anonymousId never identified): {}", spans(true));
        }
    }
    match &j.identity {
        Some(l) => {
            let _ = writeln!(
                o,
                "identity: resolve = true, one prospect per person; at most {} known ids and {} anonymous ids per person",
                l.max_known_ids, l.max_anonymous_ids
            );
            let _ = writeln!(
                o,
                "  across partitions: a transfer delivered again counts once within {} of event time after its id left memory (transfer_dedup_days)",
                days(j.transfer_dedup)
            );
        }
        None => o.push_str("identity: resolve = false, each id is its own prospect\n"),
    }
    let placeholders = if j.placeholder_ids.is_empty() {
        "none".to_string()
    } else {
        j.placeholder_ids.iter().map(|p| format!("`{p}`")).collect::<Vec<_>>().join(", ")
    };
    let _ = writeln!(o, "  placeholder ids (never an id, never linked): {placeholders}");
    let seg = |s: Option<microfunnel::core::SignalId>| s.map_or("(none)", sig);
    let _ = writeln!(
        o,
        "segment: page -> {}, screen -> {}, identify -> {}; unmapped events: {}",
        seg(j.page_signal),
        seg(j.screen_signal),
        seg(j.identify_signal),
        format!("{:?}", j.unmapped).to_lowercase()
    );
    for r in &j.page_rules {
        let mut when = Vec::new();
        for (key, p) in [("name", &r.name), ("category", &r.category), ("path", &r.path), ("url", &r.url)] {
            if let Some(p) = p {
                when.push(format!("{key} {}", p.as_str()));
            }
        }
        let _ = writeln!(o, "  page/screen with {} -> {}", when.join(" and "), sig(r.signal));
    }
    use microfunnel::core::breakdown::{Attribution, Field};
    for d in &j.breakdowns {
        let what = match d.field {
            Field::Segment { signal, before } => match before {
                Some(b) => format!("segment: {} before {}", sig(signal), j.stage(b).name),
                None => format!("segment: {}", sig(signal)),
            },
            f => {
                let field = Field::NAMES[f.touch_index().unwrap_or(0)];
                let by = match d.attribution {
                    Attribution::FirstTouch => "first touch".to_string(),
                    Attribution::LastTouch => "last touch".to_string(),
                    Attribution::AtStage(s) => format!("at stage {}", j.stage(s).name),
                };
                let values = if d.allow.is_empty() {
                    format!("top {} of at most {} values per shard", d.top_k, d.max_values)
                } else {
                    format!("{} allowed values", d.allow.len())
                };
                format!("{field}, {by}, {values}")
            }
        };
        let _ = writeln!(o, "breakdown {}: {what}", d.name);
    }
    o
}
