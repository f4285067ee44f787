"""Flink types of the records that pass between rtrec's operators and its Kafka tables.

Python operators see one record per micro-batch: a key shard and the raw
Kafka records of that shard in arrival order. They answer with one record per
batch that holds, for each output topic, parallel arrays of keys and values;
the SQL sinks unnest them (jobs/kafka_tables.py), so per-record work after
Python stays in Java.

Parallel arrays of scalars rather than one array of rows: PyFlink (2.2, thread
mode) converts an array of rows with a single reused row object, so every
element came out equal to the last one.
"""

from __future__ import annotations

from pyflink.common import Row, Types

BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
STRINGS = Types.OBJECT_ARRAY(Types.STRING())
BYTES_ARRAY = Types.OBJECT_ARRAY(BYTES)

#: Output topics with (key, value) records, in the order of STAGE_OUTPUT's fields.
OUTPUT_TOPICS = ("features", "recommendations", "predictions")
#: Dead letters carry the original bytes plus why, where and whence.
DEAD_LETTER_FIELDS = ("dead_keys", "dead_values", "dead_reasons", "dead_stages", "dead_sources")

STAGE_OUTPUT = Types.ROW_NAMED(
    [*(f"{t}_{part}" for t in OUTPUT_TOPICS for part in ("keys", "values")), *DEAD_LETTER_FIELDS],
    [*(t for _ in OUTPUT_TOPICS for t in (STRINGS, BYTES_ARRAY)), STRINGS, BYTES_ARRAY, STRINGS, STRINGS, STRINGS],
)


class TopicRecords:
    """Keys and values bound for one topic."""

    __slots__ = ("keys", "values")

    def __init__(self):
        self.keys: list[str | None] = []
        self.values: list[bytes] = []

    def append(self, key: str | None, value: bytes) -> None:
        self.keys.append(key)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.keys)


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
        f, r, p = self.features, self.recommendations, self.predictions
        return Row(f.keys, f.values, r.keys, r.values, p.keys, p.values, self.dead_keys, self.dead_values,
                   self.dead_reasons, self.dead_stages, self.dead_sources)
