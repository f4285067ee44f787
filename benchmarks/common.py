"""Shared pieces of the benchmarks: replaying MovieLens at scale and timing a job's outputs."""

from __future__ import annotations

import dataclasses
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from rtrec import topics
from rtrec.config import RtrecConfig, load_config
from rtrec.datasets import movielens_events
from rtrec.events import Event
from rtrec.replay import replay

RESULTS = Path(__file__).resolve().parent / "results"
YEAR_MS = 365 * 86_400_000


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}


def movielens_times(repeat: int) -> list[Event]:
    """MovieLens-100K ``repeat`` times over, each copy a year later with its own event ids."""
    base = movielens_events()
    out = []
    for r in range(repeat):
        for e in base:
            out.append(dataclasses.replace(e, event_id=f"{e.event_id}-r{r}", ts=e.ts + r * YEAR_MS))
    return out


def fresh(prefix: str, overrides: list[str] | None = None) -> RtrecConfig:
    cfg = load_config(overrides=overrides)
    cfg.kafka = cfg.kafka.with_prefix(prefix)
    cfg.flink.bounded = True
    cfg.flink.job_name = prefix.strip(".") + f"-{int(time.time())}"
    names = [cfg.kafka.events_topic, *cfg.kafka.output_topics()]
    topics.delete_topics(cfg.kafka, names)
    topics.ensure_topics(cfg.kafka, names)
    return cfg


class OutputClock:
    """Counts committed records arriving on a topic and when they arrived (read_committed)."""

    def __init__(self, cfg: RtrecConfig, topic: str):
        self.topic = topic
        self.times: list[tuple[float, int]] = []
        self.count = 0
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": cfg.kafka.bootstrap_servers,
                "group.id": f"bench-{time.time_ns()}",
                "isolation.level": "read_committed",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "fetch.min.bytes": 1,
            }
        )
        md = self._consumer.list_topics(topic, timeout=10).topics[topic]
        self._consumer.assign([TopicPartition(topic, p, 0) for p in md.partitions])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            msgs = self._consumer.consume(50_000, timeout=0.05)
            n = sum(1 for m in msgs if not m.error())
            if n:
                self.count += n
                self.times.append((time.perf_counter(), self.count))

    def wait_for(self, n: int, timeout_s: float) -> bool:
        deadline = time.perf_counter() + timeout_s
        while self.count < n and time.perf_counter() < deadline:
            time.sleep(0.05)
        return self.count >= n

    def time_at(self, fraction: float, total: int) -> float:
        target = fraction * total
        for t, c in self.times:
            if c >= target:
                return t
        return float("nan")

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self._consumer.close()


def run_job_and_time(cfg: RtrecConfig, events: list[Event], outputs_per_event: int, topic: str,
                     timeout_s: float = 900) -> dict:
    """Replay ``events``, run the job in a subprocess, and time the committed outputs on ``topic``."""
    replay(events, cfg.kafka, total=len(events), progress=False)
    expected = outputs_per_event * len(events)
    clock = OutputClock(cfg, topic)
    config_file = RESULTS.parent / "out" / f"{cfg.flink.job_name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtrec.cli", "run", "--bounded", "--config", str(config_file)],
        cwd=RESULTS.parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ok = clock.wait_for(expected, timeout_s)
    out, _ = proc.communicate(timeout=120)
    end = time.perf_counter()
    clock.close()
    if not ok or proc.returncode != 0:
        raise RuntimeError(f"job did not deliver {expected} records ({clock.count} seen), rc={proc.returncode}:\n{out[-3000:]}")
    first = clock.times[0][0]
    t10, t90, t100 = (clock.time_at(f, expected) for f in (0.1, 0.9, 1.0))
    return {
        "events": len(events),
        "outputs": clock.count,
        "wall_s_with_startup": round(end - start, 2),
        "first_output_after_s": round(first - start, 2),
        "events_per_s_end_to_end": round(len(events) / (t100 - start), 1),
        "events_per_s_after_first_output": round(len(events) / (t100 - first), 1) if t100 > first else None,
        "events_per_s_steady_10_90": round(0.8 * len(events) / (t90 - t10), 1) if t90 > t10 else None,
    }


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
