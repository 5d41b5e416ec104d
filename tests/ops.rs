//! Operator-facing integration: `gen` straight to Kafka, and a real Prometheus server scraping
//! a running service with the shipped rules loaded.

mod support;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use microfunnel::codec::{self, Limits};
use microfunnel::core::Source;
use support::*;

/// Kafka's Java `Utils.murmur2` (the default partitioner's hash; librdkafka `murmur2_random`).
fn murmur2(data: &[u8]) -> i32 {
    let (m, r) = (0x5bd1_e995u32, 24);
    let mut h = 0x9747_b28cu32 ^ data.len() as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(m);
        k ^= k >> r;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m) ^ k;
    }
    if tail.len() == 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(m);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    h as i32
}

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_microfunnel"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

#[test]
fn murmur2_matches_kafkas_reference_values() {
    // Values from Kafka's UtilsTest.testMurmur2.
    assert_eq!(murmur2(b"21"), -973932308);
    assert_eq!(murmur2(b"foobar"), -790332482);
    assert_eq!(murmur2(b"a-little-bit-long-string"), -985981536);
    assert_eq!(murmur2(b"a-little-bit-longer-string"), -1486304829);
    assert_eq!(murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8"), -58897971);
    assert_eq!(murmur2(b"abc"), 479470107);
}

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
            assert_eq!(r.partition, (murmur2(key.as_bytes()) & 0x7fff_ffff) % 3, "Java-compatible partition for {key}");
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

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
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
            rules.len() == 7 && rules.iter().all(|r| r["health"] == "ok")
        })
    });
    svc.stop().unwrap();
    std::fs::remove_dir_all(dir).ok();
}
