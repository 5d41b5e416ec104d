//! Transfer dedup that survives `[retention]` (issue 16): a receiver's marker for a transferred
//! id, and a sender's own redirect, hold the id's transfer generation (`Prospect::handoff`);
//! when retention frees them the generation is kept aside by id (`Engine::kept_handoffs`,
//! checkpointed with the shard meta) for `[identity] transfer_dedup_days` of event time (7 by
//! default; a sender's own ids twice as long), so a transfer redelivered after its person expired
//! counts once, and a later legitimate generation is not taken for a redelivery.

mod payloads;

use std::collections::VecDeque;
use std::sync::Arc;

use microfunnel::codec::Limits;
use microfunnel::core::funnel::Funnel;
use microfunnel::core::ids::kafka_partition;
use microfunnel::core::time::parse_rfc3339;
use microfunnel::core::xpart::XRecord;
use microfunnel::core::{Engine, Journey, Output, Ts};
use microfunnel::replay::End;
use payloads::seg;

#[path = "support/cluster.rs"]
mod cluster;
use cluster::{Cluster, PARTITIONS, in_stage, on, people, resolved, restored_as};
const RETENTION: &str = "\n[retention]\nafter_days = 10\n[retention.stages]\naware = 4\n";

fn journey() -> Arc<Journey> {
    journey_with("")
}

/// The test journey with more `[identity]` settings.
fn journey_with(identity: &str) -> Arc<Journey> {
    cluster::resolving(&format!("{identity}{RETENTION}"))
}

/// What the shards count: their funnels, and expired and evicted.
fn counts(shards: &[Engine]) -> (Vec<Funnel>, u64, u64) {
    let f = shards.iter().map(|e| e.funnel().clone()).collect();
    (f, shards.iter().map(|e| e.stats().expired).sum(), shards.iter().map(|e| e.stats().evicted).sum())
}

fn reached(shards: &[Engine]) -> Vec<u64> {
    let mut sum = vec![0; shards[0].funnel().reached.len()];
    for e in shards {
        for (s, n) in sum.iter_mut().zip(&e.funnel().reached) {
            *s += n;
        }
    }
    sum
}

fn expired_events(out: &[Output]) -> usize {
    out.iter().filter(|o| matches!(o, Output::Expired { .. })).count()
}

fn duplicates(shards: &[Engine]) -> u64 {
    shards.iter().map(|e| e.xpart_stats().unwrap().transfers_duplicate).sum()
}

/// An anonymous id on partition 0 identifies as a user homed on partition 1: its prospect is
/// transferred (generation 1); the person then expires on the user's shard, and every home
/// forgets it (the receiver's marker and the sender's redirect are freed).
fn transferred_then_expired(c: &mut Cluster, anon: &str, user: &str) {
    c.send(&seg("page", "", None, anon, "m-1", "2026-03-02T09:00:00Z", None));
    c.send(&seg("track", "Whitepaper Downloaded", None, anon, "m-2", "2026-03-02T09:05:00Z", None));
    c.send(&seg("identify", "", Some(user), anon, "m-3", "2026-03-03T10:00:00Z", Some("Ana@X.example")));
    assert_eq!(c.transfers().len(), 1);
    c.advance(1, "2026-03-20T00:00:00Z");
    c.drain();
    assert_eq!(people(&c.shards), 0);
    assert_eq!(expired_events(&c.out), 1);
    assert!(c.shards.iter().all(|e| e.redirect_ids().is_empty()), "markers and redirects freed");
}

/// Scenario 1: the sender, restored from a checkpoint taken before it sent, sends the transfer
/// again after the person expired at the receiver. The receiver's marker is gone, its generation
/// kept: the transfer is a redelivery, the counts are those of one delivery, one `expired`.
#[test]
fn a_transfer_redelivered_after_its_person_expired_at_the_receiver_counts_once() {
    let (anon, user) = (on(0, "anon-"), on(1, "usr_"));
    let mut c = Cluster::new(journey());
    transferred_then_expired(&mut c, &anon, &user);
    assert_eq!(c.shards[1].kept_handoffs().get(anon.as_str()).map(|k| k.handoff), Some(3), "folded generation 1");
    assert_eq!(c.shards[0].kept_handoffs().get(anon.as_str()).map(|k| k.handoff), Some(2), "sent generation 1");
    let once = counts(&c.shards);
    for (p, r) in c.transfers() {
        c.queue.push_back((p, r));
    }
    c.drain();
    assert_eq!(expired_events(&c.out), 1, "{:?}", c.out);
    assert_eq!(counts(&c.shards), once);
    assert_eq!(duplicates(&c.shards), 1);
    assert_eq!(people(&c.shards), 0);
}

/// The receiver's shard moves on 21 days past the person's expiry (two new people's events, so
/// its clock moves and its sweep runs), then the sender, restored from a checkpoint taken before
/// it sent, sends the transfer again. Returns the counts before the redelivery and the
/// generation the receiver kept for `anon` then.
fn redelivered_three_weeks_later(c: &mut Cluster, anon: &str, user: &str) -> ((Vec<Funnel>, u64, u64), Option<u16>) {
    transferred_then_expired(c, anon, user);
    let (a, b) = (on(1, "usr_a_"), on(1, "usr_b_"));
    c.send(&seg("page", "", Some(&a), "anon-a", "m-4", "2026-04-11T09:00:00Z", None));
    c.send(&seg("page", "", Some(&b), "anon-b", "m-5", "2026-04-11T09:01:00Z", None));
    assert!(c.shards[1].watermark() > parse_rfc3339("2026-04-09T00:00:00Z").unwrap(), "the receiver moved on");
    let once = counts(&c.shards);
    let kept = c.shards[1].kept_handoffs().get(anon).map(|k| k.handoff);
    for (p, r) in c.transfers() {
        c.queue.push_back((p, r));
    }
    c.drain();
    (once, kept)
}

/// `[identity] transfer_dedup_days = 30`: a transfer redelivered three weeks (more than the
/// default 7 days) after its person expired at the receiver is still dropped there: one
/// `expired`, the counts of one delivery. With the default, the receiver forgot the generation
/// and counts the person again (installed, then expired again at once).
#[test]
fn a_redelivery_later_than_seven_days_within_the_configured_span_counts_once() {
    let (anon, user) = (on(0, "anon-"), on(1, "usr_"));
    let mut c = Cluster::new(journey_with("transfer_dedup_days = 30\n"));
    let (once, kept) = redelivered_three_weeks_later(&mut c, &anon, &user);
    assert_eq!(kept, Some(3), "still kept");
    assert_eq!(duplicates(&c.shards), 1);
    assert_eq!(expired_events(&c.out), 1, "{:?}", c.out);
    assert_eq!(counts(&c.shards), once);

    // The default span: swept by then, so the redelivery counts again.
    let mut c = Cluster::new(journey());
    let (once, kept) = redelivered_three_weeks_later(&mut c, &anon, &user);
    assert_eq!(kept, None, "swept after 7 days");
    assert_eq!(duplicates(&c.shards), 0);
    assert_eq!(expired_events(&c.out), 2, "{:?}", c.out);
    assert_ne!(counts(&c.shards), once);
}

/// Scenario 2: after the person expired (the sender's redirect for the anonymous id freed with
/// it), the id comes back and identifies as the user again. Its next transfer is generation 2,
/// above the receiver's kept generation 1: it folds, and the people and counts are those of
/// `replay --partitions 1`.
#[test]
fn a_later_generation_after_the_senders_redirect_was_freed_still_folds() {
    let (anon, user) = (on(0, "anon-"), on(1, "usr_"));
    let j = journey();
    let mut c = Cluster::new(Arc::clone(&j));
    transferred_then_expired(&mut c, &anon, &user);
    let later = [
        seg("page", "", None, &anon, "m-7", "2026-03-25T09:00:00Z", None),
        seg("track", "Ebook Downloaded", None, &anon, "m-8", "2026-03-25T09:05:00Z", None),
        seg("identify", "", Some(&user), &anon, "m-9", "2026-03-26T10:00:00Z", Some("ana@x.example")),
    ];
    for l in &later {
        c.send(l);
    }
    // One shard, the same events, time advanced at the same point.
    let lines = [
        seg("page", "", None, &anon, "m-1", "2026-03-02T09:00:00Z", None),
        seg("track", "Whitepaper Downloaded", None, &anon, "m-2", "2026-03-02T09:05:00Z", None),
        seg("identify", "", Some(&user), &anon, "m-3", "2026-03-03T10:00:00Z", Some("Ana@X.example")),
    ];
    let mut one = cluster::replay_clean(&j, &lines, 1, End::Until(parse_rfc3339("2026-03-20T00:00:00Z").unwrap()));
    let mut outputs = Vec::new();
    for l in &later {
        one[0].apply(&microfunnel::codec::decode(l.as_bytes(), &j, &Limits::default()).unwrap(), &mut outputs);
    }
    assert_eq!(people(&c.shards), 1);
    assert_eq!(people(&c.shards), people(&one));
    assert_eq!(in_stage(&c.shards), in_stage(&one));
    assert_eq!(reached(&c.shards), reached(&one));
    assert_eq!(resolved(&c.shards), resolved(&one));
    let Some((_, XRecord::Transfer { generation, .. })) = c.transfers().last().cloned() else { unreachable!() };
    assert_eq!(generation, 2);
    assert_eq!(duplicates(&c.shards), 0, "the later generation is no redelivery");
}

/// The kept generations are state: restored from a snapshot, or from the changelog's records
/// alone, each shard keeps them, and the transfer redelivered after the restore folds nothing.
#[test]
fn kept_generations_survive_a_restore_from_snapshot_and_from_the_changelog() {
    let (anon, user) = (on(0, "anon-"), on(1, "usr_"));
    let j = journey();
    let mut c = Cluster::new(Arc::clone(&j));
    transferred_then_expired(&mut c, &anon, &user);
    let once = counts(&c.shards);
    for how in ["snapshot", "changelog"] {
        let mut shards: Vec<Engine> = c
            .shards
            .iter()
            .enumerate()
            .map(|(p, live)| {
                let e = restored_as(how, &j, live, p);
                assert_eq!(e.kept_handoffs(), live.kept_handoffs(), "{how}, shard {p}");
                e
            })
            .collect();
        assert!(!shards[1].kept_handoffs().is_empty());
        let mut out = Vec::new();
        for (p, r) in c.transfers() {
            shards[p as usize].apply_identity_record(r, &mut out);
            assert!(shards[p as usize].take_identity_records().is_empty(), "{how}");
        }
        assert_eq!(expired_events(&out), 0, "{how}");
        assert_eq!(counts(&shards), once, "{how}");
        assert_eq!(duplicates(&shards), 1, "{how}");
    }
}

/// The kept generations stay bounded: under a year of generated traffic with retention and
/// identity on 3 partitions, each shard keeps only generations freed within the last
/// `2 × transfer_dedup_days` (and a sweep interval), far fewer than it freed.
#[test]
fn kept_generations_stay_within_their_span_under_a_year_of_traffic() {
    use microfunnel::traffic::Options as Gen;
    let j = journey();
    let opts = Gen { prospects: 600, seed: 5, days: 365.0, segment_share: 1.0, malformed_share: 0.0, ..Gen::default() };
    let lines = cluster::generated(opts, &j);
    let shards = cluster::replay_shards(&j, &lines, PARTITIONS, End::Stay);
    let span = j.transfer_dedup.0;
    assert_eq!(span, microfunnel::core::engine::KEPT_HANDOFF_SPAN.0, "7 days by default");
    let (mut kept, mut freed) = (0, 0);
    for (p, e) in shards.iter().enumerate() {
        let oldest = Ts(e.watermark().0 - 2 * span - 86_400_000);
        for (id, k) in e.kept_handoffs() {
            assert!(k.freed_at > oldest, "shard {p}: {id} kept since {:?} (watermark {:?})", k.freed_at, e.watermark());
        }
        kept += e.kept_handoffs().len();
        freed += e.xpart_stats().unwrap().redirects_freed;
    }
    eprintln!("{kept} transfer generations kept at the end; {freed} redirect records freed over the year");
    assert!(freed > 100, "{freed} redirect records freed");
    assert!((kept as u64) * 4 < freed, "{kept} kept of {freed} freed");
}

/// A redirect revived by an event of an anonymous id is an anonymous prospect, as a new one is
/// (its retention span is the anonymous one). Two anonymous visitors on partitions 0 and 1 give
/// the same email: the later one folds into the earlier (no known id: the earliest anonymous id
/// is canonical). A late sighting of the second, earlier than the first's, makes it canonical
/// again: its redirect is revived by that event.
#[test]
fn a_revived_redirect_of_an_anonymous_id_is_anonymous() {
    let (a1, a2) = (on(0, "anon-a-"), on(1, "anon-b-"));
    let mut c = Cluster::new(journey());
    c.send(&seg("page", "", None, &a1, "m-1", "2026-03-02T09:00:00Z", Some("ana@x.example")));
    c.send(&seg("page", "", None, &a2, "m-2", "2026-03-02T10:00:00Z", Some("ana@x.example")));
    assert_eq!(c.shards[1].redirect_ids(), vec![a2.clone()], "the second visitor folded into the first");
    // The revival, before the person's state comes back from partition 0 and folds into it.
    let late = seg("page", "", None, &a2, "m-3", "2026-03-02T08:00:00Z", None);
    let ev = microfunnel::codec::decode(late.as_bytes(), &c.j, &Limits::default()).unwrap();
    c.shards[1].apply(&ev, &mut c.out);
    let e = &c.shards[1];
    let ix = e.find(&a2).expect("held on its home");
    assert!(!e.prospect(ix).has(microfunnel::core::prospect::REDIRECT), "revived: the canonical id again");
    assert!(e.prospect(ix).is_anonymous(), "a revived anonymous id is anonymous");
    c.queue.extend(c.shards[1].take_identity_records());
    c.drain();
    assert_eq!(people(&c.shards), 1);
    let e = &c.shards[1];
    assert!(e.prospect(e.find(&a2).unwrap()).is_anonymous(), "and stays so once the person folded in");
}

/// Contacts `x` (partition 0) and `y` (partition 1) of one person (one email, on partition 2).
fn contacts() -> (String, String, String) {
    let x = on(0, "crm-x-");
    let y = on(1, "crm-y-");
    let email = (0..)
        .map(|i| format!("ana{i}@x.example"))
        .find(|e| kafka_partition(format!("\0{e}").as_bytes(), PARTITIONS) == 2)
        .unwrap();
    (x, y, email)
}

/// An alert raised by folding a transferred state into a live prospect (`fold_returning`, under
/// a scratch id) names the merge of `from` (`merge:<from>`), its alert id that of such an alert,
/// not the scratch id's. `x`'s state (two meetings and a review, then a quote with the email) is
/// transferred to `y` and held back; a late sighting of `x` (a meeting before `y`'s first event)
/// makes `x` canonical again; the held transfer, relayed back to `x`'s home, folds into `x`, whose
/// score then passes the `engaged` rule's 60.
#[test]
fn an_alert_raised_by_a_returning_fold_names_the_merge_of_its_id() {
    let (x, y, email) = contacts();
    let j = journey();
    let mut c = Cluster::new(Arc::clone(&j));
    c.send(&payloads::crm("meeting_booked", &y, "e-1", "2026-03-05T10:00:00Z", Some(&email)));
    c.send(&payloads::crm("meeting_booked", &x, "e-2", "2026-03-05T11:00:00Z", None));
    c.send(&payloads::crm("meeting_booked", &x, "e-3", "2026-03-05T11:05:00Z", None));
    c.send(&payloads::crm("reviewing_with_partners", &x, "e-4", "2026-03-05T11:10:00Z", None));
    // x's event with the email: x folds into y; its transfer is held back.
    let linking = payloads::crm("quote_sent", &x, "e-5", "2026-03-05T11:20:00Z", Some(&email));
    let ev = microfunnel::codec::decode(linking.as_bytes(), &j, &Limits::default()).unwrap();
    c.shards[0].apply(&ev, &mut c.out);
    let mut held = None;
    let mut pending: VecDeque<(u32, XRecord)> = c.shards[0].take_identity_records().into();
    while let Some((p, r)) = pending.pop_front() {
        if held.is_none() && matches!(&r, XRecord::Transfer { from, .. } if *from == x) {
            held = Some((p, r));
            continue;
        }
        c.shards[p as usize].apply_identity_record(r, &mut c.out);
        pending.extend(c.shards[p as usize].take_identity_records());
    }
    let held = held.expect("x was transferred");
    c.send(&payloads::crm("meeting_booked", &x, "e-6", "2026-03-05T09:00:00Z", None));
    assert!(!c.out.iter().any(|o| matches!(o, Output::HotLead(_))), "not hot before the fold: {:?}", c.out);
    c.queue.push_back(held);
    c.drain();
    let hot: Vec<_> = c
        .out
        .iter()
        .filter_map(|o| match o {
            Output::HotLead(h) => Some(h),
            _ => None,
        })
        .collect();
    assert_eq!(hot.len(), 1, "{:?}", c.out);
    assert_eq!(hot[0].event_id, format!("merge:{x}"));
    let e = &c.shards[0];
    assert_eq!(e.prospect_id(hot[0].prospect), x);
    let rules: Vec<&str> = j
        .hot_rules
        .iter()
        .enumerate()
        .filter(|(r, _)| hot[0].rules & (1 << r) != 0)
        .map(|(_, r)| r.name.as_str())
        .collect();
    assert_eq!(rules, ["engaged"]);
    let expected = microfunnel::core::ids::alert_id(&x, &rules.join("+"), &format!("merge:{x}"));
    assert_eq!(hot[0].alert_id, expected);
}
