//! Every CLI command run from a directory outside the checkout: built-in journeys by name, a
//! config's relative paths resolved against the config file's directory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A fresh directory of this test's own, outside the checkout's working directory.
fn elsewhere(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli_anywhere-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_microfunnel"))
        .args(args)
        .current_dir(dir)
        .env_remove("MICROFUNNEL__JOURNEY__PATH")
        .env_remove("MICROFUNNEL__CHECKPOINT__DIR")
        .output()
        .expect("run microfunnel")
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "exit {:?}; stderr: {}", out.status, String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn replay_gen_and_inspect_work_outside_the_checkout_with_built_in_journeys() {
    let dir = elsewhere("replay-gen");
    let playbook = manifest("tests/fixtures/b2b-playbook.jsonl");
    let playbook = playbook.to_str().unwrap();

    // The default journey is built in; naming it or its file gives the same bytes.
    let by_default = ok(&run_in(&dir, &["replay", "--summary-only", playbook]));
    let by_name = ok(&run_in(&dir, &["replay", "--journey", "b2b", "--summary-only", playbook]));
    let b2b_file = manifest("deploy/journeys/b2b.toml");
    let by_file = ok(&run_in(&dir, &["replay", "--journey", b2b_file.to_str().unwrap(), "--summary-only", playbook]));
    assert_eq!(by_default, by_file);
    assert_eq!(by_name, by_file);

    ok(&run_in(&dir, &["gen", "--prospects", "20", "--days", "2", "--quiet", "--out", "traffic.jsonl"]));
    // A journey `gen` cannot simulate is refused with what to do instead.
    let refused = run_in(&dir, &["gen", "--journey", "ecommerce", "--prospects", "5", "--quiet", "--out", "e.jsonl"]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--journey b2b"));
    assert!(dir.join("traffic.jsonl").metadata().unwrap().len() > 0);
    let summary = ok(&run_in(&dir, &["replay", "--summary-only", "traffic.jsonl"]));
    assert!(summary.contains("funnel_summary"), "{summary}");

    let snap = manifest("tests/fixtures/snapshots/v3-b2b-shard3.snap");
    let inspected = ok(&run_in(&dir, &["inspect-snapshot", snap.to_str().unwrap()]));
    assert!(inspected.contains("\"checksums\": \"ok\""), "{inspected}");
}

#[test]
fn an_unknown_journey_says_which_names_are_built_in() {
    let dir = elsewhere("unknown");
    let out = run_in(&dir, &["replay", "--journey", "deploy/journeys/b2b.toml", "x.jsonl"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for w in ["deploy/journeys/b2b.toml", "built-in", "b2b, ecommerce, saas", "--journey"] {
        assert!(err.contains(w), "{w:?} in {err}");
    }
}

#[test]
fn a_configs_relative_paths_resolve_against_its_directory() {
    let dir = elsewhere("config");
    let conf = dir.join("conf");
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::copy(manifest("deploy/journeys/ecommerce.toml"), conf.join("shop.toml")).unwrap();
    std::fs::write(
        conf.join("microfunnel.toml"),
        "[kafka]\nbrokers = \"127.0.0.1:9092\"\n[journey]\npath = \"shop.toml\"\n[checkpoint]\ndir = \"state\"\n",
    )
    .unwrap();
    let cwd = dir.join("somewhere-else");
    std::fs::create_dir_all(&cwd).unwrap();
    let printed = ok(&run_in(&cwd, &["check-config", "--config", "../conf/microfunnel.toml"]));
    assert!(printed.contains("journey `ecommerce` is valid"), "{printed}");
    assert!(printed.contains("conf/shop.toml"), "{printed}");
    assert!(printed.contains("conf/state"), "{printed}");

    // The shipped local config names the built-in journey and works from anywhere.
    let local = manifest("deploy/config/local.toml");
    let printed = ok(&run_in(&cwd, &["check-config", "--config", local.to_str().unwrap()]));
    assert!(printed.contains("journey `b2b` is valid"), "{printed}");
}

#[test]
fn every_subcommand_has_help_outside_the_checkout_with_every_flag_described_and_an_example() {
    let dir = elsewhere("help");
    let top = ok(&run_in(&dir, &["--help"]));
    assert!(top.contains("Exit codes: 0"), "{top}");
    for cmd in ["run", "replay", "gen", "check-config", "check-journey", "tail", "inspect-snapshot", "create-topics"] {
        let help = ok(&run_in(&dir, &[cmd, "--help"]));
        assert!(help.contains("Usage:"), "{cmd}: {help}");
        let examples = help.split_once("Example").map_or("", |(_, e)| e);
        assert!(examples.contains(&format!("microfunnel {cmd} ")), "{cmd} has an example: {help}");
        assert!(help.contains("Exit codes:"), "{cmd} states its exit codes: {help}");
        // Every argument and flag line carries a description after the name.
        let args = help.lines().filter(|l| {
            let t = l.trim_start();
            l.starts_with("  ") && (t.starts_with('-') || t.starts_with('<') || t.starts_with('['))
        });
        for line in args {
            let described = line.trim().split("  ").filter(|p| !p.trim().is_empty()).count() >= 2;
            assert!(described, "{cmd}: no description for {line:?}");
        }
    }
}

#[test]
fn until_and_start_take_a_date() {
    let dir = elsewhere("dates");
    let playbook = manifest("tests/fixtures/b2b-playbook.jsonl");
    let playbook = playbook.to_str().unwrap();
    let by_date = ok(&run_in(&dir, &["replay", "--summary-only", "--until", "2026-04-01", playbook]));
    let by_time = ok(&run_in(&dir, &["replay", "--summary-only", "--until", "2026-04-01T00:00:00Z", playbook]));
    assert_eq!(by_date, by_time);
    assert!(by_date.contains("\"watermark\":\"2026-04-01T00:00:00.000Z\""), "{by_date}");
    let bad = run_in(&dir, &["replay", "--until", "2026-13-01", playbook]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("give a date (2026-03-31)"));
    ok(&run_in(
        &dir,
        &["gen", "--prospects", "3", "--days", "1", "--start", "2026-02-01", "--quiet", "--out", "g.jsonl"],
    ));
    let text = std::fs::read_to_string(dir.join("g.jsonl")).unwrap();
    assert!(text.contains("2026-02-01T"), "traffic starts on the date given");
}

#[test]
fn check_journey_lists_every_mistake_or_summarises_the_journey() {
    let dir = elsewhere("check-journey");
    let b2b = std::fs::read_to_string(manifest("deploy/journeys/b2b.toml")).unwrap();
    let bad = b2b
        .replace("cooldown_hours = 72", "cooldown_hrs = 72")
        .replace("weight = 25.0", "weight = \"high\"")
        .replace("after = \"quote_sent\"     #", "after = \"quote_snt\"     #")
        .replacen("stages = [\"evaluating\", \"deciding\"]", "stages = [\"evaluating\", \"decidng\"]", 1)
        .replace("score_at_least = 60.0", "score_at_least = 250.0");
    std::fs::write(dir.join("bad.toml"), bad).unwrap();
    let out = run_in(&dir, &["check-journey", "bad.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("journey file bad.toml is invalid (5 mistake(s))"), "{err}");
    for want in [
        "hot.cooldown_hrs: unknown key; did you mean `cooldown_hours`?",
        "signals[8] (`demo_requested`).weight: wrong type: string \"high\", expected f64",
        "ghosted.after: unknown signal `quote_snt`; did you mean `quote_sent`?",
        "stalled.stages[1]: unknown stage `decidng`; did you mean `deciding`?",
        "hot_rules[2] (`engaged`).score_at_least: 250 can never be reached",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }

    let summary = ok(&run_in(&dir, &["check-journey", "b2b"]));
    for want in [
        "journey `b2b` is valid",
        "30 evaluating [current opportunity]: add_to_cart, demo_requested, meeting_booked",
        "engaged (priority 0): score reaches 60 (of at most 200)",
        "clarification_after_quote (priority 20): quote_clarification_requested within 14 days after quote_sent",
        "ghosted: no prospect-initiated signal within 5 days after quote_sent",
    ] {
        assert!(summary.contains(want), "{want:?} in {summary}");
    } // `--journey`, as the other commands take it, gives the same.
    assert_eq!(ok(&run_in(&dir, &["check-journey", "--journey", "b2b"])), summary);
}

/// `check-journey` states the `[identity]` settings (resolution off or on with its guards, the
/// placeholder ids) and the anonymous prospects' retention spans.
#[test]
fn check_journey_summarises_identity_and_the_anonymous_span() {
    let dir = elsewhere("check-journey-identity");
    let off = ok(&run_in(&dir, &["check-journey", "b2b"]));
    assert!(off.contains("identity: resolve = false, each id is its own prospect"), "{off}");
    assert!(off.contains("placeholder ids (never an id, never linked): `undefined`, `null`"), "{off}");
    let b2b = std::fs::read_to_string(manifest("deploy/journeys/b2b.toml")).unwrap();
    let text = format!(
        "{b2b}\n[identity]\nresolve = true\nmax_known_ids = 3\nplaceholder_ids = [\"guest\"]\n[retention]\nafter_days = 30\nanonymous_after_days = 7\n[retention.anonymous]\naware = 2\n"
    );
    std::fs::write(dir.join("people.toml"), text).unwrap();
    let on = ok(&run_in(&dir, &["check-journey", "people.toml"]));
    for want in [
        "identity: resolve = true, one prospect per person; at most 3 known ids and 50 anonymous ids per person",
        "  across partitions: a transfer delivered again counts once within 7 days of event time after its id left memory (transfer_dedup_days)\n",
        "placeholder ids (never an id, never linked): `guest`\n",
        "retention: leave memory after no event for: aware 30 days, interested 30 days",
        "anonymous prospects (an anonymousId never identified): aware 2 days, interested 7 days",
    ] {
        assert!(on.contains(want), "{want:?} in {on}");
    }
}
