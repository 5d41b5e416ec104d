//! The `microfunnel replay` binary on the fixtures: exit codes, stable output, rejected lines on
//! stderr with their line numbers, journey errors that name the key, and sharding like the
//! service (`--partitions`, `--no-advance`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use microfunnel::codec::{Limits, decode};
use microfunnel::core::Journey;
use microfunnel::core::ids::kafka_partition;
use serde_json::Value;

const PLAYBOOK: &str = "tests/fixtures/b2b-playbook.jsonl";
const MALFORMED: &str = "tests/fixtures/malformed.jsonl";
const B2B: &str = "deploy/journeys/b2b.toml";

fn microfunnel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_microfunnel"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run microfunnel")
}

fn replay(extra: &[&str]) -> Output {
    let mut args = vec!["replay", "--journey", B2B];
    args.extend_from_slice(extra);
    microfunnel(&args)
}

fn stdout_json(out: &Output) -> Vec<Value> {
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

fn of_kind<'a>(lines: &'a [Value], kind: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["kind"] == kind).collect()
}

/// A journey file of this test's own, under Cargo's scratch directory for integration tests.
fn journey_file(name: &str, text: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("replay_cli-{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn b2b_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(B2B)).unwrap()
}

#[test]
fn replaying_the_playbook_is_stable_and_complete() {
    let first = replay(&["--digest", PLAYBOOK]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(stderr(&first), "", "every playbook line is valid");
    let second = replay(&["--digest", PLAYBOOK]);
    assert!(second.status.success());
    assert_eq!(first.stdout, second.stdout, "same input, same bytes out");

    let lines = stdout_json(&first);
    let n = lines.len();
    assert_eq!(lines[n - 2]["kind"], "funnel_summary");
    assert_eq!(lines[n - 1]["kind"], "digest");
    assert_eq!(lines[n - 1]["prospects"], 9);
    assert_eq!(lines[n - 1]["digest"].as_str().unwrap().len(), 16);

    let summary = &lines[n - 2];
    let stats = &summary["stats"];
    assert_eq!(stats["events"], 40);
    assert_eq!(stats["duplicates"], 1);
    assert_eq!(stats["unmapped"], 3);
    assert_eq!(stats["late"], 1);
    assert_eq!(stats["rejected"], 0);
    assert_eq!(summary["watermark"], "2026-03-20T12:00:00.520Z");
    assert_eq!(summary["census"]["not_a_prospect"], 1);

    // The sales story the fixture tells.
    let hot = of_kind(&lines, "hot_lead");
    let dana: Vec<_> = hot.iter().filter(|h| h["prospect"] == "usr_8812").collect();
    assert_eq!(dana.len(), 1);
    assert!(dana[0]["rules"].as_array().unwrap().iter().any(|r| r == "clarification_after_quote"));
    assert_eq!(dana[0]["email"], "dana.whitfield@northwind.example");
    assert_eq!(dana[0]["event_id"], "sfdc-case-5003X00002Lm9");
    assert!(hot.iter().all(|h| h["prospect"] != "usr_7001"), "disqualified prospects are never hot");
    assert!(hot.iter().all(|h| h["prospect"] != "usr_5230"), "reviewing with partners is not a hot signal");
    let ghosts = of_kind(&lines, "ghosted");
    assert_eq!(ghosts.len(), 1);
    assert_eq!(ghosts[0]["prospect"], "usr_4410");
    let late = of_kind(&lines, "late");
    assert_eq!(late.len(), 1);
    assert_eq!((late[0]["prospect"].as_str(), late[0]["signal"].as_str()), (Some("usr_4410"), Some("meeting_booked")));
    let won: Vec<_> = of_kind(&lines, "stage_changed")
        .into_iter()
        .filter(|c| c["to"] == "won")
        .map(|c| c["prospect"].clone())
        .collect();
    assert_eq!(won, ["usr_9920", "usr_8812"]);
}

#[test]
fn replay_reads_stdin_given_a_dash() {
    let from_file = replay(&[PLAYBOOK]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_microfunnel"))
        .args(["replay", "--journey", B2B, "-"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(PLAYBOOK)).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let from_stdin = child.wait_with_output().unwrap();
    assert!(from_stdin.status.success(), "{}", stderr(&from_stdin));
    assert_eq!(from_stdin.stdout, from_file.stdout);
}

#[test]
fn until_moves_event_time_on_and_fires_timers() {
    let plain = stdout_json(&replay(&[PLAYBOOK]));
    assert!(of_kind(&plain, "stalled").is_empty());
    let out = replay(&["--until", "2026-04-15T00:00:00Z", PLAYBOOK]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_json(&out);
    let mut stalled: Vec<&str> = of_kind(&lines, "stalled").iter().map(|s| s["prospect"].as_str().unwrap()).collect();
    stalled.sort_unstable();
    assert_eq!(stalled, ["9f2e8d7c-6b5a-4c3d-2e1f-0a9b8c7d6e5f", "usr_2290", "usr_5230", "usr_7001"]);
    assert_eq!(lines.last().unwrap()["watermark"], "2026-04-15T00:00:00.000Z");

    let bad = replay(&["--until", "next tuesday", PLAYBOOK]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("--until"), "{}", stderr(&bad));
}

#[test]
fn malformed_lines_are_reported_and_the_run_continues() {
    let out = replay(&[MALFORMED]);
    assert!(out.status.success(), "bad input lines are not a failed run: {}", stderr(&out));
    let err = stderr(&out);
    let reported: Vec<(u32, &str)> = err
        .lines()
        .map(|l| {
            let rest = l.strip_prefix("line ").unwrap_or_else(|| panic!("{l}"));
            let (n, rest) = rest.split_once(": ").unwrap();
            let (reason, detail) = rest.split_once(": ").unwrap();
            assert!(!detail.is_empty(), "{l}");
            (n.parse().unwrap(), reason)
        })
        .collect();
    assert_eq!(
        reported,
        [
            (2, "invalid_json"),
            (3, "invalid_json"),
            (4, "missing_field"),
            (6, "bad_timestamp"),
            (7, "bad_timestamp"),
            (8, "unknown_source"),
            (12, "too_deep"),
            (13, "empty_field"),
            (14, "empty_field"),
            (15, "empty_field"),
            (16, "source_mismatch"),
            (17, "invalid_json"),
            (18, "bad_timestamp"),
            (19, "missing_field"),
            (20, "missing_field"),
            (21, "field_too_long"),
            (25, "unsupported_type"),
        ]
    );
    for needle in [
        "line 4: missing_field: missing field `prospect_id`",
        "line 6: bad_timestamp: bad timestamp in `ts` (\"2026-03-32T10:00:00Z\")",
        "line 8: unknown_source: unknown source \"email\"",
        "line 25: unsupported_type: unsupported Segment call type \"Track\"",
        "line 13: empty_field: field `event_id` is empty",
        "line 16: source_mismatch: signal `deal_won` is accepted from crm only",
        "line 21: field_too_long: field `prospect_id`",
    ] {
        assert!(err.contains(needle), "stderr should contain {needle:?}:\n{err}");
    }

    // Good lines before, between and after the bad ones were all applied.
    let lines = stdout_json(&out);
    let changes: Vec<(String, String)> = of_kind(&lines, "stage_changed")
        .iter()
        .map(|c| (c["prospect"].as_str().unwrap().to_string(), c["to"].as_str().unwrap().to_string()))
        .collect();
    let want =
        [("usr_1201", "aware"), ("usr_1201", "evaluating"), ("usr_1203", "evaluating"), ("usr_1202", "deciding")];
    assert_eq!(changes, want.map(|(p, s)| (p.to_string(), s.to_string())));
    let hot = of_kind(&lines, "hot_lead");
    assert_eq!(hot.len(), 1);
    assert_eq!(hot[0]["prospect"], "usr_1202");
    assert_eq!(hot[0]["email"], "sam.okafor@proseware.example");
    // The alias and group calls (lines 9, 10) are valid and ignored; every rejection is counted.
    let stats = &lines.last().unwrap()["stats"];
    assert_eq!((stats["events"].as_u64(), stats["ignored"].as_u64()), (Some(8), Some(2)));
    assert_eq!(stats["rejected"].as_u64(), Some(reported.len() as u64));
    assert!(lines.iter().all(|l| l["kind"] != "rejected"), "rejections go to stderr only");

    let again = replay(&[MALFORMED]);
    assert_eq!((again.stdout, again.stderr), (out.stdout, out.stderr));
}

#[test]
fn max_bytes_limits_the_payload_size() {
    let out = replay(&["--max-bytes", "2048", MALFORMED]);
    assert!(out.status.success());
    assert!(
        stderr(&out).contains("line 23: too_large: payload is 3027 bytes, over the 2048-byte limit"),
        "{}",
        stderr(&out)
    );
    let lines = stdout_json(&out);
    assert!(lines.iter().all(|l| l["prospect"] != "usr_1203"));
    assert_eq!(of_kind(&lines, "hot_lead").len(), 1, "later lines still run");
}

#[test]
fn a_bad_journey_file_fails_naming_the_key() {
    let b2b = b2b_text();
    for (name, from, to, words) in [
        ("typo-key", "half_life_days = 14", "half_life = 14", &["half_life"][..]),
        ("bad-number", "cooldown_hours = 72", "cooldown_hours = -72", &["cooldown_hours", "-72"]),
        (
            "unknown-signal",
            r#"entered_by = ["deal_won", "order_placed"]"#,
            r#"entered_by = ["deal_won", "order_paid"]"#,
            &["entered_by", "order_paid"],
        ),
    ] {
        assert!(b2b.contains(from));
        let path = journey_file(name, &b2b.replacen(from, to, 1));
        let out = microfunnel(&["replay", "--journey", path.to_str().unwrap(), PLAYBOOK]);
        assert!(!out.status.success(), "{name}");
        assert_eq!(out.status.code(), Some(2), "{name}");
        assert!(out.stdout.is_empty(), "{name}: no output before the journey is valid");
        let err = stderr(&out);
        assert!(err.contains(path.to_str().unwrap()), "{name}: {err}");
        for w in words {
            assert!(err.contains(w), "{name}: stderr should name {w:?}: {err}");
        }
    }
}

#[test]
fn missing_files_fail_with_their_path() {
    let out = replay(&["tests/fixtures/no-such-file.jsonl"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("no-such-file.jsonl"), "{}", stderr(&out));
    let out = microfunnel(&["replay", "--journey", "deploy/journeys/none.toml", PLAYBOOK]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("none.toml"), "{}", stderr(&out));
}

// ---- sharding like the service (`--partitions`, `--no-advance`) ----------------------------

/// `gen` traffic for the sharding tests (malformed lines included), written once per test.
fn generated(name: &str, prospects: u32) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("replay_cli-{name}.jsonl"));
    let n = prospects.to_string();
    let out = microfunnel(&["gen", "--prospects", &n, "--seed", "9", "--quiet", "--out", path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    path
}

fn b2b_journey() -> Journey {
    Journey::from_toml_str(&b2b_text()).unwrap()
}

/// The prospect id of each line, `None` for lines that do not decode.
fn prospects_of(text: &str, journey: &Journey) -> Vec<Option<String>> {
    text.lines()
        .map(|l| decode(l.as_bytes(), journey, &Limits::default()).ok().map(|e| e.prospect.into_owned()))
        .collect()
}

fn digests(lines: &[Value]) -> (Vec<&Value>, &Value) {
    let all = of_kind(lines, "digest");
    let (total, shards) = all.split_last().expect("a digest line");
    assert!(total.get("partition").is_none(), "the total comes last: {total}");
    (shards.to_vec(), total)
}

fn hex(v: &Value) -> u64 {
    u64::from_str_radix(v["digest"].as_str().unwrap(), 16).unwrap()
}

#[test]
fn one_partition_is_the_unsharded_replay_byte_for_byte() {
    for file in [PLAYBOOK, MALFORMED] {
        for extra in [&["--digest"][..], &["--summary-only", "--digest"], &["--until", "2026-04-15T00:00:00Z"]] {
            let plain = replay(&[extra, &[file]].concat());
            let one = replay(&[extra, &["--partitions", "1", file]].concat());
            assert!(one.status.success(), "{}", stderr(&one));
            assert_eq!(one.stdout, plain.stdout, "{file} {extra:?}: stdout");
            assert_eq!(one.stderr, plain.stderr, "{file} {extra:?}: stderr");
        }
    }
    for bad in ["0", "-1", "x", "10001"] {
        let out = replay(&[&format!("--partitions={bad}"), PLAYBOOK]);
        assert_eq!(out.status.code(), Some(2), "--partitions={bad}");
        assert!(stderr(&out).contains("--partitions"), "{}", stderr(&out));
    }
}

#[test]
fn each_shard_holds_the_prospects_kafka_routes_to_it_and_equals_a_replay_of_its_own_lines() {
    const N: u32 = 4;
    let file = generated("shards", 300);
    let text = std::fs::read_to_string(&file).unwrap();
    let journey = b2b_journey();
    let routed = prospects_of(&text, &journey);
    assert!(routed.iter().any(Option::is_none), "gen traffic has malformed lines too");

    let out = replay(&["--partitions", "4", "--digest", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_json(&out);
    let (shards, total) = digests(&lines);
    assert_eq!(shards.len(), N as usize);

    // Every prospect is in exactly the shard its Kafka partition names.
    let mut want = vec![BTreeSet::new(); N as usize];
    for p in routed.iter().flatten() {
        want[kafka_partition(p.as_bytes(), N) as usize].insert(p.as_str());
    }
    let mut sum = (0, 0u64);
    for (p, shard) in shards.iter().enumerate() {
        assert_eq!(shard["partition"], p);
        assert_eq!(shard["prospects"], want[p].len(), "shard {p}");
        assert!(!want[p].is_empty(), "300 prospects reach every one of 4 shards");
        sum = (sum.0 + want[p].len(), sum.1.wrapping_add(hex(shard)));
    }
    assert_eq!(total["prospects"], sum.0);
    assert_eq!(total["prospects"], routed.iter().flatten().collect::<BTreeSet<_>>().len());
    assert_eq!(hex(total), sum.1, "the total digest is the wrapping sum of the shards'");

    // Shard p is exactly a one-engine replay of the lines routed to p: the same state and the
    // same outputs, in input order, then its own final advance.
    let summary = lines.iter().find(|l| l["kind"] == "funnel_summary").unwrap();
    let mut summed = BTreeMap::<String, u64>::new();
    let mut watermarks = Vec::new();
    for p in 0..N {
        let own: String = text
            .lines()
            .zip(&routed)
            .filter(|(_, r)| r.as_ref().is_some_and(|r| kafka_partition(r.as_bytes(), N) == p))
            .map(|(l, _)| format!("{l}\n"))
            .collect();
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("replay_cli-shard-{p}.jsonl"));
        std::fs::write(&path, own).unwrap();
        let alone = replay(&["--digest", path.to_str().unwrap()]);
        assert!(alone.status.success(), "{}", stderr(&alone));
        let alone = stdout_json(&alone);
        let (_, alone_total) = digests(&alone);
        assert_eq!(
            (&alone_total["prospects"], &alone_total["digest"]),
            (&shards[p as usize]["prospects"], &shards[p as usize]["digest"])
        );
        let outputs = |ls: &[Value]| -> Vec<Value> {
            ls.iter()
                .filter(|l| {
                    l.get("prospect").and_then(Value::as_str).is_some_and(|id| kafka_partition(id.as_bytes(), N) == p)
                })
                .cloned()
                .collect()
        };
        let mine = outputs(&lines);
        assert!(!mine.is_empty());
        assert_eq!(mine, outputs(&alone), "shard {p}: outputs");
        let s = alone.iter().find(|l| l["kind"] == "funnel_summary").unwrap();
        watermarks.push(s["watermark"].as_str().unwrap().to_string());
        for (group, key) in [
            ("stats", "events"),
            ("stats", "late"),
            ("stats", "hot_leads"),
            ("stats", "ghosted"),
            ("census", "prospects"),
            ("census", "hot"),
            ("outcomes", "won"),
        ] {
            *summed.entry(format!("{group}.{key}")).or_default() += s[group][key].as_u64().unwrap();
        }
        for stage in s["stages"].as_array().unwrap() {
            *summed.entry(format!("reached.{}", stage["stage"].as_str().unwrap())).or_default() +=
                stage["reached"].as_u64().unwrap();
        }
    }

    // One summary line over all shards: their counters summed, the latest shard watermark.
    assert_eq!(of_kind(&lines, "funnel_summary").len(), 1);
    assert_eq!(summary["watermark"].as_str(), watermarks.iter().max().map(String::as_str));
    for (k, v) in &summed {
        let got = match k.split_once('.').unwrap() {
            ("reached", stage) => summary["stages"]
                .as_array()
                .unwrap()
                .iter()
                .find(|s| s["stage"] == stage)
                .map(|s| s["reached"].as_u64().unwrap()),
            (group, key) => summary[group][key].as_u64(),
        };
        assert_eq!(got, Some(*v), "{k}");
    }
}

#[test]
fn the_sharded_digest_is_deterministic() {
    let file = generated("deterministic", 200);
    for input in [PLAYBOOK, file.to_str().unwrap()] {
        let first = replay(&["--partitions", "4", "--digest", input]);
        assert!(first.status.success(), "{}", stderr(&first));
        let second = replay(&["--partitions", "4", "--digest", input]);
        assert_eq!(first.stdout, second.stdout, "{input}: same input, same bytes out");
        let lines = stdout_json(&first);
        let (shards, total) = digests(&lines);
        assert_eq!(shards.len(), 4);
        assert_eq!(total["digest"].as_str().unwrap().len(), 16);
        assert_ne!(hex(total), 0);
    }
}

#[test]
fn no_advance_leaves_a_quote_whose_silence_window_is_still_open_alone() {
    // The quote's 5-day window ends 2026-03-11T09:00Z: after the last event's watermark
    // (12:00 minus the 24 h allowed lateness) but before the last event itself. Two other
    // prospects' events confirm the later time (one alone could be a client clock set ahead).
    let quoted = "usr_quoted";
    let fixture = |others: &[String]| {
        let mut text =
            r#"{"event_id":"q-1","prospect_id":"usr_quoted","source":"crm","type":"quote_sent","ts":"2026-03-06T09:00:00Z"}"#
                .to_string();
        for (i, other) in others.iter().enumerate() {
            text += &format!(
                "\n{{\"event_id\":\"w-{i}\",\"prospect_id\":\"{other}\",\"source\":\"web\",\"type\":\"page_viewed\",\"ts\":\"2026-03-11T12:00:00Z\"}}"
            );
        }
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("replay_cli-no-advance-{}.jsonl", others[0]));
        std::fs::write(&path, text + "\n").unwrap();
        path
    };
    let ghosted = |args: &[&str]| -> Vec<String> {
        let out = replay(args);
        assert!(out.status.success(), "{}", stderr(&out));
        let lines = stdout_json(&out);
        of_kind(&lines, "ghosted").iter().map(|g| g["prospect"].as_str().unwrap().to_string()).collect()
    };
    let home = kafka_partition(quoted.as_bytes(), 4);
    let same: Vec<String> =
        (0..).map(|i| format!("usr_other_{i}")).filter(|o| kafka_partition(o.as_bytes(), 4) == home).take(2).collect();
    let away = (home + 1) % 4;
    let apart: Vec<String> =
        (0..).map(|i| format!("usr_other_{i}")).filter(|o| kafka_partition(o.as_bytes(), 4) == away).take(2).collect();

    let file = fixture(&same);
    let file = file.to_str().unwrap();
    assert_eq!(ghosted(&[file]), [quoted], "the default run advances to the last event");
    assert_eq!(ghosted(&["--partitions", "4", file]), [quoted], "the same shard as the last event");
    for n in ["1", "4"] {
        assert!(ghosted(&["--no-advance", "--partitions", n, file]).is_empty(), "--no-advance, {n} partition(s)");
    }
    let out = replay(&["--no-advance", "--digest", file]);
    let lines = stdout_json(&out);
    let summary = lines.iter().find(|l| l["kind"] == "funnel_summary").unwrap();
    assert_eq!(summary["watermark"], "2026-03-10T12:00:00.000Z", "the last event minus the allowed lateness");
    assert_eq!(summary["census"]["ghosted"], 0);

    // Each shard advances to its own last event: apart from the later event, the quote's shard
    // never gets past 2026-03-06 (as in the service, whose shards have their own watermarks).
    let file = fixture(&apart);
    let file = file.to_str().unwrap();
    assert_eq!(ghosted(&[file]), [quoted]);
    assert!(ghosted(&["--partitions", "4", file]).is_empty());
    assert_eq!(ghosted(&["--partitions", "4", "--until", "2026-03-12T00:00:00Z", file]), [quoted]);

    let both = replay(&["--no-advance", "--until", "2026-03-12T00:00:00Z", file]);
    assert_eq!(both.status.code(), Some(2), "--no-advance and --until conflict");
}

// ---- several input files: the event-time merge -----------------------------------------------

fn canonical(id: &str, prospect: &str, source: &str, kind: &str, ts: &str) -> String {
    serde_json::json!({"event_id": id, "prospect_id": prospect, "source": source, "type": kind, "ts": ts}).to_string()
}

/// A CRM topic's weeks of history and the website's, as two files, and the same events in one
/// file read one topic after the other (web first) and in one file sorted by event time:
/// usr_m1 gets a quote and asks about it 20 minutes later, usr_m2's quote is never answered,
/// both browse the website two weeks later.
fn backfill(name: &str) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let crm = [
        canonical("q1", "usr_m1", "crm", "quote_sent", "2026-03-03T10:00:00Z"),
        canonical("c1", "usr_m1", "crm", "quote_clarification_requested", "2026-03-03T10:20:00Z"),
        canonical("q2", "usr_m2", "crm", "quote_sent", "2026-03-04T09:00:00Z"),
    ];
    let web: Vec<String> = (0..4)
        .flat_map(|d| {
            let ts = format!("2026-03-{:02}T08:00:00Z", 18 + d);
            [
                canonical(&format!("w1-{d}"), "usr_m1", "web", "page_viewed", &ts),
                canonical(&format!("w2-{d}"), "usr_m2", "web", "page_viewed", &ts),
            ]
        })
        .collect();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let write = |suffix: &str, lines: &[&String]| {
        let path = dir.join(format!("replay_cli-{name}-{suffix}.jsonl"));
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, text).unwrap();
        path
    };
    let sorted: Vec<&String> = crm.iter().chain(&web).collect();
    let concatenated: Vec<&String> = web.iter().chain(&crm).collect();
    (
        write("web", &web.iter().collect::<Vec<_>>()),
        write("crm", &crm.iter().collect::<Vec<_>>()),
        write("concatenated", &concatenated),
        write("sorted", &sorted),
    )
}

#[test]
fn two_input_files_are_merged_by_event_time_not_read_one_after_the_other() {
    let (web, crm, concatenated, sorted) = backfill("merge");
    let path = |p: &PathBuf| p.to_str().unwrap().to_string();
    let args = ["--partitions", "3", "--no-advance", "--digest"];
    let run = |files: &[&PathBuf]| {
        let mut a: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        a.extend(files.iter().map(|f| path(f)));
        let out = replay(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{}", stderr(&out));
        out
    };

    // Read one topic after the other, the website's weeks move the watermark on and every CRM
    // event is late: no hot lead, no ghosting.
    // (One shard: both prospects' page views confirm the shard's clock; a lone prospect's jump
    // would not move it.)
    let read_ahead = {
        let out = replay(&["--partitions", "1", "--no-advance", "--digest", &path(&concatenated)]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout_json(&out)
    };
    assert!(of_kind(&read_ahead, "hot_lead").is_empty());
    assert!(of_kind(&read_ahead, "ghosted").is_empty());
    assert_eq!(of_kind(&read_ahead, "funnel_summary")[0]["stats"]["late"], 3);

    let merged = run(&[&web, &crm]);
    let lines = stdout_json(&merged);
    let leads = of_kind(&lines, "hot_lead");
    assert_eq!(leads.len(), 1, "{leads:?}");
    assert_eq!(leads[0]["prospect"], "usr_m1");
    assert_eq!(leads[0]["rules"], serde_json::json!(["clarification_after_quote"]));
    let ghosted = of_kind(&lines, "ghosted");
    assert_eq!(ghosted.len(), 1, "{ghosted:?}");
    assert_eq!(ghosted[0]["prospect"], "usr_m2");
    assert_eq!(of_kind(&lines, "funnel_summary")[0]["stats"]["late"], 0);

    // The same events in one file in event-time order give the same bytes (no two share a time,
    // so the global order is the file's), and the file order does not matter beyond the topic
    // order: the merge only looks at event times.
    assert_eq!(merged.stdout, run(&[&sorted]).stdout);
    assert_eq!(digests(&lines).1, digests(&stdout_json(&run(&[&crm, &web]))).1);
}

#[test]
fn merged_outputs_follow_each_shards_event_time_and_rejected_lines_name_their_file() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (a, b) = (dir.join("replay_cli-order-a.jsonl"), dir.join("replay_cli-order-b.jsonl"));
    // usr_o1 and usr_o2: each a demo request (stage change) per file, times interleaved.
    let line = |id: &str, p: &str, src: &str, kind: &str, ts: &str| format!("{}\n", canonical(id, p, src, kind, ts));
    std::fs::write(
        &a,
        [
            line("a1", "usr_o1", "web", "page_viewed", "2026-03-02T09:00:00Z"),
            "{not json\n".to_string(),
            line("a2", "usr_o1", "web", "demo_requested", "2026-03-02T11:00:00Z"),
        ]
        .concat(),
    )
    .unwrap();
    std::fs::write(&b, line("b1", "usr_o1", "crm", "meeting_booked", "2026-03-02T10:00:00Z")).unwrap();
    let out = replay(&["--no-advance", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).starts_with(&format!("line 2 of {}: invalid_json: ", a.display())), "{}", stderr(&out));
    let lines = stdout_json(&out);
    let changes: Vec<(String, String)> = of_kind(&lines, "stage_changed")
        .iter()
        .map(|l| (l["signal"].as_str().unwrap().to_string(), l["at"].as_str().unwrap().to_string()))
        .collect();
    // Applied in event-time order across the files: the meeting (file 2, 10:00) between the page
    // view (09:00) and the demo request (11:00) of file 1.
    let signals: Vec<&str> = changes.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(signals, ["page_viewed", "meeting_booked"], "{changes:?}");
    let summary = &of_kind(&lines, "funnel_summary")[0];
    assert_eq!(summary["stats"]["events"], 3);
    assert_eq!(summary["stats"]["late"], 0);
}

#[test]
fn stdin_is_at_most_one_input_file() {
    let out = replay(&["-", "-"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("only one"), "{}", stderr(&out));
}

#[test]
fn gen_writes_per_topic_files_holding_exactly_each_sources_lines_in_order() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let (all, web, crm) = (
        dir.join("replay_cli-gen-all.jsonl"),
        dir.join("replay_cli-gen-web.jsonl"),
        dir.join("replay_cli-gen-crm.jsonl"),
    );
    let common = ["gen", "--prospects", "200", "--seed", "11", "--quiet"];
    let one = microfunnel(&[&common[..], &["--out", all.to_str().unwrap()]].concat());
    assert!(one.status.success(), "{}", stderr(&one));
    let two =
        microfunnel(&[&common[..], &["--out-web", web.to_str().unwrap(), "--out-crm", crm.to_str().unwrap()]].concat());
    assert!(two.status.success(), "{}", stderr(&two));
    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap();
    let (all, web, crm) = (read(&all), read(&web), read(&crm));
    assert!(!web.is_empty() && !crm.is_empty());
    // Every line is in exactly one of the two files, each in the single file's order.
    let journey = b2b_journey();
    let (mut w, mut c) = (web.lines().peekable(), crm.lines().peekable());
    for l in all.lines() {
        let source = decode(l.as_bytes(), &journey, &Limits::default()).ok().map(|e| e.source.as_str());
        if w.peek() == Some(&l) && (source != Some("crm") || c.peek() != Some(&l)) {
            w.next();
        } else {
            assert_eq!(c.next(), Some(l), "line in neither file at its place");
        }
    }
    assert_eq!((w.next(), c.next()), (None, None));
    assert!(crm.lines().all(|l| !l.contains("\"source\":\"web\"")));
}

#[test]
fn replay_report_prints_the_signal_table_with_intervals_and_flags_thin_samples() {
    let dir = std::env::temp_dir().join(format!("microfunnel-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let events = dir.join("events.jsonl");
    let generated = microfunnel(&["gen", "--prospects", "2500", "--seed", "11", "--out", events.to_str().unwrap()]);
    assert!(generated.status.success(), "{}", stderr(&generated));
    let out = microfunnel(&["replay", events.to_str().unwrap(), "--summary-only", "--report"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let table = text.split("Signals shown before an outcome").nth(1).unwrap_or_else(|| panic!("no table: {text}"));
    // The table ends at the first blank line (the pairs, rules and other tables follow).
    let table = table.split("\n\n").next().unwrap();
    let rows: Vec<&str> = table.lines().skip(3).take_while(|l| !l.is_empty()).collect();
    assert!(rows.len() >= 5, "{table}");
    assert!(rows[0].trim_start().starts_with("quote_clarification_requested"), "the planted signal first: {table}");
    assert!(!table.contains("deal_won") && !table.contains("quote_sent"), "{table}");
    assert!(text.contains("Step conversion") && text.contains("base win rate"), "{text}");
    // The forecast and its backtest follow.
    let forecast = text.split("Forecast at").nth(1).unwrap_or_else(|| panic!("no forecast: {text}"));
    assert!(forecast.contains("wins expected within 30 days") && forecast.contains("deciding"), "{forecast}");
    assert!(forecast.contains("Backtest") && forecast.contains("Brier score"), "{forecast}");
    // Every row: n, won, lost, a win rate, its interval, a lift, its interval.
    for row in &rows {
        let cols: Vec<&str> = row.split_whitespace().collect();
        assert!(cols.len() >= 8, "{row}");
        assert!(cols[4].ends_with('%') && cols[5].contains('-') && cols[7].contains('-'), "{row}");
    }
    // A minimum no signal reaches flags every row.
    let strict =
        microfunnel(&["replay", events.to_str().unwrap(), "--summary-only", "--report", "--min-sample", "100000"]);
    let strict = String::from_utf8_lossy(&strict.stdout).to_string();
    let table = strict.split("Signals shown before an outcome").nth(1).unwrap();
    assert!(table.lines().skip(3).take_while(|l| !l.is_empty()).all(|l| l.ends_with(" *")), "{table}");
    // The JSON summary of the same run flags them too.
    let summary: Value =
        strict.lines().find(|l| l.contains("funnel_summary")).map(|l| serde_json::from_str(l).unwrap()).unwrap();
    let signals = summary["signals"].as_array().unwrap();
    assert!(!signals.is_empty() && signals.iter().all(|s| s["small_sample"] == true), "{summary}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn suppressed_alerts_are_lines_of_their_own_and_counted_by_rule() {
    let ev = |id: &str, kind: &str, ts: &str| {
        format!(r#"{{"event_id":"{id}","prospect_id":"usr_1","source":"web","type":"{kind}","ts":"{ts}"}}"#)
    };
    let lines = [
        ev("e1", "quote_requested", "2026-03-02T09:00:00Z"),
        ev("e2", "quote_requested", "2026-03-03T09:00:00Z"),
        ev("e3", "quote_requested", "2026-03-03T10:00:00Z"),
    ];
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay_cli-suppressed.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = replay(&[path.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let lines = stdout_json(&out);
    assert_eq!(of_kind(&lines, "hot_lead").len(), 1);
    let held = of_kind(&lines, "hot_lead_suppressed");
    assert_eq!(held.len(), 2);
    assert_eq!(held[0]["rules"], serde_json::json!(["quote_requested"]));
    assert_eq!(held[0]["held_by"], "quote_requested");
    // The third request also takes the score past 60: both rules are held back and named.
    assert_eq!(held[1]["rules"], serde_json::json!(["quote_requested", "engaged"]));
    let summary = of_kind(&lines, "funnel_summary")[0];
    assert_eq!(summary["stats"]["alerts_suppressed"], 2);
    assert_eq!(summary["stats"]["alerts_suppressed_by_rule"], serde_json::json!({"engaged": 1, "quote_requested": 2}));
}

#[test]
fn the_summary_lists_the_most_frequent_unmapped_names() {
    let out = replay(&["--summary-only", PLAYBOOK]);
    let summary = &stdout_json(&out)[0];
    assert_eq!(
        summary["stats"]["unmapped_top"],
        serde_json::json!([{"name": "Email Opened", "count": 1}, {"name": "Pricing Calculator Used", "count": 1},
            {"name": "Signed Out", "count": 1}])
    );
    // Bounded: the 20 most frequent, the rest counted together.
    let mut lines = Vec::new();
    for k in 0..25 {
        for n in 0..=k {
            lines.push(format!(
                r#"{{"event_id":"e{k}-{n}","prospect_id":"usr_1","source":"web","type":"Custom Thing {k}","ts":"2026-03-02T09:00:00Z"}}"#
            ));
        }
    }
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("replay_cli-unmapped.jsonl");
    std::fs::write(&path, lines.join("\n")).unwrap();
    let out = replay(&["--summary-only", path.to_str().unwrap()]);
    let stats = &stdout_json(&out)[0]["stats"];
    let top = stats["unmapped_top"].as_array().unwrap();
    assert_eq!(top.len(), 20);
    assert_eq!(top[0], serde_json::json!({"name": "Custom Thing 24", "count": 25}));
    assert_eq!(top[19], serde_json::json!({"name": "Custom Thing 5", "count": 6}));
    assert_eq!(stats["unmapped_other"], 1 + 2 + 3 + 4 + 5);
}

#[test]
fn an_until_before_the_data_is_warned_about_and_a_bad_baseline_fails_before_the_run() {
    let out = replay(&["--summary-only", "--until", "2020-01-01", PLAYBOOK]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("warning: --until 2020-01-01T00:00:00.000Z is earlier than"), "{}", stderr(&out));
    let fine = replay(&["--summary-only", "--until", "2030-01-01", PLAYBOOK]);
    assert!(!stderr(&fine).contains("warning"), "{}", stderr(&fine));
    let bad = replay(&["--report", "--baseline", "decidng=0.5", PLAYBOOK]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("no stage \"decidng\""), "{}", stderr(&bad));
    assert!(bad.stdout.is_empty(), "refused before any output");
}
