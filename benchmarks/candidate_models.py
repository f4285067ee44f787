"""Which new model would give the fusion information that MF lacks? Prequential candidates, offline.

    .venv/bin/python benchmarks/candidate_models.py [--limit N] [--set model.dim=16 ...]

Runs MovieLens-100K through rtrec.core.local.LocalPipeline (the job's per-batch
core, text off, 4,000-event batch intervals, as fusion_variants.py) for the job's
own predictions, then, over the same rating examples in the same order, each
predicted before it is learned from and held-out examples never learned:

- ``mf (study)`` and ``svd++ (study)``: one plain-SGD biased MF written here,
  without and with SVD++'s implicit factors (Koren, 2008): the user's vector
  plus ``|N|^-1/2`` times the sum of a second item table ``y`` over the
  user's last ``--recent`` rated items. Same rates, same order: their
  difference is what the implicit factors add, which is the question (this
  MF is not the job's, whose warm-up rates make it better on its own);
- ``knn residual``: an online item-item neighbourhood over the job's MF
  residuals: the similarity of two items is the shrunk cosine of the
  residuals of the users who rated both (updated as each rating arrives),
  and the prediction is the similarity-weighted mean residual of the user's
  last rated items; its shrinkage and how many of the user's items it reads
  are chosen on the first half of the stream only (``--shrink``,
  ``--knn-recent``: the grid);
- ``factor knn residual``: the same over residuals, but with the cosine of
  item factors (a biased MF learned alongside) as the similarity: no
  item-item tables to merge and broadcast, only the user's last items;
- ``factored residual``: the neighbourhood factored (Koren's asymmetric SVD
  on the MF's residuals): item tables of ``--factored-dim`` columns learned
  by SGD, which would fit the job's tables; in one online pass it learns
  nothing the MF has not (checked at several rates);
- ``user drift`` and ``item drift``: the MF plus the time-decayed mean of
  the user's (item's) own recent residuals, shrunk towards 0 (its half-life
  and shrinkage chosen on the first half): does the MF lag a user's mood or
  an item's moment? Barely (0.0005 MAE in the fusion, 2026-12-02);
- each fused with the job's three models by the job's fusion rule (the
  fading least squares of fusion_variants.py) as an extra input.

Reports MAE and AUC (rating >= 4), whole stream and second half, and writes
benchmarks/results/candidate_models.json. The neighbourhood's dense item-item
tables fit MovieLens' 1,682 items; a job would keep them sparse and hashed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numba
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_results  # noqa: E402
from benchmarks.fusion_variants import RatingExamples, fading_least_squares  # noqa: E402
from rtrec.config import load_config  # noqa: E402


@numba.njit(cache=True)
def svdpp_pass(user, item, y, learn, n_users, n_items, dim, recent, implicit, lr_b, lr_f, reg, lo, hi, seed):
    """Prequential biased MF (``implicit`` False) or SVD++ over the examples in order."""
    np.random.seed(seed)
    bu = np.zeros(n_users)
    bi = np.zeros(n_items)
    p = np.random.normal(0.0, 0.1, (n_users, dim))
    q = np.random.normal(0.0, 0.1, (n_items, dim))
    yj = np.zeros((n_items, dim))
    hist = -np.ones((n_users, recent), np.int64)  # ring of the user's last rated items
    hn = np.zeros(n_users, np.int64)
    mu_sum, mu_n = 0.0, 0
    out = np.empty(len(user))
    imp = np.zeros(dim)
    for k in range(len(user)):
        u, i = user[k], item[k]
        mu = mu_sum / mu_n if mu_n else (lo + hi) / 2
        m = min(hn[u], recent)
        imp[:] = 0.0
        if implicit and m > 0:
            for s in range(m):
                imp += yj[hist[u, s]]
            imp /= np.sqrt(m)
        pred = mu + bu[u] + bi[i] + np.dot(q[i], p[u] + imp)
        out[k] = min(max(pred, lo), hi)
        if learn[k]:
            e = y[k] - pred
            e = min(max(e, -1.5), 1.5)
            bu[u] += lr_b * (e - reg * bu[u])
            bi[i] += lr_b * (e - reg * bi[i])
            pu = p[u].copy()
            p[u] += lr_f * (e * q[i] - reg * p[u])
            if implicit and m > 0:
                g = e * q[i] / np.sqrt(m)
                for s in range(m):
                    j = hist[u, s]
                    yj[j] += lr_f * (g - reg * yj[j])
            q[i] += lr_f * (e * (pu + imp) - reg * q[i])
            mu_sum += y[k]
            mu_n += 1
        hist[u, hn[u] % recent] = i  # (held out too: the user did rate it)
        hn[u] += 1
    return out


@numba.njit(cache=True)
def knn_pass(user, item, resid, learn, n_users, n_items, recent, shrink, damp):
    """Prequential item-item neighbourhood over residuals: per example the similarity-weighted mean
    residual of the user's last ``recent`` items; then the example's residual joins the co-rating sums."""
    sxy = np.zeros((n_items, n_items))
    sxx = np.zeros((n_items, n_items))  # sum over co-raters of x_i^2 (row i, column j)
    cnt = np.zeros((n_items, n_items))
    hist = -np.ones((n_users, recent), np.int64)
    hres = np.zeros((n_users, recent))
    hn = np.zeros(n_users, np.int64)
    out = np.zeros(len(user))
    touched = 0
    for k in range(len(user)):
        u, i = user[k], item[k]
        m = min(hn[u], recent)
        num, den = 0.0, damp
        for s in range(m):
            j = hist[u, s]
            c = cnt[i, j]
            if c == 0:
                continue
            d = np.sqrt(sxx[i, j] * sxx[j, i])
            if d <= 0:
                continue
            sim = sxy[i, j] / d * c / (c + shrink)
            num += sim * hres[u, s]
            den += abs(sim)
        out[k] = num / den
        if learn[k]:
            r = resid[k]
            touched += 2 * m
            for s in range(m):
                j = hist[u, s]
                x = hres[u, s]
                sxy[i, j] += r * x
                sxy[j, i] += r * x
                sxx[i, j] += r * r
                sxx[j, i] += x * x
                cnt[i, j] += 1
                cnt[j, i] += 1
            slot = hn[u] % recent
            hist[u, slot] = i
            hres[u, slot] = r
            hn[u] += 1
    return out, touched, np.count_nonzero(cnt)


@numba.njit(cache=True)
def factor_knn_pass(user, item, y, resid, learn, n_users, n_items, dim, recent, power, lr_b, lr_f, reg, seed):
    """As :func:`knn_pass`, but the similarity of two items is the cosine of their factors in a biased MF
    learned alongside (no item-item tables: only the user's last items and residuals), raised to ``power``."""
    np.random.seed(seed)
    bu = np.zeros(n_users)
    bi = np.zeros(n_items)
    p = np.random.normal(0.0, 0.1, (n_users, dim))
    q = np.random.normal(0.0, 0.1, (n_items, dim))
    hist = -np.ones((n_users, recent), np.int64)
    hres = np.zeros((n_users, recent))
    hn = np.zeros(n_users, np.int64)
    mu_sum, mu_n = 0.0, 0
    out = np.zeros(len(user))
    for k in range(len(user)):
        u, i = user[k], item[k]
        m = min(hn[u], recent)
        num, den = 0.0, 1.0
        qi = q[i]
        ni = np.sqrt(np.dot(qi, qi)) + 1e-9
        for s in range(m):
            j = hist[u, s]
            qj = q[j]
            c = np.dot(qi, qj) / (ni * (np.sqrt(np.dot(qj, qj)) + 1e-9))
            if c <= 0:
                continue
            sim = c ** power
            num += sim * hres[u, s]
            den += sim
        out[k] = num / den
        mu = mu_sum / mu_n if mu_n else 3.0
        if learn[k]:
            e = y[k] - (mu + bu[u] + bi[i] + np.dot(q[i], p[u]))
            e = min(max(e, -1.5), 1.5)
            bu[u] += lr_b * (e - reg * bu[u])
            bi[i] += lr_b * (e - reg * bi[i])
            pu = p[u].copy()
            p[u] += lr_f * (e * q[i] - reg * p[u])
            q[i] += lr_f * (e * pu - reg * q[i])
            mu_sum += y[k]
            mu_n += 1
            slot = hn[u] % recent
            hist[u, slot] = i
            hres[u, slot] = resid[k]
            hn[u] += 1
    return out


@numba.njit(cache=True)
def factored_residual_pass(user, item, resid, learn, n_users, n_items, dim, recent, lr, reg, seed):
    """A factored neighbourhood over residuals (Koren's asymmetric SVD, on the MF's errors): the residual
    predicted as ``q_i . |N|^-1/2 sum_j e_uj x_j`` over the user's last ``recent`` rated items j with their
    residuals e_uj, learned by SGD; item tables of ``dim`` columns instead of item-item tables."""
    np.random.seed(seed)
    q = np.random.normal(0.0, 0.1, (n_items, dim))
    x = np.random.normal(0.0, 0.1, (n_items, dim))
    hist = -np.ones((n_users, recent), np.int64)
    hres = np.zeros((n_users, recent))
    hn = np.zeros(n_users, np.int64)
    out = np.zeros(len(user))
    z = np.zeros(dim)
    for k in range(len(user)):
        u, i = user[k], item[k]
        m = min(hn[u], recent)
        z[:] = 0.0
        if m > 0:
            for s in range(m):
                z += hres[u, s] * x[hist[u, s]]
            z /= np.sqrt(m)
        pred = np.dot(q[i], z)
        out[k] = pred
        if learn[k]:
            e = resid[k] - pred
            e = min(max(e, -1.5), 1.5)
            if m > 0:
                g = e * q[i] / np.sqrt(m)
                for s in range(m):
                    j = hist[u, s]
                    x[j] += lr * (hres[u, s] * g - reg * x[j])
            q[i] += lr * (e * z - reg * q[i])
            slot = hn[u] % recent
            hist[u, slot] = i
            hres[u, slot] = resid[k]
            hn[u] += 1
    return out


@numba.njit(cache=True)
def drift_pass(ent, ts, resid, learn, n, half_life, shrink):
    """Per example, the decayed mean of its entity's earlier residuals (learned examples only), shrunk by
    ``shrink`` pseudo-examples of residual 0; ``half_life`` 0: no decay."""
    s, w, last = np.zeros(n), np.zeros(n), np.full(n, -1.0)
    out = np.empty(len(ent))
    for k in range(len(ent)):
        u = ent[k]
        if last[u] >= 0 and half_life > 0:
            f = 0.5 ** (max(ts[k] - last[u], 0.0) / half_life)
            s[u] *= f
            w[u] *= f
        last[u] = max(last[u], ts[k])
        out[k] = s[u] / (w[u] + shrink)
        if learn[k]:
            s[u] += resid[k]
            w[u] += 1.0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--recent", type=int, default=50, help="the user's last N rated items (N(u))")
    ap.add_argument("--lr", type=float, nargs=2, default=(0.05, 0.02), metavar=("BIAS", "FACTORS"),
                    help="the study MF's and SVD++'s SGD rates")
    ap.add_argument("--factored-dim", type=int, default=16)
    ap.add_argument("--factored-lr", type=float, nargs="+", default=[0.005, 0.02])
    ap.add_argument("--shrink", type=float, nargs="+", default=[20.0, 100.0, 300.0],
                    help="the neighbourhood's similarity shrinkage (co-raters); several: searched")
    ap.add_argument("--knn-recent", type=int, nargs="+", default=[50, 100, 200],
                    help="the neighbourhood's last N rated items of the user; several: searched")
    args = ap.parse_args()
    cfg = load_config(overrides=["text.enabled=false", *args.set])
    r = RatingExamples.of_job(cfg, args.limit)
    y, scores, learn, figures = r.y, r.scores, r.learn, r.figures
    uid: dict[str, int] = {}
    iid: dict[str, int] = {}
    user = np.array([uid.setdefault(u, len(uid)) for u in r.users], np.int64)
    item = np.array([iid.setdefault(i, len(iid)) for i in r.items], np.int64)
    half = len(y) // 2
    lo, hi = cfg.model.rating_min, cfg.model.rating_max

    out = {m: figures(s) for m, s in scores.items()}
    out["job fused"] = figures(r.fused)
    timings = {}
    study = {}
    for name, implicit in (("mf (study)", False), ("svd++ (study)", True)):
        t = time.perf_counter()
        study[name] = svdpp_pass(user, item, y, learn, len(uid), len(iid), cfg.model.dim, args.recent, implicit,
                                 args.lr[0], args.lr[1], 0.02, lo, hi, 7)
        timings[name] = round(time.perf_counter() - t, 2)
        out[name] = figures(study[name])
    # The neighbourhood's settings: chosen by the MAE of MF + residual on the FIRST half only (prequential,
    # so the first half's figures never saw the second half), then reported on both.
    resid = y - scores["mf"]
    search = {}
    for shrink in args.shrink:
        for recent in args.knn_recent:
            first = knn_pass(user[:half], item[:half], resid[:half], learn[:half], len(uid), len(iid), recent,
                             shrink, 1.0)[0]
            search[f"shrink={shrink:g} recent={recent}"] = round(
                float(np.abs(np.clip(scores["mf"][:half] + first, lo, hi) - y[:half]).mean()), 4)
    chosen = min(search, key=search.get)
    shrink, recent = (float(v.split("=")[1]) for v in chosen.split())
    t = time.perf_counter()
    knn, touched, pairs = knn_pass(user, item, resid, learn, len(uid), len(iid), int(recent), shrink, 1.0)
    # What a job would have to merge and broadcast: pair rows updated per example, distinct pairs in the end.
    tables = {"pair_row_updates_per_example": round(touched / len(y), 1), "distinct_ordered_pairs": int(pairs),
              "items": len(iid)}
    print(f"neighbourhood tables: {tables}")
    timings["knn residual"] = round(time.perf_counter() - t, 2)
    out["mf + knn residual"] = figures(np.clip(scores["mf"] + knn, lo, hi))

    t = time.perf_counter()
    fknn = factor_knn_pass(user, item, y, resid, learn, len(uid), len(iid), cfg.model.dim, int(recent), 2.0,
                           args.lr[0], args.lr[1], 0.02, 7)
    timings["factor knn residual"] = round(time.perf_counter() - t, 2)
    out["mf + factor knn residual"] = figures(np.clip(scores["mf"] + fknn, lo, hi))

    for lr in args.factored_lr:
        t = time.perf_counter()
        fres = factored_residual_pass(user, item, resid, learn, len(uid), len(iid), args.factored_dim, int(recent), lr,
                                      0.02, 7)
        timings[f"factored residual lr={lr:g}"] = round(time.perf_counter() - t, 2)
        out[f"mf + factored residual lr={lr:g}"] = figures(np.clip(scores["mf"] + fres, lo, hi))

    hour = 3_600_000.0
    drifts, drift_search = {}, {}
    for name, ent, n in (("user", user, len(uid)), ("item", item, len(iid))):
        grid = {(hl, shrink): float(np.abs(np.clip(scores["mf"][:half] + drift_pass(
                    ent[:half], r.ts[:half].astype(float), resid[:half], learn[:half], n, hl, shrink), lo, hi)
                    - y[:half]).mean())
                for hl in (0.0, hour, 24 * hour, 7 * 24 * hour) for shrink in (1.0, 5.0, 20.0)}
        hl, shrink = min(grid, key=grid.get)
        drift_search[name] = {"half_life_h": hl / hour, "shrink": shrink, "first_half_mae": round(grid[hl, shrink], 4)}
        drifts[name] = np.clip(scores["mf"] + drift_pass(ent, r.ts.astype(float), resid, learn, n, hl, shrink), lo, hi)
        out[f"mf + {name} drift"] = figures(drifts[name])

    even = 1 / len(scores)
    base = np.column_stack([np.ones(len(y)), *scores.values()])
    prior = np.array([0.0] + [even] * len(scores))
    out["fusion (replica)"] = figures(fading_least_squares(base, y, learn, prior))
    out["fusion + svd++"] = figures(fading_least_squares(np.column_stack([base, study["svd++ (study)"]]), y, learn,
                                                         np.append(prior, 0.0)))
    out["fusion + knn residual"] = figures(fading_least_squares(np.column_stack([base, knn]), y, learn,
                                                                np.append(prior, 0.0)))
    out["fusion + factor knn residual"] = figures(fading_least_squares(np.column_stack([base, fknn]), y, learn,
                                                                       np.append(prior, 0.0)))
    for name, d in drifts.items():
        out[f"fusion + {name} drift"] = figures(fading_least_squares(np.column_stack([base, d]), y, learn,
                                                                     np.append(prior, 0.0)))
    out["fusion + both"] = figures(fading_least_squares(np.column_stack([base, study["svd++ (study)"], knn]), y,
                                                        learn, np.append(prior, [0.0, 0.0])))
    for name, f in out.items():
        print(f"{name:24s} MAE {f['mae']:.4f}  AUC {f['auc']:.4f}   second half MAE {f['mae_second_half']:.4f}"
              f"  AUC {f['auc_second_half']:.4f}")
    path = write_results("candidate_models", {
        "command": "python benchmarks/candidate_models.py " + " ".join(sys.argv[1:]),
        "examples": len(y), "recent": args.recent, "study_rates": args.lr,
        "knn_search_first_half_mae": search, "knn_chosen": chosen, "knn_tables": tables,
        "drift_chosen_on_first_half": drift_search, "seconds": timings, "variants": out})
    print(f"neighbourhood: {chosen} (first-half MAE of MF + residual: {search})")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
