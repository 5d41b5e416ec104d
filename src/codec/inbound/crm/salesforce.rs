//! Salesforce Change Data Capture events, as CometD delivers them (`{"schema", "payload":
//! {"ChangeEventHeader", fields...}, "event": {"replayId"}}`) and as the Kafka Connect source
//! connectors write them (the payload at the top level, or under `payload` beside a `schema`
//! object). One change per record id of `recordIds`. An UPDATE carries only `changedFields`
//! (and `nulledFields`), never the previous values; a CREATE carries every set field. `GAP_*`
//! events carry no values and are refused (`gap_event`): the records must be re-fetched.

use serde::Deserialize;

use super::{Change, Item, Op, Row, json, row_email, scalar, wrong};
use crate::codec::inbound::format::Format;
use crate::codec::inbound::{DecodeError, Limits};
use crate::core::Ts;
use crate::core::crm::{CrmTable, Previous};

const F: Format = Format::SalesforceCdc;
const HEADER: &str = "ChangeEventHeader";

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    entity_name: String,
    record_ids: Vec<String>,
    change_type: String,
    #[serde(default)]
    changed_fields: Vec<String>,
    #[serde(default)]
    nulled_fields: Vec<String>,
    commit_timestamp: i64,
    transaction_key: String,
    sequence_number: u64,
}

pub(super) fn changes(bytes: &[u8], limits: &Limits, crm: &CrmTable) -> Vec<Item> {
    vec![(None, read(bytes, limits, crm))]
}

fn read(bytes: &[u8], limits: &Limits, crm: &CrmTable) -> Result<Vec<Change>, DecodeError> {
    let top: Row<'_> = json(bytes, F, limits)?;
    let inner: Option<Row<'_>> = match top.get("payload") {
        Some(p) if !top.contains_key(HEADER) => serde_json::from_str(p.get()).ok(),
        _ => None,
    };
    let payload = inner.as_ref().filter(|p| p.contains_key(HEADER)).unwrap_or(&top);
    let header =
        payload.get(HEADER).ok_or_else(|| wrong(F, "no `ChangeEventHeader` (at the top level or under `payload`)"))?;
    let h: Header = serde_json::from_str(header.get()).map_err(|e| wrong(F, format_args!("ChangeEventHeader: {e}")))?;
    if h.change_type.starts_with("GAP_") {
        return Err(DecodeError::GapEvent {
            change_type: h.change_type,
            records: format!("{} {}", h.entity_name, h.record_ids.join(",")).chars().take(200).collect(),
        });
    }
    if h.record_ids.is_empty() {
        return Err(wrong(F, "empty `recordIds`"));
    }
    let object = &h.entity_name;
    let email = row_email(payload, object, crm);
    let (op, fields): (Op, Vec<(String, Option<String>, Previous)>) = match h.change_type.as_str() {
        "CREATE" => (
            Op::Create,
            payload
                .iter()
                .filter(|(k, _)| crm.wants(object, k))
                .filter_map(|(k, v)| scalar(v).map(|s| (k.to_string(), Some(s), Previous::Was(None))))
                .collect(),
        ),
        "UPDATE" | "UNDELETE" => {
            let changed = h
                .changed_fields
                .iter()
                .filter(|f| crm.wants(object, f))
                .filter_map(|f| payload.get(f.as_str()).copied().and_then(scalar).map(|s| (f, Some(s))));
            let nulled = h.nulled_fields.iter().filter(|f| crm.wants(object, f)).map(|f| (f, None));
            (Op::Update, changed.chain(nulled).map(|(f, v)| (f.clone(), v, Previous::Unknown)).collect())
        }
        "DELETE" => (Op::Delete, Vec::new()),
        other => return Err(DecodeError::UnsupportedType(format!("Salesforce {other}").chars().take(64).collect())),
    };
    Ok(h.record_ids
        .iter()
        .map(|id| Change {
            object: h.entity_name.clone(),
            id: id.clone(),
            op: op.clone(),
            event_id: format!("{}:{}:{id}", h.transaction_key, h.sequence_number),
            ts: Ts(h.commit_timestamp),
            fields: fields.clone(),
            email: email.clone(),
        })
        .collect())
}
