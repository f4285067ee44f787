"""The job's Kafka edges, in Flink SQL: the event source with its micro-batching, and the sinks.

Why SQL at the edges: a Python DataStream operator costs tens of microseconds
per record, so the per-record work around Python (reading Kafka, hashing users
onto shards, gathering each shard's records into one micro-batch, and writing
each output record back to Kafka) runs in Java. Python sees one record per
shard per batch interval.

Every table gets the same client security and extra properties as ``properties.*``
(rtrec.kafka_clients.flink_sql_options); secrets stay references that the Kafka client
resolves on the task manager.
"""

from __future__ import annotations

from pyflink.table import StreamTableEnvironment, Table

from rtrec.config import RtrecConfig
from rtrec.kafka_clients import flink_sql_options
from rtrec.model_updates import CHUNK_HEADER, CHUNKS_HEADER
from rtrec.topics import CREATED_HEADER, REASON_HEADER, SOURCE_HEADER, STAGE_HEADER, VERSION_HEADER

_STARTUP = {"earliest": "earliest-offset", "latest": "latest-offset", "group-offsets": "group-offsets"}


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _with(options: dict[str, str]) -> str:
    return ",\n  ".join(f"{_quote(k)} = {_quote(v)}" for k, v in options.items())


def _interval(ms: int) -> str:
    return f"INTERVAL '{ms / 1000:.3f}' SECOND(9, 3)"


def shard_expression(column: str, shards: int) -> str:
    """SQL for the shard of a user id: Java's String.hashCode, floor-mod ``shards``.

    rtrec.sharding.shard_of computes the same in Python.
    """
    h = f"HASH_CODE({column})"
    return f"MOD(MOD({h}, {shards}) + {shards}, {shards})"


def register_event_source(t_env: StreamTableEnvironment, cfg: RtrecConfig) -> None:
    """``rtrec_events``: raw record values of the events topic, with their Kafka coordinates.

    ``batch_time`` is the clock the micro-batch windows run on:

    - unbounded (the normal case): processing time. A processing-time window
      has no late records, so nothing is ever dropped, whatever the skew
      between partitions or subtasks.
    - bounded (``flink.bounded``, replays and tests): ingestion time with a
      watermark and no idleness, because processing-time windows do not fire
      when the input ends. Each source split's watermark is its own ingestion
      clock, so no record can be behind it, and a split that reaches its end
      offset stops holding the others back; at the end every window fires.
    """
    k, f = cfg.kafka, cfg.flink
    options = {
        "connector": "kafka",
        "topic": k.events_topic,
        "properties.bootstrap.servers": k.bootstrap_servers,
        "properties.group.id": k.consumer_group,
        "properties.isolation.level": "read_committed",
        "properties.auto.offset.reset": "earliest",
        "scan.startup.mode": _STARTUP[f.startup_mode],
        "value.format": "raw",
        **flink_sql_options(k),
    }
    if f.bounded:
        options["scan.bounded.mode"] = "latest-offset"
        clock = "batch_time AS CAST(CURRENT_TIMESTAMP AS TIMESTAMP_LTZ(3)),\n  WATERMARK FOR batch_time AS batch_time"
    else:
        clock = "batch_time AS PROCTIME()"
    t_env.execute_sql(
        f"""
CREATE TEMPORARY TABLE rtrec_events (
  `value` BYTES,
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL,
  `record_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  {clock}
) WITH (
  {_with(options)}
)"""
    )


def event_batches(t_env: StreamTableEnvironment, cfg: RtrecConfig) -> Table:
    """One row per (user shard, batch interval): ``shard, values, partitions, offsets, times``.

    The arrays are parallel, in arrival order (parallel arrays of scalars
    rather than one array of rows: see udfs/records.py); ``times`` are the
    Kafka record timestamps (epoch ms), from which udfs/event_time.py derives
    event-time watermarks per source partition. The row type is
    udfs.event_time.BATCH.
    """
    register_event_source(t_env, cfg)
    # The user id is read from the payload, so a user's state has one home
    # whatever key the producer chose; records without one land on a shard
    # too, and the Python stage dead-letters them with the reason.
    user = "COALESCE(JSON_VALUE(CAST(`value` AS STRING), '$.user_id'), '')"
    t_env.create_temporary_view(
        "rtrec_keyed_events",
        t_env.sql_query(
            f"""
SELECT CAST({shard_expression(user, cfg.flink.key_shards)} AS INT) AS shard,
       COALESCE(`value`, X'') AS `value`, `partition`, `offset`,
       EXTRACT(EPOCH FROM record_ts) * 1000 + EXTRACT(MILLISECOND FROM record_ts) AS record_ms,
       batch_time
FROM rtrec_events"""
        ),
    )
    return t_env.sql_query(
        f"""
SELECT shard,
       ARRAY_AGG(`value`) AS `values`,
       ARRAY_AGG(`partition`) AS partitions,
       ARRAY_AGG(`offset`) AS offsets,
       ARRAY_AGG(record_ms) AS times
FROM TABLE(TUMBLE(TABLE rtrec_keyed_events, DESCRIPTOR(batch_time), {_interval(cfg.flink.batch_interval_ms)}))
GROUP BY window_start, window_end, shard"""
    )


def _sink_options(cfg: RtrecConfig, topic: str, name: str) -> dict[str, str]:
    k, f = cfg.kafka, cfg.flink
    options = {
        "connector": "kafka",
        "topic": topic,
        "properties.bootstrap.servers": k.bootstrap_servers,
        "key.format": "raw",
        "key.fields": "k",
        "value.format": "raw",
        "value.fields-include": "EXCEPT_KEY",
        "sink.delivery-guarantee": f.delivery_guarantee,
        "properties.compression.type": "lz4",
        "properties.linger.ms": "5",
        "properties.max.request.size": str(64 * 1024 * 1024),
        **flink_sql_options(k),
    }
    if f.delivery_guarantee == "exactly-once":
        # Stable across restarts of this job (so recovery can abort its
        # lingering transactions), distinct per sink and per job name.
        options["sink.transactional-id-prefix"] = f"{f.job_name}-{name}"
        options["properties.transaction.timeout.ms"] = str(k.transaction_timeout_ms)
    return options


def register_sinks(t_env: StreamTableEnvironment, cfg: RtrecConfig) -> dict[str, str]:
    """Create one sink table per output topic; returns output field -> table name."""
    k = cfg.kafka
    tables = {}
    for field, topic in (
        ("features", k.features_topic),
        ("recommendations", k.recommendations_topic),
        ("predictions", k.predictions_topic),
    ):
        table = f"rtrec_sink_{field}"
        t_env.execute_sql(
            f"CREATE TEMPORARY TABLE {table} (k STRING, v STRING) WITH (\n  {_with(_sink_options(cfg, topic, field))}\n)"
        )
        tables[field] = table
    # Dead letters keep the original bytes as the value; the reason, stage and
    # source coordinates travel as headers (as Kafka Connect's DLQ does).
    t_env.execute_sql(
        f"""CREATE TEMPORARY TABLE rtrec_sink_dead_letters (
  k STRING, v BYTES, headers MAP<STRING, BYTES> METADATA
) WITH (
  {_with(_sink_options(cfg, k.dead_letter_topic, "dead-letters"))}
)"""
    )
    tables["dead_letters"] = "rtrec_sink_dead_letters"
    return tables


def model_updates_source(t_env: StreamTableEnvironment, cfg: RtrecConfig, start_ms: int) -> Table:
    """Notices of the versions on the model-updates topic from ``start_ms`` on: one row per version,
    ``(partition, offset, number, created_ms)``, without the parameters themselves.

    A version is hundreds of kilobytes or more; crossing Flink's network stack
    to a busy scorer it moved buffer by buffer between micro-batches (up to a
    minute behind while the job caught up on a backlog). A notice is a few
    bytes, and the scorer loads the version from the broker by its offset
    (udfs/user_stage.py). Always unbounded: scorers follow new versions for as
    long as the job runs. After a restore the source resumes from its
    checkpointed offsets.
    """
    k = cfg.kafka
    options = {
        "connector": "kafka",
        "topic": k.model_updates_topic,
        "properties.bootstrap.servers": k.bootstrap_servers,
        "properties.group.id": f"{k.consumer_group}-model-updates",
        "scan.startup.mode": "timestamp",
        "scan.startup.timestamp-millis": str(start_ms),
        "value.format": "raw",
        **flink_sql_options(k),
    }
    t_env.execute_sql(f"""CREATE TEMPORARY TABLE rtrec_model_updates_in (
  `v` BYTES,
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL,
  `headers` MAP<STRING, BYTES> METADATA VIRTUAL
) WITH (\n  {_with(options)}\n)""")
    # (a record without the headers, written by an older rtrec, gives NULLs: the scorer loads it to see)
    # One notice per version: its last chunk (rtrec.model_updates); a record without chunk headers
    # holds a whole version.
    return t_env.sql_query(f"""
SELECT `partition`, `offset`,
       CAST(DECODE(headers['{VERSION_HEADER}'], 'UTF-8') AS BIGINT) AS `number`,
       CAST(DECODE(headers['{CREATED_HEADER}'], 'UTF-8') AS BIGINT) AS created_ms
FROM rtrec_model_updates_in
WHERE headers['{CHUNKS_HEADER}'] IS NULL
   OR CAST(DECODE(headers['{CHUNK_HEADER}'], 'UTF-8') AS INT)
      = CAST(DECODE(headers['{CHUNKS_HEADER}'], 'UTF-8') AS INT) - 1""")


def register_model_updates_sink(t_env: StreamTableEnvironment, cfg: RtrecConfig) -> str:
    """Versions go out at once (at-least-once): scorers must not wait for a checkpoint to see them.
    A version written twice is harmless (same number, same parameters; the topic is compacted), and
    after a restore the merger numbers on past whatever the failed attempt wrote (udfs/merger.py)."""
    options = _sink_options(cfg, cfg.kafka.model_updates_topic, "model-updates")
    options["sink.delivery-guarantee"] = "at-least-once"
    options.pop("sink.transactional-id-prefix", None)
    options.pop("properties.transaction.timeout.ms", None)
    options["properties.linger.ms"] = "0"
    # lz4: the item tables' floats hardly compress, but the JSON header (item ids) and a version's zeros do.
    options["properties.compression.type"] = "lz4"
    # One writer, so a version's chunks reach the topic in order, one after another.
    options["sink.parallelism"] = "1"
    # A chunk and its headers must fit one request (the broker's limit is the topic's max.message.bytes).
    options["properties.max.request.size"] = str(cfg.kafka.version_chunk_bytes + 64 * 1024)
    t_env.execute_sql(f"""CREATE TEMPORARY TABLE rtrec_sink_model_updates (
  k STRING, v BYTES, headers MAP<STRING, BYTES> METADATA
) WITH (\n  {_with(options)}\n)""")
    return "rtrec_sink_model_updates"


def insert_model_updates(statements, view: str, table: str) -> None:
    """Write the merger's versions (``k, v, number, created_ms, chunk, chunks`` rows of ``view``, one
    per chunk: rtrec.model_updates) with their headers."""
    statements.add_insert_sql(f"""INSERT INTO {table}
SELECT k, v, MAP['{VERSION_HEADER}', ENCODE(CAST(`number` AS STRING), 'UTF-8'),
                 '{CREATED_HEADER}', ENCODE(CAST(created_ms AS STRING), 'UTF-8'),
                 '{CHUNK_HEADER}', ENCODE(CAST(chunk AS STRING), 'UTF-8'),
                 '{CHUNKS_HEADER}', ENCODE(CAST(chunks AS STRING), 'UTF-8')]
FROM {view}""")


def insert_outputs(statements, view: str, tables: dict[str, str]) -> None:
    """Unnest each output of ``view`` into its sink (adds the INSERTs to ``statements``).

    Records arrive as ``key NUL value`` strings (see udfs/records.py); dead
    letters as parallel arrays, paired by the ordinality of the key.
    """
    for field, table in tables.items():
        if field == "dead_letters":
            statements.add_insert_sql(
                f"""INSERT INTO {table}
SELECT d.k, v.dead_values[d.i],
       MAP['{REASON_HEADER}', ENCODE(v.dead_reasons[d.i], 'UTF-8'), '{STAGE_HEADER}', ENCODE(v.dead_stages[d.i], 'UTF-8'),
           '{SOURCE_HEADER}', ENCODE(v.dead_sources[d.i], 'UTF-8')]
FROM {view} AS v CROSS JOIN UNNEST(v.dead_keys) WITH ORDINALITY AS d(k, i)"""
            )
        else:
            statements.add_insert_sql(
                f"""INSERT INTO {table}
SELECT NULLIF(SUBSTRING(r.s FROM 1 FOR POSITION(CHR(0) IN r.s) - 1), ''),
       SUBSTRING(r.s FROM POSITION(CHR(0) IN r.s) + 1)
FROM {view} AS v CROSS JOIN UNNEST(v.{field}) AS r(s)"""
            )
