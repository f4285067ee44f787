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

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from models.text import ItemTextIndex, TextEncoder, decay_interest, movielens_texts
from rtrec.config import TextConfig
from rtrec.search import fuse_search

#: How much an interaction pulls a user's text interest towards the item. A rating counts by how far
#: it sits above the middle of the scale (the top rating 1, the middle or below 0: not a like).
INTEREST_WEIGHTS = {"view": 0.25, "click": 0.5, "add_to_cart": 0.75, "purchase": 1.0}


def catalogue_texts(source: str) -> dict[str, str]:
    """Item id -> text: ``movielens-100k`` (titles, years and genres), a ``.jsonl`` of
    ``{"item_id", "text"}`` lines, a ``.csv`` with ``item_id`` and ``text`` columns, or ``""`` (none)."""
    if not source:
        return {}
    if source == "movielens-100k":
        return movielens_texts()
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"text.catalogue {source!r}: no such file (movielens-100k, a .jsonl or a .csv)")
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        raise ValueError(f"text.catalogue {source!r}: expected movielens-100k, a .jsonl or a .csv file")
    return {str(r["item_id"]): str(r["text"]) for r in rows}


def interest_weight(event_type: str, value: float | None, rating_min: float, rating_max: float) -> float:
    """How much an event pulls its user's text interest towards its item (0: not at all).

    >>> interest_weight("rating", 5.0, 1, 5), interest_weight("rating", 3.0, 1, 5), interest_weight("click", None, 1, 5)
    (1.0, 0.0, 0.5)
    """
    if event_type == "rating":
        mid = (rating_min + rating_max) / 2
        return max(0.0, min(1.0, ((value or 0.0) - mid) / (rating_max - mid)))
    return INTEREST_WEIGHTS.get(event_type, 0.0)


@dataclass
class TextContext:
    """A micro-batch's text signals, one row per input position, as (P, dim) tensors on the device.

    Rows are zeros where there is no signal: no search within the query window,
    no liked item yet. Their cosine with an item's text vector is then 0.
    """

    # All in the centred text space (see the module's docstring).
    query: torch.Tensor  # the user's latest query within the window, as of the event (a search: its own)
    before: torch.Tensor  # the user's text interest before the event
    after: torch.Tensor  # ... and after it

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
        entry = self._text_rows.get(id(model_ids))
        if entry is None or entry[0] is not model_ids or entry[2] != self.index.version:
            entry = (model_ids, torch.zeros(0, dtype=torch.long, device=self.device), self.index.version)
        rows = entry[1]
        if rows.shape[0] < len(model_ids):
            rows = torch.cat([rows, self.index.rows(model_ids[rows.shape[0] :]).to(self.device)])
        self._text_rows[id(model_ids)] = (model_ids, rows, entry[2])
        return self._centred_matrix()[rows[model_rows.to(self.device)]]

    # -- users' text signals ----------------------------------------------------------------
    def context(self, inputs: list, users: dict[str, dict], rating_min: float, rating_max: float) -> TextContext:
        """Walk a micro-batch in order: each event's query and interest, and the users' new text state.

        ``inputs`` carry ``.event``; ``users`` maps user id -> model state, whose
        ``"query"`` (float16 vector, ts) and ``"interest"`` (float16 vector, mass,
        ts) entries are read and replaced. Interest updates run in waves (the
        n-th liked item of every user together), like the MF's examples.
        """
        dev, dim = self.device, self.index.dim
        events = [x.event for x in inputs]
        searches = [i for i, e in enumerate(events) if e.type == "search" and e.query]
        query_vecs = self.centred(self.encoder.encode([events[i].query for i in searches])) if searches else None
        query_of_search = {pos: j for j, pos in enumerate(searches)}

        # Queries: rows 0 = zeros, then the users' stored queries, then this batch's.
        stored_q: list[np.ndarray] = []
        latest_q: dict[str, tuple[int, int]] = {}  # user -> (query row, ts)
        for u in {e.user_id for e in events}:
            q = users[u].get("query")
            if q is not None:
                stored_q.append(q[0])
                latest_q[u] = (len(stored_q), q[1])
        batch_q0 = 1 + len(stored_q)

        # Interest: rows 0 = zeros, then each user's stored vector, then one row per update.
        start: dict[str, int] = {}
        init_vecs, init_mass, init_ts = [], [], []
        for u in {e.user_id for e in events}:
            it = users[u].get("interest")
            if it is not None:
                init_vecs.append(it[0])
                init_mass.append(it[1])
                init_ts.append(it[2])
                start[u] = len(init_vecs)
        updates: list[tuple[int, str, str, int, float]] = []  # (pos, user, item, ts, weight)
        depth: dict[str, int] = {}
        query_row = [0] * len(events)
        before_ref: list[tuple[str, int]] = []  # (user, number of the user's updates before the event)
        after_ref: list[tuple[str, int]] = []
        for pos, e in enumerate(events):
            u = e.user_id
            if pos in query_of_search:
                latest_q[u] = (batch_q0 + query_of_search[pos], e.ts)
            q = latest_q.get(u)
            if q is not None and 0 <= e.ts - q[1] <= self.query_window_ms:
                query_row[pos] = q[0]
            d = depth.get(u, 0)
            before_ref.append((u, d))
            w = interest_weight(e.type, e.value, rating_min, rating_max) if e.item_id is not None else 0.0
            if w > 0:
                updates.append((pos, u, e.item_id, e.ts, w))
                depth[u] = d = d + 1
            after_ref.append((u, d))

        zeros = torch.zeros(1, dim, device=dev)
        q_parts = [zeros]
        if stored_q:
            q_parts.append(torch.from_numpy(np.stack(stored_q)).to(dev, torch.float32))
        if query_vecs is not None:
            q_parts.append(query_vecs.to(dev, torch.float32))
        q_table = torch.cat(q_parts)

        i_parts = [zeros]
        if init_vecs:
            i_parts.append(torch.from_numpy(np.stack(init_vecs)).to(dev, torch.float32))
        n_rows = 1 + len(init_vecs)
        row_after: dict[tuple[str, int], int] = {(u, 0): r for u, r in start.items()}
        mass = {u: init_mass[r - 1] for u, r in start.items()}
        last_ts = {u: init_ts[r - 1] for u, r in start.items()}
        if updates:
            item_vecs = self.item_vectors([it for _, _, it, _, _ in updates])
            waves: list[list[int]] = []
            seen: dict[str, int] = {}
            for k, (_, u, _, _, _) in enumerate(updates):
                d = seen.get(u, 0)
                seen[u] = d + 1
                if d == len(waves):
                    waves.append([])
                waves[d].append(k)
            current = {u: (i_parts[1][r - 1] if r else zeros[0]) for u, r in start.items()}
            for d, wave in enumerate(waves):
                us = [updates[k][1] for k in wave]
                vec = torch.stack([current.get(u, zeros[0]) for u in us])
                dt = [updates[k][3] - last_ts.get(u, updates[k][3]) for k, u in zip(wave, us, strict=True)]
                new, new_mass = decay_interest(vec, item_vecs[wave], torch.tensor(dt, dtype=torch.float32),
                                               self.half_life_ms, torch.tensor([mass.get(u, 0.0) for u in us]),
                                               torch.tensor([updates[k][4] for k in wave]))
                i_parts.append(new)
                for j, (k, u) in enumerate(zip(wave, us, strict=True)):
                    row_after[(u, d + 1)] = n_rows + j
                    current[u] = new[j]
                    mass[u] = float(new_mass[j])
                    last_ts[u] = max(last_ts.get(u, updates[k][3]), updates[k][3])
                n_rows += len(wave)
        i_table = torch.cat(i_parts)

        # The users' new state, as float16 on the host.
        for u in {e.user_id for e in events}:
            d = depth.get(u, 0)
            if d:
                users[u]["interest"] = (i_table[row_after[(u, d)]].to(torch.float16).cpu().numpy(), mass[u],
                                        last_ts[u])
        for pos in reversed(searches):
            u = events[pos].user_id
            if latest_q.get(u, (None,))[0] == batch_q0 + query_of_search[pos]:
                users[u]["query"] = (q_table[batch_q0 + query_of_search[pos]].to(torch.float16).cpu().numpy(),
                                     events[pos].ts)
                latest_q[u] = (-1, 0)  # written: an earlier search of the same user must not overwrite it

        def gather(refs):
            rows = [row_after.get(ref, 0) for ref in refs]
            return i_table[torch.tensor(rows, dtype=torch.long, device=dev)]

        return TextContext(q_table[torch.tensor(query_row, dtype=torch.long, device=dev)],
                           gather(before_ref), gather(after_ref))

    def fuse(self, personal: torch.Tensor, queries: list[str], candidates: list[list[str]],
             valid: torch.Tensor) -> torch.Tensor:
        """(S, W) search scores (-inf for padding) from the models' (S, W) candidate scores
        (the raw query-candidate cosine, not the centred one of the features)."""
        similarity, _ = self.index.candidate_similarity(self.encoder.encode(queries), candidates)
        return fuse_search(personal, similarity.to(personal.device), self.weight, valid)
