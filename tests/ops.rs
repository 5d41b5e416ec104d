//! Operator-facing integration: `gen` straight to Kafka, and a real Prometheus server scraping
//! a running service with the shipped rules loaded.

mod support;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use microfunnel::codec::{self, Limits};
use microfunnel::core::Source;
use microfunnel::core::ids::kafka_partition;
use support::*;

#[test]
fn gen_to_kafka_sends_what_gen_writes_keyed_and_partitioned_like_java_producers() {
    let s = setup("gen-kafka");
    let args = ["gen", "--prospects", "40", "--seed", "5", "--quiet", "--malformed", "0"];
    let file = std::env::temp_dir().join(format!("{}.jsonl", unique("gen")));
    let status = bin().args(args).arg("--out").arg(&file).status().unwrap();
    assert!(status.success());
    let expected = std::fs::read_to_string(&file).unwrap();
    std::fs::remove_file(&file).ok();
    let lines: Vec<&str> = expected.lines().collect();
    let out = bin()
        .args(args)
        .args(["--brokers", brokers(), "--web-topic", web(&s), "--crm-topic", crm(&s)])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let journey = journey();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut total = 0;
    for (topic, source) in [(web(&s).to_string(), Source::Web), (crm(&s).to_string(), Source::Crm)] {
        let want = lines
            .iter()
            .filter(|l| codec::decode(l.as_bytes(), &journey, &Limits::default()).unwrap().source == source)
            .count();
        assert!(want > 0, "traffic has {source:?} events");
        let read = read_until(&topic, &format!("{want} records"), |r| r.len() >= want);
        assert_eq!(read.len(), want, "{topic}: exactly the generated records");
        for r in &read {
            let ev = codec::decode(&r.payload, &journey, &Limits::default()).unwrap();
            assert_eq!(ev.source, source, "on the {source:?} topic");
            let key = r.key.as_deref().expect("keyed");
            assert_eq!(key, &*ev.prospect, "key is the prospect id");
            assert_eq!(r.partition as u32, kafka_partition(key.as_bytes(), 3), "Java-compatible partition for {key}");
            *seen.entry(String::from_utf8(r.payload.clone()).unwrap()).or_default() += 1;
        }
        total += read.len();
    }
    assert_eq!(total, lines.len());
    let mut want: BTreeMap<String, usize> = BTreeMap::new();
    for l in &lines {
        *want.entry(l.to_string()).or_default() += 1;
    }
    assert_eq!(seen, want, "the same lines as `gen --out` for the same seed");
}

/// `gen --compression none` produces the same records uncompressed (what `benches/` use to
/// measure a consumer holding messages of uncompressed batches); an unknown codec is refused with
/// exit code 2, naming the ones it takes.
#[test]
fn gen_to_kafka_takes_the_batch_compression_and_refuses_an_unknown_one() {
    let s = setup("gen-compression");
    let args = ["gen", "--prospects", "20", "--seed", "9", "--quiet", "--malformed", "0"];
    let file = std::env::temp_dir().join(format!("{}.jsonl", unique("gen")));
    assert!(bin().args(args).arg("--out").arg(&file).status().unwrap().success());
    let expected = std::fs::read_to_string(&file).unwrap();
    std::fs::remove_file(&file).ok();
    let out = bin()
        .args(args)
        .args(["--brokers", brokers(), "--web-topic", web(&s), "--crm-topic", crm(&s), "--compression", "none"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let journey = journey();
    for (topic, source) in [(web(&s).to_string(), Source::Web), (crm(&s).to_string(), Source::Crm)] {
        let want = expected
            .lines()
            .filter(|l| codec::decode(l.as_bytes(), &journey, &Limits::default()).unwrap().source == source)
            .count();
        let read = read_until(&topic, &format!("{want} records"), |r| r.len() >= want);
        assert_eq!(read.len(), want, "{topic}: exactly the generated records");
    }

    let out = bin().args(args).args(["--brokers", brokers(), "--compression", "brotli"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--compression") && err.contains("lz4") && err.contains("none"), "{err}");
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// GET returning `None` while the server is not up yet (connection refused, non-200).
fn json_get(port: u16, path: &str) -> Option<serde_json::Value> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(conn, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    conn.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200").then_some(()).or_else(|| head.starts_with("HTTP/1.1 200").then_some(()))?;
    serde_json::from_str(body).ok()
}

#[test]
fn a_real_prometheus_server_scrapes_the_service_and_loads_the_rules() {
    let which = Command::new("prometheus").arg("--version").output();
    assert!(
        which.is_ok_and(|o| o.status.success()),
        "the Prometheus server is needed: apt-get install prometheus (.ci/run does)"
    );
    let s = setup("prometheus");
    let svc = Service::start(&s);
    let t = "2026-03-02T10:00:00Z";
    produce(
        web(&s),
        &[
            keyed(
                "usr_p1",
                format!(
                    r#"{{"event_id":"p-1","prospect_id":"usr_p1","source":"web","type":"page_viewed","ts":"{t}"}}"#
                ),
            ),
            keyed(
                "usr_p1",
                format!(
                    r#"{{"event_id":"p-2","prospect_id":"usr_p1","source":"web","type":"quote_requested","ts":"{t}"}}"#
                ),
            ),
        ],
    );
    let metrics = svc.metrics();
    wait_until(DEADLINE, "the service consumed both events", || metrics.hot_leads.get() == 1);

    let dir = std::env::temp_dir().join(unique("prom"));
    std::fs::create_dir_all(&dir).unwrap();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/rules.yml");
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n  - job_name: microfunnel\n    static_configs:\n      - targets: [\"{}\"]\n",
        rules.display(),
        svc.addr()
    );
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let _prom = Prometheus(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let query = "/api/v1/query?query=microfunnel_hot_leads_total";
    wait_until(Duration::from_secs(60), "Prometheus scraped microfunnel_hot_leads_total = 1", || {
        json_get(port, query).is_some_and(|v| v["data"]["result"][0]["value"][1] == "1")
    });
    let q = "/api/v1/query?query=microfunnel_events_consumed_total%7Bsource%3D%22web%22%2Csignal%3D%22quote_requested%22%7D";
    assert_eq!(json_get(port, q).unwrap()["data"]["result"][0]["value"][1], "1");
    let targets = json_get(port, "/api/v1/targets").unwrap();
    assert_eq!(targets["data"]["activeTargets"][0]["health"], "up", "{targets}");
    wait_until(Duration::from_secs(30), "the shipped rules load and evaluate", || {
        json_get(port, "/api/v1/rules").is_some_and(|v| {
            let rules = v["data"]["groups"][0]["rules"].as_array().cloned().unwrap_or_default();
            rules.len() == 16 && rules.iter().all(|r| r["health"] == "ok")
        })
    });
    svc.stop().unwrap();
    std::fs::remove_dir_all(dir).ok();
}

fn rfc3339_days_ago(days: f64) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    microfunnel::core::Ts(now - (days * 86_400_000.0) as i64).to_string()
}

#[test]
fn an_idle_shard_advances_from_the_wall_clock_so_ghosting_fires_without_traffic() {
    let mut s = setup("idle");
    s.pipeline.idle_advance_ms = 300;
    let svc = Service::start(&s);
    // A quote 7 days ago, no reply since: ghosted is due 2 days ago, past the 24 h lateness.
    let quote = rfc3339_days_ago(7.0);
    let demo = rfc3339_days_ago(9.0);
    produce(
        web(&s),
        &[keyed(
            "usr_idle",
            format!(
                r#"{{"event_id":"i-1","prospect_id":"usr_idle","source":"web","type":"demo_requested","ts":"{demo}"}}"#
            ),
        )],
    );
    produce(
        crm(&s),
        &[keyed(
            "usr_idle",
            format!(
                r#"{{"event_id":"i-2","prospect_id":"usr_idle","source":"crm","type":"quote_sent","ts":"{quote}"}}"#
            ),
        )],
    );
    let read = read_until(&s.kafka.topics.journey_events, "a ghosted event", |r| {
        r.iter().any(|o| o.json()["kind"] == "ghosted")
    });
    let g = read.iter().map(Out::json).find(|v| v["kind"] == "ghosted").unwrap();
    assert_eq!(g["prospect"], "usr_idle");
    assert_eq!(g["stage"], "deciding");
    assert_eq!(svc.metrics().ghosted.with_label_values(&["deciding"]).get(), 1, "counted in the stage it ghosted in");
    svc.stop().unwrap();
}

#[test]
fn check_config_masks_secrets_and_names_bad_keys() {
    let ok = bin()
        .args(["check-config", "--config", "deploy/config/local.toml"])
        .env("MICROFUNNEL__KAFKA__CLIENT__SASL_PASSWORD", "hunter2-secret")
        .env("MICROFUNNEL__HTTP__TOKEN", "query-token-never-shown-7d2a")
        .env("MICROFUNNEL__KAFKA__BROKERS", "kafka-1:9092,kafka-2:9092")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    assert!(stdout.contains(r#""sasl.password" = "*****""#), "{stdout}");
    assert!(!stdout.contains("hunter2"), "secret leaked: {stdout}");
    assert!(!stdout.contains("query-token-never-shown"), "the query API token leaked: {stdout}");
    assert!(stdout.contains(r#"token = "*****""#), "{stdout}");
    assert!(stdout.contains(r#"brokers = "kafka-1:9092,kafka-2:9092""#), "env overrides the file: {stdout}");
    assert!(stdout.contains(r#"changelog_topic = "microfunnel-changelog""#), "the derived name is shown: {stdout}");
    for (key, value, named) in [
        ("MICROFUNNEL__KAFKA__BROKERZ", "x", "brokerz"),
        ("MICROFUNNEL__HTTP__LISTEN", "everywhere", "http.listen"),
        ("MICROFUNNEL__KAFKA__TOPICS__HOT_LEADS", "web-events", "kafka.topics.hot_leads"),
        ("MICROFUNNEL__KAFKA__CLIENT__ENABLE_AUTO_COMMIT", "true", "enable.auto.commit"),
        ("MICROFUNNEL__KAFKA__CLIENT__DELIVERY_REPORT_ONLY_ERROR", "false", "delivery.report.only.error"),
        ("MICROFUNNEL__KAFKA__CLIENT__SASL_PASWORD", "hunter3-secret", "sasl.pasword"),
    ] {
        let bad =
            bin().args(["check-config", "--config", "deploy/config/local.toml"]).env(key, value).output().unwrap();
        assert_eq!(bad.status.code(), Some(2), "{key}");
        let err = String::from_utf8_lossy(&bad.stderr);
        assert!(err.contains(named), "{key}: {err}");
        assert!(!err.contains("hunter3"), "a misspelt secret's value is not printed: {err}");
    }
}

#[test]
fn sigterm_stops_the_service_gracefully_with_exit_code_zero() {
    let s = setup("sigterm");
    let port = free_port();
    let mut child = bin()
        .args(["run", "--config", "deploy/config/local.toml"])
        .env("MICROFUNNEL__KAFKA__BROKERS", brokers())
        .env("MICROFUNNEL__KAFKA__GROUP_ID", &s.kafka.group_id)
        .env("MICROFUNNEL__KAFKA__INPUT_TOPICS", s.kafka.input_topics.join(","))
        .env("MICROFUNNEL__KAFKA__TOPICS__HOT_LEADS", &s.kafka.topics.hot_leads)
        .env("MICROFUNNEL__KAFKA__TOPICS__JOURNEY_EVENTS", &s.kafka.topics.journey_events)
        .env("MICROFUNNEL__KAFKA__TOPICS__FUNNEL", &s.kafka.topics.funnel)
        .env("MICROFUNNEL__KAFKA__TOPICS__DEAD_LETTER", &s.kafka.topics.dead_letter)
        .env("MICROFUNNEL__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(DEADLINE, "the service reports ready", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            && http_get(([127, 0, 0, 1], port).into(), "/readyz").0 == 200
    });
    let t = "2026-03-02T10:00:00Z";
    produce(
        web(&s),
        &[keyed(
            "usr_t",
            format!(r#"{{"event_id":"t-1","prospect_id":"usr_t","source":"web","type":"quote_requested","ts":"{t}"}}"#),
        )],
    );
    read_until(&s.kafka.topics.hot_leads, "the alert", |r| !r.is_empty());
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no exit within the shutdown deadline");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
    let committed = committed(&s.kafka.group_id, &s.kafka.input_topics);
    assert_eq!(
        committed.values().sum::<i64>(),
        1,
        "the one event's offset was committed on the way out: {committed:?}"
    );
}
