"""Online learning and scoring for one trainer: plain Python and PyTorch, no Flink.

The UserStage (udfs/user_stage.py) feeds an :class:`OnlineLearner` one
micro-batch at a time; benchmarks and tests feed it directly. Per batch it

1. turns feedback into examples (ratings; clicks, carts and purchases as
   positives; an impression is learned as a 0 at once, a "fake negative",
   and remembered: a positive within its attribution window is learned from
   the impression's features, and its outcome, 0 if the window closes without
   one, is recorded with the scores it got when shown),
2. predicts every example with every model and the fusion *before* learning
   from it (prequential), in waves: the n-th example of every user forms wave
   n, so a user's examples apply in order while the maths stays batched,
3. learns from all but a held-out share, which goes to the merger instead to
   judge new versions,
4. refreshes the top-k of every user who interacted (the MF retrieves from the
   catalogue, the fusion re-ranks) and ranks the candidates of requests;
   searches (with a :class:`models.search.SearchRanker`) are ranked before
   step 3 by the models' scores fused with query-item text similarity,
   and with text on, every example and every candidate carries the pair
   features ``t_query_sim`` and ``t_interest_sim`` (the user's current query
   and decayed text interest against the item's text),
5. hands the change to the global parameters over as a delta (see
   models.params), which the merger folds into the next version.

A user's parameters (MF vector, recent items, open impressions; with text on,
the latest query and the text-interest vector as float16) are a small dict
that the caller keeps in keyed state.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from models import sequential
from models.affinity import ItemAttributes, UserAffinity
from models.base import Batch
from models.ensemble import Examples, ModelSet
from models.params import RowDelta, Version
from models.search import TextContext
from rtrec.config import ModelConfig
from rtrec.events import INTERACTION_TYPES, POSITIVE_TYPES, RATING_TYPE, Event
from rtrec.labels import LabelScale

#: Pair features of an example without text signals (text off, or an impression stored before).
NO_PAIR = [0.0, 0.0]


@dataclass(slots=True)
class Inputs:
    """An event with what the models need to know about its user, gathered by the caller."""

    event: Event
    dense: list[float]  # user dense features before the event
    buckets: tuple[int, int]  # user buckets before the event
    code: int  # user id code
    dense_after: list[float] | None = None  # after the event (for the top-k refresh)
    buckets_after: tuple[int, int] | None = None


def refreshes(e: Event) -> bool:
    """Whether the models score something for ``e``: its candidates, or its user's top-k after it."""
    return bool(e.candidates) or e.type in INTERACTION_TYPES


@dataclass(slots=True)
class OpenImpression:
    """An impression waiting for its attribution window: its features as they were when it was shown,
    and the scores it got then (see :class:`Predictions`)."""

    ts: int
    event_id: str
    dense: list[float]
    buckets: tuple[int, int]
    code: int
    pair: list[float]
    #: Each model's score, the fused one, the correction's part of it, in binary units, and the like head's
    #: probability (where it is on), as the impression was shown (:meth:`OnlineLearner._score_shown`; empty
    #: until its batch scores it). None for impressions that releases up to 0.1.0 stored: never learned as
    #: a 0 when shown, they are at their outcome, which is scored then, as those releases did.
    scores: list[float] | None = None

    def __reduce__(self):
        # Pickled (into keyed state) as the plain tuple releases up to 0.1.0 stored: state must not
        # depend on this class's name. read() turns it back into one.
        return (tuple, ((self.ts, self.event_id, self.dense, self.buckets, self.code, self.pair, self.scores),))

    @staticmethod
    def read(value) -> OpenImpression:
        """From state: this class, or the tuple stored (without ``pair`` before text features, without
        ``scores`` up to 0.1.0)."""
        if type(value) is OpenImpression:
            return value
        ts, event_id, dense, buckets, code = value[:5]
        return OpenImpression(ts, event_id, dense, tuple(buckets), code, value[5] if len(value) > 5 else NO_PAIR,
                              value[6] if len(value) > 6 else None)


class ExampleColumns:
    """Labelled examples gathered from a batch, as columns (one list per field)."""

    __slots__ = ("event_id", "user_id", "item_id", "ts", "type", "label", "dense", "buckets", "code", "pair",
                 "shown", "learn", "record")

    def __init__(self):
        for name in self.__slots__:
            setattr(self, name, [])

    def __len__(self) -> int:
        return len(self.event_id)

    def add(self, event_id: str, user_id: str, item_id: str, ts: int, type_: str, label: float, dense, buckets,
            code: int, pair, shown: list[float] | None = None, learn: bool = True, record: bool = True) -> None:
        """``shown``: the scores its event got when it came (binary feedback: :class:`Predictions`), filled in
        before the batch learns; None for ratings."""
        self.event_id.append(event_id)
        self.user_id.append(user_id)
        self.item_id.append(item_id)
        self.ts.append(ts)
        self.type.append(type_)
        self.label.append(label)
        self.dense.append(dense)
        self.buckets.append(buckets)
        self.code.append(code)
        self.pair.append(pair)
        self.shown.append(shown)
        self.learn.append(learn)
        self.record.append(record)

    def add_shown(self, event_id: str, user_id: str, item_id: str, ts: int, type_: str, label: float,
                  shown: OpenImpression, learn: bool = True) -> None:
        """An example with the features stored with an impression: its negative, or the positive it had."""
        self.add(event_id, user_id, item_id, ts, type_, label, shown.dense, shown.buckets, shown.code, shown.pair,
                 shown.scores, learn)


@dataclass
class Predictions:
    """Labelled examples as columns, each predicted by every model and the fusion before anything
    learned from it (a rating as it is learned; binary feedback as its event came: an impression's
    outcome when it was shown); scores in the label's units (the rating, or 0..1 for binary feedback)."""

    event_id: list[str] = field(default_factory=list)
    user_id: list[str] = field(default_factory=list)
    item_id: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    type: list[str] = field(default_factory=list)
    label: list[float] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)
    fused: list[float] = field(default_factory=list)
    heldout: list[bool] = field(default_factory=list)
    #: How much the user's attribute correction (models.affinity) moved ``fused``; empty when it is off.
    correction: list[float] = field(default_factory=list)
    #: The like head's probability that the example is positive (models.like); empty when it is off, None
    #: for an outcome whose impression was scored by a release without it.
    like: list[float | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.event_id)

    def where(self, keep: list[bool]) -> Predictions:
        """The examples whose ``keep`` is true."""
        pick = lambda col: [v for v, k in zip(col, keep, strict=True) if k]  # noqa: E731
        return Predictions(pick(self.event_id), pick(self.user_id), pick(self.item_id), pick(self.ts), pick(self.type),
                           pick(self.label), {n: pick(c) for n, c in self.scores.items()}, pick(self.fused),
                           pick(self.heldout), pick(self.correction) if self.correction else [],
                           pick(self.like) if self.like else [])

    def extend(self, other: Predictions) -> None:
        for name in ("event_id", "user_id", "item_id", "ts", "type", "label", "fused", "heldout", "correction",
                     "like"):
            getattr(self, name).extend(getattr(other, name))
        for k, v in other.scores.items():
            self.scores.setdefault(k, []).extend(v)


@dataclass(slots=True)
class Recommendation:
    event: Event
    items: list[str]
    scores: list[float]


@dataclass
class BatchResult:
    examples: Predictions = field(default_factory=Predictions)
    recommendations: list[Recommendation] = field(default_factory=list)


def rows_tensor(values: list, dtype, device) -> torch.Tensor:
    """A tensor of a list of numbers or of equal-length rows, through NumPy: torch.tensor on nested
    lists takes about twice as long (1 µs an example for the dense features alone)."""
    return torch.from_numpy(np.array(values, dtype)).to(device)


def mf_clip(cfg: ModelConfig) -> float:
    """The MF's error clip: model.mf_grad_clip, or grad_clip where that is negative."""
    return cfg.grad_clip if cfg.mf_grad_clip < 0 else cfg.mf_grad_clip


def _mf_count(user: dict) -> float:
    """How many examples the user's MF parameters learned from (the warm-up steps'). State written
    before it was kept: the user's recent items stand in (a lower bound once the list is full)."""
    n = user.get("mf_n")
    return float(len(user["recent"])) if n is None else n


def is_heldout(event_id: str, fraction: float) -> bool:
    """A stable draw per event id, the same on every run."""
    return (zlib.crc32(event_id.encode()) % 10_000) < fraction * 10_000


class OnlineLearner:
    """A trainer and scorer replica: the model set plus the bookkeeping of unmerged deltas."""

    def __init__(self, cfg: ModelConfig, trainer_id: int = 0, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.scale = LabelScale.of(cfg)
        self.trainer_id = trainer_id
        self.models = ModelSet(cfg, device)
        self.device = self.models.device
        # The MF's exact-order pass is compiled for the CPU; on a GPU it runs as batched waves.
        self.compiled = self.device.type == "cpu"
        self.version = 0
        self.version_created_ms = 0
        self.seq = 0  # number of deltas handed over
        self.unmerged: list[tuple[int, dict[str, RowDelta]]] = []
        self.heldout: list[dict] = []
        #: False freezes every parameter: predictions go on, learning stops (benchmarks' frozen copy).
        self.learning = True
        #: Ranks searches (models.search.SearchRanker) when text is enabled; without it a search's
        #: candidates are ranked by the models alone, like any candidates request.
        self.search = None
        #: True: a top-k after every interaction (the tests' reference); False: once per user and batch,
        #: after the user's last interaction in it (the same list as that last per-event one).
        self.refresh_every_event = False
        #: The fusion's per-user correction (models.affinity); None when model.affinity_buckets is 0.
        self.affinity = UserAffinity(cfg) if cfg.affinity_buckets else None
        #: The item rows' attributes (the correction's, or the like head's alone); None when both are off.
        self.attributes = self.affinity if self.affinity is not None else (
            ItemAttributes(cfg) if cfg.like_bits else None)
        #: The like head (models.like), part of the model set; None when model.like_bits is 0.
        self.like = self.models.like
        self._users: dict[str, dict] = {}  # the batch's users (process), for the candidates' corrections

    def warm_up(self) -> None:
        """Compile now what the first batch would otherwise compile (no model uses autograd, whose
        first backward pass imports sympy: 0.35 s or more)."""
        sequential.warm_up()

    # -- users -------------------------------------------------------------------
    def new_user(self, user_id: str) -> dict:
        return self.new_users([user_id])[0]

    def new_users(self, user_ids: list[str]) -> list[dict]:
        """The model state of new users (their MF rows in one call)."""
        return [{"mf": v, "mf_n": 0.0, "recent": [], "impressions": {}} for v in self.models.mf.new_users(user_ids)]

    # -- per batch -------------------------------------------------------------------
    def process(self, inputs: list[Inputs], users: dict[str, dict]) -> BatchResult:
        """Learn from and score one batch; ``users`` maps user id -> user model state (updated in place)."""
        result = BatchResult()
        self._users = users
        attributes = self.attributes
        ctx = pair_of = None
        if self.search is not None:
            ctx = self.search.context(inputs, users, self.cfg.rating_min, self.cfg.rating_max)
            pair_of = self._pairs(ctx)
        cols = ExampleColumns()
        row_of: dict[int, int] = {}  # position in inputs -> its example row
        refresh_at: dict[int, list[str]] = {}  # position -> the user's recent items just after the event
        last_refresh: dict[str, int] = {}  # user -> position of their last top-k refresh
        searches: list[tuple[int, Inputs]] = []
        item_ids: list[str] = []  # items without an example (impressions, views): into the catalogue too
        shown: list[tuple[Inputs, list[float], list[float]]] = []  # binary feedback's events: scored as they come
        keep_recent = self.cfg.exclude_recent
        every = self.refresh_every_event
        for pos, x in enumerate(inputs):
            e = x.event
            user = users[e.user_id]
            t = e.type
            if e.item_id is not None:
                pair = pair_of[pos] if pair_of else NO_PAIR
                if attributes is not None and e.category is not None:
                    attributes.note(e.item_id, e.category)
                scores = None
                if t == "impression":
                    impressions = user["impressions"]
                    before = impressions.get(e.item_id)
                    if before is not None:  # shown again: the earlier one is a negative if its window closed
                        self._open_or_negative(before, e, cols)
                    scores = []
                    shown.append((x, pair, scores))
                    impressions[e.item_id] = OpenImpression(e.ts, e.event_id, x.dense, x.buckets, x.code, pair,
                                                            scores)
                    # Learned as a 0 at once (a "fake negative"); its outcome's record comes later.
                    row_of[pos] = len(cols)
                    cols.add(e.event_id, e.user_id, e.item_id, e.ts, t, 0.0, x.dense, x.buckets, x.code, pair,
                             scores, record=False)
                else:
                    attributed = None
                    if t in POSITIVE_TYPES:
                        before = user["impressions"].pop(e.item_id, None)
                        if before is not None:  # attributed if in its window; a negative if that closed
                            attributed = self._open_or_negative(before, e, cols)
                        if attributed is None:  # (an organic positive: scored as it comes too)
                            scores = []
                            shown.append((x, pair, scores))
                    recent = user["recent"]
                    if e.item_id in recent:
                        recent.remove(e.item_id)
                    recent.insert(0, e.item_id)
                    del recent[keep_recent:]
                label = e.value if t == RATING_TYPE else (1.0 if t in POSITIVE_TYPES else None)
                if label is not None:
                    row_of[pos] = len(cols)
                    if attributed is None:
                        cols.add(e.event_id, e.user_id, e.item_id, e.ts, t, label, x.dense, x.buckets, x.code, pair,
                                 scores)
                    else:  # learned from what the models saw when the item was shown, as its negative would be
                        cols.add_shown(e.event_id, e.user_id, e.item_id, e.ts, t, label, attributed)
                else:
                    item_ids.append(e.item_id)
            if e.candidates:
                if self.search is not None and t == "search":
                    searches.append((pos, x))
                else:
                    refresh_at[pos] = user["recent"]
            elif t in INTERACTION_TYPES:
                if not every:
                    refresh_at.pop(last_refresh.get(e.user_id, -1), None)
                    last_refresh[e.user_id] = pos
                refresh_at[pos] = list(user["recent"])

        if item_ids:
            self.models.rows(item_ids)
        start = {u: users[u]["mf"] for u in {x.event.user_id for x in inputs}}
        if shown:
            self._score_shown(shown, start)
        if searches:
            # Ranked with the parameters as of the batch's start: the rating that follows a
            # search within the same batch must not have moved its item's parameters yet.
            result.recommendations.extend(self._search(searches, start, ctx))
        after = None
        if len(cols):
            result.examples, after = self._learn(cols, users)
        if refresh_at:
            refresh = []
            latest = dict(start)  # a user's vector as of the event: after their last example so far
            for pos, x in enumerate(inputs):
                r = row_of.get(pos)
                if r is not None:
                    latest[x.event.user_id] = after[r]
                if pos in refresh_at:
                    refresh.append((x, latest[x.event.user_id], refresh_at[pos], pos))
            result.recommendations.extend(self._recommend(refresh, ctx))
        return result

    def _score_shown(self, shown: list[tuple[Inputs, list[float], list[float]]], start: dict[str, np.ndarray]) -> None:
        """Score binary feedback's events as they come, with the parameters as of the batch's start (before it
        learns anything): each impression as it is shown, and each positive no impression had. Fills each
        event's list with every model's score, the fused one and the correction's part of it, in binary units,
        and the like head's probability where it is on;
        :meth:`_learn` reports these for the event's outcome (:class:`Predictions`)."""
        m, dev = self.models, self.device
        lo, hi = self.scale.lo, self.scale.hi
        xs = [x for x, _, _ in shown]
        items = m.rows([x.event.item_id for x in xs])
        ex = Examples(items, torch.from_numpy(np.stack([start[x.event.user_id] for x in xs])).to(dev),
                      rows_tensor([x.dense for x in xs], np.float32, dev), rows_tensor([x.code for x in xs], np.int64, dev),
                      rows_tensor([x.buckets for x in xs], np.int64, dev),
                      rows_tensor([p for _, p, _ in shown], np.float32, dev))
        with torch.no_grad():
            raw, fused = m.predict(m.batch(ex))
        columns = [raw[name] for name in m.fusion.models]
        fused = fused.cpu()
        correction = torch.zeros_like(fused)
        if self.affinity is not None:
            tables = self.affinity.tables([self._users[x.event.user_id] for x in xs])
            adj = self.affinity.scores(tables, items.cpu().numpy()[:, None], m.params.index.ids)[:, 0]
            corrected = (fused + torch.from_numpy(adj)).clamp(lo, hi)
            correction, fused = corrected - fused, corrected
        table = ((torch.stack([*(c.cpu() for c in columns), fused]) - lo) / (hi - lo)).clamp(0.0, 1.0)
        table = torch.cat([table, correction[None] / (hi - lo)])
        if self.like is not None:  # the like head's score too, learning nothing (see Predictions)
            index: dict[str, int] = {}
            user_of = np.fromiter((index.setdefault(x.event.user_id, len(index)) for x in xs), np.int64, len(xs))
            cols = ExampleColumns()
            for x in xs:
                e = x.event
                cols.add(e.event_id, e.user_id, e.item_id, e.ts, e.type, 0.0, None, None, x.code, None)
            nothing = np.zeros(len(xs), np.bool_)
            like = self._like(index, user_of, cols, items, fused, torch.zeros_like(fused), nothing, nothing, nothing,
                              self._users)
            table = torch.cat([table, torch.from_numpy(like).to(table.dtype)[None]])
        table = table.T.tolist()
        for (_, _, scores), row in zip(shown, table, strict=True):
            scores.extend(row)

    @staticmethod
    def _pairs(ctx: TextContext) -> list[list[float]]:
        """Per position [t_query_sim, t_interest_sim] of its event's item (interest before the event),
        as the context computed them; read for events with an item only."""
        return ctx.pairs.tolist()

    def _candidate_pairs(self, cand: torch.Tensor, query: torch.Tensor, interest: torch.Tensor) -> torch.Tensor:
        """(B, M, 2) pair features of (B, M) candidate rows for (B, dim) query and interest vectors."""
        return self.search.row_pairs(cand, self.models.params.index.ids, query, interest).to(self.device)

    def _open_or_negative(self, stored, e: Event, cols: ExampleColumns) -> OpenImpression | None:
        """An open impression of ``e``'s user and item: returned if ``e`` is within its attribution window;
        if the window closed before ``e``, its 0's record now (learned as well if 0.1.0 stored it, unlearned),
        and None. Its timer may not have fired
        yet (a backlog's watermark trails the batches by seconds of processing time: minutes of event
        time); whether it is a negative must not depend on that. (Its timer then finds it gone, or
        superseded.)"""
        shown = OpenImpression.read(stored)
        if e.ts <= shown.ts + self.cfg.attribution_window_ms:
            return shown
        cols.add_shown(shown.event_id, e.user_id, e.item_id, shown.ts, "impression", 0.0, shown,
                       learn=shown.scores is None)  # (else learned as a 0 when shown, maybe in this batch)
        return None

    def expire_impressions(self, due: list[tuple[str, str, str]], users: dict[str, dict]) -> Predictions:
        """Impressions whose attribution window closed: the records of still open ones' 0s, with the scores
        they got when shown (learned as 0s when they came; those that 0.1.0 stored are learned now).

        ``due`` holds (user id, item id, impression event id).
        """
        cols = ExampleColumns()
        for user_id, item_id, event_id in due:
            user = users.get(user_id)
            if user is None:
                continue
            stored = user["impressions"].get(item_id)
            if stored is None:
                continue
            open_ = OpenImpression.read(stored)
            if open_.event_id != event_id:
                continue  # superseded by a newer impression
            del user["impressions"][item_id]
            cols.add_shown(event_id, user_id, item_id, open_.ts, "impression", 0.0, open_,
                           learn=open_.scores is None)
        if not len(cols):
            return Predictions()
        if not any(cols.learn) and all(cols.shown):  # (else scored, and the 0.1.0 ones learned, now)
            return self._stored(cols)
        return self._learn(cols, users)[0]

    def _stored(self, cols: ExampleColumns) -> Predictions:
        """The records of outcomes that nothing learns from, from the scores stored with their impressions."""
        names = self.models.fusion.models
        k = len(names)
        scores = [row for row in cols.shown]
        fraction = self.cfg.heldout_fraction
        return Predictions(cols.event_id, cols.user_id, cols.item_id, cols.ts, cols.type, cols.label,
                           {name: [row[j] for row in scores] for j, name in enumerate(names)},
                           [row[k] for row in scores], [is_heldout(e, fraction) for e in cols.event_id],
                           [row[k + 1] for row in scores] if self.affinity is not None else [],
                           [row[k + 2] if len(row) > k + 2 else None for row in scores] if self.like is not None
                           else [])

    def _mf(self, index: dict[str, int], user_of: np.ndarray, items: torch.Tensor, y: torch.Tensor,
            learn: np.ndarray, learned: torch.Tensor, users: dict[str, dict]
            ) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """The MF over the examples in order: raw predictions, and each row's user vector before and after it.

        ``index`` maps the batch's users to rows, ``user_of`` each example to its user's row; ``learn`` is
        the (n,) mask of examples to learn from, ``learned`` their positions."""
        m, cfg = self.models, self.cfg
        mf = m.mf
        vectors = np.stack([users[u]["mf"] for u in index]).astype(np.float32)
        counts = np.array([_mf_count(users[u]) for u in index], np.float32)
        if self.compiled:
            pred, before, after = sequential.mf_pass(
                vectors, user_of, items.numpy(), y.numpy(), learn, mf.q.data.numpy(), mf.b.data.numpy(),
                mf.mu.data.numpy()[0], cfg.mf_lr_bias, cfg.mf_lr_latent, cfg.mf_l2, cfg.mf_l2, mf_clip(cfg),
                counts, mf.n.data.numpy(), cfg.mf_warm_bias, cfg.mf_warm_latent, cfg.mf_warm_latent_c,
                mf.lr_item_bias, mf.lr_item_latent)
            pred = torch.from_numpy(pred)
        else:
            pred, before, after = self._mf_waves(vectors, counts, user_of, items, y, learn)
        for u, r in index.items():
            users[u]["mf"] = vectors[r].copy()
            users[u]["mf_n"] = float(counts[r])
        if len(learned):
            rows = items[learned.to(items.device)]
            mf.q.touch(rows)
            mf.b.touch(rows)
            mf.n.touch(rows)
            mf.mu.touch_dense(len(learned))
        return pred, before, after

    def _mf_waves(self, vectors: np.ndarray, counts: np.ndarray, user_of: np.ndarray, items: torch.Tensor,
                  y: torch.Tensor, learn: np.ndarray) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
        """:func:`models.sequential.mf_pass` as batched torch ops (for a GPU): the n-th example of every
        user forms wave n, so a user's vector follows their examples in order; an item that several users
        rated in one wave moves by the mean of their steps. ``vectors`` and ``counts`` (the users' example
        counts) are updated in place."""
        m, cfg, dev = self.models, self.cfg, self.device
        n = len(user_of)
        width = vectors.shape[1]
        before = np.empty((n, width), dtype=np.float32)
        after = np.empty((n, width), dtype=np.float32)
        pred = torch.empty(n, device=dev)
        waves: list[list[int]] = []
        depth: dict[int, int] = {}
        for i, u in enumerate(user_of.tolist()):
            d = depth.get(u, 0)
            depth[u] = d + 1
            if d == len(waves):
                waves.append([])
            waves[d].append(i)
        for wave in waves:
            rows = user_of[wave]
            vecs = vectors[rows]
            before[wave] = vecs
            idx = torch.tensor(wave, device=dev)
            u = torch.from_numpy(vecs).to(dev)
            batch = Batch(items=items[idx], user_params={"mf": u})
            with torch.no_grad():
                p = m.mf.predict_many(batch)
            pred[idx] = p
            train = [j for j, i in enumerate(wave) if learn[i]]
            if train:
                t = torch.tensor(train, device=dev)
                n_u = torch.from_numpy(counts[rows[train]]).to(dev)
                sub = Batch(items=batch.items[t], user_params={"mf": u[t], "mf_n": n_u})
                clip = mf_clip(cfg)
                m.mf.learn_many(sub, y[idx][t], grad=(p[t] - y[idx][t]).clamp(-clip, clip), touch=False)
                counts[rows[train]] = n_u.cpu().numpy()
                vecs[train] = np.nan_to_num(sub.user_params["mf"].cpu().numpy(), nan=0.0, posinf=0.0, neginf=0.0)
            after[wave] = vecs
            vectors[rows] = vecs
        return pred, before, after

    def _learn(self, cols: ExampleColumns, users: dict[str, dict]) -> tuple[Predictions, np.ndarray]:
        """Predict every example, then learn from all but the held-out share.

        The MF runs first, example by example in order (models.sequential): a
        user's vector follows their examples exactly as one at a time. FTRL
        (on the CPU) goes example by example too. The ranker and the fusion
        then predict and learn in chunks of ``step_examples`` rows counted
        along the stream (compiled on the CPU too), with each user's MF
        vector as it was before the row; their view of the user is the
        feature vector computed before each event. Returns the predictions
        and each row's user vector after it.
        """
        m, cfg, dev = self.models, self.cfg, self.device
        n = len(cols)
        scale = self.scale
        lo, hi = scale.lo, scale.hi
        items = m.rows(cols.item_id)
        is_rating = [t == RATING_TYPE for t in cols.type]
        y = torch.tensor([scale.target(v, r) for v, r in zip(cols.label, is_rating, strict=True)],
                         dtype=torch.float32)
        fraction = cfg.heldout_fraction
        heldout = [is_heldout(e, fraction) for e in cols.event_id]
        # What every model learns from: all but the held-out share (nothing when frozen).
        learn = ~np.array(heldout, np.bool_) & np.array(cols.learn, np.bool_) if self.learning else np.zeros(n, np.bool_)
        learned = torch.from_numpy(np.flatnonzero(learn))
        index: dict[str, int] = {}  # the batch's users, in order of first example (the MF's and the correction's)
        user_of = np.fromiter((index.setdefault(u, len(index)) for u in cols.user_id), np.int64, n)
        mf_pred, before, after = self._mf(index, user_of, items, y.to(dev), learn, learned, users)

        ex = Examples(
            items,
            torch.from_numpy(before).to(dev),
            rows_tensor(cols.dense, np.float32, dev),
            rows_tensor(cols.code, np.int64, dev),
            rows_tensor(cols.buckets, np.int64, dev),
            rows_tensor(cols.pair, np.float32, dev),
        )
        batch = m.batch(ex)
        ftrl = m.ftrl
        if self.compiled:  # FTRL too, example by example (models.sequential): predicted, then learned
            ftrl_pred = torch.from_numpy(sequential.ftrl_pass(
                ftrl.z.data.numpy(), ftrl.n.data.numpy(), batch.sparse.numpy(), y.numpy(), learn,
                ftrl.alpha, ftrl.beta, ftrl.l1, ftrl.l2, ftrl.offset, cfg.grad_clip))
            if len(learned):
                rows = batch.sparse[learned].flatten()
                ftrl.z.touch(rows)
                ftrl.n.touch(rows)
        y = y.to(dev)
        learn_mask = torch.from_numpy(learn).to(dev) if len(learned) else None
        # The fusion fuses (and learns from) binary feedback's scores as its event came: what serving fused.
        shown = None
        names = m.fusion.models
        width = len(names) + 2
        rows_shown = [i for i, sc in enumerate(cols.shown) if sc and len(sc) >= width]  # (+ the like's)
        if rows_shown:
            shown = np.full((n, len(names)), np.nan, np.float32)
            shown[rows_shown] = [cols.shown[i][: len(names)] for i in rows_shown]
            shown = np.where(np.array(is_rating)[:, None], shown, lo + shown * (hi - lo))  # (into raw units)
        with torch.no_grad():
            if not self.compiled:
                ftrl_pred = ftrl.predict_many(batch)
            # The ranker and the fusion predict and learn in chunks counted along the stream
            # (NeuralRanker.predict_and_learn, OnlineFusion.predict_and_learn): their predictions do not
            # depend on how the stream was cut into batches. On the CPU as one compiled pass.
            if self.compiled:
                user = np.ascontiguousarray(before[:, :-1])  # (one layout: one compilation, see warm_up)
                ranker_pred, fused = m.ranker_and_fusion_compiled(batch, user, y.numpy(), learn, mf_pred.numpy(),
                                                                  ftrl_pred.numpy(), shown)
                raw = {m.mf.name: mf_pred, ftrl.name: ftrl_pred, m.ranker.name: ranker_pred}
            else:
                ranker_pred = m.ranker.predict_and_learn(batch, y, learn_mask)
                raw = {m.mf.name: mf_pred.to(dev), ftrl.name: ftrl_pred, m.ranker.name: ranker_pred}
                into, at = raw, None
                if shown is not None:
                    at = torch.from_numpy(~np.isnan(shown[:, 0])).to(dev)
                    into = {k: torch.where(at, torch.from_numpy(shown[:, j]).to(dev), v)
                            for j, (k, v) in enumerate(raw.items())}
                fused = m.fusion.predict_and_learn(into, y, learn_mask, cfg.step_examples, at)
            fused = fused.clamp(lo, hi)
        blend = None
        if self.affinity is not None:
            blend, fused = fused, self._affinity(index, user_of, items, fused, y, learn, users)
        like = None
        if self.like is not None:
            positive = self.scale.positives(np.array(cols.label, np.float64), np.array(is_rating, np.bool_))
            like = self._like(index, user_of, cols, items, fused, y, positive, np.array(is_rating, np.bool_), learn,
                              users)

        # Scores in the label's units (LabelScale.units, as one op per model): ratings clamped to the
        # scale, binary feedback rescaled to 0..1.
        rating = torch.tensor(is_rating, device=dev)

        def units(v: torch.Tensor) -> torch.Tensor:
            v = v.clamp(lo, hi)
            return torch.where(rating, v, (v - lo) / (hi - lo))

        fused_units = units(fused)
        out = Predictions(cols.event_id, cols.user_id, cols.item_id, cols.ts, cols.type, cols.label,
                          {k: units(v).tolist() for k, v in raw.items()}, fused_units.tolist(), heldout,
                          [] if blend is None else (fused_units - units(blend)).tolist(),
                          [] if like is None else like.tolist())
        k = len(names)
        for i in rows_shown:  # binary feedback: the scores its event got as it came
            scores = cols.shown[i]
            for j, name in enumerate(names):
                out.scores[name][i] = scores[j]
            out.fused[i] = scores[k]
            if out.correction:
                out.correction[i] = scores[k + 1]
            if out.like and len(scores) > k + 2:  # (else scored without the head: its score now)
                out.like[i] = scores[k + 2]
        if not all(cols.record):
            out = out.where(cols.record)
        if self.learning:
            for i in (i for i in range(n) if heldout[i] and cols.learn[i]):  # plain values: pickled for the merger
                self.heldout.append({"item": cols.item_id[i], "user_params": before[i],
                                     "user_dense": np.array(cols.dense[i], np.float32), "user_code": cols.code[i],
                                     "user_buckets": np.array(cols.buckets[i], np.int64),
                                     "pair": np.array(cols.pair[i], np.float32), "y": float(y[i])})
            if len(learned) and not self.compiled:  # (compiled: FTRL learned in its pass; the ranker and
                t = learned.to(dev)                  # the fusion learn as they predict, above)
                sub = batch if len(learned) == n else batch.subset(t)
                m.learn(sub, y[t], {k: v[t] for k, v in raw.items()}, models=[ftrl], fusion=False)
        return out, after

    def _affinity(self, index: dict[str, int], user_of: np.ndarray, items: torch.Tensor, fused: torch.Tensor,
                  y: torch.Tensor, learn: np.ndarray, users: dict[str, dict]) -> torch.Tensor:
        """The fused predictions with each user's attribute correction (models.affinity), which then
        learns from each example's remaining error, in order."""
        aff = self.affinity
        names = list(index)
        tables = aff.tables([users[u] for u in names])
        adj = aff.learn(tables, user_of, items.cpu().numpy(), fused.cpu().numpy(), y.cpu().numpy(), learn,
                        self.models.params.index.ids)
        for r in np.unique(user_of[learn]).tolist():  # (users who learned: a user keeps a table from then on)
            users[names[r]]["aff"] = tables[r].copy()
        return (fused + torch.from_numpy(adj).to(fused.device)).clamp(self.scale.lo, self.scale.hi)

    def _like(self, index: dict[str, int], user_of: np.ndarray, cols: ExampleColumns, items: torch.Tensor,
              fused: torch.Tensor, y: torch.Tensor, positive: np.ndarray, rating: np.ndarray, learn: np.ndarray,
              users: dict[str, dict]) -> np.ndarray:
        """The like head's probabilities (models.like) of the examples, after the fused rating (with the
        correction), learning in order where ``learn``; the users who learned from a rating keep their row."""
        head, names, m = self.like, list(index), self.models
        stats = head.stats([users[u] for u in names])
        n = len(cols)
        out = head.pass_(stats, user_of, names, np.fromiter(cols.code, np.int64, n), m.item_id_codes(),
                         items.cpu().numpy(), self.attributes.update(m.params.index.ids),
                         fused.cpu().numpy(), y.cpu().numpy(), positive, np.fromiter(cols.ts, np.int64, n), rating,
                         learn)
        for r in np.unique(user_of[learn & rating]).tolist():  # (only ratings move a user's row)
            users[names[r]]["like"] = stats[r].copy()
        return out

    # -- recommendations -------------------------------------------------------------
    def _recommend(self, refresh: list[tuple[Inputs, np.ndarray, list[str], int]],
                   ctx: TextContext | None = None) -> list[Recommendation]:
        """Per refresh: (the event, the user's vector as of it, the user's recent items as of it, its position)."""
        m, cfg = self.models, self.cfg
        out: list[Recommendation] = []
        requests = [(x, p, pos) for x, p, _, pos in refresh if x.event.candidates]
        updates = [(x, p, recent, pos) for x, p, recent, pos in refresh if not x.event.candidates]
        if updates and m.params.n_items:
            params = torch.from_numpy(np.stack([p for _, p, _, _ in updates])).to(self.device)
            with torch.no_grad():
                mf_scores = m.mf.score_catalogue(params)
            row_of = m.params.index._rows
            rs, cs = [], []
            for r, (_, _, recent, _) in enumerate(updates):
                cols = [c for c in map(row_of.get, recent) if c is not None]
                rs.extend([r] * len(cols))
                cs.extend(cols)
            if rs:
                mf_scores[torch.tensor(rs, device=self.device), torch.tensor(cs, device=self.device)] = float("-inf")
            k = min(cfg.retrieve, mf_scores.shape[1])
            top_mf, cand = torch.topk(mf_scores, k, dim=1)
            pair = self._after_pairs(ctx, [pos for *_, pos in updates], cand)
            out.extend(self._rerank([(x, p) for x, p, _, _ in updates], params, cand, top_mf > float("-inf"), pair))
        if requests:
            cand, valid = self._candidates([x for x, _, _ in requests])
            params = torch.from_numpy(np.stack([p for _, p, _ in requests])).to(self.device)
            pair = self._after_pairs(ctx, [pos for *_, pos in requests], cand)
            out.extend(self._rerank([(x, p) for x, p, _ in requests], params, cand, valid, pair))
        return out

    def _after_pairs(self, ctx: TextContext | None, positions: list[int], cand: torch.Tensor) -> torch.Tensor | None:
        """Candidates' pair features with the query in force and the interest just after each event."""
        if ctx is None:
            return None
        idx = torch.tensor(positions, device=ctx.q_table.device)
        return self._candidate_pairs(cand, ctx.query_at(idx), ctx.after_at(idx))

    def _candidates(self, items: list[Inputs]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, W) parameter rows of each item's candidates, padded, and the (B, W) validity mask."""
        width = max(len(x.event.candidates) for x in items)
        cand = torch.zeros(len(items), width, dtype=torch.long, device=self.device)
        valid = torch.zeros(len(items), width, dtype=torch.bool, device=self.device)
        for r, x in enumerate(items):
            rows = self.models.rows(x.event.candidates)
            cand[r, : len(rows)] = rows
            valid[r, : len(rows)] = True
        return cand, valid

    def _search(self, searches: list[tuple[int, Inputs]], user_vectors: dict[str, np.ndarray],
                ctx: TextContext) -> list[Recommendation]:
        """Rank each search's candidates: the models' scores (which see the query as ``t_query_sim``)
        fused with query-item similarity. The user's interest is the one before the search."""
        inputs = [x for _, x in searches]
        cand, valid = self._candidates(inputs)
        params = torch.from_numpy(np.stack([user_vectors[x.event.user_id] for x in inputs])).to(self.device)
        items = [(x, None) for x in inputs]
        idx = torch.tensor([pos for pos, _ in searches], device=ctx.q_table.device)
        pair = self._candidate_pairs(cand, ctx.query_at(idx), ctx.before_at(idx))
        personal = self._score(items, params, cand, pair).masked_fill(~valid, float("-inf"))
        with torch.no_grad():
            fused = self.search.fuse(personal, [x.event.query for x in inputs], [x.event.candidates for x in inputs],
                                     valid)
        return self._top(items, cand, fused)

    def _score(self, items, params, cand, pair=None) -> torch.Tensor:
        m = self.models
        dense = torch.tensor([x.dense_after or x.dense for x, _ in items], dtype=torch.float32, device=self.device)
        codes = torch.tensor([x.code for x, _ in items], dtype=torch.long, device=self.device)
        buckets = torch.tensor([x.buckets_after or x.buckets for x, _ in items], dtype=torch.long, device=self.device)
        with torch.no_grad():
            scores = m.score_candidates(params, dense, codes, buckets, cand, pair)
        aff = self.affinity
        if aff is not None and self.cfg.affinity_ranking:
            tables = aff.tables([self._users[x.event.user_id] for x, _ in items])
            adj = aff.scores(tables, cand.cpu().numpy(), m.params.index.ids)
            scores = scores + torch.from_numpy(adj).to(scores.device)
        return scores

    def _rerank(self, items, params, cand, valid, pair=None) -> list[Recommendation]:
        scores = self._score(items, params, cand, pair).masked_fill(~valid, float("-inf"))
        return self._top(items, cand, scores)

    def _top(self, items, cand, scores) -> list[Recommendation]:
        m = self.models
        k = min(self.cfg.top_k, scores.shape[1])
        top, pos = torch.topk(scores, k, dim=1)
        rows = torch.gather(cand, 1, pos).tolist()
        top = top.cpu().numpy()
        whole = np.isfinite(top).all(1).tolist()  # (a list shorter than k where candidates ran out)
        top = np.round(top.astype(np.float64), 5).tolist()  # (5 decimals: the records' scores)
        ids = m.params.index.ids
        out = []
        neg = float("-inf")
        for (x, _), s, r, w in zip(items, top, rows, whole, strict=True):
            if w:
                out.append(Recommendation(x.event, [ids[j] for j in r], s))
            else:
                keep = [j for j, v in enumerate(s) if v != neg]
                out.append(Recommendation(x.event, [ids[r[j]] for j in keep], [s[j] for j in keep]))
        return out

    # -- versions and deltas -------------------------------------------------------------
    def take_delta(self) -> tuple[int, dict[str, RowDelta], list[dict]] | None:
        """The change since the last hand-over, numbered, with the held-out examples gathered meanwhile."""
        delta = self.models.params.take_delta()
        heldout, self.heldout = self.heldout, []
        if not delta and not heldout:
            return None
        self.seq += 1
        self.unmerged.append((self.seq, delta))
        return self.seq, delta, heldout

    def apply_version(self, version: Version) -> bool:
        """Adopt a newer merged version, keeping this trainer's own updates that it does not include yet."""
        if version.number <= self.version:
            return False
        self.models.params.take_delta()  # nothing should be pending between batches; start clean anyway
        self.models.params.load_state_dict(version.state)
        merged = version.merged_upto.get(self.trainer_id, 0)
        self.unmerged = [(s, d) for s, d in self.unmerged if s > merged]
        for _, d in self.unmerged:
            self.models.params.add_delta(d)
        self.models.loaded()
        self.version = version.number
        self.version_created_ms = version.created_ms
        return True
