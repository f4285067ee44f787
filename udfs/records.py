"""Flink types of the records that pass between rtrec's operators and its Kafka tables.

Python operators see one record per micro-batch: a key shard and the raw
Kafka records of that shard in arrival order. They answer with one record per
batch that holds, for each output topic, an array of Kafka records
(rtrec.core.outputs.Outputs); the SQL sinks unnest them (jobs/kafka_tables.py),
so per-record work after Python stays in Java.

Each output record is one string, ``key + NUL + value``. Two simpler shapes
fail: PyFlink (2.2, thread mode) converts an array of rows or tuples with one
reused object, so every element came out equal to the last, and parallel key
and value arrays make the SQL unnest copy the whole batch once per element.
"""

from __future__ import annotations

from pyflink.common import Row, Types

from rtrec.core.outputs import DEAD_LETTER_FIELDS, OUTPUT_TOPICS, Outputs

BYTES = Types.PRIMITIVE_ARRAY(Types.BYTE())
STRINGS = Types.OBJECT_ARRAY(Types.STRING())
BYTES_ARRAY = Types.OBJECT_ARRAY(BYTES)

STAGE_OUTPUT = Types.ROW_NAMED(
    [*OUTPUT_TOPICS, *DEAD_LETTER_FIELDS],
    [*(STRINGS for _ in OUTPUT_TOPICS), STRINGS, BYTES_ARRAY, STRINGS, STRINGS, STRINGS],
)


def stage_row(out: Outputs) -> Row:
    """One :data:`STAGE_OUTPUT` row of a batch's outputs."""
    return Row(*out.fields())
