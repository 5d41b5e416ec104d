//! HubSpot webhook deliveries: a JSON array of events, each read alone.
//!
//! `subscriptionType` is `<object>.<action>` (`deal.propertyChange`, `contact.creation`,
//! `deal.associationChange`), or `object.<action>` with `objectTypeId` (`0-47` meetings). A
//! property change carries the new value only. `eventId` is not unique, so the event id is the
//! composite (subscription, object, property, occurredAt), the same on every retry.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Change, Item, Op, json, wrong};
use crate::codec::inbound::format::Format;
use crate::codec::inbound::{DecodeError, Limits};
use crate::core::Ts;
use crate::core::crm::{CrmTable, Previous};

const F: Format = Format::Hubspot;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event<'a> {
    #[allow(dead_code)] // read to refuse a malformed element; the composite key replaces it
    event_id: u64,
    subscription_id: u64,
    occurred_at: i64,
    #[serde(borrow)]
    subscription_type: Cow<'a, str>,
    object_id: Option<u64>,
    #[serde(borrow)]
    object_type_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    property_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    property_value: Option<Cow<'a, str>>,
    from_object_id: Option<u64>,
    to_object_id: Option<u64>,
    #[serde(borrow)]
    association_type: Option<Cow<'a, str>>,
    #[serde(default)]
    association_removed: bool,
}

/// HubSpot's object type ids (`objectTypeId`) of the standard objects.
fn object_of_type_id(id: &str) -> Option<&'static str> {
    Some(match id {
        "0-1" => "contact",
        "0-2" => "company",
        "0-3" => "deal",
        "0-5" => "ticket",
        "0-7" => "product",
        "0-8" => "line_item",
        "0-27" => "task",
        "0-47" => "meeting",
        "0-48" => "call",
        "0-49" => "email",
        _ => return None,
    })
}

const OBJECTS: [&str; 7] = ["contact", "company", "deal", "ticket", "product", "line_item", "conversation"];

/// An association type's object name: `DEAL` → `deal`, `MEETING_EVENT` → `meeting`.
fn association_object(s: &str) -> String {
    match s {
        "MEETING_EVENT" => "meeting".into(),
        other => other.to_ascii_lowercase(),
    }
}

pub(super) fn changes(bytes: &[u8], limits: &Limits, crm: &CrmTable) -> Vec<Item> {
    let elements: Vec<&RawValue> = match json(bytes, F, limits) {
        Ok(v) => v,
        Err(e) => return vec![(None, Err(e))],
    };
    elements
        .into_iter()
        .enumerate()
        .map(|(k, raw)| {
            let r = serde_json::from_str::<Event>(raw.get()).map_err(|e| wrong(F, e)).and_then(|e| change(e, crm));
            (Some(k), r)
        })
        .collect()
}

fn change(e: Event<'_>, crm: &CrmTable) -> Result<Vec<Change>, DecodeError> {
    let (prefix, action) = e
        .subscription_type
        .split_once('.')
        .ok_or_else(|| wrong(F, format_args!("`subscriptionType` {:?} is not `object.action`", e.subscription_type)))?;
    let object: String = if prefix == "object" {
        let t = e.object_type_id.as_deref().unwrap_or("");
        object_of_type_id(t)
            .ok_or_else(|| DecodeError::UnknownObject { format: "HubSpot", object: format!("objectTypeId {t}") })?
            .into()
    } else if OBJECTS.contains(&prefix) {
        prefix.into()
    } else {
        return Err(DecodeError::UnknownObject { format: "HubSpot", object: prefix.chars().take(64).collect() });
    };
    let ts = Ts(e.occurred_at);
    let key = |property: &str, id: u64| format!("hubspot:{}:{id}:{property}:{}", e.subscription_id, e.occurred_at);
    let object_id = || e.object_id.ok_or(DecodeError::MissingField { field: "objectId", format: "HubSpot event" });
    let one = |op, fields| -> Result<Vec<Change>, DecodeError> {
        let id = object_id()?;
        Ok(vec![Change {
            object: object.clone(),
            id: id.to_string(),
            op,
            event_id: key(e.property_name.as_deref().unwrap_or(action), id),
            ts,
            fields,
            email: None,
        }])
    };
    match action {
        "creation" => one(Op::Create, Vec::new()),
        "deletion" | "privacyDeletion" => one(Op::Delete, Vec::new()),
        "merge" | "restore" => one(Op::Update, Vec::new()),
        "propertyChange" => {
            let name = e
                .property_name
                .as_deref()
                .ok_or(DecodeError::MissingField { field: "propertyName", format: "HubSpot propertyChange" })?
                .to_string();
            let value = e.property_value.as_deref().filter(|v| !v.is_empty()).map(str::to_string);
            // A contact's email property: the contact's email (its changes carry it on).
            let email = value.as_deref().filter(|_| crm.is_email(&object, &name)).and_then(super::contact_email);
            let mut changes = one(Op::Update, vec![(name, value, Previous::Unknown)])?;
            changes.iter_mut().for_each(|c| c.email.clone_from(&email));
            Ok(changes)
        }
        "associationChange" => {
            let kind = e.association_type.as_deref().unwrap_or("");
            let (from, to) = (e.from_object_id, e.to_object_id);
            let (Some((left, right)), Some(from), Some(to)) = (kind.split_once("_TO_"), from, to) else {
                return Err(wrong(
                    F,
                    "an associationChange needs `associationType` X_TO_Y, `fromObjectId`, `toObjectId`",
                ));
            };
            // Only links between a contact and another object matter.
            let (linked, id, contact) = match (association_object(left), association_object(right)) {
                (l, r) if r == "contact" && l != "contact" => (l, from, to),
                (l, r) if l == "contact" && r != "contact" => (r, to, from),
                _ => return Ok(Vec::new()),
            };
            let op = if e.association_removed { Op::Unlink } else { Op::Link(contact.to_string()) };
            Ok(vec![Change {
                object: linked,
                id: id.to_string(),
                op,
                event_id: key(kind, id),
                ts,
                fields: Vec::new(),
                email: None,
            }])
        }
        other => Err(DecodeError::UnsupportedType(format!("HubSpot {prefix}.{other}").chars().take(64).collect())),
    }
}
