"""Search: MovieLens search sessions for replays, and ranking search results by text and by the user's models.

Replay data. MovieLens-100K has no searches, so :func:`search_sessions` makes
them up from the ratings: before some ratings (by default a share of those of
4 stars and up) the user searches for the movie they are about to rate, with a
query made of words of its title or of its genres, and gets the movie among
``n_candidates`` candidates. The rated movie is the search's *target*:
the search's ``event_id`` is the rating's plus ``-search``, so
:func:`search_targets` (or :func:`rating_event_id`) finds the rating, and its
item, in the stream.

Ranking. :func:`rank_search` orders a search's candidates by a blend of the
personal models' scores and the query-item text similarity, each normalised
per query (z-score by default) so neither's scale dominates;
``text.search_personal_weight`` is the personal share. The text vectors come
from models.text; this module only takes tensors (and floats), so it imports
neither transformers nor the model.
"""

from __future__ import annotations

import bisect
import itertools
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from rtrec.events import Event

#: A search's event id is its target rating's plus this.
SEARCH_SUFFIX = "-search"

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")
_PARENS = re.compile(r"\s*\([^)]*\)")
_ARTICLE_END = re.compile(r"^(?P<title>.+), (?P<article>The|A|An)$")
_QUERY_NOUNS = ("movie", "movies", "film")


# -- replay data -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SearchCase:
    """A made-up search and what it was for."""

    event: Event  # the search event (type "search", query, candidates)
    target: str  # the item the user goes on to rate
    rating_event_id: str  # that rating's event id
    kind: str  # "title" or "genre": what the query was made of


def search_event_id(rating_event_id: str) -> str:
    """The id of the search made up before a rating.

    >>> search_event_id("ml100k-000042"), rating_event_id("ml100k-000042-search")
    ('ml100k-000042-search', 'ml100k-000042')
    """
    return rating_event_id + SEARCH_SUFFIX


def rating_event_id(search_event_id: str) -> str | None:
    """The id of the rating whose item a made-up search is for (None for other ids)."""
    return search_event_id[: -len(SEARCH_SUFFIX)] if search_event_id.endswith(SEARCH_SUFFIX) else None


def title_words(title: str) -> list[str]:
    """Lower-case words of a MovieLens title, alternative titles in brackets left out, the article moved back.

    >>> title_words("Usual Suspects, The (1995)"), title_words("Schindler's List")
    (['the', 'usual', 'suspects'], ["schindler's", 'list'])
    """
    title = _PARENS.sub("", title).strip()
    m = _ARTICLE_END.match(title)
    if m:
        title = f"{m['article']} {m['title']}"
    return _WORD.findall(title.lower())


def make_query(movie, rng: random.Random, title_share: float = 0.5, drop_share: float = 0.3) -> tuple[str, str]:
    """A query a user might type for ``movie``: ``(query, kind)``, kind "title" or "genre".

    Title queries are the title's words, lower-cased, with one word dropped
    from titles of three or more words in ``drop_share`` of cases. Genre
    queries are one or two of the movie's genres, lower-cased, sometimes
    followed by "movie(s)"/"film". A movie without words or genres gets the other kind.
    """
    words = title_words(movie.title)
    genres = [g.lower() for g in movie.genres if g != "unknown"]
    want_title = rng.random() < title_share
    if words and (want_title or not genres):
        if len(words) >= 3 and rng.random() < drop_share:
            del words[rng.randrange(len(words))]
        return " ".join(words), "title"
    if not genres:
        return movie.title.lower(), "title"
    picked = rng.sample(genres, 2 if len(genres) >= 2 and rng.random() < 0.3 else 1)
    if rng.random() < 0.3:
        picked.append(rng.choice(_QUERY_NOUNS))
    return " ".join(picked), "genre"


class _Sampler:
    """Candidate draws over a catalogue: uniform, or in proportion to popularity (+1)."""

    def __init__(self, catalogue: list[str], counts: Mapping[str, int]):
        self.ids = catalogue
        self.cum = list(itertools.accumulate(counts.get(i, 0) + 1 for i in catalogue))

    def popular(self, rng: random.Random) -> str:
        return self.ids[bisect.bisect_right(self.cum, rng.random() * self.cum[-1])]

    def uniform(self, rng: random.Random) -> str:
        return self.ids[rng.randrange(len(self.ids))]


def search_cases(events: Sequence[Event], movies: Mapping, seed: int = 7, n_candidates: int = 50,
                 share: float = 0.1, min_rating: float = 4.0, title_share: float = 0.5,
                 popular_share: float = 0.5, lead_ms: int = 1) -> list[SearchCase]:
    """The searches :func:`search_sessions` adds, with their targets, in the order of their ratings.

    Each rating of an item in ``movies`` with a value of at least
    ``min_rating`` gets a search with probability ``share``. Its candidates
    are the rated item and ``n_candidates - 1`` distinct others from the
    catalogue, ``popular_share`` of them drawn by popularity (ratings in
    ``events``) and the rest uniformly, in random order; ``ts`` is the
    rating's minus ``lead_ms``. Every draw comes from a generator seeded by
    ``seed`` and the rating's event id, so the result does not depend on
    anything else in the stream (a prefix of the stream gets a prefix of the
    searches, given the same popularity).
    """
    catalogue = list(movies)
    if not 1 <= n_candidates <= len(catalogue):
        raise ValueError(f"n_candidates must be 1..{len(catalogue)} (the catalogue), got {n_candidates}")
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"share must be in 0..1, got {share}")
    sampler = _Sampler(catalogue, Counter(e.item_id for e in events if e.type == "rating"))
    n_popular = round((n_candidates - 1) * popular_share)
    cases = []
    for e in events:
        if e.type != "rating" or e.value is None or e.value < min_rating or e.item_id not in movies:
            continue
        rng = random.Random(f"{seed}:{e.event_id}")
        if rng.random() >= share:
            continue
        query, kind = make_query(movies[e.item_id], rng, title_share)
        chosen = {e.item_id}
        others: list[str] = []
        while len(others) < n_candidates - 1:
            item = sampler.popular(rng) if len(others) < n_popular else sampler.uniform(rng)
            if item not in chosen:
                chosen.add(item)
                others.append(item)
        candidates = [*others]
        candidates.insert(rng.randrange(n_candidates), e.item_id)
        search = Event(search_event_id(e.event_id), e.user_id, None, "search", e.ts - lead_ms,
                       query=query, candidates=candidates)
        cases.append(SearchCase(search, e.item_id, e.event_id, kind))
    return cases


def search_sessions(events: Sequence[Event], movies: Mapping, seed: int = 7, n_candidates: int = 50,
                    **options) -> list[Event]:
    """``events`` with made-up searches (see :func:`search_cases` for the options), stably sorted by ``ts``.

    Each search is placed just before its rating and then the whole stream is
    stably sorted by ``ts`` (a sorted input, as ``movielens_events`` gives,
    stays sorted): a search precedes its rating and every event from its own
    ``ts`` on. Other events of the same second may fall between a search and
    its rating, so find the target by id (:func:`search_targets`), not by
    position. Rating events are passed through unchanged.
    """
    by_rating = {c.rating_event_id: c.event for c in search_cases(events, movies, seed, n_candidates, **options)}
    out: list[Event] = []
    for e in events:
        search = by_rating.get(e.event_id)
        if search is not None:
            out.append(search)
        out.append(e)
    out.sort(key=lambda e: e.ts)
    return out


def search_targets(stream: Sequence[Event]) -> dict[str, str]:
    """Search event id -> target item id: the item of the rating whose id the search's id extends."""
    items = {e.event_id: e.item_id for e in stream if e.type == "rating"}
    out = {}
    for e in stream:
        if e.type == "search":
            rid = rating_event_id(e.event_id)
            if rid in items:
                out[e.event_id] = items[rid]
    return out


# -- ranking -----------------------------------------------------------------------------


def normalise_scores(scores: torch.Tensor, valid: torch.Tensor | None = None, method: str = "zscore") -> torch.Tensor:
    """Per query (the last dimension): z-scores, or min-max to 0..1, over the valid, finite entries.

    A query whose scores are all equal gets zeros; invalid entries get 0.

    >>> normalise_scores(torch.tensor([1.0, 2.0, 3.0])).tolist()
    [-1.2247447967529297, 0.0, 1.2247447967529297]
    >>> normalise_scores(torch.tensor([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]]), method="minmax").tolist()
    [[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]
    """
    x = scores.to(torch.float32)
    ok = torch.isfinite(x) if valid is None else valid & torch.isfinite(x)
    xz = torch.where(ok, x, torch.zeros_like(x))
    n = ok.sum(dim=-1, keepdim=True).clamp(min=1)
    if method == "zscore":
        mean = xz.sum(dim=-1, keepdim=True) / n
        dev = torch.where(ok, x - mean, torch.zeros_like(x))
        std = (dev.square().sum(dim=-1, keepdim=True) / n).sqrt()
        out = torch.where(std > 1e-12, dev / std.clamp(min=1e-12), torch.zeros_like(x))
    elif method == "minmax":
        lo = torch.where(ok, x, torch.full_like(x, float("inf"))).amin(dim=-1, keepdim=True)
        hi = torch.where(ok, x, torch.full_like(x, float("-inf"))).amax(dim=-1, keepdim=True)
        span = hi - lo
        out = torch.where(span > 1e-12, (x - lo) / span.clamp(min=1e-12), torch.zeros_like(x))
    else:
        raise ValueError(f"method must be zscore or minmax, got {method!r}")
    return torch.where(ok, out, torch.zeros_like(x))


def fuse_search(personal: torch.Tensor, similarity: torch.Tensor, weight: float,
                valid: torch.Tensor | None = None, method: str = "zscore") -> torch.Tensor:
    """``weight * norm(personal) + (1 - weight) * norm(similarity)`` per query; invalid candidates get -inf.

    ``personal``: the models' scores of the candidates (predicted rating or
    fused score; any scale), ``similarity``: query-item cosine similarity,
    both (N,) for one search or (Q, N) for Q searches padded to N with
    ``valid`` False. Non-finite personal scores count as invalid.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"search personal weight must be in 0..1, got {weight}")
    if personal.shape != similarity.shape:
        raise ValueError(f"personal {tuple(personal.shape)} and similarity {tuple(similarity.shape)} differ")
    ok = torch.isfinite(personal) & torch.isfinite(similarity)
    if valid is not None:
        ok = ok & valid.to(ok.device)
    fused = weight * normalise_scores(personal, ok, method) + (1.0 - weight) * normalise_scores(similarity, ok, method)
    return fused.masked_fill(~ok, float("-inf"))


def rank_search(personal: torch.Tensor, similarity: torch.Tensor, weight: float,
                valid: torch.Tensor | None = None, method: str = "zscore") -> torch.Tensor:
    """Candidate positions best first (same shape as the inputs); invalid ones last, ties in input order.

    >>> rank_search(torch.tensor([5.0, 1.0, 3.0]), torch.tensor([0.1, 0.9, 0.2]), weight=0.0).tolist()
    [1, 2, 0]
    >>> rank_search(torch.tensor([5.0, 1.0, 3.0]), torch.tensor([0.1, 0.9, 0.2]), weight=1.0).tolist()
    [0, 2, 1]
    """
    fused = fuse_search(personal, similarity, weight, valid, method)
    return torch.argsort(fused, dim=-1, descending=True, stable=True)
