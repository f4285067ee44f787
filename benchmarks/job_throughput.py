"""Events/s of the whole job, Kafka -> Flink -> Kafka exactly-once, on a backlog, next to Java-only Flink.

    .venv/bin/python benchmarks/job_throughput.py [--repeat 3] [--runs java features learning[,KEY=VALUE...] ...]

Replays MovieLens-100K ``repeat`` times (each copy a year later with fresh
event ids: 300,000 events by default) into one events topic, then runs, in
this invocation and on that same topic:

- ``java``: a Flink SQL job with no Python in it that reads the topic, parses
  each record's JSON (``JSON_VALUE``) and writes it to another topic
  exactly-once: the floor Flink itself sets on this machine;
- ``features``: rtrec with models off (``model.enabled=false``), a feature
  snapshot after every event; ``features-batch``: the same with one snapshot
  per entity and micro-batch, as it ships;
- ``learning``: rtrec as it ships: learning and text on;
- ``learning-p2``: the same at parallelism 2 on the MiniCluster (both
  subtasks in its one interpreter); ``learning-2tm``: at parallelism 2 on a
  standalone cluster of two single-slot TaskManagers (two JVMs, two
  interpreters); either with ``,flink.options.python.execution-mode=process``:
  one Python process per subtask instead of the embedded interpreter.

``--stream sparse`` replays instead a synthetic stream of ``60,000 x repeat``
events over 50,000 users, one second of event time apart (views, impressions,
clicks, carts, ratings and purchases: benchmarks.common.sparse_events), so that
most users have one event per batch and impressions' attribution windows
close all along it: their negatives, from the UserStage's timers, are learned
as the job goes. Its rtrec runs are timed to the bounded job's end (the number
of predictions is not known beforehand). Writes job_throughput_sparse.json.

Each rtrec run is timed from its committed outputs: the predictions topic
(one record per rating) with learning, the features topic with
``features.snapshots=event`` (two records per event) without. Every figure is
printed next to the Java pass's as a ratio. Writes
benchmarks/results/job_throughput.json (``--results NAME``: NAME.json).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import (  # noqa: E402
    OutputClock,
    fresh,
    movielens_times,
    run_job_and_time,
    sparse_events,
    write_results,
)
from rtrec import topics  # noqa: E402
from rtrec.config import RtrecConfig  # noqa: E402
from rtrec.replay import replay  # noqa: E402

#: run name -> (settings over the defaults, TaskManagers of a standalone cluster: 0 = rtrec run's MiniCluster)
RUNS: dict[str, tuple[list[str], int]] = {
    "features": (["model.enabled=false", "features.snapshots=event"], 0),
    # As it ships: one feature snapshot per entity and micro-batch (timed to the bounded job's end).
    "features-batch": (["model.enabled=false"], 0),
    "learning": ([], 0),
    "learning-p2": (["flink.parallelism=2"], 0),
    # Two TaskManagers with one slot each: two JVMs, so two embedded interpreters.
    "learning-2tm": (["flink.parallelism=2"], 2),
    "features-2tm": (["model.enabled=false", "features.snapshots=event", "flink.parallelism=2"], 2),
}
CLUSTER = ROOT / "deploy" / "flink" / "bin" / "cluster.sh"

JAVA_PASS = """
import sys
from rtrec.config import load_config
from jobs import kafka_tables
from jobs.environment import create_environments

cfg = load_config(sys.argv[1])
env, t_env = create_environments(cfg)
kafka_tables.register_event_source(t_env, cfg)
options = kafka_tables._sink_options(cfg, cfg.kafka.features_topic, "java-pass")
t_env.execute_sql("CREATE TEMPORARY TABLE pass_sink (k STRING, v STRING) WITH (" + kafka_tables._with(options) + ")")
t_env.execute_sql(\"\"\"INSERT INTO pass_sink
SELECT JSON_VALUE(CAST(`value` AS STRING), '$.user_id'),
       CONCAT(JSON_VALUE(CAST(`value` AS STRING), '$.event_id'), ' ', CAST(`value` AS STRING))
FROM rtrec_events\"\"\").wait()
"""


def java_pass(cfg: RtrecConfig, events: int, timeout_s: float = 900) -> dict:
    """The Java-only Flink SQL job over the events topic; timed from its committed outputs like rtrec."""
    import yaml

    clock = OutputClock(cfg, cfg.kafka.features_topic)
    config_file = Path(__file__).resolve().parent / "out" / f"{cfg.flink.job_name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", JAVA_PASS, str(config_file)], cwd=Path(__file__).resolve().parents[1],
                          capture_output=True, text=True, timeout=timeout_s)
    end = time.perf_counter()
    clock.wait_for(events, 30)
    clock.close()
    committed = topics.count_committed(cfg.kafka, cfg.kafka.features_topic)
    if proc.returncode != 0 or committed != events:
        raise RuntimeError(f"the Java pass wrote {committed} of {events}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    first = clock.times[0][0]
    t10, t90, t100 = (clock.time_at(f, events) for f in (0.1, 0.9, 1.0))
    return {"events": events, "wall_s_with_startup": round(end - start, 2),
            "events_per_s_first_to_last_output": round(events / (t100 - first), 1),
            "events_per_s_steady_10_90": round(0.8 * events / (t90 - t10), 1)}


def on_cluster(cfg: RtrecConfig, events: list, per_event: int | None, topic: str, taskmanagers: int,
               timeout_s: float = 900) -> dict:
    """The job on a fresh standalone cluster of ``taskmanagers`` TaskManagers with one slot each
    (deploy/flink/bin/cluster.sh), timed from its committed outputs like run_job_and_time."""
    import os
    import socket

    import yaml

    from rtrec.flink_rest import FlinkRest

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "FLINK_REST_PORT": str(port), "TASK_SLOTS": "1",
           "RTREC_CLUSTER_DIR": str(ROOT / "var" / f"bench-cluster-{port}")}

    def sh(*args: str) -> str:
        proc = subprocess.run([str(CLUSTER), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return proc.stdout

    if per_event is None:
        raise ValueError("a run on a cluster is timed by a known number of outputs: features.snapshots=event")
    replay(events, cfg.kafka, total=len(events), progress=False)
    expected = per_event * len(events)
    config_file = ROOT / "benchmarks" / "out" / f"{cfg.flink.job_name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    cfg.flink.bounded = False  # (submitted detached: the benchmark cancels it once the outputs are in)
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    sh("up", str(taskmanagers))
    try:
        clock = OutputClock(cfg, topic)
        start = time.perf_counter()
        sh("submit", "--config", str(config_file))
        ok = clock.wait_for(expected, timeout_s)
        end = time.perf_counter()
        clock.close()
        rest = FlinkRest(f"http://localhost:{port}")
        placement = {tm["id"]: tm["slotsNumber"] - tm["freeSlots"] for tm in rest.get("/taskmanagers")["taskmanagers"]}
        for job in rest.running_jobs():
            rest.cancel(job["jid"])
    finally:
        sh("down")
    if not ok:
        raise RuntimeError(f"the job on the cluster wrote {clock.count} of {expected} records in {timeout_s} s")
    first = clock.times[0][0]
    t10, t90, t100 = (clock.time_at(f, expected) for f in (0.1, 0.9, 1.0))
    return {"events": len(events), "taskmanagers": taskmanagers, "slots_used_per_taskmanager": placement,
            "wall_s_with_startup": round(end - start, 2), "first_output_after_s": round(first - start, 2),
            "events_per_s_first_to_last_output": round(len(events) / (t100 - first), 1),
            "events_per_s_steady_10_90": round(0.8 * len(events) / (t90 - t10), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--runs", nargs="+", default=["java", "features", "learning"],
                    help=f"each java or NAME[,KEY=VALUE...]: a run of {', '.join(RUNS)} with settings over its own "
                         "(e.g. learning,flink.shards=2)")
    ap.add_argument("--stream", choices=["movielens", "sparse"], default="movielens",
                    help="MovieLens-100K repeat times, or the synthetic sparse stream (see above)")
    ap.add_argument("--results", default=None,
                    help="the results file's name under benchmarks/results/ (default job_throughput, or "
                         "job_throughput_sparse; job_throughput_interpreters: the README's interpreter comparison)")
    args = ap.parse_args()
    sparse = args.stream == "sparse"
    results_name = args.results or ("job_throughput_sparse" if sparse else "job_throughput")
    for run in args.runs:
        if run != "java" and run.split(",")[0] not in RUNS:
            ap.error(f"unknown run {run.split(',')[0]!r}: java or one of {', '.join(RUNS)}")
    events = sparse_events(50_000, 60_000 * args.repeat, gap_ms=1000) if sparse else movielens_times(args.repeat)
    results: dict[str, dict] = {}
    if "java" in args.runs:
        cfg = fresh("bench.java.", ["model.enabled=false"])
        replay(events, cfg.kafka, total=len(events), progress=False)
        results["java"] = java_pass(cfg, len(events))
        print("java", results["java"], flush=True)
    for name in args.runs:
        if name == "java":
            continue
        base, *extra = name.split(",")
        overrides, taskmanagers = RUNS[base]
        overrides = [*overrides, *extra]
        cfg = fresh(f"bench.job.{base}.", overrides)
        per_event, topic = ((2 if cfg.features.snapshots == "event" else None, cfg.kafka.features_topic)
                            if not cfg.model.enabled else (None if sparse else 1, cfg.kafka.predictions_topic))
        if taskmanagers:
            result = on_cluster(cfg, events, per_event, topic, taskmanagers)
        else:
            result = run_job_and_time(cfg, events, per_event, topic)
        result.update(parallelism=cfg.flink.parallelism, settings=overrides)
        if "java" in results and result["events_per_s_steady_10_90"]:
            result["ratio_to_java_steady"] = round(
                result["events_per_s_steady_10_90"] / results["java"]["events_per_s_steady_10_90"], 3)
        results[name] = result
        print(name, result, flush=True)
    payload = {
        "command": "python benchmarks/job_throughput.py " + " ".join(sys.argv[1:]),
        "stream": args.stream,
        "events": len(events),
        "goal_events_per_s": {"learning": 10_000, "features": 30_000},
        "runs": results,
    }
    print(write_results(results_name, payload))


if __name__ == "__main__":
    main()
