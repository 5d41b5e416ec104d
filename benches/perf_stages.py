"""Shares of `perf script -F comm,ip,sym` samples (with call chains) of `microfunnel run`: by
thread, and on the pipeline thread by stage, each sample counted once under the first stage in
the list below one of whose functions is on its call chain (so an output sent from inside the
handling of a message counts as an output, not as the rest of the loop).
  perf script -i perf.data -F comm,ip,sym | python3 benches/perf_stages.py
"""

import collections
import sys

STAGES = [
    ("decode (codec: scanner, validation, touch)", ["codec::inbound::decode_input", "codec::inbound::event_time"]),
    ("held message: key and headers copied", ["Held::keep", "rd_kafka_message_headers", "rd_kafka_headers"]),
    ("held message: payload copied", ["Held::of"]),
    ("engine apply", ["Engine::apply"]),
    ("outputs (JSON, the producer's send)", ["pipeline::emit::", "kafka::send", "rd_kafka_producev"]),
    ("checkpoint capture and barrier", ["barrier::", "checkpoint", "Checkpoint", "capture"]),
    ("consumer poll, message destroy", ["BaseConsumer", "rd_kafka_message_destroy", "rd_kafka_event_destroy",
                                        "NativeEvent", "rd_kafka_q_pop", "rd_kafka_op_destroy"]),
    ("metrics", ["prometheus::", "HotMetrics"]),
]

threads, stages, n = collections.Counter(), collections.Counter(), 0


def count(comm, frames):
    global n
    if comm is None:
        return
    n += 1
    threads[comm] += 1
    if comm.startswith("microfunnel-pip"):
        chain = "\n".join(frames)
        stage = next((name for name, keys in STAGES if any(k in chain for k in keys)), "the rest of the loop")
        stages[stage] += 1


comm, frames = None, []
for line in sys.stdin:
    if not line.strip():
        count(comm, frames)
        comm, frames = None, []
    elif line[0] in " \t":
        frames.append(line.strip())
    else:
        comm, frames = line.split()[0], []
count(comm, frames)
print(f"{n} samples; share of all samples by thread:")
for c, k in threads.most_common():
    print(f"  {c:32s} {100 * k / max(n, 1):5.1f}%")
print("pipeline thread by stage (share of all samples):")
for c, k in stages.most_common():
    print(f"  {c:45s} {100 * k / max(n, 1):5.1f}%")
