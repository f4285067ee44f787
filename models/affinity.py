"""The fusion's per-user correction: what a user thinks of an item's attributes, beyond what the models see.

MF, FTRL and the ranker each see the user and the item as ids and rating
statistics; on MovieLens they end up with much the same information, so a
global blend of them gains little over MF alone. What none of them keeps is
how a user's ratings of, say, Westerns or films of the 1950s differ from what
the models predicted for them. :class:`UserAffinity` keeps exactly that, per
user, in keyed state: for each of the item's attributes (its genres and decade
from the catalogue, or the event's ``category`` for items the catalogue lacks)
the sum of the fused prediction's errors on the user's earlier examples with
that attribute and their count. An example's correction is the mean of the
shrunk means ``sum / (count + model.affinity_prior)`` of its item's
attributes, times the square root of their number; the fused prediction is
the global blend plus it, and only then does the user's table learn the
example's remaining error (:func:`models.sequential.affinity_pass`, example by
example, in order: the result does not depend on how the stream is cut).

A user's table is 2 x ``model.affinity_buckets`` float32 (attribute names
hashed into buckets, so it does not depend on the catalogue's vocabulary and a
changed catalogue keeps old tables meaningful); it has no global parameters,
so there is nothing to merge or broadcast. Chosen by measurement
(benchmarks/candidate_models.py, benchmarks/affinity_search.py): on
MovieLens-100K in time order it lowers the fused MAE by about 0.007 and raises
the AUC by about 0.005; a user x item-attribute residual is information the
ids-based models lack, unlike implicit factors, drift or item similarities.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np

from models import sequential
from rtrec.config import ModelConfig
from rtrec.datasets import attribute_rows

#: At most this many attributes of an item count (the catalogue's first ones).
WIDTH = 8
#: An item row whose attributes are not known yet (looked up again when next seen).
UNSET = -2


def movielens_attributes() -> dict[str, tuple[str, ...]]:
    """Item id -> its genres and decade (``1990s``) for MovieLens-100K."""
    from rtrec.datasets import load_movies

    out = {}
    for item_id, m in load_movies().items():
        genres = [g for g in m.genres if g != "unknown"]
        decade = [f"{m.year[:3]}0s"] if len(m.year) == 4 and m.year.isdigit() else []
        out[item_id] = tuple(genres + decade)
    return out


@functools.lru_cache(maxsize=4)
def catalogue_attributes(source: str) -> dict[str, tuple[str, ...]]:
    """Item id -> attribute names: ``movielens-100k`` (genres and decade), a ``.jsonl`` of
    ``{"item_id", "attributes": [...]}`` lines, a ``.csv`` with ``item_id`` and ``attributes`` columns
    (names separated by ``|``), or ``""`` (none: the events' ``category`` only)."""
    if not source:
        return {}
    if source == "movielens-100k":
        return movielens_attributes()
    return attribute_rows(source, "item_id", "model.item_attributes")


def attribute_codes(names, buckets: int) -> list[int]:
    """The distinct buckets of attribute ``names`` (at most :data:`WIDTH`), stable across processes.

    >>> attribute_codes(["Comedy", "Drama", "Comedy"], 128)
    [83, 48]
    """
    return list(dict.fromkeys(zlib.crc32(n.encode()) % buckets for n in names))[:WIDTH]


class ItemAttributes:
    """The attribute codes of every item row: from the catalogue (``model.item_attributes``), else the
    first category an event gave the item. The correction below and the like head (models.like) read them."""

    #: Buckets when the correction is off (the like head's attributes only).
    BUCKETS = 128

    def __init__(self, cfg: ModelConfig):
        self.buckets = cfg.affinity_buckets or self.BUCKETS
        self.catalogue = catalogue_attributes(cfg.item_attributes)
        self.categories: dict[str, str] = {}  # item id -> category, for items the catalogue lacks
        #: (rows, WIDTH) attribute codes of each item row (-1 pads; UNSET: not known yet)
        self.codes = np.full((0, WIDTH), UNSET, np.int32)
        self._filled = 0  # rows looked up so far
        self._unknown: dict[str, int] = {}  # item id -> its row, for rows without attributes yet

    def note(self, item_id: str, category: str | None) -> None:
        """An event's category, for an item the catalogue does not know (the first one counts)."""
        if category is None or item_id in self.catalogue or item_id in self.categories:
            return
        self.categories[item_id] = category
        row = self._unknown.pop(item_id, None)
        if row is not None:
            self._set(row, (category,))

    def _set(self, row: int, names) -> None:
        c = attribute_codes(names, self.buckets)
        self.codes[row] = -1
        self.codes[row, : len(c)] = c

    def update(self, ids: list[str]) -> np.ndarray:
        """Look up the rows added since the last call (``ids``: every row's item id, in row order);
        returns :attr:`codes`, which then covers every row."""
        n = len(ids)
        if n > len(self.codes):
            grown = np.full((max(n, 2 * len(self.codes), 1024), WIDTH), UNSET, np.int32)
            grown[: len(self.codes)] = self.codes
            self.codes = grown
        for row in range(self._filled, n):
            item = ids[row]
            names = self.catalogue.get(item)
            if names is None:
                category = self.categories.get(item)
                names = None if category is None else (category,)
            if names is None:
                self._unknown[item] = row
            else:
                self._set(row, names)
        self._filled = max(self._filled, n)
        return self.codes


class UserAffinity(ItemAttributes):
    """The attribute codes of every item row, and the per-user correction over them (see the module)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.prior = cfg.affinity_prior

    def tables(self, users: list[dict]) -> np.ndarray:
        """(len(users), 2 * buckets) copies of the users' tables (``user["aff"]``), zeros for a user without
        one: a new user, or state written before the correction or with another bucket count."""
        out = np.zeros((len(users), 2 * self.buckets), np.float32)
        width = out.shape[1]
        for r, user in enumerate(users):
            t = user.get("aff")
            if t is not None and len(t) == width:
                out[r] = t
        return out

    def learn(self, tables: np.ndarray, user_of: np.ndarray, rows: np.ndarray, base: np.ndarray, y: np.ndarray,
              learn: np.ndarray, ids: list[str]) -> np.ndarray:
        """Each example's correction (item ``rows``), learning in order (:func:`models.sequential.affinity_pass`;
        a row whose attributes are not known has none)."""
        return sequential.affinity_pass(tables, user_of, rows, self.update(ids), base, y, learn, self.prior)

    def scores(self, tables: np.ndarray, cand: np.ndarray, ids: list[str]) -> np.ndarray:
        """(B, M) corrections of candidate rows ``cand`` for B users' ``tables``."""
        return sequential.affinity_scores(tables, cand, self.update(ids), self.prior)
