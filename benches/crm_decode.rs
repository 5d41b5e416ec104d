//! Decode throughput of each input format (`codec::inbound::decode_input`, CRM memory and the
//! journey's `[crm]` table included) against serde_json parsing the same payloads into a
//! `serde_json::Value`, in the same run. Each format's corpus is `MESSAGES` realistic messages
//! (shaped like `tests/fixtures/crm/`), ids and values varied; one CRM memory per pass over the
//! corpus, as a shard starting empty.
//!
//! The machine is shared and its speed drifts between criterion's groups, so each format also
//! prints `ROUNDS` alternating rounds (one pass of the decoder, one of the `Value` parse) and the
//! median of the per-round ratio: the figure to compare.
//!
//! `cargo bench --bench crm_decode`

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use microfunnel::codec::Limits;
use microfunnel::codec::inbound::{Format, InputSpec, Mapped, TimeUnit, decode_input};
use microfunnel::core::crm::CrmMemory;
use microfunnel::core::{Journey, Source};

const MESSAGES: usize = 20_000;
const ROUNDS: usize = 15;
const T0: i64 = 1_772_442_000_000; // 2026-03-02T09:00:00Z

/// 2026-03-02T09:00:00Z plus `offset_ms` (under 14 hours for the corpus sizes used here).
fn iso(offset_ms: i64) -> String {
    let s = 9 * 3600 + offset_ms / 1000;
    format!("2026-03-02T{:02}:{:02}:{:02}.000Z", s / 3600, s % 3600 / 60, s % 60)
}

fn hubspot(k: usize) -> String {
    let (deal, contact, at) = (18_200_000_000 + k as u64, 900 + k as u64 / 3, T0 + k as i64 * 1000);
    let stage = ["appointmentscheduled", "contractsent", "closedwon"][k % 3];
    format!(
        r#"[{{"eventId":{e1},"subscriptionId":2214413,"portalId":62515001,"appId":1160452,"occurredAt":{at},"subscriptionType":"deal.associationChange","attemptNumber":0,"changeSource":"USER","sourceId":"userId:44110921","associationType":"DEAL_TO_CONTACT","fromObjectId":{deal},"toObjectId":{contact},"associationRemoved":false,"isPrimaryAssociation":true}},{{"eventId":{e2},"subscriptionId":2214409,"portalId":62515001,"appId":1160452,"occurredAt":{at},"subscriptionType":"deal.propertyChange","attemptNumber":0,"objectId":{deal},"changeSource":"CRM_UI","sourceId":"userId:44110921","propertyName":"dealstage","propertyValue":"{stage}"}},{{"eventId":{e3},"subscriptionId":2214410,"portalId":62515001,"appId":1160452,"occurredAt":{at},"subscriptionType":"contact.propertyChange","attemptNumber":0,"objectId":{contact},"changeSource":"CRM_UI","sourceId":"userId:44110921","propertyName":"lifecyclestage","propertyValue":"opportunity"}}]"#,
        e1 = 3_816_275_501u64 + 3 * k as u64,
        e2 = 3_816_275_502u64 + 3 * k as u64,
        e3 = 3_816_275_503u64 + 3 * k as u64,
    )
}

fn salesforce(k: usize) -> String {
    let (opp, at) = (format!("0065g{:08}AAA", k / 2), T0 + k as i64 * 1000);
    let header = |kind: &str, changed: &str| {
        format!(
            r#""ChangeEventHeader":{{"entityName":"Opportunity","recordIds":["{opp}"],"changeType":"{kind}","changeOrigin":"com/salesforce/api/soap/60.0;client=SfdcInternalAPI/","transactionKey":"{k:08x}-9d90-e395-ed20-cf416ba652ad","sequenceNumber":1,"commitTimestamp":{at},"commitNumber":{n},"commitUser":"0055g00000ABCDeAAF","changedFields":[{changed}],"nulledFields":[],"diffFields":[]}}"#,
            n = 10_585_193_272_713u64 + k as u64
        )
    };
    let payload = if k.is_multiple_of(2) {
        format!(
            r#"{{{},"Name":"Account {k} - Platform","AccountId":"0015g00000QrStUAAV","ContactId":"0035g{k:08}AAV","StageName":"Prospecting","Amount":12000.0,"CloseDate":"2026-04-30","IsWon":false,"IsClosed":false,"CreatedDate":"2026-03-02T08:01:00.000Z","OwnerId":"0055g00000ABCDeAAF"}}"#,
            header("CREATE", "")
        )
    } else {
        format!(
            r#"{{{},"StageName":"Proposal/Price Quote","LastModifiedDate":"2026-03-02T09:00:00.000Z"}}"#,
            header("UPDATE", r#""StageName","LastModifiedDate""#)
        )
    };
    format!(r#"{{"schema":"dfqoD5-wl9sNEmGvCvWbKQ","payload":{payload},"event":{{"replayId":{}}}}}"#, 46_728 + k)
}

fn pipedrive(k: usize) -> String {
    let (deal, person, at) = (1000 + k, 300 + k / 2, iso(k as i64 * 1000));
    format!(
        r#"{{"meta":{{"action":"change","entity":"deal","entity_id":"{deal}","id":"5e1b7f3c-6a0e-4c1e-9a39-{k:012x}","correlation_id":"c0ffee00-1111-4222-8333-{k:012x}","timestamp":"{at}","attempt":1,"change_source":"app","is_bulk_edit":false,"version":"2.0","company_id":"7777001","user_id":"5550001","type":"general"}},"data":{{"id":{deal},"title":"Contoso platform licence","status":"open","stage_id":4,"pipeline_id":1,"person_id":{person},"org_id":77,"value":12000,"currency":"EUR","owner_id":5550001,"add_time":"2026-03-02T08:00:00Z","update_time":"{at}"}},"previous":{{"stage_id":3}}}}"#
    )
}

fn debezium(k: usize) -> String {
    let (id, contact, at) = (40 + k, 7 + k / 2, T0 + k as i64 * 1000);
    format!(
        r#"{{"before":{{"id":{id},"contact_id":{contact},"stage":"proposal","amount":"9000.00","updated_at":1772442000000000}},"after":{{"id":{id},"contact_id":{contact},"stage":"won","amount":"9000.00","updated_at":{us}}},"source":{{"version":"2.7.3.Final","connector":"postgresql","name":"crm","ts_ms":{at},"snapshot":"false","db":"crm","sequence":"[\"24023928\",\"24023928\"]","schema":"public","table":"deals","txId":4711,"lsn":{lsn},"xmin":null}},"op":"u","ts_ms":{at},"transaction":null}}"#,
        us = at * 1000,
        lsn = 24_023_928 + k
    )
}

fn mapped(k: usize) -> String {
    format!(
        r#"{{"order":{{"id":{id},"placed_at":{s},"lines":[{{"sku":"PLAT-1","qty":2,"price":1200.0}}],"currency":"EUR"}},"customer":{{"ref":"cus_{c}","email":"Buyer{c}@Example.com","segment":"smb"}}}}"#,
        id = 98_000 + k,
        s = T0 / 1000 + k as i64,
        c = k / 2
    )
}

/// Message `k` of a format's corpus.
type Corpus = fn(usize) -> String;

fn spec(format: Format) -> InputSpec {
    let mut s = InputSpec::new(format, None);
    if format == Format::Mapped {
        s.source = Some(Source::Web);
        s.mapped = Some(Mapped {
            event_id: "/order/id".into(),
            prospect: "/customer/ref".into(),
            kind: None,
            kind_constant: Some("Order Completed".into()),
            time: "/order/placed_at".into(),
            time_unit: TimeUnit::EpochS,
            email: Some("/customer/email".into()),
        });
    }
    s
}

fn bench(c: &mut Criterion) {
    let journey = Journey::from_toml_str(include_str!("../deploy/journeys/b2b.toml")).unwrap();
    let limits = Limits::default();
    let formats: [(Format, Corpus); 5] = [
        (Format::Hubspot, hubspot),
        (Format::SalesforceCdc, salesforce),
        (Format::Pipedrive, pipedrive),
        (Format::Debezium, debezium),
        (Format::Mapped, mapped),
    ];
    let mut g = c.benchmark_group("crm_decode");
    g.sample_size(10)
        .measurement_time(std::time::Duration::from_secs(4))
        .warm_up_time(std::time::Duration::from_secs(1));
    for (format, make) in formats {
        let corpus: Vec<String> = (0..MESSAGES).map(make).collect();
        let spec = spec(format);
        // Every message must decode to at least one event or none, never an error.
        let mut memory = CrmMemory::default();
        let (mut events, mut errors) = (0, 0);
        for m in &corpus {
            for (_, r) in decode_input(m.as_bytes(), &spec, &journey, &limits, &mut memory) {
                match r {
                    Ok(_) => events += 1,
                    Err(e) => {
                        errors += 1;
                        eprintln!("{}: {e}", format.as_str());
                    }
                }
            }
        }
        assert_eq!(errors, 0, "{}", format.as_str());
        eprintln!(
            "{}: {MESSAGES} messages, {} bytes, {events} events",
            format.as_str(),
            corpus.iter().map(String::len).sum::<usize>()
        );
        let decode_pass = || {
            let mut memory = CrmMemory::default();
            let mut n = 0usize;
            for m in &corpus {
                for (_, r) in decode_input(m.as_bytes(), &spec, &journey, &limits, &mut memory) {
                    n += usize::from(r.is_ok());
                }
            }
            black_box(n)
        };
        let value_pass = || {
            let mut n = 0usize;
            for m in &corpus {
                let v: serde_json::Value = serde_json::from_slice(m.as_bytes()).unwrap();
                n += usize::from(v.is_object() || v.is_array());
            }
            black_box(n)
        };
        let mut rounds: Vec<(f64, f64)> = (0..ROUNDS)
            .map(|_| {
                let t = Instant::now();
                decode_pass();
                let d = t.elapsed().as_secs_f64();
                let t = Instant::now();
                value_pass();
                (d, t.elapsed().as_secs_f64())
            })
            .collect();
        rounds.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
        let (d, v) = rounds[ROUNDS / 2];
        let best = |f: fn(&(f64, f64)) -> f64| rounds.iter().map(f).fold(f64::INFINITY, f64::min);
        eprintln!(
            "{}: alternating rounds: decode_input / serde_value median ratio {:.2} (that round {:.0} / {:.0} k msg/s; best {:.0} / {:.0} k msg/s)",
            format.as_str(),
            d / v,
            MESSAGES as f64 / d / 1e3,
            MESSAGES as f64 / v / 1e3,
            MESSAGES as f64 / best(|r| r.0) / 1e3,
            MESSAGES as f64 / best(|r| r.1) / 1e3,
        );
        g.throughput(Throughput::Elements(MESSAGES as u64));
        g.bench_function(BenchmarkId::new("decode_input", format.as_str()), |b| {
            b.iter(|| {
                let mut memory = CrmMemory::default();
                let mut n = 0usize;
                for m in &corpus {
                    for (_, r) in decode_input(m.as_bytes(), &spec, &journey, &limits, &mut memory) {
                        n += usize::from(r.is_ok());
                    }
                }
                black_box(n)
            })
        });
        g.bench_function(BenchmarkId::new("serde_value", format.as_str()), |b| {
            b.iter(|| {
                let mut n = 0usize;
                for m in &corpus {
                    let v: serde_json::Value = serde_json::from_slice(m.as_bytes()).unwrap();
                    n += usize::from(v.is_object() || v.is_array());
                }
                black_box(n)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
