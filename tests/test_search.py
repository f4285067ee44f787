"""rtrec/search.py: made-up MovieLens searches, fusing personal and text scores, text features."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from models.text import ItemTextIndex, TextEncoder, movie_text
from rtrec.config import TextConfig
from rtrec.datasets import Movie, load_movies, movielens_events
from rtrec.events import Event
from rtrec.search import (
    SEARCH_SUFFIX,
    fuse_search,
    make_query,
    normalise_scores,
    rank_search,
    rating_event_id,
    search_cases,
    search_sessions,
    search_targets,
    title_words,
)

GENRES = ("Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller")


def catalogue(n: int = 60) -> dict[str, Movie]:
    rng = random.Random(0)
    words = ["red", "river", "night", "city", "star", "ghost", "king", "summer", "last", "dragon", "blue", "road"]
    return {
        str(i): Movie(str(i), " ".join(rng.sample(words, rng.randint(1, 4))).title(), "1995",
                      tuple(rng.sample(GENRES, rng.randint(1, 3))))
        for i in range(1, n + 1)
    }


def ratings(movies: dict[str, Movie], n: int = 400) -> list[Event]:
    rng = random.Random(1)
    ids = list(movies)
    return [Event(f"ml100k-{i:06d}", str(rng.randint(1, 20)), rng.choice(ids), "rating", (1000 + i // 3) * 1000,
                  float(rng.randint(1, 5))) for i in range(n)]


MOVIES = catalogue()
EVENTS = ratings(MOVIES)


def query_from(movie: Movie, query: str, kind: str) -> bool:
    words = query.split()
    if kind == "title":
        return set(words) <= set(title_words(movie.title))
    genres = {g.lower() for g in movie.genres}
    return set(words) - {"movie", "movies", "film"} <= genres


# -- made-up searches ---------------------------------------------------------------------


def test_search_sessions_are_deterministic_under_a_seed():
    a = search_sessions(EVENTS, MOVIES, seed=3, n_candidates=20, share=0.5)
    b = search_sessions(EVENTS, MOVIES, seed=3, n_candidates=20, share=0.5)
    c = search_sessions(EVENTS, MOVIES, seed=4, n_candidates=20, share=0.5)
    assert [e.to_json() for e in a] == [e.to_json() for e in b]
    assert [e.to_json() for e in a] != [e.to_json() for e in c]


def test_each_search_precedes_its_rating_and_holds_its_item():
    stream = search_sessions(EVENTS, MOVIES, seed=3, n_candidates=20, share=0.5, min_rating=4.0)
    searches = [e for e in stream if e.type == "search"]
    rated = {e.event_id: e for e in EVENTS}
    eligible = sum(1 for e in EVENTS if e.value >= 4)
    assert 0.3 * eligible < len(searches) < 0.7 * eligible
    # The ratings pass through unchanged and in order; the stream stays sorted by time.
    assert [e for e in stream if e.type == "rating"] == EVENTS
    assert all(x.ts <= y.ts for x, y in zip(stream, stream[1:], strict=False))
    targets = search_targets(stream)
    assert len(targets) == len(searches)
    position = {e.event_id: i for i, e in enumerate(stream)}
    for s in searches:
        rating = rated[rating_event_id(s.event_id)]
        assert s.event_id == rating.event_id + SEARCH_SUFFIX
        assert s.user_id == rating.user_id and s.item_id is None and s.ts < rating.ts
        assert position[s.event_id] < position[rating.event_id]
        assert rating.value >= 4 and targets[s.event_id] == rating.item_id
        assert len(s.candidates) == 20 == len(set(s.candidates)) and rating.item_id in s.candidates
        assert set(s.candidates) <= set(MOVIES)
        assert s.query and s.query == s.query.lower()


def test_queries_come_from_the_target_and_the_target_moves_around():
    cases = search_cases(EVENTS, MOVIES, seed=5, n_candidates=10, share=1.0, min_rating=1.0)
    assert len(cases) == len(EVENTS)
    assert {c.kind for c in cases} == {"title", "genre"}
    for c in cases:
        assert query_from(MOVIES[c.target], c.event.query, c.kind), (c.event.query, MOVIES[c.target])
    assert len({c.event.candidates.index(c.target) for c in cases}) == 10  # not always in the same slot


def test_a_prefix_of_the_stream_gets_a_prefix_of_the_searches():
    full = search_cases(EVENTS, MOVIES, seed=3, n_candidates=10, share=0.3)
    head = search_cases(EVENTS[:150], MOVIES, seed=3, n_candidates=10, share=0.3)
    assert [c.rating_event_id for c in head] == [c.rating_event_id for c in full[: len(head)]]
    assert [c.event.query for c in head] == [c.event.query for c in full[: len(head)]]


def test_search_options_are_checked():
    assert search_sessions(EVENTS, MOVIES, share=0.0) == EVENTS
    with pytest.raises(ValueError):
        search_cases(EVENTS, MOVIES, n_candidates=len(MOVIES) + 1)


def test_movielens_searches():
    movies = load_movies()
    events = movielens_events(limit=5_000)
    cases = search_cases(events, movies, seed=7, n_candidates=100, share=0.2)
    assert len(cases) > 300
    for c in cases:
        assert c.target in c.event.candidates and len(c.event.candidates) == 100
        assert query_from(movies[c.target], c.event.query, c.kind), (c.event.query, movies[c.target])


def test_title_words_and_queries():
    assert title_words("Usual Suspects, The") == ["the", "usual", "suspects"]
    assert title_words("Seven (Se7en)") == ["seven"]
    assert title_words("Monty Python's Life of Brian") == ["monty", "python's", "life", "of", "brian"]
    movie = Movie("1", "Toy Story", "1995", ("Animation", "Children's", "Comedy"))
    rng = random.Random(0)
    queries = {make_query(movie, rng) for _ in range(200)}
    assert ("toy story", "title") in queries and ("comedy", "genre") in queries
    assert make_query(Movie("2", "X", "", ("unknown",)), rng, title_share=0.0) == ("x", "title")


# -- ranking ------------------------------------------------------------------------------


def test_normalise_scores():
    x = torch.tensor([[1.0, 2.0, 3.0, 10.0], [4.0, 4.0, 4.0, 4.0]])
    z = normalise_scores(x)
    torch.testing.assert_close(z[0].mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(z[0].std(unbiased=False), torch.tensor(1.0))
    assert z[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    valid = torch.tensor([[True, True, True, False], [True, True, True, True]])
    z = normalise_scores(x, valid)
    torch.testing.assert_close(z[0, :3], normalise_scores(x[0, :3]))
    assert z[0, 3].item() == 0.0
    m = normalise_scores(torch.tensor([2.0, float("-inf"), 4.0, 3.0]), method="minmax")
    assert m.tolist() == [0.0, 0.0, 1.0, 0.5]
    with pytest.raises(ValueError):
        normalise_scores(x, method="rank")


def test_rank_search_weights():
    personal = torch.tensor([4.5, 2.0, 3.9, 3.0])
    sims = torch.tensor([0.10, 0.80, 0.15, 0.30])
    assert rank_search(personal, sims, 0.0).tolist() == [1, 3, 2, 0]  # text only
    assert rank_search(personal, sims, 1.0).tolist() == [0, 2, 3, 1]  # personal only
    # Normalised per query: the scale of the personal scores does not matter.
    for w in (0.2, 0.5, 0.8):
        assert rank_search(personal, sims, w).tolist() == rank_search(100 * personal - 7, sims, w).tolist()
    fused = fuse_search(personal, sims, 0.5)
    expected = 0.5 * normalise_scores(personal) + 0.5 * normalise_scores(sims)
    torch.testing.assert_close(fused, expected)
    with pytest.raises(ValueError):
        rank_search(personal, sims, 1.5)
    with pytest.raises(ValueError):
        rank_search(personal, sims[:3], 0.5)


def test_rank_search_batched_with_padding():
    personal = torch.tensor([[1.0, 2.0, 3.0], [5.0, float("nan"), 0.0]])
    sims = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.9, 0.2]])
    valid = torch.tensor([[True, True, True], [True, True, False]])
    order = rank_search(personal, sims, 0.3, valid)
    assert order.shape == (2, 3)
    assert order[0].tolist() == rank_search(personal[0], sims[0], 0.3).tolist()
    # The NaN score and the padding go last; the one valid candidate first.
    assert order[1, 0].item() == 0 and set(order[1, 1:].tolist()) == {1, 2}
    fused = fuse_search(personal, sims, 0.3, valid)
    assert torch.isinf(fused[1, 1:]).all() and torch.isfinite(fused[0]).all()


def test_ties_keep_input_order():
    assert rank_search(torch.zeros(4), torch.zeros(4), 0.5).tolist() == [0, 1, 2, 3]


# -- with the model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(TextConfig(device="cpu"))


def test_a_matching_title_ranks_above_unrelated_ones(encoder):
    movies = load_movies()
    candidates = ["50", "127", "1", "174", "98", "313", "64"]  # Star Wars, Godfather, Toy Story, Raiders, ...
    index = ItemTextIndex(encoder, {i: movie_text(movies[i]) for i in candidates})
    query = encoder.encode(["toy story"])
    sims = index.similarity(query, candidates)[0]
    # The personal models put Toy Story last; at the default weight the text wins anyway.
    personal = torch.tensor([4.8, 4.7, 3.2, 4.6, 4.5, 4.4, 4.3])
    for weight in (0.0, 0.1, TextConfig().search_personal_weight):
        order = rank_search(personal, sims, weight).tolist()
        assert candidates[order[0]] == "1", (weight, [candidates[i] for i in order])
    assert candidates[rank_search(personal, sims, 1.0)[0]] == "50"
    assert F.cosine_similarity(query, index.vectors(["1"])).item() > 0.5


# -- search in the online learner (the scorer's path) -------------------------------------


@pytest.fixture(scope="module")
def ranker():
    from models.search import SearchRanker

    return SearchRanker(TextConfig(device="cpu", cache_size=100))


def _learner_inputs(events):
    from models.online import Inputs
    from rtrec.features.model_inputs import id_code

    out = [Inputs(e, [0.0] * 7, (-1, 0), id_code(e.user_id)) for e in events]
    for x in out:
        x.dense_after, x.buckets_after = x.dense, x.buckets
    return out


def test_the_learner_ranks_a_search_by_text_and_models(ranker):
    from models.online import OnlineLearner
    from rtrec.config import ModelConfig

    learner = OnlineLearner(ModelConfig(top_k=3))
    learner.search = ranker
    users = {"1": learner.new_user("1")}
    movies = load_movies()
    toy_story = next(i for i, m in movies.items() if m.title.startswith("Toy Story"))
    others = [i for i, m in movies.items() if "Toy" not in m.title][:20]
    search = Event("s", "1", None, "search", 10, query="toy story", candidates=[*others, toy_story])
    recs = learner.process(_learner_inputs([search]), users).recommendations
    assert len(recs) == 1 and recs[0].event is search
    assert recs[0].items[0] == toy_story and len(recs[0].items) == 3
    assert recs[0].scores == sorted(recs[0].scores, reverse=True)


def test_a_search_is_ranked_before_its_batch_is_learned(ranker):
    """The rating that follows a search in the same micro-batch must not change the search's ranking."""
    from models.online import OnlineLearner
    from rtrec.config import ModelConfig

    cfg = ModelConfig(top_k=5, heldout_fraction=0.0)
    movies = load_movies()
    cands = list(movies)[:30]
    search = Event("s", "1", None, "search", 10, query="drama", candidates=cands)
    rating = Event("r", "1", cands[-1], "rating", 11, 5.0)
    got = []
    for batch in ([search], [search, rating]):
        learner = OnlineLearner(cfg)
        learner.search = ranker
        users = {"1": learner.new_user("1")}
        learner.process(_learner_inputs([Event("w", "1", cands[3], "rating", 1, 4.0)]), users)  # some history
        recs = [r for r in learner.process(_learner_inputs(batch), users).recommendations if r.event is search]
        got.append((recs[0].items, recs[0].scores))
    assert got[0] == got[1]


def test_shared_rankers_load_the_text_model_once_per_configuration():
    """The scorers of one process (and a task restarted in it) share the encoder and the item texts."""
    from models.search import SearchRanker

    cfg = TextConfig(device="cpu", catalogue="", cache_size=10)
    a, b = SearchRanker.shared(cfg), SearchRanker.shared(TextConfig(device="cpu", catalogue="", cache_size=10))
    assert a is not b and a.encoder is b.encoder and a.index is b.index
    # Items added through one scorer are known to the other (two: vectors are centred on their mean).
    a.index.add_many({"x1": "a film about space", "x2": "a cooking show"})
    assert b.item_vectors(["x1"]).abs().sum() > 0
    other = SearchRanker.shared(TextConfig(device="cpu", catalogue="", cache_size=11))
    assert other.encoder is not a.encoder
