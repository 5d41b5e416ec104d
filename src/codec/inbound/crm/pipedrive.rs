//! Pipedrive webhooks v2: `{"meta": {action, entity, entity_id, id, timestamp, ...}, "data":
//! {...}, "previous": {...}}`. `previous` holds only the fields that changed, with their old
//! values, so a field absent from it did not change. `meta.id` identifies the delivery.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Change, Item, Op, json, scalar, wrong};
use crate::codec::inbound::format::Format;
use crate::codec::inbound::{DecodeError, Limits};
use crate::core::crm::Previous;
use crate::core::time::parse_rfc3339;

const F: Format = Format::Pipedrive;

#[derive(Deserialize)]
struct Hook {
    meta: Meta,
    #[serde(default)]
    data: Option<Map<String, Value>>,
    #[serde(default)]
    previous: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct Meta {
    action: String,
    entity: String,
    entity_id: Value,
    id: String,
    timestamp: String,
}

pub(super) fn changes(bytes: &[u8], limits: &Limits) -> Vec<Item> {
    vec![(None, json::<Hook>(bytes, F, limits).and_then(read))]
}

fn read(h: Hook) -> Result<Vec<Change>, DecodeError> {
    let m = h.meta;
    let ts = parse_rfc3339(&m.timestamp).map_err(|problem| DecodeError::BadTimestamp {
        field: "meta.timestamp",
        value: m.timestamp.chars().take(64).collect(),
        problem,
    })?;
    let id = scalar(&m.entity_id).ok_or_else(|| wrong(F, "`meta.entity_id` is not a string or number"))?;
    let data = h.data.unwrap_or_default();
    let previous = h.previous.unwrap_or_default();
    let (op, fields) = match m.action.as_str() {
        "create" | "added" => {
            (Op::Create, data.iter().map(|(k, v)| (k.clone(), scalar(v), Previous::Was(None))).collect())
        }
        "change" | "updated" => {
            let fields = data
                .iter()
                .map(|(k, v)| {
                    let was = previous.get(k).map_or(Previous::Unchanged, |p| Previous::Was(scalar(p)));
                    (k.clone(), scalar(v), was)
                })
                .collect();
            (Op::Update, fields)
        }
        "delete" | "deleted" => (Op::Delete, Vec::new()),
        other => return Err(DecodeError::UnsupportedType(format!("Pipedrive {other}").chars().take(64).collect())),
    };
    Ok(vec![Change { object: m.entity, id, op, event_id: format!("pipedrive:{}", m.id), ts, fields, email: None }])
}
