"""The rtrec job: Kafka events in; features, recommendations, predictions and dead letters out.

    events ─(SQL: shard users, micro-batch)─► UserStage ──────────────────────────┐
            kafka_tables.event_batches        admit, user features, learn, top-k  ├─(SQL: unnest)─► Kafka
                                                 │ accepted events by item shard  │  kafka_tables.insert_outputs
                                                 └─► ItemStage ───────────────────┘
                                                     item features, event-time order

Run it with ``rtrec run`` (a local MiniCluster) or submit this file with
``flink run --python jobs/rtrec_job.py``.
"""

from __future__ import annotations

import sys

from pyflink.common import Types
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import StreamTableEnvironment

from jobs import kafka_tables
from jobs.environment import create_environments
from rtrec import topics
from rtrec.config import RtrecConfig, load_config
from udfs.event_time import BATCH, with_batch_event_time
from udfs.item_stage import ITEM_EVENTS, ItemStage
from udfs.keying import keyed_on_first_field
from udfs.records import STAGE_OUTPUT
from udfs.user_stage import TO_ITEMS, UserStage


def build(env: StreamExecutionEnvironment, t_env: StreamTableEnvironment, cfg: RtrecConfig) -> None:
    """Add the whole pipeline to ``env``."""
    partitions = len(topics.end_offsets(cfg.kafka, cfg.kafka.events_topic))
    batches = with_batch_event_time(t_env.to_data_stream(kafka_tables.event_batches(t_env, cfg)), cfg, partitions)

    users = (
        keyed_on_first_field(batches, Types.INT(), BATCH)
        .process(UserStage(cfg), output_type=STAGE_OUTPUT)
        .uid("user-stage")
        .name("UserStage")
        # PyTorch must be the only Python operator on its task thread: pemja
        # gives each Python operator its own thread state, and when torch
        # re-acquires the GIL (pybind11) under the thread's first-made state
        # while another one holds it, the thread deadlocks on itself.
        .disable_chaining()
    )
    items = (
        keyed_on_first_field(users.get_side_output(TO_ITEMS), Types.INT(), ITEM_EVENTS)
        .process(ItemStage(cfg), output_type=STAGE_OUTPUT)
        .uid("item-stage")
        .name("ItemStage")
    )

    sinks = kafka_tables.register_sinks(t_env, cfg)
    t_env.create_temporary_view("rtrec_outputs", t_env.from_data_stream(users.union(items)))
    statements = t_env.create_statement_set()
    kafka_tables.insert_outputs(statements, "rtrec_outputs", sinks)
    statements.attach_as_datastream()


def run(cfg: RtrecConfig, wait: bool = True, on_start=None):
    """Build and start the job; returns the JobExecutionResult (or the JobClient when not waiting).

    ``on_start`` is called once the job is built, just before it is submitted.
    """
    env, t_env = create_environments(cfg)
    build(env, t_env, cfg)
    if on_start is not None:
        on_start()
    if wait:
        return env.execute(cfg.flink.job_name)
    return env.execute_async(cfg.flink.job_name)


def main(argv: list[str] | None = None) -> None:
    """Entry point for ``flink run --python``: ``[--config FILE] [--set key=value ...]``."""
    import argparse

    ap = argparse.ArgumentParser(prog="rtrec_job")
    ap.add_argument("--config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    run(load_config(args.config, args.set))


if __name__ == "__main__":
    main(sys.argv[1:])
