"""Binary feedback's prequential quality on shop streams with a known click model, without Flink or Kafka.

    .venv/bin/python benchmarks/binary_quality.py [--users 2000] [--events 60000] [--window 4000]
        [--set model.KEY=VALUE ...]

Replays :func:`benchmarks.common.shop_events` (pages of impressions, clicks
2-20 s after them, an organic click now and then) through the job's per-batch
path (rtrec.core.local.LocalPipeline, text off, ``window`` events per batch
interval as the job cuts a backlog), once per click model: by the user's taste
for the item's category, by the item's appeal, and at random. Per model,
fused and the like head's probability (models.like), the AUC of impressions' outcomes (their records: a 0, or the click
attributed to them, with the scores the impression got when shown; also with
the organic clicks, which come at a telling moment of the generator's
sessions), against

- the generator's own click probability (the best any model can reach), and
- two click rates counted in stream order, each outcome counted as soon as it
  is known: per item, and per user and category (simple baselines).

On random clicks every figure must be 0.5: anything above it comes from the
order in which examples are learned, not from the data.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import CLICK_MODELS, shop_events, write_results  # noqa: E402
from rtrec.config import load_config  # noqa: E402
from rtrec.core.local import LocalPipeline  # noqa: E402
from rtrec.events import Event  # noqa: E402
from rtrec.metrics import auc  # noqa: E402


def binary_aucs(predictions, keep: set[str] | None = None) -> dict[str, float]:
    """AUC per model, fused and the like head over the binary records of ``predictions`` (models.online.Predictions) whose
    event ids are in ``keep`` (None: all)."""
    rows = [i for i, t in enumerate(predictions.type)
            if t != "rating" and (keep is None or predictions.event_id[i] in keep)]
    labels = [int(predictions.label[i] > 0.5) for i in rows]
    out = {}
    for name, col in [*predictions.scores.items(), ("fused", predictions.fused)]:
        out[name] = round(auc([col[i] for i in rows], labels), 4)
    if predictions.like:  # the like head's probability (models.like)
        out["like"] = round(auc([predictions.like[i] for i in rows], labels), 4)
    return out


def outcomes(events: list[Event], window_ms: int) -> dict[str, tuple[int, int, str]]:
    """Each impression's outcome by the job's rule (a click of its user and item within ``window_ms``):
    impression event id -> (1/0, when it is known, the id of its record: the click's, or its own)."""
    open_: dict[tuple[str, str], Event] = {}
    out = {}
    for e in events:
        key = (e.user_id, e.item_id)
        if e.type == "impression":
            out[e.event_id] = (0, e.ts + window_ms, e.event_id)
            open_[key] = e
        elif e.type == "click":
            shown = open_.pop(key, None)
            if shown is not None and e.ts <= shown.ts + window_ms:
                out[shown.event_id] = (1, e.ts, e.event_id)
    return out


def baselines(events: list[Event], prob: dict[str, float], window_ms: int, prior: float = 2.0) -> dict[str, float]:
    """AUC over impressions' outcomes of the generator's probability and of two shrunk click rates, each
    outcome counted once it is known (a click when it comes, a 0 when its window closes)."""
    result = outcomes(events, window_ms)
    ids = list(result)
    labels = [result[i][0] for i in ids]
    shown = {e.event_id: e for e in events if e.type == "impression"}
    mean = sum(labels) / len(labels)
    out = {"oracle": round(auc([prob[i] for i in ids], labels), 4)}
    for name, key in (("item rate", lambda e: e.item_id), ("user x category rate", lambda e: (e.user_id, e.category))):
        timeline = sorted([(e.ts, 0, i) for i, e in shown.items()] + [(result[i][1], 1, i) for i in ids])
        clicks: dict = defaultdict(float)
        seen: dict = defaultdict(float)
        score = {}
        for _, kind, i in timeline:
            k = key(shown[i])
            if kind == 0:
                score[i] = (clicks[k] + prior * mean) / (seen[k] + prior)
            else:
                clicks[k] += result[i][0]
                seen[k] += 1
        out[name] = round(auc([score[i] for i in ids], labels), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--window", type=int, default=4_000, help="events per batch interval (the job's cut)")
    ap.add_argument("--set", action="append", default=[], help="config overrides, e.g. model.fusion_robust=0")
    ap.add_argument("--results", default="binary_quality")
    args = ap.parse_args()
    cfg_args = ["text.enabled=false", *args.set]
    streams = {}
    for clicks in CLICK_MODELS:
        cfg = load_config(overrides=cfg_args)
        events, prob = shop_events(args.users, args.events, clicks=clicks)
        start = time.perf_counter()
        p = LocalPipeline(cfg).run(events, args.window).predictions
        seconds = time.perf_counter() - start
        window_ms = cfg.model.attribution_window_ms
        shown = {record for *_, record in outcomes(events, window_ms).values()}
        streams[clicks] = {"events": len(events), "impressions": len(shown),
                           "clicked": sum(y > 0.5 for y, e in zip(p.label, p.event_id, strict=True) if e in shown),
                           "auc": binary_aucs(p, shown), "auc_with_organic_clicks": binary_aucs(p),
                           "references": baselines(events, prob, window_ms), "seconds": round(seconds, 1)}
        print(clicks, streams[clicks], flush=True)
    print(write_results(args.results, {"command": "python " + " ".join(sys.argv), "settings": cfg_args,
                                       "users": args.users, "window": args.window, "streams": streams}))


if __name__ == "__main__":
    main()
