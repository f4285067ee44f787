"""Events/s of the feature job end to end (Kafka in -> features out), and state bytes per active user.

    .venv/bin/python benchmarks/feature_throughput.py [--repeat 3] [--parallelism 1 2]

Replays MovieLens-100K ``repeat`` times (each copy a year later, new event
ids) into fresh topics, runs the job with models off (``model.enabled=false``)
bounded to that input, and times the committed feature records on the
features topic. It asks for a snapshot after every event
(``features.snapshots=event``: two records per event, the user's and the
item's), so that the count of records says how far the job has got; the
default, one per entity and micro-batch, writes fewer. Writes
benchmarks/results/feature_throughput.json.
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import fresh, movielens_times, run_job_and_time, write_results  # noqa: E402
from rtrec.features.definitions import USER_FEATURES  # noqa: E402
from rtrec.features.engine import FeatureEngine  # noqa: E402


def state_bytes_per_user(events) -> dict:
    """Pickled size of each user's feature state after the replay (what the job stores per user)."""
    engine = FeatureEngine(USER_FEATURES)
    states: dict[str, list] = {}
    for e in events:
        s = states.get(e.user_id)
        if s is None:
            s = states[e.user_id] = engine.new_state()
        engine.update(s, e)
    sizes = sorted(len(pickle.dumps(s)) for s in states.values())
    return {"users": len(sizes), "mean": round(sum(sizes) / len(sizes)), "p50": sizes[len(sizes) // 2],
            "max": sizes[-1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--parallelism", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args()
    events = movielens_times(args.repeat)
    runs = []
    for p in args.parallelism:
        cfg = fresh(f"bench.features.p{p}.", ["model.enabled=false", "features.snapshots=event",
                                              f"flink.parallelism={p}"])
        result = run_job_and_time(cfg, events, 2, cfg.kafka.features_topic)
        result["parallelism"] = p
        print(result, flush=True)
        runs.append(result)
    payload = {
        "command": "python benchmarks/feature_throughput.py " + " ".join(sys.argv[1:]),
        "goal_events_per_s": 30_000,
        "runs": runs,
        "feature_state_bytes_per_user": state_bytes_per_user(events),
    }
    print(write_results("feature_throughput", payload))


if __name__ == "__main__":
    main()
