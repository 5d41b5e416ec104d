//! CRM change events: each format's decoder reads a message into [`Change`]s (pure, no memory),
//! and [`translate`] turns a change into journey signals with the journey's `[crm]` table and
//! the topic's [`CrmMemory`] (transitions, contact links).

mod debezium;
mod hubspot;
mod pipedrive;
mod salesforce;

use std::borrow::Cow;

use std::collections::BTreeMap;

use serde_json::value::RawValue;

use super::fields::{not_before_floor, printable};
use super::format::{Format, InputSpec};
use super::{DecodeError, Limits};
use crate::core::crm::{CrmMemory, CrmTable, Previous};
use crate::core::{Event, EventKind, Journey, Source, Ts};

/// What happened to a CRM object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Op {
    Create,
    Update,
    Delete,
    /// A snapshot read (Debezium `r`): remembered, fires nothing.
    Read,
    /// The object is now linked to this contact (a HubSpot association).
    Link(String),
    /// The link to a contact was removed.
    Unlink,
}

/// One object's change, whatever the CRM.
#[derive(Clone, Debug)]
pub(super) struct Change {
    /// The CRM's own name for the object type (`deal`, `Opportunity`, a Debezium table).
    pub(super) object: String,
    pub(super) id: String,
    pub(super) op: Op,
    /// Stable across redeliveries; the signal's property is appended per event.
    pub(super) event_id: String,
    pub(super) ts: Ts,
    /// (property, new value, previous value); `None` for null.
    pub(super) fields: Vec<(String, Option<String>, Previous)>,
    pub(super) email: Option<String>,
}

/// One element's changes, or why it cannot be read.
pub(super) type Item = (Option<usize>, Result<Vec<Change>, DecodeError>);

/// A member name, borrowed from the payload unless it has escapes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Name<'a>(Cow<'a, str>);

impl std::borrow::Borrow<str> for Name<'_> {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for Name<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> serde::Deserialize<'de> for Name<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::wire::Str::deserialize(d).map(|s| Name(s.0))
    }
}

/// A JSON object's members, values left unparsed: only the few a change needs are read.
pub(super) type Row<'a> = BTreeMap<Name<'a>, &'a RawValue>;

/// A JSON scalar as the string the `[crm]` table compares: strings as they are, numbers and
/// booleans as JSON writes them; `None` for null, objects and arrays.
pub(super) fn scalar(v: &RawValue) -> Option<String> {
    let text = v.get();
    match text.as_bytes().first()? {
        b'"' => serde_json::from_str::<String>(text).ok(),
        b't' => Some("true".into()),
        b'f' => Some("false".into()),
        b'n' | b'{' | b'[' => None,
        _ => serde_json::from_str::<serde_json::Number>(text).ok().map(|n| n.to_string()),
    }
}

/// A contact's email from a property's JSON value: a string, or (Pipedrive's person `email` /
/// `emails`) an array of strings or of `{value, primary}` objects, the primary one else the
/// first; trimmed, lower-cased, dropped when not plausibly an email (as the canonical
/// envelope's `email`).
pub(super) fn email_value(v: &RawValue) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum One {
        Text(String),
        Labelled {
            value: String,
            #[serde(default)]
            primary: bool,
        },
    }
    let text = match serde_json::from_str::<One>(v.get()) {
        Ok(One::Text(t)) => t,
        Ok(One::Labelled { value, .. }) => value,
        Err(_) => {
            let all: Vec<One> = serde_json::from_str(v.get()).ok()?;
            let primary = all.iter().position(|o| matches!(o, One::Labelled { primary: true, .. })).unwrap_or(0);
            match all.into_iter().nth(primary)? {
                One::Text(t) | One::Labelled { value: t, .. } => t,
            }
        }
    };
    contact_email(&text)
}

/// [`super::fields::email`] of a string, owned.
pub(super) fn contact_email(text: &str) -> Option<String> {
    super::fields::email(Some(super::wire::Str(Cow::Borrowed(text)))).map(Cow::into_owned)
}

/// The email of a contact object's row: the first of `[crm] email_properties` it holds.
pub(super) fn row_email(row: &Row<'_>, object: &str, crm: &CrmTable) -> Option<String> {
    if !crm.is_contact(object) {
        return None;
    }
    crm.email_properties.iter().find_map(|p| row.get(p.as_str())).and_then(|v| email_value(v))
}

pub(super) fn wrong(format: Format, detail: impl std::fmt::Display) -> DecodeError {
    DecodeError::WrongShape { format: format.as_str(), detail: detail.to_string() }
}

/// Reads a whole message as JSON (size and depth limits first).
pub(super) fn json<'a, T: serde::Deserialize<'a>>(
    bytes: &'a [u8],
    format: Format,
    limits: &Limits,
) -> Result<T, DecodeError> {
    if bytes.len() > limits.max_bytes {
        return Err(DecodeError::TooLarge { size: bytes.len(), limit: limits.max_bytes });
    }
    if super::wire::too_deep(bytes, limits.max_depth) {
        return Err(DecodeError::TooDeep { limit: limits.max_depth });
    }
    serde_json::from_slice(bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => wrong(format, e),
        _ => DecodeError::InvalidJson(e.to_string()),
    })
}

/// A message's changes. `crm` says which properties matter (mapped ones and links); the others
/// are left out.
fn changes(bytes: &[u8], format: Format, limits: &Limits, crm: &CrmTable) -> Vec<Item> {
    match format {
        Format::Hubspot => hubspot::changes(bytes, limits, crm),
        Format::SalesforceCdc => salesforce::changes(bytes, limits, crm),
        Format::Pipedrive => pipedrive::changes(bytes, limits, crm),
        Format::Debezium => debezium::changes(bytes, limits, crm),
        Format::Auto | Format::Canonical | Format::Segment | Format::Mapped => {
            vec![(None, Err(wrong(format, "not a CRM format")))]
        }
    }
}

/// The time of a message's first change in range, without touching any memory (the merge key).
pub(super) fn first_time(bytes: &[u8], format: Format, journey: &Journey, limits: &Limits) -> Option<Ts> {
    changes(bytes, format, limits, &journey.crm)
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .flatten()
        .map(|c| c.ts)
        .find(|ts| not_before_floor(*ts, "time", journey).is_ok())
}

/// A message's events: each change translated in order; a bad element or change yields one
/// error and the others proceed.
pub(super) fn decode<'a>(
    bytes: &[u8],
    spec: &InputSpec,
    journey: &Journey,
    limits: &Limits,
    memory: &mut CrmMemory,
) -> Vec<(Option<usize>, Result<Event<'a>, DecodeError>)> {
    let source = spec.source().unwrap_or(Source::Crm);
    let mut out = Vec::new();
    for (item, result) in changes(bytes, spec.format, limits, &journey.crm) {
        match result {
            Err(e) => out.push((item, Err(e))),
            Ok(changes) => {
                for c in changes {
                    match translate(c, journey, limits, source, memory) {
                        Ok(events) => out.extend(events.into_iter().map(|e| (item, Ok(e)))),
                        Err(e) => out.push((item, Err(e))),
                    }
                }
            }
        }
    }
    out
}

/// A change's signals: the mapped properties that made a transition (remembered in `memory`
/// whatever the prospect), for the prospect the change names or is linked to.
fn translate<'a>(
    c: Change,
    journey: &Journey,
    limits: &Limits,
    source: Source,
    memory: &mut CrmMemory,
) -> Result<Vec<Event<'a>>, DecodeError> {
    let crm = &journey.crm;
    match &c.op {
        Op::Link(contact) => {
            memory.link(&c.object, &c.id, contact);
            return Ok(Vec::new());
        }
        Op::Unlink => {
            memory.unlink(&c.object, &c.id);
            return Ok(Vec::new());
        }
        Op::Delete => return Ok(Vec::new()),
        Op::Create | Op::Update | Op::Read => {}
    }
    let ts = not_before_floor(c.ts, "time", journey)?;
    // A contact's email is remembered, whatever else the change says.
    if let Some(email) = &c.email
        && crm.is_contact(&c.object)
    {
        memory.set_email(&c.id, email);
    }
    // A link property in the change itself (Pipedrive `person_id`) is learnt first.
    if let Some(prop) = crm.links.get(&c.object)
        && let Some((_, Some(contact), _)) = c.fields.iter().find(|(name, _, _)| name == prop)
    {
        memory.link(&c.object, &c.id, contact);
    }
    let mut signals = Vec::new();
    for (property, new, previous) in &c.fields {
        if !crm.maps(&c.object, property) {
            continue;
        }
        let key = (c.object.as_str(), c.id.as_str(), property.as_str());
        let moved = memory.transition(key, new.as_deref(), ts, previous, crm.unknown_previous, c.op == Op::Read);
        if let (true, Some(v)) = (moved, new)
            && let Some(signal) = crm.signal(&c.object, property, v)
        {
            signals.push((property, signal));
        }
    }
    if signals.is_empty() {
        return Ok(Vec::new());
    }
    let prospect = if crm.is_contact(&c.object) {
        c.id.clone()
    } else {
        memory
            .contact(&c.object, &c.id)
            .map(str::to_string)
            .ok_or_else(|| DecodeError::UnknownProspect { object: c.object.clone(), id: c.id.clone() })?
    };
    let prospect = super::fields::id(Cow::Owned(prospect), "prospect", limits)?;
    printable(&c.event_id, "event_id")?;
    // The contact's email: this change's, else the one its contact's changes gave.
    let email = c.email.clone().or_else(|| memory.email(&prospect).map(str::to_string));
    Ok(signals
        .into_iter()
        .map(|(property, signal)| Event {
            event_id: Cow::Owned(format!("{}/{property}", c.event_id)),
            prospect: prospect.clone(),
            source,
            kind: EventKind::Named,
            name: Cow::Owned(journey.signal(signal).name.clone()),
            signal: Some(signal),
            ts,
            email: email.clone().map(Cow::Owned),
            linked: None,
            anonymous: false,
            touch: Default::default(),
        })
        .collect())
}
