//! Debezium change events, with schemas disabled (`{before, after, op, source, ts_ms}`) or
//! enabled (the same under `payload`). The object is `source.table`, its id the row's `id`
//! column; the event time is `source.ts_ms` (when the database committed the change), not the
//! envelope's `ts_ms` (when the connector read it). `op` `c` creates, `u` updates (the previous
//! value from `before`; a `before` holding only the key, Postgres' default replica identity,
//! leaves it unknown: `[crm] unknown_previous`), `r` is a snapshot read (remembered, fires
//! nothing), `d` deletes. A TOASTed column Debezium could not read
//! (`__debezium_unavailable_value`) counts as absent.

use serde::Deserialize;
use serde_json::{Map, Value};

use super::{Change, Item, Op, json, scalar, wrong};
use crate::codec::inbound::format::Format;
use crate::codec::inbound::{DecodeError, Limits};
use crate::core::Ts;
use crate::core::crm::Previous;

const F: Format = Format::Debezium;
const UNAVAILABLE: &str = "__debezium_unavailable_value";

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    before: Option<Map<String, Value>>,
    #[serde(default)]
    after: Option<Map<String, Value>>,
    op: String,
    source: Source,
}

#[derive(Deserialize)]
struct Source {
    ts_ms: i64,
    table: String,
    #[serde(default)]
    lsn: Option<Value>,
    #[serde(default)]
    name: Option<String>,
}

pub(super) fn changes(bytes: &[u8], limits: &Limits) -> Vec<Item> {
    vec![(None, envelope(bytes, limits).and_then(read))]
}

fn envelope(bytes: &[u8], limits: &Limits) -> Result<Envelope, DecodeError> {
    let mut v: Map<String, Value> = json(bytes, F, limits)?;
    let body = match v.remove("payload") {
        Some(Value::Object(p)) if v.contains_key("schema") => Value::Object(p),
        Some(p) => {
            v.insert("payload".into(), p);
            Value::Object(v)
        }
        None => Value::Object(v),
    };
    serde_json::from_value(body).map_err(|e| wrong(F, e))
}

fn usable(v: &Value) -> Option<String> {
    scalar(v).filter(|s| s != UNAVAILABLE)
}

fn read(e: Envelope) -> Result<Vec<Change>, DecodeError> {
    let row = e.after.as_ref().or(e.before.as_ref()).ok_or_else(|| wrong(F, "neither `before` nor `after`"))?;
    let id = row.get("id").and_then(scalar).ok_or_else(|| wrong(F, "the row has no `id` column"))?;
    let after = e.after.clone().unwrap_or_default();
    let fields = |previous: &dyn Fn(&str) -> Previous| {
        after
            .iter()
            .filter(|(_, v)| scalar(v).as_deref() != Some(UNAVAILABLE))
            .map(|(k, v)| (k.clone(), usable(v), previous(k)))
            .collect::<Vec<_>>()
    };
    let (op, fields) = match e.op.as_str() {
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
    let s = &e.source;
    let position = s.lsn.as_ref().and_then(scalar).unwrap_or_else(|| s.ts_ms.to_string());
    let event_id = format!("{}.{}:{id}:{position}:{}", s.name.as_deref().unwrap_or(""), s.table, e.op);
    Ok(vec![Change { object: s.table.clone(), id, op, event_id, ts: Ts(s.ts_ms), fields, email: None }])
}
