"""The ``rtrec`` command line."""

from __future__ import annotations

import argparse
import sys
import time

from rtrec.config import ConfigError, RtrecConfig, load_config


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML configuration (default: built-in defaults, or $RTREC_CONFIG)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set flink.parallelism=2 (repeatable)",
    )
    p.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="shorthand for --set kafka.bootstrap_servers=...")


def _load(args) -> RtrecConfig:
    overrides = list(args.set)
    if args.bootstrap_servers:
        overrides.append(f"kafka.bootstrap_servers={args.bootstrap_servers}")
    return load_config(args.config, overrides)


def cmd_replay(args) -> int:
    from rtrec import topics
    from rtrec.replay import replay
    from rtrec.sources import load_events

    cfg = _load(args)
    topics.ensure_topics(cfg.kafka)
    events = load_events(args.input or cfg.replay.dataset, limit=args.limit or cfg.replay.limit)
    summary = replay(events, cfg.kafka, topic=args.topic, rate=args.rate or cfg.replay.rate, total=len(events))
    print(summary)
    return 0


def cmd_backfill(args) -> int:
    from rtrec.features.backfill import training_rows, write_parquet
    from rtrec.sources import load_events

    start = time.perf_counter()
    events = load_events(args.input, limit=args.limit)
    n = write_parquet(training_rows(events), args.output)
    print(f"backfill: {n:,} point-in-time feature rows from {len(events):,} events -> {args.output} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def cmd_run(args) -> int:
    from jobs import rtrec_job
    from rtrec import topics

    cfg = _load(args)
    if args.bounded:
        cfg.flink.bounded = True
    topics.ensure_topics(cfg.kafka)
    before = topics.end_offsets(cfg.kafka, cfg.kafka.events_topic)
    print(
        f"rtrec: job '{cfg.flink.job_name}' on a local MiniCluster, parallelism {cfg.flink.parallelism}, "
        f"{cfg.flink.delivery_guarantee}, reading '{cfg.kafka.events_topic}' at {cfg.kafka.bootstrap_servers}"
        + (" until its current end" if cfg.flink.bounded else " (Ctrl-C stops)"),
        flush=True,
    )
    start = time.perf_counter()
    result = rtrec_job.run(cfg, on_start=lambda: print(
        f"rtrec: Flink web UI and REST API at http://localhost:{cfg.flink.rest_port}", flush=True))
    wall = time.perf_counter() - start
    if cfg.flink.bounded:
        n = sum(before.values())
        runtime = result.get_net_runtime() / 1000
        print(
            f"rtrec: job finished: {n:,} events in {runtime:.1f} s of job time ({n / runtime:,.0f} events/s), "
            f"{wall:.1f} s with start-up"
        )
        failures = getattr(result, "failures", None)
        if failures is not None:
            print(f"rtrec: task failures recovered from during the run: {failures}")
    return 0


def cmd_demo(args) -> int:
    from rtrec.demo import run_demo

    run_demo(_load(args), limit=args.limit)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="rtrec",
        description="Real-time recommender features and online learning on Apache Flink.",
        epilog="Start a local broker first with `make kafka-up`; `make demo` runs everything end to end.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("replay", help="produce a data set into the events topic", description="Produce a data set into the events topic: key = user id, value = event JSON, record timestamp = event time.")
    _common(p)
    p.add_argument("input", nargs="?", help="movielens-100k (default) or a .jsonl, .csv or .parquet file of events")
    p.add_argument("--topic", help="target topic (default: kafka.events_topic)")
    p.add_argument("--rate", type=float, default=0.0, help="events per second (default: as fast as possible)")
    p.add_argument("--limit", type=int, default=0, help="replay only the first N events")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("run", help="run the Flink job on a local MiniCluster", description="Run the rtrec Flink job on a local MiniCluster.")
    _common(p)
    p.add_argument("--bounded", action="store_true", help="stop at the end the events topic has now (replays, demos)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "backfill",
        help="write point-in-time feature rows to Parquet (offline engine)",
        description="Run the feature definitions offline over a replay and write one row per event: "
        "its label fields plus the user's and the item's features as of just before it.",
    )
    p.add_argument("input", nargs="?", default="movielens-100k", help="movielens-100k (default) or an events file")
    p.add_argument("--output", "-o", default="features.parquet", help="Parquet file to write (default: features.parquet)")
    p.add_argument("--limit", type=int, default=0, help="only the first N events")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser("demo", help="replay MovieLens-100K through the job and summarise (make demo)", description="Reset the demo.* topics, replay MovieLens-100K, run the job until it has consumed the replay, and print what came out.")
    _common(p)
    p.add_argument("--limit", type=int, default=0, help="replay only the first N ratings")
    p.set_defaults(func=cmd_demo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # errors at the edge: one line that names the fix
        from rtrec.datasets import DatasetError
        from rtrec.sources import SourceError
        from rtrec.topics import BrokerUnavailable

        if isinstance(e, ConfigError | BrokerUnavailable | DatasetError | SourceError) or type(e).__name__ == "SetupError":
            print(f"rtrec: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
