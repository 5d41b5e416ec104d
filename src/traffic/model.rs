//! The behaviour model: how one prospect walks the B2B buying journey, and how its true outcome
//! depends on the signals it shows. Every probability is a field of [`Model`], so evaluations
//! can make a signal predictive or pure noise and check that microfunnel tells them apart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::rng::Rng;
use crate::core::Source;
use crate::core::time::{MS_PER_DAY, MS_PER_HOUR, Ts};

/// The micro-conversions the generator emits. Names match `deploy/journeys/b2b.toml`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Sig {
    PageViewed,
    AdClicked,
    EmailSubscribed,
    ContentDownloaded,
    WebinarRegistered,
    AccountCreated,
    Identified,
    DemoRequested,
    QuoteRequested,
    MeetingBooked,
    QuoteSent,
    Clarification,
    ReviewingWithPartners,
    DealWon,
    DealLost,
    ProductUsed,
    ReferralMade,
    Unsubscribed,
    Disqualified,
    /// A site event no journey signal names ("Video Played"): must be ignored, not rejected.
    Unmapped,
}

impl Sig {
    pub const ALL: [Sig; 20] = [
        Sig::PageViewed,
        Sig::AdClicked,
        Sig::EmailSubscribed,
        Sig::ContentDownloaded,
        Sig::WebinarRegistered,
        Sig::AccountCreated,
        Sig::Identified,
        Sig::DemoRequested,
        Sig::QuoteRequested,
        Sig::MeetingBooked,
        Sig::QuoteSent,
        Sig::Clarification,
        Sig::ReviewingWithPartners,
        Sig::DealWon,
        Sig::DealLost,
        Sig::ProductUsed,
        Sig::ReferralMade,
        Sig::Unsubscribed,
        Sig::Disqualified,
        Sig::Unmapped,
    ];

    /// Canonical (snake_case) name; for `Unmapped`, a name no journey declares.
    pub fn name(self) -> &'static str {
        match self {
            Sig::PageViewed => "page_viewed",
            Sig::AdClicked => "ad_clicked",
            Sig::EmailSubscribed => "email_subscribed",
            Sig::ContentDownloaded => "content_downloaded",
            Sig::WebinarRegistered => "webinar_registered",
            Sig::AccountCreated => "account_created",
            Sig::Identified => "identified",
            Sig::DemoRequested => "demo_requested",
            Sig::QuoteRequested => "quote_requested",
            Sig::MeetingBooked => "meeting_booked",
            Sig::QuoteSent => "quote_sent",
            Sig::Clarification => "quote_clarification_requested",
            Sig::ReviewingWithPartners => "reviewing_with_partners",
            Sig::DealWon => "deal_won",
            Sig::DealLost => "deal_lost",
            Sig::ProductUsed => "product_used",
            Sig::ReferralMade => "referral_made",
            Sig::Unsubscribed => "unsubscribed",
            Sig::Disqualified => "disqualified",
            Sig::Unmapped => "video_played",
        }
    }

    /// The name a site would send through Segment's `track` ("Object Action").
    pub fn segment_name(self) -> &'static str {
        match self {
            Sig::AdClicked => "Promotion Clicked",
            Sig::EmailSubscribed => "Newsletter Subscribed",
            Sig::ContentDownloaded => "Whitepaper Downloaded",
            Sig::WebinarRegistered => "Webinar Registered",
            Sig::AccountCreated => "Signed Up",
            Sig::DemoRequested => "Demo Requested",
            Sig::QuoteRequested => "Quote Requested",
            Sig::ProductUsed => "Feature Used",
            Sig::ReferralMade => "Referral Sent",
            Sig::Unsubscribed => "Email Unsubscribed",
            Sig::Unmapped => "Video Played",
            other => other.name(),
        }
    }

    pub fn source(self) -> Source {
        match self {
            Sig::MeetingBooked
            | Sig::QuoteSent
            | Sig::Clarification
            | Sig::ReviewingWithPartners
            | Sig::DealWon
            | Sig::DealLost
            | Sig::Disqualified => Source::Crm,
            _ => Source::Web,
        }
    }

    /// Whether the prospect (not the seller) took the step; mirrors the b2b journey.
    pub fn prospect_initiated(self) -> bool {
        !matches!(self, Sig::MeetingBooked | Sig::QuoteSent | Sig::DealWon | Sig::DealLost | Sig::Disqualified)
    }
}

/// `base + per_intent * intent`, clamped to [0, 1].
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Linear {
    pub base: f64,
    pub per_intent: f64,
}

impl Linear {
    fn at(self, intent: f64) -> f64 {
        (self.base + self.per_intent * intent).clamp(0.0, 1.0)
    }
}

const fn lin(base: f64, per_intent: f64) -> Linear {
    Linear { base, per_intent }
}

/// Propensities of the simulated population. Load overrides from TOML with `gen --model`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Model {
    /// Visitors who browse and never identify.
    pub anonymous_share: f64,
    /// Identified visitors who are not buyers (job seekers, students, competitors).
    pub not_a_prospect_share: f64,
    pub interested: Linear,
    pub evaluating: Linear,
    pub deciding: Linear,
    /// Asks what a quote line means (the micro-certainty).
    pub clarification: Linear,
    /// Says they are "reviewing with partners" (noise: says nothing about the outcome).
    pub reviewing_with_partners: f64,
    pub webinar: f64,
    /// Deal parks for weeks between meeting and quote (scaled by 1 - intent).
    pub stall: f64,
    pub unsubscribe: f64,
    /// Share of quoted prospects that reach a decision within the horizon.
    pub decided: f64,
    pub base_logit: f64,
    pub intent_logit: f64,
    /// Log-odds effect on winning of each signal shown (by canonical name), plus `ghosted`
    /// (no prospect-initiated signal within 5 days of the quote).
    pub effects: BTreeMap<String, f64>,
    /// Marketing campaigns prospects arrive from (none by default, which keeps the output of
    /// older models byte for byte). A prospect comes from the first campaign whose cumulative
    /// `share` covers its draw, else from none (direct traffic).
    pub campaigns: Vec<Campaign>,
}

/// A campaign (its UTM parameters) and how it changes the odds of winning.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Campaign {
    /// `utm_campaign`.
    pub name: String,
    /// `utm_source`.
    pub source: String,
    /// `utm_medium`.
    pub medium: String,
    /// Share of prospects that arrive from it.
    pub share: f64,
    /// Log-odds effect on winning of its prospects (its true win rate differs by it).
    #[serde(default)]
    pub effect: f64,
}

impl Default for Model {
    fn default() -> Self {
        let effects = [
            ("quote_clarification_requested", 2.4),
            ("quote_requested", 0.8),
            ("demo_requested", 0.3),
            ("content_downloaded", 0.1),
            ("reviewing_with_partners", 0.0),
            ("webinar_registered", 0.0),
            ("ghosted", -2.0),
        ];
        Model {
            anonymous_share: 0.35,
            not_a_prospect_share: 0.05,
            interested: lin(0.45, 0.45),
            evaluating: lin(0.15, 0.6),
            deciding: lin(0.25, 0.6),
            clarification: lin(0.1, 0.55),
            reviewing_with_partners: 0.3,
            webinar: 0.3,
            stall: 0.5,
            unsubscribe: 0.05,
            decided: 0.85,
            base_logit: -1.2,
            intent_logit: 1.0,
            effects: effects.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            campaigns: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Persona {
    Anonymous,
    NotAProspect,
    Lead,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Won,
    Lost,
    Open,
}

/// One step of a prospect's life, in event time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Step {
    pub ts: Ts,
    pub sig: Sig,
    /// The prospect has identified itself by then (web events carry the user id).
    pub identified: bool,
}

/// A simulated prospect: its steps in time order and its true outcome.
#[derive(Clone, Debug)]
pub struct Life {
    pub persona: Persona,
    pub intent: f64,
    pub steps: Vec<Step>,
    pub outcome: Outcome,
    pub ghosted: bool,
}

struct Walk<'r> {
    rng: &'r mut Rng,
    t: i64,
    identified: bool,
    steps: Vec<Step>,
}

impl Walk<'_> {
    fn step(&mut self, sig: Sig) {
        self.steps.push(Step { ts: Ts(self.t), sig, identified: self.identified });
    }

    fn wait_days(&mut self, mean: f64) {
        self.t += (self.rng.exp(mean) * MS_PER_DAY as f64) as i64 + MS_PER_HOUR / 4;
    }

    fn wait_between(&mut self, lo_days: f64, hi_days: f64) {
        self.t += (self.rng.range(lo_days, hi_days) * MS_PER_DAY as f64) as i64;
    }

    /// A browsing session: a few page views seconds to minutes apart, maybe an unmapped event.
    fn session(&mut self, max_views: u64) {
        let views = self.rng.int(1, max_views);
        for _ in 0..views {
            self.step(Sig::PageViewed);
            self.t += self.rng.int(15_000, 240_000) as i64;
        }
        if self.rng.chance(0.15) {
            self.step(Sig::Unmapped);
            self.t += self.rng.int(5_000, 60_000) as i64;
        }
    }
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Model {
    /// The campaign prospect `n` arrives from (drawn from its own stream, so that adding
    /// campaigns changes no other draw), by index in `campaigns`.
    pub fn campaign_of(&self, seed: u64, n: u64) -> Option<usize> {
        if self.campaigns.is_empty() {
            return None;
        }
        let roll = Rng::derive(seed ^ 0xCA4_9A16, n).f64();
        let mut acc = 0.0;
        self.campaigns.iter().position(|c| {
            acc += c.share;
            roll < acc
        })
    }

    /// Simulates one prospect arriving at `start` from a campaign with this log-odds effect.
    pub fn life(&self, rng: &mut Rng, start: Ts, campaign_effect: f64) -> Life {
        let intent = (rng.f64() + rng.f64()) / 2.0;
        let roll = rng.f64();
        let persona = if roll < self.anonymous_share {
            Persona::Anonymous
        } else if roll < self.anonymous_share + self.not_a_prospect_share {
            Persona::NotAProspect
        } else {
            Persona::Lead
        };
        let mut w = Walk { rng, t: start.0, identified: false, steps: Vec::with_capacity(24) };
        let mut outcome = Outcome::Open;
        let mut ghosted = false;
        match persona {
            Persona::Anonymous => {
                if w.rng.chance(0.25) {
                    w.step(Sig::AdClicked);
                }
                for _ in 0..w.rng.int(1, 3) {
                    w.session(5);
                    w.wait_days(3.0);
                }
            }
            Persona::NotAProspect => {
                w.session(4);
                w.identified = true;
                w.step(Sig::Identified);
                w.wait_between(1.0, 5.0);
                w.step(Sig::Disqualified);
            }
            Persona::Lead => {
                if w.rng.chance(0.3) {
                    w.step(Sig::AdClicked);
                }
                for _ in 0..w.rng.int(1, 2) {
                    w.session(6);
                    w.wait_days(2.0);
                }
                if w.rng.chance(self.interested.at(intent)) {
                    w.identified = true;
                    w.step(Sig::Identified);
                    w.t += 30_000;
                    let first = *w.rng.pick(&[Sig::ContentDownloaded, Sig::EmailSubscribed, Sig::AccountCreated]);
                    w.step(first);
                    if w.rng.chance(self.webinar) {
                        w.wait_days(3.0);
                        w.step(Sig::WebinarRegistered);
                    }
                    w.wait_days(3.0);
                    w.session(4);
                    if w.rng.chance(self.unsubscribe) {
                        w.wait_days(5.0);
                        w.step(Sig::Unsubscribed);
                    } else if w.rng.chance(self.evaluating.at(intent)) {
                        w.wait_days(4.0);
                        w.step(Sig::DemoRequested);
                        w.wait_between(1.0, 4.0);
                        w.step(Sig::MeetingBooked);
                        if w.rng.chance(self.stall * (1.0 - intent)) {
                            w.wait_between(22.0, 45.0);
                        } else {
                            w.wait_days(5.0);
                        }
                        if w.rng.chance(self.deciding.at(intent)) {
                            outcome = self.decide(&mut w, intent, campaign_effect, &mut ghosted);
                        }
                    }
                }
            }
        }
        Life { persona, intent, steps: w.steps, outcome, ghosted }
    }

    fn decide(&self, w: &mut Walk<'_>, intent: f64, campaign_effect: f64, ghosted: &mut bool) -> Outcome {
        if w.rng.chance(0.6) {
            w.session(3);
            w.step(Sig::QuoteRequested);
        }
        w.wait_between(1.0, 3.0);
        w.step(Sig::QuoteSent);
        let quote_at = w.t;
        let mut responses = Vec::new();
        if w.rng.chance(self.clarification.at(intent)) {
            responses.push((w.rng.range(0.3, 9.0), Sig::Clarification));
        }
        if w.rng.chance(self.reviewing_with_partners) {
            responses.push((w.rng.range(0.5, 4.0), Sig::ReviewingWithPartners));
        }
        responses.sort_by(|a, b| a.0.total_cmp(&b.0));
        *ghosted = !responses.iter().any(|(d, _)| *d <= 5.0);
        for (days, sig) in responses {
            w.t = quote_at + (days * MS_PER_DAY as f64) as i64;
            w.step(sig);
        }
        if !w.rng.chance(self.decided) {
            return Outcome::Open;
        }
        let mut logit = self.base_logit + self.intent_logit * intent + campaign_effect;
        let shown: Vec<Sig> = w.steps.iter().map(|s| s.sig).collect();
        for (name, effect) in &self.effects {
            let hit = if name == "ghosted" { *ghosted } else { shown.iter().any(|s| s.name() == name) };
            if hit {
                logit += effect;
            }
        }
        w.wait_between(3.0, 25.0);
        if w.rng.chance(sigmoid(logit)) {
            w.step(Sig::DealWon);
            for _ in 0..w.rng.int(2, 8) {
                w.wait_days(4.0);
                w.step(Sig::ProductUsed);
            }
            if w.rng.chance(0.2) {
                w.wait_days(10.0);
                w.step(Sig::ReferralMade);
            }
            Outcome::Won
        } else {
            w.step(Sig::DealLost);
            Outcome::Lost
        }
    }
}
