"""What exactly-once costs in output latency, against at-least-once.

    .venv/bin/python benchmarks/delivery_latency.py [--rate 1000] [--seconds 40] [--runs RUN ...]

Each run is ``GUARANTEE[,KEY=VALUE...]``: a flink.delivery_guarantee and
settings over the defaults (default runs: ``exactly-once`` and
``at-least-once``; e.g. ``at-least-once,flink.batch_interval_ms=50`` for a
breakdown). The job runs unbounded (parallelism 1, learning and text on)
while MovieLens ratings are produced at ``--rate`` with the wall clock as
their event time, from the job's start; the ``--warmup`` seconds start when
the first recommendation arrives (the operators take tens of seconds to open,
and the events sent meanwhile are a backlog to work off first), and the
``--seconds`` after them are measured. A read_committed consumer of the recommendations
topic notes when each recommendation becomes visible; latency = that moment
minus the event's time (the moment it was produced). Exactly-once sinks
publish at checkpoint completion, so their latency includes up to one
checkpoint interval plus the checkpoint's duration; at-least-once sinks
flush as they go. While it runs, the UserStage's metrics are sampled every
0.5 s: ``freshness_ms`` (when a batch is done, its newest event's age: the
source, the batch interval and the Python work) and ``model_staleness_ms``
(the age of the newest model version the scorer had not adopted); the rest
of the latency is the sinks and the network between operators. The job's
output goes to benchmarks/out/<job>.log. Writes
benchmarks/results/delivery_latency.json.
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

from benchmarks.common import RESULTS, MetricSampler, fresh, percentile, write_results  # noqa: E402
from rtrec.datasets import movielens_events  # noqa: E402
from rtrec.flink_rest import FlinkRest  # noqa: E402
from rtrec.replay import replay  # noqa: E402


def measure(run: str, rate: float, seconds: float, warmup_s: float) -> dict:
    mode, *settings = run.split(",")
    cfg = fresh(f"bench.latency.{mode}.", [f"flink.delivery_guarantee={mode}", "flink.parallelism=1", *settings])
    cfg.flink.bounded = False
    config_file = RESULTS.parent / "out" / f"{cfg.flink.job_name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    log = config_file.with_suffix(".log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "rtrec.cli", "run", "--config", str(config_file)],
                            cwd=RESULTS.parent.parent, stdout=log, stderr=subprocess.STDOUT)
    latencies: list[float] = []
    seen = threading.Event()  # the first recommendation arrived
    startup_timeout_s = 240
    stop = threading.Event()
    # The measured window (epoch seconds), set once the first recommendation arrived; the sampler's
    # start_after is the one copy of its start that the consumer reads too.
    sampler = MetricSampler(cfg, "UserStage", ["freshness_ms", "model_staleness_ms"], start_after=float("inf"))

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
                seen.set()
                ts = orjson.loads(m.value())["ts"]
                if ts >= sampler.start_after * 1000:
                    latencies.append(now - ts)
        c.close()

    try:
        FlinkRest(f"http://127.0.0.1:{cfg.flink.rest_port}").job_id(cfg.flink.job_name, 180)
        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        base = movielens_events()
        t0 = time.time()

        def stamped():
            """Events at ``rate`` from now on, until ``seconds`` after the warm-up. The warm-up starts
            with the first recommendation: the job's operators take tens of seconds to open, and the
            events sent meanwhile wait as a backlog that the job must work off first."""
            i = 0
            end = float("inf")
            while True:
                now = time.time()
                if end == float("inf") and seen.is_set():
                    sampler.start_after = now + warmup_s
                    end = sampler.start_after + seconds
                if now >= end:
                    return
                if now - t0 > startup_timeout_s and not seen.is_set():
                    raise RuntimeError(f"no recommendation {startup_timeout_s} s after the job started")
                due = t0 + i / rate
                if due > now:
                    time.sleep(due - now)
                e = base[i % len(base)]
                yield dataclasses.replace(e, event_id=f"{e.event_id}-{i // len(base)}", ts=int(time.time() * 1000))
                i += 1

        replay(stamped(), cfg.kafka, progress=False)
        time.sleep(10)  # the last ones: a few checkpoints
        stop.set()
        reader.join(10)
    finally:
        sampled = sampler.close()
        proc.terminate()
        proc.wait(60)
        log.close()

    def ms(v):
        return None if v is None else round(v)

    out = {
        "run": run,
        "mode": mode,
        "settings": settings,
        "measured": len(latencies),
        "produced_in_window": int(rate * seconds),
        "p50_ms": ms(percentile(latencies, 0.5)),
        "p95_ms": ms(percentile(latencies, 0.95)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "max_ms": ms(max(latencies, default=None)),
        "checkpoint_interval_ms": cfg.flink.checkpoint_interval_ms,
        "batch_interval_ms": cfg.flink.batch_interval_ms,
        "log": str(config_file.with_suffix(".log").relative_to(RESULTS.parent.parent)),
    }
    return out | sampled


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1000, help="events per second")
    ap.add_argument("--seconds", type=float, default=40, help="measured seconds per mode")
    ap.add_argument("--warmup", type=float, default=10, help="seconds before measuring")
    ap.add_argument("--runs", nargs="+", default=["exactly-once", "at-least-once"],
                    help="GUARANTEE[,KEY=VALUE...] each")
    args = ap.parse_args()
    results = []
    for run in args.runs:
        r = measure(run, args.rate, args.seconds, args.warmup)
        results.append(r)
        print(f"{run:>14}: p50 {r['p50_ms']} ms, p95 {r['p95_ms']} ms, p99 {r['p99_ms']} ms "
              f"({r['measured']} recommendations); batches done at event age p50 {r['freshness_ms_p50']} ms, "
              f"p99 {r['freshness_ms_p99']} ms; model staleness p99 {r['model_staleness_ms_p99']} ms", flush=True)
    print(write_results("delivery_latency", {"command": " ".join(["python", *sys.argv]), "args": vars(args),
                                             "goal": {"at_least_once_p99_ms": 250,
                                                      "exactly_once_p99_ms": "checkpoint interval + 500"},
                                             "runs": results}))


if __name__ == "__main__":
    main()
