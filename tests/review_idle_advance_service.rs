//! Review finding (branch `review`, merge `idle`): with the event-time merge on (the default,
//! `pipeline.merge_buffer_messages` > 0), `State::arrive` sets `shard.last_input` for every
//! message of every input, the identity topic's `Progress` records included, before
//! `handle_identity` (which carefully leaves `Progress` records out: "they are no input
//! activity, the idle advance goes on") ever sees them. Since `idle`, an idle partition renews
//! its report every `renew` (two commit intervals, at least a second: every 10 s at the
//! defaults), so every other shard receives a `Progress` record more often than
//! `idle_advance_ms` (60 s by default): no shard ever idle-advances again. And since `idle`, a
//! caught-up shard that holds prospects reports its watermark (not idle), counting on the
//! advance to move it: that watermark now stays where the last input left it, and every
//! partition's expiry horizon with it. Nothing expires by sweep and no silence timer fires by
//! the wall clock once traffic stops, as long as one partition is empty (idle, renewing).
//!
//! Live mode (`idle_advance_ms` = 3 s), identity across three partitions with `[retention]`
//! (anonymous `aware` visitors leave after 3 days), ten one-page visitors 5 days old on
//! partitions 0 and 1, none on partition 2 (empty: idle, renewing every second). README: "a
//! shard that holds prospects has its watermark moved by the wall clock ... so it reports that
//! watermark"; the visitors are due 2 days ago, before wall - 24 h lateness, so they expire
//! once shards 0 and 1 advance. Control: the same with the merge off
//! (`merge_buffer_messages = 0`: `arrive` hands the message straight to `handle`, where
//! `Progress` records do not count as input): they expire within seconds. With the merge on
//! (the default) they never do.

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
        expired = samples(&text, "microfunnel_prospects_expired_total")
            .iter()
            .filter(|(l, _)| l.get("reason").map(String::as_str) == Some("retention"))
            .map(|(_, v)| *v)
            .sum();
        if expired >= 10.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    svc.stop().unwrap();
    let gauges: String = text
        .lines()
        .filter(|l| l.starts_with("microfunnel_expiry_horizon") || l.starts_with("microfunnel_expiries_waiting"))
        .map(|l| format!("{l}\n"))
        .collect();
    (expired, gauges)
}

#[test]
#[ignore = "review finding: arrive() counts identity Progress records as input, so idle renewals stop every idle advance and freeze every horizon (live mode)"]
fn idle_renewals_must_not_stop_the_idle_advance_of_the_other_shards() {
    // Control: the merge off, `Progress` records are not input activity; the shards holding
    // the visitors advance and the visitors leave.
    let (control, gauges) = expired_after_traffic_stops("rv-adv-nomerge", Some(0), Duration::from_secs(40));
    assert_eq!(control, 10.0, "control (merge off): {gauges}");
    // The default merge: the renewals of empty partition 2 reach shards 0 and 1 through
    // `arrive` every ~1 s (< idle_advance_ms), their `last_input` is always fresh, they never
    // advance, they report their 5-day-old watermarks (not idle), and nothing expires.
    let (merged, gauges) = expired_after_traffic_stops("rv-adv-merge", None, Duration::from_secs(40));
    assert_eq!(merged, 10.0, "the default merge: visitors due 2 days ago never expire\n{gauges}");
}

/// The same fault without an empty partition: partitions 1 and 2 receive live traffic (a page
/// view stamped with the wall clock every 300 ms each), partition 0 holds five visitors 5 days
/// old and receives nothing more. Their watermarks move every second, so shards 1 and 2 send a
/// `Progress` record at every tick, which reaches shard 0 through `arrive` and refreshes its
/// `last_input`: shard 0 never idle-advances, reports its 5-day-old watermark (not idle), and
/// every horizon, shards 1 and 2's included, stays 5 days behind while the traffic lasts.
/// Control: the merge off, shard 0 advances after 3 s and its visitors (due 2 days ago) expire.
/// Both tests of this file pass at fdfa0f8 (before `idle`), merge on and off.
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
        let line = format!(
            r#"{{"type":"page","anonymousId":"{anon}","messageId":"{anon}-m{n}","timestamp":"{}"}}"#,
            Ts(at)
        );
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
        expired = samples(&text, "microfunnel_prospects_expired_total")
            .iter()
            .filter(|(l, _)| l.get("reason").map(String::as_str) == Some("retention"))
            .map(|(_, v)| *v)
            .sum();
        if expired >= 5.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    svc.stop().unwrap();
    let gauges: String = text
        .lines()
        .filter(|l| l.starts_with("microfunnel_expiry_horizon") || l.starts_with("microfunnel_expiries_waiting"))
        .map(|l| format!("{l}\n"))
        .collect();
    (expired, gauges)
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
#[ignore = "review finding: with live traffic elsewhere, a quiet partition holding prospects never idle-advances (Progress records count as input in arrive) and, since idle, holds every horizon at its last event"]
fn live_traffic_elsewhere_must_not_stop_the_idle_advance_of_a_quiet_partition() {
    let (control, gauges) = expired_on_the_quiet_partition("rv-quiet-nomerge", Some(0), Duration::from_secs(40));
    assert_eq!(control, 5.0, "control (merge off)\n{gauges}");
    // The default merge: shard 0 never advances (its visitors, due 2 days ago, never expire)
    // and reports its 5-day-old watermark, so the busy shards' horizons stay 5 days behind
    // their watermarks. Before `idle` (fdfa0f8) this test passes: caught-up shards reported
    // idle, whose watermark moves said nothing new, so no `Progress` record reached shard 0
    // every second, it advanced, and it was left out of the others' horizons anyway.
    let (merged, gauges) = expired_on_the_quiet_partition("rv-quiet-merge", None, Duration::from_secs(40));
    let lag = busy_lag(&gauges);
    assert!(merged == 5.0 && lag < 86_400.0, "the default merge: {merged} expired, busy shards' horizon lag {lag} s\n{gauges}");
}
