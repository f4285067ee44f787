"""Prequential quality, broadcast latency and throughput of the models, through Kafka and Flink.

    .venv/bin/python benchmarks/model_quality.py [--rate 1500] [--parallelism 1]

1. Quality and broadcast latency: the job runs unbounded (as in production)
   while MovieLens-100K is replayed into it at ``--rate`` events/s, in
   timestamp order (stable sort). Every rating is predicted by every model
   and the fusion before it is learned from; the metrics are computed from
   the ``predictions`` topic (read_committed): MAE, RMSE, and AUC of the
   predicted rating against rating >= 4; and the AUC and log-loss of the
   like head's probability (the records' ``like``, models.like), the job's
   answer to "rating >= 4?". Broadcast latency: from a merged
   version's creation in the ModelMerger to each scoring subtask using it
   (``model.broadcast_log``), p50 and p99.
2. Online vs frozen: the same stream through the same model code without
   Flink (benchmarks/model_quality_offline.py), once learning throughout and
   once frozen after the first half; both scored on the second half.
3. Throughput with learning on: the stream replayed first, then the job run
   bounded; events/s from the committed predictions, and the same quality
   figures over this backlog run, next to the rate-limited run's (goal: fused
   MAE within 0.003; a backlog cuts the stream into far larger batches).

Writes benchmarks/results/model_quality.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402
import yaml  # noqa: E402

from benchmarks.common import RESULTS, OutputClock, fresh, run_job_and_time, write_results  # noqa: E402
from benchmarks.model_quality_offline import report, simulate  # noqa: E402
from rtrec import topics  # noqa: E402
from rtrec.config import load_config  # noqa: E402
from rtrec.datasets import movielens_events  # noqa: E402
from rtrec.evaluation import Example, fusion_shares  # noqa: E402
from rtrec.flink_rest import FlinkRest  # noqa: E402
from rtrec.metrics import auc, log_loss, mae, rmse  # noqa: E402
from rtrec.records import read_record  # noqa: E402
from rtrec.replay import replay  # noqa: E402

RIVER_REFERENCE = {"BiasedMF": {"mae": 0.750, "auc": 0.764}, "Baseline": {"mae": 0.808}}


def percentile(values: list[int], q: float) -> int:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def prequential(predictions: list[dict]) -> dict:
    """MAE, RMSE and AUC (rating >= 4) per model and fused over the ratings of the predictions topic, and
    each model's share of the fused prediction (rtrec.evaluation.fusion_shares)."""
    ratings = [p for p in predictions if p["type"] == "rating"]
    truth = [p["label"] for p in ratings]
    positive = [int(p["label"] >= 4) for p in ratings]
    per_model: dict = {}
    for name in [*ratings[0]["scores"], "fused"]:
        pred = [p["fused"] if name == "fused" else p["scores"][name] for p in ratings]
        per_model[name] = {"mae": round(mae(pred, truth), 4), "rmse": round(rmse(pred, truth), 4),
                           "auc": round(auc(pred, positive), 4)}
    liked = [p for p in ratings if p.get("like") is not None]
    if liked:  # the like head's probability (models.like): AUC and log-loss only
        like, is_liked = [p["like"] for p in liked], [int(p["label"] >= 4) for p in liked]
        per_model["like"] = {"examples": len(liked), "auc": round(auc(like, is_liked), 4),
                             "log_loss": round(log_loss(like, is_liked), 4)}
    examples = [Example.from_record(p) for p in ratings]
    shares = fusion_shares(examples, list(ratings[0]["scores"])) or {}
    per_model["share_of_fused"] = {m: round(v, 3) for m, v in shares.items()}
    return per_model


def quality_through_flink(events, rate: float, parallelism: int, settings: list[str] = ()) -> dict:
    log = RESULTS.parent / "out" / f"broadcast-{int(time.time())}.csv"
    log.parent.mkdir(parents=True, exist_ok=True)
    cfg = fresh("bench.models.quality.", [*settings, f"flink.parallelism={parallelism}", f"model.broadcast_log={log}"])
    cfg.flink.bounded = False
    config_file = log.with_suffix(".yaml")
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = subprocess.Popen([sys.executable, "-m", "rtrec.cli", "run", "--config", str(config_file)],
                            cwd=RESULTS.parent.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        FlinkRest(f"http://127.0.0.1:{cfg.flink.rest_port}").job_id(cfg.flink.job_name, 120)
        clock = OutputClock(cfg, cfg.kafka.predictions_topic, interval_s=0.5)
        summary = replay(events, cfg.kafka, rate=rate, total=len(events))
        print(summary, flush=True)
        if not clock.wait_for(len(events), 600):
            raise RuntimeError(f"only {clock.count} of {len(events)} predictions after 600 s")
        clock.close()
        time.sleep(2 * cfg.flink.checkpoint_interval_ms / 1000)
        predictions = [read_record("predictions", m.value())
                       for m in topics.read_topic(cfg.kafka, cfg.kafka.predictions_topic)]
    finally:
        proc.terminate()
        proc.wait(60)
    per_model = prequential(predictions)
    applied = [line.split(",") for line in log.read_text().split()]
    latency = [int(a[3]) - int(a[2]) for a in applied]
    versions = {p["model_version"] for p in predictions}
    return {
        "replay_rate_events_per_s": rate,
        "parallelism": parallelism,
        "predictions": len(predictions),
        "distinct_event_ids": len({p["event_id"] for p in predictions}),
        "model_versions_seen_in_predictions": len(versions),
        "newest_version": max(versions),
        "prequential": per_model,
        "broadcast_latency_ms": {"adoptions": len(latency), "p50": percentile(latency, 0.5),
                                 "p99": percentile(latency, 0.99), "max": max(latency)},
    }


def online_vs_frozen(events) -> dict:
    cfg = load_config()
    half = len(events) // 2
    out = {}
    for name, freeze in (("online", None), ("frozen_after_first_half", half)):
        p = simulate(cfg, events, freeze_at=freeze).predictions
        out[name] = report(p.where([int(e.split("-")[1]) >= half for e in p.event_id]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=1500)
    ap.add_argument("--parallelism", type=int, default=1)
    ap.add_argument("--skip", nargs="*", default=[], choices=["quality", "frozen", "throughput"])
    ap.add_argument("--results", default="model_quality", help="the results file's name under benchmarks/results/")
    ap.add_argument("--set", action="append", default=[], help="settings for the job's runs (KEY=VALUE)")
    args = ap.parse_args()
    events = movielens_events()
    previous = RESULTS / f"{args.results}.json"
    # Parts skipped this time keep their last measured figures (each part records its own command).
    payload: dict = {k: v for k, v in json.loads(previous.read_text()).items()
                     if k in ("through_flink", "second_half_offline", "throughput")} if previous.exists() else {}
    command = "python benchmarks/model_quality.py " + " ".join(sys.argv[1:])
    payload |= {"command": command,
                     "goals": {"fused_mae_max": 0.74, "fused_auc_min": 0.78, "broadcast_p99_ms_max": 2000,
                               "events_per_s_min": 20_000, "backlog_vs_rate_limited_fused_mae_max_gap": 0.003},
                     "river_0_26_reference": RIVER_REFERENCE}
    if "quality" not in args.skip:
        payload["through_flink"] = quality_through_flink(events, args.rate, args.parallelism, args.set) | {
            "command": command}
        print(orjson.dumps(payload["through_flink"], option=orjson.OPT_INDENT_2).decode(), flush=True)
    if "frozen" not in args.skip:
        payload["second_half_offline"] = online_vs_frozen(events) | {"command": command}
        print(payload["second_half_offline"], flush=True)
    if "throughput" not in args.skip:
        cfg = fresh("bench.models.throughput.", [*args.set, f"flink.parallelism={args.parallelism}"])
        payload["throughput"] = run_job_and_time(cfg, events, 1, cfg.kafka.predictions_topic) | {"command": command}
        # The same stream as one backlog: micro-batches of hundreds of events rather than a few.
        backlog = prequential([read_record("predictions", m.value())
                               for m in topics.read_topic(cfg.kafka, cfg.kafka.predictions_topic)])
        payload["throughput"]["prequential_on_the_backlog"] = backlog
        if "through_flink" in payload:
            gap = backlog["fused"]["mae"] - payload["through_flink"]["prequential"]["fused"]["mae"]
            payload["backlog_minus_rate_limited_fused_mae"] = round(gap, 4)
        print(payload["throughput"], flush=True)
    print(write_results(args.results, payload))


if __name__ == "__main__":
    main()
