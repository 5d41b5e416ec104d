#!/usr/bin/env bash
# End-to-end throughput against the real broker. Preloads N events from `microfunnel gen` into
# the input topics, then, alternating, measures (a) a plain rdkafka consumer that only parses
# each payload into a typed struct and (b) `microfunnel run` with alerts, journey events, funnel
# records, dead letters and metrics on. Both read the same topics from the beginning with a fresh
# consumer group; rates count from the first message read to the last. Prints both rates (wall
# and per CPU-second) and the ratio, and appends a JSON line per run to target/bench-work/e2e.jsonl.
# Two more runs per round put the ratio in context: (c) the plain consumer that also sends as
# many records to Kafka as microfunnel sent in that round (outputs and changelog, read from its
# microfunnel_records_sent_total), nothing else: what sending them costs by itself; (d)
# microfunnel without checkpoints.
#   benches/e2e.sh [EVENTS (default 1000000)] [ROUNDS (default 2)]
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-1000000}
rounds=${2:-2}
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
scripts/broker start >/dev/null
trap 'scripts/broker stop >/dev/null' EXIT

prospects=$(( events * 100 / 865 + 1 ))   # gen makes ~8.65 lines per prospect
echo "preloading about $events events ($prospects prospects)..." >&2
$bin gen --prospects "$prospects" --quiet --brokers "127.0.0.1:$port" 2>"$work/e2e-gen.txt"
total=$(grep -o '^gen: [0-9]*' "$work/e2e-gen.txt" | grep -o '[0-9]*')
echo "preloaded $total messages" >&2

run_service() {
  local group=$1 kind=${2:-microfunnel} http=127.0.0.1:$((port + 1))
  MICROFUNNEL__KAFKA__GROUP_ID=$group MICROFUNNEL__HTTP__LISTEN=$http MICROFUNNEL__PIPELINE__IDLE_ADVANCE_MS=0 \
    MICROFUNNEL__LOG__LEVEL=warn $bin run --config deploy/config/local.toml 2>>"$work/e2e-service.log" &
  local pid=$!
  python3 - "$http" "$total" "$pid" "$kind" <<'PY'
import json, re, sys, time, urllib.request
http, total, pid, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / 100.0
def scrape():
    try:
        text = urllib.request.urlopen(f"http://{http}/metrics", timeout=2).read().decode()
    except OSError:
        return 0, 0
    n = sent = 0
    for line in text.splitlines():
        if line.startswith(("microfunnel_events_consumed_total{", "microfunnel_events_rejected_total{")):
            n += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("microfunnel_records_sent_total{"):
            sent += int(float(line.rsplit(" ", 1)[1]))
    return n, sent
deadline = time.time() + 900
t0 = c0 = None
while time.time() < deadline:
    n, sent = scrape()
    if n > 0 and t0 is None:
        t0, c0 = time.time(), cpu()
    if n >= total:
        break
    time.sleep(0.05)
wall, cpus = time.time() - t0, cpu() - c0
print(json.dumps({"kind": kind, "messages": n, "wall_secs": round(wall, 3), "cpu_secs": round(cpus, 3),
                  "per_sec": round(n / wall), "per_cpu_sec": round(n / max(cpus, 1e-9)), "records_sent": sent}))
PY
  kill -TERM "$pid"; wait "$pid" || true
}

for r in $(seq 1 "$rounds"); do
  $plain "127.0.0.1:$port" "bench-plain-$r-$$" "$total" web-events crm-events | tee -a "$work/e2e.jsonl"
  run_service "bench-mf-$r-$$" | tee -a "$work/e2e.jsonl"
  # (c): as many records per input as microfunnel just sent, 190 bytes each (its journey events
  # are about 200 bytes, changelog records about 170 with their key, alerts about 520).
  per_mille=$(tail -1 "$work/e2e.jsonl" | python3 -c 'import json,sys; r=json.load(sys.stdin); print(round(1000 * r["records_sent"] / r["messages"]))')
  PLAIN_FORWARD_PER_MILLE=$per_mille $plain "127.0.0.1:$port" "bench-fwd-$r-$$" "$total" web-events crm-events \
    | sed 's/"kind":"plain_consumer"/"kind":"plain_consumer_sending","per_mille":'"$per_mille"'/' | tee -a "$work/e2e.jsonl"
  # The same without checkpoints (no snapshot files, no changelog): what checkpointing costs.
  MICROFUNNEL__CHECKPOINT__DIR="" MICROFUNNEL__CHECKPOINT__CHANGELOG=false \
    run_service "bench-mfnc-$r-$$" microfunnel_no_checkpoints | tee -a "$work/e2e.jsonl"
done
python3 - "$work/e2e.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
best = lambda k, f: max(r[f] for r in rows if r["kind"] == k)
for f in ("per_sec", "per_cpu_sec"):
    a, b = best("plain_consumer", f), best("microfunnel", f)
    print(f"{f:>12}: plain consumer {a:>9,} msg/s   microfunnel {b:>9,} msg/s   ratio {b / a:.2f} (best of each)")
    c = best("microfunnel_no_checkpoints", f)
    print(f"{f:>12}: microfunnel without checkpoints {c:>9,} msg/s   with checkpoints / without {b / c:.2f}")
    d = best("plain_consumer_sending", f)
    print(f"{f:>12}: plain consumer sending microfunnel's record count {d:>9,} msg/s   / plain consumer {d / a:.2f}")
# The machine's speed drifts between phases: also the ratio within each round (the runs of a
# round follow each other), and its median over the rounds.
rounds, cur = [], None
for r in rows:
    if r["kind"] == "plain_consumer":
        cur = {}
        rounds.append(cur)
    if cur is not None:
        cur[r["kind"]] = r
for f in ("per_sec", "per_cpu_sec"):
    for kind, base, what in (
        ("microfunnel", "plain_consumer", "microfunnel / plain consumer"),
        ("plain_consumer_sending", "plain_consumer", "plain consumer sending / plain consumer"),
        ("microfunnel", "plain_consumer_sending", "microfunnel / plain consumer sending"),
    ):
        ratios = sorted(r[kind][f] / r[base][f] for r in rounds if kind in r and base in r)
        if ratios:
            print(f"{f:>12}: {what} per round {[round(x, 2) for x in ratios]}, median {ratios[len(ratios) // 2]:.2f}")
PY
