#!/usr/bin/env bash
# End-to-end throughput against the real broker. Preloads N events from `microfunnel gen` into
# the input topics, then runs ROUNDS alternating rounds of four runs, each reading the same topics
# from the beginning with a fresh consumer group:
#   (a) a plain rdkafka consumer that only parses each payload into a typed struct;
#   (b) `microfunnel run` with alerts, journey events, funnel records, dead letters, metrics and
#       checkpoints on;
#   (c) the plain consumer also sending as many records (190 bytes each) as microfunnel sent in
#       that round (outputs and changelog, its microfunnel_records_sent_total): what sending them
#       costs by itself;
#   (d) microfunnel without checkpoints;
#   (e) with BENCH_OLD_BIN=PATH, that (older) microfunnel binary with checkpoints, as (b): a
#       before/after comparison within the same rounds.
# The plain consumer measures itself from its first message to its last; a service is measured
# by benches/e2e_watch.py from the moment it is ready to its last input message (CPU: utime +
# stime of all its threads). Each run also records its context switches (involuntary ones: other
# processes taking its cores) and the load average.
# Prints the per-round ratios and their medians (the machine is shared: the ratio within a round
# is the figure, not the best of each), and writes them to target/bench-work/e2e-summary.json;
# one JSON line per run goes to target/bench-work/e2e.jsonl.
#   benches/e2e.sh [EVENTS (default 1000000)] [ROUNDS (default 5)]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-1000000}
rounds=${2:-5}
port=${BENCH_BROKER_PORT:-19192}
work=target/bench-work
mkdir -p "$work"
: >"$work/e2e.jsonl"
export BROKER_PORT=$port BROKER_DIR=target/bench-broker
export MICROFUNNEL__KAFKA__BROKERS=127.0.0.1:$port
cargo build --release --locked --quiet --bin microfunnel --example plain_consumer
bin=${CARGO_TARGET_DIR:-target}/release/microfunnel
plain=${CARGO_TARGET_DIR:-target}/release/examples/plain_consumer
scripts/broker stop >/dev/null 2>&1 || true
BROKER_BUILD=0 scripts/broker start >/dev/null
trap 'scripts/broker stop >/dev/null' EXIT

prospects=$(( events * 100 / 865 + 1 ))   # gen makes ~8.65 lines per prospect
echo "preloading about $events events ($prospects prospects)..." >&2
$bin gen --prospects "$prospects" --quiet --brokers "127.0.0.1:$port" 2>"$work/e2e-gen.txt"
total=$(grep -o '^gen: [0-9]*' "$work/e2e-gen.txt" | grep -o '[0-9]*')
echo "preloaded $total messages" >&2

run_service() {
  local group=$1 kind=${2:-microfunnel} exe=${3:-$bin} http=127.0.0.1:$((port + 1))
  MICROFUNNEL__KAFKA__GROUP_ID=$group MICROFUNNEL__HTTP__LISTEN=$http MICROFUNNEL__PIPELINE__IDLE_ADVANCE_MS=0 \
    MICROFUNNEL__CHECKPOINT__DIR="${MICROFUNNEL__CHECKPOINT__DIR-$work/e2e-state}" \
    MICROFUNNEL__LOG__LEVEL=warn "$exe" run --config deploy/config/local.toml 2>>"$work/e2e-service.log" &
  local pid=$!
  python3 benches/e2e_watch.py "$http" "$total" "$pid" "$kind"
  kill -TERM "$pid"; wait "$pid" || true
}

plain_run() {  # KIND GROUP [PER_MILLE]
  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  PLAIN_FORWARD_PER_MILLE=${3:-0} $plain "127.0.0.1:$port" "$2" "$total" web-events crm-events \
    | sed 's/"kind":"plain_consumer"/"kind":"'"$1"'","per_mille":'"${3:-0}"',"load1":'"$load"'/'
}

rm -rf "$work/e2e-state"
for r in $(seq 1 "$rounds"); do
  plain_run plain_consumer "bench-plain-$r-$$" | tee -a "$work/e2e.jsonl"
  run_service "bench-mf-$r-$$" | tee -a "$work/e2e.jsonl"
  per_mille=$(tail -1 "$work/e2e.jsonl" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(1000 * r["records_sent"] / r["messages"]))')
  plain_run plain_consumer_sending "bench-fwd-$r-$$" "$per_mille" | tee -a "$work/e2e.jsonl"
  # The same without checkpoints (no snapshot files, no changelog): what checkpointing costs.
  MICROFUNNEL__CHECKPOINT__DIR="" MICROFUNNEL__CHECKPOINT__CHANGELOG=false \
    run_service "bench-mfnc-$r-$$" microfunnel_no_checkpoints | tee -a "$work/e2e.jsonl"
  if [ -n "${BENCH_OLD_BIN:-}" ]; then
    run_service "bench-old-$r-$$" microfunnel_old "$BENCH_OLD_BIN" | tee -a "$work/e2e.jsonl"
  fi
  rm -rf "$work/e2e-state"
done
python3 benches/e2e_report.py "$work/e2e.jsonl" "$events" | tee "$work/e2e-summary.txt"
