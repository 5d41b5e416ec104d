//! `microfunnel gen` (module `traffic`, as `gen` is reserved in Rust 2024): realistic, deterministic traffic with ground truth.
//!
//! Prospects arrive evenly over the horizon; each one's whole life is simulated on arrival
//! ([`model::Model::life`]) and its events are queued by emission time, so output streams in
//! time order with bounded memory (only the active prospects' pending events are held).

pub mod crm;
pub mod model;
pub mod render;
pub mod rng;

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde::Serialize;

use crate::core::time::{MS_PER_DAY, MS_PER_HOUR, MS_PER_SEC};
use crate::core::{Journey, Source, Ts};
use model::{Life, Model, Outcome, Persona, Sig, Step};
use rng::Rng;

#[derive(Clone, Debug)]
pub struct Options {
    pub prospects: u64,
    pub days: f64,
    pub start: Ts,
    pub seed: u64,
    /// Share of an identified prospect's web events sent as Segment payloads (the rest
    /// canonical); anonymous browsing and sign-ups are always Segment calls.
    pub segment_share: f64,
    pub duplicate_share: f64,
    pub out_of_order_share: f64,
    pub malformed_share: f64,
    pub model: Model,
    /// Format of the CRM side: `Auto` (canonical envelopes), or `Hubspot`, `SalesforceCdc`,
    /// `Pipedrive` (see [`crm`]).
    pub crm_format: crate::codec::inbound::Format,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            prospects: 1_000,
            days: 90.0,
            start: Ts(1_767_571_200_000), // 2026-01-05T00:00:00Z
            seed: 42,
            segment_share: 0.5,
            duplicate_share: 0.01,
            out_of_order_share: 0.02,
            malformed_share: 0.001,
            model: Model::default(),
            crm_format: crate::codec::inbound::Format::Auto,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum GenError {
    #[error(
        "journey `{journey}` has no signal `{signal}` (or does not accept it from {from}); `gen` simulates the built-in b2b journey (or a journey with its signals): use --journey b2b"
    )]
    MissingSignal { journey: String, signal: String, from: &'static str },
    #[error("option {name}: {problem}")]
    BadOption { name: &'static str, problem: String },
}

/// A prospect's true outcome, for validating signals against results.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Truth {
    /// The person's canonical id under identity resolution: the user id once the traffic names
    /// it, else the anonymous id.
    pub prospect: String,
    pub persona: Persona,
    pub intent: f64,
    pub outcome: Outcome,
    /// When the deal was won or lost (the event time of the CRM's `deal_won` / `deal_lost`),
    /// RFC 3339; absent while open.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome_at: Option<String>,
    pub ghosted: bool,
    pub signals: Vec<&'static str>,
    /// The campaign (`utm_campaign`) the prospect arrived from, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Variant {
    Normal,
    Duplicate,
    Malformed(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    emit: i64,
    seq: u64,
    n: u64,
    step_ix: u16,
    step: (i64, u8, bool),
    variant: Variant,
}

/// Totals of what was generated, by kind.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct GenStats {
    pub prospects: u64,
    pub events: u64,
    pub web: u64,
    pub crm: u64,
    pub segment: u64,
    pub canonical: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub malformed: u64,
    pub won: u64,
    pub lost: u64,
    /// CRM signals the `--crm-format` cannot express (not written).
    pub unexpressed: u64,
}

pub struct Generator {
    opts: Options,
    next: u64,
    end: i64,
    slot: f64,
    heap: BinaryHeap<Reverse<Pending>>,
    seq: u64,
    truth: Vec<Truth>,
    keep_truth: bool,
    stats: GenStats,
    /// The CRM side in a CRM's format: the plan, and each `Sig`'s journey signal.
    crm: Option<(crm::Plan, Vec<Option<crate::core::SignalId>>)>,
}

/// One generated line's routing: its source (topic) and Kafka key (the prospect id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub source: Source,
    pub ts: Ts,
}

fn sig_from(u: u8) -> Sig {
    Sig::ALL[u as usize]
}

impl Generator {
    /// Checks that `journey` maps every signal the model emits, both by canonical and by
    /// Segment name, from the right source.
    pub fn new(opts: Options, journey: &Journey, keep_truth: bool) -> Result<Generator, GenError> {
        for (name, value) in [
            ("--segment-share", opts.segment_share),
            ("--duplicates", opts.duplicate_share),
            ("--out-of-order", opts.out_of_order_share),
            ("--malformed", opts.malformed_share),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(GenError::BadOption { name, problem: format!("{value} is not a share between 0 and 1") });
            }
        }
        let mut total = 0.0;
        for (i, c) in opts.model.campaigns.iter().enumerate() {
            let bad =
                |what: String| GenError::BadOption { name: "--model", problem: format!("campaigns[{i}]: {what}") };
            for (key, v) in [("name", &c.name), ("source", &c.source), ("medium", &c.medium)] {
                // Written as they are into JSON strings and URL query parameters.
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b)) {
                    return Err(bad(format!("{key} {v:?}: use letters, digits, `-`, `_`, `.` or `~`")));
                }
            }
            if !(c.share.is_finite() && c.share >= 0.0 && c.effect.is_finite()) {
                return Err(bad("share must be a number from 0 to 1, effect a finite number".into()));
            }
            total += c.share;
        }
        if total > 1.0 + 1e-9 {
            return Err(GenError::BadOption {
                name: "--model",
                problem: format!("the campaigns' shares add up to {total}; at most 1 (the rest is direct traffic)"),
            });
        }
        if !(opts.days.is_finite() && opts.days > 0.0) {
            return Err(GenError::BadOption { name: "--days", problem: "must be a positive number of days".into() });
        }
        for sig in Sig::ALL {
            if sig == Sig::Unmapped {
                continue;
            }
            let src = sig.source();
            let check = |s: Option<crate::core::SignalId>| s.filter(|&s| journey.signal(s).source.admits(src));
            let by_segment = match sig {
                Sig::PageViewed => journey.page_signal,
                Sig::Identified => journey.identify_signal,
                _ => journey.lookup(sig.segment_name()),
            };
            if check(journey.lookup(sig.name())).is_none() || (src == Source::Web && check(by_segment).is_none()) {
                return Err(GenError::MissingSignal {
                    journey: journey.name.clone(),
                    signal: sig.name().into(),
                    from: src.as_str(),
                });
            }
        }
        use crate::codec::inbound::Format;
        let crm = match opts.crm_format {
            Format::Auto | Format::Canonical => None,
            f @ (Format::Hubspot | Format::SalesforceCdc | Format::Pipedrive) => {
                Some((crm::Plan::new(f, journey), Sig::ALL.map(|s| journey.lookup(s.name())).to_vec()))
            }
            f => {
                return Err(GenError::BadOption {
                    name: "--crm-format",
                    problem: format!("`{}`: use hubspot, salesforce_cdc or pipedrive", f.as_str()),
                });
            }
        };
        let end = opts.start.0 + (opts.days * MS_PER_DAY as f64) as i64;
        let slot = if opts.prospects == 0 { 0.0 } else { (end - opts.start.0) as f64 / opts.prospects as f64 };
        Ok(Generator {
            opts,
            next: 0,
            end,
            slot,
            heap: BinaryHeap::new(),
            seq: 0,
            truth: Vec::new(),
            keep_truth,
            stats: GenStats::default(),
            crm,
        })
    }

    pub fn stats(&self) -> &GenStats {
        &self.stats
    }

    pub fn prospects_done(&self) -> u64 {
        self.next
    }

    /// Ground truth of the prospects simulated since the last call.
    pub fn drain_truth(&mut self) -> std::vec::Drain<'_, Truth> {
        self.truth.drain(..)
    }

    fn arrival(&self, n: u64) -> i64 {
        let mut r = Rng::derive(self.opts.seed ^ 0xA1, n);
        self.opts.start.0 + ((n as f64 + r.f64()) * self.slot) as i64
    }

    fn push(&mut self, emit: i64, n: u64, step_ix: usize, step: &Step, variant: Variant) {
        self.seq += 1;
        self.heap.push(Reverse(Pending {
            emit,
            seq: self.seq,
            n,
            step_ix: step_ix as u16,
            step: (step.ts.0, step.sig as u8, step.identified),
            variant,
        }));
    }

    fn simulate(&mut self, n: u64) {
        let start = Ts(self.arrival(n));
        let mut r = Rng::derive(self.opts.seed, n);
        let campaign = self.opts.model.campaign_of(self.opts.seed, n);
        let effect = campaign.map_or(0.0, |c| self.opts.model.campaigns[c].effect);
        let Life { persona, intent, steps, outcome, ghosted } = self.opts.model.life(&mut r, start, effect);
        self.stats.prospects += 1;
        let mut shown: Vec<&'static str> = Vec::new();
        let o = &self.opts;
        let (dup, ooo, bad) = (o.duplicate_share, o.out_of_order_share, o.malformed_share);
        for (i, step) in steps.iter().enumerate() {
            if step.ts.0 > self.end {
                break;
            }
            if step.sig != Sig::Unmapped && !shown.contains(&step.sig.name()) {
                shown.push(step.sig.name());
            }
            let mut emit = step.ts.0;
            if step.sig.source() == Source::Crm {
                emit += r.int(0, 30 * 60) as i64 * MS_PER_SEC;
            }
            if r.chance(ooo) {
                emit += (r.exp(20.0 * 60.0) * MS_PER_SEC as f64) as i64;
                if r.chance(0.1) {
                    emit += r.int(25, 48) as i64 * MS_PER_HOUR;
                }
                self.stats.out_of_order += 1;
            }
            self.push(emit, n, i, step, Variant::Normal);
            if r.chance(dup) {
                let later = emit + (r.exp(30.0) * MS_PER_SEC as f64) as i64;
                self.push(later, n, i, step, Variant::Duplicate);
            }
            if r.chance(bad) {
                let k = r.int(0, render::MALFORMED_KINDS - 1) as u8;
                self.push(emit, n, i, step, Variant::Malformed(k));
            }
        }
        let decided =
            steps.iter().find(|s| matches!(s.sig, Sig::DealWon | Sig::DealLost) && s.ts.0 <= self.end).map(|s| s.ts);
        let outcome = if decided.is_some() { outcome } else { Outcome::Open };
        match outcome {
            Outcome::Won => self.stats.won += 1,
            Outcome::Lost => self.stats.lost += 1,
            Outcome::Open => {}
        }
        if self.keep_truth {
            let id = render::identity(self.opts.seed, n);
            // Named by the canonical-id rule: the user id (known) once the traffic names it (an
            // identified web step, or a canonical CRM step), else the anonymous id.
            let known = steps.iter().take_while(|s| s.ts.0 <= self.end).any(|s| {
                s.identified || (s.sig.source() == Source::Crm && s.sig != Sig::Unmapped && self.crm.is_none())
            });
            let prospect = if known { id.user_id } else { id.anon_id };
            self.truth.push(Truth {
                prospect,
                persona,
                intent: (intent * 1000.0).round() / 1000.0,
                outcome,
                outcome_at: decided.map(|t| t.to_string()),
                ghosted,
                signals: shown,
                campaign: campaign.map(|c| self.opts.model.campaigns[c].name.clone()),
            });
        }
    }

    /// Writes the next line into `line` (cleared first) and its prospect key into `key`.
    /// Returns `None` when every prospect's life has been emitted.
    pub fn next_into(&mut self, line: &mut Vec<u8>, key: &mut String) -> Option<Meta> {
        loop {
            if let Some(meta) = self.next_one(line, key)? {
                return Some(meta);
            }
        }
    }

    /// [`Generator::next_into`] once: `Some(None)` when the step popped was not written (a CRM
    /// signal the `--crm-format` cannot express).
    fn next_one(&mut self, line: &mut Vec<u8>, key: &mut String) -> Option<Option<Meta>> {
        loop {
            let next_arrival = if self.next < self.opts.prospects { self.arrival(self.next) } else { i64::MAX };
            match self.heap.peek() {
                Some(Reverse(p)) if p.emit < next_arrival => break,
                _ if self.next < self.opts.prospects => {
                    self.simulate(self.next);
                    self.next += 1;
                }
                Some(_) => break,
                None => return None,
            }
        }
        let Reverse(p) = self.heap.pop()?;
        let step = Step { ts: Ts(p.step.0), sig: sig_from(p.step.1), identified: p.step.2 };
        let id = render::identity(self.opts.seed, p.n);
        let mut r = Rng::derive(self.opts.seed ^ 0x5E9, (p.n << 16) | u64::from(p.step_ix));
        line.clear();
        key.clear();
        key.push_str(id.key(&step));
        let source = step.sig.source();
        if let (Some((plan, signals)), Source::Crm, false) =
            (&self.crm, source, matches!(p.variant, Variant::Malformed(_)))
        {
            let signal = signals[p.step.1 as usize];
            if !signal.is_some_and(|s| plan.expresses(s)) {
                self.stats.unexpressed += 1;
                return Some(None);
            }
            key.clear();
            key.push_str(&plan.contact(p.n, self.opts.seed));
            if let Some(s) = signal {
                plan.render(line, s, &step, key, &mut r);
            }
            if p.variant == Variant::Duplicate {
                self.stats.duplicates += 1;
            } else {
                self.stats.events += 1;
                self.stats.crm += 1;
            }
            return Some(Some(Meta { source, ts: step.ts }));
        }
        match p.variant {
            Variant::Malformed(k) => {
                render::malformed(line, &id, &step, &mut r, p.n, u64::from(k));
                self.stats.malformed += 1;
            }
            v => {
                // Anonymous browsing and the sign-up are always Segment calls: only they say an
                // id is anonymous (`anonymousId`) and name it beside the user id (`identify`);
                // a canonical envelope's `prospect_id` is a known id. `--segment-share` is the
                // share of the identified prospect's other web events.
                let segment = source == Source::Web && {
                    let drawn = r.chance(self.opts.segment_share);
                    drawn || !step.identified || step.sig == Sig::Identified
                };
                // The landing step and the sign-up (a form that carries the stored UTM
                // parameters) name the prospect's campaign.
                let campaign = (p.step_ix == 0 || step.sig == Sig::Identified)
                    .then(|| self.opts.model.campaign_of(self.opts.seed, p.n))
                    .flatten()
                    .map(|c| &self.opts.model.campaigns[c]);
                if segment {
                    render::segment(line, &id, &step, &mut r, p.n, campaign);
                } else {
                    render::canonical(line, &id, &step, &mut r, p.n, campaign);
                }
                if v == Variant::Duplicate {
                    self.stats.duplicates += 1;
                } else {
                    self.stats.events += 1;
                    match source {
                        Source::Web => self.stats.web += 1,
                        Source::Crm => self.stats.crm += 1,
                    }
                    if segment {
                        self.stats.segment += 1;
                    } else {
                        self.stats.canonical += 1;
                    }
                }
            }
        }
        Some(Some(Meta { source, ts: step.ts }))
    }
}
