"""Event time for micro-batches, tracked per Kafka partition.

A micro-batch holds records of many partitions, and while a job catches up
(a replay, a restart) the source reads some partitions far ahead of others.
A watermark from the newest timestamp in each batch would then run ahead of
the slow partitions and make their events look late. So the watermark follows
the slowest partition, as Flink's per-split watermarks do in a source: each
batch is stamped with the minimum over partitions of the newest timestamp
seen in that partition, and a partition that has sent nothing for a while
stops holding the others back.
"""

from __future__ import annotations

import time

from pyflink.common import Duration, WatermarkStrategy
from pyflink.common.watermark_strategy import TimestampAssigner

from rtrec.config import RtrecConfig


class PartitionProgress:
    """The newest record timestamp per partition; ``observe`` returns the slowest active partition's.

    Partitions known to exist but not heard from yet hold progress at 0 until
    they speak or stay silent for ``idle_ms``.

    >>> p = PartitionProgress(idle_ms=1000, partitions=3, now_ms=0)
    >>> p.observe([0, 1, 0], [50, 20, 70], now_ms=0)  # partition 2 not heard from yet
    0
    >>> p.observe([2], [30], now_ms=10)
    20
    >>> p.observe([0], [90], now_ms=5000)  # 1 and 2 have been silent for 5 s
    90
    """

    def __init__(self, idle_ms: int, max_future_ms: int = 86_400_000, partitions: int = 0,
                 now_ms: int | None = None):
        self.idle_ms = idle_ms
        self.max_future_ms = max_future_ms
        start = int(time.time() * 1000) if now_ms is None else now_ms
        self.newest: dict[int, int] = {p: -1 for p in range(partitions)}
        self.seen_at: dict[int, int] = {p: start for p in range(partitions)}

    def observe(self, partitions, times, now_ms: int | None = None) -> int:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        # A record stamped in the far future must not drag the watermark past everything else.
        cap = now + self.max_future_ms
        newest, seen_at = self.newest, self.seen_at
        for p, ts in zip(partitions, times, strict=True):
            if ts > cap:
                ts = cap
            if ts > newest.get(p, -1):
                newest[p] = ts
            seen_at[p] = now
        active = [newest[p] for p, at in seen_at.items() if now - at <= self.idle_ms]
        return max(0, min(active) if active else max(newest.values(), default=0))


class BatchTimestamp(TimestampAssigner):
    """Stamps each batch with :meth:`PartitionProgress.observe` over its records."""

    def __init__(self, idle_ms: int, max_future_ms: int, partitions: int):
        self.idle_ms = idle_ms
        self.max_future_ms = max_future_ms
        self.partitions = partitions
        self.progress: PartitionProgress | None = None

    def extract_timestamp(self, value, record_timestamp: int) -> int:
        if self.progress is None:  # built lazily: the assigner is pickled to the workers
            self.progress = PartitionProgress(self.idle_ms, self.max_future_ms, self.partitions)
        return self.progress.observe(value[2], value[4])


def batch_watermarks(cfg: RtrecConfig, partitions: int) -> WatermarkStrategy:
    """Bounded out-of-orderness over the batch stamps; an idle upstream subtask does not hold the others back.

    ``partitions``: how many partitions the events topic has (they all hold
    the watermark until heard from).
    """
    e = cfg.events
    # Idleness first: PyFlink's with_idleness builds a new strategy and would
    # drop a Python timestamp assigner set before it.
    return (
        WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(e.watermark_out_of_orderness_ms))
        .with_idleness(Duration.of_millis(e.partition_idle_ms))
        .with_timestamp_assigner(BatchTimestamp(e.partition_idle_ms, e.max_future_ms, partitions))
    )
