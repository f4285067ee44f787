"""What exactly-once costs in output latency, against at-least-once.

    .venv/bin/python benchmarks/delivery_latency.py [--rate 300] [--seconds 40]

For each flink.delivery_guarantee the job runs unbounded (parallelism 1,
models on) while MovieLens ratings are produced at ``--rate`` with the wall
clock as their event time. A read_committed consumer of the recommendations
topic notes when each recommendation becomes visible; latency = that moment
minus the event's time (the moment it was produced). Exactly-once sinks
publish at checkpoint completion, so their latency includes up to one
checkpoint interval plus the checkpoint's duration; at-least-once sinks
flush as they go. Writes benchmarks/results/delivery_latency.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
import yaml  # noqa: E402
from confluent_kafka import Consumer  # noqa: E402

from benchmarks.common import RESULTS, fresh, write_results  # noqa: E402
from rtrec.datasets import movielens_events  # noqa: E402
from rtrec.flink_rest import FlinkRest  # noqa: E402
from rtrec.replay import replay  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure(mode: str, rate: float, seconds: float, warmup_s: float) -> dict:
    cfg = fresh(f"bench.latency.{mode}.", [f"flink.delivery_guarantee={mode}", "flink.parallelism=1"])
    cfg.flink.bounded = False
    config_file = RESULTS.parent / "out" / f"{cfg.flink.job_name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = subprocess.Popen([sys.executable, "-m", "rtrec.cli", "run", "--config", str(config_file)],
                            cwd=RESULTS.parent.parent, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    latencies: list[float] = []
    stop = threading.Event()
    start = {"at": 0.0}

    def consume():
        c = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": f"lat-{time.time_ns()}",
                      "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                      "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        c.subscribe([cfg.kafka.recommendations_topic])
        while not stop.is_set():
            for m in c.consume(1000, timeout=0.05):
                if m.error():
                    continue
                now = time.time() * 1000
                ts = orjson.loads(m.value())["ts"]
                if ts >= start["at"]:
                    latencies.append(now - ts)
        c.close()

    try:
        FlinkRest(f"http://127.0.0.1:{cfg.flink.rest_port}").job_id(cfg.flink.job_name, 180)
        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        n = int(rate * (seconds + warmup_s))
        base = movielens_events(limit=n)
        t0 = time.time()
        start["at"] = (t0 + warmup_s) * 1000

        def stamped():
            for i, e in enumerate(base):
                due = t0 + i / rate
                wait = due - time.time()
                if wait > 0:
                    time.sleep(wait)
                yield dataclasses.replace(e, ts=int(time.time() * 1000))

        replay(stamped(), cfg.kafka, total=n, progress=False)
        time.sleep(10)  # the last ones: a few checkpoints
        stop.set()
        reader.join(10)
    finally:
        proc.terminate()
        proc.wait(60)
    return {
        "mode": mode,
        "measured": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5)),
        "p95_ms": round(percentile(latencies, 0.95)),
        "p99_ms": round(percentile(latencies, 0.99)),
        "max_ms": round(max(latencies)),
        "checkpoint_interval_ms": cfg.flink.checkpoint_interval_ms,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=300, help="events per second")
    ap.add_argument("--seconds", type=float, default=40, help="measured seconds per mode")
    ap.add_argument("--warmup", type=float, default=10, help="seconds before measuring")
    args = ap.parse_args()
    results = [measure(m, args.rate, args.seconds, args.warmup) for m in ("exactly-once", "at-least-once")]
    eo, alo = results
    summary = {
        "runs": results,
        "p50_ratio_exactly_once_to_at_least_once": round(eo["p50_ms"] / max(1, alo["p50_ms"]), 1),
    }
    for r in results:
        print(f"{r['mode']:>14}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, p99 {r['p99_ms']} ms "
              f"({r['measured']} recommendations)")
    print(write_results("delivery_latency", {"command": " ".join(sys.argv), "args": vars(args), **summary}))


if __name__ == "__main__":
    main()
