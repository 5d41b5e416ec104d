//! Reading the journey file into `RawJourney` without stopping at the first mistake: each unknown
//! key, wrong type or unknown value is reported by its key path (with a "did you mean" where a
//! known name is close), taken out, and the file read again. `Errors` collects what this and
//! `validate` find.

use serde_path_to_error::Segment;
use toml::Value;

use super::JourneyError;
use super::raw::RawJourney;
use crate::core::suggest::{did_you_mean, suggest, unknown_field};

/// Mistakes found so far, and the key paths already reported (so a key taken out for its wrong
/// type is not reported again as missing).
#[derive(Default)]
pub(super) struct Errors {
    pub(super) list: Vec<JourneyError>,
    reported: Vec<String>,
}

impl Errors {
    pub(super) fn add(&mut self, e: JourneyError) {
        self.list.push(e);
    }

    pub(super) fn invalid(&mut self, at: impl Into<String>, problem: impl Into<String>) {
        self.add(JourneyError::Invalid { at: at.into(), problem: problem.into() });
    }

    fn schema(&mut self, path: String, shown: String, problem: String) {
        self.reported.push(path);
        self.add(JourneyError::Schema { at: shown, problem });
    }

    fn was_reported(&self, path: &str) -> bool {
        self.reported.iter().any(|p| p == path)
    }

    /// A required key: `None` is reported missing at `path` (unless its value was already
    /// reported as the wrong type).
    pub(super) fn need<T: Copy>(&mut self, v: Option<T>, path: &str) -> Option<T> {
        if v.is_none() && !self.was_reported(path) {
            self.add(JourneyError::Missing { at: path.to_string() });
        }
        v
    }

    /// A required name: blank is reported (missing or empty) at `path`; true if it is set.
    pub(super) fn need_name(&mut self, v: &str, path: &str) -> bool {
        if v.trim().is_empty() {
            if !self.was_reported(path) {
                self.invalid(path, "must not be empty: set it to a name");
            }
            return false;
        }
        true
    }
}

/// The file as written; schema mistakes go to `errors` and the rest is still read. `None` when
/// the text is not TOML at all (nothing further can be said then).
pub(super) fn read(text: &str, errors: &mut Errors) -> Option<RawJourney> {
    let mut doc = match text.parse::<toml::Table>() {
        Ok(t) => Value::Table(t),
        Err(e) => {
            errors.add(JourneyError::Toml(e.to_string()));
            return None;
        }
    };
    // Each round takes one offending key out, so this ends; the bound is a backstop.
    for _ in 0..1000 {
        let err = match serde_path_to_error::deserialize::<_, RawJourney>(doc.clone()) {
            Ok(raw) => return Some(raw),
            Err(e) => e,
        };
        let segments: Vec<Segment> = err.path().iter().cloned().collect();
        let path = err.path().to_string();
        let shown = shown_path(&doc, &segments);
        let message = err.into_inner().message().to_string();
        let (problem, meant) = explain(&message);
        if !remove(&mut doc, &segments) {
            // Nothing to take out (e.g. a missing key serde itself requires): stop here.
            errors.add(JourneyError::Schema { at: shown, problem });
            return None;
        }
        if let Some(meant) = meant {
            // A misspelt required key is not also reported missing.
            let parent = path.rsplit_once('.').map_or(String::new(), |(p, _)| format!("{p}."));
            errors.reported.push(format!("{parent}{meant}"));
        }
        errors.schema(path, shown, problem);
    }
    None
}

/// The names a serde message quotes in backticks, in order.
fn quoted(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// `` `a`, `b` ``.
fn backticked(names: &[&str]) -> String {
    names.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ")
}

/// A serde message in the words of a journey file, and for an unknown key the known key it was
/// probably meant to be.
fn explain(message: &str) -> (String, Option<String>) {
    let names = quoted(message);
    if let Some((key, known)) = unknown_field(message) {
        match suggest(key, known.iter().copied()) {
            Some(meant) => (format!("unknown key; did you mean `{meant}`?"), Some(meant.to_string())),
            None => (format!("unknown key; expected one of {}", backticked(&known)), None),
        }
    } else if message.starts_with("unknown variant") {
        let value = names.first().unwrap_or(&"");
        let known = names.get(1..).unwrap_or_default();
        let hint = did_you_mean(value, known.iter().copied());
        (format!("unknown value `{value}`; expected one of {}{hint}", backticked(known)), None)
    } else if let Some(rest) = message.strip_prefix("invalid type: ") {
        (format!("wrong type: {rest}"), None)
    } else {
        (message.to_string(), None)
    }
}

/// The path as the journey's own messages write it: an entry of a list of tables followed by its
/// name, if it has one (`signals[3] (`page_viewed`).sorce`).
fn shown_path(doc: &Value, segments: &[Segment]) -> String {
    let mut out = String::new();
    let mut at = Some(doc);
    for seg in segments {
        match seg {
            Segment::Seq { index } => {
                at = at.and_then(|v| v.get(*index));
                out.push_str(&format!("[{index}]"));
                if let Some(name) = at.and_then(|v| v.get("name")).and_then(Value::as_str) {
                    out.push_str(&format!(" (`{name}`)"));
                }
            }
            Segment::Map { key } => {
                at = at.and_then(|v| v.get(key));
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    if out.is_empty() { "(top level)".into() } else { out }
}

/// Takes the value at `segments` out of `doc`; false if there is nothing there to take.
fn remove(doc: &mut Value, segments: &[Segment]) -> bool {
    let Some((last, parents)) = segments.split_last() else { return false };
    let mut at = doc;
    for seg in parents {
        let next = match seg {
            Segment::Seq { index } => at.get_mut(*index),
            Segment::Map { key } => at.get_mut(key.as_str()),
            Segment::Enum { .. } | Segment::Unknown => return false,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (last, at) {
        (Segment::Map { key }, Value::Table(t)) => t.remove(key).is_some(),
        (Segment::Seq { index }, Value::Array(a)) if *index < a.len() => {
            a.remove(*index);
            true
        }
        _ => false,
    }
}
