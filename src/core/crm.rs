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
#[derive(Clone, Deserialize)]
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
    #[serde(default = "default_max_entries")]
    pub(super) max_entries: usize,
    #[serde(default = "default_email_properties")]
    pub(super) email_properties: Vec<String>,
}

fn default_email_properties() -> Vec<String> {
    ["email", "Email", "primary_email", "emails"].map(String::from).to_vec()
}

fn default_max_entries() -> usize {
    DEFAULT_MAX_ENTRIES
}

impl Default for RawCrm {
    fn default() -> Self {
        RawCrm {
            contact_objects: default_contact_objects(),
            unknown_previous: UnknownPrevious::default(),
            links: Vec::new(),
            signals: Vec::new(),
            max_entries: DEFAULT_MAX_ENTRIES,
            email_properties: default_email_properties(),
        }
    }
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
#[derive(Clone, Debug, PartialEq)]
pub struct CrmTable {
    /// Objects whose id is the prospect (HubSpot `contact`, Salesforce `Contact` / `Lead`,
    /// Pipedrive `person`).
    pub contact_objects: Vec<String>,
    pub unknown_previous: UnknownPrevious,
    /// object → the property naming its contact (Pipedrive deal `person_id`).
    pub links: BTreeMap<String, String>,
    /// object → property → [(value, signal)].
    pub signals: BTreeMap<String, BTreeMap<String, Vec<(String, SignalId)>>>,
    /// Entries one shard remembers per CRM input topic ([`CrmMemory`]).
    pub max_entries: usize,
    /// Properties (columns) of a contact object that hold its email, first found wins.
    pub email_properties: Vec<String>,
}

impl Default for CrmTable {
    fn default() -> Self {
        CrmTable {
            contact_objects: Vec::new(),
            unknown_previous: UnknownPrevious::default(),
            links: BTreeMap::new(),
            signals: BTreeMap::new(),
            max_entries: DEFAULT_MAX_ENTRIES,
            email_properties: default_email_properties(),
        }
    }
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
            max_entries: raw.max_entries,
            email_properties: raw.email_properties,
            ..CrmTable::default()
        };
        if raw.max_entries == 0 {
            return Err(JourneyError::Invalid {
                at: "crm.max_entries".into(),
                problem: format!("must be at least 1 (default {DEFAULT_MAX_ENTRIES})"),
            });
        }
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

    /// Whether `property` of `object` holds a contact's email.
    pub fn is_email(&self, object: &str, property: &str) -> bool {
        self.is_contact(object) && self.email_properties.iter().any(|p| p == property)
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
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(String, String, String);

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

/// Default of `[crm] max_entries`: entries (property values and contact links) one shard
/// remembers per CRM input topic.
pub const DEFAULT_MAX_ENTRIES: usize = 200_000;

/// What an entry of the memory is: a property's last value or an object's contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EntryKind {
    Value = 0,
    Link = 1,
    /// A contact's email, by prospect (contact) id.
    Email = 2,
}

/// One remembered entry, as the state stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A property's last value (`None`: null) and the time of its change.
    Value(Option<String>, Ts),
    /// An object's contact.
    Link(String),
    /// A contact's email (trimmed, lower-cased).
    Email(String),
}

/// What a shard remembers of one CRM input topic's objects: the last value of every mapped
/// property (with the time of its change) and the contact of every linked object.
///
/// **Bounded**: at most `limit` entries (values and links together). Each write that changes
/// an entry stamps it with the next number of a counter the memory keeps; past the limit, the
/// entry with the oldest stamp (the least recently changed) is evicted and counted
/// ([`CrmMemory::evicted`]). A later change of an evicted value finds no previous value
/// (`[crm] unknown_previous` decides); a later change of an object whose evicted link named
/// its contact finds no contact (`unknown_prospect`). The stamps are state, so eviction is the
/// same after a restore, and in replay, as without it.
///
/// Lookups never allocate; a fixed hash seed keeps the core free of randomness (the keys are ids
/// the CRM issued). Entries changed since [`CrmMemory::take_changes`] are tracked for the
/// changelog.
#[derive(Clone, Debug)]
pub struct CrmMemory {
    /// (object, id, property) → last value of a mapped property, the time of its change, stamp.
    values: HashMap<Key, (Option<String>, Ts, u64), FixedState>,
    /// (object, id, "") → contact id, stamp.
    links: HashMap<Key, (String, u64), FixedState>,
    /// ("", contact id, "") → the contact's email, stamp.
    emails: HashMap<Key, (String, u64), FixedState>,
    /// stamp → entry, oldest first: the eviction order.
    order: BTreeMap<u64, (EntryKind, Key)>,
    next: u64,
    limit: usize,
    /// Entries evicted by this process (not state: a counter for metrics and reports).
    evicted: u64,
    /// The changelog's changes since the last [`CrmMemory::take_changes`]: every entry
    /// stamped from `log.from` on, and the keys removed (or to be written again) since.
    log: Changes,
    /// What [`CrmMemory::take_changes`] took, carried by the next capture to the changelog
    /// writer.
    taken: Changes,
    /// The changes since the last [`CrmMemory::capture_into`] (an incremental capture copies
    /// only these).
    capture: Changes,
    /// More entries were removed since the last capture than the memory holds: the next
    /// capture copies everything (and the list is not kept).
    capture_full: bool,
    /// Whether changes are tracked at all (not in replay, which neither captures nor writes a
    /// changelog).
    track: bool,
}

/// Changes to a [`CrmMemory`] since some moment: each change stamps its entry, so the entries
/// written since are those stamped from `from` on (read from the eviction order, no set of
/// keys kept); removed entries are listed.
#[derive(Clone, Debug, Default)]
pub struct Changes {
    from: u64,
    to: u64,
    removed: Vec<(EntryKind, Key)>,
}

impl Changes {
    fn at(stamp: u64) -> Changes {
        Changes { from: stamp, to: stamp, removed: Vec::new() }
    }

    fn is_empty(&self) -> bool {
        self.from >= self.to && self.removed.is_empty()
    }

    /// These changes and `other` together.
    fn absorb(&mut self, mut other: Changes) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() {
            (self.from, self.to) = (other.from, other.to);
        } else {
            (self.from, self.to) = (self.from.min(other.from), self.to.max(other.to));
        }
        self.removed.append(&mut other.removed);
    }
}

impl Default for CrmMemory {
    fn default() -> Self {
        CrmMemory::with_limit(DEFAULT_MAX_ENTRIES)
    }
}

impl PartialEq for CrmMemory {
    fn eq(&self, other: &Self) -> bool {
        self.values == other.values && self.links == other.links && self.emails == other.emails
    }
}

impl Eq for CrmMemory {}

impl CrmMemory {
    /// An empty memory holding at most `limit` entries (at least 1).
    pub fn with_limit(limit: usize) -> CrmMemory {
        CrmMemory {
            values: HashMap::default(),
            links: HashMap::default(),
            emails: HashMap::default(),
            order: BTreeMap::new(),
            next: 0,
            limit: limit.max(1),
            evicted: 0,
            log: Changes::default(),
            taken: Changes::default(),
            capture: Changes::default(),
            capture_full: false,
            track: true,
        }
    }

    /// The same memory without change tracking (for `replay`, which neither captures nor writes
    /// a changelog).
    pub fn untracked(mut self) -> CrmMemory {
        self.track = false;
        self
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Entries evicted by this process since the memory was made or restored.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// A new stamp for `key`, replacing `old`; evicts past the limit.
    fn stamp(&mut self, kind: EntryKind, key: &Key, old: Option<u64>) -> u64 {
        if let Some(old) = old {
            self.order.remove(&old);
        }
        let s = self.next;
        self.next += 1;
        self.order.insert(s, (kind, key.clone()));
        self.log.to = self.next;
        self.capture.to = self.next;
        s
    }

    /// An entry removed (or to be written again): the changelog and the next capture look it up.
    fn removed(&mut self, kind: EntryKind, key: Key) {
        if !self.track {
            return;
        }
        if self.capture.removed.len() >= self.limit {
            self.capture.removed = Vec::new();
            self.capture_full = true;
        }
        if !self.capture_full {
            self.capture.removed.push((kind, key.clone()));
        }
        self.log.removed.push((kind, key));
    }

    fn evict(&mut self) {
        while self.len() > self.limit {
            let Some((_, (kind, key))) = self.order.pop_first() else { return };
            match kind {
                EntryKind::Value => {
                    self.values.remove(&key);
                }
                EntryKind::Link => {
                    self.links.remove(&key);
                }
                EntryKind::Email => {
                    self.emails.remove(&key);
                }
            }
            self.evicted += 1;
            self.removed(kind, key);
        }
    }

    pub fn link(&mut self, object: &str, id: &str, contact: &str) {
        let key = Ref(object, id, "");
        let old = match self.links.get(&key) {
            Some((c, _)) if c == contact => return,
            Some((_, s)) => Some(*s),
            None => None,
        };
        let key = key.owned();
        let s = self.stamp(EntryKind::Link, &key, old);
        self.links.insert(key, (contact.to_string(), s));
        self.evict();
    }

    pub fn unlink(&mut self, object: &str, id: &str) {
        if let Some((k, (_, s))) = self.links.remove_entry(&Ref(object, id, "")) {
            self.order.remove(&s);
            self.removed(EntryKind::Link, k);
        }
    }

    pub fn contact(&self, object: &str, id: &str) -> Option<&str> {
        self.links.get(&Ref(object, id, "")).map(|(c, _)| c.as_str())
    }

    /// Remembers a contact's email (already trimmed and lower-cased).
    pub fn set_email(&mut self, contact: &str, email: &str) {
        let key = Ref("", contact, "");
        let old = match self.emails.get(&key) {
            Some((e, _)) if e == email => return,
            Some((_, s)) => Some(*s),
            None => None,
        };
        let key = key.owned();
        let s = self.stamp(EntryKind::Email, &key, old);
        self.emails.insert(key, (email.to_string(), s));
        self.evict();
    }

    /// A contact's email, if a change of it gave one.
    pub fn email(&self, contact: &str) -> Option<&str> {
        self.emails.get(&Ref("", contact, "")).map(|(e, _)| e.as_str())
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
        let remembered = match self.values.get(&key) {
            Some(slot) if slot.1 > at => None,
            Some(slot) => {
                let (was, old) = (slot.0.clone(), slot.2);
                let key = key.owned();
                let s = self.stamp(EntryKind::Value, &key, Some(old));
                self.values.insert(key, (new.map(str::to_string), at, s));
                Some(was)
            }
            None => {
                let key = key.owned();
                let s = self.stamp(EntryKind::Value, &key, None);
                self.values.insert(key, (new.map(str::to_string), at, s));
                self.evict();
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

    /// Entries remembered (values, links and emails).
    pub fn len(&self) -> usize {
        self.values.len() + self.links.len() + self.emails.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether entries changed since the last [`CrmMemory::take_changes`].
    pub fn has_changes(&self) -> bool {
        !self.log.is_empty()
    }

    /// Moves the changes since the last call to the taken list, which the next
    /// [`CrmMemory::capture_into`] hands to its destination (the changelog writes them from
    /// there).
    pub fn take_changes(&mut self) {
        let log = std::mem::replace(&mut self.log, Changes::at(self.next));
        self.taken.absorb(log);
        // Checkpoints encode from the live memory (no capture copy): nothing to track for one.
        self.capture = Changes::at(self.next);
        self.capture_full = true;
    }

    /// Marks changes again (a checkpoint that failed hands back what it took).
    pub fn mark_changed(&mut self, changes: Changes) {
        self.log.absorb(changes);
    }

    /// The entries a capture carries for the changelog, in key order, each with its current
    /// entry (`None`: removed).
    pub fn taken(&self) -> impl Iterator<Item = (EntryKind, &Key, Option<(Entry, u64)>)> + '_ {
        let written =
            self.order.range(self.taken.from..self.taken.to.max(self.taken.from)).map(|(_, (k, key))| (*k, key));
        let mut t: Vec<(EntryKind, &Key)> =
            self.taken.removed.iter().map(|(k, key)| (*k, key)).chain(written).collect();
        t.sort();
        t.dedup();
        t.into_iter().map(|(kind, key)| (kind, key, self.entry(kind, key)))
    }

    /// The taken changes, emptied (handed back when a checkpoint fails).
    pub fn take_taken(&mut self) -> Changes {
        std::mem::take(&mut self.taken)
    }

    fn entry(&self, kind: EntryKind, key: &Key) -> Option<(Entry, u64)> {
        match kind {
            EntryKind::Value => self.values.get(key).map(|(v, t, s)| (Entry::Value(v.clone(), *t), *s)),
            EntryKind::Link => self.links.get(key).map(|(c, s)| (Entry::Link(c.clone()), *s)),
            EntryKind::Email => self.emails.get(key).map(|(e, s)| (Entry::Email(e.clone()), *s)),
        }
    }

    /// Copies the entries into `dst` (for a checkpoint's capture) and hands it the taken list.
    /// With `incremental` (`dst` holds this memory's previous capture), only the entries
    /// written or removed since then are copied.
    pub fn capture_into(&mut self, dst: &mut CrmMemory, incremental: bool) {
        let changes = std::mem::replace(&mut self.capture, Changes::at(self.next));
        if incremental && !std::mem::take(&mut self.capture_full) {
            for (kind, key) in changes.removed {
                if self.entry(kind, &key).is_none() {
                    dst.restore(kind, key, None);
                }
            }
            let from = changes.from.min(changes.to);
            for (&s, (kind, key)) in self.order.range(from..) {
                let entry = self.entry(*kind, key).map(|(e, _)| (e, s));
                dst.restore(*kind, key.clone(), entry);
            }
        } else {
            self.capture_full = false;
            dst.values.clone_from(&self.values);
            dst.links.clone_from(&self.links);
            dst.emails.clone_from(&self.emails);
            dst.order.clone_from(&self.order);
        }
        dst.next = self.next;
        dst.limit = self.limit;
        dst.log = Changes::at(self.next);
        dst.capture = Changes::at(self.next);
        dst.taken = std::mem::take(&mut self.taken);
    }

    /// Installs an entry read from state (`None`: removes it); nothing is marked changed.
    pub fn restore(&mut self, kind: EntryKind, key: Key, entry: Option<(Entry, u64)>) {
        let old = match kind {
            EntryKind::Value => self.values.remove(&key).map(|e| e.2),
            EntryKind::Link => self.links.remove(&key).map(|e| e.1),
            EntryKind::Email => self.emails.remove(&key).map(|e| e.1),
        };
        if let Some(s) = old {
            self.order.remove(&s);
        }
        let Some((entry, s)) = entry else { return };
        match entry {
            Entry::Value(v, t) => {
                self.values.insert(key.clone(), (v, t, s));
            }
            Entry::Link(c) => {
                self.links.insert(key.clone(), (c, s));
            }
            Entry::Email(e) => {
                self.emails.insert(key.clone(), (e, s));
            }
        }
        self.order.insert(s, (kind, key));
        self.next = self.next.max(s + 1);
    }

    /// Evicts past the limit after a restore (a state written under a larger limit).
    pub fn finish_restore(&mut self) {
        self.evict();
        self.log = Changes::at(self.next);
        self.capture = Changes::at(self.next);
    }

    /// Marks one entry changed (a changelog record of a checkpoint that did not finish: the next
    /// checkpoint rewrites or deletes it).
    pub fn mark_one(&mut self, kind: EntryKind, key: Key) {
        self.removed(kind, key);
    }

    /// Every entry, oldest stamp first.
    pub fn entries(&self) -> impl Iterator<Item = (EntryKind, &Key, Entry, u64)> + '_ {
        self.order.iter().filter_map(|(s, (kind, key))| self.entry(*kind, key).map(|(e, _)| (*kind, key, e, *s)))
    }

    /// Approximate heap bytes, for reports.
    pub fn heap_bytes(&self) -> usize {
        let key = |k: &Key| 3 * 24 + k.0.len() + k.1.len() + k.2.len();
        self.values.iter().map(|(k, (v, _, _))| 2 * key(k) + 48 + v.as_ref().map_or(0, String::len)).sum::<usize>()
            + self.links.iter().chain(&self.emails).map(|(k, (c, _))| 2 * key(k) + 48 + c.len()).sum::<usize>()
    }
}

/// Entry bytes, shared by the state's CRM section and the changelog's CRM records.
pub mod bytes {
    use super::{Entry, EntryKind, Key};
    use crate::core::snapshot::{Dec, Enc, StateError};

    /// `kind u8, object, id, property` (strings length-prefixed).
    pub fn encode_key(kind: EntryKind, key: &Key, w: &mut Enc<'_>) {
        w.u8(kind as u8);
        w.bytes(key.0.as_bytes());
        w.bytes(key.1.as_bytes());
        w.bytes(key.2.as_bytes());
    }

    pub fn decode_key(r: &mut Dec<'_>) -> Result<(EntryKind, Key), StateError> {
        let at = r.position();
        let kind = match r.u8("crm entry kind")? {
            0 => EntryKind::Value,
            1 => EntryKind::Link,
            2 => EntryKind::Email,
            _ => return Err(StateError::Invalid { what: "crm entry kind", at }),
        };
        let key = Key(r.str("crm object")?.into(), r.str("crm id")?.into(), r.str("crm property")?.into());
        Ok((kind, key))
    }

    /// `stamp u64`, then a value (`ts`, `u8` 1 + string or 0 for null), a link (contact) or an
    /// email.
    pub fn encode_entry(entry: &Entry, stamp: u64, w: &mut Enc<'_>) {
        w.u64(stamp);
        match entry {
            Entry::Value(v, t) => {
                w.ts(*t);
                match v {
                    Some(v) => {
                        w.u8(1);
                        w.bytes(v.as_bytes());
                    }
                    None => w.u8(0),
                }
            }
            Entry::Link(c) | Entry::Email(c) => w.bytes(c.as_bytes()),
        }
    }

    pub fn decode_entry(kind: EntryKind, r: &mut Dec<'_>) -> Result<(Entry, u64), StateError> {
        let stamp = r.u64("crm stamp")?;
        let entry = match kind {
            EntryKind::Value => {
                let t = r.ts("crm time")?;
                let at = r.position();
                let v = match r.u8("crm value")? {
                    0 => None,
                    1 => Some(r.str("crm value")?.to_string()),
                    _ => return Err(StateError::Invalid { what: "crm value", at }),
                };
                Entry::Value(v, t)
            }
            EntryKind::Link => Entry::Link(r.str("crm contact")?.to_string()),
            EntryKind::Email => Entry::Email(r.str("crm email")?.to_string()),
        };
        Ok((entry, stamp))
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

    fn value(m: &CrmMemory, id: &str) -> Option<Option<String>> {
        m.entries().find(|(k, key, _, _)| *k == EntryKind::Value && key.1 == id).map(|(_, _, e, _)| match e {
            Entry::Value(v, _) => v,
            Entry::Link(_) | Entry::Email(_) => unreachable!("a value entry"),
        })
    }

    #[test]
    fn past_the_limit_the_least_recently_changed_entry_is_evicted_and_counted() {
        let mut m = CrmMemory::with_limit(3);
        let (skip, t) = (UnknownPrevious::Skip, Ts(10));
        for id in ["1", "2", "3"] {
            m.transition(("deal", id, "dealstage"), Some("a"), t, &Previous::Unknown, skip, false);
        }
        // Deal 1 changes again: deal 2 is now the least recently changed.
        assert!(m.transition(("deal", "1", "dealstage"), Some("b"), t, &Previous::Unknown, skip, false));
        m.link("deal", "4", "c-4");
        assert_eq!((m.len(), m.evicted()), (3, 1));
        assert_eq!(value(&m, "2"), None, "deal 2 evicted");
        assert_eq!(value(&m, "1"), Some(Some("b".into())));
        // Its next change finds no previous value: the policy decides (skip: no signal).
        assert!(!m.transition(("deal", "2", "dealstage"), Some("z"), t, &Previous::Unknown, skip, false));
        assert_eq!(m.evicted(), 2, "deal 3 went to make room");
        // A link that does not change is not a change (no new stamp): deal 1's value goes next.
        m.link("deal", "4", "c-4");
        m.transition(("deal", "5", "dealstage"), Some("a"), t, &Previous::Unknown, skip, false);
        assert_eq!(value(&m, "1"), None);
        assert_eq!(m.contact("deal", "4"), Some("c-4"));
    }

    #[test]
    fn changes_are_tracked_and_a_restored_copy_evicts_in_the_same_order() {
        let mut m = CrmMemory::with_limit(4);
        let (fire, t) = (UnknownPrevious::Fire, Ts(10));
        for id in ["1", "2", "3", "4"] {
            m.transition(("deal", id, "dealstage"), Some("a"), t, &Previous::Unknown, fire, false);
        }
        m.link("deal", "1", "c-1");
        m.take_changes();
        let taken: Vec<_> = m.taken().map(|(k, key, e)| (k, key.1.clone(), e.is_some())).collect();
        assert_eq!(taken.len(), 5, "four values written, one of them evicted, one link: {taken:?}");
        assert!(taken.contains(&(EntryKind::Value, "1".into(), false)), "the evicted one is a removal");
        assert!(!m.has_changes());
        // A copy rebuilt from the entries (a restore) evicts exactly as the original.
        let mut copy = CrmMemory::with_limit(4);
        for (kind, key, entry, stamp) in m.entries() {
            copy.restore(kind, key.clone(), Some((entry, stamp)));
        }
        copy.finish_restore();
        assert_eq!(copy, m);
        for mem in [&mut m, &mut copy] {
            mem.transition(("deal", "9", "dealstage"), Some("a"), t, &Previous::Unknown, fire, false);
        }
        assert_eq!(copy, m);
        assert_eq!(value(&m, "2"), None);
    }

    #[test]
    fn an_incremental_capture_equals_a_full_copy() {
        let (fire, t) = (UnknownPrevious::Fire, Ts(10));
        let mut m = CrmMemory::with_limit(5);
        for id in ["1", "2", "3"] {
            m.transition(("deal", id, "dealstage"), Some("a"), t, &Previous::Unknown, fire, false);
            m.link("deal", id, "c");
        }
        let (mut inc, mut full) = (CrmMemory::with_limit(5), CrmMemory::with_limit(5));
        m.capture_into(&mut inc, false);
        // Changes, an unlink, an email and evictions since that capture.
        m.transition(("deal", "2", "dealstage"), Some("b"), t, &Previous::Unknown, fire, false);
        m.unlink("deal", "3");
        m.set_email("c", "c@x.example");
        m.transition(("deal", "4", "dealstage"), Some("a"), t, &Previous::Unknown, fire, false);
        m.capture_into(&mut inc, true);
        m.clone().capture_into(&mut full, false);
        assert_eq!(inc, m);
        assert_eq!(inc, full);
        assert_eq!(
            inc.entries().map(|(k, key, e, s)| (k, key.clone(), e, s)).collect::<Vec<_>>(),
            m.entries().map(|(k, key, e, s)| (k, key.clone(), e, s)).collect::<Vec<_>>(),
            "same eviction order"
        );
        for mem in [&mut m, &mut inc] {
            mem.transition(("deal", "5", "dealstage"), Some("a"), t, &Previous::Unknown, fire, false);
        }
        assert_eq!(inc, m);
    }
}
