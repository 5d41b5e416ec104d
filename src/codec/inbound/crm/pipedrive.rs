//! Pipedrive webhooks v2: `{"meta": {action, entity, entity_id, id, timestamp, ...}, "data":
//! {...}, "previous": {...}}`. `previous` holds only the fields that changed, with their old
//! values, so a field absent from it did not change. `meta.id` identifies the delivery.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Change, Item, Op, Row, json, row_email, scalar, wrong};
use crate::codec::inbound::format::Format;
use crate::codec::inbound::{DecodeError, Limits};
use crate::core::crm::{CrmTable, Previous};
use crate::core::time::parse_rfc3339;

const F: Format = Format::Pipedrive;

#[derive(Deserialize)]
struct Hook<'a> {
    #[serde(borrow)]
    meta: Meta<'a>,
    #[serde(default, borrow)]
    data: Option<Row<'a>>,
    #[serde(default, borrow)]
    previous: Option<Row<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    action: String,
    entity: String,
    #[serde(borrow)]
    entity_id: &'a RawValue,
    id: String,
    timestamp: String,
}

pub(super) fn changes(bytes: &[u8], limits: &Limits, crm: &CrmTable) -> Vec<Item> {
    vec![(None, json::<Hook>(bytes, F, limits).and_then(|h| read(h, crm)))]
}

fn read(h: Hook<'_>, crm: &CrmTable) -> Result<Vec<Change>, DecodeError> {
    let m = h.meta;
    let ts = parse_rfc3339(&m.timestamp).map_err(|problem| DecodeError::BadTimestamp {
        field: "meta.timestamp",
        value: m.timestamp.chars().take(64).collect(),
        problem,
    })?;
    let id = scalar(m.entity_id).ok_or_else(|| wrong(F, "`meta.entity_id` is not a string or number"))?;
    let (data, previous) = (h.data.unwrap_or_default(), h.previous.unwrap_or_default());
    let email = row_email(&data, &m.entity, crm);
    let wanted = data.iter().filter(|(k, _)| crm.wants(&m.entity, k));
    let (op, fields) = match m.action.as_str() {
        "create" | "added" => {
            (Op::Create, wanted.map(|(k, v)| (k.to_string(), scalar(v), Previous::Was(None))).collect())
        }
        "change" | "updated" => {
            let fields = wanted
                .map(|(k, v)| {
                    let was = previous.get(k).map_or(Previous::Unchanged, |p| Previous::Was(scalar(p)));
                    (k.to_string(), scalar(v), was)
                })
                .collect();
            (Op::Update, fields)
        }
        "delete" | "deleted" => (Op::Delete, Vec::new()),
        other => return Err(DecodeError::UnsupportedType(format!("Pipedrive {other}").chars().take(64).collect())),
    };
    Ok(vec![Change { object: m.entity, id, op, event_id: format!("pipedrive:{}", m.id), ts, fields, email }])
}
