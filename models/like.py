"""The like head: the fused probability that an example is positive (a rating of 4 or more, a click).

The fused rating is fit for its error (MAE); ranking examples by how likely they are to be liked needs
more than its order. A rating of 3.8 from a user whose ratings the models predict to within half a point
is a likelier 4 than the same 3.8 from a user they miss by two; and who likes an item beyond its rating
(an item that men rate highly, a user who enjoys a genre at its 4s and 5s) is information the rating
models, fit to squared or absolute error on ids, do not keep. The head adds both, after the fusion:

    logit = (fused - model.like_threshold) / sigma_u + sum of FTRL weights of the example's features

``sigma_u`` is the user's root mean squared error of the fused rating so far, shrunk towards the
global one by ``model.like_prior`` examples (its per-user part lives in keyed state); the features, hashed
into ``2**model.like_bits`` FTRL-Proximal coordinates (global tables of the parameter set, merged and
broadcast as FTRL's), are a bias, the user, the item, the user x each of the item's attributes (genres,
decade, category: :class:`models.affinity.ItemAttributes`), the item x each of the user's attributes
(``model.user_attributes``: age, gender, occupation on MovieLens), and for ratings the user's recent error,
position in their session and time since their last rating, bucketed (binary feedback is learned at its
outcome, after it was scored: its time features would differ between the two). It learns by logistic loss on whether
the example is positive (rtrec.labels), example by example in order
(:func:`models.sequential.like_pass`), after the rating models, so it changes nothing they predict.

Chosen by measurement on the first half of MovieLens-100K (benchmarks/like_search.py): AUC (rating >= 4)
0.7757 for the fused rating, 0.781 for the like probability on the whole stream. Each prediction record
carries it as ``like``; ``rtrec eval`` reports its AUC and log-loss.
"""

from __future__ import annotations

import functools
import zlib

import numpy as np
import torch

from models import sequential
from models.params import ParameterSet
from rtrec.config import ModelConfig
from rtrec.datasets import attribute_rows, movielens_dir

#: At most this many attributes of a user count (the catalogue's first ones).
USER_WIDTH = 4
#: A user's row of :meth:`LikeHead.stats`: [sum of squared errors, count, recent error of ratings, position
#: in the session, last rating's time in seconds].
STATS = 5
#: Hashing of the head's features (as models.ensemble's: a multiplier and a modulus).
_MIX, _MOD = 1_000_003, 1 << 31


def movielens_users() -> dict[str, tuple[str, ...]]:
    """User id -> age (by decade), gender and occupation for MovieLens-100K (``age20s``, ``F``, ``writer``)."""
    out = {}
    with open(movielens_dir() / "ml-100k.user", encoding="latin-1") as f:
        next(f)
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 4 and parts[1].isdigit():
                out[parts[0]] = (f"age{int(parts[1]) // 10}0s", f"gender {parts[2]}", f"occupation {parts[3]}")
    return out


@functools.lru_cache(maxsize=4)
def user_attributes(source: str) -> dict[str, tuple[str, ...]]:
    """User id -> attribute names: ``movielens-100k`` (age by decade, gender, occupation), a ``.jsonl`` of
    ``{"user_id", "attributes": [...]}`` lines, a ``.csv`` with ``user_id`` and ``attributes`` columns
    (names separated by ``|``), or ``""`` (none)."""
    if not source:
        return {}
    if source == "movielens-100k":
        return movielens_users()
    return attribute_rows(source, "user_id", "model.user_attributes")


def user_codes(names) -> np.ndarray:
    """(USER_WIDTH,) int64 hashes of a user's attribute names, -1 padded, stable across processes."""
    out = np.full(USER_WIDTH, -1, np.int64)
    codes = list(dict.fromkeys(zlib.crc32(n.encode()) for n in names))[:USER_WIDTH]
    out[: len(codes)] = codes
    return out


class LikeHead:
    """The like head's global tables (in ``params``), its settings, and the users' attribute codes."""

    def __init__(self, cfg: ModelConfig, params: ParameterSet):
        self.size = 1 << cfg.like_bits
        self.threshold, self.prior, self.recent = cfg.like_threshold, cfg.like_prior, cfg.like_recent
        self.ftrl = (cfg.like_alpha, 1.0, 0.0, 1.0)  # alpha, beta, l1, l2
        self.z = params.add("like.z", "hashed", (), rows=self.size)
        self.n = params.add("like.n", "hashed", (), rows=self.size)
        # [mean squared error of the fused rating, how many]: a new user's sigma before their own
        self.mse = params.add("like.mse", "dense", (2,), value=torch.tensor([1.0, 0.0]))
        self._source = cfg.user_attributes
        self._none = np.full(USER_WIDTH, -1, np.int64)
        self._codes: dict[str, np.ndarray] = {}

    def stats(self, users: list[dict]) -> np.ndarray:
        """(len(users), STATS) float64 copies of the users' rows (``user["like"]``), zeros for a user without
        one (a new user, or state written before the head)."""
        out = np.zeros((len(users), STATS), np.float64)
        for r, user in enumerate(users):
            s = user.get("like")
            if s is not None and len(s) == STATS:
                out[r] = s
        return out

    def attributes_of(self, user_ids: list[str]) -> np.ndarray:
        """(len(user_ids), USER_WIDTH) attribute codes of each user (cached per user)."""
        codes, catalogue, none = self._codes, user_attributes(self._source), self._none
        out = []
        for u in user_ids:
            c = codes.get(u)
            if c is None:
                names = catalogue.get(u)
                c = codes[u] = none if names is None else user_codes(names)
            out.append(c)
        return np.stack(out) if out else np.zeros((0, USER_WIDTH), np.int64)

    def pass_(self, stats: np.ndarray, user_of: np.ndarray, users: list[str], id_codes: np.ndarray,
              item_codes: np.ndarray, rows: np.ndarray, attr: np.ndarray, fused: np.ndarray, y: np.ndarray,
              positive: np.ndarray, ts_ms: np.ndarray, rating: np.ndarray, learn: np.ndarray) -> np.ndarray:
        """Each example's probability (:func:`models.sequential.like_pass`), learning where ``learn``
        (``stats``, a row per user of ``users`` as ``user_of`` gives each example's, and the tables in
        place; the tables' learned rows are counted for the merger). ``fused`` and ``y`` in rating units,
        ``id_codes`` each example's user id code, ``item_codes``
        every item row's, ``attr`` every item row's attribute codes, ``ts_ms`` event times, ``rating`` which
        examples are ratings."""
        cpu = self.z.data.device.type == "cpu"  # (else copies, written back: a pass over 2**bits floats)
        z, n, mse = (t.data.numpy() if cpu else t.data.cpu().numpy() for t in (self.z, self.n, self.mse))
        mse = mse[0]
        codes = np.full((len(user_of), 3 + attr.shape[1] + USER_WIDTH + 3), -1, np.int64)
        out = sequential.like_pass(
            stats, user_of, id_codes, item_codes, rows, attr, self.attributes_of(users),
            fused.astype(np.float64), y.astype(np.float64), positive, ts_ms / 1000.0, rating, learn, z, n, mse,
            self.threshold, self.prior, self.ftrl, self.recent, (_MIX, _MOD, self.size), codes)
        if learn.any():
            learned = codes[learn]
            touched = torch.from_numpy(learned[learned >= 0]).to(self.z.data.device)
            self.z.touch(touched)
            self.n.touch(touched)
            self.mse.touch_dense(int(learn.sum()))
        return out
