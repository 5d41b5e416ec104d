#!/usr/bin/env bash
# Where `microfunnel run`'s CPU goes in benches/e2e.sh's setting: preloads about N events from
# `microfunnel gen` into the input topics of a broker of its own, runs the service once over them
# under `perf record` (whole process, DWARF call graphs), and prints
#   - the run's JSON line from benches/e2e_watch.py (CPU-seconds and wall time),
#   - what the event-time merge did: records held for it, pauses, records delivered again
#     (kafka.resume_rewind after a resume), wait seconds and wait timeouts,
#   - the share of the samples by thread and, on the pipeline thread, by stage
#     (benches/perf_stages.py).
#   benches/e2e_profile.sh [EVENTS (default 1000000)] [FREQUENCY (default 1200)]
# BENCH_BIN=PATH profiles another (release) build over the same preload, e.g. an older commit's.
# BENCH_KEEP_PERF=1 keeps target/bench-work/profile.data for `perf report`.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-1000000}
freq=${2:-1200}
port=${BENCH_BROKER_PORT:-19192}
work=target/bench-work
mkdir -p "$work"
export BROKER_PORT=$port BROKER_DIR=target/bench-broker
cargo build --release --locked --quiet --bin microfunnel
bin=${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release/microfunnel}
scripts/broker stop >/dev/null 2>&1 || true
BROKER_BUILD=0 scripts/broker start >/dev/null
trap 'scripts/broker stop >/dev/null' EXIT

prospects=$(( events * 100 / 865 + 1 ))   # gen makes ~8.65 lines per prospect
"$bin" gen --prospects "$prospects" --quiet --brokers "127.0.0.1:$port" 2>"$work/profile-gen.txt"
total=$(grep -o '^gen: [0-9]*' "$work/profile-gen.txt" | grep -o '[0-9]*')
echo "preloaded $total messages" >&2

http=127.0.0.1:$((port + 1))
rm -rf "$work/profile-state"
MICROFUNNEL__KAFKA__BROKERS=127.0.0.1:$port MICROFUNNEL__KAFKA__GROUP_ID=bench-profile-$$ \
  MICROFUNNEL__HTTP__LISTEN=$http MICROFUNNEL__PIPELINE__IDLE_ADVANCE_MS=0 \
  MICROFUNNEL__CHECKPOINT__DIR="$work/profile-state" MICROFUNNEL__LOG__LEVEL=warn \
  "$bin" run --config deploy/config/local.toml 2>"$work/profile-service.log" &
pid=$!
perf record -F "$freq" --call-graph dwarf,16384 -p "$pid" -o "$work/profile.data" 2>/dev/null &
perf_pid=$!
python3 benches/e2e_watch.py "$http" "$total" "$pid" microfunnel
python3 - "$http" <<'PY'
import sys, urllib.request
text = urllib.request.urlopen(f"http://{sys.argv[1]}/metrics", timeout=5).read().decode()
for line in text.splitlines():
    if line.startswith(("microfunnel_input_held_total", "microfunnel_input_pauses_total",
                        "microfunnel_input_redelivered_total", "microfunnel_input_wait_")):
        print(line)
PY
kill -INT "$perf_pid"; wait "$perf_pid" || true
kill -TERM "$pid"; wait "$pid" || true
rm -rf "$work/profile-state"
perf script -i "$work/profile.data" -F comm,ip,sym 2>/dev/null | python3 benches/perf_stages.py
[ -n "${BENCH_KEEP_PERF:-}" ] || rm -f "$work/profile.data"
