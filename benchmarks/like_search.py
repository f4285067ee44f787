"""Choose the like head (models.like) on the FIRST half of MovieLens-100K; report both halves.

    .venv/bin/python benchmarks/like_search.py [--set KEY=VALUE ...]

The like head comes after everything else: nothing it learns feeds back into
the models, the blend or the correction. So one run of the job's core
(LocalPipeline, 4,000-event batch intervals, text off, head off) gives the
fused rating of every example, and each setting then runs the job's own
LikeHead.pass_ over them, example by example in time order (held-out examples
predicted, not learned, as in the job): the probabilities the job gives with
that setting. Settings are ranked by the first half's AUC (rating >= 4); the
second half is never looked at while choosing. The chosen setting is then also
run without user attributes (model.user_attributes ""), to show what they add.
Writes benchmarks/results/like_search.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_results  # noqa: E402
from benchmarks.fusion_variants import RatingExamples  # noqa: E402
from models.affinity import ItemAttributes  # noqa: E402
from models.like import STATS, LikeHead  # noqa: E402
from models.params import ParameterSet  # noqa: E402
from rtrec.config import ModelConfig, load_config  # noqa: E402
from rtrec.features.model_inputs import id_code  # noqa: E402
from rtrec.metrics import auc  # noqa: E402

GRID = {
    "like_threshold": (3.5, 3.8, 4.1),
    "like_prior": (5.0, 20.0, 50.0),
    "like_alpha": (0.03, 0.05, 0.08, 0.12),
    "like_recent": (0.5, 0.7, 0.9),
}


def probabilities(cfg: ModelConfig, r: RatingExamples, upto: int) -> np.ndarray:
    """The like head's probabilities of the first ``upto`` examples with the settings of ``cfg``."""
    head = LikeHead(cfg, ParameterSet())
    ids = list(dict.fromkeys(r.items[:upto]))
    row = {i: k for k, i in enumerate(ids)}
    users = {u: k for k, u in enumerate(dict.fromkeys(r.users[:upto]))}
    stats = np.zeros((len(users), STATS), np.float64)
    user_ids = r.users[:upto]
    y = r.y[:upto].astype(np.float64)
    return head.pass_(stats, np.array([users[u] for u in user_ids], np.int64), list(users),
                      np.array([id_code(u) for u in user_ids], np.int64),
                      np.array([id_code(i) for i in ids], np.int64),
                      np.array([row[i] for i in r.items[:upto]], np.int64), ItemAttributes(cfg).update(ids),
                      r.fused[:upto], y, y >= 4, r.ts[:upto].astype(np.int64), np.ones(upto, np.bool_),
                      r.learn[:upto])


def figures(r: RatingExamples, p: np.ndarray) -> dict:
    """AUC (rating >= 4) of ``p`` over all examples, the first half and the second."""
    positive, half = (r.y >= 4).astype(int), len(r.y) // 2
    return {"auc": round(auc(p.tolist(), positive.tolist()), 4),
            "auc_first_half": round(auc(p[:half].tolist(), positive[:half].tolist()), 4),
            "auc_second_half": round(auc(p[half:].tolist(), positive[half:].tolist()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    cfg = load_config(overrides=["text.enabled=false", *args.set])
    t0 = time.perf_counter()
    r = RatingExamples.of_job(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, like_bits=0)))
    half = len(r.y) // 2
    print(f"fused ratings of {len(r.y):,} examples in {time.perf_counter() - t0:.0f} s: {figures(r, r.fused)}",
          flush=True)
    trials = []
    for values in itertools.product(*GRID.values()):
        setting = dict(zip(GRID, values, strict=True))
        c = dataclasses.replace(cfg.model, **setting)
        first = auc(probabilities(c, r, half).tolist(), (r.y[:half] >= 4).astype(int).tolist())
        trials.append({**setting, "first_half_auc": round(first, 4)})
        print(f"{setting}: first-half AUC {first:.4f}", flush=True)
    best = max(trials, key=lambda t: t["first_half_auc"])
    setting = {k: best[k] for k in GRID}
    chosen = dataclasses.replace(cfg.model, **setting)
    whole = figures(r, probabilities(chosen, r, len(r.y)))
    without_users = figures(r, probabilities(dataclasses.replace(chosen, user_attributes=""), r, len(r.y)))
    print(f"chosen {setting}: the like head {whole}; without user attributes {without_users}; "
          f"the fused rating {figures(r, r.fused)}")
    write_results("like_search", {
        "examples": len(r.y), "searched_on": "first half", "grid": GRID, "trials": trials, "chosen": setting,
        "like": whole, "like_without_user_attributes": without_users, "fused_rating": figures(r, r.fused),
        "command": "python benchmarks/like_search.py " + " ".join(f"--set {s}" for s in args.set),
    })


if __name__ == "__main__":
    main()
