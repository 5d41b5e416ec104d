#!/usr/bin/env bash
# Engine throughput of two builds, same input, alternating rounds (the machine's speed drifts,
# so only ratios within a round are compared): `replay --summary-only` over one file (read,
# decode, apply, summary) and with `--partitions 4` (sharded as the service).
#   benches/compare_replay.sh OLD_BINARY NEW_BINARY [EVENTS_FILE] [ROUNDS (default 3)]
# Without EVENTS_FILE, `NEW_BINARY gen --prospects 200000 --seed 7` (about 1.7M lines) is used.
# Prints lines/s of each run, the new/old ratio per round and its median. Each build reads the
# journey it shipped with: OLD_JOURNEY and NEW_JOURNEY (default: this checkout's b2b.toml).
set -euo pipefail
old=$1 new=$2
file=${3:-}
rounds=${4:-3}
journey=$(cd "$(dirname "$0")/.." && pwd)/deploy/journeys/b2b.toml
old_journey=${OLD_JOURNEY:-$journey}
new_journey=${NEW_JOURNEY:-$journey}
if [ -z "$file" ]; then
  file=$(mktemp --suffix .jsonl)
  trap 'rm -f "$file"' EXIT
  "$new" gen --prospects 200000 --seed 7 --quiet --out "$file" --journey "$journey" 2>/dev/null
fi
lines=$(wc -l <"$file")
cat "$file" >/dev/null  # into the page cache
rate() {  # binary, journey, extra args -> lines/s
  local start end
  start=$(date +%s.%N)
  if ! "$1" replay --summary-only --journey "$2" "${@:3}" "$file" >/dev/null 2>"$file.err"; then
    echo "$1 replay failed: $(tail -1 "$file.err")" >&2
    exit 1
  fi
  end=$(date +%s.%N)
  python3 -c "print(round($lines / ($end - $start)))"
}
for args in "" "--partitions 4"; do
  ratios=()
  for r in $(seq 1 "$rounds"); do
    # shellcheck disable=SC2086
    a=$(rate "$old" "$old_journey" $args); b=$(rate "$new" "$new_journey" $args)
    ratios+=("$(python3 -c "print(round($b / $a, 3))")")
    echo "replay ${args:-(1 shard)} round $r: old $a lines/s, new $b lines/s, new/old ${ratios[-1]}"
  done
  echo "replay ${args:-(1 shard)}: median new/old $(printf '%s\n' "${ratios[@]}" | sort -n | sed -n "$(( (rounds + 1) / 2 ))p") over $rounds rounds, $lines lines"
done
