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

from pyflink.common import Duration, Row, Types, WatermarkStrategy
from pyflink.datastream import DataStream, ProcessFunction
from pyflink.java_gateway import get_gateway

from rtrec.config import RtrecConfig
from udfs.records import BYTES


class PartitionProgress:
    """The newest record timestamp per partition; ``observe`` returns the slowest active partition's.

    Partitions known to exist but not heard from yet hold progress at 0 until
    they speak or stay silent for ``idle_ms``. A record stamped ahead of the
    wall clock counts as stamped ``ahead_ms`` past it at most: event time does
    not run ahead of the clock, so one record from a producer with a wrong
    clock (or a timestamp in the wrong unit) cannot make every later event
    look late. (The parser refuses an event's own ``ts`` only a day ahead,
    events.max_future_ms; the watermark comes from record timestamps.)

    >>> p = PartitionProgress(idle_ms=1000, partitions=3, now_ms=0)
    >>> p.observe([0, 1, 0], [50, 20, 70], now_ms=100)  # partition 2 not heard from yet
    0
    >>> p.observe([2], [30], now_ms=110)
    20
    >>> p.observe([0], [90], now_ms=5000)  # 1 and 2 have been silent for 5 s
    90
    >>> p.observe([0], [86_400_000], now_ms=6000)  # a day ahead of the clock: as if stamped now
    6000
    """

    def __init__(self, idle_ms: int, ahead_ms: int = 0, partitions: int = 0, now_ms: int | None = None):
        self.idle_ms = idle_ms
        self.ahead_ms = ahead_ms
        start = int(time.time() * 1000) if now_ms is None else now_ms
        self.newest: dict[int, int] = {p: -1 for p in range(partitions)}
        self.seen_at: dict[int, int] = {p: start for p in range(partitions)}

    def observe(self, partitions, times, now_ms: int | None = None) -> int:
        now = int(time.time() * 1000) if now_ms is None else now_ms
        cap = now + self.ahead_ms
        newest, seen_at = self.newest, self.seen_at
        for p, ts in zip(partitions, times, strict=True):
            if ts > cap:
                ts = cap
            if ts > newest.get(p, -1):
                newest[p] = ts
            seen_at[p] = now
        active = [newest[p] for p, at in seen_at.items() if now - at <= self.idle_ms]
        return max(0, min(active) if active else max(newest.values(), default=0))


#: A micro-batch from jobs/kafka_tables.event_batches.
BATCH = Types.ROW_NAMED(
    ["shard", "values", "partitions", "offsets", "times"],
    [Types.INT(), Types.OBJECT_ARRAY(BYTES), Types.OBJECT_ARRAY(Types.INT()), Types.OBJECT_ARRAY(Types.LONG()),
     Types.OBJECT_ARRAY(Types.LONG())],
)
#: The same, as Row(shard, batch): ready to be keyed in Java (udfs/keying.py).
KEYED_BATCH = Types.ROW_NAMED(["key", "value"], [Types.INT(), BATCH])


class StampBatch(ProcessFunction):
    """Stamps each batch with :meth:`PartitionProgress.observe` over its records and shapes it for keying."""

    def __init__(self, idle_ms: int, ahead_ms: int, partitions: int):
        self.idle_ms = idle_ms
        self.ahead_ms = ahead_ms
        self.partitions = partitions
        self.progress: PartitionProgress | None = None

    def open(self, ctx):
        self.progress = PartitionProgress(self.idle_ms, self.ahead_ms, self.partitions)

    def process_element(self, batch, ctx):
        yield Row(batch[0], batch), self.progress.observe(batch[2], batch[4])


def with_batch_event_time(batches: DataStream, cfg: RtrecConfig, partitions: int) -> DataStream:
    """Timestamps and watermarks for the micro-batches; the result holds :data:`KEYED_BATCH` records.

    PyFlink's own ``assign_timestamps_and_watermarks`` does the same three
    steps, but keeps the Table's row type, which a Java-keyed stream cannot
    take, and its ``with_idleness`` drops a Python timestamp assigner.
    ``partitions``: how many partitions the events topic has (they all hold
    the watermark until heard from).
    """
    e = cfg.events
    stamped = batches.process(
        StampBatch(e.partition_idle_ms, e.watermark_out_of_orderness_ms, partitions), output_type=Types.TUPLE([KEYED_BATCH, Types.LONG()])
    ).name("BatchEventTime")
    strategy = WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(e.watermark_out_of_orderness_ms))
    return _apply_python_timestamps(stamped, strategy.with_idleness(Duration.of_millis(e.partition_idle_ms)),
                                    KEYED_BATCH)


def _apply_python_timestamps(stamped: DataStream, strategy: WatermarkStrategy, type_info) -> DataStream:
    """``stamped`` holds (record, timestamp) tuples: timestamp them in Java, add ``strategy``'s
    watermarks, and drop the timestamp field again (keeping ``type_info``)."""
    eventtime = get_gateway().jvm.org.apache.flink.streaming.api.functions.python.eventtime
    j_strategy = strategy._j_watermark_strategy.withTimestampAssigner(eventtime.CustomTimestampAssigner())
    j_stream = stamped._j_data_stream.assignTimestampsAndWatermarks(j_strategy).map(
        eventtime.RemoveTimestampMapFunction(), type_info.get_java_type_info())
    return DataStream(j_stream)


class StampFarFuture(ProcessFunction):
    """Stamps every record with a timestamp far in the future (see :func:`never_holding_back`)."""

    FAR = 1 << 62

    def process_element(self, value, ctx):
        yield value, self.FAR


def never_holding_back(stream: DataStream, type_info, idle_ms: int = 1_000) -> DataStream:
    """Give a side input (model versions) watermarks that never hold back the operator it joins.

    A two-input operator's watermark is the minimum of its inputs'. A stream
    without watermarks would pin it at the start of time and stall every
    event-time timer behind it; this one is idle until its first record and
    far in the future after it.
    """
    stamped = stream.process(StampFarFuture(), output_type=Types.TUPLE([type_info, Types.LONG()])).name(
        "SideInputTime")
    strategy = WatermarkStrategy.for_monotonous_timestamps().with_idleness(Duration.of_millis(idle_ms))
    return _apply_python_timestamps(stamped, strategy, type_info)
