//! The generator's CRM side in a CRM's own format (`gen --crm-format`): each CRM signal becomes
//! the change that the journey's `[crm]` table maps to it, as that CRM sends it. Every message
//! stands alone, so duplicates and out-of-order delivery keep their meaning: a new object (a
//! deal, a meeting, an opportunity) linked to the prospect's contact and created in, or moved
//! into, the mapped state. Signals the table does not map for the format (b2b:
//! `reviewing_with_partners`, `disqualified`) cannot be expressed and are not written.
//!
//! The prospect is the CRM's contact: HubSpot and Pipedrive contact ids are numbers, Salesforce
//! ids 18 characters; they are derived from the prospect number, so they are not the web side's
//! user ids (linking the two is identity resolution).

use std::io::Write;

use super::model::Step;
use super::render::uuid4;
use super::rng::Rng;
use crate::codec::inbound::Format;
use crate::core::{Journey, SignalId, Ts};

/// Per journey signal, the (object, property, value) that expresses it in the format.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    format: Format,
    by_signal: Vec<Option<Target>>,
}

#[derive(Clone, Debug)]
struct Target {
    object: String,
    property: String,
    value: String,
    /// The property naming the contact (`ContactId`, `person_id`); `None` for HubSpot
    /// (associations) and for contact objects.
    link: Option<String>,
    contact_object: bool,
}

const HUBSPOT_OBJECTS: [&str; 11] = [
    "contact",
    "company",
    "deal",
    "ticket",
    "product",
    "line_item",
    "conversation",
    "meeting",
    "call",
    "email",
    "task",
];
/// Pipedrive entities and the fields of theirs the generator can set.
const PIPEDRIVE_FIELDS: [(&str, &[&str]); 2] =
    [("deal", &["stage_id", "status", "pipeline_id", "lost_reason"]), ("activity", &["type", "done", "subject"])];

fn hubspot_type_id(object: &str) -> Option<&'static str> {
    Some(match object {
        "meeting" => "0-47",
        "call" => "0-48",
        "email" => "0-49",
        "task" => "0-27",
        _ => return None,
    })
}

impl Plan {
    /// The plan of `format` (`hubspot`, `salesforce_cdc` or `pipedrive`) for `journey`.
    pub fn new(format: Format, journey: &Journey) -> Plan {
        let crm = &journey.crm;
        let mut by_signal: Vec<Option<Target>> = vec![None; journey.signals.len()];
        for (object, properties) in &crm.signals {
            for (property, values) in properties {
                let fits = match format {
                    Format::Hubspot => HUBSPOT_OBJECTS.contains(&object.as_str()),
                    Format::SalesforceCdc => object.starts_with(|c: char| c.is_ascii_uppercase()),
                    Format::Pipedrive => {
                        PIPEDRIVE_FIELDS.iter().any(|(o, fields)| o == object && fields.contains(&property.as_str()))
                    }
                    _ => false,
                };
                let contact_object = crm.is_contact(object);
                let link = crm.links.get(object).cloned();
                let linkable = contact_object || format == Format::Hubspot || link.is_some();
                if !fits || !linkable {
                    continue;
                }
                for (value, signal) in values {
                    let slot = &mut by_signal[signal.0 as usize];
                    if slot.is_none() {
                        *slot = Some(Target {
                            object: object.clone(),
                            property: property.clone(),
                            value: value.clone(),
                            link: link.clone().filter(|_| format != Format::Hubspot),
                            contact_object,
                        });
                    }
                }
            }
        }
        Plan { format, by_signal }
    }

    /// Whether `signal` can be written in the format.
    pub fn expresses(&self, signal: SignalId) -> bool {
        self.by_signal.get(signal.0 as usize).is_some_and(Option::is_some)
    }

    /// The contact id of prospect `n` (its Kafka key).
    pub fn contact(&self, n: u64, seed: u64) -> String {
        let x = Rng::derive(seed ^ 0xC0, n).next_u64();
        match self.format {
            Format::SalesforceCdc => format!("0035g{:011X}AAQ", x & 0xFFF_FFFF_FFFF),
            _ => (100_000 + (x % 900_000_000_000)).to_string(),
        }
    }

    /// Writes the message expressing `signal` for prospect `n`'s contact; false (nothing
    /// written) when the format cannot express it.
    pub fn render(&self, out: &mut Vec<u8>, signal: SignalId, step: &Step, contact: &str, r: &mut Rng) -> bool {
        let Some(Some(t)) = self.by_signal.get(signal.0 as usize) else { return false };
        let object_id = r.next_u64() % 90_000_000_000 + 10_000_000_000;
        match self.format {
            Format::Hubspot => hubspot(out, t, object_id, step.ts, contact, r),
            Format::SalesforceCdc => salesforce(out, t, object_id, step.ts, contact, r),
            Format::Pipedrive => pipedrive(out, t, object_id, step.ts, contact, r),
            _ => return false,
        }
        true
    }
}

/// A value as JSON: `true`/`false` and integers bare, anything else a string.
fn literal(v: &str) -> String {
    if v == "true" || v == "false" || (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) && v.len() < 16) {
        v.to_string()
    } else {
        serde_json::Value::String(v.to_string()).to_string()
    }
}

fn hubspot(out: &mut Vec<u8>, t: &Target, id: u64, at: Ts, contact: &str, r: &mut Rng) {
    let (portal, app) = (62_515_001, 1_160_452);
    let mut event = |out: &mut Vec<u8>, sub: u64, at: i64, kind: &str, rest: &str| {
        let _ = write!(
            out,
            r#"{{"eventId":{},"subscriptionId":{sub},"portalId":{portal},"appId":{app},"occurredAt":{at},"subscriptionType":"{kind}","attemptNumber":0,"changeSource":"CRM_UI","sourceId":"userId:44110921",{rest}}}"#,
            r.next_u64() % 9_000_000_000 + 1_000_000_000
        );
    };
    let (object, at) = (&t.object, at.0);
    let object_id = if t.contact_object { contact.to_string() } else { id.to_string() };
    let prefix = match hubspot_type_id(object) {
        Some(type_id) => format!(r#""objectTypeId":"{type_id}","objectId":{object_id}"#),
        None => format!(r#""objectId":{object_id}"#),
    };
    let kind = |action: &str| match hubspot_type_id(object) {
        Some(_) => format!("object.{action}"),
        None => format!("{object}.{action}"),
    };
    let property = |v: &str| {
        format!(
            r#"{prefix},"propertyName":{},"propertyValue":{}"#,
            serde_json::Value::String(t.property.clone()),
            serde_json::Value::String(v.to_string())
        )
    };
    out.push(b'[');
    if !t.contact_object {
        event(out, 2_214_412, at - 2, &kind("creation"), &prefix);
        out.push(b',');
        let association = match object.as_str() {
            "meeting" => "MEETING_EVENT".to_string(),
            o => o.to_ascii_uppercase(),
        };
        let rest = format!(
            r#""associationType":"CONTACT_TO_{association}","fromObjectId":{contact},"toObjectId":{id},"associationRemoved":false,"isPrimaryAssociation":true"#
        );
        event(out, 2_214_413, at - 2, "contact.associationChange", &rest);
        out.push(b',');
    }
    // The property's value at creation (cleared), then the mapped one: a known transition.
    event(out, 2_214_409, at - 1, &kind("propertyChange"), &property(""));
    out.push(b',');
    event(out, 2_214_409, at, &kind("propertyChange"), &property(&t.value));
    out.push(b']');
}

fn salesforce(out: &mut Vec<u8>, t: &Target, id: u64, at: Ts, contact: &str, r: &mut Rng) {
    let prefix = match t.object.as_str() {
        "Opportunity" => "006",
        "Case" => "500",
        "Lead" => "00Q",
        "Contact" => "003",
        _ => "a0B",
    };
    let record =
        if t.contact_object { contact.to_string() } else { format!("{prefix}5g{:010X}AAA", id & 0xFF_FFFF_FFFF) };
    let tx = uuid4(r.next_u64(), r.next_u64());
    let _ = write!(
        out,
        r#"{{"schema":"dfqoD5-wl9sNEmGvCvWbKQ","payload":{{"ChangeEventHeader":{{"entityName":"{}","recordIds":["{record}"],"changeType":"CREATE","changeOrigin":"com/salesforce/api/soap/60.0;client=SfdcInternalAPI/","transactionKey":"{tx}","sequenceNumber":1,"commitTimestamp":{},"commitNumber":{},"commitUser":"0055g00000ABCDeAAF","changedFields":[],"nulledFields":[],"diffFields":[]}},{}:{}"#,
        t.object,
        at.0,
        r.next_u64() % 10_000_000_000_000,
        serde_json::Value::String(t.property.clone()),
        literal(&t.value)
    );
    if let Some(link) = &t.link {
        let _ = write!(out, r#",{}:"{contact}""#, serde_json::Value::String(link.clone()));
    }
    let _ = write!(
        out,
        r#","OwnerId":"0055g00000ABCDeAAF","CreatedDate":"{at}"}},"event":{{"replayId":{}}}}}"#,
        r.next_u64() % 1_000_000
    );
}

fn pipedrive(out: &mut Vec<u8>, t: &Target, id: u64, at: Ts, contact: &str, r: &mut Rng) {
    let id = id % 10_000_000;
    let _ = write!(
        out,
        r#"{{"meta":{{"action":"create","entity":"{}","entity_id":"{id}","id":"{}","correlation_id":"{}","timestamp":"{at}","attempt":1,"change_source":"app","is_bulk_edit":false,"version":"2.0","company_id":"7777001","user_id":"5550001","type":"general"}},"data":{{"id":{id},{}:{}"#,
        t.object,
        uuid4(r.next_u64(), r.next_u64()),
        uuid4(r.next_u64(), r.next_u64()),
        serde_json::Value::String(t.property.clone()),
        literal(&t.value)
    );
    if let Some(link) = &t.link {
        let _ = write!(out, r#",{}:{}"#, serde_json::Value::String(link.clone()), literal(contact));
    }
    let _ = write!(out, r#","owner_id":5550001,"add_time":"{at}","update_time":"{at}"}},"previous":null}}"#);
}
