//! Which input partition of a shard to process next: the event-time merge of a shard's
//! co-partitioned inputs, as Kafka Streams chooses among a task's partitions (KIP-353, KIP-695,
//! `max.task.idle.ms`). Pure: the caller gives the facts (the head of each partition's queue of
//! delivered, unprocessed records, whether an empty partition is caught up, since when the shard
//! has been waiting, the clock) and applies the decision. `replay` uses the same rule over files.

use std::time::{Duration, Instant};

use crate::core::Ts;

/// One input partition of a shard, as the merge sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// The oldest delivered, unprocessed record: its event time (`None`: the payload does not
    /// decode, so it has none and goes first) and its arrival sequence number in the shard.
    Head { ts: Option<Ts>, seq: u64 },
    /// Nothing buffered, and nothing more to read: the next offset is at the high watermark.
    CaughtUp,
    /// Nothing buffered, but the partition may have a backlog (high watermark unknown, or beyond
    /// what was delivered).
    Behind,
}

/// What to do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Process the head of this input. `reordered`: a head of another input arrived earlier.
    Take { input: usize, reordered: bool },
    /// Wait for a partition that is behind (start the wait now if the shard was not waiting).
    Wait,
    /// The wait for a partition that is behind ran out: process this head without it.
    TakeAfterTimeout { input: usize, reordered: bool },
    /// Nothing is buffered.
    Idle,
}

/// The rule. Among the heads, the smallest event time wins (an undecodable record first, ties to
/// the lower input index, i.e. the order of `kafka.input_topics`). Every partition with an empty
/// queue must be caught up for it to be taken; if one may have a backlog the shard waits for it,
/// at most `max_wait` from `waiting_since` (`max_wait` zero: never waits). An undecodable head
/// never waits: it changes no state.
pub fn decide(inputs: &[Input], waiting_since: Option<Instant>, now: Instant, max_wait: Duration) -> Decision {
    let mut best: Option<(usize, Option<Ts>, u64)> = None;
    let mut earliest_seq = u64::MAX;
    let mut behind = false;
    for (i, input) in inputs.iter().enumerate() {
        match *input {
            Input::Head { ts, seq } => {
                earliest_seq = earliest_seq.min(seq);
                // `None < Some(_)`: an undecodable head sorts first.
                if best.is_none_or(|(_, b, _)| ts < b) {
                    best = Some((i, ts, seq));
                }
            }
            Input::CaughtUp => {}
            Input::Behind => behind = true,
        }
    }
    let Some((input, ts, seq)) = best else { return Decision::Idle };
    let reordered = seq > earliest_seq;
    if !behind || ts.is_none() || max_wait.is_zero() {
        return Decision::Take { input, reordered };
    }
    match waiting_since {
        Some(since) if now.saturating_duration_since(since) >= max_wait => {
            Decision::TakeAfterTimeout { input, reordered }
        }
        _ => Decision::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(1000);

    fn head(ts: i64, seq: u64) -> Input {
        Input::Head { ts: Some(Ts(ts)), seq }
    }

    fn take(input: usize, reordered: bool) -> Decision {
        Decision::Take { input, reordered }
    }

    #[test]
    fn every_input_has_a_head_the_smallest_event_time_goes_first() {
        let now = Instant::now();
        assert_eq!(decide(&[head(20, 0), head(10, 1)], None, now, WAIT), take(1, true));
        assert_eq!(decide(&[head(10, 0), head(20, 1)], None, now, WAIT), take(0, false));
        assert_eq!(decide(&[head(30, 0), head(20, 1), head(10, 2)], None, now, WAIT), take(2, true));
    }

    #[test]
    fn equal_event_times_go_to_the_lower_input() {
        let now = Instant::now();
        assert_eq!(decide(&[head(10, 5), head(10, 1)], None, now, WAIT), take(0, true));
        assert_eq!(decide(&[head(10, 1), head(10, 5)], None, now, WAIT), take(0, false));
    }

    #[test]
    fn an_empty_input_that_is_caught_up_is_not_waited_for() {
        let now = Instant::now();
        assert_eq!(decide(&[Input::CaughtUp, head(10, 0)], None, now, WAIT), take(1, false));
        assert_eq!(decide(&[head(10, 0), Input::CaughtUp], Some(now), now, WAIT), take(0, false));
    }

    #[test]
    fn an_empty_input_with_a_backlog_is_waited_for_until_the_timeout() {
        let start = Instant::now();
        let inputs = [head(10, 0), Input::Behind];
        assert_eq!(decide(&inputs, None, start, WAIT), Decision::Wait);
        assert_eq!(decide(&inputs, Some(start), start + WAIT / 2, WAIT), Decision::Wait);
        assert_eq!(
            decide(&inputs, Some(start), start + WAIT, WAIT),
            Decision::TakeAfterTimeout { input: 0, reordered: false }
        );
        assert_eq!(
            decide(&[Input::Behind, head(10, 3), head(5, 4)], Some(start), start + 2 * WAIT, WAIT),
            Decision::TakeAfterTimeout { input: 2, reordered: true }
        );
    }

    #[test]
    fn a_zero_wait_never_waits() {
        let now = Instant::now();
        assert_eq!(decide(&[Input::Behind, head(10, 0)], None, now, Duration::ZERO), take(1, false));
    }

    #[test]
    fn an_undecodable_head_goes_first_and_never_waits() {
        let now = Instant::now();
        let bad = Input::Head { ts: None, seq: 7 };
        assert_eq!(decide(&[head(10, 0), bad], None, now, WAIT), take(1, true));
        assert_eq!(decide(&[bad, Input::Behind], None, now, WAIT), take(0, false));
        assert_eq!(decide(&[Input::Behind, bad, head(1, 8)], None, now, WAIT), take(1, false));
    }

    #[test]
    fn nothing_buffered_is_idle() {
        let now = Instant::now();
        assert_eq!(decide(&[Input::CaughtUp, Input::Behind], None, now, WAIT), Decision::Idle);
        assert_eq!(decide(&[], None, now, WAIT), Decision::Idle);
    }
}
