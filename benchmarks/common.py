"""Shared pieces of the benchmarks: replaying MovieLens at scale and timing a job's outputs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import random
import socket
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


def sparse_events(users: int, n: int = 60_000, seed: int = 1, gap_ms: int = 10) -> list[Event]:
    """A seeded synthetic stream of ``n`` events over ``users`` users, ``gap_ms`` apart: views,
    impressions, clicks, carts, ratings and purchases of 5,000 items, popularity Pareto-shaped. Most
    users have one event per batch, as on a busy site (core_throughput.py ``--sparse-users``); with
    ``gap_ms`` of a second, impressions' attribution windows close all along it (job_throughput.py
    ``--stream sparse``)."""
    rng = random.Random(seed)
    types = ["view"] * 6 + ["impression"] * 3 + ["click"] * 2 + ["add_to_cart", "rating", "purchase"]
    out = []
    for k in range(n):
        t = rng.choice(types)
        out.append(Event(f"s{k}", f"user{rng.randrange(users)}", f"item{int(rng.paretovariate(1.2)) % 5000}", t,
                         1_700_000_000_000 + k * gap_ms, float(rng.randint(1, 5)) if t == "rating" else None,
                         "Drama"))
    return out


#: How shop_events' impressions are clicked: by the user's taste for the item's category, by the item's own
#: appeal, or at random (no model can beat AUC 0.5 there).
CLICK_MODELS = ("taste", "item", "random")


def shop_events(users: int = 2_000, n: int = 60_000, seed: int = 1, clicks: str = "taste",
                items: int = 600, categories: int = 12) -> tuple[list[Event], dict[str, float]]:
    """A seeded shop stream with a known click model, for binary-feedback quality: about ``n`` events over
    ``users`` users, in pages of 4 impressions (pages spread over ``users`` / 180 hours), each impression
    clicked 2-20 s later with a probability (``clicks``, :data:`CLICK_MODELS`) of 0.1 + 0.8 x the user's
    taste for the item's category (two favourite categories of 12 each), of the item's appeal (0.05-0.6),
    or of 0.3 whatever the user and item; plus a view before each page and an organic click (no
    impression) after every tenth page. Returns the events in time order and each impression's click
    probability by event id (the generator's own score: the best AUC any model can reach)."""
    if clicks not in CLICK_MODELS:
        raise ValueError(f"clicks={clicks!r}: one of {CLICK_MODELS}")
    rng = random.Random(seed)
    cat_of = [rng.randrange(categories) for _ in range(items)]
    appeal = [0.05 + 0.55 * rng.random() for _ in range(items)]
    taste = []
    for _ in range(users):  # two favourite categories, the rest low
        t = [rng.random() * 0.2 for _ in range(categories)]
        for c in rng.sample(range(categories), 2):
            t[c] = 0.6 + 0.4 * rng.random()
        taste.append(t)
    t0 = 1_700_000_000_000
    span = max(1, users // 180) * 3_600_000
    rows: list[tuple[int, int, Event]] = []
    prob: dict[str, float] = {}
    k = 0

    def add(ts: int, user: int, item: int, type_: str) -> None:
        nonlocal k
        e = Event(f"shop{k}", f"u{user}", f"i{item}", type_, ts, None, f"c{cat_of[item]}")
        rows.append((ts, k, e))
        k += 1

    while k < n:
        u = rng.randrange(users)
        ts = t0 + rng.randrange(span) // 20_000 * 20_000
        add(ts, u, rng.randrange(items), "view")
        for item in rng.sample(range(items), 4):
            add(ts + 1, u, item, "impression")
            p = 0.1 + 0.8 * taste[u][cat_of[item]] if clicks == "taste" else appeal[item] if clicks == "item" else 0.3
            prob[rows[-1][2].event_id] = p
            if rng.random() < p:
                add(ts + 2_000 + rng.randrange(18_000), u, item, "click")
        if rng.random() < 0.1:
            add(ts + 19_000, u, rng.randrange(items), "click")
    rows.sort(key=lambda r: (r[0], r[1]))
    return [e for _, _, e in rows], prob


def fresh(prefix: str, overrides: list[str] | None = None) -> RtrecConfig:
    cfg = load_config(overrides=overrides)
    cfg.kafka = cfg.kafka.with_prefix(prefix)
    cfg.flink.bounded = True
    cfg.flink.startup_mode = "earliest"  # (fresh topics: offsets a group committed on an older one never apply)
    cfg.flink.job_name = prefix.strip(".") + f"-{int(time.time())}"
    with socket.socket() as s:  # the job's REST API, where the benchmark can find it
        s.bind(("127.0.0.1", 0))
        cfg.flink.rest_port = s.getsockname()[1]
    names = [cfg.kafka.events_topic, *cfg.kafka.output_topics()]
    topics.delete_topics(cfg.kafka, names)
    topics.ensure_topics(cfg.kafka, names)
    return cfg


class OutputClock:
    """Samples how many records a topic holds (its end offsets) over time, without consuming them.

    End offsets count records when the job writes them (transaction markers
    too, a handful); consuming 100,000s of records to count them would take
    CPU from the job being measured on a 2-core machine.
    """

    def __init__(self, cfg: RtrecConfig, topic: str, interval_s: float = 0.1):
        self.topic = topic
        self.interval_s = interval_s
        self.times: list[tuple[float, int]] = []
        self.count = 0
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": cfg.kafka.bootstrap_servers, "group.id": "bench-clock"})
        md = self._consumer.list_topics(topic, timeout=10).topics[topic]
        self._parts = [TopicPartition(topic, p) for p in md.partitions]
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            n = sum(self._consumer.get_watermark_offsets(tp, timeout=5, cached=False)[1] for tp in self._parts)
            if n != self.count:
                self.count = n
                self.times.append((time.perf_counter(), n))
            time.sleep(self.interval_s)

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


def run_job_and_time(cfg: RtrecConfig, events: list[Event], outputs_per_event: int | None, topic: str,
                     timeout_s: float = 900) -> dict:
    """Replay ``events``, run the job in a subprocess, and time the committed outputs on ``topic``.

    ``outputs_per_event`` None: the number of outputs is not known beforehand (feature snapshots per
    entity and micro-batch); the bounded job's end says when all are out, and its count is the total."""
    replay(events, cfg.kafka, total=len(events), progress=False)
    expected = None if outputs_per_event is None else outputs_per_event * len(events)
    clock = OutputClock(cfg, topic)
    config_file = RESULTS.parent / "out" / f"{cfg.flink.job_name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    import yaml

    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    start = time.perf_counter()
    sampler = MetricSampler(cfg, "UserStage", ["model_staleness_ms"]) if cfg.model.enabled else None
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtrec.cli", "run", "--bounded", "--config", str(config_file)],
        cwd=RESULTS.parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    ok = clock.wait_for(expected, timeout_s) if expected is not None else True
    out, _ = proc.communicate(timeout=timeout_s)
    end = time.perf_counter()
    if expected is None:
        time.sleep(3 * clock.interval_s)  # (the clock's last sample)
    clock.close()
    staleness = sampler.close() if sampler is not None else {}
    committed = topics.count_committed(cfg.kafka, topic)
    if expected is None:
        expected = committed
    if not ok or proc.returncode != 0 or committed != expected:
        raise RuntimeError(
            f"job delivered {committed} committed records of {expected} ({clock.count} written), "
            f"rc={proc.returncode}:\n{out[-3000:]}"
        )
    first = clock.times[0][0]
    t10, t90, t100 = (clock.time_at(f, expected) for f in (0.1, 0.9, 1.0))
    job_s = _job_seconds(out)
    return {
        "events": len(events),
        "outputs_committed": committed,
        "wall_s_with_startup": round(end - start, 2),
        "first_output_after_s": round(first - start, 2),
        # All outputs written, from the first one: the job's pace once running.
        "events_per_s_first_to_last_output": round(len(events) / (t100 - first), 1) if t100 > first else None,
        # The middle 80% of the outputs: steady state, warm-up and tail left out.
        "events_per_s_steady_10_90": round(0.8 * len(events) / (t90 - t10), 1) if t90 > t10 else None,
        # Flink's own run time of the bounded job (deployment and JIT warm-up included).
        "events_per_s_job_runtime": round(len(events) / job_s, 1) if job_s else None,
        # Sampled every 0.5 s from the UserStage subtasks: the age of the newest model version a scorer
        # had not adopted when it last checked (0: it held the newest).
        **staleness,
    }


def _job_seconds(output: str) -> float | None:
    import re

    m = re.search(r"in ([0-9.]+) s of job time", output)
    return float(m.group(1)) if m else None


def percentile(values: list[float], q: float) -> float | None:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else None


class MetricSampler:
    """Samples metrics of one operator of a running job (all its subtasks) every ``interval_s`` through
    Flink's REST API, e.g. the UserStage's ``freshness_ms`` and ``model_staleness_ms``, from when the
    job appears until :meth:`close` (or from ``start_after``, epoch seconds)."""

    def __init__(self, cfg: RtrecConfig, operator: str, names: list[str], interval_s: float = 0.5,
                 start_after: float = 0.0, timeout_s: float = 300):
        from rtrec.flink_rest import FlinkRest

        self.values: dict[str, list[float]] = {n: [] for n in names}
        self.start_after = start_after
        self._stop = threading.Event()
        self._rest = FlinkRest(f"http://127.0.0.1:{cfg.flink.rest_port}")
        self._args = (cfg.flink.job_name, operator, interval_s, timeout_s)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        name, operator, interval_s, timeout_s = self._args
        try:
            job = self._rest.job_id(name, timeout_s)
            vertex = self._rest.vertex_id(job, operator)
        except Exception:  # (the job never came up: the benchmark reports that)
            return
        while not self._stop.is_set():
            if time.time() >= self.start_after:
                for metric, values in self.values.items():
                    # (the REST API busy, or the job just ended: the next sample)
                    with contextlib.suppress(Exception):
                        values.extend(self._rest.metrics(job, vertex, f"rtrec.{metric}").values())
            self._stop.wait(interval_s)

    def close(self) -> dict[str, int | None]:
        """Stop; ``{metric}_p50``, ``{metric}_p99`` and ``{metric}_max`` of the samples (None: none)."""
        self._stop.set()
        self._thread.join(5)
        out: dict[str, int | None] = {}
        for metric, values in self.values.items():
            for label, q in (("p50", 0.5), ("p99", 0.99)):
                v = percentile(values, q)
                out[f"{metric}_{label}"] = None if v is None else round(v)
            out[f"{metric}_max"] = round(max(values)) if values else None
        return out


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"benchmark": name, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
