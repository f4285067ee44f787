"""``rtrec demo``: MovieLens-100K through the whole pipeline on the local broker, then a summary."""

from __future__ import annotations

import time
from collections import Counter

from rtrec import topics
from rtrec.config import RtrecConfig
from rtrec.datasets import load_movies, movielens_events
from rtrec.lifecycle import run_locally
from rtrec.metrics import auc, mae, rmse
from rtrec.progress import JobProgress
from rtrec.records import read_record
from rtrec.replay import replay

DEMO_PREFIX = "demo."


def run_demo(cfg: RtrecConfig, limit: int = 0, show: int = 5) -> dict[str, int]:
    cfg.kafka = cfg.kafka.with_prefix(DEMO_PREFIX)
    topics.check_broker(cfg.kafka)  # one clear line, before deleting anything or starting Flink


    cfg.flink.bounded = True
    cfg.flink.startup_mode = "earliest"  # (fresh topics: offsets a group committed on an older one never apply)
    cfg.flink.job_name = f"rtrec-demo-{int(time.time())}"
    k = cfg.kafka
    names = [k.events_topic, *k.output_topics()]
    print(f"demo: fresh topics {', '.join(names)} on {k.bootstrap_servers}")
    topics.delete_topics(k, names)
    topics.ensure_topics(k, names)

    events = movielens_events(limit)
    print(replay(events, k, total=len(events)))

    print(f"demo: running the job on a local MiniCluster (parallelism {cfg.flink.parallelism}) until the replay is consumed")
    start = time.perf_counter()
    progress = JobProgress(cfg.flink.job_name, total=len(events), models=cfg.model.enabled)

    result, run = run_locally(cfg, progress, "demo")
    if run.stopped:
        return {}
    wall = time.perf_counter() - start
    job_s = result.get_net_runtime() / 1000
    print(
        f"demo: job processed {len(events):,} events in {job_s:.1f} s ({len(events) / job_s:,.0f} events/s; "
        f"{wall:.1f} s including MiniCluster start-up)"
    )

    counts = {}
    for name in k.output_topics():
        if name == k.model_updates_topic:
            continue
        counts[name] = topics.count_committed(k, name)
    print("demo: committed records per output topic (read_committed):")
    for name, n in counts.items():
        print(f"  {name:<28} {n:>9,}")

    scores: dict[str, list[float]] = {}
    labels: list[float] = []
    likes: list[tuple[float, int]] = []  # the like head's probability, and whether the rating was >= 4
    for m in topics.read_topic(k, k.predictions_topic, idle_s=0.5):
        p = read_record("predictions", m.value())
        if p["type"] != "rating":
            continue
        labels.append(p["label"])
        for name, v in [*p["scores"].items(), ("fused", p["fused"])]:
            scores.setdefault(name, []).append(v)
        if p.get("like") is not None:
            likes.append((p["like"], int(p["label"] >= 4)))
    if labels:
        positive = [int(y >= 4) for y in labels]
        print(f"demo: prequential quality on {len(labels):,} ratings (each predicted before it was learned from):")
        for name, pred in scores.items():
            print(f"  {name:<8} MAE {mae(pred, labels):.3f}  RMSE {rmse(pred, labels):.3f}  AUC {auc(pred, positive):.3f}")
        if likes:
            print(f"  {'like':<8} AUC {auc(*zip(*likes, strict=True)):.3f}  (the like head's probability of a "
                  "rating >= 4)")

    movies = load_movies()
    latest: dict[str, dict] = {}
    for m in topics.read_topic(k, k.recommendations_topic, idle_s=0.5):
        rec = read_record("recommendations", m.value())
        latest[rec["user_id"]] = rec
    busiest = Counter(e.user_id for e in events).most_common(show)
    print(f"demo: latest top-{cfg.model.top_k} recommendations for the {show} most active users:")
    for user, n in busiest:
        rec = latest.get(user)
        if not rec:
            continue
        titles = [movies[i].title if i in movies else i for i in rec["items"][:5]]
        print(f"  user {user:>4} ({n} ratings, model v{rec['model_version']}): {'; '.join(titles)}")
    return counts
