"""Replay events into Kafka: key = user id, value = event JSON, record timestamp = event time."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from confluent_kafka import KafkaException, Producer
from tqdm import tqdm

from rtrec.config import KafkaConfig
from rtrec.events import Event


@dataclass
class ReplaySummary:
    events: int
    seconds: float
    topic: str

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        return f"replayed {self.events:,} events into '{self.topic}' in {self.seconds:.2f} s ({self.rate:,.0f} events/s)"


def producer(kafka: KafkaConfig, **extra) -> Producer:
    conf = {
        "bootstrap.servers": kafka.bootstrap_servers,
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "enable.idempotence": True,
        "queue.buffering.max.messages": 500_000,
    }
    conf.update(extra)
    return Producer(conf)


class _Errors:
    def __init__(self):
        self.first: str | None = None
        self.count = 0

    def __call__(self, err, _msg):
        if err is not None:
            self.count += 1
            self.first = self.first or str(err)


def replay(
    events: Iterable[Event | tuple[str, bytes, int]],
    kafka: KafkaConfig,
    topic: str | None = None,
    rate: float = 0.0,
    total: int | None = None,
    progress: bool = True,
) -> ReplaySummary:
    """Produce ``events`` in order; ``rate`` > 0 paces them at that many per second.

    Items may also be ``(key, value_bytes, timestamp_ms)`` tuples, for raw or
    deliberately malformed records.
    """
    topic = topic or kafka.events_topic
    p = producer(kafka)
    errors = _Errors()
    n = 0
    start = time.perf_counter()
    bar = tqdm(total=total, unit="ev", desc=f"replay -> {topic}", disable=not progress, mininterval=0.5)
    try:
        for ev in events:
            if isinstance(ev, Event):
                key, value, ts = ev.user_id.encode(), ev.to_json(), ev.ts
            else:
                key, value, ts = ev
                key = key.encode() if isinstance(key, str) else key
            while True:
                try:
                    p.produce(topic, key=key, value=value, timestamp=max(0, ts), on_delivery=errors)
                    break
                except BufferError:
                    p.poll(0.05)
            n += 1
            if n % 5000 == 0:
                p.poll(0)
                bar.update(5000)
            if rate > 0:
                ahead = n / rate - (time.perf_counter() - start)
                if ahead > 0:
                    time.sleep(ahead)
        remaining = p.flush(60)
        bar.update(n % 5000)
    finally:
        bar.close()
    if remaining or errors.count:
        raise KafkaException(
            f"replay into '{topic}': {errors.count + remaining} of {n} records not delivered "
            f"(first error: {errors.first or 'flush timed out'})"
        )
    return ReplaySummary(n, time.perf_counter() - start, topic)
