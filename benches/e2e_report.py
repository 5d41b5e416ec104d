"""The report of benches/e2e.sh: per-round ratios and their medians, from its JSON lines.

The machine is shared, so a run's CPU-seconds and wall time move with the other work on it; the
runs of one round follow each other, so the ratio within a round is the figure, and the median
over the rounds its summary. Prints a table and writes target/bench-work/e2e-summary.json.
  e2e_report.py E2E_JSONL EVENTS
"""

import json
import statistics
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
events = int(sys.argv[2])
rounds, cur = [], None
for r in rows:
    if r["kind"] == "plain_consumer":
        cur = {}
        rounds.append(cur)
    if cur is not None:
        cur[r["kind"]] = r

# (name, kind, baseline kind, field, goal)
RATIOS = [
    ("microfunnel / plain consumer sending the same records, per CPU-second", "microfunnel", "plain_consumer_sending", "per_cpu_sec", 0.9),
    ("microfunnel / plain consumer, wall", "microfunnel", "plain_consumer", "per_sec", 0.95),
    ("microfunnel / plain consumer, per CPU-second", "microfunnel", "plain_consumer", "per_cpu_sec", None),
    ("plain consumer sending / plain consumer, per CPU-second", "plain_consumer_sending", "plain_consumer", "per_cpu_sec", None),
    ("checkpoints on / off, per CPU-second", "microfunnel", "microfunnel_no_checkpoints", "per_cpu_sec", None),
    ("checkpoints on / off, wall", "microfunnel", "microfunnel_no_checkpoints", "per_sec", None),
    ("this build / BENCH_OLD_BIN, per CPU-second", "microfunnel", "microfunnel_old", "per_cpu_sec", None),
    ("this build / BENCH_OLD_BIN, wall", "microfunnel", "microfunnel_old", "per_sec", None),
    ("BENCH_OLD_BIN / plain consumer sending, per CPU-second", "microfunnel_old", "plain_consumer_sending", "per_cpu_sec", None),
]
summary = {"events": events, "messages": max((r["messages"] for r in rows), default=0), "rounds": len(rounds), "ratios": [], "runs": {}}
print(f"{len(rounds)} rounds over {summary['messages']:,} messages")
for name, kind, base, field, goal in RATIOS:
    per = [round(r[kind][field] / r[base][field], 3) for r in rounds if kind in r and base in r]
    if not per:
        continue
    med = statistics.median(per)
    summary["ratios"].append({"what": name, "per_round": per, "median": round(med, 3), "goal": goal})
    g = f"   goal {goal}: {'met' if med >= goal else 'not met'}" if goal else ""
    print(f"{name}: per round {per}, median {med:.2f}{g}")
for kind in ("plain_consumer", "microfunnel", "plain_consumer_sending", "microfunnel_no_checkpoints", "microfunnel_old"):
    runs = [r[kind] for r in rounds if kind in r]
    if not runs:
        continue
    summary["runs"][kind] = {
        "cpu_secs": [r["cpu_secs"] for r in runs],
        "wall_secs": [r["wall_secs"] for r in runs],
        "involuntary_switches": [r.get("involuntary_switches") for r in runs],
        "load1": [r.get("load1") for r in runs],
        "median_per_cpu_sec": round(statistics.median(r["per_cpu_sec"] for r in runs)),
        "median_per_sec": round(statistics.median(r["per_sec"] for r in runs)),
    }
    s = summary["runs"][kind]
    print(
        f"  {kind}: CPU-s {s['cpu_secs']}, wall-s {s['wall_secs']}, involuntary switches {s['involuntary_switches']}, "
        f"load {s['load1']}; median {s['median_per_cpu_sec']:,} msg per CPU-s, {s['median_per_sec']:,} msg/s"
    )
if rounds and "microfunnel" in rounds[0]:
    sent = [r["microfunnel"]["records_sent"] / r["microfunnel"]["messages"] for r in rounds if "microfunnel" in r]
    summary["records_sent_per_input"] = round(statistics.median(sent), 3)
    print(f"  microfunnel sent {summary['records_sent_per_input']:.3f} records per input message (median)")
json.dump(summary, open(sys.argv[1].replace("e2e.jsonl", "e2e-summary.json"), "w"), indent=1)
