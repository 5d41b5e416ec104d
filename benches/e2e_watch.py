"""Measures one `microfunnel run` of benches/e2e.sh: CPU-seconds and wall time from its first
polled batch of messages to its last input message, as the plain consumer measures itself from
its first message to its last.

- start: once /readyz answers 200, /metrics is scraped every 10 ms until it counts messages (the
  service publishes its counters once per polled batch); the messages counted then are left out
  of the rate, and the CPU (utime + stime of every thread, in clock ticks, /proc/PID/stat) and
  the time read at that moment start the window;
- end: the service's own `microfunnel_last_event_timestamp_seconds` (the wall time of the batch
  that held the last message of each input topic) once every message is counted; the CPU at the
  end is the first CPU sample taken after that time (the process is sampled every 5 ms; the
  metrics are scraped every 100 ms, so a scrape costs it little);
- its peak resident memory up to its last input message (VmHWM);
- beside them, to judge the run: the process's voluntary and involuntary context switches
  (summed over its threads, /proc/PID/task/*/status: involuntary ones are the other sessions taking its cores) and the load
  average when it started.
Prints one JSON line.
  e2e_watch.py HTTP TOTAL PID KIND
"""

import json
import os
import sys
import time
import urllib.request

http, total, pid, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
tick = os.sysconf("SC_CLK_TCK")


def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick


def switches():
    v = i = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            s = {l.split(":")[0]: int(l.split()[1]) for l in open(f"/proc/{pid}/task/{task}/status") if "ctxt_switches" in l}
        except OSError:
            continue
        v, i = v + s["voluntary_ctxt_switches"], i + s["nonvoluntary_ctxt_switches"]
    return v, i


def get(path):
    return urllib.request.urlopen(f"http://{http}{path}", timeout=2).read().decode()


def scrape():
    n = sent = 0
    last = 0.0
    for line in get("/metrics").splitlines():
        if line.startswith(("microfunnel_events_consumed_total{", "microfunnel_events_rejected_total{")):
            n += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("microfunnel_records_sent_total{"):
            sent += int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("microfunnel_last_event_timestamp_seconds{"):
            last = max(last, float(line.rsplit(" ", 1)[1]))
    return n, sent, last


deadline = time.time() + 900
while True:
    try:
        if urllib.request.urlopen(f"http://{http}/readyz", timeout=2).status == 200:
            break
    except OSError:
        pass
    assert time.time() < deadline, "service not ready"
    assert os.path.exists(f"/proc/{pid}"), "service exited (see target/bench-work/e2e-service.log)"
    time.sleep(0.01)
load = os.getloadavg()[0]
n0 = 0
while n0 == 0:
    assert time.time() < deadline, "no message consumed"
    try:
        n0 = scrape()[0]
    except OSError:
        pass
    if n0 == 0:
        time.sleep(0.01)
t0, c0, (v0, i0) = time.time(), cpu(), switches()
samples = []  # (wall, cpu)
n = sent = 0
last = 0.0
i = 0
while time.time() < deadline:
    samples.append((time.time(), cpu()))
    if i % 20 == 0:
        try:
            n, sent, last = scrape()
        except OSError:
            pass
        if n >= total:
            break
    i += 1
    time.sleep(0.005)
# The last message's batch started at `last`; the batch lasts a few milliseconds.
end = max(last, t0)
c1 = next((c for t, c in samples if t >= end + 0.005), samples[-1][1])
v1, i1 = switches()
# Peak resident memory of the run so far (the service keeps running until it is stopped).
peak = next((int(l.split()[1]) * 1024 for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM:")), 0)
wall, cpus = end - t0, c1 - c0
counted = n - n0
print(
    json.dumps(
        {
            "kind": kind,
            "messages": n,
            "counted": counted,
            "wall_secs": round(wall, 3),
            "cpu_secs": round(cpus, 3),
            "per_sec": round(counted / max(wall, 1e-9)),
            "per_cpu_sec": round(counted / max(cpus, 1e-9)),
            "records_sent": sent,
            "voluntary_switches": v1 - v0,
            "involuntary_switches": i1 - i0,
            "peak_rss_mb": round(peak / 2**20, 1),
            "load1": round(load, 2),
        }
    )
)
