"""What the models see of the features: dense vectors and hashed sparse codes.

The user part comes from the user's feature state as it was *before* the
event (so an example never sees its own label); the item part from the item
features the ItemStage computes, which travel to every scorer with each model
version (so they may be a version old); the pair part (text similarities of
the user's latest query and decayed text interest with the item) from the
scorer's text index (0 where text is off, or for an item without text). Both are read straight from the
engine's state slots, located once by feature name, because this runs per
example.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

import numpy as np

from rtrec.features.definitions import ITEM_FEATURES, USER_FEATURES
from rtrec.features.engine import COUNT, NEWEST, SLOTS, FeatureGroup
from rtrec.features.spec import RatingStats, Session, SmoothedCTR, WindowedCount

USER_DENSE = ("u_ratings", "u_rating_mean", "u_rating_std", "u_events", "u_session_events", "u_since_last", "u_ctr")
ITEM_DENSE = ("i_known", "i_ratings", "i_rating_mean", "i_rating_std", "i_popularity", "i_trend", "i_ctr")
#: User-item pair features: cosine of the user's latest search query (within text.query_window_ms)
#: with the item's text, and of the user's decayed text-interest vector with it (models.text).
PAIR_DENSE = ("t_query_sim", "t_interest_sim")
N_DENSE = len(USER_DENSE) + len(ITEM_DENSE) + len(PAIR_DENSE)
#: Hashed feature fields (see models.ensemble.sparse_codes); t_query and t_interest are the pair
#: similarities in tenths, with a bucket of their own for "no signal".
SPARSE_FIELDS = ("bias", "item", "user", "u_mean", "u_count", "i_mean", "i_count", "u_mean_x_i_mean", "u_x_i_mean",
                 "t_query", "t_interest")


def _slot(group: FeatureGroup, kind: type, name: str | None = None) -> int:
    for i, f in enumerate(group.features):
        if isinstance(f, kind) and (name is None or f.name == name):
            return SLOTS + i
    raise LookupError(f"{group.entity} features declare no {kind.__name__} {name or ''}")


def id_code(value: str) -> int:
    """A stable 31-bit code for an id (the same in every process, unlike hash())."""
    return zlib.crc32(value.encode()) & 0x7FFFFFFF


class UserInputs:
    """Dense features and bucket codes of users, from their feature state (rtrec.features.compiled.HybridGroup:
    rating statistics and CTR counts in the compiled vector, the session count in the engine's part)."""

    def __init__(self, group: FeatureGroup = USER_FEATURES):
        self.rating_spec = group.features[_slot(group, RatingStats) - SLOTS]
        self.session_spec = group.features[_slot(group, Session) - SLOTS]
        self.ctr = group.features[_slot(group, SmoothedCTR) - SLOTS]
        self._prior = self.ctr.prior * self.ctr.prior_weight

    def pick(self, features) -> tuple[np.ndarray, int]:
        """For a :class:`~rtrec.features.compiled.HybridGroup` of these features: the vector offsets
        :meth:`dense_rows` reads (newest event time, events, rating n, mean and m2, clicks, impressions),
        and the index of the session slot in the engine's part."""
        rating, ctr = features.slot(self.rating_spec), features.slot(self.ctr)
        if rating[0] != 0 or ctr[0] != 0:
            raise ValueError("user rating statistics and CTR must be compiled (numeric) declarations")
        r, c = rating[1], ctr[1]
        return np.array([NEWEST, COUNT, r, r + 1, r + 2, c, c + 1], np.int64), features.slot(self.session_spec)[1]

    def dense_rows(self, picked: np.ndarray, session: np.ndarray, at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:data:`USER_DENSE` (one row per event) and the bucket codes (rating mean in quarter steps, log2 of
        the rating count; -1 and 0 with no rating), from the :meth:`pick` values of each event's user, its
        session's events so far and the time the features are for."""
        newest, events, n, mean, m2, clicks, impressions = picked.T
        with np.errstate(divide="ignore", invalid="ignore"):  # (m2 / n where n is 0, newest NaN: not taken)
            dense = np.stack([
                np.log1p(np.maximum(n, 0.0)) / 5.0,
                np.where(n > 0, mean - 3.0, 0.0),
                np.where(n > 1, np.sqrt(m2 / n), 0.0),
                np.log1p(np.maximum(events, 0.0)) / 5.0,
                np.log1p(np.maximum(session, 0.0)) / 5.0,
                np.where(np.isnan(newest), 1.0, np.log1p(np.maximum(at - newest, 0.0) / 1000.0) / 15.0),
                (clicks + self._prior) / (np.maximum(impressions, clicks) + self.ctr.prior_weight),
            ], axis=1)
        # (log2 of the count: frexp's exponent is the bit length of a whole number)
        buckets = np.stack([np.where(n > 0, np.round(mean * 4), -1.0), np.frexp(n + 1)[1] - 1], axis=1)
        return dense, buckets.astype(np.int64)


class ItemInputs:
    """Dense features of an item from its feature state (computed by the ItemStage)."""

    def __init__(self, group: FeatureGroup = ITEM_FEATURES):
        self.rating = _slot(group, RatingStats)
        self.ctr_slot = _slot(group, SmoothedCTR)
        self.ctr = group.features[self.ctr_slot - SLOTS]
        self.popularity = _slot(group, WindowedCount)
        self.pop_spec = group.features[self.popularity - SLOTS]
        if self.pop_spec.per_type:
            raise ValueError("item popularity must count all its event types together (per_type=False)")

    def dense(self, state: list, at_ts: int) -> list[float]:
        """:data:`ITEM_DENSE` of an item from the feature engine's state (one item: :meth:`dense_rows`)."""
        n, mean, m2 = state[self.rating]
        clicks, impressions = state[self.ctr_slot]
        spec, slot = self.pop_spec, state[self.popularity]  # (windows shortest first, longest last)
        long = spec.total_at(slot, -1, at_ts)
        short = spec.total_at(slot, -2, at_ts) if len(spec.windows) > 1 else long
        one = [np.array([x], np.float64) for x in (n, mean, m2, clicks, impressions, long, short)]
        return self.dense_rows(*one)[0].tolist()

    def raw_reader(self, compiled) -> Callable[[np.ndarray], np.ndarray]:
        """:meth:`dense_rows` of the rows of raw values of a :class:`~rtrec.features.compiled.CompiledGroup`
        of these features (read at the time the dense view is for)."""
        rating, ctr = compiled.raw_start(self.rating - SLOTS), compiled.raw_start(self.ctr_slot - SLOTS)
        pop, windows = compiled.raw_start(self.popularity - SLOTS), len(self.pop_spec.windows)
        columns = [rating, rating + 1, rating + 2, ctr, ctr + 1, pop + windows - 1, pop + max(windows - 2, 0)]
        return lambda raw: self.dense_rows(*(raw[:, c] for c in columns))

    def dense_rows(self, n: np.ndarray, mean: np.ndarray, m2: np.ndarray, clicks: np.ndarray, impressions: np.ndarray,
                   long: np.ndarray, short: np.ndarray) -> np.ndarray:
        """:data:`ITEM_DENSE` (one row per item) from the items' rating statistics, CTR counts and popularity
        in the longest window and the one before it (one array each)."""
        c = self.ctr
        with np.errstate(divide="ignore", invalid="ignore"):  # (m2 / n where n is 0: not taken)
            return np.stack([
                np.ones_like(mean),
                np.log1p(np.maximum(n, 0.0)) / 5.0,
                np.where(n > 0, mean - 3.0, 0.0),
                np.where(n > 1, np.sqrt(m2 / n), 0.0),
                np.log1p(np.maximum(long, 0.0)) / 5.0,
                np.log((short * 7 + 1) / (long + 1)),
                (clicks + c.prior * c.prior_weight) / (np.maximum(impressions, clicks) + c.prior_weight),
            ], axis=1)
