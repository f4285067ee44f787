"""The job's Kafka edges, in Flink SQL: the event source with its micro-batching, and the sinks.

Why SQL at the edges: a Python DataStream operator costs tens of microseconds
per record, so the per-record work around Python (reading Kafka, hashing users
onto shards, gathering each shard's records into one micro-batch, and writing
each output record back to Kafka) runs in Java. Python sees one record per
shard per batch interval.
"""

from __future__ import annotations

from pyflink.table import StreamTableEnvironment, Table

from rtrec.config import RtrecConfig

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

    ``batch_time`` is the wall clock at ingestion; the micro-batch windows run on
    it, so no record is ever late for them, and a bounded run flushes its last
    batch when the input ends.
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
        # A partition with no traffic must not hold back the batch windows.
        "scan.watermark.idle-timeout": f"{max(2 * f.batch_interval_ms, 200)} ms",
        "value.format": "raw",
    }
    if f.bounded:
        options["scan.bounded.mode"] = "latest-offset"
    t_env.execute_sql(
        f"""
CREATE TEMPORARY TABLE rtrec_events (
  `value` BYTES,
  `partition` INT METADATA VIRTUAL,
  `offset` BIGINT METADATA VIRTUAL,
  `record_ts` TIMESTAMP_LTZ(3) METADATA FROM 'timestamp' VIRTUAL,
  batch_time AS CAST(CURRENT_TIMESTAMP AS TIMESTAMP_LTZ(3)),
  WATERMARK FOR batch_time AS batch_time
) WITH (
  {_with(options)}
)"""
    )


def event_batches(t_env: StreamTableEnvironment, cfg: RtrecConfig) -> Table:
    """One row per (user shard, batch interval): ``shard``, ``values``, ``partitions``, ``offsets``, ``max_ts``.

    The three arrays are parallel, in arrival order. (One array of ROW(...)
    would be neater, but ARRAY_AGG keeps references to rows that the upstream
    projection reuses, and ends up holding one row many times.) ``max_ts`` is
    the newest Kafka record timestamp in the batch, the event-time clock for
    watermarks.
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
SELECT CAST({shard_expression(user, cfg.flink.shards)} AS INT) AS shard,
       COALESCE(`value`, X'') AS `value`, `partition`, `offset`,
       record_ts,
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
       MAX(record_ts) AS max_ts
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
            f"CREATE TEMPORARY TABLE {table} (k STRING, v BYTES) WITH (\n  {_with(_sink_options(cfg, topic, field))}\n)"
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


def insert_outputs(statements, view: str, tables: dict[str, str]) -> None:
    """Unnest each output of ``view`` into its sink (adds the INSERTs to ``statements``).

    Keys and values arrive as parallel arrays (see udfs/records.py); the
    ordinality of the key pairs it with its value.
    """
    for field, table in tables.items():
        if field == "dead_letters":
            statements.add_insert_sql(
                f"""INSERT INTO {table}
SELECT d.k, v.dead_values[d.i],
       MAP['rtrec.reason', ENCODE(v.dead_reasons[d.i], 'UTF-8'), 'rtrec.stage', ENCODE(v.dead_stages[d.i], 'UTF-8'),
           'rtrec.source', ENCODE(v.dead_sources[d.i], 'UTF-8')]
FROM {view} AS v CROSS JOIN UNNEST(v.dead_keys) WITH ORDINALITY AS d(k, i)"""
            )
        else:
            statements.add_insert_sql(
                f"""INSERT INTO {table}
SELECT r.k, v.{field}_values[r.i] FROM {view} AS v CROSS JOIN UNNEST(v.{field}_keys) WITH ORDINALITY AS r(k, i)"""
            )
