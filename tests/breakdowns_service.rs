//! Funnel breakdowns in the running service against the broker: generated traffic from many
//! more campaigns than `top_k`, whose per-shard value tables overflow `max_values`. The service's
//! state equals replay's (digests), `/metrics` (scraped directly and by a real Prometheus) never
//! shows more than `top_k + 2` values of a dimension, `GET /funnel?by=campaign` answers what
//! `replay` reports, and the shards' funnel records add up to it.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use microfunnel::core::Journey;
use serde_json::Value;
use support::{
    Prometheus, Service, assert_equals_oracle, crm, gen_per_topic, http_get, oracle_with, produce, read_until, records,
    samples, setup, wait_until, web,
};

const TOP_K: usize = 3;
const LIMIT: Duration = Duration::from_secs(120);
const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

/// Distinct `value` labels of the campaign dimension in a `/metrics` text.
fn campaign_labels(text: &str) -> BTreeSet<String> {
    samples(text, "microfunnel_breakdown_prospects_reached")
        .into_iter()
        .filter(|(l, _)| l["dimension"] == "campaign")
        .map(|(l, _)| l["value"].clone())
        .collect()
}

#[test]
fn metrics_stay_within_top_k_plus_two_values_and_the_service_answers_what_replay_reports() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    // The b2b journey, split by campaign with a small top K and a per-shard cap of 10 values.
    let (head, rest) = B2B.split_once("[breakdowns]").unwrap();
    let tail = &rest[rest.find("# ---- CRM changes").unwrap()..];
    let breakdowns = format!(
        "[breakdowns]\ntop_k = {TOP_K}\nmax_values = 10\n[[breakdowns.dimensions]]\nname = \"campaign\"\nfield = \"utm_campaign\"\n"
    );
    let text = format!("{head}{breakdowns}\n{tail}");
    let journey_file = dir.join("breakdowns-service-journey.toml");
    std::fs::write(&journey_file, &text).unwrap();
    let journey = Arc::new(Journey::from_toml_str(&text).unwrap());
    // 40 campaigns, 2% of prospects each.
    let model: String = (0..40)
        .map(|i| {
            format!(
                "[[campaigns]]\nname = \"c{i:02}\"\nsource = \"s{}\"\nmedium = \"cpc\"\nshare = 0.02\neffect = {}\n",
                i % 7,
                (i % 5) as f64 * 0.3 - 0.6
            )
        })
        .collect();
    let model_file = dir.join("breakdowns-service-model.toml");
    std::fs::write(&model_file, model).unwrap();
    let (web_file, crm_file) = gen_per_topic("breakdowns-service", &["--model", model_file.to_str().unwrap()]);
    let oracle = oracle_with(&web_file, &crm_file, 3, &["--journey", journey_file.to_str().unwrap()]);
    let summary = oracle.lines.iter().find(|v| v["kind"] == "funnel_summary").unwrap();
    let expected = summary["breakdowns"].as_array().unwrap()[0].clone();
    assert!(expected["distinct_values"].as_u64().unwrap() > 2 * TOP_K as u64, "many more values than top_k");
    assert!(expected["folded_touches"].as_u64().unwrap() > 0, "the per-shard cap folded values: {expected}");

    let mut settings = setup("breakdowns-service");
    settings.http.query_api = true;
    let svc = Service::start_with(&settings, journey);
    let prom = Prometheus::start(svc.addr(), &[]);
    let (web_records, crm_records) = (records(&web_file), records(&crm_file));
    produce(web(&settings), &web_records);
    produce(crm(&settings), &crm_records);
    let messages = (web_records.len() + crm_records.len()) as i64;

    // While the traffic is processed, every scrape shows at most top_k + 2 campaign values.
    let mut most = 0;
    let want_reached: u64 = summary["census"]["prospects"].as_u64().unwrap();
    wait_until(LIMIT, "the breakdown gauges count every prospect", || {
        let (_, text) = http_get(svc.addr(), "/metrics");
        let labels = campaign_labels(&text);
        most = most.max(labels.len());
        assert!(labels.len() <= TOP_K + 2, "{} campaign values in /metrics: {labels:?}", labels.len());
        let aware: f64 = samples(&text, "microfunnel_breakdown_prospects_reached")
            .into_iter()
            .filter(|(l, _)| l["dimension"] == "campaign" && l["stage"] == "aware")
            .map(|(_, v)| v)
            .sum();
        aware as u64 == want_reached
    });
    assert_eq!(most, TOP_K + 2, "the top K values, `other` and `none`");
    assert_equals_oracle(&svc, &settings, &oracle, messages, LIMIT);

    // GET /funnel?by=campaign answers replay's report.
    let (status, body) = http_get(svc.addr(), "/funnel?by=campaign");
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["shards"], serde_json::json!([0, 1, 2]));
    for key in ["dimension", "values", "other", "none", "distinct_values", "folded_touches", "top_k"] {
        assert_eq!(answer[key], expected[key], "{key}");
    }
    assert_eq!(answer["values"].as_array().unwrap().len(), TOP_K);
    let (status, body) = http_get(svc.addr(), "/signals?by=campaign");
    assert_eq!(status, 200, "{body}");
    let signals: Value = serde_json::from_str(&body).unwrap();
    let values = signals["values"].as_array().unwrap();
    assert_eq!(values.len(), TOP_K + 2, "the top K values, other and none");
    for (v, e) in values.iter().zip(expected["values"].as_array().unwrap()) {
        assert_eq!((&v["value"], &v["signals"]), (&e["value"], &e["signals"]));
    }
    let (status, body) = http_get(svc.addr(), "/funnel?by=campain");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no breakdown dimension `campain`") && body.contains("\"campaign\""), "{body}");

    // The shards' latest funnel records add up, value by value, to replay's report.
    let applied = summary["stats"]["applied"].as_u64().unwrap();
    let latest = |recs: &[support::Out]| {
        let mut by_shard: BTreeMap<i64, Value> = BTreeMap::new();
        for r in recs {
            let v = r.json();
            by_shard.insert(v["shard"].as_i64().unwrap(), v);
        }
        by_shard
    };
    let recs = read_until(&settings.kafka.topics.funnel, "funnel records covering every event", |r| {
        let l = latest(r);
        l.len() == 3 && l.values().map(|v| v["stats"]["applied"].as_u64().unwrap()).sum::<u64>() == applied
    });
    let mut per_value: BTreeMap<String, u64> = BTreeMap::new();
    let mut none = 0;
    for v in latest(&recs).values() {
        let t = &v["breakdown_counts"][0];
        assert_eq!(t["dimension"], "campaign");
        assert!(t["values"].as_object().unwrap().len() <= 10, "a shard holds at most max_values values");
        for (value, c) in t["values"].as_object().unwrap() {
            *per_value.entry(value.clone()).or_default() += c["prospects"].as_u64().unwrap();
        }
        *per_value.entry("other".into()).or_default() += t["other"]["prospects"].as_u64().unwrap();
        none += t["none"]["prospects"].as_u64().unwrap();
    }
    assert_eq!(none, expected["none"]["prospects"].as_u64().unwrap());
    for v in expected["values"].as_array().unwrap() {
        assert_eq!(per_value[v["value"].as_str().unwrap()], v["prospects"].as_u64().unwrap(), "{v}");
    }
    let total: u64 = per_value.values().sum::<u64>() + none;
    assert_eq!(total, want_reached);

    // Every scrape Prometheus made saw at most top_k + 2 values.
    let most_seen = "max_over_time(count(count by (value) (microfunnel_breakdown_prospects_reached{dimension=\"campaign\"}))[10m:1s])";
    wait_until(LIMIT, "Prometheus scraped the breakdown gauges", || !prom.vector(most_seen).is_empty());
    let v = prom.vector(most_seen);
    let n: f64 = v[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(n >= 1.0 && n <= (TOP_K + 2) as f64, "Prometheus saw {n} campaign values at most: {v:?}");
    svc.stop().unwrap();
}
