"""The rtrec job: Kafka events in, features, recommendations and predictions out.

    events ──(SQL: shard users, micro-batch)──► UserStage ──(SQL: unnest)──► Kafka topics
             kafka_tables.event_batches         udfs.user_stage             kafka_tables.insert_outputs

Run it with ``rtrec run`` (a local MiniCluster) or submit this module with
``flink run --python jobs/rtrec_job.py``.
"""

from __future__ import annotations

import sys

from pyflink.common import Row, Types
from pyflink.datastream import StreamExecutionEnvironment
from pyflink.table import StreamTableEnvironment

from jobs import kafka_tables
from jobs.environment import create_environments
from rtrec.config import RtrecConfig, load_config
from udfs.records import STAGE_OUTPUT
from udfs.user_stage import UserStage


def shard_key(batch: Row) -> int:
    return batch[0]


def build(env: StreamExecutionEnvironment, t_env: StreamTableEnvironment, cfg: RtrecConfig) -> None:
    """Add the whole pipeline to ``env``."""
    batches = t_env.to_data_stream(kafka_tables.event_batches(t_env, cfg))

    outputs = (
        batches.key_by(shard_key, key_type=Types.INT())
        .process(UserStage(cfg), output_type=STAGE_OUTPUT)
        .uid("user-stage")
        .name("UserStage")
    )

    sinks = kafka_tables.register_sinks(t_env, cfg)
    t_env.create_temporary_view("rtrec_user_outputs", t_env.from_data_stream(outputs))
    statements = t_env.create_statement_set()
    kafka_tables.insert_outputs(statements, "rtrec_user_outputs", sinks)
    statements.attach_as_datastream()


def run(cfg: RtrecConfig, wait: bool = True):
    """Build and start the job; returns the JobExecutionResult (or the JobClient when not waiting)."""
    env, t_env = create_environments(cfg)
    build(env, t_env, cfg)
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
