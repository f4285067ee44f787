"""Flink types of the records that pass between rtrec's operators and its Kafka tables.

Python operators see one record per micro-batch: a key shard and the raw
Kafka records of that shard in arrival order. They answer with one record per
batch that holds, for each output topic, an array of Kafka records; the SQL
sinks unnest them (jobs/kafka_tables.py), so per-record work after Python
stays in Java.

Each output record is one string, ``key + NUL + value``: ids cannot contain
control characters (rtrec.events) and JSON never holds a raw NUL. Two simpler
shapes fail: PyFlink (2.2, thread mode) converts an array of rows or tuples
with one reused object, so every element came out equal to the last, and
parallel key and value arrays make the SQL unnest copy the whole batch once
per element. Dead letters keep their original bytes, which need not be
UTF-8, in parallel arrays; there are few of them.
"""

from __future__ import annotations

from pyflink.common import Row, Types

BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
STRINGS = Types.OBJECT_ARRAY(Types.STRING())
BYTES_ARRAY = Types.OBJECT_ARRAY(BYTES)
SEPARATOR = "\x00"

#: Output topics with (key, value) records, in the order of STAGE_OUTPUT's fields.
OUTPUT_TOPICS = ("features", "recommendations", "predictions")
#: Dead letters carry the original bytes plus why, where and whence.
DEAD_LETTER_FIELDS = ("dead_keys", "dead_values", "dead_reasons", "dead_stages", "dead_sources")

STAGE_OUTPUT = Types.ROW_NAMED(
    [*OUTPUT_TOPICS, *DEAD_LETTER_FIELDS],
    [*(STRINGS for _ in OUTPUT_TOPICS), STRINGS, BYTES_ARRAY, STRINGS, STRINGS, STRINGS],
)


class TopicRecords(list):
    """Records bound for one topic, each ``key NUL value``."""

    __slots__ = ()

    def append(self, key: str | None, value: bytes) -> None:  # type: ignore[override]
        super().append(f"{key or ''}{SEPARATOR}{value.decode()}")


class Outputs:
    """Collects a batch's output records, then becomes one :data:`STAGE_OUTPUT` row."""

    __slots__ = ("features", "recommendations", "predictions", "dead_keys", "dead_values", "dead_reasons",
                 "dead_stages", "dead_sources")

    def __init__(self):
        self.features = TopicRecords()
        self.recommendations = TopicRecords()
        self.predictions = TopicRecords()
        self.dead_keys: list[str | None] = []
        self.dead_values: list[bytes] = []
        self.dead_reasons: list[str] = []
        self.dead_stages: list[str] = []
        self.dead_sources: list[str] = []

    def dead(self, key: str | None, value: bytes, reason: str, stage: str, source: str) -> None:
        self.dead_keys.append(key)
        self.dead_values.append(value)
        self.dead_reasons.append(reason)
        self.dead_stages.append(stage)
        self.dead_sources.append(source)

    def __bool__(self) -> bool:
        return bool(self.features or self.recommendations or self.predictions or self.dead_keys)

    def row(self) -> Row:
        return Row(list(self.features), list(self.recommendations), list(self.predictions), self.dead_keys,
                   self.dead_values, self.dead_reasons, self.dead_stages, self.dead_sources)
