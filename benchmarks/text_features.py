"""Do the text features help the models? Prequential quality on MovieLens-100K with and without them.

    .venv/bin/python benchmarks/text_features.py [--limit 0] [--window 4000]

The MovieLens stream goes twice through the code the job runs (the offline
simulation of benchmarks/model_quality_offline.py: feature engine,
models.online.OnlineLearner, models.merger.MergerCore, one trainer): once with
text off, once with a models.search.SearchRanker, so every example and every
candidate carries ``t_query_sim`` and ``t_interest_sim`` (rtrec.features.model_inputs;
no searches here, so only the interest similarity is ever non-zero). Reports
MAE, RMSE and AUC (4+ stars positive) per model and fused, and the events/s
of each run (the cost of the text state walk and the similarity gathers, on
one torch thread). Writes benchmarks/results/text_features.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import write_results  # noqa: E402
from benchmarks.model_quality_offline import report, simulate  # noqa: E402
from models.search import SearchRanker  # noqa: E402
from rtrec.config import load_config  # noqa: E402
from rtrec.datasets import movielens_events  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--window", type=int, default=4000)
    ap.add_argument("--limit", type=int, default=0, help="ratings (0: all 100,000)")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(overrides=args.set)
    cfg.model.device = "cpu"
    events = movielens_events(args.limit)
    ranker = SearchRanker(cfg.text, device="cpu")
    runs = {}
    for name, search in (("without_text", None), ("with_text", ranker)):
        t = time.perf_counter()
        examples = simulate(cfg, events, args.window, search=search).predictions
        dt = time.perf_counter() - t
        runs[name] = {"events_per_s": round(len(events) / dt), "seconds": round(dt, 1), **report(examples)}
        print(f"{name}: {len(events):,} events in {dt:.1f} s ({len(events) / dt:,.0f}/s)")
        for model, m in report(examples).items():
            print(f"  {model:<8} MAE {m['mae']:.4f}  RMSE {m['rmse']:.4f}  AUC {m['auc']:.4f}")
    base, text = runs["without_text"], runs["with_text"]
    delta = {m: {k: round(text[m][k] - base[m][k], 4) for k in ("mae", "rmse", "auc")}
             for m in base if isinstance(base[m], dict)}
    print("with - without:", delta)
    if args.no_write:
        return
    path = write_results("text_features", {
        "command": "python " + " ".join(sys.argv),
        "torch_threads": torch.get_num_threads(),
        "setup": {"ratings": len(events), "window": args.window, "trainers": 1,
                  "interest_half_life_ms": cfg.text.interest_half_life_ms},
        **runs,
        "with_minus_without": delta,
        "throughput_ratio_with_over_without": round(text["events_per_s"] / base["events_per_s"], 3),
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
