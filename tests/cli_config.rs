//! The CLI's refusal of a bad configuration: exit code 2 and a message that names the key and
//! the fix, before anything connects.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn config_file(name: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("cli_config-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("microfunnel.toml");
    std::fs::write(&f, text).unwrap();
    f
}

fn microfunnel(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_microfunnel"));
    // Only this test's variables: none of the caller's MICROFUNNEL__ ones.
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("MICROFUNNEL__")) {
        cmd.env_remove(k);
    }
    cmd.args(args).envs(env.iter().copied()).output().expect("run microfunnel")
}

#[test]
fn run_refuses_a_misspelt_key_naming_it_and_the_key_meant() {
    // The brokers are not reachable: the refusal comes before anything connects.
    let f = config_file("misspelt", "[kafka]\nbrokers = \"127.0.0.1:1\"\n[pipeline]\ncomit_interval_ms = 1000\n");
    let out = microfunnel(&["run", "--config", f.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(
        stderr.trim_end(),
        format!(
            "error: pipeline.comit_interval_ms: unknown key of [pipeline] (in {}); did you mean `commit_interval_ms`? \
             Rename `comit_interval_ms` to `commit_interval_ms`",
            f.display()
        )
    );

    // The same from the environment, with `check-config`.
    let out = microfunnel(
        &["check-config"],
        &[("MICROFUNNEL__KAFKA__BROKERS", "127.0.0.1:1"), ("MICROFUNNEL__PIPELINE__COMIT_INTERVAL_MS", "1000")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("Rename the variable to MICROFUNNEL__PIPELINE__COMMIT_INTERVAL_MS"), "{stderr}");
}
