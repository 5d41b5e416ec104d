//! Rendering generated steps as the payloads real pipelines carry: Segment analytics.js calls
//! (track / page / identify with context, the four timestamps, nulls) and our canonical envelope
//! (CRM events always, web events for part of the traffic), plus malformed variants.

use std::io::Write;

use super::model::{Campaign, Sig, Step};
use super::rng::Rng;
use crate::core::Ts;

const FIRST: [&str; 12] =
    ["Dana", "Li", "Amara", "Jonas", "Priya", "Mateo", "Sofia", "Kenji", "Olu", "Freya", "Ravi", "Ines"];
const LAST: [&str; 12] = [
    "Whitfield",
    "Wei",
    "Okafor",
    "Berg",
    "Raman",
    "Alvarez",
    "Rossi",
    "Tanaka",
    "Adeyemi",
    "Larsen",
    "Mehta",
    "Duarte",
];
const COMPANIES: [(&str, &str, u32); 8] = [
    ("Northwind Traders", "northwind.example", 420),
    ("Contoso", "contoso.example", 2300),
    ("Fabrikam", "fabrikam.example", 150),
    ("Tailspin Toys", "tailspin.example", 85),
    ("Wide World Importers", "wideworld.example", 960),
    ("Adventure Works", "adventure-works.example", 3100),
    ("Litware", "litware.example", 40),
    ("Proseware", "proseware.example", 610),
];
const TITLES: [&str; 6] = ["VP Operations", "Head of Growth", "Marketing Manager", "CFO", "Sales Director", "IT Lead"];
const PAGES: [(&str, &str); 8] = [
    ("Home", "/"),
    ("Pricing", "/pricing"),
    ("Product", "/product"),
    ("Customers", "/customers"),
    ("Micro-conversions explained", "/blog/micro-conversions-explained"),
    ("Integrations", "/integrations"),
    ("Security", "/security"),
    ("Careers", "/careers"),
];
const REFERRERS: [&str; 4] =
    ["https://www.google.com/", "https://www.linkedin.com/", "", "https://news.ycombinator.com/"];
const AGENTS: [&str; 3] = [
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36 Edg/131.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/18.1 Mobile/15E148 Safari/604.1",
];
const HOST: &str = "https://www.acme-analytics.example";

/// Who prospect `n` is. Derived from the seed, so never stored.
pub struct Identity {
    pub user_id: String,
    pub anon_id: String,
    pub email: String,
    pub name: String,
    pub company: (&'static str, &'static str, u32),
    pub title: &'static str,
}

/// A bijection on 48 bits for each seed, so user ids never collide within a run: two rounds of
/// a 48-bit permutation with the (mixed) seed between them, so another seed gives unrelated
/// ids rather than the same ids shifted by a person (`n ^ seed` did that).
fn permute48(n: u64, seed: u64) -> u64 {
    const MASK: u64 = (1 << 48) - 1;
    let round = |x: u64| {
        let mut x = x.wrapping_mul(0x9E37_79B9_7F4B) & MASK;
        x ^= x >> 23;
        x = x.wrapping_mul(0x0005_DEEC_E66D) & MASK;
        x ^ (x >> 19)
    };
    round(round(n & MASK) ^ (Rng::derive(seed ^ 0x1D5, 0).next_u64() & MASK))
}

pub fn identity(seed: u64, n: u64) -> Identity {
    let mut r = Rng::derive(seed ^ 0x1D, n);
    let first = *r.pick(&FIRST);
    let last = *r.pick(&LAST);
    let company = *r.pick(&COMPANIES);
    let (a, b) = (r.next_u64(), r.next_u64());
    // Unique per person (`n`): the email rule joins whoever shares one. Some are written with
    // capitals, as people type them.
    let email = if r.chance(0.3) {
        format!("{first}.{last}{n}@{}", company.1.replace("northwind", "Northwind"))
    } else {
        format!("{}.{}{n}@{}", first.to_lowercase(), last.to_lowercase(), company.1)
    };
    Identity {
        user_id: format!("usr_{:012x}", permute48(n, seed)),
        anon_id: uuid4(a, b),
        email,
        name: format!("{first} {last}"),
        company,
        title: TITLES[r.int(0, TITLES.len() as u64 - 1) as usize],
    }
}

impl Identity {
    pub fn key(&self, step: &Step) -> &str {
        if step.identified || step.sig.source() == crate::core::Source::Crm { &self.user_id } else { &self.anon_id }
    }
}

fn ts(out: &mut Vec<u8>, t: Ts) {
    let _ = write!(out, "\"{t}\"");
}

fn properties(out: &mut Vec<u8>, sig: Sig, r: &mut Rng, n: u64) {
    let _ = match sig {
        Sig::PageViewed | Sig::Identified => write!(out, "{{}}"),
        Sig::AdClicked => {
            write!(out, r#"{{"promotion_id":"q{}-retargeting","creative":"ad-{}"}}"#, r.int(1, 4), r.int(1, 3))
        }
        Sig::EmailSubscribed | Sig::Unsubscribed => write!(out, r#"{{"list":"product-updates"}}"#),
        Sig::ContentDownloaded => write!(out, r#"{{"title":"The Micro-Conversion Playbook","format":"pdf"}}"#),
        Sig::WebinarRegistered => {
            write!(out, r#"{{"webinar_id":"wb-{}","title":"Predicting sales from small signals"}}"#, r.int(100, 999))
        }
        Sig::AccountCreated => write!(out, r#"{{"plan":"trial","signup_method":"email"}}"#),
        Sig::DemoRequested => {
            write!(out, r#"{{"product":"Acme Funnel","seats":{},"source_page":"/pricing"}}"#, r.int(5, 200))
        }
        Sig::QuoteRequested => write!(out, r#"{{"plan":"growth","seats":{},"billing":"annual"}}"#, r.int(5, 200)),
        Sig::ProductUsed => {
            write!(out, r#"{{"feature":"{}"}}"#, r.pick(&["funnel_report", "alert_rule", "dashboard", "csv_export"]))
        }
        Sig::ReferralMade => write!(out, r#"{{"channel":"email"}}"#),
        Sig::Unmapped => write!(out, r#"{{"video_id":"demo-tour","position":{}}}"#, r.int(0, 300)),
        Sig::Clarification => write!(
            out,
            r#"{{"deal_id":"D-{n}","owner":"ae_{}","question":"What does line 3 (onboarding package) include?","channel":"email"}}"#,
            n % 17
        ),
        Sig::ReviewingWithPartners => {
            write!(
                out,
                r#"{{"deal_id":"D-{n}","owner":"ae_{}","note":"Reviewing with partners before sign-off"}}"#,
                n % 17
            )
        }
        Sig::DealLost => write!(
            out,
            r#"{{"deal_id":"D-{n}","owner":"ae_{}","reason":"{}"}}"#,
            n % 17,
            r.pick(&["budget", "competitor", "no_decision"])
        ),
        Sig::MeetingBooked | Sig::QuoteSent | Sig::DealWon | Sig::Disqualified => write!(
            out,
            r#"{{"deal_id":"D-{n}","owner":"ae_{}","amount":{},"currency":"EUR","pipeline":"new-business"}}"#,
            n % 17,
            r.int(4, 120) * 1000
        ),
    };
}

/// Our canonical envelope.
pub fn canonical(out: &mut Vec<u8>, id: &Identity, step: &Step, r: &mut Rng, n: u64, campaign: Option<&Campaign>) {
    let prefix = if step.sig.source() == crate::core::Source::Crm { "crm" } else { "evt" };
    let _ = write!(
        out,
        r#"{{"event_id":"{prefix}_{:016x}","prospect_id":"{}","source":"{}","type":"{}","ts":"#,
        r.next_u64(),
        id.key(step),
        step.sig.source().as_str(),
        step.sig.name()
    );
    ts(out, step.ts);
    out.extend_from_slice(br#","properties":"#);
    properties(out, step.sig, r, n);
    if let Some(c) = campaign {
        // Into the properties object: `utm_*` beside what the signal carries.
        out.pop();
        if out.last() != Some(&b'{') {
            out.push(b',');
        }
        let _ = write!(out, r#""utm_source":"{}","utm_medium":"{}","utm_campaign":"{}"}}"#, c.source, c.medium, c.name);
    }
    if step.sig == Sig::Identified {
        let _ = write!(out, r#","email":"{}""#, id.email);
    }
    out.push(b'}');
}

/// A Segment analytics.js call as it reaches Kafka through a Segment/RudderStack pipeline.
pub fn segment(out: &mut Vec<u8>, id: &Identity, step: &Step, r: &mut Rng, n: u64, campaign: Option<&Campaign>) {
    let (title, path) = *r.pick(&PAGES);
    // A campaign arrives as analytics.js sends it: `context.campaign` (even prospects), or only
    // as `utm_*` parameters of the landing page's URL (odd ones).
    let search = match campaign.filter(|_| n % 2 == 1) {
        Some(c) => format!("?utm_source={}&utm_medium={}&utm_campaign={}", c.source, c.medium, c.name),
        None => String::new(),
    };
    match step.sig {
        Sig::PageViewed => {
            let referrer = r.pick(&REFERRERS);
            let _ = write!(
                out,
                r#"{{"type":"page","name":"{title}","properties":{{"path":"{path}","referrer":"{referrer}","search":"{search}","title":"{title} | Acme Analytics","url":"{HOST}{path}{search}"}}"#
            );
        }
        Sig::Identified => {
            let _ = write!(
                out,
                r#"{{"type":"identify","traits":{{"email":"{}","name":"{}","company":{{"name":"{}","employee_count":{}}},"title":"{}"}}"#,
                id.email, id.name, id.company.0, id.company.2, id.title
            );
        }
        sig => {
            let _ = write!(out, r#"{{"type":"track","event":"{}","properties":"#, sig.segment_name());
            properties(out, sig, r, n);
        }
    }
    let _ = write!(
        out,
        r#","anonymousId":"{}","context":{{"ip":"203.0.113.{}","library":{{"name":"analytics.js","version":"next-1.72.0"}},"locale":"en-US","page":{{"path":"{path}","title":"{title} | Acme Analytics","url":"{HOST}{path}{search}"}},"userAgent":"{}""#,
        id.anon_id,
        r.int(1, 254),
        r.pick(&AGENTS)
    );
    let retargeting = r.chance(0.3);
    match campaign.filter(|_| n.is_multiple_of(2)) {
        Some(c) => {
            let _ =
                write!(out, r#","campaign":{{"name":"{}","source":"{}","medium":"{}"}}"#, c.name, c.source, c.medium);
        }
        None if retargeting && campaign.is_none() => {
            let _ = write!(
                out,
                r#","campaign":{{"name":"q1-retargeting","source":"google","medium":"cpc","term":"funnel analytics","content":"ad-b"}}"#
            );
        }
        None => {}
    }
    if step.identified && step.sig != Sig::Identified && r.chance(0.5) {
        let _ = write!(out, r#","traits":{{"email":"{}"}}"#, id.email);
    }
    let skew = r.int(50, 900) as i64;
    let _ = write!(out, r#"}},"messageId":"ajs-next-{}-{:08x}","originalTimestamp":"#, step.ts.0, r.next_u64() as u32);
    ts(out, Ts(step.ts.0 - skew));
    out.extend_from_slice(br#","receivedAt":"#);
    ts(out, Ts(step.ts.0 + 300));
    out.extend_from_slice(br#","sentAt":"#);
    ts(out, Ts(step.ts.0 - skew + 100));
    out.extend_from_slice(br#","timestamp":"#);
    ts(out, step.ts);
    if step.identified {
        let _ = write!(out, r#","userId":"{}""#, id.user_id);
    } else {
        out.extend_from_slice(br#","userId":null"#);
    }
    out.extend_from_slice(br#","version":2,"integrations":{}}"#);
}

/// Kinds of broken input the generator can inject (each a separate, extra line).
pub const MALFORMED_KINDS: u64 = 7;

/// A malformed line of kind `k`, built around a valid rendering of `step`.
pub fn malformed(out: &mut Vec<u8>, id: &Identity, step: &Step, r: &mut Rng, n: u64, k: u64) {
    match k {
        0 => {
            canonical(out, id, step, r, n, None);
            let cut = r.int(1, out.len() as u64 - 2) as usize;
            out.truncate(cut);
        }
        1 => {
            let _ = write!(out, r#"{{"event_id":"evt_bad_{n}","source":"web","type":"page_viewed","ts":"#);
            ts(out, step.ts);
            out.push(b'}');
        }
        2 => {
            let _ = write!(
                out,
                r#"{{"event_id":"evt_badts_{n}","prospect_id":"{}","source":"web","type":"page_viewed","ts":"{}"}}"#,
                id.key(step),
                r.pick(&["2026-13-45T25:61:00Z", "yesterday", "1741339200", "2026-03-07 09:20"])
            );
        }
        3 => {
            let _ = write!(
                out,
                r#"{{"event_id":"evt_badsrc_{n}","prospect_id":"{}","source":"erp","type":"quote_sent","ts":"#,
                id.key(step)
            );
            ts(out, step.ts);
            out.push(b'}');
        }
        4 => {
            let _ = write!(
                out,
                r#"{{"event_id":"evt_deep_{n}","prospect_id":"{}","source":"web","type":"page_viewed","ts":"#,
                id.key(step)
            );
            ts(out, step.ts);
            out.extend_from_slice(br#","properties":"#);
            out.extend(std::iter::repeat_n(b'[', 40));
            out.extend(std::iter::repeat_n(b']', 40));
            out.push(b'}');
        }
        5 => out.extend_from_slice(b"<html><head><title>502 Bad Gateway</title></head></html>"),
        _ => {
            let _ = write!(
                out,
                r#"{{"event_id":"","prospect_id":"{}","source":"web","type":"page_viewed","ts":"#,
                id.key(step)
            );
            ts(out, step.ts);
            out.push(b'}');
        }
    }
}

/// A version-4 UUID in its text form (as analytics.js writes `anonymousId`) from 128 random bits.
pub fn uuid4(a: u64, b: u64) -> String {
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48 & 0x3fff),
        b & 0xffff_ffff_ffff
    )
}
