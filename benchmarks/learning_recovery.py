"""Learning across failures: prequential quality with three injected failures vs none, and broadcast lag.

    .venv/bin/python benchmarks/learning_recovery.py [--fail-after 10000] [--times 3]

MovieLens-100K is replayed into the events topic first and the job then runs
bounded over it at parallelism 2, so it works through a 100,000-event
backlog (as after any outage). Twice, on topics of their own: once
uninterrupted, once with the UserStage failing ``--times`` times, each after
``--fail-after`` records since the job (re)started and a completed checkpoint
(faults.*). No warm start: after a failure only the checkpoint holds the model.

Per run: MAE of every model and the fusion over every rating, from the
``predictions`` topic (read_committed; the test of the same promise is
tests/integration/test_movielens_run.py), events/s, and the broadcast lag
from a version's creation by the merger to each scorer using it
(``model.broadcast_log``). Writes benchmarks/results/learning_recovery.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from benchmarks.common import RESULTS, fresh, run_job_and_time, write_results  # noqa: E402
from benchmarks.model_quality import percentile  # noqa: E402
from rtrec import topics  # noqa: E402
from rtrec.datasets import movielens_events  # noqa: E402
from rtrec.metrics import mae  # noqa: E402
from udfs.faults import fired_count  # noqa: E402

MODELS = ("mf", "ftrl", "ranker", "fused")


def one_run(name: str, events, faults: list[str]) -> dict:
    log = RESULTS.parent / "out" / f"broadcast-{name}-{int(time.time())}.csv"
    log.parent.mkdir(parents=True, exist_ok=True)
    cfg = fresh(f"bench.learning.{name}.", ["flink.parallelism=2", "model.warm_start=false",
                                            f"model.broadcast_log={log}", *faults])
    cfg.flink.checkpoint_dir = str(RESULTS.parent / "out" / f"{cfg.flink.job_name}-checkpoints")
    cfg.flink.options.update({"restart-strategy.type": "fixed-delay", "restart-strategy.fixed-delay.attempts": "10",
                              "restart-strategy.fixed-delay.delay": "1 s"})
    timing = run_job_and_time(cfg, events, 1, cfg.kafka.predictions_topic)
    ratings = [p for p in (orjson.loads(m.value()) for m in topics.read_topic(cfg.kafka, cfg.kafka.predictions_topic))
               if p["type"] == "rating"]
    truth = [p["label"] for p in ratings]
    quality = {m: round(mae([p["fused"] if m == "fused" else p["scores"][m] for p in ratings], truth), 4)
               for m in MODELS}
    applied = [line.split(",") for line in log.read_text().split()]
    lags = [int(a[3]) - int(a[2]) for a in applied if a[4] == "broadcast"]
    marker = cfg.resolve_path(cfg.flink.checkpoint_dir) / "fault-user-stage.fired"
    return {
        "mae": quality,
        "failures": fired_count(marker),
        "events_per_s_job_runtime": timing["events_per_s_job_runtime"],
        "versions_applied": len(applied),
        "versions_restored": sum(a[4] == "restored" for a in applied),
        "broadcast_lag_ms": {"p50": percentile(lags, 0.5), "p99": percentile(lags, 0.99), "max": max(lags)},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fail-after", type=int, default=10_000)
    ap.add_argument("--times", type=int, default=3)
    args = ap.parse_args()
    events = movielens_events()
    runs = {
        "uninterrupted": one_run("ref", events, []),
        "with_failures": one_run("faults", events, ["faults.operator=user-stage",
                                                    f"faults.after_records={args.fail_after}",
                                                    f"faults.times={args.times}"]),
    }
    difference = {m: round(runs["with_failures"]["mae"][m] - runs["uninterrupted"]["mae"][m], 4) for m in MODELS}
    for name, r in runs.items():
        print(f"{name:14} MAE " + " ".join(f"{m} {r['mae'][m]:.4f}" for m in MODELS)
              + f"  failures {r['failures']}  {r['events_per_s_job_runtime']} events/s  broadcast lag "
              f"p50 {r['broadcast_lag_ms']['p50']} ms, max {r['broadcast_lag_ms']['max']} ms")
    print("MAE with failures minus uninterrupted: " + " ".join(f"{m} {d:+.4f}" for m, d in difference.items()))
    path = write_results("learning_recovery", {
        "command": "python benchmarks/learning_recovery.py " + " ".join(sys.argv[1:]),
        "setup": {"events": len(events), "parallelism": 2, "fail_after": args.fail_after, "times": args.times},
        **runs,
        "mae_difference": difference,
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
