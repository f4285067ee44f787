"""Replay events into Kafka: key = user id, value = event JSON, record timestamp = event time."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from confluent_kafka import Producer
from tqdm import tqdm

from rtrec import kafka_clients
from rtrec.config import KafkaConfig
from rtrec.events import Event
from rtrec.sources import BadRow, SourceError

#: What ``replay.bad_rows`` (``--bad-rows``) does with rows that are not valid events.
BAD_ROW_POLICIES = ("fail", "skip", "send")


class ReplayError(RuntimeError):
    """Records the broker did not take."""


@dataclass
class ReplaySummary:
    events: int
    seconds: float
    topic: str
    # Event time from the first event to the newest one replayed, and the time compression used.
    event_span_ms: int = 0
    speedup: float = 0.0
    # Rows that were not valid events: sent as they are (the job dead-letters them) or left out, by reason.
    bad_sent: int = 0
    bad_skipped: int = 0
    bad_reasons: Counter = field(default_factory=Counter)

    @property
    def records(self) -> int:
        """Records produced: the events and the bad rows sent."""
        return self.events + self.bad_sent

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("inf")

    def __str__(self) -> str:
        text = f"replayed {self.events:,} events into '{self.topic}' in {self.seconds:.2f} s ({self.rate:,.0f} records/s)"
        if self.speedup > 0:
            text += f"; {_duration(self.event_span_ms / 1000)} of event time at {self.speedup:g}x"
        bad = self.bad_sent + self.bad_skipped
        if bad:
            what = (f"{self.bad_sent:,} sent as they are (the job dead-letters them with their reasons)"
                    if self.bad_sent else f"{self.bad_skipped:,} skipped")
            text += (f"\n{self.events + bad:,} rows read: {self.events:,} events, {bad:,} bad row{'s' * (bad != 1)}, "
                     f"{what}; by reason: {_top(self.bad_reasons)}")
        return text


def _top(reasons: Counter, n: int = 5) -> str:
    """
    >>> _top(Counter({"missing field type": 3, "malformed JSON: unexpected end of data": 1}), n=1)
    '3 × missing field type; 1 more of 1 other reason'
    """
    shown = [f"{c:,} × {r}" for r, c in reasons.most_common(n)]
    rest = reasons.most_common()[n:]
    if rest:
        shown.append(f"{sum(c for _, c in rest):,} more of {len(rest):,} other reason{'s' * (len(rest) != 1)}")
    return "; ".join(shown)


def _duration(seconds: float) -> str:
    """
    >>> _duration(30), _duration(5400), _duration(3 * 86400)
    ('30.0 s', '1.5 h', '3.0 days')
    """
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h" if seconds >= 5400 else f"{seconds / 60:.1f} min"
    return f"{seconds / 86400:.1f} days"


def producer(kafka: KafkaConfig, **extra) -> Producer:
    conf = {
        "linger.ms": 20,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "enable.idempotence": True,
        "queue.buffering.max.messages": 500_000,
    }
    conf.update(extra)
    return kafka_clients.producer(kafka, **conf)


class _Errors:
    def __init__(self):
        self.first: str | None = None
        self.count = 0

    def __call__(self, err, _msg):
        if err is not None:
            self.count += 1
            self.first = self.first or str(err)


def replay(
    events: Iterable[Event | BadRow | tuple[str, bytes, int]],
    kafka: KafkaConfig,
    topic: str | None = None,
    rate: float = 0.0,
    total: int | None = None,
    progress: bool = True,
    speedup: float = 0.0,
    bad_rows: str = "send",
    on_bad_row: Callable[[BadRow], None] | None = None,
) -> ReplaySummary:
    """Produce ``events`` in order, each with its event time as the record timestamp.

    Pacing (at most one): ``rate`` > 0 sends that many records per second;
    ``speedup`` > 0 keeps the gaps between event timestamps, divided by
    ``speedup`` (3600: one hour of event time per second), measured from the
    first event. An event older than one before it (out of order) is sent at
    once: replay time never runs backwards. Neither: as fast as the broker
    takes them.

    A :class:`~rtrec.sources.BadRow` is handed to ``on_bad_row`` and then, by
    ``bad_rows``: ``send`` produces its bytes as they are (key: its user id if
    it had a valid one), stamped with the newest event time sent so far so that
    it cannot move the job's watermark; ``skip`` leaves it out; ``fail`` raises
    (the command line checks the whole input first, see rtrec.cli).

    Items may also be ``(key, value_bytes, timestamp_ms)`` tuples, for raw or
    deliberately malformed records.
    """
    if rate < 0 or speedup < 0:
        raise ValueError("replay: rate and speedup must not be negative")
    if rate > 0 and speedup > 0:
        raise ValueError("replay: rate and speedup are mutually exclusive: pace by events per second "
                         "(--rate) or by event time (--speedup), not both")
    if bad_rows not in BAD_ROW_POLICIES:
        raise ValueError(f"replay: bad_rows must be one of {', '.join(BAD_ROW_POLICIES)}")
    topic = topic or kafka.events_topic
    p = producer(kafka)
    errors = _Errors()
    n = shown = events_sent = bad_sent = bad_skipped = 0
    reasons: Counter = Counter()
    first_ts = newest_ts = None
    start = time.perf_counter()
    next_bar = start + 0.5
    bar = tqdm(total=total, unit="ev", desc=f"replay -> {topic}", disable=not progress, mininterval=0.5)
    try:
        for ev in events:
            if isinstance(ev, BadRow):
                reasons[ev.reason] += 1
                if on_bad_row is not None:
                    on_bad_row(ev)
                if bad_rows == "skip":
                    bad_skipped += 1
                    continue
                if bad_rows == "fail":
                    raise SourceError(f"{ev} (replay.bad_rows is fail)")
                key = ev.user_id.encode() if ev.user_id else None
                value, ts, event = ev.value, newest_ts or 0, False
            elif isinstance(ev, Event):
                key, value, ts, event = ev.user_id.encode(), ev.to_json(), ev.ts, True
            else:
                key, value, ts = ev
                key, event = key.encode() if isinstance(key, str) else key, True
            if event:
                if first_ts is None:
                    first_ts = newest_ts = ts
                elif ts > newest_ts:
                    newest_ts = ts
            if rate > 0:
                _wait_until(p, start + n / rate)
            elif speedup > 0 and first_ts is not None:
                _wait_until(p, start + (newest_ts - first_ts) / 1000 / speedup)
            while True:
                try:
                    p.produce(topic, key=key, value=value, timestamp=max(0, ts), on_delivery=errors)
                    break
                except BufferError:
                    p.poll(0.05)
            n += 1
            if event:
                events_sent += 1
            else:
                bad_sent += 1
            if n % 5000 == 0 or ((rate > 0 or speedup > 0) and time.perf_counter() >= next_bar):
                p.poll(0)
                bar.update(n - shown)
                shown = n
                next_bar = time.perf_counter() + 0.5
        remaining = p.flush(60)
        bar.update(n - shown)
    finally:
        bar.close()
    if remaining or errors.count:
        raise ReplayError(
            f"replay into '{topic}': {errors.count + remaining} of {n} records not delivered "
            f"(first error: {errors.first or 'flush timed out'})"
        )
    span = (newest_ts - first_ts) if first_ts is not None else 0
    return ReplaySummary(events_sent, time.perf_counter() - start, topic, span, speedup, bad_sent, bad_skipped,
                         reasons)


def _wait_until(p: Producer, deadline: float) -> None:
    """Sleep until ``deadline`` (perf_counter), serving delivery reports meanwhile."""
    while True:
        ahead = deadline - time.perf_counter()
        if ahead <= 0:
            return
        p.poll(min(ahead, 0.1))
