"""Would another fusion earn more than the job's? Offline variants over the models' own predictions.

    .venv/bin/python benchmarks/fusion_variants.py [--set model.dim=16 ...] [--limit N]

Runs MovieLens-100K through rtrec.core.local.LocalPipeline (the job's per-batch
core, text off, 4,000-event batch intervals as model_quality_offline.py), keeps
each rating example's prequential MF, FTRL and ranker predictions, then fuses
them again in NumPy with variants of the job's fusion (models.fusion: fading
ridge least squares, one IRLS weight per example, 32 examples a step):

- ``job (replica)``: the job's fusion, to check this replica against its output;
- ``context``: feature-weighted linear stacking (Sill et al., 2009): each
  model's weight is linear in the user's and the item's ratings so far (log),
  their squares and the user's rating spread;
- ``recent residual``: the fusion also gets the user's mean MF error over its
  last 10 ratings within 6 hours, alone and scaled by how many there were
  (a fast session bias);
- ``like head``: is the AUC short of 0.78 because the fusion fits ratings
  (towards their median) rather than the chance of a like? An online logistic
  regression of the like label (rating >= 4) on the models' predictions
  (Adagrad, 32 examples a step), and ``like head + context`` with the
  context above and the user's like rate so far (shrunk) as inputs too. Its
  MAE means nothing (it predicts a probability); its AUC is the question.

Reports MAE and AUC (rating >= 4) over the whole stream and its second half and
writes benchmarks/results/fusion_variants.json. The base models do not learn
from the fusion, so re-fusing their predictions offline is exact.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import write_results  # noqa: E402
from rtrec.config import load_config  # noqa: E402
from rtrec.core.local import LocalPipeline  # noqa: E402
from rtrec.datasets import movielens_events  # noqa: E402
from rtrec.metrics import auc  # noqa: E402


def fading_least_squares(x: np.ndarray, y: np.ndarray, learn: np.ndarray, prior: np.ndarray, step: int = 32,
                         forget: float = 0.9999, ridge: float = 1.0, robust: float = 1.0) -> np.ndarray:
    """models.fusion.OnlineFusion over the rows of ``x`` in order: each chunk of ``step`` is predicted
    with the weights the chunks before it left, then its ``learn`` rows are added."""
    n, p = x.shape
    a, b, w = np.zeros((p, p)), np.zeros(p), prior.copy()
    reg = ridge * np.eye(p)
    out = np.zeros(n)
    for s in range(0, n, step):
        xs = x[s : s + step]
        out[s : s + step] = xs @ w
        m = learn[s : s + step]
        if not m.any():
            continue
        xs, ys = xs[m], y[s : s + step][m]
        xw = xs / np.maximum(np.abs(ys - xs @ w), robust)[:, None] if robust > 0 else xs
        fade = forget ** len(ys)
        a, b = a * fade + xw.T @ xs, b * fade + xw.T @ ys
        w = np.linalg.solve(a + reg, b + reg @ prior)
    return out


def context(users: list[str], items: list[str], y: np.ndarray) -> dict[str, np.ndarray]:
    """Per example, from the ratings before it: the user's and the item's counts and the user's spread."""
    n = len(y)
    nu, ni, sd = np.zeros(n), np.zeros(n), np.ones(n)
    count_u: dict[str, int] = defaultdict(int)
    count_i: dict[str, int] = defaultdict(int)
    s1: dict[str, float] = defaultdict(float)
    s2: dict[str, float] = defaultdict(float)
    for k in range(n):
        u, i = users[k], items[k]
        c = count_u[u]
        nu[k], ni[k] = c, count_i[i]
        if c:
            mean = s1[u] / c
            sd[k] = np.sqrt(max(s2[u] / c - mean * mean, 0.0))
        count_u[u], count_i[i] = c + 1, count_i[i] + 1
        s1[u] += y[k]
        s2[u] += y[k] ** 2
    return {"lu": np.log1p(nu) / 5, "li": np.log1p(ni) / 6, "sd": sd}


def recent_residual(users: list[str], ts: np.ndarray, err: np.ndarray, keep: int = 10,
                    window_ms: int = 6 * 3600 * 1000) -> tuple[np.ndarray, np.ndarray]:
    """Per example, the user's mean error over their last ``keep`` ratings within ``window_ms`` (0 if none),
    and how many there were."""
    hist: dict[str, deque] = defaultdict(deque)
    mean, count = np.zeros(len(err)), np.zeros(len(err))
    for k, u in enumerate(users):
        h = hist[u]
        while h and ts[k] - h[0][0] > window_ms:
            h.popleft()
        if h:
            mean[k], count[k] = sum(e for _, e in h) / len(h), len(h)
        h.append((ts[k], err[k]))
        if len(h) > keep:
            h.popleft()
    return mean, count


def online_logistic(x: np.ndarray, target: np.ndarray, learn: np.ndarray, lr: float = 0.05,
                    step: int = 32) -> np.ndarray:
    """P(target) by a logistic regression on the rows of ``x`` learned online (Adagrad): each chunk of
    ``step`` is predicted with the weights the chunks before it left, then its ``learn`` rows are added."""
    w, g2 = np.zeros(x.shape[1]), np.full(x.shape[1], 1e-6)
    out = np.zeros(len(x))
    for s in range(0, len(x), step):
        xs = x[s : s + step]
        p = 1 / (1 + np.exp(-(xs @ w)))
        out[s : s + step] = p
        m = learn[s : s + step]
        g = ((p - target[s : s + step])[:, None] * xs)[m].sum(0)
        g2 += g * g
        w -= lr * g / np.sqrt(g2)
    return out


def like_rate(users: list[str], like: np.ndarray, learn: np.ndarray, prior: float, shrink: float = 5.0) -> np.ndarray:
    """Per example, the user's share of likes among their learned ratings before it, shrunk towards ``prior``."""
    n: dict[str, int] = defaultdict(int)
    liked: dict[str, float] = defaultdict(float)
    out = np.zeros(len(like))
    for k, u in enumerate(users):
        out[k] = (liked[u] + shrink * prior) / (n[u] + shrink)
        if learn[k]:
            n[u] += 1
            liked[u] += like[k]
    return out


@dataclass
class RatingExamples:
    """The rating examples of a LocalPipeline run, in order, as arrays: label, the job's per-model and fused
    predictions, whether each was learned from (not held out), and its user, item and time."""

    y: np.ndarray
    scores: dict[str, np.ndarray]
    fused: np.ndarray
    learn: np.ndarray
    users: list[str]
    items: list[str]
    ts: np.ndarray

    @staticmethod
    def of_job(cfg, limit: int = 0) -> RatingExamples:
        """Through rtrec.core.local.LocalPipeline (the job's core), 4,000-event batch intervals."""
        p = LocalPipeline(cfg).run(movielens_events(limit), 4000).predictions
        rows = [k for k, t in enumerate(p.type) if t == "rating"]
        return RatingExamples(np.array([p.label[k] for k in rows]),
                              {m: np.array([v[k] for k in rows]) for m, v in p.scores.items()},
                              np.array([p.fused[k] for k in rows]), ~np.array([p.heldout[k] for k in rows]),
                              [p.user_id[k] for k in rows], [p.item_id[k] for k in rows],
                              np.array([p.ts[k] for k in rows]))

    def figures(self, pred: np.ndarray) -> dict:
        """MAE and AUC (rating >= 4) of ``pred``, over all examples and over the second half."""
        y, half = self.y, len(self.y) // 2
        positive = (y >= 4).astype(int)
        return {"mae": round(float(np.abs(pred - y).mean()), 4), "auc": round(auc(pred.tolist(), positive.tolist()), 4),
                "mae_second_half": round(float(np.abs(pred[half:] - y[half:]).mean()), 4),
                "auc_second_half": round(auc(pred[half:].tolist(), positive[half:].tolist()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--limit", type=int, default=0)
    args = ap.parse_args()
    cfg = load_config(overrides=["text.enabled=false", *args.set])
    r = RatingExamples.of_job(cfg, args.limit)
    y, scores, learn, users, items, ts, figures = r.y, r.scores, r.learn, r.users, r.items, r.ts, r.figures
    models = list(scores)
    out = {m: figures(s) for m, s in scores.items()}
    out["job"] = figures(r.fused)
    even = 1 / len(models)
    base = np.column_stack([np.ones(len(y)), *scores.values()])
    out["job (replica)"] = figures(fading_least_squares(base, y, learn, np.array([0.0] + [even] * len(models))))

    ctx = context(users, items, y)
    meta = [np.ones(len(y)), ctx["lu"], ctx["li"], ctx["lu"] ** 2, ctx["li"] ** 2, ctx["sd"]]
    x = np.column_stack([*meta, *(s * f for s in scores.values() for f in meta)])
    prior = np.zeros(x.shape[1])
    prior[[len(meta) * (1 + j) for j in range(len(models))]] = even
    out["context"] = figures(fading_least_squares(x, y, learn, prior))

    resid, count = recent_residual(users, ts, y - scores["mf"])
    x = np.column_stack([base, resid, resid * np.minimum(count, 10) / 10])
    out["recent residual"] = figures(fading_least_squares(x, y, learn, np.array([0.0] + [even] * len(models) + [0, 0])))

    like = (y >= 4).astype(float)
    centred = [s - 3.5 for s in scores.values()]
    out["like head"] = figures(online_logistic(np.column_stack([np.ones(len(y)), *centred]), like, learn))
    rate = like_rate(users, like, learn, prior=0.5) - 0.5  # (a fixed prior: nothing from later examples)
    out["like head + context"] = figures(online_logistic(
        np.column_stack([np.ones(len(y)), *centred, rate, ctx["lu"], ctx["sd"] - 1, rate * ctx["lu"],
                         (ctx["sd"] - 1) * centred[0]]), like, learn))

    best = min(models, key=lambda m: out[m]["mae"])
    print(f"{len(y):,} rating examples; best single model {best} (MAE {out[best]['mae']:.4f})")
    print(f"  {'':<16} {'MAE':>7} {'AUC':>7}   second half: {'MAE':>7} {'AUC':>7}   gain over {best}")
    for name, f in out.items():
        print(f"  {name:<16} {f['mae']:7.4f} {f['auc']:7.4f}   {'':13}{f['mae_second_half']:7.4f} "
              f"{f['auc_second_half']:7.4f}   {out[best]['mae'] - f['mae']:+.4f}")
    print(write_results("fusion_variants", {"command": " ".join(["python benchmarks/fusion_variants.py", *sys.argv[1:]]),
                                            "examples": len(y), "best_single": best, "variants": out}))


if __name__ == "__main__":
    main()
