"""How far is the fused AUC from 0.78, and what would close it? Offline, on MovieLens-100K in time order.

    .venv/bin/python benchmarks/auc_headroom.py [--seeds 7 8 9 10] [--lag 1000] [--shrink 20 100 300]

P12 asks for a fused AUC (rating >= 4) of 0.78 through the job; the job gives
0.7757. This script measures, on the job's own per-batch core
(rtrec.core.local.LocalPipeline, text off, as model_quality_offline.py):

- ``seeds``: the same pipeline at other values of ``model.seed`` (MF's
  initial vectors and the ranker's weights), each alone and their fused
  predictions averaged: how much of the gap is one seed's luck, and what an
  ensemble of whole model sets would give;
- ``neighbourhoods``: what item-item and user-user neighbourhoods over the
  fused prediction's own residuals add to it, the residual of an example
  known ``--lag`` examples after it (a merged table's delay): the
  similarity of two items (users) is the cosine of the residuals of the
  users (items) they share, shrunk by ``n / (n + shrink)`` with ``n`` the
  residuals' sum of squares; the prediction adds ``weight`` times the
  similarity-weighted mean residual of the user's last 200 items (of the
  item's raters). benchmarks/candidate_models.py measured the item-item one
  over MF's residuals as a fusion input before the per-user attribute
  correction (models.affinity) existed (+0.003 AUC then).

Writes benchmarks/results/auc_headroom.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_results  # noqa: E402
from benchmarks.model_quality_offline import simulate  # noqa: E402
from rtrec.config import load_config  # noqa: E402
from rtrec.datasets import movielens_events  # noqa: E402
from rtrec.metrics import auc, mae  # noqa: E402

RECENT = 200  # the user's last items (the item's last raters) a neighbourhood reads
KEPT = 1000  # at most this many items per user and raters per item are kept


@numba.njit(cache=True)
def _pair(s, a, b, i, j, r, rj):
    """Two entities (items, or users) ``i`` and ``j`` shared a rater (an item) with residuals ``r``, ``rj``:
    add to their cosine's sums, both ways round."""
    s[i, j] += r * rj
    s[j, i] += r * rj
    a[i, j] += r * r
    a[j, i] += rj * rj
    b[i, j] += rj * rj
    b[j, i] += r * r


@numba.njit(cache=True)
def _mean(s, a, b, i, others, residuals, count, shrink):
    """The shrunk-cosine-weighted mean residual of ``i``'s neighbours among the last RECENT of ``others``."""
    num, den = 0.0, 0.0
    for k in range(max(0, count - RECENT), count):
        j = others[k]
        if a[i, j] > 0:
            sim = s[i, j] / math.sqrt(a[i, j] * b[i, j] + 1e-12) * a[i, j] / (a[i, j] + shrink)
            num += sim * residuals[k]
            den += abs(sim)
    return num / (den + 1.0)


@numba.njit(cache=True)
def neighbourhoods(user, item, residual, n_users, n_items, shrink, lag):
    """Per example, before its residual is known: the item-item and the user-user neighbourhood's mean
    residual (see the module docstring); residuals join the tables ``lag`` examples at a time."""
    n = len(user)
    s_ii, a_ii, b_ii = np.zeros((n_items, n_items)), np.zeros((n_items, n_items)), np.zeros((n_items, n_items))
    s_uu, a_uu, b_uu = np.zeros((n_users, n_users)), np.zeros((n_users, n_users)), np.zeros((n_users, n_users))
    items_of, item_res, n_of = np.full((n_users, KEPT), -1), np.zeros((n_users, KEPT)), np.zeros(n_users, np.int64)
    raters, rater_res, n_raters = np.full((n_items, KEPT), -1), np.zeros((n_items, KEPT)), np.zeros(n_items, np.int64)
    by_item, by_user = np.zeros(n), np.zeros(n)
    learned = 0
    for k in range(n):
        if k - learned >= lag:
            for m in range(learned, k):
                u, i, r = user[m], item[m], residual[m]
                for t in range(n_of[u]):
                    _pair(s_ii, a_ii, b_ii, i, items_of[u, t], r, item_res[u, t])
                for t in range(n_raters[i]):
                    _pair(s_uu, a_uu, b_uu, u, raters[i, t], r, rater_res[i, t])
                if n_of[u] < KEPT:
                    items_of[u, n_of[u]], item_res[u, n_of[u]] = i, r
                    n_of[u] += 1
                if n_raters[i] < KEPT:
                    raters[i, n_raters[i]], rater_res[i, n_raters[i]] = u, r
                    n_raters[i] += 1
            learned = k
        u, i = user[k], item[k]
        by_item[k] = _mean(s_ii, a_ii, b_ii, i, items_of[u], item_res[u], n_of[u], shrink)
        by_user[k] = _mean(s_uu, a_uu, b_uu, u, raters[i], rater_res[i], n_raters[i], shrink)
    return by_item, by_user


def figures(pred: np.ndarray, y: np.ndarray) -> dict:
    """MAE and AUC (rating >= 4), whole stream and second half."""
    half = len(y) // 2
    pos = (y >= 4).astype(int)
    return {"mae": round(mae(pred.tolist(), y.tolist()), 4), "auc": round(auc(pred.tolist(), pos.tolist()), 4),
            "auc_second_half": round(auc(pred[half:].tolist(), pos[half:].tolist()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 8, 9, 10], help="model.seed values (7: the job's)")
    ap.add_argument("--lag", type=int, default=1000, help="examples before a residual joins the tables")
    ap.add_argument("--shrink", type=float, nargs="+", default=[20.0, 100.0, 300.0])
    ap.add_argument("--weights", type=float, nargs="+", default=[0.5, 1.0])
    args = ap.parse_args()
    events = movielens_events()
    fused, y, user, item = {}, None, None, None
    for seed in args.seeds:
        t = time.perf_counter()
        p = simulate(load_config(overrides=["text.enabled=false", f"model.seed={seed}"]), events).predictions
        rows = [i for i, kind in enumerate(p.type) if kind == "rating"]
        fused[seed] = np.array([p.fused[i] for i in rows])
        if y is None:
            y = np.array([p.label[i] for i in rows])
            ids: dict[str, int] = {}
            user = np.array([ids.setdefault(p.user_id[i], len(ids)) for i in rows])
            ids = {}
            item = np.array([ids.setdefault(p.item_id[i], len(ids)) for i in rows])
        print(f"seed {seed}: {figures(fused[seed], y)} ({time.perf_counter() - t:.1f} s)")
    out: dict = {"seeds": {str(s): figures(f, y) for s, f in fused.items()}, "averaged": {}}
    for n in range(2, len(args.seeds) + 1):
        avg = np.mean([fused[s] for s in args.seeds[:n]], axis=0)
        out["averaged"][f"first {n} seeds"] = figures(avg, y)
        print(f"fused averaged over seeds {args.seeds[:n]}: {out['averaged'][f'first {n} seeds']}")
    base = fused[args.seeds[0]]
    out["neighbourhoods"] = {"of seed": args.seeds[0], "lag": args.lag, "fused": figures(base, y)}
    for shrink in args.shrink:
        by_item, by_user = neighbourhoods(user, item, y - base, int(user.max()) + 1, int(item.max()) + 1,
                                          shrink, args.lag)
        for w in args.weights:
            for name, add in (("item-item", w * by_item), ("user-user", w * by_user),
                              ("both", w * (by_item + by_user) / 2)):
                key = f"{name} shrink={shrink:g} weight={w:g}"
                out["neighbourhoods"][key] = figures(np.clip(base + add, 1.0, 5.0), y)
                print(f"{key}: {out['neighbourhoods'][key]}")
    print(write_results("auc_headroom", {"command": "python " + " ".join(sys.argv), "settings": ["text.enabled=false"],
                                         "examples": len(y), **out}))


if __name__ == "__main__":
    main()
