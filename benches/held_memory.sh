#!/usr/bin/env bash
# Peak resident memory of `microfunnel run` in catch-up, where the event-time merge holds
# messages (librdkafka's own, which keep the buffer they were fetched in): preloads about 1M
# events from `microfunnel gen --compression CODEC`, then runs the service ROUNDS times over
# them (checkpoints on, as benches/e2e.sh starts it), alternating with BENCH_OLD_BIN when given.
# One JSON line per run from benches/e2e_watch.py, whose `peak_rss_mb` is the process's VmHWM at
# its last input message.
#   benches/held_memory.sh [CODEC: lz4 (default), none, gzip, snappy, zstd] [ROUNDS (default 2)]
set -euo pipefail
cd "$(dirname "$0")/.."
codec=${1:-lz4}
rounds=${2:-2}
port=${BENCH_BROKER_PORT:-19192}
work=target/bench-work
mkdir -p "$work"
export BROKER_PORT=$port BROKER_DIR=target/bench-broker
cargo build --release --locked --quiet --bin microfunnel
bin=${CARGO_TARGET_DIR:-target}/release/microfunnel
scripts/broker stop >/dev/null 2>&1 || true
BROKER_BUILD=0 scripts/broker start >/dev/null
trap 'scripts/broker stop >/dev/null' EXIT
"$bin" gen --prospects 115608 --quiet --brokers "127.0.0.1:$port" --compression "$codec" 2>"$work/held-gen.txt"
total=$(grep -o '^gen: [0-9]*' "$work/held-gen.txt" | grep -o '[0-9]*')
echo "preloaded $total messages ($codec)" >&2
http=127.0.0.1:$((port + 1))
for r in $(seq 1 "$rounds"); do
  for kind in microfunnel microfunnel_old; do
    exe=$bin
    if [ "$kind" = microfunnel_old ]; then
      [ -n "${BENCH_OLD_BIN:-}" ] || continue
      exe=$BENCH_OLD_BIN
    fi
    rm -rf "$work/held-state"
    MICROFUNNEL__KAFKA__BROKERS=127.0.0.1:$port MICROFUNNEL__KAFKA__GROUP_ID=bench-held-$kind-$r-$$ \
      MICROFUNNEL__HTTP__LISTEN=$http MICROFUNNEL__PIPELINE__IDLE_ADVANCE_MS=0 \
      MICROFUNNEL__CHECKPOINT__DIR="$work/held-state" MICROFUNNEL__LOG__LEVEL=warn \
      "$exe" run --config deploy/config/local.toml 2>>"$work/held-service.log" &
    pid=$!
    python3 benches/e2e_watch.py "$http" "$total" "$pid" "$kind-$codec"
    kill -TERM "$pid"; wait "$pid" || true
  done
done
rm -rf "$work/held-state"
