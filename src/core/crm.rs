//! From CRM object changes to journey signals: the journey's `[crm]` table (which property
//! value of which object is which signal, which objects are contacts, which property of an object
//! names its contact) and [`CrmMemory`], what a shard remembers of the CRM objects it has seen (the
//! last value of every mapped property, the contact of every linked object).
//!
//! A signal fires only on a **transition**: the previous value is known and differs, or the
//! object was created in that state. Pipedrive (`previous`) and Debezium (`before`) carry the
//! previous value; HubSpot webhooks and Salesforce change events do not, so the memory supplies
//! it. When neither does, `[crm] unknown_previous` decides (`fire` by default).
//!
//! Pure and deterministic: the same changes in the same order give the same signals and memory.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use foldhash::fast::FixedState;
use hashbrown::{Equivalent, HashMap};
use serde::Deserialize;

use super::journey::{JourneyError, SignalId};
use super::time::Ts;

/// What to do when a mapped property changes and its previous value is unknown (a HubSpot or
/// Salesforce object not seen since the memory started; a Debezium `before` with only the key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnknownPrevious {
    /// Treat it as a transition: the signal fires (an edit of an object already in that state,
    /// seen for the first time, fires once).
    #[default]
    Fire,
    /// Fire nothing and only remember the value: a transition whose previous value is unknown is
    /// missed.
    Skip,
}

/// `[crm]` as written in the journey file.
#[derive(Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCrm {
    #[serde(default = "default_contact_objects")]
    pub(super) contact_objects: Vec<String>,
    #[serde(default)]
    pub(super) unknown_previous: UnknownPrevious,
    #[serde(default)]
    pub(super) links: Vec<RawLink>,
    #[serde(default)]
    pub(super) signals: Vec<RawCrmSignal>,
}

fn default_contact_objects() -> Vec<String> {
    ["contact", "Contact", "Lead", "person", "contacts"].map(String::from).to_vec()
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLink {
    pub(super) object: String,
    pub(super) contact_property: String,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCrmSignal {
    pub(super) object: String,
    pub(super) property: String,
    pub(super) value: String,
    pub(super) signal: String,
}

/// The validated `[crm]` table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CrmTable {
    /// Objects whose id is the prospect (HubSpot `contact`, Salesforce `Contact` / `Lead`,
    /// Pipedrive `person`).
    pub contact_objects: Vec<String>,
    pub unknown_previous: UnknownPrevious,
    /// object → the property naming its contact (Pipedrive deal `person_id`).
    pub links: BTreeMap<String, String>,
    /// object → property → [(value, signal)].
    pub signals: BTreeMap<String, BTreeMap<String, Vec<(String, SignalId)>>>,
}

impl CrmTable {
    pub(super) fn validate(
        raw: RawCrm,
        signal_of: impl Fn(String, &str) -> Result<SignalId, JourneyError>,
    ) -> Result<CrmTable, JourneyError> {
        let blank = |at: String| JourneyError::Invalid { at, problem: "must not be blank".into() };
        let mut t = CrmTable {
            contact_objects: raw.contact_objects,
            unknown_previous: raw.unknown_previous,
            ..CrmTable::default()
        };
        for (i, l) in raw.links.into_iter().enumerate() {
            if l.object.trim().is_empty() || l.contact_property.trim().is_empty() {
                return Err(blank(format!("crm.links[{i}]")));
            }
            t.links.insert(l.object, l.contact_property);
        }
        for (i, s) in raw.signals.into_iter().enumerate() {
            let at = format!("crm.signals[{i}]");
            if s.object.trim().is_empty() || s.property.trim().is_empty() {
                return Err(blank(at));
            }
            let id = signal_of(format!("{at}.signal"), &s.signal)?;
            let values = t.signals.entry(s.object).or_default().entry(s.property).or_default();
            if values.iter().any(|(v, _)| *v == s.value) {
                return Err(JourneyError::Invalid {
                    at,
                    problem: format!("value `{}` of this object and property is mapped twice", s.value),
                });
            }
            values.push((s.value, id));
        }
        Ok(t)
    }

    pub fn is_contact(&self, object: &str) -> bool {
        self.contact_objects.iter().any(|o| o == object)
    }

    /// Whether any signal is mapped from this object's property.
    pub fn maps(&self, object: &str, property: &str) -> bool {
        self.values(object, property).is_some()
    }

    /// Whether the decoder needs this property of this object: a mapped one, or its link.
    pub fn wants(&self, object: &str, property: &str) -> bool {
        self.maps(object, property) || self.links.get(object).is_some_and(|p| p == property)
    }

    fn values(&self, object: &str, property: &str) -> Option<&[(String, SignalId)]> {
        self.signals.get(object)?.get(property).map(Vec::as_slice)
    }

    /// The signal a property entering `value` fires, if one is mapped.
    pub fn signal(&self, object: &str, property: &str, value: &str) -> Option<SignalId> {
        self.values(object, property)?.iter().find(|(v, _)| v == value).map(|(_, s)| *s)
    }
}

/// What a change says about a property's previous value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Previous {
    /// The format does not say (HubSpot, Salesforce, a Debezium key-only `before`).
    Unknown,
    /// The format says this property did not change (absent from Pipedrive's `previous`).
    Unchanged,
    /// The previous value (`None`: the object was created, or the value was null).
    Was(Option<String>),
}

/// A memory key: (object, id[, property]) as owned strings.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key(String, String, String);

/// The same key borrowed, to look up without allocating; hashes exactly as [`Key`].
struct Ref<'a>(&'a str, &'a str, &'a str);

impl Hash for Ref<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.0.hash(h);
        self.1.hash(h);
        self.2.hash(h);
    }
}

impl Equivalent<Key> for Ref<'_> {
    fn equivalent(&self, k: &Key) -> bool {
        self.0 == k.0 && self.1 == k.1 && self.2 == k.2
    }
}

impl Ref<'_> {
    fn owned(&self) -> Key {
        Key(self.0.to_string(), self.1.to_string(), self.2.to_string())
    }
}

/// What a shard remembers of CRM objects. Lookups never allocate; a fixed hash seed keeps the
/// core free of randomness (the keys are ids the CRM issued). Anything that encodes it must sort
/// it first.
#[derive(Clone, Debug, Default)]
pub struct CrmMemory {
    /// (object, id, property) → last value of a mapped property, and the time of its change.
    values: HashMap<Key, (Option<String>, Ts), FixedState>,
    /// (object, id, "") → contact id.
    links: HashMap<Key, String, FixedState>,
}

impl PartialEq for CrmMemory {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values && self.links == other.links
    }
}

impl Eq for CrmMemory {}

impl CrmMemory {
    pub fn link(&mut self, object: &str, id: &str, contact: &str) {
        let key = Ref(object, id, "");
        match self.links.get_mut(&key) {
            Some(c) if c == contact => {}
            Some(c) => *c = contact.to_string(),
            None => {
                self.links.insert(key.owned(), contact.to_string());
            }
        }
    }

    pub fn unlink(&mut self, object: &str, id: &str) {
        self.links.remove(&Ref(object, id, ""));
    }

    pub fn contact(&self, object: &str, id: &str) -> Option<&str> {
        self.links.get(&Ref(object, id, "")).map(String::as_str)
    }

    /// Remembers `new` as the value of a property changed at `at` and says whether it is a
    /// transition: the previous value (from the change, else from memory) is known and
    /// differs, or unknown and `policy` fires. A change older than the remembered one (delivered
    /// out of order) is not remembered, and its previous value is unknown unless the change says
    /// it. `learn_only` (a snapshot read) remembers and fires nothing.
    pub fn transition(
        &mut self,
        (object, id, property): (&str, &str, &str),
        new: Option<&str>,
        at: Ts,
        previous: &Previous,
        policy: UnknownPrevious,
        learn_only: bool,
    ) -> bool {
        let key = Ref(object, id, property);
        let remembered = match self.values.get_mut(&key) {
            Some(slot) if slot.1 > at => None,
            Some(slot) => Some(std::mem::replace(slot, (new.map(str::to_string), at)).0),
            None => {
                self.values.insert(key.owned(), (new.map(str::to_string), at));
                None
            }
        };
        if learn_only {
            return false;
        }
        let old: Option<Option<String>> = match previous {
            Previous::Was(v) => Some(v.clone()),
            Previous::Unchanged => Some(new.map(str::to_string)),
            Previous::Unknown => remembered,
        };
        match old {
            Some(old) => old.as_deref() != new,
            None => policy == UnknownPrevious::Fire,
        }
    }

    /// Objects remembered (values and links), for reports.
    pub fn len(&self) -> usize {
        self.values.len() + self.links.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.links.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: (&str, &str, &str) = ("deal", "1", "dealstage");

    #[test]
    fn transition_needs_a_known_different_previous_value() {
        let mut m = CrmMemory::default();
        let (fire, t) = (UnknownPrevious::Fire, Ts(10));
        assert!(m.transition(K, Some("contractsent"), t, &Previous::Unknown, fire, false), "unknown: policy fires");
        assert!(!m.transition(K, Some("contractsent"), t, &Previous::Unknown, fire, false), "same as remembered");
        assert!(m.transition(K, Some("closedwon"), t, &Previous::Unknown, fire, false), "differs from remembered");
        assert!(!m.transition(K, Some("closedwon"), t, &Previous::Unchanged, fire, false));
        assert!(m.transition(K, Some("closedwon"), t, &Previous::Was(None), fire, false), "created in that state");
        assert!(!m.transition(K, Some("closedwon"), t, &Previous::Was(Some("closedwon".into())), fire, false));
    }

    #[test]
    fn skip_policy_and_snapshot_reads_only_remember() {
        let mut m = CrmMemory::default();
        let t = Ts(10);
        assert!(!m.transition(K, Some("a"), t, &Previous::Unknown, UnknownPrevious::Skip, false));
        assert!(m.transition(K, Some("b"), t, &Previous::Unknown, UnknownPrevious::Skip, false));
        assert!(!m.transition(K, Some("c"), t, &Previous::Was(None), UnknownPrevious::Fire, true));
        assert!(!m.transition(K, Some("c"), t, &Previous::Unknown, UnknownPrevious::Fire, false));
    }

    #[test]
    fn an_older_change_does_not_overwrite_the_remembered_value() {
        let mut m = CrmMemory::default();
        let skip = UnknownPrevious::Skip;
        m.transition(K, Some("closedwon"), Ts(20), &Previous::Unknown, skip, false);
        // Delivered late: its previous value is unknown, and the memory keeps `closedwon`.
        assert!(!m.transition(K, Some("contractsent"), Ts(10), &Previous::Unknown, skip, false));
        assert!(!m.transition(K, Some("closedwon"), Ts(30), &Previous::Unknown, skip, false));
    }
}
