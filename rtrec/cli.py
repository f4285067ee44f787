"""The ``rtrec`` command line."""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
import time

from rtrec.config import ConfigError, RtrecConfig, load_config


def config_arguments(p: argparse.ArgumentParser) -> None:
    """--config, --set and --bootstrap-servers: every command takes them, and so does the job (jobs/rtrec_job.py)."""
    p.add_argument("--config", metavar="FILE", help="YAML configuration (default: built-in defaults, or $RTREC_CONFIG)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set flink.parallelism=2 (repeatable)",
    )
    p.add_argument("--bootstrap-servers", metavar="HOST:PORT", help="shorthand for --set kafka.bootstrap_servers=...")


def config_from(args) -> RtrecConfig:
    """The configuration that :func:`config_arguments` describe: defaults, file, environment, --set."""
    overrides = list(args.set)
    if args.bootstrap_servers:
        overrides.append(f"kafka.bootstrap_servers={args.bootstrap_servers}")
    return load_config(args.config, overrides)


def command_line(args, command: str, *extra: str) -> str:
    """``rtrec COMMAND`` with the --config, --set and --bootstrap-servers this command was given, then ``extra``:
    a command to copy that names the same job, topics and broker (a hint that dropped them would resume
    another job name, or read the default topics).

    >>> a = argparse.Namespace(config="my shop.yaml", set=["flink.parallelism=2"], bootstrap_servers=None)
    >>> command_line(a, "run", "--resume")
    "rtrec run --config 'my shop.yaml' --set flink.parallelism=2 --resume"
    """
    words = ["rtrec", command]
    if args.config:
        words += ["--config", args.config]
    for setting in args.set:
        words += ["--set", setting]
    if args.bootstrap_servers:
        words += ["--bootstrap-servers", args.bootstrap_servers]
    return shlex.join([*words, *extra])


def positive_int(text: str) -> int:
    """argparse type of --limit: a count of at least 1 (leave the flag out for no limit)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n} (leave --limit out to take every row)")
    return n


def cmd_replay(args) -> int:
    from tqdm import tqdm

    from rtrec import topics
    from rtrec.events import EventParser
    from rtrec.replay import replay
    from rtrec.sources import BUILT_IN, BadRow, SourceError, check_rows, load_events, stream_rows

    cfg = config_from(args)
    # Pacing given on the command line replaces the configuration's (replay.rate, replay.speedup).
    if args.rate or args.speedup:
        rate, speedup = args.rate, args.speedup
    else:
        rate, speedup = cfg.replay.rate, cfg.replay.speedup
    if rate < 0 or speedup < 0:
        raise ConfigError("--rate and --speedup must not be negative")
    if rate > 0 and speedup > 0:
        raise ConfigError(
            "--rate and --speedup are mutually exclusive: pace by events per second (--rate) "
            "or by event time (--speedup), not both"
        )
    source = args.input or cfg.replay.dataset
    limit = args.limit if args.limit is not None else cfg.replay.limit
    policy = args.bad_rows or cfg.replay.bad_rows
    topic = args.topic or cfg.kafka.events_topic
    parser = EventParser(cfg.events, cfg.model)

    def report(bad: BadRow) -> None:
        tqdm.write(f"replay: {source}, {bad}", file=sys.stderr)

    topics.check_broker(cfg.kafka)
    total = None
    if source in BUILT_IN:  # events only, made in memory: nothing to check, and their number is known
        events = load_events(source, limit)
        total = len(events)

        def rows():
            return events
    else:
        def rows():
            return stream_rows(source, limit, parser)
    if policy == "fail" and total is None:  # a first pass: every bad row is listed before anything is sent
        total, bad = check_rows(rows(), report)
        if bad:
            raise SourceError(
                f"{source}: {bad:,} of {total:,} rows are not valid events (listed above); nothing was sent. Fix "
                "them, or replay with --bad-rows skip (leave them out) or --bad-rows send (the job dead-letters "
                "them with their reasons)"
            )
    for name in topics.ensure_topics(cfg.kafka, [topic]):
        print(f"replay: created topic '{name}' ({cfg.kafka.partitions} partitions, "
              f"replication factor {cfg.kafka.replication_factor})", flush=True)
    summary = replay(rows(), cfg.kafka, topic=topic, rate=rate, speedup=speedup, total=total,
                     bad_rows=policy, on_bad_row=None if policy == "fail" else report)
    print(summary)
    return 0


def cmd_backfill(args) -> int:
    from rtrec.events import EventParser
    from rtrec.features.backfill import training_rows, write_parquet
    from rtrec.sources import load_events

    cfg = config_from(args)
    start = time.perf_counter()
    events = load_events(args.input or cfg.replay.dataset, limit=args.limit or 0,
                         parser=EventParser(cfg.events, cfg.model))
    n = write_parquet(training_rows(events), args.output)
    print(f"backfill: {n:,} point-in-time feature rows from {len(events):,} events -> {args.output} "
          f"({time.perf_counter() - start:.1f} s)")
    return 0


def cmd_run(args) -> int:
    from rtrec import topics
    from rtrec.lifecycle import (
        hold_job_name,
        read_run_record,
        record_run,
        resume_point,
        run_locally,
        runs_path,
        start_position,
    )
    from rtrec.progress import JobProgress
    from rtrec.sharding import FatalFailure, fatal_reason

    cfg = config_from(args)
    if args.bounded:
        cfg.flink.bounded = True
    claim = hold_job_name(cfg)  # (held until this process ends)
    if claim is None:
        other = read_run_record(cfg)
        where = f" (pid {other.pid}, REST API {other.rest_url})" if other else " (still starting)"
        raise ConfigError(
            f"job '{cfg.flink.job_name}' is already running from {cfg.flink.checkpoint_dir}{where}: a second run "
            "would read the same events and write every output twice. Stop it first "
            f"(`{command_line(args, 'stop')}`, or Ctrl-C there), or give this run another flink.job_name")
    if args.resume and args.from_savepoint:
        raise ConfigError("--resume and --from-savepoint both say where to start from: give one")
    kind = ["--bounded"] if args.bounded else []  # (a hint to copy repeats it; the --config it names says the rest)
    earlier = None if args.from_savepoint else resume_point(cfg, cfg.flink.bounded)
    if args.resume:
        if earlier is None:
            raise ConfigError(
                f"--resume: no earlier {'bounded ' if cfg.flink.bounded else ''}run of job "
                f"'{cfg.flink.job_name}' left a checkpoint or savepoint in {cfg.flink.checkpoint_dir} "
                "(runs are listed in " + str(runs_path(cfg)) + "; a cluster's checkpoints need "
                "--from-savepoint PATH); start without --resume")
        args.from_savepoint = str(earlier.path)
        print(f"rtrec: resuming from the {earlier.describe()}", flush=True)
    elif earlier is not None:
        print(f"rtrec: note: an earlier run of job '{cfg.flink.job_name}' left a {earlier.describe()}; this run "
              "starts without it (features, user vectors and the duplicate filter start empty); "
              f"`{command_line(args, 'run', *kind, '--resume')}` continues from it", file=sys.stderr, flush=True)
    if args.from_savepoint:
        # Flink 2.x's key (execution.savepoint.path before 2.0). Operators are
        # matched by uid; state the new job has no operator for is an error.
        cfg.flink.options["execution.state-recovery.path"] = args.from_savepoint
    if args.from_beginning:
        cfg.flink.startup_mode = "earliest"
    topics.prepare_job_topics(cfg.kafka, cfg.model.enabled)  # before importing Flink and torch: fails in a second
    before = topics.end_offsets(cfg.kafka, cfg.kafka.events_topic)
    position = None
    if not args.from_savepoint:  # (a savepoint holds the source's offsets)
        position = start_position(cfg.flink.startup_mode, before, topics.committed_offsets(
            cfg.kafka, cfg.kafka.events_topic, cfg.kafka.consumer_group))

    print(
        f"rtrec: job '{cfg.flink.job_name}' on a local MiniCluster, parallelism {cfg.flink.parallelism}, "
        f"{cfg.flink.key_shards} key shard{'s' if cfg.flink.key_shards > 1 else ''}, "
        f"{cfg.flink.delivery_guarantee}, reading '{cfg.kafka.events_topic}' at {cfg.kafka.bootstrap_servers}"
        + (f" {position.where}" if position else "")
        + (" until its current end" if cfg.flink.bounded else " (Ctrl-C stops)")
        + (f", restoring {args.from_savepoint}" if args.from_savepoint else ""),
        flush=True,
    )
    if position and position.from_beginning and position.to_read and cfg.model.enabled and cfg.model.warm_start:
        from udfs.merger import newest_published_number

        number = newest_published_number(cfg)
        if number:
            print(f"rtrec: warning: the model warm-starts from version {number} on "
                  f"'{cfg.kafka.model_updates_topic}', which may have learned from the events this run reads "
                  "again from the beginning: their predictions are then not prequential (for a clean evaluation "
                  "use a fresh model-updates topic, or --set model.warm_start=false)", file=sys.stderr, flush=True)
    outputs = {"predictions": cfg.kafka.predictions_topic, "recommendations": cfg.kafka.recommendations_topic,
               "features": cfg.kafka.features_topic}
    written_before = {name: sum(topics.end_offsets(cfg.kafka, t).values()) for name, t in outputs.items()}
    dead_before = topics.end_offsets(cfg.kafka, cfg.kafka.dead_letter_topic)
    start = time.perf_counter()
    total = position.to_read if position else None
    progress = JobProgress(cfg.flink.job_name, total=total if cfg.flink.bounded else None,
                           enabled=not args.no_progress, models=cfg.model.enabled)

    # A bounded run reads to the topic's end now; one resumed from a bounded run's state reads to that
    # run's end (its restored source keeps it), and the events that came after stay for the next run.
    ends = None
    if cfg.flink.bounded:
        ends = before if earlier is None or not args.resume else earlier.ends
        if args.resume and ends is not None:
            after = sum(before.values()) - sum(ends.values())
            if after > 0:
                print(f"rtrec: note: this resume finishes the run whose state it restores: it reads to where that "
                      f"run's input ended; the {after:,} events that came since stay for the next "
                      f"`{command_line(args, 'run', '--bounded')}`", file=sys.stderr, flush=True)
    ends = {int(p): int(o) for p, o in ends.items()} if ends else None
    record_run(cfg, cfg.flink.bounded, ends)
    try:
        result, run = run_locally(cfg, progress, ends=ends)
    except Exception as e:  # (a Py4JJavaError from Flink)
        fatal = progress.fatal or (str(e) if isinstance(e, FatalFailure) else fatal_reason(str(e)))
        if fatal:  # (no restart could mend it; the progress thread cancelled an unbounded job)
            raise ConfigError(fatal) from None
        unmapped = re.search(r"Cannot map checkpoint/savepoint state for operator (\w+)", str(e))
        if not (args.from_savepoint and unmapped):
            raise
        raise ConfigError(
            f"the savepoint {args.from_savepoint} holds state of operator {unmapped.group(1)}, which this job "
            "does not have: resume it with the kind of run that took it (a savepoint of `rtrec run` with "
            "`rtrec run --from-savepoint`, not with --bounded, whose source and micro-batch windows differ) "
            "and the same model and feature settings") from None

    def summarise() -> None:
        from rtrec.dead_letters import reasons_since
        from rtrec.progress import summary

        written = {name: sum(topics.end_offsets(cfg.kafka, t).values()) - written_before[name]
                   for name, t in outputs.items()}
        last = progress.last
        # A bounded run read what was there when it started; the job's counters are sampled every 2 s,
        # and a job that finished by itself takes its last few seconds' counts with it.
        events_in = max(last.events_in if last else 0, total if cfg.flink.bounded and total is not None else 0)
        print("rtrec: run summary: " + summary(events_in, last.duplicates if last else 0,
                                               reasons_since(cfg.kafka, dead_before), written,
                                               cfg.features.dead_letter_duplicates)
              + " (records written: end offsets, transaction markers included; duplicates as the job last "
              "reported them)", flush=True)

    if run.stopped:
        if run.savepoint:
            print(f"rtrec: resume with: {command_line(args, 'run', *kind, '--from-savepoint', run.savepoint)}",
                  flush=True)
        summarise()
        return 0
    if not cfg.flink.bounded:
        run.linger_s = 5.0  # (stopped from outside, e.g. by `rtrec stop`, which still asks for the savepoint)
        print(f"rtrec: job '{cfg.flink.job_name}' ended: stopped from outside (`rtrec stop`, the web UI or the REST API)", flush=True)
        summarise()
        return 0
    wall = time.perf_counter() - start
    if cfg.flink.bounded:
        # (resumed: the source's own offsets, which the checkpoint held, not the group's; the job's count)
        n = total if total is not None else progress.last.events_in if progress.last else sum(before.values())
        runtime = result.get_net_runtime() / 1000
        print(
            f"rtrec: job finished: {n:,} events in {runtime:.1f} s of job time ({n / runtime:,.0f} events/s), "
            f"{wall:.1f} s with start-up"
        )
        failures = getattr(result, "failures", None)
        if failures is not None:
            print(f"rtrec: task failures recovered from during the run: {failures}")
            # With models on, the job never finishes by itself (it follows model-updates): it is
            # cancelled once every output is committed, and the Kafka source, finished by then, no
            # longer commits the group's offsets of its last checkpoint. Every event up to ``before``
            # has its outputs committed, so the next run starts there instead of reading them again.
            # (A resumed run read to its restored source's end, ``ends``; what came after waits.)
            topics.commit_forward(cfg.kafka, cfg.kafka.events_topic, cfg.kafka.consumer_group, ends or before)
        summarise()
    return 0


def cmd_stop(args) -> int:
    import urllib.error

    from rtrec.flink_rest import FlinkRest
    from rtrec.lifecycle import past_runs, read_run_record

    cfg = config_from(args)
    name = args.job or cfg.flink.job_name
    record = None if args.rest else read_run_record(cfg, name)
    url = args.rest or (record.rest_url if record else f"http://localhost:{cfg.flink.rest_port}")
    rest = FlinkRest(url)
    try:
        jobs = rest.running_jobs()
    except (urllib.error.URLError, OSError):
        print(f"rtrec: error: no Flink REST API at {url}: `rtrec run` prints its address; pass it with --rest",
              file=sys.stderr)
        return 2
    matching = [j for j in jobs if j["name"] == name]
    if not matching:
        running = ", ".join(repr(j["name"]) for j in jobs) or "none"
        print(f"rtrec: error: no running job {name!r} at {url} (running: {running}); name it with --job",
              file=sys.stderr)
        return 2
    target = args.savepoint_dir and cfg.resolve_path(args.savepoint_dir).as_uri()
    jid = matching[0]["jid"]
    location = rest.stop_with_savepoint(jid, target)
    print(f"rtrec: stopped job {name!r} with a savepoint at {location}")
    again = ["--set", f"flink.job_name={name}"] if name != cfg.flink.job_name else []
    cfg.flink.job_name = name
    if any(r.bounded for r in past_runs(cfg) if r.job_id == jid):  # (a bounded run's state needs a bounded run)
        again.append("--bounded")
    print(f"rtrec: resume with: {command_line(args, 'run', *again, '--from-savepoint', location)}")
    return 0


def _serve_config(args) -> RtrecConfig:
    from pathlib import Path

    from rtrec.config import validate

    cfg = config_from(args)
    if getattr(args, "store", None):  # relative to where the command runs, like any command-line path
        cfg.serve.store_dir = str(Path(args.store).resolve())
    for name in ("host", "port", "batch_size"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(cfg.serve, name, value)
    validate(cfg)
    return cfg


def cmd_serve(args) -> int:
    from rtrec.serve import serve

    cfg = _serve_config(args)
    stats = serve(cfg, http=not args.no_http, until_caught_up=args.until_caught_up, reset=args.reset,
                  max_records=args.max_records or None)
    print(f"serve: stopped; {stats.applied_session:,} records applied by this run")
    return 0


def cmd_lookup(args) -> int:
    import orjson

    from rtrec.serve import lookup

    cfg = _serve_config(args)
    found = lookup(cfg, args.entity, args.id)
    if found is None:
        print(orjson.dumps({"error": f"unknown {args.entity} {args.id!r}",
                            "store": str(cfg.resolve_path(cfg.serve.store_dir))}).decode())
        return 1
    print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
    return 0


def cmd_eval(args) -> int:
    from pathlib import Path

    from rtrec.evaluation import run_eval, summary_lines

    cfg = config_from(args)
    out = Path(args.output_dir).resolve() if args.output_dir else cfg.resolve_path("var/eval")
    if args.min_examples is not None and args.min_examples < 0:
        raise ConfigError("--min-examples must not be negative (0 plots every window)")
    ev, paths = run_eval(cfg, out, k=args.k, window=args.window, idle_s=args.idle,
                         min_window_examples=args.min_examples)
    for line in summary_lines(ev):
        print(f"eval: {line}")
    print(f"eval: report {paths['report']}; plots: {', '.join(p.name for n, p in paths.items() if p.suffix == '.png') or 'none'}")
    return 0


def cmd_dead_letters(args) -> int:
    from collections import Counter

    from rtrec import topics
    from rtrec.dead_letters import read_newest

    cfg = config_from(args)
    k = cfg.kafka
    topics.check_broker(k)
    letters = read_newest(k, args.limit)
    if not letters:
        print(f"dead-letters: none in '{k.dead_letter_topic}' at {k.bootstrap_servers}")
        return 0
    print(f"dead-letters: the newest {len(letters):,} in '{k.dead_letter_topic}' at {k.bootstrap_servers} "
          "(read_committed), oldest first:")
    for d in letters:
        print("\n".join(d.lines()))
    stages = Counter(d.stage for d in letters)
    print("dead-letters: by stage: " + ", ".join(f"{s} {n:,}" for s, n in stages.most_common()))
    return 0


def cmd_config(args) -> int:
    import yaml

    cfg = config_from(args)
    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
    return 0


def cmd_demo(args) -> int:
    from rtrec.demo import run_demo

    run_demo(config_from(args), limit=args.limit or 0)
    return 0


def _store_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--store", metavar="DIR", help="serve store folder (default: serve.store_dir, var/serve/store)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="rtrec",
        description="Real-time recommender features and online learning on Apache Flink.",
        epilog="Start a local broker first with `make kafka-up`; `make demo` runs everything end to end.",
    )
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("replay", help="produce a data set into the events topic", description="Produce a data set into the events topic: key = user id, value = event JSON, record timestamp = event time.")
    config_arguments(p)
    p.add_argument("input", nargs="?", help="movielens-100k (default), movielens-100k-search (with made-up searches before some ratings) "
                   "or a .jsonl, .csv or .parquet file of events")
    p.add_argument("--topic", help="target topic (default: kafka.events_topic)")
    p.add_argument("--rate", type=float, default=0.0,
                   help="events per second (default: replay.rate; 0 = as fast as the broker takes them)")
    p.add_argument("--speedup", type=float, default=0.0, metavar="X",
                   help="keep the gaps between event timestamps divided by X, e.g. 3600 = one hour of "
                   "event time per second (not with --rate)")
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="replay only the first N rows (default: replay.limit; 0 there means all)")
    p.add_argument("--bad-rows", choices=["fail", "skip", "send"],
                   help="rows that are not valid events, each reported with its line number: fail (default, "
                   "replay.bad_rows) lists them all and sends nothing; skip sends the rest; send sends them too, "
                   "as they are, for the job to dead-letter with its reasons")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("run", help="run the Flink job on a local MiniCluster", description="Run the rtrec Flink job on a local MiniCluster.")
    config_arguments(p)
    p.add_argument("--bounded", action="store_true", help="stop at the end the events topic has now (replays, demos)")
    p.add_argument("--from-savepoint", metavar="PATH",
                   help="start from this savepoint or retained checkpoint (state, offsets and model); "
                   "the parallelism may differ from the job that took it")
    p.add_argument("--resume", action="store_true",
                   help="start from the newest checkpoint or savepoint an earlier run of this job name and kind "
                   "(bounded or not) left in flink.checkpoint_dir, as --from-savepoint would")
    p.add_argument("--from-beginning", action="store_true",
                   help="read the events topic from its start (flink.startup_mode=earliest); by default a job "
                   "started without a savepoint continues from its consumer group's committed offsets")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (events in, events/s, consumer lag, model version every 2 s)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "stop",
        help="stop a running job with a savepoint",
        description="Take a savepoint of a running job and stop it, through Flink's REST API; "
        "prints the savepoint's path for `rtrec run --from-savepoint`.",
    )
    config_arguments(p)
    p.add_argument("--rest", metavar="URL", help="Flink REST API (default: where `rtrec run` of this job "
                   "recorded it, else http://localhost:<flink.rest_port>)")
    p.add_argument("--job", metavar="NAME", help="job name (default: flink.job_name)")
    p.add_argument("--savepoint-dir", metavar="DIR", help="where to write it (default: the cluster's state.savepoints.dir)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser(
        "backfill",
        help="write point-in-time feature rows to Parquet (offline engine)",
        description="Run the feature definitions offline over a replay and write one row per event: "
        "its label fields plus the user's and the item's features as of just before it.",
    )
    config_arguments(p)
    p.add_argument("input", nargs="?", help="movielens-100k or an events file (default: replay.dataset, "
                   "movielens-100k); rows are checked with the events.* and model.rating_* settings")
    p.add_argument("--output", "-o", default="features.parquet", help="Parquet file to write (default: features.parquet)")
    p.add_argument("--limit", type=positive_int, metavar="N", help="only the first N events (default: all)")
    p.set_defaults(func=cmd_backfill)

    p = sub.add_parser(
        "serve",
        help="materialise features and recommendations into a local store and serve them over HTTP",
        description="Consume the features and recommendations topics (read_committed) into a local RocksDB "
        "store, exactly once (offsets are stored with the data), and answer GET /users/ID/recommendations, "
        "/users/ID/features, /items/ID/features, /health and /metrics. Ctrl-C stops; a restart resumes "
        "where it stopped.",
    )
    config_arguments(p)
    _store_arg(p)
    p.add_argument("--host", help="HTTP address (default: serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="HTTP port (default: serve.port, 8090; 0 picks a free one)")
    p.add_argument("--batch-size", type=int, help="records per atomic write (default: serve.batch_size)")
    p.add_argument("--no-http", action="store_true", help="only materialise, no HTTP API")
    p.add_argument("--until-caught-up", action="store_true", help="stop once every committed record is applied")
    p.add_argument("--max-records", type=int, default=0, help="stop after about N records (at a batch boundary)")
    p.add_argument("--reset", action="store_true", help="delete the store first and rebuild it from the beginning")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "lookup",
        help="print a user's or an item's entry of the serve store as JSON",
        description="Read the store of `rtrec serve` directly (read-only; works while serve runs) and print "
        "a user's newest features and recommendations, or an item's newest features, as JSON. "
        "Exit status 1 if the id is unknown.",
    )
    config_arguments(p)
    _store_arg(p)
    p.add_argument("entity", choices=["user", "item"], help="user or item")
    p.add_argument("id", help="the user or item id")
    p.set_defaults(func=cmd_lookup)

    p = sub.add_parser(
        "eval",
        help="prequential MAE, RMSE, AUC, log-loss and recall@k from the output topics, as a report",
        description="Read the predictions and recommendations topics (read_committed, from the beginning) "
        "and write a Markdown report with PNG plots: MAE/RMSE of ratings, AUC and log-loss (ratings: "
        "label >= 4 positive, score rescaled to [0, 1]), recall@k of the newest top-k list before each "
        "positive interaction; overall and per window. See rtrec/evaluation.py for the definitions.",
    )
    config_arguments(p)
    p.add_argument("--output-dir", metavar="DIR", help="where report.md, metrics.json and the plots go "
                   "(default: var/eval in the project)")
    p.add_argument("--k", type=int, help="recall@k cut-off (default: model.top_k)")
    p.add_argument("--window", default="day", help="windows over time: hour, day (default), week, or a number "
                   "of examples")
    p.add_argument("--min-examples", type=int, metavar="N", help="leave windows with fewer examples out of "
                   "the plots' lines, grey their bars (default: eval.min_window_examples, 100; 0: none)")
    p.add_argument("--idle", type=float, default=2.0, help="stop reading a topic after this many seconds "
                   "without new records at its end (default: 2)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "dead-letters",
        help="list the newest dead letters with their reasons and sources",
        description="Read the end of the dead-letter topic (kafka.dead_letter_topic, read_committed) and print "
        "the newest records: when, the stage that refused each (validate, dedup, lateness), its source "
        "(topic/partition@offset), its key, the reason and the start of the original value.",
    )
    config_arguments(p)
    p.add_argument("--limit", type=positive_int, default=20, metavar="N", help="how many (default: 20)")
    p.set_defaults(func=cmd_dead_letters)

    p = sub.add_parser(
        "config",
        help="print the configuration a command would use, as YAML",
        description="Load the defaults, --config FILE (or $RTREC_CONFIG), $RTREC_BOOTSTRAP_SERVERS and --set "
        "overrides, check them, and print the result as YAML; exit status 2 and one line naming the setting "
        "if something is wrong.",
    )
    config_arguments(p)
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("demo", help="replay MovieLens-100K through the job and summarise (make demo)", description="Reset the demo.* topics, replay MovieLens-100K, run the job until it has consumed the replay, and print what came out.")
    config_arguments(p)
    p.add_argument("--limit", type=positive_int, metavar="N", help="replay only the first N ratings (default: all)")
    p.set_defaults(func=cmd_demo)
    return ap


class _OncePerMessage(logging.Filter):
    """Lets each distinct librdkafka message through once (the client's name and the connection attempt's
    timing, "(after 2ms in state CONNECT)", left out of the comparison): a broker that goes away
    mid-command is one line, not one every few milliseconds."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = re.sub(r"\[rdkafka#\w+-\d+\] |\(after \d+ms in state \w+\)", "", record.getMessage())
        if "Coordinator load in progress: retrying" in text:
            # A fresh broker loading its transaction log: the producer retries and goes on (the first
            # replay into a new broker printed "Failed to acquire idempotence PID ...").
            return False
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


class _Stderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a message comes (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


_ONCE = _OncePerMessage()


def _kafka_log_to_stderr() -> None:
    """librdkafka's messages (rtrec.topics.KAFKA_LOG) on stderr, each distinct one once per command."""
    from rtrec.topics import KAFKA_LOG

    _ONCE.seen.clear()
    if not any(_ONCE in h.filters for h in KAFKA_LOG.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("rtrec: kafka: %(message)s"))
        handler.addFilter(_ONCE)
        KAFKA_LOG.addHandler(handler)
    KAFKA_LOG.setLevel(logging.WARNING)
    KAFKA_LOG.propagate = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _kafka_log_to_stderr()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # errors at the edge: one line that names the fix
        from rtrec.datasets import DatasetError
        from rtrec.evaluation import EvalError
        from rtrec.replay import ReplayError
        from rtrec.sources import SourceError
        from rtrec.store import StoreError
        from rtrec.topics import BrokerUnavailable, KafkaAccessDenied, TopicError

        known = (ConfigError | BrokerUnavailable | KafkaAccessDenied | TopicError | DatasetError | SourceError
                 | StoreError | EvalError | ReplayError)
        if isinstance(e, known) or type(e).__name__ == "SetupError":
            print(f"rtrec: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
