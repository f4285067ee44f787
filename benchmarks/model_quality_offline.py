"""Prequential quality of the model set on MovieLens-100K without Flink or Kafka: a fast tuning loop.

    .venv/bin/python benchmarks/model_quality_offline.py [--set model.dim=16 ...] [--window 4000 ...]
        [--parallelism 1 ...] [--results NAME]

Feeds the stream in time order through the same code the job runs
(rtrec.core.local.LocalPipeline: the user and item cores and the merger),
cut into micro-batches as the job cuts them (``window`` events per batch
interval, split by user shard), with one trainer per subtask
(``--set flink.parallelism=2``: two, each given the shards Flink would give
it, merged once per window). The real figure comes from
benchmarks/model_quality.py, through Kafka and Flink.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_results  # noqa: E402
from rtrec.config import load_config  # noqa: E402
from rtrec.core.local import LocalPipeline  # noqa: E402
from rtrec.datasets import movielens_events  # noqa: E402
from rtrec.evaluation import Example, Recommendation, recall_at_k  # noqa: E402
from rtrec.metrics import auc, mae, rmse  # noqa: E402


def simulate(cfg, events, window: int = 4000, freeze_at: int | None = None, search=None) -> LocalPipeline:
    """The job's per-batch path (rtrec.core.local.LocalPipeline) over ``events``. ``freeze_at``: from this
    event on, nothing learns any more (the frozen copy). ``search``: a models.search.SearchRanker, for the
    text features (the job sets one when text.enabled)."""
    return LocalPipeline(cfg, search=search).run(events, window, freeze_at)


def report(p, start: float = 0.0) -> dict:
    """MAE, RMSE and AUC (rating >= 4) per model and fused, and the like head's AUC, over the rating examples of predictions ``p``
    (from the share ``start`` of them on: 0.5, the second half)."""
    rows = [i for i, t in enumerate(p.type) if t == "rating"]
    rows = rows[int(len(rows) * start):]
    truth = [p.label[i] for i in rows]
    positive = [int(y >= 4) for y in truth]
    out = {}
    for name in [*p.scores, "fused"]:
        column = p.fused if name == "fused" else p.scores[name]
        pred = [column[i] for i in rows]
        out[name] = {"mae": round(mae(pred, truth), 4), "rmse": round(rmse(pred, truth), 4),
                     "auc": round(auc(pred, positive), 4)}
    if p.like:  # the like head's probability (models.like): AUC only
        out["like"] = {"auc": round(auc([p.like[i] for i in rows], positive), 4)}
    return out


def recall(run: LocalPipeline, k: int) -> dict:
    """recall@k of the top-k lists the run issued (rtrec.evaluation.recall_at_k: the newest list strictly before
    each positive: a rating >= 4 or a positive binary outcome), as ``rtrec eval`` computes it."""
    p = run.predictions
    positives = [e for e in (Example(p.ts[i], p.user_id[i], p.item_id[i], p.type[i], p.label[i], {})
                             for i in range(len(p))) if e.positive]
    r = recall_at_k((Recommendation(x.event.ts, x.event.user_id, x.items) for x in run.recommendations), positives, k)
    return {"k": k, "recall": round(r.recall, 4), "hits": r.hits, "positives_with_a_list": r.positives}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--window", type=int, nargs="+", default=[4000],
                    help="events per batch interval (several: one run each)")
    ap.add_argument("--parallelism", type=int, nargs="+", default=[1],
                    help="trainers (flink.parallelism; several: one run each)")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--results", help="also write benchmarks/results/RESULTS.json")
    args = ap.parse_args()
    events = movielens_events(args.limit)
    runs = {}
    for parallelism, window in ((p, w) for p in args.parallelism for w in args.window):
        cfg = load_config(overrides=[*args.set, f"flink.parallelism={parallelism}"])
        t = time.perf_counter()
        run = simulate(cfg, events, window)
        dt = time.perf_counter() - t
        print(f"parallelism {parallelism}, window {window:,}: {len(events):,} events in {dt:.1f} s ({len(events) / dt:,.0f}/s), "
              f"versions {run.merger.version}, rollbacks {run.merger.rollbacks}, "
              f"fusion {run.learner.models.fusion.weights()}")
        whole, second = report(run.predictions), report(run.predictions, 0.5)
        print(f"  {'':<8} {'whole stream':<35} second half")
        for name, m in whole.items():
            h = second[name]
            print(f"  {name:<8} MAE {m['mae']:.4f}  RMSE {m['rmse']:.4f}  AUC {m['auc']:.4f}   "
                  f"MAE {h['mae']:.4f}  RMSE {h['rmse']:.4f}  AUC {h['auc']:.4f}")
        rec = recall(run, cfg.model.top_k)
        print(f"  recall@{rec['k']} {rec['recall']:.4f} ({rec['hits']:,} of {rec['positives_with_a_list']:,} positives)")
        runs[f"parallelism {parallelism}, window {window}"] = {"versions": run.merger.version, "whole_stream": whole,
                                                               "second_half": second, "recall": rec}
    if args.results:
        print(write_results(args.results, {"command": "python " + " ".join(sys.argv), "settings": args.set,
                                           "events": len(events), "runs": runs}))


if __name__ == "__main__":
    main()
