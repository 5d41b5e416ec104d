//! Review findings (branch `review`, merge `perf2`): what the merge counters say about
//! themselves.

use microfunnel::core::Journey;
use microfunnel::telemetry::Metrics;

/// Since `perf2` a held message is librdkafka's own (`Held(BorrowedMessage<'static>)`, "no
/// payload copy, key and headers read only for a dead letter"), but the counter's help text
/// and README's metrics table still say the records are "copied and held".
#[test]
#[ignore = "review finding: microfunnel_input_held_total's help and README row say held records are copied; since perf2 they are not"]
fn the_held_counter_does_not_say_held_records_are_copied() {
    let j = Journey::from_toml_str(include_str!("../deploy/journeys/b2b.toml")).unwrap();
    let m = Metrics::new(&j).unwrap();
    m.input_held.inc();
    let text = m.render();
    let help = text.lines().find(|l| l.starts_with("# HELP microfunnel_input_held_total")).unwrap();
    let readme = include_str!("../README.md");
    let row = readme.lines().find(|l| l.starts_with("| `microfunnel_input_held_total`")).unwrap();
    assert!(!help.contains("copied") && !row.contains("copied"), "help: {help}\nREADME: {row}");
}
