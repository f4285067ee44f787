"""Online learning and scoring for one trainer: plain Python and PyTorch, no Flink.

The UserStage (udfs/user_stage.py) feeds an :class:`OnlineLearner` one
micro-batch at a time; benchmarks and tests feed it directly. Per batch it

1. turns feedback into examples (ratings; clicks, carts and purchases as
   positives; impressions are remembered and become negatives when their
   attribution window closes without a positive),
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

from models.base import Batch
from models.ensemble import Examples, ModelSet
from models.params import RowDelta, Version
from models.search import TextContext
from rtrec.config import ModelConfig
from rtrec.events import POSITIVE_TYPES, Event

#: Pair features of an example without text signals (text off, or an impression stored before).
NO_PAIR = [0.0, 0.0]
#: Event types after which a user's top-k is refreshed.
REFRESH_TYPES = frozenset({"view", "click", "add_to_cart", "purchase", "rating"})


@dataclass
class Inputs:
    """An event with what the models need to know about its user, gathered by the caller."""

    event: Event
    dense: list[float]  # user dense features before the event
    buckets: tuple[int, int]  # user buckets before the event
    code: int  # user id code
    dense_after: list[float] | None = None  # after the event (for the top-k refresh)
    buckets_after: tuple[int, int] | None = None


@dataclass
class Example:
    """One labelled example, as it was predicted (and, unless held out, learned)."""

    event_id: str
    user_id: str
    item_id: str
    ts: int
    type: str
    label: float  # in the label's units: the rating, or 1/0
    scores: dict[str, float]  # per model, in the label's units
    fused: float
    heldout: bool


@dataclass
class Recommendation:
    event: Event
    items: list[str]
    scores: list[float]


@dataclass
class BatchResult:
    examples: list[Example] = field(default_factory=list)
    recommendations: list[Recommendation] = field(default_factory=list)


def is_heldout(event_id: str, fraction: float) -> bool:
    """A stable draw per event id, the same on every run."""
    return (zlib.crc32(event_id.encode()) % 10_000) < fraction * 10_000


class OnlineLearner:
    """A trainer and scorer replica: the model set plus the bookkeeping of unmerged deltas."""

    def __init__(self, cfg: ModelConfig, trainer_id: int = 0, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.trainer_id = trainer_id
        self.models = ModelSet(cfg, device)
        self.device = self.models.device
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

    # -- users -------------------------------------------------------------------
    def new_user(self, user_id: str) -> dict:
        return {"mf": self.models.mf.new_user(user_id).numpy(), "recent": [], "impressions": {}}

    # -- labels -------------------------------------------------------------------
    def _label(self, e: Event) -> float | None:
        if e.type == "rating":
            return e.value
        if e.type in POSITIVE_TYPES:
            return 1.0
        return None

    def _to_rating(self, label: float, type_: str) -> float:
        if type_ in ("rating",):
            return label
        return self.cfg.rating_max if label >= 0.5 else self.cfg.rating_min

    def _to_label_units(self, rating: float, type_: str) -> float:
        if type_ == "rating":
            return rating
        lo, hi = self.cfg.rating_min, self.cfg.rating_max
        return min(1.0, max(0.0, (rating - lo) / (hi - lo)))

    # -- per batch -------------------------------------------------------------------
    def process(self, inputs: list[Inputs], users: dict[str, dict]) -> BatchResult:
        """Learn from and score one batch; ``users`` maps user id -> user model state (updated in place)."""
        result = BatchResult()
        ctx = pair_of = None
        if self.search is not None:
            ctx = self.search.context(inputs, users, self.cfg.rating_min, self.cfg.rating_max)
            pair_of = self._pairs(inputs, ctx)
        rows: list[tuple] = []
        row_of: dict[int, int] = {}  # position in inputs -> its example row
        recent_at: dict[int, list[str]] = {}  # position -> the user's recent items just after the event
        searches: list[Inputs] = []
        for pos, x in enumerate(inputs):
            e = x.event
            user = users[e.user_id]
            if e.item_id is not None:
                pair = pair_of[pos] if pair_of else NO_PAIR
                if e.type == "impression":
                    user["impressions"][e.item_id] = (e.ts, e.event_id, x.dense, x.buckets, x.code, pair)
                else:
                    if e.type in POSITIVE_TYPES:
                        user["impressions"].pop(e.item_id, None)  # attributed: not a negative
                    recent = user["recent"]
                    if e.item_id in recent:
                        recent.remove(e.item_id)
                    recent.insert(0, e.item_id)
                    del recent[self.cfg.exclude_recent :]
                label = self._label(e)
                if label is not None:
                    row_of[pos] = len(rows)
                    rows.append((e.event_id, e.user_id, e.item_id, e.ts, e.type, label, x.dense, x.buckets, x.code,
                                 pair))
            if self.search is not None and e.type == "search" and e.candidates:
                searches.append((pos, x))
            elif e.candidates or e.type in REFRESH_TYPES:
                recent_at[pos] = list(user["recent"])
        self.models.rows([x.event.item_id for x in inputs if x.event.item_id is not None])

        start = {u: users[u]["mf"].copy() for u in {x.event.user_id for x in inputs}}
        if searches:
            # Ranked with the parameters as of the batch's start: the rating that follows a
            # search within the same batch must not have moved its item's parameters yet.
            result.recommendations.extend(self._search(searches, start, ctx))
        after: list[np.ndarray] = []
        if rows:
            examples, after = self._learn(rows, users)
            result.examples.extend(examples)
        if recent_at:
            refresh = []
            latest = dict(start)  # a user's vector as of the event: after their last example so far
            for pos, x in enumerate(inputs):
                if pos in row_of:
                    latest[x.event.user_id] = after[row_of[pos]]
                if pos in recent_at:
                    refresh.append((x, latest[x.event.user_id], recent_at[pos], pos))
            result.recommendations.extend(self._recommend(refresh, ctx))
        return result

    def _pairs(self, inputs: list[Inputs], ctx: TextContext) -> dict[int, list[float]]:
        """Position -> [t_query_sim, t_interest_sim] of each event with an item (interest before the event)."""
        pos = [p for p, x in enumerate(inputs) if x.event.item_id is not None]
        if not pos:
            return {}
        idx = torch.tensor(pos, device=ctx.query.device)
        vecs = self.search.item_vectors([inputs[p].event.item_id for p in pos])
        pairs = TextContext.pair(ctx.query[idx], ctx.before[idx], vecs.to(ctx.query.device)).tolist()
        return dict(zip(pos, pairs, strict=True))

    def _candidate_pairs(self, cand: torch.Tensor, query: torch.Tensor, interest: torch.Tensor) -> torch.Tensor:
        """(B, M, 2) pair features of (B, M) candidate rows for (B, dim) query and interest vectors."""
        vecs = self.search.row_vectors(cand, self.models.params.index.ids)
        return TextContext.pair(query, interest, vecs).to(self.device)

    def expire_impressions(self, due: list[tuple[str, str, str]], users: dict[str, dict]) -> list[Example]:
        """Impressions whose attribution window closed: still open ones become negative examples.

        ``due`` holds (user id, item id, impression event id).
        """
        rows = []
        for user_id, item_id, event_id in due:
            user = users.get(user_id)
            if user is None:
                continue
            open_ = user["impressions"].get(item_id)
            if open_ is None or open_[1] != event_id:
                continue  # clicked since, or superseded by a newer impression
            del user["impressions"][item_id]
            ts, _, dense, buckets, code = open_[:5]
            pair = open_[5] if len(open_) > 5 else NO_PAIR
            rows.append((event_id, user_id, item_id, ts, "impression", 0.0, dense, buckets, code, pair))
        return self._learn(rows, users)[0] if rows else []

    def _learn(self, rows: list[tuple], users: dict[str, dict]) -> tuple[list[Example], list[np.ndarray]]:
        """Predict every row, then learn from all but the held-out share.

        MF runs first, in waves (the n-th row of every user forms wave n): a
        user's vector follows their examples in order, exactly as one at a
        time. FTRL, the ranker and the fusion then predict all rows (with each
        user's vector as it was before the row) and take one step on the batch;
        their view of the user is the feature vector computed before each event.
        Returns the examples and each row's user vector after it.
        """
        m, cfg, dev = self.models, self.cfg, self.device
        n = len(rows)
        item_rows = m.rows([r[2] for r in rows])
        y = torch.tensor([self._to_rating(r[5], r[4]) for r in rows], dtype=torch.float32, device=dev)
        heldout = [is_heldout(r[0], cfg.heldout_fraction) for r in rows]

        width = m.mf.user_width
        before = np.empty((n, width), dtype=np.float32)
        after = np.empty((n, width), dtype=np.float32)
        mf_pred = torch.empty(n, device=dev)
        waves: list[list[int]] = []
        depth: dict[str, int] = {}
        for i, r in enumerate(rows):
            d = depth.get(r[1], 0)
            depth[r[1]] = d + 1
            if d == len(waves):
                waves.append([])
            waves[d].append(i)
        for wave in waves:
            vecs = np.stack([users[rows[i][1]]["mf"] for i in wave]).astype(np.float32)
            before[wave] = vecs
            idx = torch.tensor(wave, device=dev)
            u = torch.from_numpy(vecs).to(dev)
            batch = Batch(items=item_rows[idx], user_params={"mf": u})
            with torch.no_grad():
                p = m.mf.predict_many(batch)
            mf_pred[idx] = p
            train = [j for j, i in enumerate(wave) if not heldout[i]] if self.learning else []
            if train:
                t = torch.tensor(train, device=dev)
                sub = Batch(items=batch.items[t], user_params={"mf": u[t]})
                m.mf.learn_many(sub, y[idx][t], grad=(p[t] - y[idx][t]).clamp(-cfg.grad_clip, cfg.grad_clip))
                learned = sub.user_params["mf"].cpu().numpy()
                if not np.isfinite(learned).all():  # a diverged user vector is reset, not stored
                    learned = np.nan_to_num(learned, nan=0.0, posinf=0.0, neginf=0.0)
                vecs[train] = learned
            after[wave] = vecs
            for j, i in enumerate(wave):
                users[rows[i][1]]["mf"] = vecs[j]

        ex = Examples(
            item_rows,
            torch.from_numpy(before).to(dev),
            torch.tensor([r[6] for r in rows], dtype=torch.float32, device=dev),
            torch.tensor([r[8] for r in rows], dtype=torch.long, device=dev),
            torch.tensor([r[7] for r in rows], dtype=torch.long, device=dev),
            torch.tensor([r[9] for r in rows], dtype=torch.float32, device=dev),
        )
        batch = m.batch(ex)
        with torch.no_grad():
            raw = {m.mf.name: mf_pred, m.ftrl.name: m.ftrl.predict_many(batch),
                   m.ranker.name: m.ranker.predict_many(batch)}
        lo, hi = cfg.rating_min, cfg.rating_max
        fused = m.fusion.predict(raw).clamp(lo, hi)

        examples = []
        scores_cpu = {k: v.clamp(lo, hi).tolist() for k, v in raw.items()}
        fused_cpu = fused.tolist()
        for i, r in enumerate(rows):
            t = r[4]
            examples.append(Example(
                r[0], r[1], r[2], r[3], t, r[5],
                {k: self._to_label_units(v[i], t) for k, v in scores_cpu.items()},
                self._to_label_units(fused_cpu[i], t), heldout[i],
            ))
        train = [i for i in range(n) if not heldout[i]] if self.learning else []
        for i in range(n):
            if heldout[i] and self.learning:
                self.heldout.append({"item": rows[i][2], "user_params": ex.user_params[i].cpu(),
                                     "user_dense": ex.user_dense[i].cpu(), "user_code": int(ex.user_codes[i]),
                                     "user_buckets": ex.user_buckets[i].cpu(), "pair": ex.pair[i].cpu(),
                                     "y": float(y[i])})
        if train:
            t = torch.tensor(train, device=dev)
            sub = ex.subset(t)
            m.learn(m.batch(sub), y[t], {k: v[t] for k, v in raw.items()}, models=[m.ftrl, m.ranker])
        return examples, list(after)

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
        idx = torch.tensor(positions, device=ctx.query.device)
        return self._candidate_pairs(cand, ctx.query[idx], ctx.after[idx])

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
        idx = torch.tensor([pos for pos, _ in searches], device=ctx.query.device)
        pair = self._candidate_pairs(cand, ctx.query[idx], ctx.before[idx])
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
            return m.score_candidates(params, dense, codes, buckets, cand, pair)

    def _rerank(self, items, params, cand, valid, pair=None) -> list[Recommendation]:
        scores = self._score(items, params, cand, pair).masked_fill(~valid, float("-inf"))
        return self._top(items, cand, scores)

    def _top(self, items, cand, scores) -> list[Recommendation]:
        m = self.models
        k = min(self.cfg.top_k, scores.shape[1])
        top, pos = torch.topk(scores, k, dim=1)
        rows = torch.gather(cand, 1, pos).tolist()
        top = top.tolist()
        ids = m.params.index.ids
        out = []
        neg = float("-inf")
        for (x, _), s, r in zip(items, top, rows, strict=True):
            keep = [j for j, v in enumerate(s) if v != neg]
            out.append(Recommendation(x.event, [ids[r[j]] for j in keep], [round(s[j], 5) for j in keep]))
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
