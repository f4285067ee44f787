"""Tune the MF's learning rates on the FIRST half of MovieLens-100K, report on the whole stream and the second half.

    .venv/bin/python benchmarks/mf_search.py [--rounds 2] [--set model.dim=16 ...]

The MF runs example by example in time order through the job's own compiled
pass (models.sequential.mf_pass), with the job's initial parameters and its
held-out share left unlearned, so its predictions equal the MF column of
benchmarks/model_quality_offline.py (one trainer). That takes well under a
second per run, so a coordinate search (each rate scaled up and down in
turn, kept where the first half's MAE falls) is cheap. The second half is
never looked at while searching.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models import sequential  # noqa: E402
from models.ensemble import ModelSet  # noqa: E402
from models.online import is_heldout, mf_clip  # noqa: E402
from rtrec.config import ModelConfig, load_config  # noqa: E402
from rtrec.datasets import movielens_events  # noqa: E402
from rtrec.metrics import auc  # noqa: E402

#: The rates searched, and the factors each is scaled by in a round.
SEARCHED = ("mf_lr_bias", "mf_lr_latent", "mf_lr_item_bias", "mf_lr_item_latent", "mf_warm_bias", "mf_warm_latent",
            "mf_warm_latent_c", "mf_l2", "mf_grad_clip")
FACTORS = (0.5, 0.75, 1.33, 2.0)


def mf_predictions(cfg: ModelConfig, events) -> np.ndarray:
    """The MF's prequential predictions (clamped to the scale) of ``events``, all ratings, in order."""
    models = ModelSet(cfg)
    mf = models.mf
    rows = models.rows([e.item_id for e in events]).numpy()
    index: dict[str, int] = {}
    user_of = np.fromiter((index.setdefault(e.user_id, len(index)) for e in events), np.int64, len(events))
    users = mf.new_users(list(index))
    y = np.array([e.value for e in events], np.float32)
    learn = ~np.array([is_heldout(e.event_id, cfg.heldout_fraction) for e in events], np.bool_)
    pred, _, _ = sequential.mf_pass(users, user_of, rows, y, learn, mf.q.data.numpy(), mf.b.data.numpy(),
                                    mf.mu.data.numpy()[0], cfg.mf_lr_bias, cfg.mf_lr_latent, cfg.mf_l2, cfg.mf_l2,
                                    mf_clip(cfg), np.zeros(len(index), np.float32), mf.n.data.numpy(),
                                    cfg.mf_warm_bias, cfg.mf_warm_latent, cfg.mf_warm_latent_c, mf.lr_item_bias,
                                    mf.lr_item_latent)
    return np.clip(pred, cfg.rating_min, cfg.rating_max)


def scores(pred: np.ndarray, y: np.ndarray, with_auc: bool = True) -> dict:
    out = {"mae": float(np.abs(pred - y).mean()), "rmse": float(np.sqrt(((pred - y) ** 2).mean()))}
    if with_auc:
        out["auc"] = auc(pred.tolist(), (y >= 4).astype(int).tolist())
    return out


def search(cfg: ModelConfig, events, rounds: int) -> ModelConfig:
    """Coordinate search on ``events`` (the first half): each rate in turn scaled by FACTORS, kept where
    the MAE falls; a negative item rate (the user's) starts from the user's."""
    y = np.array([e.value for e in events], np.float32)
    best = cfg
    for name in ("mf_lr_item_bias", "mf_lr_item_latent"):
        if getattr(best, name) < 0:
            best = dataclasses.replace(best, **{name: getattr(best, name.replace("_item", ""))})
    if best.mf_grad_clip < 0:
        best = dataclasses.replace(best, mf_grad_clip=best.grad_clip)
    best_mae = scores(mf_predictions(best, events), y, False)["mae"]
    print(f"start: MAE {best_mae:.4f}", flush=True)
    for r in range(rounds):
        for name in SEARCHED:
            value = getattr(best, name)
            for f in FACTORS:
                trial = dataclasses.replace(best, **{name: value * f if value else 0.01 * f})
                m = scores(mf_predictions(trial, events), y, False)["mae"]
                if m < best_mae - 1e-5:
                    best, best_mae = trial, m
            print(f"round {r + 1} {name:<18} {getattr(best, name):.4g}   first-half MAE {best_mae:.4f}", flush=True)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    cfg = load_config(overrides=args.set).model
    events = movielens_events()
    half = len(events) // 2
    found = search(cfg, events[:half], args.rounds)
    y = np.array([e.value for e in events], np.float32)
    for label, c in (("configured", cfg), ("found", found)):
        pred = mf_predictions(c, events)
        whole, second = scores(pred, y), scores(pred[half:], y[half:])
        print(f"{label:<10} whole MAE {whole['mae']:.4f} RMSE {whole['rmse']:.4f} AUC {whole['auc']:.4f} | "
              f"second half MAE {second['mae']:.4f} RMSE {second['rmse']:.4f} AUC {second['auc']:.4f}")
    print("found: " + " ".join(f"--set model.{n}={getattr(found, n):.4g}" for n in (*SEARCHED, "dim")))


if __name__ == "__main__":
    main()
