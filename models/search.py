"""Text in the scorer: search ranking, and text similarities as features of the models.

The UserStage's learner holds one :class:`SearchRanker` when ``text.enabled``.
A micro-batch's searches are ranked together: one forward pass of the text
encoder over the queries it has not seen recently, one gather of the
candidates' text vectors, one batched product, then the per-query fusion of
:func:`rtrec.search.fuse_search`.

It also keeps each user's text signals in the user's model state (so in
Flink's keyed state, checkpointed with the rest): the latest search query and
its time, and the decayed text-interest vector (:func:`models.text.decay_interest`
over the items the user liked), both as float16 (768 bytes each). The signals
live in the *centred* text space: vectors minus the catalogue's mean vector,
renormalised. Raw MiniLM cosines between any two movie texts sit around 0.5;
centred ones spread over -1..1 (on a made-up taste stream, interest-item
similarity of liked vs other items: 0.65 vs 0.50 raw, 0.33 vs -0.03 centred),
which is what a linear model over the features needs. Search fusion keeps the
raw query-item cosine (benchmarks/search_quality.py measured it that way).
:meth:`SearchRanker.context` walks a micro-batch in order and gives, per
event, the query in force (a search within ``text.query_window_ms``) and the
interest before and after the event; the learner turns them into the pair
features ``t_query_sim`` and ``t_interest_sim`` (rtrec.features.model_inputs)
of every example it learns and every candidate it scores.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.sequential import interest_pass, text_pairs
from models.text import ItemTextIndex, TextEncoder, movielens_texts
from rtrec.config import TextConfig
from rtrec.datasets import catalogue_rows
from rtrec.events import EVENT_TABLE
from rtrec.search import fuse_search


def catalogue_texts(source: str) -> dict[str, str]:
    """Item id -> text: ``movielens-100k`` (titles, years and genres), a ``.jsonl`` of
    ``{"item_id", "text"}`` lines, a ``.csv`` with ``item_id`` and ``text`` columns, or ``""`` (none)."""
    if not source:
        return {}
    if source == "movielens-100k":
        return movielens_texts()
    return {str(r["item_id"]): str(r["text"]) for r in catalogue_rows(source, "text.catalogue")}


def interest_weight(event_type: str, value: float | None, rating_min: float, rating_max: float) -> float:
    """How much an event pulls its user's text interest towards its item (0: not at all).

    A rating counts by how far it sits above the middle of the scale (the top
    rating 1, the middle or below 0: not a like); other types by their
    :attr:`rtrec.events.EventType.interest`.

    >>> interest_weight("rating", 5.0, 1, 5), interest_weight("rating", 3.0, 1, 5), interest_weight("click", None, 1, 5)
    (1.0, 0.0, 0.5)
    """
    if event_type == "rating":
        mid = (rating_min + rating_max) / 2
        return rating_interest(value, mid, rating_max - mid)
    t = EVENT_TABLE.get(event_type)
    return t.interest if t is not None else 0.0


def rating_interest(value: float | None, mid: float, half_span: float) -> float:
    """A rating's :func:`interest_weight`, from the middle of the scale and its distance to the top."""
    return max(0.0, min(1.0, ((value or 0.0) - mid) / half_span))


class TextContext:
    """A micro-batch's text signals, per input position, in the centred text space (see the module's
    docstring), on the device.

    Rows are zeros where there is no signal: no search within the query window,
    no liked item yet. Their cosine with an item's text vector is then 0. The
    vectors stay in two small tables (the queries; the users' interests before
    the batch and after each update) with a row per position, gathered only for
    the positions asked for (:meth:`query_at`, ...): most positions need only
    their pair features, which :meth:`SearchRanker.context` computes at once.
    """

    def __init__(self, q_table: torch.Tensor, query_rows: torch.Tensor, i_table: torch.Tensor,
                 before_rows: torch.Tensor, after_rows: torch.Tensor, pairs: torch.Tensor):
        self.q_table, self.query_rows = q_table, query_rows
        self.i_table, self.before_rows, self.after_rows = i_table, before_rows, after_rows
        #: (P, 2) ``[t_query_sim, t_interest_sim]`` of each position's own item (interest before the
        #: event; zeros for an event without an item)
        self.pairs = pairs

    def query_at(self, idx: torch.Tensor) -> torch.Tensor:
        """The user's latest query within the window, as of the event at each position (a search: its own)."""
        return self.q_table[self.query_rows[idx]]

    def before_at(self, idx: torch.Tensor) -> torch.Tensor:
        """The user's text interest before the event at each position."""
        return self.i_table[self.before_rows[idx]]

    def after_at(self, idx: torch.Tensor) -> torch.Tensor:
        """... and after it."""
        return self.i_table[self.after_rows[idx]]

    @property
    def query(self) -> torch.Tensor:  # (every position: for tests and tools)
        return self.q_table[self.query_rows]

    @property
    def before(self) -> torch.Tensor:
        return self.i_table[self.before_rows]

    @property
    def after(self) -> torch.Tensor:
        return self.i_table[self.after_rows]

    @staticmethod
    def pair(query: torch.Tensor, interest: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[t_query_sim, t_interest_sim]``: (R, 2) from (R, dim) rows, or (B, M, 2) from (B, dim) rows
        and (B, M, dim) candidate vectors (centred, see :meth:`SearchRanker.centred`; zeros: no text)."""
        if items.dim() == 2:
            return torch.stack([(query * items).sum(-1), (interest * items).sum(-1)], dim=-1)
        return torch.stack([torch.einsum("bd,bmd->bm", query, items),
                            torch.einsum("bd,bmd->bm", interest, items)], dim=-1)


def text_model(cfg: TextConfig, device: torch.device | str | None = None) -> tuple[TextEncoder, ItemTextIndex]:
    """The encoder, warmed up, and the catalogue encoded into an item text index."""
    encoder = TextEncoder(cfg, device=device)
    encoder.warm_up()
    texts = catalogue_texts(cfg.catalogue)
    return encoder, ItemTextIndex(encoder, texts, capacity=len(texts) + 256)


_shared_models: dict[tuple[str, str], tuple[TextEncoder, ItemTextIndex]] = {}


class SearchRanker:
    """Text encoder + item text index + fusion weight, on one device; and the users' text signals."""

    def __init__(self, cfg: TextConfig, device: torch.device | str | None = None,
                 model: tuple[TextEncoder, ItemTextIndex] | None = None):
        self.cfg = cfg
        self.encoder, self.index = model or text_model(cfg, device)
        self.device = self.encoder.device
        self.weight = cfg.search_personal_weight
        self.query_window_ms = cfg.query_window_ms
        self.half_life_ms = cfg.interest_half_life_ms
        # Per model item index (its append-only id list, by identity): model row -> text index row,
        # grown as that index grows, rebuilt when texts are added.
        self._text_rows: dict[int, tuple[list[str], torch.Tensor, int]] = {}
        self._mean = torch.zeros(self.index.dim, device=self.device)
        self._centred = self.index.matrix
        self._centred_version = -1
        self._weights_of: tuple[float, float] | None = None
        self._weight_table: dict[str, float] = {}

    @classmethod
    def shared(cls, cfg: TextConfig, device: torch.device | str | None = None) -> SearchRanker:
        """A ranker over the encoder and item texts of this process for ``cfg``, made on first use.

        The scorers of one TaskManager share one interpreter (thread mode), so
        they load the model and encode the catalogue once (about 10 s for
        MovieLens on a CPU core), and a task restarted after a failure finds
        them ready. Each ranker keeps its own row mappings.
        """
        key = (repr(cfg), str(device))
        if key not in _shared_models:
            _shared_models[key] = text_model(cfg, device)
        return cls(cfg, device, _shared_models[key])

    # -- item vectors -----------------------------------------------------------------
    def _centred_matrix(self) -> torch.Tensor:
        """The index's vectors centred (see :meth:`centred`), row for row; kept until texts are added."""
        if self._centred_version != self.index.version:
            n = len(self.index)
            raw = self.index.matrix
            self._mean = raw[1 : n + 1].mean(0) if n else torch.zeros_like(self._mean)
            centred = torch.zeros_like(raw)
            centred[1 : n + 1] = F.normalize(raw[1 : n + 1] - self._mean, p=2, dim=-1)
            self._centred, self._centred_version = centred, self.index.version
        return self._centred

    def centred(self, vecs: torch.Tensor) -> torch.Tensor:
        """Vectors minus the catalogue's mean text vector, renormalised; zero rows (no text) stay zero."""
        self._centred_matrix()  # the mean of the current catalogue
        vecs = vecs.to(self.device, torch.float32)
        known = vecs.abs().sum(-1, keepdim=True) > 0
        return torch.where(known, F.normalize(vecs - self._mean, p=2, dim=-1), torch.zeros_like(vecs))

    def item_vectors(self, item_ids: list[str]) -> torch.Tensor:
        """(n, dim) centred text vectors (zeros for items without text)."""
        matrix = self._centred_matrix()
        return matrix[self.index.rows(item_ids)]

    def row_vectors(self, model_rows: torch.Tensor, model_ids: list[str]) -> torch.Tensor:
        """Centred text vectors of the model's item rows (any shape, + dim); ``model_ids`` is the model's
        row -> id list."""
        return self._centred_matrix()[self._text_rows_of(model_rows, model_ids)]

    def row_pairs(self, model_rows: torch.Tensor, model_ids: list[str], query: torch.Tensor,
                  interest: torch.Tensor) -> torch.Tensor:
        """(B, M, 2) :meth:`TextContext.pair` of the model's (B, M) item rows with (B, dim) query and interest
        vectors. On the CPU in one compiled pass over the rows (models.sequential.text_pairs); on a GPU by
        gathering the vectors."""
        text_rows = self._text_rows_of(model_rows, model_ids)
        matrix = self._centred_matrix()
        if matrix.device.type != "cpu":
            return TextContext.pair(query, interest, matrix[text_rows])
        return torch.from_numpy(text_pairs(matrix.numpy(), text_rows.numpy(), query.float().contiguous().numpy(),
                                           interest.float().contiguous().numpy()))

    def _text_rows_of(self, model_rows: torch.Tensor, model_ids: list[str]) -> torch.Tensor:
        """The text index's rows of the model's item rows (same shape)."""
        entry = self._text_rows.get(id(model_ids))
        if entry is None or entry[0] is not model_ids or entry[2] != self.index.version:
            entry = (model_ids, torch.zeros(0, dtype=torch.long, device=self.device), self.index.version)
        rows = entry[1]
        if rows.shape[0] < len(model_ids):
            rows = torch.cat([rows, self.index.rows(model_ids[rows.shape[0] :]).to(self.device)])
        self._text_rows[id(model_ids)] = (model_ids, rows, entry[2])
        return rows[model_rows.to(self.device)]

    # -- users' text signals ----------------------------------------------------------------
    def context(self, inputs: list, users: dict[str, dict], rating_min: float, rating_max: float) -> TextContext:
        """Walk a micro-batch in order: each event's query and interest, and the users' new text state.

        ``inputs`` carry ``.event``; ``users`` maps user id -> model state, whose
        ``"query"`` (float16 vector, ts) and ``"interest"`` (float16 vector, mass,
        ts) entries are read and replaced. Interest updates fold in event order per user, in one
        compiled pass (models.sequential.interest_pass) on the host.
        """
        dev, dim = self.device, self.index.dim
        events = [x.event for x in inputs]
        searches = [i for i, e in enumerate(events) if e.type == "search" and e.query]
        query_vecs = self.centred(self.encoder.encode([events[i].query for i in searches])) if searches else None
        query_of_search = {pos: j for j, pos in enumerate(searches)}
        # The text row of every event's item, looked up once (0: no text, or no item).
        with_item = [pos for pos, e in enumerate(events) if e.item_id is not None]
        text_rows = self.index.row_list(events[pos].item_id for pos in with_item)
        text_row_at = dict(zip(with_item, text_rows, strict=True))

        # Queries: rows 0 = zeros, then the users' stored queries, then this batch's.
        stored_q: list[np.ndarray] = []
        latest_q: dict[str, tuple[int, int]] = {}  # user -> (query row, ts)
        for u in {e.user_id for e in events}:
            q = users[u].get("query")
            if q is not None:
                stored_q.append(q[0])
                latest_q[u] = (len(stored_q), q[1])
        batch_q0 = 1 + len(stored_q)

        # Interest: table rows 0 = zeros, 1..U each user's stored vector (zeros if none), then the
        # vector after each update. The fold runs in order per user, compiled (models.sequential).
        row_of_user: dict[str, int] = {}
        for e in events:
            if e.user_id not in row_of_user:
                row_of_user[e.user_id] = len(row_of_user)
        n_users = len(row_of_user)
        vecs = np.zeros((n_users, dim), np.float32)
        mass = np.zeros(n_users, np.float32)
        last_ts = np.zeros(n_users, np.int64)
        known = np.zeros(n_users, np.bool_)
        for u, r in row_of_user.items():
            it = users[u].get("interest")
            if it is not None:
                vecs[r], mass[r], last_ts[r], known[r] = it[0], it[1], it[2], True
        initial = vecs.copy()
        current = [1 + r for r in range(n_users)]  # per user row: their newest table row
        up_user, up_row, up_ts, up_w = [], [], [], []
        query_row = [0] * len(events)
        before_rows: list[int] = []
        after_rows: list[int] = []
        weight_of = self._weights(rating_min, rating_max)
        mid = (rating_min + rating_max) / 2  # (a rating's weight: rating_interest)
        span = rating_max - mid
        window = self.query_window_ms
        for pos, e in enumerate(events):
            u = e.user_id
            if pos in query_of_search:
                latest_q[u] = (batch_q0 + query_of_search[pos], e.ts)
            q = latest_q.get(u)
            if q is not None and 0 <= e.ts - q[1] <= window:
                query_row[pos] = q[0]
            r = row_of_user[u]
            before_rows.append(current[r])
            if e.item_id is not None:
                w = weight_of.get(e.type, 0.0) if e.type != "rating" else rating_interest(e.value, mid, span)
                if w > 0:
                    current[r] = 1 + n_users + len(up_user)
                    up_user.append(r)
                    up_row.append(text_row_at[pos])
                    up_ts.append(e.ts)
                    up_w.append(w)
            after_rows.append(current[r])
        folded = np.zeros((0, dim), np.float32)
        matrix = self._centred_matrix()
        if up_user:
            item_vecs = matrix[torch.tensor(up_row, dtype=torch.long, device=dev)].to("cpu", torch.float32).numpy()
            folded = interest_pass(vecs, mass, last_ts, known, np.array(up_user, np.int64), item_vecs,
                                   np.array(up_ts, np.int64), np.array(up_w, np.float32), self.half_life_ms)

        zeros = torch.zeros(1, dim, device=dev)
        q_parts = [zeros]
        if stored_q:
            q_parts.append(torch.from_numpy(np.stack(stored_q)).to(dev, torch.float32))
        if query_vecs is not None:
            q_parts.append(query_vecs.to(dev, torch.float32))
        q_table = torch.cat(q_parts)
        i_table = torch.from_numpy(np.concatenate([np.zeros((1, dim), np.float32), initial, folded])).to(dev)

        # The users' new state, as float16 on the host.
        for u, r in row_of_user.items():
            if current[r] != 1 + r:  # folded something in
                users[u]["interest"] = (vecs[r].astype(np.float16), float(mass[r]), int(last_ts[r]))
        for pos in reversed(searches):
            u = events[pos].user_id
            if latest_q.get(u, (None,))[0] == batch_q0 + query_of_search[pos]:
                users[u]["query"] = (q_table[batch_q0 + query_of_search[pos]].to(torch.float16).cpu().numpy(),
                                     events[pos].ts)
                latest_q[u] = (-1, 0)  # written: an earlier search of the same user must not overwrite it

        def rows(values):
            return torch.tensor(values, dtype=torch.long, device=dev)

        query_rows, before, after = rows(query_row), rows(before_rows), rows(after_rows)
        pairs = torch.zeros(len(events), 2, device=dev)
        if with_item:
            at = rows(with_item)
            pairs[at] = TextContext.pair(q_table[query_rows[at]], i_table[before[at]], matrix[rows(text_rows)])
        return TextContext(q_table, query_rows, i_table, before, after, pairs)

    def _weights(self, rating_min: float, rating_max: float) -> dict[str, float]:
        """:func:`interest_weight` of each type but ratings, as a table (it runs per event)."""
        key = (rating_min, rating_max)
        if self._weights_of != key:
            self._weight_table = {t: interest_weight(t, None, rating_min, rating_max) for t in EVENT_TABLE
                                  if t != "rating"}
            self._weights_of = key
        return self._weight_table

    def fuse(self, personal: torch.Tensor, queries: list[str], candidates: list[list[str]],
             valid: torch.Tensor) -> torch.Tensor:
        """(S, W) search scores (-inf for padding) from the models' (S, W) candidate scores
        (the raw query-candidate cosine, not the centred one of the features)."""
        similarity, _ = self.index.candidate_similarity(self.encoder.encode(queries), candidates)
        return fuse_search(personal, similarity.to(personal.device), self.weight, valid)
