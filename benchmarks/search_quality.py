"""Search quality on the MovieLens search replay: recall@10 by text, by the online models, and fused.

    .venv/bin/python benchmarks/search_quality.py [--share 0.1] [--n-candidates 100] [--limit 0]

The stream is MovieLens-100K with made-up searches (rtrec.search.search_sessions):
before a share of the 4- and 5-star ratings the user searches with words of
the movie's title or genres and gets it among ``--n-candidates`` candidates.
The stream is replayed offline in time order, cut into micro-batches as the
job cuts them, through the code the job runs (rtrec.core.local.LocalPipeline:
the user and item cores, one trainer, a merged version after every batch
interval), which learns from the ratings as they pass and scores each
search's candidates with the fused model. Within a batch the searches are
scored before the batch's ratings are learned, so a search never sees its
own target's rating.

Text similarity is models.text.TextEncoder (all-MiniLM-L6-v2) between the query
and each item's "title (year); genres: ..." text. A search counts as a hit
at k when its target is among the top k after rank_search. Variants:
text only (weight 0), personal only (weight 1), fused over a range of
weights; in place of the models, the user's text interest (the decayed
vector of the items they rated 4+, models.text.decay_interest); and the
models with the text features (query and interest similarity as inputs of
FTRL and the ranker, as the job runs them with text on). Writes
benchmarks/results/search_quality.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from benchmarks.common import write_results  # noqa: E402
from models.search import SearchRanker  # noqa: E402
from models.text import ItemTextIndex, TextEncoder, decay_interest  # noqa: E402
from rtrec.config import load_config  # noqa: E402
from rtrec.core.local import LocalPipeline  # noqa: E402
from rtrec.datasets import load_movies, movielens_events  # noqa: E402
from rtrec.search import rank_search, search_cases, search_sessions  # noqa: E402

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
KS = (1, 10)


def personal_scores(cfg, stream, window: int = 4000, shards: int = 16, search=None) -> dict[str, dict[str, float]]:
    """Search event id -> candidate -> fused model score, the stream replayed in micro-batches.

    ``search``: a models.search.SearchRanker whose personal weight is 1, so the models see the
    text features (t_query_sim, t_interest_sim) and a search's scores are theirs alone (z-scored).
    """
    cfg.flink.shards = shards
    pipe = LocalPipeline(cfg, search=search).run(stream, window)
    # (the job ranks a batch's searches before it learns from the batch: no search sees its target's rating)
    return {r.event.event_id: dict(zip(r.items, r.scores, strict=True)) for r in pipe.recommendations
            if r.event.type == "search" and r.event.candidates}


def interest_vectors(stream, index: ItemTextIndex, half_life_ms: float, min_rating: float = 4.0) -> dict:
    """Search event id -> the user's text-interest vector just before the search (zeros for none)."""
    state: dict[str, tuple[torch.Tensor, float, int]] = {}
    out = {}
    zero = torch.zeros(index.dim, device=index.device)
    for e in stream:
        if e.type == "search":
            out[e.event_id] = state[e.user_id][0] if e.user_id in state else zero
        elif e.type == "rating" and e.value is not None and e.value >= min_rating and e.item_id in index:
            vec, mass, ts = state.get(e.user_id, (zero, 0.0, e.ts))
            vec, mass = decay_interest(vec, index.vectors([e.item_id])[0], e.ts - ts, half_life_ms, mass=mass)
            state[e.user_id] = (vec, mass, e.ts)
    return out


def recall_table(cases, personal: dict[str, torch.Tensor], sims: dict[str, torch.Tensor], weights) -> dict:
    """Per weight: recall@k and MRR over all searches and per query kind."""
    table = {}
    for w in weights:
        hits = defaultdict(lambda: defaultdict(int))
        rr = defaultdict(float)
        counts = defaultdict(int)
        for c in cases:
            sid = c.event.event_id
            order = rank_search(personal[sid], sims[sid], w).tolist()
            rank = order.index(c.event.candidates.index(c.target)) + 1
            for group in ("all", c.kind):
                counts[group] += 1
                rr[group] += 1.0 / rank
                for k in KS:
                    hits[group][k] += rank <= k
        table[str(w)] = {
            g: {**{f"recall@{k}": round(hits[g][k] / counts[g], 4) for k in KS}, "mrr": round(rr[g] / counts[g], 4)}
            for g in ("all", "title", "genre") if counts[g]
        }
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--share", type=float, default=0.1, help="share of 4+ star ratings that get a search")
    ap.add_argument("--n-candidates", type=int, default=100)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--limit", type=int, default=0, help="ratings (0: all 100,000)")
    ap.add_argument("--window", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: leave torch's default)")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(overrides=args.set)
    cfg.model.device = "cpu"
    cfg.model.top_k = args.n_candidates  # a search's recommendation then carries every candidate's score
    timings = {}

    t = time.perf_counter()
    movies = load_movies()
    events = movielens_events(args.limit)
    options = dict(seed=args.seed, n_candidates=args.n_candidates, share=args.share)
    cases = search_cases(events, movies, **options)
    stream = search_sessions(events, movies, **options)
    timings["make_searches_s"] = round(time.perf_counter() - t, 2)
    print(f"{len(events):,} ratings, {len(cases):,} searches of {args.n_candidates} candidates")

    t = time.perf_counter()
    encoder = TextEncoder(cfg.text, device="cpu")
    encoder.warm_up()
    index = ItemTextIndex.from_movies(encoder, movies)
    timings["catalogue_encode_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    queries = encoder.encode([c.event.query for c in cases])
    timings["queries_encode_s"] = round(time.perf_counter() - t, 2)
    cache = encoder.cache_info()
    sims = {c.event.event_id: index.similarity(queries[i], c.event.candidates) for i, c in enumerate(cases)}
    print(f"texts: catalogue {timings['catalogue_encode_s']} s, queries {timings['queries_encode_s']} s, "
          f"cache {cache.hits} hits / {cache.misses} misses")

    t = time.perf_counter()
    scored = personal_scores(cfg, stream, args.window)
    timings["replay_models_s"] = round(time.perf_counter() - t, 2)
    personal = {c.event.event_id: torch.tensor([scored[c.event.event_id][i] for i in c.event.candidates])
                for c in cases}
    print(f"models: stream of {len(stream):,} events replayed in {timings['replay_models_s']} s")

    t = time.perf_counter()
    text_cfg = dataclasses.replace(cfg.text, search_personal_weight=1.0)
    scored = personal_scores(cfg, stream, args.window, search=SearchRanker(text_cfg, device="cpu"))
    timings["replay_models_text_features_s"] = round(time.perf_counter() - t, 2)
    personal_tf = {c.event.event_id: torch.tensor([scored[c.event.event_id][i] for i in c.event.candidates])
                   for c in cases}
    print(f"models with text features: replayed in {timings['replay_models_text_features_s']} s")

    t = time.perf_counter()
    interests = interest_vectors(stream, index, cfg.text.interest_half_life_ms)
    interest = {c.event.event_id: index.similarity(interests[c.event.event_id], c.event.candidates) for c in cases}
    timings["interest_s"] = round(time.perf_counter() - t, 2)

    models_table = recall_table(cases, personal, sims, WEIGHTS)
    text_features_table = recall_table(cases, personal_tf, sims, WEIGHTS)
    interest_table = recall_table(cases, interest, sims, WEIGHTS)
    default_w = cfg.text.search_personal_weight
    fused_default = recall_table(cases, personal, sims, [default_w])[str(default_w)]
    print(f"{'weight':>8} {'models: R@10':>14} {'title':>7} {'genre':>7} {'interest: R@10':>16} {'title':>7} "
          f"{'genre':>7} {'models+text features: R@10':>28}")
    for w in WEIGHTS:
        m, i, f = models_table[str(w)], interest_table[str(w)], text_features_table[str(w)]
        print(f"{w:>8} {m['all']['recall@10']:>14} {m['title']['recall@10']:>7} {m['genre']['recall@10']:>7} "
              f"{i['all']['recall@10']:>16} {i['title']['recall@10']:>7} {i['genre']['recall@10']:>7} "
              f"{f['all']['recall@10']:>28}")
    n_title = sum(c.kind == "title" for c in cases)

    if args.no_write:
        return
    path = write_results("search_quality", {
        "command": "python " + " ".join(sys.argv),
        "torch_threads": torch.get_num_threads(),
        "setup": {
            "ratings": len(events),
            "searches": len(cases),
            "title_queries": n_title,
            "genre_queries": len(cases) - n_title,
            "candidates_per_search": args.n_candidates,
            "search_share_of_4plus_ratings": args.share,
            "seed": args.seed,
            "candidates": "the target plus others, half drawn by popularity, half uniformly, in random order",
            "personal": "fused score of models.online.OnlineLearner (MF, FTRL, ranker), learning prequentially",
            "interest": f"decayed text-interest vector of the user's 4+ ratings, half-life "
                        f"{cfg.text.interest_half_life_ms} ms",
            "normalisation": "z-score per query",
            "random_recall@10": round(10 / args.n_candidates, 4),
        },
        "text_only": models_table["0.0"],
        "personal_only": models_table["1.0"],
        f"fused_weight_{default_w}": fused_default,
        "by_weight_models": models_table,
        "by_weight_interest": interest_table,
        "by_weight_models_with_text_features": text_features_table,
        "query_cache": cache._asdict(),
        "timings": timings,
        "notes": "weight is the personal share (text.search_personal_weight): 0 text only, 1 personal only.",
    })
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
