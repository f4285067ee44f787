"""Prequential quality of the model set on MovieLens-100K without Flink or Kafka: a fast tuning loop.

    .venv/bin/python benchmarks/model_quality_offline.py [--set model.dim=16 ...] [--window 4000]

Feeds the stream in time order through the same code the job runs
(models.online.OnlineLearner, models.merger.MergerCore, the feature engine),
cut into micro-batches as the job cuts them (``window`` events per batch
interval, split by user shard), with one trainer. The real figure comes from
benchmarks/model_quality.py, through Kafka and Flink.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.merger import MergerCore  # noqa: E402
from models.online import Inputs, OnlineLearner  # noqa: E402
from rtrec.config import load_config  # noqa: E402
from rtrec.datasets import movielens_events  # noqa: E402
from rtrec.features.definitions import ITEM_FEATURES, USER_FEATURES  # noqa: E402
from rtrec.features.engine import FeatureEngine  # noqa: E402
from rtrec.features.model_inputs import ItemInputs, UserInputs, id_code  # noqa: E402
from rtrec.metrics import auc, mae, rmse  # noqa: E402
from rtrec.sharding import shard_of  # noqa: E402


def simulate(cfg, events, window: int = 4000, shards: int = 16, freeze_at: int | None = None, search=None):
    """``freeze_at``: from this event on, nothing learns any more (the frozen copy). ``search``: a
    models.search.SearchRanker, for the text features (the job sets one when text.enabled)."""
    learner = OnlineLearner(cfg.model, 0)
    learner.search = search
    merger = MergerCore(cfg.model)
    users_f, items_f = FeatureEngine(USER_FEATURES), FeatureEngine(ITEM_FEATURES)
    ui, ii = UserInputs(), ItemInputs()
    ustate, istate, umodel = {}, {}, {}
    examples = []
    for start in range(0, len(events), window):
        chunk = events[start : start + window]
        if freeze_at is not None and start >= freeze_at:
            learner.learning = False
        by_shard: dict[int, list] = {}
        for e in chunk:
            by_shard.setdefault(shard_of(e.user_id, shards), []).append(e)
        touched_items = {}
        for shard in sorted(by_shard):
            inputs, users = [], {}
            for e in by_shard[shard]:
                s = ustate.setdefault(e.user_id, users_f.new_state())
                dense, buckets = ui.dense(s, e.ts), ui.buckets(s)
                users_f.update(s, e)
                inputs.append(Inputs(e, dense, buckets, id_code(e.user_id), ui.dense(s, e.ts), ui.buckets(s)))
                users[e.user_id] = umodel.setdefault(e.user_id, learner.new_user(e.user_id))
            result = learner.process(inputs, users)
            examples.extend(result.examples)
            handed = learner.take_delta()
            if handed:
                merger.add_delta(learner.trainer_id, *handed)
        for e in chunk:  # the ItemStage, a batch behind
            s = istate.setdefault(e.item_id, items_f.new_state())
            items_f.update(s, e)
            touched_items[e.item_id] = ii.dense(s, e.ts)
        if learner.learning:
            merger.add_item_features(touched_items)
            learner.apply_version(merger.merge())
    return examples, learner, merger


def report(examples) -> dict:
    ratings = [x for x in examples if x.type == "rating"]
    truth = [x.label for x in ratings]
    positive = [int(x.label >= 4) for x in ratings]
    out = {}
    for name in [*ratings[0].scores, "fused"]:
        pred = [x.fused if name == "fused" else x.scores[name] for x in ratings]
        out[name] = {"mae": round(mae(pred, truth), 4), "rmse": round(rmse(pred, truth), 4),
                     "auc": round(auc(pred, positive), 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--window", type=int, default=4000)
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    cfg = load_config(overrides=args.set)
    events = movielens_events(args.limit)
    t = time.perf_counter()
    examples, learner, merger = simulate(cfg, events, args.window)
    dt = time.perf_counter() - t
    print(f"{len(events):,} events in {dt:.1f} s ({len(events) / dt:,.0f}/s), versions {merger.version}, "
          f"rollbacks {merger.rollbacks}, fusion {learner.models.fusion.weights()}")
    for name, m in report(examples).items():
        print(f"  {name:<8} MAE {m['mae']:.4f}  RMSE {m['rmse']:.4f}  AUC {m['auc']:.4f}")


if __name__ == "__main__":
    main()
