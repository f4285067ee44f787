"""CPU time of the per-batch core per event: features only, learning with text off, learning with text on (and off the like head).

    .venv/bin/python benchmarks/core_throughput.py [--limit N] [--window 4000] [--shards 0] [--profile MODE]

Runs MovieLens-100K through rtrec.core.local.LocalPipeline, the same user
and item cores (and merger) the job's operators call, cut the way the job
cuts the stream: ``window`` events per batch interval (the job's 100 ms at
about 40k events/s), one micro-batch per user key shard (``--shards 0``: the
job's automatic count, one shard at parallelism 1; ``--shards 16``, the default
of releases up to 0.2: about 250 events a batch), a shard's batch in parts of at
most ``flink.max_batch_events`` (2,000) as the UserStage cuts it, one torch thread. Each event goes in as the JSON bytes
the job reads from Kafka, so parsing, dedup, features, feature records,
predictions, learning, recommendations and their records are all counted.
Reports process CPU µs per event for the user core (admit + process) and the
item core, and apart from them the merger's (another operator in the job).
The text encoder's start-up (model load, catalogue encoding) is not counted.
``learning_text_on_like_off`` is learning with text on and the like head
off (``model.like_bits=0``): its cost, in one invocation.
Writes benchmarks/results/core_throughput.json. ``--profile MODE`` prints a
pyinstrument profile of that mode instead.

``--sparse-users N`` replaces MovieLens with a seeded synthetic stream of
60,000 events over N users (views, impressions, clicks, carts, ratings and
purchases of 5,000 items, popularity Pareto-shaped, 10 ms apart), so that
most users have one event per batch, as on a busy site, where MovieLens'
users rate in bursts (about 30 users per 2,000 events); it writes
core_throughput_sparse.json. Quality figures mean nothing there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import sparse_events, write_results  # noqa: E402
from benchmarks.model_quality_offline import report  # noqa: E402
from rtrec.config import load_config  # noqa: E402
from rtrec.core.local import LocalPipeline  # noqa: E402
from rtrec.datasets import movielens_events  # noqa: E402

MODES = {
    "features": ["model.enabled=false", "text.enabled=false"],
    "learning_text_off": ["text.enabled=false"],
    "learning_text_on": ["text.enabled=true"],
    # The like head's cost: the same with it off (run both in one invocation and compare)
    "learning_text_on_like_off": ["text.enabled=true", "model.like_bits=0"],
}


def run_mode(mode: str, events, window: int, shards: int = 0) -> tuple[dict, LocalPipeline]:
    cfg = load_config(overrides=[*MODES[mode], f"flink.shards={shards}"])
    search = None
    if cfg.model.enabled and cfg.text.enabled:
        from models.search import SearchRanker

        search = SearchRanker(cfg.text)
    pipe = LocalPipeline(cfg, search=search)
    wall = time.perf_counter()
    pipe.run(events, window)
    wall = time.perf_counter() - wall
    t, n = pipe.timings, len(events)
    out = {
        "events": n,
        "batches": t.batches,
        "events_per_batch": round(n / t.batches, 1),
        "cpu_us_per_event": round(1e6 * (t.user + t.item) / n, 1),
        "user_core_us_per_event": round(1e6 * t.user / n, 1),
        "item_core_us_per_event": round(1e6 * t.item / n, 1),
        "merger_us_per_event": round(1e6 * t.merge / n, 1),
        "wall_s": round(wall, 1),
        "outputs": t.outputs,
    }
    if pipe.learner is not None:
        out["quality"] = report(pipe.predictions)
    return out, pipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=0, help="the first N events only (0: all 100,000)")
    ap.add_argument("--window", type=int, default=4000, help="events per batch interval")
    ap.add_argument("--shards", type=int, default=0, help="user key shards (flink.shards; 0: the job's automatic count)")
    ap.add_argument("--mode", action="append", choices=list(MODES), help="(repeatable; default: all)")
    ap.add_argument("--profile", choices=list(MODES), help="print a profile of this mode instead")
    ap.add_argument("--sparse-users", type=int, default=0,
                    help="a synthetic stream over this many users instead of MovieLens (see above)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    events = sparse_events(args.sparse_users) if args.sparse_users else movielens_events(args.limit)
    if args.profile:
        from pyinstrument import Profiler

        with Profiler(interval=0.0005) as prof:
            run_mode(args.profile, events, args.window, args.shards)
        prof.print(show_all=False, short_mode=False)
        return
    results = {}
    for mode in args.mode or list(MODES):
        results[mode], _ = run_mode(mode, events, args.window, args.shards)
        r = results[mode]
        print(f"{mode:<18} {r['cpu_us_per_event']:7.1f} µs/event (user {r['user_core_us_per_event']}, "
              f"item {r['item_core_us_per_event']}; merger {r['merger_us_per_event']}), "
              f"{r['events_per_batch']} events/batch"
              + (f", fused MAE {r['quality']['fused']['mae']} AUC {r['quality']['fused']['auc']}" if "quality" in r
                 else "")
              + (f", like AUC {r['quality']['like']['auc']}" if "like" in r.get("quality", {}) else ""), flush=True)
    path = write_results("core_throughput_sparse" if args.sparse_users else "core_throughput", {
        "command": "python benchmarks/core_throughput.py" + (f" --limit {args.limit}" if args.limit else "")
                   + (f" --shards {args.shards}" if args.shards else "")
                   + (f" --sparse-users {args.sparse_users}" if args.sparse_users else ""),
        "window": args.window, "shards": args.shards, "torch_threads": 1, "modes": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
