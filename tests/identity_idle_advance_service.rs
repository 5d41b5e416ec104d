//! The idle advance with identity resolution across partitions and `[retention]` (live mode,
//! `pipeline.idle_advance_ms` = 3 s, three partitions, anonymous `aware` visitors leave after
//! 3 days): identity-topic records (`Progress` reports every second from every partition,
//! links, transfers, forwards) are no input activity of the receiving shard's own, so a shard
//! whose own inputs are quiet advances its clock to the wall clock minus the allowed lateness
//! and reports that watermark, and the expiry horizons of every partition move with it.
//! Counted as activity (as `State::arrive` once did for every record of every input), they
//! kept a quiet shard's clock at its last event and every horizon with it: nothing expired by
//! sweep and no silence timer fired by the wall clock once traffic stopped. Each test runs a
//! control with the event-time merge off (`merge_buffer_messages = 0`, where records go
//! straight to `handle`) and then the default merge.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use microfunnel::core::{Journey, Ts};
use support::*;

const RETENTION: &str = "[retention]\nafter_days = 10\n[retention.anonymous]\naware = 3\n";

/// Expired visitors (by retention) within `limit`, with the merge buffer as given.
fn expired_after_traffic_stops(name: &str, merge_buffer: Option<usize>, limit: Duration) -> (f64, String) {
    let mut s = setup(name);
    resolving_journey(&mut s, RETENTION);
    s.pipeline.idle_advance_ms = 3000;
    if let Some(m) = merge_buffer {
        s.pipeline.merge_buffer_messages = m;
    }
    let journey = Arc::new(Journey::from_toml_str(&std::fs::read_to_string(&s.journey.path).unwrap()).unwrap());
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let at = Ts(now - 5 * 86_400_000).to_string();
    let mut records = Vec::new();
    for p in 0..2u32 {
        for k in 0..5 {
            let anon = key_in_partition(&format!("{name}-anon-{p}-{k}-"), p, 3);
            let line = format!(r#"{{"type":"page","anonymousId":"{anon}","messageId":"{anon}-m","timestamp":"{at}"}}"#);
            records.push(keyed(&anon, line));
        }
    }
    produce(web(&s), &records);
    let svc = Service::start_with(&s, journey);
    let started = Instant::now();
    let mut expired = 0.0;
    let mut text = String::new();
    while started.elapsed() < limit {
        text = svc.metrics().render();
        expired = expired_and_merged(&text).0 as f64;
        if expired >= 10.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    svc.stop().unwrap();
    (expired, gate_gauges(&text))
}

#[test]
fn idle_renewals_do_not_stop_the_idle_advance_of_the_other_shards() {
    // Control: the merge off, `Progress` records are not input activity; the shards holding
    // the visitors advance and the visitors leave.
    let (control, gauges) = expired_after_traffic_stops("idle-adv-nomerge", Some(0), Duration::from_secs(40));
    assert_eq!(control, 10.0, "control (merge off): {gauges}");
    // The default merge: the renewals of empty partition 2 reach shards 0 and 1 through
    // `arrive` every ~1 s (< idle_advance_ms); they must not count as input, or shards 0 and
    // 1 never advance, report their 5-day-old watermarks (not idle), and nothing expires.
    let (merged, gauges) = expired_after_traffic_stops("idle-adv-merge", None, Duration::from_secs(40));
    assert_eq!(merged, 10.0, "the default merge: visitors due 2 days ago never expire\n{gauges}");
}

/// The same fault without an empty partition: partitions 1 and 2 receive live traffic (a page
/// view stamped with the wall clock every 300 ms each), partition 0 holds five visitors 5 days
/// old and receives nothing more. Their watermarks move every second, so shards 1 and 2 send a
/// `Progress` record at every tick, which reaches shard 0 through `arrive`: counted as input,
/// shard 0 would never idle-advance, would report its 5-day-old watermark (not idle), and
/// every horizon, shards 1 and 2's included, would stay 5 days behind while the traffic lasts.
/// Control: the merge off, shard 0 advances after 3 s and its visitors (due 2 days ago) expire.
fn expired_on_the_quiet_partition(name: &str, merge_buffer: Option<usize>, run: Duration) -> (f64, String) {
    let mut s = setup(name);
    resolving_journey(&mut s, RETENTION);
    s.pipeline.idle_advance_ms = 3000;
    if let Some(m) = merge_buffer {
        s.pipeline.merge_buffer_messages = m;
    }
    let journey = Arc::new(Journey::from_toml_str(&std::fs::read_to_string(&s.journey.path).unwrap()).unwrap());
    let wall = || SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
    let page = |anon: &str, n: usize, at: i64| {
        let line =
            format!(r#"{{"type":"page","anonymousId":"{anon}","messageId":"{anon}-m{n}","timestamp":"{}"}}"#, Ts(at));
        keyed(anon, line)
    };
    let old: Vec<In> = (0..5)
        .map(|k| page(&key_in_partition(&format!("{name}-old-{k}-"), 0, 3), 0, wall() - 5 * 86_400_000))
        .collect();
    produce(web(&s), &old);
    let svc = Service::start_with(&s, journey);
    let live: Vec<String> = (0..6).map(|k| key_in_partition(&format!("{name}-live-{k}-"), 1 + k % 2, 3)).collect();
    let started = Instant::now();
    let (mut expired, mut text, mut n) = (0.0, String::new(), 0);
    while started.elapsed() < run {
        let batch: Vec<In> = live.iter().map(|a| page(a, n, wall())).collect();
        produce(web(&s), &batch);
        n += 1;
        text = svc.metrics().render();
        expired = expired_and_merged(&text).0 as f64;
        // The horizon gauges follow at the next progress tick (about a second).
        if expired >= 5.0 && busy_lag(&text) < 86_400.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    svc.stop().unwrap();
    (expired, gate_gauges(&text))
}

/// The largest `microfunnel_expiry_horizon_lag_seconds` of the busy shards 1 and 2.
fn busy_lag(gauges: &str) -> f64 {
    samples(gauges, "microfunnel_expiry_horizon_lag_seconds")
        .iter()
        .filter(|(l, _)| l.get("shard").is_some_and(|s| s != "0"))
        .map(|(_, v)| *v)
        .fold(0.0, f64::max)
}

#[test]
fn live_traffic_elsewhere_does_not_stop_the_idle_advance_of_a_quiet_partition() {
    let (control, gauges) = expired_on_the_quiet_partition("idle-quiet-nomerge", Some(0), Duration::from_secs(40));
    assert_eq!(control, 5.0, "control (merge off)\n{gauges}");
    // The default merge: shard 0 advances though `Progress` records reach it every second, its
    // visitors expire, and the busy shards' horizons follow its advanced watermark.
    let (merged, gauges) = expired_on_the_quiet_partition("idle-quiet-merge", None, Duration::from_secs(40));
    let lag = busy_lag(&gauges);
    assert!(
        merged == 5.0 && lag < 86_400.0,
        "the default merge: {merged} expired, busy shards' horizon lag {lag} s\n{gauges}"
    );
}

/// The expiry gate's gauge lines of the metrics text (shown when a test fails).
fn gate_gauges(text: &str) -> String {
    text.lines()
        .filter(|l| l.starts_with("microfunnel_expiry_horizon") || l.starts_with("microfunnel_expiries_waiting"))
        .map(|l| format!("{l}\n"))
        .collect()
}
