//! Sales-playbook scenarios through the public API: JSON bytes in through `codec::decode`, the
//! shipped b2b journey, `Engine::apply` / `advance_to`, outputs checked as data and as JSON.

use std::sync::Arc;

use microfunnel::codec::{self, Limits};
use microfunnel::core::time::{MS_PER_DAY, MS_PER_HOUR, parse_rfc3339};
use microfunnel::core::{
    Classification, Engine, EventKind, HotLead, Journey, Output, ProspectIx, ProspectView, RejectReason, Source,
    StageId, Ts,
};
use serde_json::{Value, json};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");
const PLAYBOOK: &str = include_str!("fixtures/b2b-playbook.jsonl");

const CLARIFICATION_REASON: &str = "Asked what a quote line means within 14 days of receiving the quote";
const DECIDING_NEXT: &str = "Ask for a date to walk through the quote with every decision maker";

fn b2b() -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(B2B).expect("shipped b2b journey loads"))
}

/// The b2b journey with one piece of text replaced (which must be there exactly once).
fn b2b_with(from: &str, to: &str) -> Arc<Journey> {
    assert_eq!(B2B.matches(from).count(), 1, "b2b.toml should contain {from:?} exactly once");
    Arc::new(Journey::from_toml_str(&B2B.replace(from, to)).expect("modified b2b journey loads"))
}

/// Monday 2 March 2026, 09:00 UTC: day 0 of every scenario.
/// The b2b journey text with its lost stage final (no `reopen_on`).
fn without_reopen(text: &str) -> String {
    let line = text.lines().find(|l| l.starts_with("reopen_on")).expect("b2b reopens lost deals");
    text.replace(line, "")
}

fn b2b_without_reopen() -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(&without_reopen(B2B)).unwrap())
}

fn t0() -> Ts {
    parse_rfc3339("2026-03-02T09:00:00Z").unwrap()
}

fn day(d: f64) -> Ts {
    Ts(t0().0 + (d * MS_PER_DAY as f64).round() as i64)
}

fn hour(h: f64) -> Ts {
    Ts(t0().0 + (h * MS_PER_HOUR as f64).round() as i64)
}

fn canonical(event_id: &str, prospect: &str, source: &str, kind: &str, at: Ts) -> Vec<u8> {
    json!({
        "event_id": event_id,
        "prospect_id": prospect,
        "source": source,
        "type": kind,
        "ts": at.to_string(),
        "properties": {"owner": "k.osei", "deal": {"id": "D-1042", "amount": {"value": 14400, "currency": "USD"}}},
    })
    .to_string()
    .into_bytes()
}

/// One engine on a journey, fed JSON bytes the way the service feeds it.
struct Playbook {
    engine: Engine,
    next_id: u32,
}

impl Playbook {
    fn new() -> Playbook {
        Playbook::on(b2b())
    }

    fn on(journey: Arc<Journey>) -> Playbook {
        Playbook { engine: Engine::new(journey), next_id: 0 }
    }

    fn journey(&self) -> Arc<Journey> {
        Arc::clone(self.engine.journey())
    }

    /// Decodes and applies one payload; the payload must be valid.
    fn line(&mut self, bytes: &[u8]) -> Vec<Output> {
        let journey = self.journey();
        let ev = codec::decode(bytes, &journey, &Limits::default())
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(bytes)));
        let mut out = Vec::new();
        self.engine.apply(&ev, &mut out);
        out
    }

    fn send_id(&mut self, event_id: &str, prospect: &str, source: &str, kind: &str, at: Ts) -> Vec<Output> {
        self.line(&canonical(event_id, prospect, source, kind, at))
    }

    fn send(&mut self, prospect: &str, source: &str, kind: &str, at: Ts) -> Vec<Output> {
        self.next_id += 1;
        let id = format!("evt-{:04}", self.next_id);
        self.send_id(&id, prospect, source, kind, at)
    }

    fn web(&mut self, prospect: &str, kind: &str, at: Ts) -> Vec<Output> {
        self.send(prospect, "web", kind, at)
    }

    fn crm(&mut self, prospect: &str, kind: &str, at: Ts) -> Vec<Output> {
        self.send(prospect, "crm", kind, at)
    }

    /// Two other prospects' events at `at`: the shard's clock moves there (one alone could be
    /// a client clock set ahead, which the clock waits to see confirmed).
    fn time_passes(&mut self, at: Ts) -> Vec<Output> {
        let mut out = self.web("anon-clock-1", "page_viewed", at);
        out.extend(self.web("anon-clock-2", "page_viewed", at));
        out
    }

    fn advance(&mut self, to: Ts) -> Vec<Output> {
        let mut out = Vec::new();
        self.engine.advance_to(to, &mut out);
        out
    }

    fn ix(&self, prospect: &str) -> ProspectIx {
        self.engine.find(prospect).unwrap_or_else(|| panic!("no prospect {prospect}"))
    }

    fn view(&self, prospect: &str, at: Option<Ts>) -> ProspectView {
        self.engine.view(self.ix(prospect), at)
    }

    fn stage(&self, name: &str) -> StageId {
        self.engine.journey().stage_by_name(name).unwrap_or_else(|| panic!("no stage {name}"))
    }

    fn json(&self, output: &Output) -> Value {
        let mut buf = Vec::new();
        codec::write_output(&self.engine, output, &mut buf).unwrap();
        serde_json::from_slice(&buf).unwrap()
    }
}

fn hot_leads(out: &[Output]) -> Vec<&HotLead> {
    out.iter()
        .filter_map(|o| match o {
            Output::HotLead(h) => Some(&**h),
            _ => None,
        })
        .collect()
}

fn ghosted(out: &[Output]) -> Vec<(ProspectIx, StageId, Ts, Ts)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Ghosted { prospect, stage, since, at, .. } => Some((*prospect, *stage, *since, *at)),
            _ => None,
        })
        .collect()
}

fn stalled(out: &[Output]) -> Vec<(ProspectIx, StageId, Ts, Ts)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Stalled { prospect, stage, since, at, .. } => Some((*prospect, *stage, *since, *at)),
            _ => None,
        })
        .collect()
}

fn stage_changes(out: &[Output]) -> Vec<(Option<StageId>, StageId, bool)> {
    out.iter()
        .filter_map(|o| match *o {
            Output::StageChanged { from, to, late, .. } => Some((from, to, late)),
            _ => None,
        })
        .collect()
}

fn rule_bit(journey: &Journey, name: &str) -> u32 {
    let r = journey.hot_rules.iter().position(|r| r.name == name).unwrap_or_else(|| panic!("no hot rule {name}"));
    1 << r
}

// ---- 1. clarification after a quote ---------------------------------------------------------

/// Northwind: demo, quote, then a question about a quote line a week later.
fn clarification_story(p: &mut Playbook) -> Vec<Output> {
    p.web("usr_8812", "demo_requested", day(0.0));
    p.crm("usr_8812", "quote_sent", day(2.0));
    p.send_id("sfdc-case-5003X00002Lm9", "usr_8812", "crm", "quote_clarification_requested", day(9.0))
}

#[test]
fn quote_clarification_within_14_days_raises_one_hot_lead() {
    let mut p = Playbook::new();
    let out = clarification_story(&mut p);
    let leads = hot_leads(&out);
    assert_eq!(leads.len(), 1, "{out:?}");
    let lead = leads[0];
    let journey = p.journey();
    assert_ne!(lead.rules & rule_bit(&journey, "clarification_after_quote"), 0);
    assert_eq!(lead.prospect, p.ix("usr_8812"));
    assert_eq!(lead.stage, p.stage("deciding"));
    assert_eq!(lead.event_id, "sfdc-case-5003X00002Lm9");
    assert_eq!(lead.at, day(9.0));
    assert_eq!(p.engine.stats().hot_leads, 1);

    let hot = out.iter().find(|o| matches!(o, Output::HotLead(_))).unwrap();
    let j = p.json(hot);
    assert_eq!(j["kind"], "hot_lead");
    assert_eq!(j["prospect"], "usr_8812");
    assert_eq!(j["rules"], json!(["clarification_after_quote"]));
    assert_eq!(j["reasons"], json!([CLARIFICATION_REASON]));
    assert_eq!(j["next_commitment"], DECIDING_NEXT);
    assert_eq!(j["stage"], "deciding");
    assert_eq!(j["classification"], "current_opportunity");
    assert_eq!(j["signal"], "quote_clarification_requested");
    assert_eq!(j["event_id"], "sfdc-case-5003X00002Lm9");
    assert_eq!(j["at"], "2026-03-11T09:00:00.000Z");
    assert_eq!(j["alert_id"], lead.alert_id.as_str());

    let view = p.view("usr_8812", Some(day(9.5)));
    assert!(view.hot);
    assert_eq!(view.hot_reason.as_deref(), Some(CLARIFICATION_REASON));
}

#[test]
fn hot_lead_alert_id_is_deterministic() {
    let mut a = Playbook::new();
    let mut b = Playbook::new();
    let id_a = hot_leads(&clarification_story(&mut a))[0].alert_id.clone();
    let id_b = hot_leads(&clarification_story(&mut b))[0].alert_id.clone();
    assert_eq!(id_a, id_b);
    assert_eq!(id_a.len(), 16);
    assert!(id_a.bytes().all(|c| c.is_ascii_hexdigit()), "{id_a}");

    // A different triggering event is a different alert.
    let mut c = Playbook::new();
    c.web("usr_8812", "demo_requested", day(0.0));
    c.crm("usr_8812", "quote_sent", day(2.0));
    let out = c.send_id("sfdc-case-5003X00002Lz1", "usr_8812", "crm", "quote_clarification_requested", day(9.0));
    assert_ne!(hot_leads(&out)[0].alert_id, id_a);
}

#[test]
fn quote_clarification_more_than_14_days_after_quote_is_not_hot() {
    let mut p = Playbook::new();
    p.web("usr_8812", "demo_requested", day(0.0));
    p.crm("usr_8812", "quote_sent", day(2.0));
    let out = p.crm("usr_8812", "quote_clarification_requested", day(16.5));
    assert!(hot_leads(&out).is_empty(), "{out:?}");
    assert_eq!(p.engine.stats().hot_leads, 0);
}

#[test]
fn quote_clarification_without_a_quote_is_not_hot() {
    let mut p = Playbook::new();
    p.web("usr_8812", "demo_requested", day(0.0));
    let out = p.crm("usr_8812", "quote_clarification_requested", day(3.0));
    assert!(hot_leads(&out).is_empty(), "{out:?}");
}

// ---- 2. ghosting after a quote ----------------------------------------------------------------

#[test]
fn silence_for_5_days_after_quote_ghosts_when_time_advances() {
    let mut p = Playbook::new();
    p.web("usr_4410", "demo_requested", day(0.0));
    p.crm("usr_4410", "quote_sent", day(1.0));
    // Due exactly 5 days after the quote; the watermark has to pass it.
    assert!(ghosted(&p.advance(day(6.0))).is_empty());
    let out = p.advance(Ts(day(6.0).0 + 1));
    assert_eq!(ghosted(&out), vec![(p.ix("usr_4410"), p.stage("deciding"), day(1.0), day(6.0))]);
    let j = p.json(&out[0]);
    assert_eq!(
        j,
        json!({"kind": "ghosted", "prospect": "usr_4410", "email": null, "stage": "deciding",
        "classification": "current_opportunity", "next_commitment": DECIDING_NEXT,
        "since": "2026-03-03T09:00:00.000Z", "at": "2026-03-08T09:00:00.000Z"})
    );
    assert!(p.view("usr_4410", None).ghosted);
    assert_eq!(p.engine.stats().ghosted, 1);
    assert!(ghosted(&p.advance(day(60.0))).is_empty(), "a ghost timer fires once");
}

#[test]
fn ghosting_fires_when_another_prospects_event_moves_the_watermark() {
    let mut p = Playbook::new();
    p.web("usr_4410", "demo_requested", day(0.0));
    p.crm("usr_4410", "quote_sent", day(1.0));
    // Watermark = 6.5 - 1 day = 5.5 days: not yet.
    assert!(ghosted(&p.web("anon-77", "page_viewed", day(6.5))).is_empty());
    // Watermark = 7.5 - 1 = 6.5 days, past the due time of 6 days.
    let out = p.web("anon-78", "page_viewed", day(7.5));
    assert_eq!(ghosted(&out), vec![(p.ix("usr_4410"), p.stage("deciding"), day(1.0), day(6.0))]);
}

#[test]
fn ghosting_fires_before_the_prospects_own_later_event() {
    let mut p = Playbook::new();
    p.web("usr_4410", "demo_requested", day(0.0));
    p.crm("usr_4410", "quote_sent", day(1.0));
    // Only this prospect: the watermark (6.5 - 1 days) has not passed the due time, but the
    // prospect's own event after it has.
    let out = p.web("usr_4410", "page_viewed", day(6.5));
    assert_eq!(ghosted(&out), vec![(p.ix("usr_4410"), p.stage("deciding"), day(1.0), day(6.0))]);
    assert_eq!(p.engine.stats().ghosted, 1);
    assert!(!p.view("usr_4410", None).ghosted, "an on-time prospect signal after ghosting clears the flag");
}

#[test]
fn prospect_initiated_signal_within_5_days_prevents_ghosting() {
    for reply_at in [day(1.5), day(5.9), day(6.0)] {
        let mut p = Playbook::new();
        p.web("usr_4410", "demo_requested", day(0.0));
        p.crm("usr_4410", "quote_sent", day(1.0));
        p.web("usr_4410", "page_viewed", reply_at);
        assert_eq!(p.view("usr_4410", None).ghost_due, None, "reply at {reply_at}");
        let out = p.advance(day(15.0));
        assert!(ghosted(&out).is_empty(), "reply at {reply_at}: {out:?}");
        assert!(!p.view("usr_4410", None).ghosted);
        assert_eq!(p.engine.stats().ghosted, 0);
    }
}

#[test]
fn seller_signal_does_not_prevent_ghosting() {
    let mut p = Playbook::new();
    p.web("usr_4410", "demo_requested", day(0.0));
    p.crm("usr_4410", "quote_sent", day(1.0));
    let last_activity = p.view("usr_4410", None).last_activity;
    // The seller books a follow-up; that is not the prospect answering.
    p.crm("usr_4410", "meeting_booked", day(3.0));
    assert_eq!(p.view("usr_4410", None).last_activity, last_activity);
    let out = p.advance(day(8.0));
    assert_eq!(ghosted(&out), vec![(p.ix("usr_4410"), p.stage("deciding"), day(1.0), day(6.0))]);
}

// ---- 3. reviewing with partners ---------------------------------------------------------------

#[test]
fn reviewing_with_partners_after_quote_is_neither_hot_nor_ghosted() {
    let mut p = Playbook::new();
    let mut all = Vec::new();
    all.extend(p.web("usr_5230", "demo_requested", day(0.0)));
    all.extend(p.crm("usr_5230", "quote_sent", day(1.0)));
    all.extend(p.crm("usr_5230", "reviewing_with_partners", day(4.0)));
    all.extend(p.advance(day(12.0)));
    assert!(hot_leads(&all).is_empty(), "{all:?}");
    assert!(ghosted(&all).is_empty(), "{all:?}");
    let view = p.view("usr_5230", Some(day(12.0)));
    assert!(!view.hot);
    assert!(!view.ghosted);
    assert_eq!(view.stage, "deciding");
    assert_eq!(view.last_activity.as_deref(), Some("2026-03-06T09:00:00.000Z"));
    let stats = p.engine.stats();
    assert_eq!((stats.hot_leads, stats.ghosted, stats.alerts_suppressed), (0, 0, 0));
}

// ---- 4. stages --------------------------------------------------------------------------------

#[test]
fn stages_advance_one_step_at_a_time() {
    let mut p = Playbook::new();
    let steps: [(&str, &str, Option<&str>, &str); 5] = [
        ("web", "page_viewed", None, "aware"),
        ("web", "email_subscribed", Some("aware"), "interested"),
        ("web", "demo_requested", Some("interested"), "evaluating"),
        ("crm", "quote_sent", Some("evaluating"), "deciding"),
        ("crm", "deal_won", Some("deciding"), "won"),
    ];
    for (n, (source, signal, from, to)) in steps.into_iter().enumerate() {
        let out = p.send("usr_3107", source, signal, day(n as f64));
        let want = (from.map(|f| p.stage(f)), p.stage(to), false);
        assert_eq!(stage_changes(&out), vec![want], "{signal}");
        let change = out.iter().find(|o| matches!(o, Output::StageChanged { .. })).unwrap();
        let j = p.json(change);
        assert_eq!(j["from"], json!(from));
        assert_eq!(j["to"], to);
        assert_eq!(j["signal"], signal);
        assert_eq!(j["prospect"], "usr_3107");
    }
    let view = p.view("usr_3107", None);
    assert_eq!(view.stage, "won");
    let entered: Vec<&str> = view.stages_entered.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(entered, ["aware", "interested", "evaluating", "deciding", "won"]);
    assert_eq!(p.engine.stats().stage_changes, 5);
}

#[test]
fn a_prospects_first_event_enters_its_signals_stage_directly() {
    let mut p = Playbook::new();
    let out = p.web("usr_2290", "quote_requested", day(0.0));
    assert_eq!(stage_changes(&out), vec![(None, p.stage("deciding"), false)]);
    // A first event that marks no stage still places the prospect in the first one.
    let out = p.web("usr_2291", "unsubscribed", day(0.0));
    assert_eq!(stage_changes(&out), vec![(None, p.stage("aware"), false)]);
}

#[test]
fn backward_signals_do_not_move_the_stage() {
    let mut p = Playbook::new();
    p.web("usr_3107", "page_viewed", day(0.0));
    p.web("usr_3107", "demo_requested", day(1.0));
    p.crm("usr_3107", "quote_sent", day(2.0));
    for (n, (source, signal)) in
        [("web", "page_viewed"), ("web", "content_downloaded"), ("crm", "meeting_booked"), ("web", "add_to_cart")]
            .into_iter()
            .enumerate()
    {
        let out = p.send("usr_3107", source, signal, day(3.0 + n as f64 * 0.1));
        assert!(stage_changes(&out).is_empty(), "{signal}: {out:?}");
    }
    assert_eq!(p.view("usr_3107", None).stage, "deciding");
    assert_eq!(p.engine.stats().stage_changes, 3);
}

#[test]
fn lost_is_terminal_without_reopen_on() {
    let mut p = Playbook::on(b2b_without_reopen());
    p.web("usr_6120", "demo_requested", day(0.0));
    let out = p.crm("usr_6120", "deal_lost", day(1.0));
    assert_eq!(stage_changes(&out), vec![(Some(p.stage("evaluating")), p.stage("lost"), false)]);
    let mut after = Vec::new();
    after.extend(p.web("usr_6120", "quote_requested", day(2.0)));
    after.extend(p.crm("usr_6120", "quote_sent", day(2.5)));
    after.extend(p.web("usr_6120", "referral_made", day(3.0)));
    after.extend(p.advance(day(60.0)));
    assert!(after.is_empty(), "nothing happens to a lost prospect: {after:?}");
    let view = p.view("usr_6120", None);
    assert_eq!(view.stage, "lost");
    assert_eq!(view.classification, Classification::NoCurrentOpportunity);
    assert_eq!(view.ghost_due, None);
}

#[test]
fn a_terminal_stage_holds_even_against_later_ordered_stages() {
    // Move `lost` before `won` in order: only its terminal flag keeps deal_won from moving it.
    let lost = "[[stages]]\nname = \"lost\"\norder = 99\n";
    let won = "[[stages]]\nname = \"won\"\n";
    assert!(B2B.contains(lost) && B2B.contains(won));
    let text = without_reopen(B2B).replace(lost, "[[stages]]\nname = \"lost_moved\"\norder = 99\n").replace(
        won,
        "[[stages]]\nname = \"lost\"\norder = 45\nentered_by = [\"deal_lost\"]\nterminal = true\noutcome = \"lost\"\n\n[[stages]]\nname = \"won\"\n",
    );
    // The old block goes (a stage no signal enters is refused as unreachable).
    let start = text.find("[[stages]]\nname = \"lost_moved\"").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    let text = format!("{}{}", &text[..start], &text[end..]);
    let mut p = Playbook::on(Arc::new(Journey::from_toml_str(&text).expect("reordered journey loads")));
    assert!(p.stage("lost") < p.stage("won"));
    p.web("usr_6120", "demo_requested", day(0.0));
    p.crm("usr_6120", "deal_lost", day(1.0));
    let out = p.crm("usr_6120", "deal_won", day(2.0));
    assert!(stage_changes(&out).is_empty(), "{out:?}");
    assert_eq!(p.view("usr_6120", None).stage, "lost");
}

// ---- 5. duplicates ----------------------------------------------------------------------------

#[test]
fn duplicate_event_id_is_a_no_op() {
    let mut p = Playbook::new();
    p.web("usr_8812", "page_viewed", day(0.0));
    let quote = canonical("web-quote-0042", "usr_8812", "web", "quote_requested", day(1.0));
    let first = p.line(&quote);
    assert_eq!(hot_leads(&first).len(), 1);
    let digest = p.engine.digest();
    let prospect_digest = p.engine.prospect_digest(p.ix("usr_8812"));
    let view = p.view("usr_8812", Some(day(1.0)));
    let stats = p.engine.stats().clone();

    let again = p.line(&quote);
    assert!(again.is_empty(), "{again:?}");
    // The same id with a different body (a retry whose payload was re-rendered) is still a duplicate.
    let retry = canonical("web-quote-0042", "usr_8812", "web", "quote_requested", day(1.01));
    assert!(p.line(&retry).is_empty());

    assert_eq!(p.engine.digest(), digest);
    assert_eq!(p.engine.prospect_digest(p.ix("usr_8812")), prospect_digest);
    assert_eq!(p.view("usr_8812", Some(day(1.0))), view);
    let after = p.engine.stats();
    assert_eq!(after.duplicates, stats.duplicates + 2);
    assert_eq!(after.applied, stats.applied);
    assert_eq!(after.hot_leads, stats.hot_leads);
    assert_eq!(after.alerts_suppressed, stats.alerts_suppressed);
}

#[test]
fn segment_retry_with_the_same_message_id_is_a_duplicate() {
    let mut p = Playbook::new();
    let send = |received: &str| {
        json!({"type": "track", "event": "Demo Requested", "userId": "usr_8812",
            "properties": {"product": "Acme Funnel", "seats": 25},
            "messageId": "ajs-next-1772619120000-718293a4", "timestamp": "2026-03-04T10:12:00.000Z",
            "sentAt": "2026-03-04T10:11:59.912Z", "receivedAt": received, "version": 2})
        .to_string()
    };
    assert_eq!(stage_changes(&p.line(send("2026-03-04T10:12:00.433Z").as_bytes())).len(), 1);
    let digest = p.engine.digest();
    assert!(p.line(send("2026-03-04T10:14:02.118Z").as_bytes()).is_empty());
    assert_eq!(p.engine.digest(), digest);
    assert_eq!(p.engine.stats().duplicates, 1);
}

// ---- 6. late events ---------------------------------------------------------------------------

#[test]
fn late_event_is_reported_counts_but_raises_no_hot_lead() {
    let mut p = Playbook::new();
    p.web("usr_4410", "demo_requested", day(0.0));
    p.crm("usr_4410", "quote_sent", hour(1.0));
    let before = p.view("usr_4410", Some(day(1.0)));
    // Other prospects move the watermark to day 2.
    p.time_passes(day(3.0));
    assert_eq!(p.engine.watermark(), day(2.0));

    // A quote request from day 1 synced late: normally a hot lead.
    let out = p.web("usr_4410", "quote_requested", day(1.0));
    let ix = p.ix("usr_4410");
    let q = p.journey().lookup("quote_requested").unwrap();
    assert_eq!(out, vec![Output::Late { prospect: ix, signal: q, at: day(1.0), watermark: day(2.0) }]);
    assert_eq!(
        p.json(&out[0]),
        json!({"kind": "late", "prospect": "usr_4410", "signal": "quote_requested",
            "at": "2026-03-03T09:00:00.000Z", "watermark": "2026-03-04T09:00:00.000Z"})
    );
    let stats = p.engine.stats();
    assert_eq!((stats.late, stats.hot_leads, stats.applied), (1, 0, 5));

    // It still counts: signal count, score (at its own time), last activity.
    let after = p.view("usr_4410", Some(day(1.0)));
    assert!(after.signal_counts.contains(&("quote_requested".to_string(), 1)), "{:?}", after.signal_counts);
    assert!((after.score - before.score - 30.0).abs() < 0.02, "{} -> {}", before.score, after.score);
    assert_eq!(after.last_activity.as_deref(), Some("2026-03-03T09:00:00.000Z"));
    assert!(!after.hot);

    // And it falls in the quote's silence window, so it cancels the ghost timer.
    assert_eq!(after.ghost_due, None);
    assert!(ghosted(&p.advance(day(10.0))).is_empty());
}

#[test]
fn late_event_is_deduplicated() {
    let mut p = Playbook::new();
    p.web("usr_4410", "page_viewed", day(0.0));
    p.time_passes(day(3.0));
    let late = canonical("mkto-dl-1", "usr_4410", "web", "content_downloaded", day(1.0));
    assert!(matches!(p.line(&late)[0], Output::Late { .. }));
    assert!(p.line(&late).is_empty());
    assert_eq!((p.engine.stats().late, p.engine.stats().duplicates), (1, 1));
}

#[test]
fn late_event_moves_the_stage_forward_flagged_late_and_arms_no_timer() {
    let mut p = Playbook::new();
    p.web("usr_7720", "page_viewed", day(0.0));
    p.time_passes(day(3.0));
    let out = p.web("usr_7720", "demo_requested", day(1.0));
    assert!(matches!(out[0], Output::Late { .. }), "{out:?}");
    assert_eq!(stage_changes(&out), vec![(Some(p.stage("aware")), p.stage("evaluating"), true)]);
    assert_eq!(p.json(&out[1])["late"], true);
    let view = p.view("usr_7720", None);
    assert_eq!(view.stage, "evaluating");
    // Evaluating is watched for stalling, but a late entry arms no stall timer...
    assert_eq!(view.stall_due, None);
    // ...and a late quote arms no ghost timer.
    p.crm("usr_7720", "quote_sent", day(1.5));
    assert_eq!(p.view("usr_7720", None).ghost_due, None);
    let out = p.advance(day(90.0));
    assert!(stalled(&out).is_empty() && ghosted(&out).is_empty(), "{out:?}");
}

#[test]
fn late_event_does_not_clear_a_ghosted_flag_but_an_on_time_one_does() {
    let mut p = Playbook::new();
    p.web("usr_4410", "demo_requested", day(0.0));
    p.crm("usr_4410", "quote_sent", day(1.0));
    let out = p.time_passes(day(8.0));
    assert_eq!(ghosted(&out).len(), 1);
    let out = p.web("usr_4410", "page_viewed", day(6.5));
    assert!(matches!(out[0], Output::Late { .. }));
    assert!(p.view("usr_4410", None).ghosted, "a late signal must not clear ghosted");
    p.web("usr_4410", "page_viewed", day(8.0));
    assert!(!p.view("usr_4410", None).ghosted, "an on-time signal clears ghosted");
}

#[test]
fn late_stage_move_does_not_clear_a_stalled_flag() {
    let mut p = Playbook::new();
    p.web("usr_3107", "demo_requested", day(0.0));
    let out = p.time_passes(day(23.0));
    assert_eq!(stalled(&out).len(), 1);
    assert!(p.view("usr_3107", None).stalled);
    // A quote sent on day 15, synced from the CRM only now.
    let out = p.crm("usr_3107", "quote_sent", day(15.0));
    assert!(matches!(out[0], Output::Late { .. }), "{out:?}");
    assert_eq!(stage_changes(&out), vec![(Some(p.stage("evaluating")), p.stage("deciding"), true)]);
    assert!(p.view("usr_3107", None).stalled, "a late event never clears a stalled flag that already fired");
}

// ---- 7. score decay ---------------------------------------------------------------------------

#[test]
fn score_halves_every_14_days() {
    let mut p = Playbook::new();
    p.web("usr_8812", "demo_requested", day(0.0));
    assert_eq!(p.view("usr_8812", None).score, 25.0);
    assert_eq!(p.view("usr_8812", Some(day(0.0))).score, 25.0);
    assert_eq!(p.view("usr_8812", Some(day(14.0))).score, 12.5);
    assert_eq!(p.view("usr_8812", Some(day(28.0))).score, 6.25);
    assert_eq!(p.view("usr_8812", Some(day(7.0))).score, 17.68);
    // A later event adds its weight to the decayed score.
    p.web("usr_8812", "page_viewed", day(14.0));
    assert_eq!(p.view("usr_8812", None).score, 13.5);
}

#[test]
fn score_is_capped_per_signal_and_clamped_to_max_score() {
    let mut p = Playbook::new();
    for n in 0..15 {
        p.web("anon-9", "page_viewed", Ts(day(0.0).0 + n));
    }
    // page_viewed: weight 1, cap 10.
    assert_eq!(p.view("anon-9", None).score, 10.0);
    for n in 0..10 {
        p.web("usr_2290", "quote_requested", Ts(day(0.0).0 + n));
    }
    assert_eq!(p.view("usr_2290", None).score, 200.0, "max_score is 200");
}

// ---- 8. stalled -------------------------------------------------------------------------------

#[test]
fn twenty_one_days_in_evaluating_without_advance_stalls() {
    let mut p = Playbook::new();
    p.web("usr_3107", "demo_requested", day(0.0));
    // Activity that does not advance the stage does not reset the clock.
    p.web("usr_3107", "page_viewed", day(10.0));
    p.crm("usr_3107", "meeting_booked", day(12.0));
    assert!(stalled(&p.advance(day(21.0))).is_empty());
    let out = p.advance(day(21.5));
    assert_eq!(stalled(&out), vec![(p.ix("usr_3107"), p.stage("evaluating"), day(0.0), day(21.0))]);
    assert_eq!(
        p.json(&out[0]),
        json!({"kind": "stalled", "prospect": "usr_3107", "email": null, "stage": "evaluating",
            "classification": "current_opportunity",
            "next_commitment": "Agree the decision criteria and ask who else should see the quote",
            "since": "2026-03-02T09:00:00.000Z", "at": "2026-03-23T09:00:00.000Z"})
    );
    assert!(p.view("usr_3107", None).stalled);
    assert_eq!(p.engine.stats().stalled, 1);
}

#[test]
fn advancing_a_stage_restarts_the_stall_clock() {
    let mut p = Playbook::new();
    p.web("usr_3107", "demo_requested", day(0.0));
    p.crm("usr_3107", "reviewing_with_partners", day(10.0));
    assert!(stalled(&p.advance(day(25.0))).is_empty());
    let out = p.advance(day(32.0));
    assert_eq!(stalled(&out), vec![(p.ix("usr_3107"), p.stage("deciding"), day(10.0), day(31.0))]);
}

#[test]
fn unwatched_stages_do_not_stall() {
    let mut p = Playbook::new();
    p.web("usr_1201", "content_downloaded", day(0.0));
    assert!(stalled(&p.advance(day(100.0))).is_empty());
}

// ---- 9. alert cooldown ------------------------------------------------------------------------

#[test]
fn second_hot_trigger_within_72_hours_is_suppressed() {
    let mut p = Playbook::new();
    assert_eq!(hot_leads(&p.web("usr_2290", "quote_requested", hour(0.0))).len(), 1);
    let out = p.web("usr_2290", "quote_requested", hour(24.0));
    assert!(hot_leads(&out).is_empty(), "{out:?}");
    assert_eq!(p.engine.stats().alerts_suppressed, 1);
    assert_eq!(p.engine.stats().hot_leads, 1);
    // The suppressed trigger still keeps the prospect hot.
    assert!(p.view("usr_2290", Some(hour(24.0 + 6.5 * 24.0))).hot);

    // After the cooldown an alert goes out again.
    let out = p.web("usr_2290", "quote_requested", hour(73.0));
    let leads = hot_leads(&out);
    assert_eq!(leads.len(), 1);
    assert_ne!(leads[0].rules & rule_bit(&p.journey(), "quote_requested"), 0);
    assert_eq!(p.engine.stats().hot_leads, 2);
    assert_eq!(p.engine.stats().alerts_suppressed, 1);
}

fn suppressed(out: &[Output]) -> Vec<&Output> {
    out.iter().filter(|o| matches!(o, Output::HotLeadSuppressed(_))).collect()
}

#[test]
fn a_stronger_rule_gets_through_a_weaker_rules_cooldown() {
    let mut p = Playbook::new();
    let j = p.journey();
    // Engagement builds up to the score rule (priority 0) without any signal rule.
    for k in 0..3 {
        p.web("usr_3301", "content_downloaded", hour(f64::from(k)));
    }
    p.web("usr_3301", "webinar_registered", hour(4.0));
    p.web("usr_3301", "account_created", hour(5.0));
    let out = p.web("usr_3301", "demo_requested", hour(6.0));
    assert_eq!(hot_leads(&out)[0].rules, rule_bit(&j, "engaged"));
    p.crm("usr_3301", "quote_sent", day(1.0));

    // A day later the micro-certainty (a sequence rule, priority 20) is not swallowed.
    let out = p.crm("usr_3301", "quote_clarification_requested", day(2.0));
    let leads = hot_leads(&out);
    assert_eq!(leads.len(), 1, "{out:?}");
    assert_eq!(leads[0].rules, rule_bit(&j, "clarification_after_quote"));
    assert_eq!(p.view("usr_3301", None).hot_reason.as_deref(), Some(CLARIFICATION_REASON));

    // A weaker rule (a plain signal rule, priority 10) within that alert's cooldown is held
    // back, and says so.
    let out = p.web("usr_3301", "quote_requested", day(2.5));
    assert!(hot_leads(&out).is_empty(), "{out:?}");
    let held = suppressed(&out);
    assert_eq!(held.len(), 1, "{out:?}");
    let json = p.json(held[0]);
    assert_eq!(json["kind"], "hot_lead_suppressed");
    assert_eq!(json["rules"], json!(["quote_requested"]));
    assert_eq!(json["held_by"], "clarification_after_quote");
    assert_eq!(json["cooldown_until"], day(5.0).to_string());
    assert_eq!(json["next_commitment"], DECIDING_NEXT);
    assert_eq!(p.engine.stats().hot_leads, 2);
    assert_eq!(p.engine.stats().alerts_suppressed, 1);
}

#[test]
fn an_explicit_priority_lets_a_score_rule_through_and_equal_rules_are_held() {
    // The score rule made the strongest: a quote request (priority 10) alerts first, then the
    // score crossing 60 within the cooldown still alerts.
    let p30 = "score_at_least = 60.0\npriority = 30";
    let mut p = Playbook::on(b2b_with("score_at_least = 60.0", p30));
    let j = p.journey();
    assert_eq!(hot_leads(&p.web("usr_3302", "quote_requested", hour(0.0))).len(), 1);
    p.web("usr_3302", "demo_requested", hour(1.0));
    let out = p.web("usr_3302", "webinar_registered", hour(2.0));
    assert_eq!(hot_leads(&out).len(), 1, "{out:?}");
    assert_eq!(hot_leads(&out)[0].rules, rule_bit(&j, "engaged"));

    // Without the priority the score rule (0) is held by the quote request's alert (10).
    let mut p = Playbook::new();
    p.web("usr_3302", "quote_requested", hour(0.0));
    p.web("usr_3302", "demo_requested", hour(1.0));
    let out = p.web("usr_3302", "webinar_registered", hour(2.0));
    assert!(hot_leads(&out).is_empty());
    assert_eq!(p.json(suppressed(&out)[0])["held_by"], "quote_requested");
}

#[test]
fn cooldown_is_per_prospect() {
    let mut p = Playbook::new();
    assert_eq!(hot_leads(&p.web("usr_2290", "quote_requested", hour(0.0))).len(), 1);
    assert_eq!(hot_leads(&p.web("usr_2291", "quote_requested", hour(1.0))).len(), 1);
    assert_eq!(p.engine.stats().alerts_suppressed, 0);
}

// ---- 10. disqualified -------------------------------------------------------------------------

#[test]
fn disqualified_prospect_is_not_a_prospect_and_never_hot() {
    let mut p = Playbook::new();
    p.web("usr_7001", "demo_requested", day(0.0));
    assert_eq!(p.view("usr_7001", None).classification, Classification::CurrentOpportunity);
    p.crm("usr_7001", "disqualified", day(1.0));
    assert_eq!(p.view("usr_7001", None).classification, Classification::NotAProspect);

    let mut out = Vec::new();
    out.extend(p.web("usr_7001", "quote_requested", day(2.0)));
    out.extend(p.crm("usr_7001", "quote_sent", day(2.5)));
    out.extend(p.crm("usr_7001", "quote_clarification_requested", day(3.0)));
    out.extend(p.web("usr_7001", "quote_requested", day(6.0)));
    assert!(hot_leads(&out).is_empty(), "{out:?}");
    assert!(p.view("usr_7001", None).score >= 60.0, "the score alone would have made them hot");
    assert_eq!(p.engine.stats().hot_leads, 0);
    let view = p.view("usr_7001", None);
    assert!(!view.hot);
    assert_eq!(view.classification, Classification::NotAProspect);
    assert_eq!(p.engine.census().not_a_prospect, 1);
    let change = out.iter().find(|o| matches!(o, Output::StageChanged { .. })).unwrap();
    assert_eq!(p.json(change)["classification"], "not_a_prospect");
}

// ---- 11. Segment payloads ---------------------------------------------------------------------

#[test]
fn segment_calls_map_to_journey_signals() {
    let journey = b2b();
    let cases = [
        (
            r#"{"type":"track","event":"Demo Requested","properties":{"product":"Acme Funnel","seats":25},"userId":"usr_8812","messageId":"ajs-1","timestamp":"2026-03-04T10:12:00.000Z"}"#,
            EventKind::Named,
            "demo_requested",
        ),
        (
            r#"{"type":"track","event":"Product Added","properties":{"sku":"ACME-GROWTH-ANNUAL","price":4800},"anonymousId":"9f2e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e5f","userId":null,"messageId":"ajs-2","timestamp":"2026-03-12T09:33:20.000Z"}"#,
            EventKind::Named,
            "add_to_cart",
        ),
        (
            r#"{"type":"track","event":"Order Completed","properties":{"order_id":"ord_50012","products":[{"product_id":"plan-growth","quantity":1}]},"userId":"usr_9920","messageId":"ajs-3","timestamp":"2026-03-12T10:23:20.000Z"}"#,
            EventKind::Named,
            "order_placed",
        ),
        (
            r#"{"type":"page","name":"Pricing","properties":{"path":"/pricing"},"anonymousId":"3b1f6c2e","userId":null,"messageId":"ajs-4","timestamp":"2026-03-07T09:20:00.628Z"}"#,
            EventKind::Page,
            "page_viewed",
        ),
        (
            r#"{"type":"screen","name":"Dashboard","userId":"usr_9920","messageId":"ajs-5","timestamp":"2026-03-05T20:11:03.929Z"}"#,
            EventKind::Screen,
            "page_viewed",
        ),
        (
            r#"{"type":"identify","traits":{"email":"Dana.Whitfield@Northwind.example","name":"Dana Whitfield"},"userId":"usr_8812","messageId":"ajs-6","timestamp":"2026-03-07T09:30:00.560Z"}"#,
            EventKind::Identify,
            "identified",
        ),
    ];
    for (line, kind, signal) in cases {
        let ev = codec::decode(line.as_bytes(), &journey, &Limits::default()).unwrap();
        assert_eq!(ev.kind, kind, "{line}");
        assert_eq!(ev.source, Source::Web, "{line}");
        assert_eq!(ev.signal.map(|s| journey.signal(s).name.as_str()), Some(signal), "{line}");
    }

    let mut p = Playbook::new();
    for (line, _, _) in cases {
        p.line(line.as_bytes());
    }
    let dana = p.view("usr_8812", None);
    assert_eq!(dana.email.as_deref(), Some("dana.whitfield@northwind.example"));
    let counts: Vec<(&str, u16)> = dana.signal_counts.iter().map(|(s, c)| (s.as_str(), *c)).collect();
    assert_eq!(counts, [("identified", 1), ("demo_requested", 1)]);
    assert_eq!(p.view("usr_9920", None).stage, "won");
    assert_eq!(p.view("9f2e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e5f", None).stage, "evaluating");
    assert_eq!(p.view("3b1f6c2e", None).stage, "aware");
}

#[test]
fn unknown_segment_events_are_ignored_and_counted() {
    let mut p = Playbook::new();
    let out = p.line(
        br#"{"type":"track","event":"Cart Viewed","properties":{"cart_id":"c-1"},"userId":"usr_9920","messageId":"ajs-7","timestamp":"2026-03-12T10:00:00.000Z"}"#,
    );
    assert!(out.is_empty());
    assert_eq!(p.engine.stats().unmapped, 1);
    assert_eq!(p.engine.stats().applied, 0);
    assert!(p.engine.find("usr_9920").is_none(), "an unmapped event creates no prospect");
    p.line(br#"{"type":"track","event":"Email Opened","userId":"usr_9920","messageId":"ajs-8","timestamp":"2026-03-12T10:01:00.000Z"}"#);
    assert_eq!(p.engine.stats().unmapped, 2);
}

#[test]
fn unmapped_events_are_rejected_when_the_journey_says_so() {
    let mut p = Playbook::on(b2b_with(r#"unmapped_events = "ignore""#, r#"unmapped_events = "reject""#));
    let out = p.line(
        br#"{"type":"track","event":"Cart Viewed","userId":"usr_9920","messageId":"ajs-7","timestamp":"2026-03-12T10:00:00.000Z"}"#,
    );
    match &out[..] {
        [Output::Rejected { reason: RejectReason::UnknownSignal, detail }] => assert!(detail.contains("Cart Viewed")),
        other => panic!("{other:?}"),
    }
    assert_eq!((p.engine.stats().unmapped, p.engine.stats().rejected), (0, 1));
}

#[test]
fn playbook_fixture_decodes_and_maps_to_signals() {
    let journey = b2b();
    let mut unmapped = Vec::new();
    let mut signals = Vec::new();
    let mut p = Playbook::new();
    for line in PLAYBOOK.lines() {
        let ev = codec::decode(line.as_bytes(), &journey, &Limits::default()).unwrap_or_else(|e| panic!("{e}: {line}"));
        match ev.signal {
            Some(s) => signals.push((ev.name.to_string(), journey.signal(s).name.clone())),
            None => unmapped.push(ev.name.to_string()),
        }
        p.line(line.as_bytes());
    }
    assert_eq!(unmapped, ["Pricing Calculator Used", "Email Opened", "Signed Out"]);
    for (name, signal) in [
        ("Demo Requested", "demo_requested"),
        ("Product Added", "add_to_cart"),
        ("Order Completed", "order_placed"),
        ("Whitepaper Downloaded", "content_downloaded"),
        ("Newsletter Subscribed", "email_subscribed"),
        ("Quote Requested", "quote_requested"),
        ("", "page_viewed"),
        ("", "identified"),
    ] {
        assert!(signals.contains(&(name.to_string(), signal.to_string())), "{name} -> {signal}");
    }
    let stats = p.engine.stats();
    assert_eq!((stats.unmapped, stats.duplicates, stats.late, stats.rejected), (3, 1, 1, 0));
    assert_eq!(p.view("usr_8812", None).email.as_deref(), Some("dana.whitfield@northwind.example"));
    assert_eq!(p.view("usr_9920", None).email.as_deref(), Some("li.wei@contoso.example"));
    // Anonymous visitors are prospects of their own, keyed by anonymousId.
    assert_eq!(p.view("3b1f6c2e-9d0a-4f5e-8a77-2c1d9e4b5a60", None).stage, "interested");
}

// ---- 12. source mismatch ----------------------------------------------------------------------

#[test]
fn crm_only_signal_from_the_web_is_rejected() {
    let mut p = Playbook::new();
    let out = p.web("usr_1201", "deal_won", day(0.0));
    match &out[..] {
        [Output::Rejected { reason: RejectReason::SourceMismatch, detail }] => {
            assert!(detail.contains("deal_won") && detail.contains("crm") && detail.contains("web"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(p.json(&out[0])["reason"], "source_mismatch");
    assert_eq!(p.engine.stats().rejected, 1);
    assert!(p.engine.find("usr_1201").is_none(), "a rejected event creates no prospect");

    // A Segment track call is a web event too.
    let out = p.line(br#"{"type":"track","event":"deal_won","userId":"usr_1201","messageId":"ajs-9","timestamp":"2026-03-02T10:00:00Z"}"#);
    assert!(matches!(out[..], [Output::Rejected { reason: RejectReason::SourceMismatch, .. }]), "{out:?}");
    // And a web-only signal from the CRM.
    let out = p.crm("usr_1201", "page_viewed", day(0.1));
    assert!(matches!(out[..], [Output::Rejected { reason: RejectReason::SourceMismatch, .. }]), "{out:?}");
    // `any` signals come from either.
    assert_eq!(hot_leads(&p.crm("usr_1201", "quote_requested", day(0.2))).len(), 1);
    assert_eq!(p.engine.stats().rejected, 3);
}

#[test]
fn a_rejected_event_does_not_move_the_watermark() {
    let mut p = Playbook::new();
    p.web("usr_1201", "page_viewed", day(0.0));
    let wm = p.engine.watermark();
    p.web("usr_1201", "deal_won", day(30.0));
    assert_eq!(p.engine.watermark(), wm);
}

#[test]
fn a_won_customer_is_not_moved_to_lost_by_a_later_deal_lost() {
    let mut p = Playbook::new();
    p.web("usr_7001", "demo_requested", day(0.0));
    p.crm("usr_7001", "deal_won", day(5.0));
    let out = p.crm("usr_7001", "deal_lost", day(40.0));
    assert!(stage_changes(&out).is_empty(), "a lost upsell does not un-win a customer: {out:?}");
    assert_eq!(p.view("usr_7001", None).stage, "won");
    // Said, not silently dropped.
    assert_eq!(
        p.json(&out[0]),
        json!({"kind": "outcome_kept", "prospect": "usr_7001", "stage": "won", "refused": "lost",
            "signal": "deal_lost", "at": day(40.0).to_string()})
    );
}

// ---- gone quiet, next micro-commitment per classification ----------------------------------

/// b2b with a `[gone_quiet]` timer on interested prospects and texts per classification.
fn b2b_quiet() -> Arc<Journey> {
    let text = format!(
        "{}\n[gone_quiet]\ndays = 7\nstages = [\"interested\", \"evaluating\"]\n",
        B2B.replace(
            "opportunity_stages = [\"evaluating\", \"deciding\"]",
            "opportunity_stages = [\"evaluating\", \"deciding\"]\nnext_commitment = { not_a_prospect = \"Nothing to ask\" }",
        )
        .replace(
            "next_commitment = \"Invite them to a 20-minute demo built around their use case\"",
            "next_commitment = \"Invite them to a 20-minute demo built around their use case\"\nnext_commitment_for = { no_current_opportunity = \"Send the monthly digest\" }",
        )
    );
    Arc::new(Journey::from_toml_str(&text).expect("b2b with gone_quiet loads"))
}

fn gone_quiet(out: &[Output]) -> Vec<(ProspectIx, StageId, Ts, Ts)> {
    out.iter()
        .filter_map(|o| match o {
            Output::GoneQuiet { prospect, stage, since, at, .. } => Some((*prospect, *stage, *since, *at)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_prospect_active_then_silent_in_a_watched_stage_goes_quiet() {
    let mut p = Playbook::on(b2b_quiet());
    p.line(
        &json!({"type": "identify", "userId": "usr_5150", "messageId": "m-1", "timestamp": day(0.0).to_string(),
        "traits": {"email": "ana@contoso.example"}})
        .to_string()
        .into_bytes(),
    );
    p.web("usr_5150", "content_downloaded", day(0.0));
    p.web("usr_5150", "page_viewed", day(0.5));
    p.web("usr_5150", "page_viewed", day(3.0));
    // Seven days after the last activity (day 3), not after the first.
    assert!(gone_quiet(&p.advance(day(10.0))).is_empty());
    let out = p.advance(day(10.5));
    assert_eq!(gone_quiet(&out), vec![(p.ix("usr_5150"), p.stage("interested"), day(3.0), day(10.0))]);
    assert_eq!(
        p.json(&out[0]),
        json!({"kind": "gone_quiet", "prospect": "usr_5150", "email": "ana@contoso.example", "stage": "interested",
            "classification": "no_current_opportunity", "next_commitment": "Send the monthly digest",
            "since": day(3.0).to_string(), "at": day(10.0).to_string()})
    );
    assert_eq!(p.engine.census().gone_quiet, 1);
    // Once: nothing more while silent; activity clears it and starts the clock again.
    assert!(gone_quiet(&p.advance(day(30.0))).is_empty());
    p.web("usr_5150", "page_viewed", day(31.0));
    assert_eq!(p.engine.census().gone_quiet, 0);
    assert_eq!(gone_quiet(&p.advance(day(38.5))).len(), 1);
}

#[test]
fn quiet_is_judged_in_event_time_whatever_fires_it() {
    // The prospect's own later event fires the silence it ends, before it counts as activity.
    let mut p = Playbook::on(b2b_quiet());
    p.web("usr_5151", "content_downloaded", day(0.0));
    let out = p.web("usr_5151", "page_viewed", day(9.0));
    assert_eq!(gone_quiet(&out), vec![(p.ix("usr_5151"), p.stage("interested"), day(0.0), day(7.0))]);
    // Unwatched stages do not go quiet; seller signals are not activity.
    let mut p = Playbook::on(b2b_quiet());
    p.web("usr_5152", "page_viewed", day(0.0));
    assert!(gone_quiet(&p.advance(day(30.0))).is_empty());
    p.web("usr_5152", "demo_requested", day(31.0));
    p.crm("usr_5152", "meeting_booked", day(35.0));
    let out = p.advance(day(38.5));
    assert_eq!(gone_quiet(&out), vec![(p.ix("usr_5152"), p.stage("evaluating"), day(31.0), day(38.0))]);
}

#[test]
fn the_next_commitment_depends_on_stage_and_classification() {
    let j = b2b_quiet();
    let interested = j.stage_by_name("interested").unwrap();
    let deciding = j.stage_by_name("deciding").unwrap();
    assert_eq!(j.next_commitment(interested, Classification::NoCurrentOpportunity), "Send the monthly digest");
    assert_eq!(
        j.next_commitment(interested, Classification::CurrentOpportunity),
        "Invite them to a 20-minute demo built around their use case"
    );
    assert_eq!(j.next_commitment(deciding, Classification::CurrentOpportunity), DECIDING_NEXT);
    // A stage without text of its own falls back to the journey's text for the classification.
    let bare = Journey::from_toml_str(&B2B.replace(&format!("next_commitment = \"{DECIDING_NEXT}\""), "").replace(
        "opportunity_stages = [\"evaluating\", \"deciding\"]",
        "opportunity_stages = [\"evaluating\", \"deciding\"]\nnext_commitment = { current_opportunity = \"Explore in depth\" }",
    ))
    .unwrap();
    assert_eq!(bare.next_commitment(deciding, Classification::CurrentOpportunity), "Explore in depth");
}

#[test]
fn a_restored_engine_rearms_the_quiet_timer() {
    let mut p = Playbook::on(b2b_quiet());
    p.web("usr_5153", "content_downloaded", day(0.0));
    p.web("usr_5153", "page_viewed", day(2.0));
    let mut bytes = Vec::new();
    p.engine.encode_state(&mut bytes);
    let mut restored = Engine::decode_state(b2b_quiet(), &bytes).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    p.engine.advance_to(day(9.5), &mut a);
    restored.advance_to(day(9.5), &mut b);
    assert_eq!(gone_quiet(&a).len(), 1);
    assert_eq!(a, b);
    assert_eq!(p.engine.digest(), restored.digest());
}
