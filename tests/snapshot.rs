//! Snapshots: the state round-trips exactly, a restored engine continues exactly like one that
//! never stopped, changelog records top up an older state, and the file store detects every kind
//! of damage and falls back to the previous good file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use microfunnel::codec::{self, Limits};
use microfunnel::core::snapshot::Dec;
use microfunnel::core::{Engine, Journey, Output};
use microfunnel::store::{self, FileStore, Pending, SnapshotError, SnapshotStore};
use microfunnel::traffic::{Generator, Options};

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

fn b2b() -> Arc<Journey> {
    Arc::new(Journey::from_toml_str(B2B).unwrap())
}

/// The b2b journey without its `[breakdowns]` (attributed values need state version 4).
fn b2b_text_without_breakdowns() -> String {
    let (head, rest) = B2B.split_once("[breakdowns]").unwrap();
    let tail = &rest[rest.find("# ---- CRM changes").unwrap()..];
    format!("{head}{tail}")
}

/// A realistic generated stream (canonical and Segment, duplicates, out-of-order lines).
fn stream(prospects: u64, seed: u64) -> Vec<Vec<u8>> {
    let opts = Options { prospects, seed, malformed_share: 0.0, ..Options::default() };
    let mut g = Generator::new(opts, &b2b(), false).unwrap();
    let (mut line, mut key, mut out) = (Vec::new(), String::new(), Vec::new());
    while g.next_into(&mut line, &mut key).is_some() {
        out.push(line.clone());
    }
    out
}

fn feed(engine: &mut Engine, lines: &[Vec<u8>]) -> Vec<String> {
    let limits = Limits::default();
    let mut outs = Vec::new();
    let mut rendered = Vec::new();
    for l in lines {
        let ev = codec::decode(l, &engine.journey().clone(), &limits).unwrap();
        engine.apply(&ev, &mut outs);
        for o in outs.drain(..) {
            let mut buf = Vec::new();
            codec::write_output(engine, &o, &mut buf).unwrap();
            rendered.push(String::from_utf8(buf).unwrap());
        }
    }
    rendered
}

fn end(engine: &mut Engine) -> Vec<Output> {
    let mut outs = Vec::new();
    let t = engine.max_event_time();
    engine.advance_to(t, &mut outs);
    outs
}

fn tempdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("microfunnel-snap-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn state_round_trips_exactly() {
    let lines = stream(400, 7);
    let mut a = Engine::new(b2b());
    feed(&mut a, &lines);
    sample_crm(&mut a);
    let mut bytes = Vec::new();
    a.encode_state(&mut bytes);
    let b = Engine::decode_state(b2b(), &bytes).unwrap();
    assert_eq!(b.crm(), a.crm(), "the CRM memories, with their eviction order");
    assert!(a.len() > 300);
    assert_eq!(b.len(), a.len());
    assert_eq!(b.digest(), a.digest());
    assert_eq!(b.stats(), a.stats());
    assert_eq!(b.funnel(), a.funnel());
    assert_eq!(b.watermark(), a.watermark());
    for (ix, id) in a.iter_ids() {
        let jx = b.find(id).unwrap();
        assert_eq!(b.view(jx, None), a.view(ix, None), "prospect {id}");
    }
    let mut again = Vec::new();
    b.encode_state(&mut again);
    assert_eq!(again, bytes, "encoding is deterministic");
}

#[test]
fn a_restored_engine_continues_exactly_like_one_that_never_stopped() {
    let lines = stream(500, 11);
    let cut = lines.len() * 2 / 5;
    let mut straight = Engine::new(b2b());
    feed(&mut straight, &lines[..cut]);
    let mut bytes = Vec::new();
    straight.encode_state(&mut bytes);
    let mut restored = Engine::decode_state(b2b(), &bytes).unwrap();

    let a = feed(&mut straight, &lines[cut..]);
    let b = feed(&mut restored, &lines[cut..]);
    assert!(a.iter().any(|o| o.contains("\"ghosted\"")), "timers armed before the cut fire after it");
    assert_eq!(b, a, "same outputs after the restore, timers included");
    let (ea, eb) = (end(&mut straight), end(&mut restored));
    assert_eq!(ea.len(), eb.len());
    assert_eq!(restored.digest(), straight.digest());
    assert_eq!(restored.funnel(), straight.funnel());
}

#[test]
fn changed_prospect_records_top_up_an_older_state() {
    let lines = stream(400, 5);
    let (first, second) = lines.split_at(lines.len() / 2);
    let mut live = Engine::new(b2b());
    feed(&mut live, first);
    live.take_changed();
    let mut old = Vec::new();
    live.encode_state(&mut old);

    feed(&mut live, second);
    let changed = live.take_changed();
    assert!(!changed.is_empty() && changed.len() < live.len(), "only some prospects changed: {}", changed.len());
    // What a checkpoint writes to the changelog: each changed prospect, then the shard meta.
    let records: Vec<(String, Vec<u8>)> = changed
        .iter()
        .map(|&ix| {
            let mut v = Vec::new();
            live.encode_changelog_record(ix, &mut v);
            (live.prospect_id(ix).to_string(), v)
        })
        .collect();
    let mut meta = Vec::new();
    live.encode_meta(&mut meta);

    let mut topped = Engine::decode_state(b2b(), &old).unwrap();
    for (id, v) in &records {
        let rec = topped.decode_changelog_record(&mut Dec::new(v)).unwrap();
        topped.install(id, rec).unwrap();
    }
    topped.decode_meta(&mut Dec::new(&meta)).unwrap();
    assert_eq!(topped.digest(), live.digest());
    assert_eq!(topped.funnel(), live.funnel());
    assert_eq!(topped.stats(), live.stats());
    assert_eq!(topped.len(), live.len());
    assert!(!live.has_changes(), "take_changed clears the marks");
}

#[test]
fn state_from_another_journey_is_refused_by_name() {
    let mut a = Engine::new(b2b());
    feed(&mut a, &stream(20, 1));
    let mut bytes = Vec::new();
    a.encode_state(&mut bytes);
    let shop = Arc::new(Journey::from_toml_str(include_str!("../deploy/journeys/ecommerce.toml")).unwrap());
    let err = Engine::decode_state(shop, &bytes).err().expect("refused").to_string();
    assert!(err.contains("journey `b2b`") && err.contains("cannot be used"), "{err}");
    for n in [0, 5, bytes.len() / 2, bytes.len() - 1] {
        assert!(Engine::decode_state(b2b(), &bytes[..n]).is_err(), "truncated at {n} is refused");
    }
}

fn pending(shard: i32, seq: u64, next: i64) -> Pending {
    Pending {
        group: "g".into(),
        shard,
        seq,
        written_at: "2026-11-23T10:00:00Z".into(),
        positions: BTreeMap::from([("events".to_string(), next)]),
        changelog: None,
    }
}

fn saved(dir: &Path, keep: usize) -> (FileStore, Vec<Engine>) {
    let store = FileStore::new(dir, "g", keep);
    let lines = stream(200, 3);
    let mut engine = Engine::new(b2b());
    let mut states = Vec::new();
    for (seq, chunk) in lines.chunks(lines.len() / 3 + 1).enumerate() {
        feed(&mut engine, chunk);
        store.save(pending(2, seq as u64 + 1, (seq as i64 + 1) * 100), &engine).unwrap();
        states.push(engine.clone());
    }
    (store, states)
}

#[test]
fn the_store_keeps_the_newest_k_and_loads_the_newest() {
    let dir = tempdir("keep");
    let (store, states) = saved(&dir, 2);
    let files = store.list(2).unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    let (latest, rejected) = store.latest(2);
    let latest = latest.unwrap();
    assert!(rejected.is_empty());
    assert_eq!(latest.header().seq, 3);
    assert_eq!(latest.header().positions["events"], 300);
    assert_eq!(latest.header().digest, format!("{:016x}", states[2].digest()));
    assert_eq!(latest.engine(b2b()).unwrap().digest(), states[2].digest());
    assert!(store.latest(7).0.is_none(), "a shard never saved has nothing");
    assert!(
        std::fs::read_dir(store.shard_dir(2)).unwrap().all(|e| !e.unwrap().path().to_string_lossy().ends_with(".tmp"))
    );
}

#[test]
fn damage_to_the_newest_file_is_detected_and_the_previous_one_is_used() {
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 4] = [
        (
            "truncate",
            |p| {
                let b = std::fs::read(p).unwrap();
                std::fs::write(p, &b[..b.len() - 17]).unwrap();
            },
            "truncated",
        ),
        (
            "flip-body",
            |p| {
                let mut b = std::fs::read(p).unwrap();
                let n = b.len();
                b[n - 40] ^= 0x5a;
                std::fs::write(p, &b).unwrap();
            },
            "body checksum",
        ),
        (
            "flip-header",
            |p| {
                let mut b = std::fs::read(p).unwrap();
                b[30] ^= 0x01;
                std::fs::write(p, &b).unwrap();
            },
            "header checksum",
        ),
        ("not-ours", |p| std::fs::write(p, b"{\"definitely\":\"not a snapshot\"}").unwrap(), "bad magic"),
    ];
    for (name, damage, expect) in cases {
        let dir = tempdir(name);
        let (store, states) = saved(&dir, 3);
        damage(&store.list(2).unwrap()[0]);
        let (latest, rejected) = store.latest(2);
        let latest = latest.unwrap_or_else(|| panic!("{name}: the previous file is used"));
        assert_eq!(latest.header().seq, 2, "{name}");
        assert_eq!(latest.engine(b2b()).unwrap().digest(), states[1].digest(), "{name}");
        assert_eq!(rejected.len(), 1, "{name}");
        let why = rejected[0].to_string();
        assert!(why.contains(expect), "{name}: {why}");
    }
    // Deleted: the previous one simply becomes the newest.
    let dir = tempdir("delete");
    let (store, states) = saved(&dir, 3);
    std::fs::remove_file(&store.list(2).unwrap()[0]).unwrap();
    let latest = store.latest(2).0.unwrap();
    assert_eq!((latest.header().seq, latest.engine(b2b()).unwrap().digest()), (2, states[1].digest()));
}

#[test]
fn a_write_that_cannot_happen_is_an_error_and_leaves_the_old_files() {
    let dir = tempdir("unwritable");
    let (store, _) = saved(&dir, 3);
    // A file where the shard directory of another shard should be: the save must fail loudly.
    std::fs::write(store.shard_dir(5), b"in the way").unwrap();
    let err = store.save(pending(5, 1, 10), &Engine::new(b2b())).unwrap_err();
    assert!(matches!(err, SnapshotError::Io { .. }), "{err}");
    assert_eq!(store.list(2).unwrap().len(), 3);
}

const SAMPLE_V1: &str = "tests/fixtures/snapshots/v1-b2b-shard3.snap";

/// Every snapshot state version this build can read has a checked-in sample that must keep
/// loading: an upgrade never strands the state a previous release wrote.
#[test]
fn the_checked_in_sample_of_every_state_version_loads() {
    for version in microfunnel::core::snapshot::STATE_VERSIONS {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(sample(version));
        let checked = store::read(&path).unwrap_or_else(|e| panic!("sample of version {version}: {e}"));
        let h = &checked.header;
        assert_eq!((h.format_version, h.state_version, h.shard, h.seq), (1, version, 3, 7));
        assert_eq!(h.positions["web-events"], 1234);
        let engine = checked.engine(b2b()).unwrap();
        assert_eq!(format!("{:016x}", engine.digest()), h.digest);
        assert_eq!(engine.len() as u64, h.prospects);
        // The same stream today gives the same state as the one written then (the engine's
        // rules changed with state version 3: older samples only have to load intact).
        if version == microfunnel::core::snapshot::STATE_VERSION {
            let mut now = Engine::new(b2b());
            feed(&mut now, &stream(60, 2024));
            assert_eq!(now.digest(), engine.digest(), "state version {version} still decodes to the same state");
        }
        // Version 4 added the CRM memories; older states read as an incomplete, empty memory.
        if version >= 4 {
            let mut now = Engine::new(b2b());
            sample_crm(&mut now);
            assert_eq!(engine.crm(), now.crm(), "the sample's CRM memories");
            assert_eq!(engine.crm().memories().map(|(_, m)| m.len()).sum::<usize>(), 7);
        } else {
            assert!(!engine.crm().is_complete() && engine.crm().memories().count() == 0);
        }
        // Version 7 added the outbox (section `O`).
        let outbox: Vec<_> = engine.outbox().cloned().collect();
        assert_eq!(outbox, if version >= 7 { sample_outbox() } else { Vec::new() }, "version {version}'s outbox");
    }
}

/// The b2b journey without its breakdowns and hot rules and with no prospect-initiated signal:
/// nothing records a prospect's attributed values, which rules matched it or what it did last
/// (state version 4).
fn b2b_for_layout_1() -> Arc<Journey> {
    let mut text = String::new();
    let mut skipping = false;
    let b2b = b2b_text_without_breakdowns();
    for line in b2b.replace("prospect_initiated = true", "prospect_initiated = false").lines() {
        skipping = line == "[[hot_rules]]" || (skipping && !line.trim().is_empty());
        if !skipping {
            text.push_str(line);
            text.push('\n');
        }
    }
    Arc::new(Journey::from_toml_str(&text).unwrap())
}

/// Both layouts hold the same state, and the current one is the smaller.
#[test]
fn state_versions_1_and_2_hold_the_same_state() {
    // Nor has it room for the attributed values, the hot rules that matched a prospect and its
    // last step (state version 4), kept for good.
    let b2b = b2b_for_layout_1;
    assert!(b2b().hot_rules.is_empty() && b2b().signals.iter().all(|s| !s.prospect_initiated));
    let mut a = Engine::new(b2b());
    // Nor for the anonymous flag (state version 6): the events of known ids only (a Segment
    // call with an `anonymousId` and no `userId` is an anonymous visitor's).
    let known: Vec<Vec<u8>> = stream(400, 17)
        .into_iter()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            v.get("anonymousId").is_none() || v.get("userId").is_some_and(|u| u.as_str().is_some_and(|u| !u.is_empty()))
        })
        .collect();
    feed(&mut a, &known);
    assert!(a.iter_ids().all(|(ix, _)| !a.prospect(ix).is_anonymous()));
    // Layout 1 has no room for older event ids and waiting sequence signals (state version 3):
    // let them expire, as they do once the watermark moves on.
    a.advance_to(microfunnel::core::time::parse_rfc3339("2030-01-01T00:00:00Z").unwrap(), &mut Vec::new());
    let (mut v1, mut v2) = (Vec::new(), Vec::new());
    a.encode_state_v1(&mut v1);
    a.encode_state(&mut v2);
    let (b1, b2) = (Engine::decode_state(b2b(), &v1).unwrap(), Engine::decode_state(b2b(), &v2).unwrap());
    assert_eq!(b1.digest(), a.digest());
    assert_eq!(b2.digest(), a.digest());
    let mut again = Vec::new();
    // A state of version 3 or older has no CRM memories, so they read back as incomplete (to be
    // rebuilt); that aside, the same bytes.
    let mut b1 = b1;
    b1.set_crm_complete(true);
    b1.encode_state(&mut again);
    // The meta of version 1 has no insight counters (state version 4): the prospects' bytes
    // after it must be the same.
    let meta_len = |e: &Engine| {
        let mut m = Vec::new();
        e.encode_meta(&mut m);
        m.len()
    };
    assert!(
        again[meta_len(&b1)..] == v2[meta_len(&a)..],
        "a version-1 state re-encodes to the same version-2 prospect records"
    );
    assert!(v2.len() * 10 < v1.len() * 7, "layout 2 is compact: {} vs {} bytes", v2.len(), v1.len());
}

/// A damaged body whose checksum was forged is still refused by the decoder, never a panic.
#[test]
fn every_truncation_of_a_state_is_an_error() {
    let mut a = Engine::new(b2b());
    feed(&mut a, &stream(30, 3));
    let mut bytes = Vec::new();
    a.encode_state(&mut bytes);
    let n = bytes.len();
    for cut in (0..n).step_by(7).chain(n.saturating_sub(300)..n) {
        assert!(Engine::decode_state(b2b(), &bytes[..cut]).is_err(), "cut at {cut} of {n}");
    }
    let mut dup = bytes.clone();
    dup.extend_from_slice(&[0]);
    assert!(Engine::decode_state(b2b(), &dup).is_err(), "trailing bytes");
}

fn sample(version: u32) -> String {
    format!("tests/fixtures/snapshots/v{version}-b2b-shard3.snap")
}

/// The CRM memory the sample of state version 4 holds beside the prospects: HubSpot deals with
/// their stage and contact, and one contact's email.
fn sample_crm(engine: &mut Engine) {
    use microfunnel::core::crm::{Previous, UnknownPrevious};
    let m = engine.crm_memory("crm-events");
    for (i, (deal, stage)) in
        [("101", "appointmentscheduled"), ("102", "contractsent"), ("103", "closedwon")].iter().enumerate()
    {
        let t = microfunnel::core::Ts(1_780_000_000_000 + i as i64);
        m.transition(("deal", deal, "dealstage"), Some(stage), t, &Previous::Unknown, UnknownPrevious::Fire, false);
        m.link("deal", deal, &format!("contact-{deal}"));
    }
    m.set_email("contact-101", "dana.whitfield@northwind.example");
}

/// The identity records the sample of state version 7 holds in its outbox (section `O`).
fn sample_outbox() -> Vec<(u32, microfunnel::core::xpart::XRecord)> {
    use microfunnel::core::xpart::XRecord;
    let ts = microfunnel::core::Ts(1_780_000_000_000);
    vec![
        (1, XRecord::Forget { ids: vec!["usr_gone".into(), "anon-gone".into()], ts }),
        (2, XRecord::Progress { partition: 3, watermark: ts, seen: ts, idle: false, asking: true }),
    ]
}

/// Writes the sample of the current state version; run once per new version:
/// `cargo test --test snapshot write_sample -- --ignored`.
#[test]
#[ignore]
fn write_sample() {
    let mut engine = Engine::new(b2b());
    feed(&mut engine, &stream(60, 2024));
    sample_crm(&mut engine);
    engine.restore_outbox(sample_outbox(), 1);
    let what = Pending {
        group: "microfunnel".into(),
        shard: 3,
        seq: 7,
        written_at: "2026-11-23T12:00:00Z".into(),
        positions: BTreeMap::from([("web-events".to_string(), 1234), ("crm-events".to_string(), 567)]),
        changelog: Some(store::ChangelogPosition { topic: "microfunnel-changelog".into(), next: 89 }),
    };
    let (_, image) = store::encode(&what, &engine);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(sample(microfunnel::core::snapshot::STATE_VERSION));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, image).unwrap();
}

#[test]
fn inspect_snapshot_reports_the_header_and_fails_on_a_damaged_file() {
    let bin = env!("CARGO_BIN_EXE_microfunnel");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ok = std::process::Command::new(bin).current_dir(root).args(["inspect-snapshot", SAMPLE_V1]).output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!((v["checksums"].as_str(), v["digest_matches"].as_bool()), (Some("ok"), Some(true)));
    assert_eq!(v["header"]["shard"], 3);
    assert_eq!(v["header"]["positions"]["crm-events"], 567);
    assert_eq!(v["prospects_decoded"], v["header"]["prospects"]);
    assert_eq!(v["crm_memory"]["complete"], false, "version 1 holds no CRM memory: {v}");
    let v4 = std::process::Command::new(bin).current_dir(root).args(["inspect-snapshot", &sample(4)]).output().unwrap();
    let v4: serde_json::Value = serde_json::from_slice(&v4.stdout).unwrap();
    assert_eq!(v4["crm_memory"], serde_json::json!({"complete": true, "entries": {"crm-events": 7}}), "{v4}");
    assert_eq!(v4["identity_ids"], serde_json::Value::Null, "the b2b journey resolves no identities");

    let damaged = tempdir("inspect").join("damaged.snap");
    let mut bytes = std::fs::read(root.join(SAMPLE_V1)).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0x20;
    std::fs::write(&damaged, &bytes).unwrap();
    let bad = std::process::Command::new(bin).current_dir(root).arg("inspect-snapshot").arg(&damaged).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["checksums"], "failed");
    assert!(v["error"].as_str().unwrap().contains("body checksum mismatch"), "{v}");
}

/// With `[identity] resolve`, the identity map is part of the full state (section `I`): a
/// restored engine resolves every identifier as the original, and goes on merging alike.
#[test]
fn the_identity_map_round_trips_with_the_state() {
    let journey = Arc::new(
        Journey::from_toml_str(&format!(
            "{}\n[identity]\nresolve = true\n",
            include_str!("../deploy/journeys/b2b.toml")
        ))
        .unwrap(),
    );
    let identify = |user: &str, anon: &str, at: &str, email: &str| {
        format!(
            r#"{{"type":"identify","userId":"{user}","anonymousId":"{anon}","messageId":"{user}-{anon}","timestamp":"{at}","traits":{{"email":"{email}"}}}}"#
        )
        .into_bytes()
    };
    let mut a = Engine::new(Arc::clone(&journey));
    let lines = [
        identify("usr_1", "anon-1", "2026-03-02T10:00:00Z", "ana@x.example"),
        identify("usr_2", "anon-2", "2026-03-02T11:00:00Z", "bo@y.example"),
    ];
    let mut outs = Vec::new();
    for l in &lines {
        a.apply(&microfunnel::codec::decode(l, &journey, &microfunnel::codec::Limits::default()).unwrap(), &mut outs);
    }
    let mut bytes = Vec::new();
    a.encode_state(&mut bytes);
    let mut b = Engine::decode_state(Arc::clone(&journey), &bytes).unwrap();
    assert_eq!(b.identity_map().unwrap().resolution(), a.identity_map().unwrap().resolution());
    assert_eq!(b.identity_map().unwrap().len(), 6);
    // The same later link merges the same way in both.
    let later = identify("usr_2", "anon-3", "2026-03-03T10:00:00Z", "ana@x.example");
    let ev = microfunnel::codec::decode(&later, &journey, &microfunnel::codec::Limits::default()).unwrap();
    let (mut oa, mut ob) = (Vec::new(), Vec::new());
    a.apply(&ev, &mut oa);
    b.apply(&ev, &mut ob);
    assert_eq!(oa, ob);
    assert_eq!(b.digest(), a.digest());
    // Read with identity resolution off, the map is dropped and the prospects stay.
    let off = Engine::decode_state(b2b(), &bytes).unwrap();
    assert!(off.identity_map().is_none());
    assert_eq!(off.len(), Engine::decode_state(Arc::clone(&journey), &bytes).unwrap().len());
}

/// `inspect-snapshot --prospect` answers for any id linked to a prospect (`[identity] resolve`):
/// the canonical prospect's state and every linked id.
#[test]
fn inspect_snapshot_answers_for_a_linked_id_with_the_canonical_prospect() {
    let text = format!("{B2B}\n[identity]\nresolve = true\n");
    let journey = Arc::new(Journey::from_toml_str(&text).unwrap());
    let dir = tempdir("inspect-linked");
    let journey_path = dir.join("people.toml");
    std::fs::write(&journey_path, &text).unwrap();
    let mut e = Engine::new(Arc::clone(&journey));
    let lines = [
        r#"{"type":"track","event":"Whitepaper Downloaded","anonymousId":"anon-1","messageId":"m-1","timestamp":"2026-03-02T09:00:00Z"}"#,
        r#"{"type":"identify","userId":"usr_1","anonymousId":"anon-1","messageId":"m-2","timestamp":"2026-03-02T10:00:00Z"}"#,
    ];
    let mut outs = Vec::new();
    for l in lines {
        e.apply(&codec::decode(l.as_bytes(), &journey, &Limits::default()).unwrap(), &mut outs);
    }
    assert!(outs.iter().any(|o| matches!(o, Output::ProspectMerged { .. })), "{outs:?}");
    let what = Pending {
        group: "microfunnel".into(),
        shard: 0,
        seq: 1,
        written_at: "2026-11-23T12:00:00Z".into(),
        positions: BTreeMap::from([("web-events".to_string(), 2)]),
        changelog: None,
    };
    let (_, image) = store::encode(&what, &e);
    let file = dir.join("000001.snap");
    std::fs::write(&file, image).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_microfunnel"))
        .arg("inspect-snapshot")
        .arg(&file)
        .arg("--journey")
        .arg(&journey_path)
        .args(["--prospect", "anon-1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["prospect"], "usr_1", "{v}");
    assert_eq!(v["linked_ids"], serde_json::json!(["anon-1", "usr_1"]), "{v}");
    assert!(v["signal_counts"].to_string().contains("content_downloaded"), "the anonymous download: {v}");
}
