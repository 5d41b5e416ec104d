//! Debezium change events, with schemas disabled (`{before, after, op, source, ts_ms}`) or
//! enabled (the same under `payload`). The object is `source.table`, its id the row's `id`
//! column; the event time is `source.ts_ms` (when the database committed the change), not the
//! envelope's `ts_ms` (when the connector read it). `op` `c` creates, `u` updates (the previous
//! value from `before`; a `before` holding only the key, Postgres' default replica identity,
//! leaves it unknown: `[crm] unknown_previous`), `r` is a snapshot read (remembered, fires
//! nothing), `d` deletes. A TOASTed column Debezium could not read
//! (`__debezium_unavailable_value`) counts as absent.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{Change, Item, Op, Row, json, row_email, scalar, wrong};
use crate::codec::inbound::format::Format;
use crate::codec::inbound::{DecodeError, Limits};
use crate::core::Ts;
use crate::core::crm::{CrmTable, Previous};

const F: Format = Format::Debezium;
const UNAVAILABLE: &str = "__debezium_unavailable_value";

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow)]
    before: Option<Row<'a>>,
    #[serde(default, borrow)]
    after: Option<Row<'a>>,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    source: Option<Source<'a>>,
    /// With schemas enabled, the envelope is here (beside `schema`).
    #[serde(default, borrow)]
    payload: Option<Box<Envelope<'a>>>,
}

#[derive(Deserialize)]
struct Source<'a> {
    ts_ms: i64,
    table: String,
    #[serde(default, borrow)]
    lsn: Option<&'a RawValue>,
    #[serde(default)]
    name: Option<String>,
}

pub(super) fn changes(bytes: &[u8], limits: &Limits, crm: &CrmTable) -> Vec<Item> {
    let read = json::<Envelope>(bytes, F, limits).and_then(|e| match (e.op.is_none(), e.payload) {
        (true, Some(inner)) => read(*inner, crm),
        (_, payload) => read(Envelope { payload, ..e }, crm),
    });
    vec![(None, read)]
}

/// A column's value; `None` for null and for a value Debezium could not read.
fn usable(v: &RawValue) -> Option<String> {
    scalar(v).filter(|s| s != UNAVAILABLE)
}

fn read(e: Envelope<'_>, crm: &CrmTable) -> Result<Vec<Change>, DecodeError> {
    let op = e.op.ok_or_else(|| wrong(F, "no `op`"))?;
    let s = e.source.ok_or_else(|| wrong(F, "no `source`"))?;
    let row = e.after.as_ref().or(e.before.as_ref()).ok_or_else(|| wrong(F, "neither `before` nor `after`"))?;
    let id = row.get("id").copied().and_then(scalar).ok_or_else(|| wrong(F, "the row has no `id` column"))?;
    let after = e.after.as_ref();
    let email = after.and_then(|row| row_email(row, &s.table, crm));
    let fields = |previous: &dyn Fn(&str) -> Previous| {
        after
            .into_iter()
            .flatten()
            .filter(|(k, v)| crm.wants(&s.table, k) && scalar(v).as_deref() != Some(UNAVAILABLE))
            .map(|(k, v)| (k.to_string(), usable(v), previous(k)))
            .collect::<Vec<_>>()
    };
    let (kind, fields) = match op.as_str() {
        "c" => (Op::Create, fields(&|_| Previous::Was(None))),
        "r" => (Op::Read, fields(&|_| Previous::Unknown)),
        "u" => {
            let before = e.before.as_ref();
            let previous = |k: &str| match before.and_then(|b| b.get(k)) {
                Some(v) if scalar(v).as_deref() == Some(UNAVAILABLE) => Previous::Unknown,
                Some(v) => Previous::Was(scalar(v)),
                None => Previous::Unknown,
            };
            (Op::Update, fields(&previous))
        }
        "d" => (Op::Delete, Vec::new()),
        other => return Err(wrong(F, format_args!("unknown `op` {other:?}"))),
    };
    let position = s.lsn.and_then(scalar).unwrap_or_else(|| s.ts_ms.to_string());
    let event_id = format!("{}.{}:{id}:{position}:{op}", s.name.as_deref().unwrap_or(""), s.table);
    Ok(vec![Change { object: s.table, id, op: kind, event_id, ts: Ts(s.ts_ms), fields, email }])
}
