//! Outputs to JSON: one object per output, with names instead of indexes.

use std::fmt;

use serde::{Serialize, Serializer};

use crate::core::time::write_rfc3339;
use crate::core::{Engine, Output, Ts};

pub use super::report::{CrmMemoryCounts, Figures, ReplayCounts, write_report, write_shard_report};

/// An instant as RFC 3339 in JSON.
pub(super) struct Time(pub(super) Ts);

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

pub(super) fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// A hot-lead alert as JSON (the other outputs are written by hand, [`write_output`]).
#[derive(Serialize)]
struct HotLeadJson<'a> {
    kind: &'static str,
    alert_id: &'a str,
    prospect: &'a str,
    email: Option<&'a str>,
    score: f64,
    stage: &'a str,
    classification: &'static str,
    rules: Vec<&'a str>,
    reasons: Vec<&'a str>,
    next_commitment: &'a str,
    event_id: &'a str,
    signal: &'a str,
    at: Time,
}

/// A hot-lead alert the cooldown held back, as JSON.
#[derive(Serialize)]
struct SuppressedJson<'a> {
    kind: &'static str,
    prospect: &'a str,
    email: Option<&'a str>,
    score: f64,
    stage: &'a str,
    classification: &'static str,
    rules: Vec<&'a str>,
    reasons: Vec<&'a str>,
    /// The rule of the last alert, whose cooldown held this one back.
    held_by: &'a str,
    cooldown_until: Time,
    next_commitment: &'a str,
    event_id: &'a str,
    signal: &'a str,
    at: Time,
}

/// Appends `output` as one JSON object (no newline) to `buf`.
///
/// Journey events are most of the service's output records: they are written field by field
/// (serde's `Serializer` cost 3% of the service's CPU), in the same form serde_json gives
/// (the unit tests hold them to it). Hot-lead alerts go through serde.
pub fn write_output(engine: &Engine, output: &Output, buf: &mut Vec<u8>) -> serde_json::Result<()> {
    let j = &**engine.journey();
    match output {
        Output::StageChanged { prospect, from, to, signal, at, late } => {
            let mut o = Obj::new(buf, "stage_changed");
            o.str("prospect", engine.prospect_id(*prospect));
            o.opt_str("from", from.map(|f| j.stage(f).name.as_str()));
            o.str("to", &j.stage(*to).name);
            o.str("signal", &j.signal(*signal).name);
            o.time("at", *at);
            o.bool("late", *late);
            o.str("classification", engine.prospect(*prospect).classification(j).as_str());
            o.end();
        }
        Output::HotLead(h) => {
            let fired = |r: &usize| h.rules & (1 << r) != 0;
            let class = engine.prospect(h.prospect).classification(j);
            let json = HotLeadJson {
                kind: "hot_lead",
                alert_id: &h.alert_id,
                prospect: engine.prospect_id(h.prospect),
                email: engine.email(h.prospect),
                score: round2(h.score),
                stage: &j.stage(h.stage).name,
                classification: class.as_str(),
                rules: (0..j.hot_rules.len()).filter(fired).map(|r| j.hot_rules[r].name.as_str()).collect(),
                reasons: (0..j.hot_rules.len()).filter(fired).map(|r| j.hot_rules[r].reason.as_str()).collect(),
                next_commitment: j.next_commitment(h.stage, class),
                event_id: &h.event_id,
                signal: &j.signal(h.signal).name,
                at: Time(h.at),
            };
            serde_json::to_writer(buf, &json)?;
        }
        Output::HotLeadSuppressed(s) => {
            let fired = |r: &usize| s.rules & (1 << r) != 0;
            let class = engine.prospect(s.prospect).classification(j);
            let json = SuppressedJson {
                kind: "hot_lead_suppressed",
                prospect: engine.prospect_id(s.prospect),
                email: engine.email(s.prospect),
                score: round2(s.score),
                stage: &j.stage(s.stage).name,
                classification: class.as_str(),
                rules: (0..j.hot_rules.len()).filter(fired).map(|r| j.hot_rules[r].name.as_str()).collect(),
                reasons: (0..j.hot_rules.len()).filter(fired).map(|r| j.hot_rules[r].reason.as_str()).collect(),
                held_by: j.hot_rules.get(s.held_by as usize).map_or("", |r| r.name.as_str()),
                cooldown_until: Time(s.last_alert.plus(j.alert_cooldown)),
                next_commitment: j.next_commitment(s.stage, class),
                event_id: &s.event_id,
                signal: &j.signal(s.signal).name,
                at: Time(s.at),
            };
            serde_json::to_writer(buf, &json)?;
        }
        Output::Ghosted { prospect, stage, since, at, class, email }
        | Output::Stalled { prospect, stage, since, at, class, email }
        | Output::GoneQuiet { prospect, stage, since, at, class, email } => {
            let kind = match output {
                Output::Ghosted { .. } => "ghosted",
                Output::Stalled { .. } => "stalled",
                _ => "gone_quiet",
            };
            let class = *class;
            let mut o = Obj::new(buf, kind);
            o.str("prospect", engine.prospect_id(*prospect));
            o.opt_str("email", email.as_deref());
            o.str("stage", &j.stage(*stage).name);
            o.str("classification", class.as_str());
            o.str("next_commitment", j.next_commitment(*stage, class));
            o.time("since", *since);
            o.time("at", *at);
            o.end();
        }
        Output::Expired { prospect, stage, last_event, at, reason, class } => {
            let mut o = Obj::new(buf, "expired");
            o.str("prospect", engine.prospect_id(*prospect));
            o.str("stage", &j.stage(*stage).name);
            o.str("classification", class.as_str());
            o.str("reason", reason.as_str());
            o.time("last_event_at", *last_event);
            o.time("at", *at);
            o.end();
        }
        Output::OutcomeKept { prospect, stage, refused, signal, at } => {
            let mut o = Obj::new(buf, "outcome_kept");
            o.str("prospect", engine.prospect_id(*prospect));
            o.str("stage", &j.stage(*stage).name);
            o.str("refused", &j.stage(*refused).name);
            o.str("signal", &j.signal(*signal).name);
            o.time("at", *at);
            o.end();
        }
        Output::Late { prospect, signal, at, watermark } => {
            let mut o = Obj::new(buf, "late");
            o.str("prospect", engine.prospect_id(*prospect));
            o.str("signal", &j.signal(*signal).name);
            o.time("at", *at);
            o.time("watermark", *watermark);
            o.end();
        }
        Output::Rejected { reason, detail } => {
            let mut o = Obj::new(buf, "rejected");
            o.str("reason", reason.as_str());
            o.str("detail", detail);
            o.end();
        }
        Output::ProspectMerged { from, into, reason, at } => {
            let mut o = Obj::new(buf, "prospect_merged");
            o.str("from", engine.prospect_id(*from));
            o.str("into", engine.prospect_id(*into));
            o.str("reason", reason.as_str());
            o.time("at", *at);
            o.end();
        }
        Output::MergeRefused { ids, reason, at } => {
            let mut o = Obj::new(buf, "merge_refused");
            o.0.extend_from_slice(b",\"ids\":[");
            put_str(o.0, &ids[0]);
            o.0.push(b',');
            put_str(o.0, &ids[1]);
            o.0.push(b']');
            o.str("reason", reason.as_str());
            o.time("at", *at);
            o.end();
        }
    }
    Ok(())
}

/// A JSON object being written: `{"kind":KIND` first, then one field per call.
struct Obj<'b>(&'b mut Vec<u8>);

impl<'b> Obj<'b> {
    fn new(buf: &'b mut Vec<u8>, kind: &str) -> Obj<'b> {
        buf.extend_from_slice(b"{\"kind\":");
        put_str(buf, kind);
        Obj(buf)
    }

    fn key(&mut self, key: &str) {
        self.0.extend_from_slice(b",\"");
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &str, v: &str) {
        self.key(key);
        put_str(self.0, v);
    }

    fn opt_str(&mut self, key: &str, v: Option<&str>) {
        match v {
            Some(v) => self.str(key, v),
            None => {
                self.key(key);
                self.0.extend_from_slice(b"null");
            }
        }
    }

    fn bool(&mut self, key: &str, v: bool) {
        self.key(key);
        self.0.extend_from_slice(if v { b"true" } else { b"false" });
    }

    fn time(&mut self, key: &str, v: Ts) {
        self.key(key);
        self.0.push(b'"');
        if v.is_none() {
            self.0.extend_from_slice(b"none");
        } else {
            // Writing into a Vec cannot fail.
            let _ = write_rfc3339(v, &mut Utf8Sink(self.0));
        }
        self.0.push(b'"');
    }

    fn end(self) {
        self.0.push(b'}');
    }
}

/// `fmt::Write` into a byte buffer.
struct Utf8Sink<'b>(&'b mut Vec<u8>);

impl fmt::Write for Utf8Sink<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends `s` as a JSON string, escaped as serde_json escapes it.
fn put_str(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut done = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..0x20 => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[done..i]);
        if short.is_empty() {
            buf.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            buf.extend_from_slice(short);
        }
        done = i + 1;
    }
    buf.extend_from_slice(&bytes[done..]);
    buf.push(b'"');
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use super::*;
    use crate::codec::{Limits, decode};
    use crate::core::Journey;
    use crate::traffic::{Generator, Options};

    /// The outputs as serde_json writes them: the reference the hand-written ones are held to.
    #[derive(Serialize)]
    #[serde(tag = "kind", rename_all = "snake_case")]
    enum Reference<'a> {
        StageChanged {
            prospect: &'a str,
            from: Option<&'a str>,
            to: &'a str,
            signal: &'a str,
            at: Time,
            late: bool,
            classification: &'static str,
        },
        Ghosted(Silence<'a>),
        Stalled(Silence<'a>),
        GoneQuiet(Silence<'a>),
        Late {
            prospect: &'a str,
            signal: &'a str,
            at: Time,
            watermark: Time,
        },
        OutcomeKept {
            prospect: &'a str,
            stage: &'a str,
            refused: &'a str,
            signal: &'a str,
            at: Time,
        },
        Expired {
            prospect: &'a str,
            stage: &'a str,
            classification: &'static str,
            reason: &'static str,
            last_event_at: Time,
            at: Time,
        },
        ProspectMerged {
            from: &'a str,
            into: &'a str,
            reason: &'static str,
            at: Time,
        },
        MergeRefused {
            ids: &'a [String; 2],
            reason: &'static str,
            at: Time,
        },
        Rejected {
            reason: &'static str,
            detail: &'a str,
        },
    }

    #[derive(Serialize)]
    struct Silence<'a> {
        prospect: &'a str,
        email: Option<&'a str>,
        stage: &'a str,
        classification: &'static str,
        next_commitment: &'a str,
        since: Time,
        at: Time,
    }

    fn silence<'a>(engine: &'a Engine, output: &'a Output) -> Silence<'a> {
        let j = &**engine.journey();
        let (Output::Ghosted { prospect, stage, since, at, class, email }
        | Output::Stalled { prospect, stage, since, at, class, email }
        | Output::GoneQuiet { prospect, stage, since, at, class, email }) = output
        else {
            unreachable!("silences only")
        };
        let (prospect, stage, since, at, class) = (*prospect, *stage, *since, *at, *class);
        Silence {
            prospect: engine.prospect_id(prospect),
            email: email.as_deref(),
            stage: &j.stage(stage).name,
            classification: class.as_str(),
            next_commitment: j.next_commitment(stage, class),
            since: Time(since),
            at: Time(at),
        }
    }

    fn reference(engine: &Engine, output: &Output) -> Option<String> {
        let j = &**engine.journey();
        let r = match output {
            Output::StageChanged { prospect, from, to, signal, at, late } => Reference::StageChanged {
                prospect: engine.prospect_id(*prospect),
                from: from.map(|f| j.stage(f).name.as_str()),
                to: &j.stage(*to).name,
                signal: &j.signal(*signal).name,
                at: Time(*at),
                late: *late,
                classification: engine.prospect(*prospect).classification(j).as_str(),
            },
            Output::Ghosted { .. } => Reference::Ghosted(silence(engine, output)),
            Output::Stalled { .. } => Reference::Stalled(silence(engine, output)),
            Output::GoneQuiet { .. } => Reference::GoneQuiet(silence(engine, output)),
            Output::Late { prospect, signal, at, watermark } => Reference::Late {
                prospect: engine.prospect_id(*prospect),
                signal: &j.signal(*signal).name,
                at: Time(*at),
                watermark: Time(*watermark),
            },
            Output::Rejected { reason, detail } => Reference::Rejected { reason: reason.as_str(), detail },
            Output::Expired { prospect, stage, last_event, at, reason, class } => Reference::Expired {
                prospect: engine.prospect_id(*prospect),
                stage: &j.stage(*stage).name,
                classification: class.as_str(),
                reason: reason.as_str(),
                last_event_at: Time(*last_event),
                at: Time(*at),
            },
            Output::OutcomeKept { prospect, stage, refused, signal, at } => Reference::OutcomeKept {
                prospect: engine.prospect_id(*prospect),
                stage: &j.stage(*stage).name,
                refused: &j.stage(*refused).name,
                signal: &j.signal(*signal).name,
                at: Time(*at),
            },
            Output::ProspectMerged { from, into, reason, at } => Reference::ProspectMerged {
                from: engine.prospect_id(*from),
                into: engine.prospect_id(*into),
                reason: reason.as_str(),
                at: Time(*at),
            },
            Output::MergeRefused { ids, reason, at } => {
                Reference::MergeRefused { ids, reason: reason.as_str(), at: Time(*at) }
            }
            Output::HotLead(_) | Output::HotLeadSuppressed(_) => return None,
        };
        Some(serde_json::to_string(&r).unwrap())
    }

    #[test]
    fn strings_are_escaped_as_serde_json_escapes_them() {
        let mut samples: Vec<String> = (0u8..0x80).map(|b| format!("a{}b", char::from(b))).collect();
        samples.extend(["", "é", "\u{2028}x\u{2029}", "😀\"\\", "\u{7f}\u{80}\u{ff}"].map(String::from));
        samples.push((0u8..0x80).map(char::from).collect());
        for s in samples {
            let mut buf = Vec::new();
            put_str(&mut buf, &s);
            assert_eq!(String::from_utf8(buf).unwrap(), serde_json::to_string(&s).unwrap());
        }
    }

    /// Every kind of output of generated traffic, plus prospects whose ids need escaping, is
    /// written exactly as serde_json writes it.
    #[test]
    fn outputs_are_written_as_serde_json_writes_them() {
        let journey = Arc::new(Journey::from_toml_str(include_str!("../../deploy/journeys/b2b.toml")).unwrap());
        let mut engine = Engine::new(Arc::clone(&journey));
        let opts = Options { prospects: 400, seed: 5, ..Options::default() };
        let mut g = Generator::new(opts, &journey, false).unwrap();
        let (mut line, mut key, mut outputs) = (Vec::new(), String::new(), Vec::new());
        let mut lines = Vec::new();
        while g.next_into(&mut line, &mut key).is_some() {
            lines.push(line.clone());
        }
        // Ids as they appear escaped in JSON: a quote, a backslash, control characters, non-ASCII.
        for id in [r#"q\"uote"#, r"back\\slash", r"ctl\u0001\u001f", r"tab\tnl\n", r"é\u2028😀"] {
            lines.push(format!("{{\"event_id\":\"e-{id}\",\"prospect_id\":\"{id}\",\"source\":\"web\",\"type\":\"page_viewed\",\"ts\":\"2026-01-05T10:00:00Z\"}}").into_bytes());
        }
        let (mut kinds, mut buf, mut escaped) = (BTreeSet::new(), Vec::new(), false);
        let mut check = |engine: &Engine, outputs: &mut Vec<Output>| {
            for o in outputs.drain(..) {
                buf.clear();
                write_output(engine, &o, &mut buf).unwrap();
                let written = String::from_utf8(buf.clone()).unwrap();
                match reference(engine, &o) {
                    Some(r) => assert_eq!(written, r),
                    None => assert!(serde_json::from_str::<serde_json::Value>(&written).is_ok()),
                }
                kinds.insert(written.split('"').nth(3).unwrap_or_default().to_string());
                escaped |= written.contains(r#""prospect":"q\"uote""#);
            }
        };
        for l in &lines {
            if let Ok(ev) = decode(l, &journey, &Limits::default()) {
                engine.apply(&ev, &mut outputs);
                check(&engine, &mut outputs);
            }
        }
        engine.advance_to(Ts(i64::MAX / 4), &mut outputs);
        check(&engine, &mut outputs);
        assert!(escaped, "no output of the prospect whose id needs escaping");
        for kind in ["stage_changed", "hot_lead", "ghosted", "stalled"] {
            assert!(kinds.contains(kind), "{kind} not exercised: {kinds:?}");
        }
    }
}
