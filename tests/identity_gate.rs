//! The expiry gate across partitions, in process with one engine per partition: a transfer to
//! a person that left ahead of the horizon, delivered again, changes nothing; held expiries are
//! still prospects and leave first at the prospect cap, so the gate makes no evictions replay
//! does not; a restored shard's ask keeps every other shard's horizon; a silent partition
//! freezes every horizon, made visible by the horizon's lag gauge; the waiting gauge counts only
//! people still past their due; and the `left` memory of people gone ahead of the horizon stays
//! within the cap.

mod payloads;

use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::ids::kafka_partition;
use microfunnel::core::time::parse_rfc3339;
use microfunnel::core::xpart::XRecord;
use microfunnel::core::{Engine, Journey, Output};
use microfunnel::replay::End;
use payloads::seg;

#[path = "support/cluster.rs"]
mod cluster;
use cluster::on;

const RETENTION: &str =
    "\n[retention]\nafter_days = 10\n[retention.stages]\naware = 4\n[retention.anonymous]\naware = 3\n";

fn journey() -> Arc<Journey> {
    cluster::resolving(RETENTION)
}

/// One engine per partition, each with its expiry gated.
fn gated(j: &Arc<Journey>) -> Vec<Engine> {
    let mut shards = cluster::engines(j, 3);
    for e in shards.iter_mut() {
        e.gate_expiry();
    }
    shards
}

fn apply(j: &Journey, e: &mut Engine, line: &str, out: &mut Vec<Output>) {
    let ev = microfunnel::codec::decode(line.as_bytes(), j, &Limits::default()).unwrap();
    e.apply(&ev, out);
}

/// A known user `u` (home 0) signs up from device `f` (home 1): shard 0 links them and tells
/// shard 1, which merges `f` into `u` and sends `f`'s state (`Transfer`, caused at the sign-up)
/// to shard 0. Before that transfer arrives, `u`'s own later event finds `u` past its due: `u`
/// leaves on contact, ahead of the horizon (`left`), and the event starts `u`'s next life. The
/// transfer then arrives and is taken as the merge replay made before `u` left
/// (`transfer_to_gone`): no marker is kept for `f`. The sender re-sends it (at-least-once: a
/// restore of the checkpoint whose outbox held it sends that outbox again). Receivers are
/// meant to drop it by generation; here nothing records the generation, so the duplicate
/// counts as a second merge while `u` is in `left`, and once the horizon passed `u`'s time
/// (the `left` entry dropped) it is installed and folded into `u`'s next life: `f`'s state
/// lives twice.
#[test]
fn a_transfer_to_a_person_gone_ahead_of_the_horizon_delivered_again_changes_nothing() {
    let j = journey();
    let mut shards = gated(&j);
    let mut out = Vec::new();
    let (u, f) = (on(0, "usr-g"), on(1, "anon-g"));
    // Device f browses on its partition (1).
    apply(&j, &mut shards[1], &seg("page", "", None, &f, "m-1", "2026-03-01T10:00:00Z", None), &mut out);
    // The sign-up (keyed by the user: partition 0) links u and f; the Link goes to f's home.
    apply(&j, &mut shards[0], &seg("identify", "", Some(&u), &f, "m-2", "2026-03-01T11:00:00Z", None), &mut out);
    let links = shards[0].take_identity_records();
    assert!(links.iter().any(|(p, r)| *p == 1 && matches!(r, XRecord::Link { .. })), "{links:?}");
    for (q, r) in links {
        shards[q as usize].apply_identity_record(r, &mut out);
    }
    let transfer = shards[1]
        .take_identity_records()
        .into_iter()
        .find(|(p, r)| *p == 0 && matches!(r, XRecord::Transfer { .. }))
        .expect("shard 1 sends f's state to u's home");
    // Before it arrives: u's own event a week later, past u's due (known aware: 4 days).
    // u leaves on contact; the event makes u's next life.
    out.clear();
    apply(&j, &mut shards[0], &seg("page", "", Some(&u), &f, "m-3", "2026-03-08T11:00:00Z", None), &mut out);
    assert_eq!(out.iter().filter(|o| matches!(o, Output::Expired { .. })).count(), 1, "{out:?}");
    shards[0].take_identity_records();
    // The transfer arrives: the merge replay made before u left.
    shards[0].apply_identity_record(transfer.1.clone(), &mut out);
    let stats =
        |e: &Engine| (e.identity_stats().merged, e.xpart_stats().unwrap().transfers_to_gone, e.resolved_digest());
    let once = stats(&shards[0]);
    assert_eq!(once.1, 1, "taken as a transfer to the person gone");
    // Delivered again (the sender's restored outbox): nothing may change.
    shards[0].apply_identity_record(transfer.1.clone(), &mut out);
    let twice = stats(&shards[0]);
    // Every partition reports far past u's time: the `left` entry is dropped; a third copy.
    for e in shards.iter_mut() {
        e.advance_to(parse_rfc3339("2026-03-20T00:00:00Z").unwrap(), &mut out);
    }
    for _ in 0..4 {
        let mut records = Vec::new();
        for e in shards.iter_mut() {
            e.publish_progress(false, false, &mut out);
            records
                .extend(e.take_identity_records().into_iter().filter(|(_, r)| matches!(r, XRecord::Progress { .. })));
        }
        for (q, r) in records {
            shards[q as usize].apply_identity_record(r, &mut out);
        }
    }
    assert!(shards[0].expiry_horizon().is_some_and(|h| h > parse_rfc3339("2026-03-10T00:00:00Z").unwrap()));
    let before_third = stats(&shards[0]);
    out.clear();
    shards[0].apply_identity_record(transfer.1, &mut out);
    let third = stats(&shards[0]);
    let expired_again = out.iter().filter(|o| matches!(o, Output::Expired { .. })).count();
    eprintln!(
        "once {once:?} twice {twice:?} before_third {before_third:?} third {third:?} expired again {expired_again}"
    );
    assert_eq!(
        (twice.0, twice.1),
        (once.0, once.1),
        "a redelivery within the window counts a second merge (merged, transfers_to_gone)"
    );
    assert_eq!(
        (third, expired_again),
        (before_third, 0),
        "a redelivery after the window is installed and merged again (and the person expires again)"
    );
}

/// Liveness, shown as it is (passes): once a partition's progress records stop coming (its
/// owner died and is not restored yet, or its checkpoints keep failing, so its outbox, which
/// holds its `Progress` records, is never sent: see
/// `pipeline::tests::the_outbox_record_fits_the_changelog_producers_message_max_bytes`), the
/// other shards keep its last `seen` in every minimum, so their horizons freeze there: nothing
/// expires by sweep on any partition, and what waits (`held`, the people themselves, the
/// `left` memory of contact expiries) grows with the traffic, up to the prospect cap (where
/// the held people leave first, and `left` stops). By design (no shard can know what the
/// silent partition would still send); made visible by the horizon's lag behind the watermark,
/// `microfunnel_expiry_horizon_lag_seconds`, checked here, and its alert.
#[test]
fn a_silent_partition_freezes_every_horizon() {
    let j = journey();
    let mut shards = gated(&j);
    let mut out = Vec::new();
    let exchange = |shards: &mut Vec<Engine>, alive: &[bool], out: &mut Vec<Output>| {
        for _ in 0..4 {
            let mut records = Vec::new();
            for (_, e) in shards.iter_mut().enumerate().filter(|(p, _)| alive[*p]) {
                e.publish_progress(false, false, out);
                records.extend(e.take_identity_records());
            }
            for (q, r) in records {
                shards[q as usize].apply_identity_record(r, out);
            }
        }
    };
    let visitors: Vec<Vec<String>> = (0..3).map(|p| (0..50).map(|k| on(p, &format!("anon-s{k}-"))).collect()).collect();
    let day = |d: u32, p: usize, k: usize| {
        seg(
            "page",
            "",
            None,
            &visitors[p][k],
            &format!("s-{p}-{k}-{d}"),
            &format!("2026-03-{d:02}T{:02}:00:00Z", k % 24),
            None,
        )
    };
    // Every partition reads and reports for two days.
    for d in 1..3 {
        for (p, e) in shards.iter_mut().enumerate() {
            for k in 0..50 {
                apply(&j, e, &day(d, p, k), &mut out);
            }
        }
        exchange(&mut shards, &[true; 3], &mut out);
    }
    let frozen = shards[0].expiry_horizon().unwrap();
    assert!(!frozen.is_none(), "every partition reported");
    // Partition 2 goes silent; partitions 0 and 1 read three weeks more, each visitor only
    // on its first day there (one-page visitors: due after 3 days).
    for d in 3..24 {
        for (p, e) in shards.iter_mut().enumerate().take(2) {
            for k in 0..50 {
                let fresh = format!("anon-n{d}-{k}-");
                let id = on(p as u32, &fresh);
                let line =
                    seg("page", "", None, &id, &format!("n-{p}-{k}-{d}"), &format!("2026-03-{d:02}T10:00:00Z"), None);
                apply(&j, e, &line, &mut out);
            }
        }
        exchange(&mut shards, &[true, true, false], &mut out);
    }
    assert_eq!(shards[0].expiry_horizon(), Some(frozen), "the horizon froze at partition 2's last report");
    let expired = out.iter().filter(|o| matches!(o, Output::Expired { .. })).count();
    eprintln!(
        "horizon {:?}, watermark {:?}, expired {expired}, waiting {} + {}, prospects {} + {}",
        frozen,
        shards[0].watermark(),
        shards[0].expiries_waiting(),
        shards[1].expiries_waiting(),
        shards[0].len(),
        shards[1].len()
    );
    assert!(expired == 0 && shards[0].expiries_waiting() > 800 && shards[1].expiries_waiting() > 800);
    // Visible: the horizon's lag behind the watermark, per shard, three weeks of event time.
    let metrics = microfunnel::telemetry::Metrics::new(&j).unwrap();
    let e = &shards[0];
    metrics.expiry_gate(0, e.expiry_horizon(), e.watermark(), e.expiries_waiting(), 0);
    let lag = (e.watermark().0 - frozen.0) as f64 / 1000.0;
    assert!(lag > 20.0 * 86400.0, "{lag}");
    assert!(metrics.render().contains(&format!("microfunnel_expiry_horizon_lag_seconds{{shard=\"0\"}} {lag}")));
    // Before every partition reported: +Inf, not absent.
    let fresh = gated(&j);
    metrics.expiry_gate(1, fresh[1].expiry_horizon(), e.watermark(), 0, 0);
    let text = metrics.render();
    let line = text.lines().find(|l| l.starts_with("microfunnel_expiry_horizon_lag_seconds{shard=\"1\"}"));
    let value: Option<f64> = line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok());
    assert_eq!(value, Some(f64::INFINITY), "{line:?}");
}

/// A silent partition under a prospect cap: people that leave ahead of the frozen horizon (here
/// evicted at the cap, 50 a day against a cap of 100) are remembered for transfers still in
/// flight, but that memory stays within the cap (plus one eviction batch), however long the
/// silence (1,251 entries without the bound).
#[test]
fn the_memory_of_people_gone_ahead_of_the_horizon_is_bounded_by_the_cap() {
    let capped = RETENTION.replace("after_days = 10\n", "after_days = 10\nmax_prospects_per_shard = 100\n");
    let j = cluster::resolving(&capped);
    let mut shards = gated(&j);
    let mut out = Vec::new();
    let visit = |p: u32, d: u32, k: u32| {
        let id = on(p, &format!("anon-b{d}-{k}-"));
        seg("page", "", None, &id, &format!("b-{p}-{d}-{k}"), &format!("2026-03-{d:02}T10:{k:02}:00Z"), None)
    };
    for p in 0..3 {
        apply(&j, &mut shards[p as usize], &visit(p, 1, 0), &mut out);
        shards[p as usize].advance_to(parse_rfc3339("2026-03-01T12:00:00Z").unwrap(), &mut out);
    }
    exchange(&mut shards, &[false; 3], &mut out);
    let frozen = shards[0].expiry_horizon().unwrap();
    assert!(!frozen.is_none());
    // Partition 2 goes silent; partition 0 reads four weeks of 50 one-page visitors a day.
    for d in 2..29 {
        for k in 0..50 {
            apply(&j, &mut shards[0], &visit(0, d, k), &mut out);
        }
        for e in shards.iter_mut().take(2) {
            e.publish_progress(false, false, &mut out);
            e.take_identity_records();
        }
    }
    assert_eq!(shards[0].expiry_horizon(), Some(frozen));
    let left = shards[0].left_ahead();
    eprintln!("left {left}, prospects {}, evicted {}", shards[0].len(), shards[0].stats().evicted);
    assert!(left > 0 && left <= 100 + 1, "{left}");
}

/// A restored shard's first progress record says `seen = none` (its table is empty) and asks.
/// Receivers keep the bounds it reported before (its re-execution from its latest durable
/// checkpoint sends only what follows them): no horizon drops, the gauge stays, and expiry goes
/// on everywhere; the restored shard relearns its own horizon from the answers. (It used to set
/// every other shard's horizon to none for two or three checkpoint intervals.)
#[test]
fn a_restored_shards_ask_keeps_every_horizon() {
    let j = journey();
    let mut shards = gated(&j);
    let mut out = Vec::new();
    let round = |shards: &mut Vec<Engine>, out: &mut Vec<Output>| {
        cluster::progress_round(shards, &[false; 3], out);
    };
    for (p, e) in shards.iter_mut().enumerate() {
        for k in 0..2 {
            let id = on(p as u32, &format!("anon-r{k}-"));
            apply(&j, e, &seg("page", "", None, &id, &format!("r-{p}-{k}"), "2026-03-01T10:00:00Z", None), &mut out);
        }
        e.advance_to(parse_rfc3339("2026-03-05T00:00:00Z").unwrap(), &mut out);
    }
    for _ in 0..4 {
        round(&mut shards, &mut out);
    }
    let before: Vec<_> = shards.iter().map(Engine::expiry_horizon).collect();
    assert!(before.iter().all(|h| h.is_some_and(|h| !h.is_none())), "{before:?}");
    // Shard 0 restored (its gate is soft state).
    let mut bytes = Vec::new();
    shards[0].encode_state(&mut bytes);
    shards[0] = cluster::restore(&j, &bytes, 0);
    shards[0].publish_progress(false, false, &mut out);
    let ask = shards[0].take_identity_records();
    assert!(ask.iter().all(|(_, r)| matches!(r, XRecord::Progress { asking: true, .. })), "{ask:?}");
    for (q, r) in ask {
        shards[q as usize].apply_identity_record(r, &mut out);
    }
    assert_eq!((shards[1].expiry_horizon(), shards[2].expiry_horizon()), (before[1], before[2]), "kept");
    assert_eq!(shards[0].expiry_horizon(), Some(microfunnel::core::Ts::NONE), "the restored shard relearns");
    for _ in 0..2 {
        round(&mut shards, &mut out);
    }
    let after: Vec<_> = shards.iter().map(Engine::expiry_horizon).collect();
    assert_eq!(after, before, "the restored shard answered and learned the same horizon");
}

/// Held expiries are still prospects: they count toward `max_prospects_per_shard`. While one
/// partition reads a backlog two weeks behind the others (the case the gate is for), the
/// others hold two weeks of due visitors instead of expiring them, reach the cap that replay
/// never reaches, and evict (`capacity`): `expired` events with another reason, and people
/// evicted that replay keeps or expires later. Replay (and the same run without the gate)
/// expires them on time and never evicts.
#[test]
fn held_expiries_do_not_cause_evictions_replay_does_not_make() {
    let capped = RETENTION.replace("after_days = 10\n", "after_days = 10\nmax_prospects_per_shard = 300\n");
    let j = cluster::resolving(&capped);
    assert!(j.retention.max_prospects.is_some());
    let visit = |p: u32, d: u32, k: u32| {
        let id = on(p, &format!("anon-c{d}-{k}-"));
        seg(
            "page",
            "",
            None,
            &id,
            &format!("c-{p}-{d}-{k}"),
            &format!("2026-03-{d:02}T{:02}:{:02}:00Z", k % 24, k % 60),
            None,
        )
    };
    let mut lines = Vec::new();
    for d in 1..21 {
        for k in 0..40 {
            lines.push(visit(0, d, k));
        }
        for k in 0..5 {
            lines.push(visit(1, d, k));
            lines.push(visit(2, d, k));
        }
    }
    let end = "2026-03-22T00:00:00Z";
    let mut sorted = lines.clone();
    sorted.sort_by_key(|l| l.split("\"timestamp\":\"").nth(1).unwrap().to_string());
    let (replay_evicted, replay_expired): (u64, u64) = {
        let shards = cluster::replay_shards(&j, &sorted, 3, End::Until(parse_rfc3339(end).unwrap()));
        (shards.iter().map(|e| e.stats().evicted).sum(), shards.iter().map(|e| e.stats().expired).sum())
    };
    assert_eq!(replay_evicted, 0);

    let mut shards = gated(&j);
    let mut out = Vec::new();
    let p_of = |l: &String| {
        let ev = microfunnel::codec::decode(l.as_bytes(), &j, &Limits::default()).unwrap();
        kafka_partition(ev.prospect.as_bytes(), 3) as usize
    };
    // Partitions 0 and 1 read their three weeks; partition 2 its first day only (its backlog
    // is read slowly), reporting progress all along.
    let (slow, fast): (Vec<&String>, Vec<&String>) = sorted.iter().partition(|l| p_of(l) == 2);
    let (first_day, rest): (Vec<&String>, Vec<&String>) = slow.into_iter().partition(|l| l.contains("2026-03-01T"));
    for l in &first_day {
        apply(&j, &mut shards[2], l, &mut out);
    }
    for (n, l) in fast.iter().enumerate() {
        let p = p_of(l);
        apply(&j, &mut shards[p], l, &mut out);
        if n % 20 == 0 {
            exchange(&mut shards, &[false; 3], &mut out);
        }
    }
    for l in &rest {
        apply(&j, &mut shards[2], l, &mut out);
        exchange(&mut shards, &[true, true, false], &mut out);
    }
    for e in shards.iter_mut() {
        e.advance_to(parse_rfc3339(end).unwrap(), &mut out);
    }
    exchange(&mut shards, &[true; 3], &mut out);
    let evicted: u64 = shards.iter().map(|e| e.stats().evicted).sum();
    assert_eq!(evicted, replay_evicted, "evicted at the cap: the service against replay --partitions 3");
    let expired: u64 = shards.iter().map(|e| e.stats().expired).sum();
    assert_eq!(expired, replay_expired, "expired: the service against replay --partitions 3");
    // At the end, no shard holds more people than the cap.
    assert!(shards.iter().all(|e| e.len() <= 300), "{:?}", shards.iter().map(Engine::len).collect::<Vec<_>>());
}

/// Progress rounds: every shard publishes (`idle[p]`), every record is delivered.
fn exchange(shards: &mut [Engine], idle: &[bool], out: &mut Vec<Output>) {
    for _ in 0..4 {
        cluster::progress_round(shards, idle, out);
    }
}

/// `expiries_waiting` counts people still past their due: a visitor whose expiry the horizon
/// holds, then given later activity by a forwarded event caused before its due (what the gate
/// waits for), is not waiting any more; released, it expires once, at its new due.
#[test]
fn expiries_waiting_counts_only_people_still_past_their_due() {
    let j = journey();
    let mut shards = gated(&j);
    let mut out = Vec::new();
    let x = on(0, "anon-w");
    let line = |id: &str, m: &str, at: &str| seg("page", "", None, id, m, at, None);
    apply(&j, &mut shards[0], &line(&x, "w-1", "2026-03-01T10:00:00Z"), &mut out);
    for e in shards.iter_mut() {
        e.advance_to(parse_rfc3339("2026-03-01T12:00:00Z").unwrap(), &mut out);
    }
    exchange(&mut shards, &[false; 3], &mut out);
    // Shard 0 runs ahead, past x's due (anonymous aware: 3 days); the others stay behind.
    shards[0].advance_to(parse_rfc3339("2026-03-06T00:00:00Z").unwrap(), &mut out);
    exchange(&mut shards, &[false; 3], &mut out);
    assert_eq!(shards[0].expiries_waiting(), 1, "held by the horizon");
    // An event of x's forwarded from a partition behind, caused before x's due.
    let ev = microfunnel::codec::decode(line(&x, "w-2", "2026-03-03T10:00:00Z").as_bytes(), &j, &Limits::default())
        .unwrap()
        .into_owned();
    shards[0].apply_identity_record(XRecord::Forward { into: x.clone(), event: ev }, &mut out);
    assert_eq!(shards[0].expiries_waiting(), 0, "x's due moved past the watermark");
    assert!(out.iter().all(|o| !matches!(o, Output::Expired { .. })));
    for e in shards.iter_mut() {
        e.advance_to(parse_rfc3339("2026-03-10T00:00:00Z").unwrap(), &mut out);
    }
    exchange(&mut shards, &[false; 3], &mut out);
    let at: Vec<_> =
        out.iter().filter_map(|o| if let Output::Expired { at, .. } = o { Some(*at) } else { None }).collect();
    assert_eq!(at, [parse_rfc3339("2026-03-06T10:00:00Z").unwrap()]);
}

/// An idle report lapses unless renewed (issue 16: an instance killed while its partition was
/// idle left it out of every horizon for good). Three shards with the pipeline's monotonic
/// clock passed in, each with a day of one-page visitors, all caught up and idle: nothing
/// holds anyone back. Partition 2's owner dies: its last report (idle, its watermark) is not
/// renewed, and once it is older than the lapse the others count it at that watermark, so
/// partition 0's visitors, whose due its own traffic passes, wait instead of expiring;
/// partition 1, idle too but renewing its report, never lapses. Partition 2's new owner
/// restores it and asks: fresh and idle again, the horizon is unbounded and the visitors
/// leave.
#[test]
fn an_idle_report_not_renewed_lapses_and_holds_every_horizon_at_its_watermark() {
    use microfunnel::core::xpart::Renewal;
    use std::time::{Duration, Instant};
    let j = journey();
    let mut shards = gated(&j);
    let mut out = Vec::new();
    let renewal = Renewal { renew: Duration::from_secs(10), lapse: Duration::from_secs(35) };
    let t0 = Instant::now();
    // One tick of the loop at `t0 + s` seconds: each live shard publishes (idle unless
    // `reading`), its records are delivered with the receivers' clock at the same time.
    // Returns the progress records each partition sent.
    let tick = |shards: &mut Vec<Engine>, s: u64, alive: &[bool], reading: &[bool], out: &mut Vec<Output>| {
        let now = t0 + Duration::from_secs(s);
        let mut records = Vec::new();
        let mut sent = [0usize; 3];
        for (p, e) in shards.iter_mut().enumerate().filter(|(p, _)| alive[*p]) {
            e.progress_clock(now, renewal);
            e.publish_progress(!reading[p], false, out);
            let r = e.take_identity_records();
            sent[p] += r.len();
            records.extend(r);
        }
        for (q, r) in records {
            if alive[q as usize] {
                shards[q as usize].progress_clock(now, renewal);
                shards[q as usize].apply_identity_record(r, out);
            }
        }
        sent
    };
    let visit = |p: u32, k: u32, d: u32| {
        let id = on(p, &format!("anon-l{d}-{k}-"));
        seg("page", "", None, &id, &format!("l-{p}-{k}-{d}"), &format!("2026-03-{d:02}T10:00:00Z"), None)
    };
    for (p, e) in shards.iter_mut().enumerate() {
        for k in 0..20 {
            apply(&j, e, &visit(p as u32, k, 1), &mut out);
        }
    }
    let (all, none) = ([true; 3], [false; 3]);
    for s in 0..2 {
        tick(&mut shards, s, &all, &none, &mut out);
    }
    assert_eq!(shards[0].expiry_horizon(), Some(microfunnel::core::xpart::UNBOUNDED), "every partition idle");
    let last = shards[2].watermark();
    let mut dead = shards[2].clone();
    let mut bytes = Vec::new();
    dead.encode_state(&mut bytes);

    // Partition 2 dies. Partition 1 stays idle and renews; partition 0 reads a week more.
    let alive = [true, true, false];
    let mut renewals = 0;
    for s in 2..40 {
        renewals += tick(&mut shards, s, &alive, &none, &mut out)[1];
    }
    assert_eq!(shards[0].progress_lapsed(), 1, "partition 2 lapsed, partition 1 renewed");
    assert_eq!(shards[1].progress_lapsed(), 1);
    assert_eq!(shards[0].progress_lapsed_partitions(), [2], "which one: the dead partition");
    assert_eq!(shards[1].progress_lapsed_partitions(), [2]);
    // A publication is a record to each of the two others: three renewals (10, 20 and 30 s
    // after the last), and the one that says partition 2 lapsed (its `seen` changed).
    assert_eq!(renewals, 8, "partition 1 renewed its idle report every 10 s");
    assert_eq!(shards[0].expiry_horizon(), Some(last), "held at partition 2's last watermark");
    for k in 0..20 {
        apply(&j, &mut shards[0], &visit(0, k, 8), &mut out);
    }
    tick(&mut shards, 40, &alive, &[true, false, false], &mut out);
    let expired = |out: &[Output]| out.iter().filter(|o| matches!(o, Output::Expired { .. })).count();
    assert_eq!(expired(&out), 0, "partition 0's visitors wait for partition 2");
    assert_eq!(shards[0].expiries_waiting(), 20);
    assert_eq!(shards[0].expiry_horizon(), Some(last));

    // The partition's new owner restores it and asks; the report is fresh and idle again.
    shards[2] = cluster::restore(&j, &bytes, 2);
    dead.take_identity_records();
    for s in 41..44 {
        tick(&mut shards, s, &all, &none, &mut out);
    }
    assert_eq!(shards[0].progress_lapsed(), 0);
    assert_eq!(shards[0].progress_lapsed_partitions(), Vec::<u32>::new());
    assert_eq!(shards[0].expiry_horizon(), Some(microfunnel::core::xpart::UNBOUNDED));
    assert_eq!(expired(&out), 20, "the held visitors left");
    assert_eq!(shards[0].expiries_waiting(), 0);
}

/// History mode (`pipeline.idle_advance_ms = 0`: no clock moves an idle partition's
/// watermark): traffic produced to partitions that were all idle is read by each at its own
/// pace. A partition that starts reading counts every idle partition at its watermark, from
/// its first event (not from its next publication), so its visitors due past partition 2's
/// watermark wait until partition 2 has read its share and reported. With the live rule
/// (partition 2 idle and renewed binds no one) they expire at partition 0's next publication,
/// before partition 2's records could arrive.
#[test]
fn in_history_mode_an_idle_partition_counts_while_another_reads() {
    let j = journey();
    let run = |history: bool| {
        let mut shards = gated(&j);
        let mut out = Vec::new();
        for e in shards.iter_mut() {
            e.wait_while_reading(history);
        }
        let visit = |p: u32, k: u32, d: u32| {
            let id = on(p, &format!("anon-h{d}-{k}-"));
            seg("page", "", None, &id, &format!("h-{p}-{k}-{d}"), &format!("2026-03-{d:02}T10:00:00Z"), None)
        };
        // Partition 2 read up to day 1, the others up to day 2.
        for (p, e) in shards.iter_mut().enumerate() {
            for k in 0..20 {
                apply(&j, e, &visit(p as u32, k, if p == 2 { 1 } else { 2 }), &mut out);
            }
        }
        for _ in 0..3 {
            cluster::progress_round(&mut shards, &[true; 3], &mut out);
        }
        assert_eq!(shards[0].expiry_horizon(), Some(microfunnel::core::xpart::UNBOUNDED), "all idle");
        // New traffic: partition 0 reads a week on; at its first event its horizon counts
        // partition 2 (history mode).
        let expired = |out: &[Output]| out.iter().filter(|o| matches!(o, Output::Expired { .. })).count();
        apply(&j, &mut shards[0], &visit(0, 0, 9), &mut out);
        let first = shards[0].expiry_horizon();
        for k in 1..20 {
            apply(&j, &mut shards[0], &visit(0, k, 9), &mut out);
        }
        cluster::progress_round(&mut shards, &[false, true, true], &mut out);
        (first, expired(&out), shards[2].watermark())
    };
    let (first, expired, w2) = run(true);
    assert_eq!((first, expired), (Some(w2), 0), "held at partition 2's watermark");
    let (_, expired, _) = run(false);
    assert_eq!(expired, 20, "the live rule: partition 2 left out");
}
