#!/usr/bin/env bash
# Resident memory per prospect of `microfunnel run` with checkpoints on and off, beside the
# engine's own figure (`replay --memory` over the same stream). Two services (fresh groups, the
# b2b journey, 4 shards) are started on empty input topics and their resident memory (VmRSS)
# noted once ready; `gen` then preloads PROSPECTS prospects' traffic, which both consume at the
# same time. Every half second each service's VmRSS and the prospects it holds
# (`microfunnel_prospects_total`) are sampled. Two figures per service:
# - `slope_per_prospect`: the least-squares slope of VmRSS over prospects held, over the samples
#   past 30% of the final count: what one more prospect costs, once the fixed buffers
#   (librdkafka's fetch queues, up to 64 MB per input partition, the merge queues) are full;
# - `rss_per_prospect`: (VmRSS at the end - VmRSS when ready) / prospects, buffers included.
# Checkpoints on, the end is when checkpoints cover every message (the spare holds the capture).
# Appends one JSON line per service to target/bench-work/memory-service.jsonl, and the broker's
# resident memory per preloaded message (`broker_bytes_per_message`).
# The broker keeps every message in memory with the default `memory://` storage (scripts/broker):
# when the preload would not fit next to the two services (about 250 B per message by the last
# measurement, `BENCH_BROKER_BYTES_PER_MESSAGE`, against MemAvailable), the services are not run
# and a `service_not_run` line says why; `BROKER_STORAGE=sqlite://...` keeps it on disk instead.
# The engine's own figure (`replay --memory`) is measured at every size.
#   benches/memory.sh [PROSPECTS (default 1000000)]
set -euo pipefail
cd "$(dirname "$0")/.."
prospects=${1:-1000000}
port=${BENCH_BROKER_PORT:-19292}
work=target/bench-work
mkdir -p "$work"
out=$work/memory-service.jsonl
export BROKER_PORT=$port BROKER_DIR=target/bench-broker-memory
cargo build --release --locked --quiet --bin microfunnel
bin=${CARGO_TARGET_DIR:-target}/release/microfunnel
# Will the preload fit? gen makes about 8.65 messages per prospect; each service needs about
# 1 KB per prospect at its peak (checkpoints on, a base rewrite running).
need=$(python3 -c "
p = $prospects
print(int(p * 8.65 * ${BENCH_BROKER_BYTES_PER_MESSAGE:-250} + 2 * p * 1024))")
avail=$(awk '/^MemAvailable:/ {printf "%.0f\n", $2 * 1024}' /proc/meminfo)
in_memory=$(case "${BROKER_STORAGE:-memory://}" in memory*) echo 1 ;; *) echo 0 ;; esac)
if [ "$in_memory" = 1 ] && [ "$need" -gt "$avail" ]; then
  reason="the broker (memory:// storage) and two services would need about $((need >> 30)) GiB; $((avail >> 30)) GiB available"
  echo "not running the services at $prospects prospects: $reason" >&2
  printf '{"kind": "service_not_run", "requested": %s, "reason": "%s"}\n' "$prospects" "$reason" | tee -a "$out"
  $bin gen --prospects "$prospects" --quiet 2>/dev/null | $bin replay --summary-only --memory - 2>&1 >/dev/null \
    | grep '^{' | tail -1 \
    | python3 -c 'import json,sys; m=json.load(sys.stdin); m["kind"]="engine_replay"; m["requested"]=int(sys.argv[1]); print(json.dumps(m))' "$prospects" \
    | tee -a "$out"
  exit 0
fi

scripts/broker stop >/dev/null 2>&1 || true
BROKER_BUILD=0 scripts/broker start >/dev/null
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  scripts/broker stop >/dev/null
}
trap cleanup EXIT

state=$work/memory-state
rm -rf "$state"
start_service() {
  local name=$1 http=$2 checkpoints=$3
  local dir=$state/$name changelog=true
  if [ "$checkpoints" = off ]; then dir="" changelog=false; fi
  MICROFUNNEL__KAFKA__BROKERS=127.0.0.1:$port MICROFUNNEL__KAFKA__GROUP_ID="bench-mem-$name-$$" \
    MICROFUNNEL__HTTP__LISTEN=$http MICROFUNNEL__PIPELINE__IDLE_ADVANCE_MS=0 MICROFUNNEL__PIPELINE__FUNNEL_INTERVAL_MS=500 \
    MICROFUNNEL__CHECKPOINT__DIR="$dir" MICROFUNNEL__CHECKPOINT__CHANGELOG=$changelog \
    MICROFUNNEL__LOG__LEVEL=warn $bin run --config deploy/config/local.toml 2>>"$work/memory-service.log" &
  pids+=($!)
}
on_http=127.0.0.1:$((port + 1))
off_http=127.0.0.1:$((port + 2))
start_service on "$on_http" on
on_pid=${pids[0]}
start_service off "$off_http" off
off_pid=${pids[1]}

python3 - "$on_http" "$on_pid" "$off_http" "$off_pid" "$work/memory-baseline.json" <<'PY'
import json, sys, time, urllib.request
args = sys.argv[1:5]
def rss(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1]) * 1024
deadline = time.time() + 120
base = {}
for http, pid in ((args[0], args[1]), (args[2], args[3])):
    while True:
        try:
            if urllib.request.urlopen(f"http://{http}/readyz", timeout=2).status == 200:
                break
        except OSError:
            pass
        assert time.time() < deadline, f"{http} not ready"
        time.sleep(0.2)
time.sleep(1)  # both in the group, partitions assigned
for http, pid in ((args[0], args[1]), (args[2], args[3])):
    base[pid] = rss(pid)
json.dump(base, open(sys.argv[5], "w"))
PY

# Samples (prospects held, VmRSS) of both services every half second, while they consume.
python3 - "$on_http" "$on_pid" "$off_http" "$off_pid" "$work/memory-samples.jsonl" <<'PY' &
import json, sys, time, urllib.request
runs = [(sys.argv[1], sys.argv[2], "on"), (sys.argv[3], sys.argv[4], "off")]
f = open(sys.argv[5], "w")
while True:
    for http, pid, mode in runs:
        try:
            text = urllib.request.urlopen(f"http://{http}/metrics", timeout=5).read().decode()
            rss = next(int(l.split()[1]) * 1024 for l in open(f"/proc/{pid}/status") if l.startswith("VmRSS:"))
        except (OSError, StopIteration):
            sys.exit(0)
        held = next((int(float(l.rsplit(" ", 1)[1])) for l in text.splitlines() if l.startswith("microfunnel_prospects_total ")), 0)
        f.write(json.dumps({"mode": mode, "held": held, "rss": rss}) + "\n")
        f.flush()
    time.sleep(0.5)
PY
sampler=$!
echo "preloading $prospects prospects' traffic..." >&2
$bin gen --prospects "$prospects" --quiet --brokers "127.0.0.1:$port" 2>"$work/memory-gen.txt"
total=$(grep -o '^gen: [0-9]*' "$work/memory-gen.txt" | grep -o '[0-9]*')
echo "preloaded $total messages" >&2

broker_rss=$(awk '/^VmRSS:/ {printf "%.0f\n", $2 * 1024}' "/proc/$(cat "$BROKER_DIR/tansu.pid")/status")
echo "{\"kind\": \"broker\", \"requested\": $prospects, \"messages\": $total, \"rss\": $broker_rss, \"broker_bytes_per_message\": $((broker_rss / total))}" | tee -a "$out"
python3 - "$total" "$work/memory-baseline.json" "$work/memory-samples.jsonl" "$out" "$on_http" "$on_pid" on "$off_http" "$off_pid" off "$prospects" <<'PY'
import json, sys, time, urllib.request
total, base, samples_file, out = int(sys.argv[1]), json.load(open(sys.argv[2])), sys.argv[3], sys.argv[4]
runs = [sys.argv[5:8], sys.argv[8:11]]
requested = int(sys.argv[11])
def rss(pid):
    f = {l.split(":")[0]: int(l.split()[1]) * 1024 for l in open(f"/proc/{pid}/status") if l.startswith(("VmRSS:", "VmHWM:"))}
    return f["VmRSS"], f["VmHWM"]
def get(http, path):
    return urllib.request.urlopen(f"http://{http}{path}", timeout=5).read().decode()
def metrics(http):
    n = held = 0
    for line in get(http, "/metrics").splitlines():
        if line.startswith(("microfunnel_events_consumed_total{", "microfunnel_events_rejected_total{")):
            n += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("microfunnel_prospects_total "):
            held = int(float(line.rsplit(" ", 1)[1]))
    return n, held
def checkpointed(http):
    shards = json.loads(get(http, "/shards"))["shards"]
    return sum(sum(s["checkpoint"]["positions"].values()) for s in shards if s.get("checkpoint"))
done = {}
deadline = time.time() + 3600
while len(done) < len(runs):
    assert time.time() < deadline, f"not finished: {done}"
    for http, pid, mode in runs:
        if mode in done:
            continue
        n, held = metrics(http)
        if n >= total and (mode == "off" or checkpointed(http) >= total):
            done[mode] = True
    time.sleep(0.5)
time.sleep(2)
samples = {"on": [], "off": []}
for l in open(samples_file):
    r = json.loads(l)
    samples[r["mode"]].append((r["held"], r["rss"]))
def slope(pts):
    top = max(p for p, _ in pts)
    pts = [(p, r) for p, r in pts if p >= 0.3 * top]
    mx, my = sum(p for p, _ in pts) / len(pts), sum(r for _, r in pts) / len(pts)
    sxx = sum((p - mx) ** 2 for p, _ in pts)
    return sum((p - mx) * (r - my) for p, r in pts) / sxx if sxx else None
for http, pid, mode in runs:
    _, held = metrics(http)
    now, peak = rss(pid)
    b = base[pid]
    k = slope(samples[mode])
    row = {"kind": f"service_checkpoints_{mode}", "requested": requested, "prospects": held, "messages": total, "samples": len(samples[mode]),
           "slope_per_prospect": round(k, 1) if k else None,
           "rss_baseline": b, "rss": now, "rss_peak": peak, "rss_per_prospect": round((now - b) / held, 1),
           "rss_per_prospect_peak": round((peak - b) / held, 1)}
    print(json.dumps(row))
    open(out, "a").write(json.dumps(row) + "\n")
PY
kill "$sampler" 2>/dev/null || true

# The engine's own figure over the same stream (the same seed).
$bin gen --prospects "$prospects" --quiet 2>/dev/null | $bin replay --summary-only --memory - 2>&1 >/dev/null \
  | grep '^{' | tail -1 \
  | python3 -c 'import json,sys; m=json.load(sys.stdin); m["kind"]="engine_replay"; m["requested"]=int(sys.argv[1]); print(json.dumps(m))' "$prospects" \
  | tee -a "$out"
