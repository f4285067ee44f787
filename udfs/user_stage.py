"""UserStage: the keyed operator that holds each user's state, scores and learns.

Keyed by user shard (see jobs/kafka_tables.py); each user's state is one entry
of a MapState, so it has its own lifetime and moves with its shard on rescale.
Per micro-batch it

1. parses and validates every record (bad ones become dead letters),
2. loads the state of the batch's users,
3. learns from rating feedback and refreshes each user's top-k after every
   interaction, in *waves* (the n-th event of every user in the batch forms
   wave n), so each user's events apply in order while the torch work is batched,
4. writes the users' state back and emits one output row for the batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import orjson
import torch
from pyflink.common import Row, Types
from pyflink.datastream import KeyedProcessFunction, RuntimeContext
from pyflink.datastream.state import MapStateDescriptor

from models.base import Batch
from models.device import resolve_device
from models.mf import BiasedMF
from rtrec.config import RtrecConfig
from rtrec.events import Event, EventParser, Rejection
from udfs.records import Outputs

#: Event types after which a user's top-k is refreshed.
REFRESH_TYPES = frozenset({"view", "click", "add_to_cart", "purchase", "rating"})


@dataclass
class UserRecord:
    """Everything rtrec keeps about one user (pickled into MapState)."""

    mf: np.ndarray
    recent_items: list[str] = field(default_factory=list)
    events: int = 0
    last_ts: int = 0


class UserStage(KeyedProcessFunction):
    """Validate, keep user state, learn, and recommend, one micro-batch at a time."""

    def __init__(self, cfg: RtrecConfig):
        self.cfg = cfg

    # -- lifecycle -----------------------------------------------------------
    def open(self, ctx: RuntimeContext):
        m = self.cfg.model
        torch.set_num_threads(1)
        self.device = resolve_device(m.device)
        self.parser = EventParser(self.cfg.events, m)
        self.model = BiasedMF(dim=m.dim, seed=m.seed, device=self.device, rating_min=m.rating_min, rating_max=m.rating_max)
        self.users = ctx.get_map_state(MapStateDescriptor("users", Types.STRING(), Types.PICKLED_BYTE_ARRAY()))
        self.topic = self.cfg.kafka.events_topic
        self.top_k = m.top_k
        self.recent_n = 50

    # -- per batch -------------------------------------------------------------
    def process_element(self, batch: Row, ctx: KeyedProcessFunction.Context):
        out = Outputs()
        now = int(time.time() * 1000)
        events: list[Event] = []
        parse = self.parser.parse
        for value, partition, offset in zip(batch[1], batch[2], batch[3], strict=True):
            r = parse(value, now)
            if type(r) is Rejection:
                out.dead(r.user_id, value, r.reason, r.stage, f"{self.topic}/{partition}@{offset}")
            else:
                events.append(r)
        if events:
            self.process_events(events, out)
        if out:
            yield out.row()

    def process_events(self, events: list[Event], out: Outputs) -> None:
        # Load each user once; the n-th event of every user goes into wave n.
        records: dict[str, UserRecord] = {}
        waves: list[list[Event]] = []
        depth: dict[str, int] = {}
        for e in events:
            u = e.user_id
            if u not in records:
                records[u] = self.users.get(u) or UserRecord(self.model.new_user(u).numpy())
            n = depth.get(u, 0)
            depth[u] = n + 1
            if n == len(waves):
                waves.append([])
            waves[n].append(e)

        refresh_events: list[Event] = []
        refresh_params: list[np.ndarray] = []
        refresh_recent: list[list[str]] = []
        for wave in waves:
            ratings = [e for e in wave if e.type == "rating"]
            if ratings:
                params = torch.from_numpy(np.stack([records[e.user_id].mf for e in ratings])).to(self.device)
                batch = Batch(items=self.model.rows([e.item_id for e in ratings]), user_params={"mf": params})
                y = torch.tensor([e.value for e in ratings], device=self.device)
                self.model.learn_many(batch, y)
                learned = params.cpu().numpy()
                for i, e in enumerate(ratings):
                    records[e.user_id].mf = learned[i]
            for e in wave:
                rec = records[e.user_id]
                rec.events += 1
                rec.last_ts = max(rec.last_ts, e.ts)
                if e.item_id is not None:
                    self.model.rows([e.item_id])
                    rec.recent_items = ([e.item_id] + [i for i in rec.recent_items if i != e.item_id])[: self.recent_n]
                if e.type in REFRESH_TYPES:
                    refresh_events.append(e)
                    refresh_params.append(rec.mf)
                    refresh_recent.append(rec.recent_items)

        if refresh_events:
            self.recommend(refresh_events, refresh_params, refresh_recent, out)
        self.users.put_all(records)

    def recommend(self, events: list[Event], params: list[np.ndarray], recent: list[list[str]], out: Outputs) -> None:
        """Top-k of the catalogue for each event's user, leaving out items they saw recently."""
        user_params = torch.from_numpy(np.stack(params)).to(self.device)
        scores = self.model.score_catalogue(user_params)
        rows, cols = [], []
        index = self.model.index
        for r, items in enumerate(recent):
            for item in items:
                c = index.get(item)
                if c is not None:
                    rows.append(r)
                    cols.append(c)
        if rows:
            scores[torch.tensor(rows), torch.tensor(cols)] = float("-inf")
        k = min(self.top_k, scores.shape[1])
        top_scores, top_rows = torch.topk(scores, k, dim=1)
        top_scores, top_rows = top_scores.cpu().tolist(), top_rows.cpu().tolist()
        ids = index.ids
        for e, s, r in zip(events, top_scores, top_rows, strict=True):
            keep = [j for j, v in enumerate(s) if v != float("-inf")]
            value = orjson.dumps(
                {
                    "user_id": e.user_id,
                    "event_id": e.event_id,
                    "ts": e.ts,
                    "items": [ids[r[j]] for j in keep],
                    "scores": [round(s[j], 5) for j in keep],
                    "model_version": 0,
                    "feature_ts": e.ts,
                }
            )
            out.recommendations.append(e.user_id, value)
