//! `microfunnel run` refuses a bad start (a missing input topic, a journey that does not
//! validate) before it binds its HTTP port or joins the group, and a journey refusal names
//! the journey file.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use microfunnel::config::Settings;
use support::*;

const B2B: &str = include_str!("../deploy/journeys/b2b.toml");

/// Runs `microfunnel run` with `settings` (its HTTP port set to `port`) until it exits, at most
/// a minute (a start that is not refused is killed and fails the test).
fn run_refused(settings: &Settings, port: u16) -> (Output, String) {
    let mut s = settings.clone();
    s.http.listen = format!("127.0.0.1:{port}");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let config = dir.join(format!("{}.toml", unique(&s.kafka.group_id)));
    std::fs::write(&config, toml::to_string(&s).unwrap()).unwrap();
    let mut child = bin()
        .args(["run", "--config"])
        .arg(&config)
        .env("MICROFUNNEL__LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("`run` was not refused within a minute");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    (out, err)
}

/// A port this test holds: a `run` that binds before it refuses fails on it instead.
fn held_port() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

/// A refusal that needs the brokers (an input topic that does not exist) comes before the
/// port is bound: with the port taken, the error is the refusal, not the bind.
#[test]
fn a_refused_start_never_binds_the_http_port() {
    let mut s = setup("refused-topic");
    let missing = format!("{}-missing", s.kafka.group_id);
    s.kafka.input_topics.push(missing.clone());
    let (_held, port) = held_port();
    let (out, err) = run_refused(&s, port);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("input topic `{missing}` does not exist")), "{err}");
    assert!(!err.contains("bind"), "refused before binding: {err}");
}

/// A journey that does not validate (a `[retention]` span of 0 days) is refused
/// before the port is bound, naming the journey file and the key.
#[test]
fn a_journey_refusal_names_the_journey_file() {
    let mut s = setup("refused-journey");
    let path: PathBuf = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{}.toml", unique("people")));
    std::fs::write(&path, format!("{B2B}\n[retention]\nafter_days = 0\n")).unwrap();
    s.journey.path = path.clone();
    let (_held, port) = held_port();
    let (out, err) = run_refused(&s, port);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("after_days"), "{err}");
    assert!(!err.contains("bind"), "refused before binding: {err}");
}

/// A start whose HTTP port is taken is refused (after the checks that need the brokers, which
/// pass) naming the setting, the address and the fix.
#[test]
fn a_taken_http_port_names_http_listen_the_address_and_the_fix() {
    let s = setup("port-taken");
    let (_held, port) = held_port();
    let (out, err) = run_refused(&s, port);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let line = err.lines().find(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line: {err}"));
    assert!(line.starts_with(&format!("error: http.listen: cannot bind 127.0.0.1:{port}: ")), "{line}");
    assert!(
        line.ends_with(
            "another process holds the port: set http.listen (or MICROFUNNEL__HTTP__LISTEN) to a free port \
             (port 0 picks one), or stop what holds it"
        ),
        "{line}"
    );
}
