"""The model side of the UserStage: learn from feedback and refresh top-k, batched per wave."""

from __future__ import annotations

import numpy as np
import orjson
import torch

from models.base import Batch
from models.device import resolve_device
from models.mf import BiasedMF
from rtrec.config import RtrecConfig
from rtrec.events import Event
from udfs.records import Outputs

#: Event types after which a user's top-k is refreshed.
REFRESH_TYPES = frozenset({"view", "click", "add_to_cart", "purchase", "rating"})


class OnlineRecommender:
    """Holds the global model parameters of one subtask; user parameters come and go with user state."""

    def __init__(self, cfg: RtrecConfig):
        m = cfg.model
        torch.set_num_threads(1)
        self.device = resolve_device(m.device)
        self.model = BiasedMF(dim=m.dim, seed=m.seed, device=self.device, rating_min=m.rating_min, rating_max=m.rating_max)
        self.top_k = m.top_k
        self.exclude_recent = m.exclude_recent

    def new_user(self, user_id: str) -> dict:
        return {"mf": self.model.new_user(user_id).numpy(), "recent": []}

    def process(self, events: list[Event], models: dict[str, dict], out: Outputs) -> None:
        """``models`` maps user id -> that user's model state (updated in place)."""
        waves: list[list[Event]] = []
        depth: dict[str, int] = {}
        for e in events:
            n = depth.get(e.user_id, 0)
            depth[e.user_id] = n + 1
            if n == len(waves):
                waves.append([])
            waves[n].append(e)

        refresh: list[tuple[Event, np.ndarray, list[str]]] = []
        for wave in waves:
            ratings = [e for e in wave if e.type == "rating"]
            if ratings:
                params = torch.from_numpy(np.stack([models[e.user_id]["mf"] for e in ratings])).to(self.device)
                batch = Batch(items=self.model.rows([e.item_id for e in ratings]), user_params={"mf": params})
                self.model.learn_many(batch, torch.tensor([e.value for e in ratings], device=self.device))
                learned = params.cpu().numpy()
                for i, e in enumerate(ratings):
                    models[e.user_id]["mf"] = learned[i]
            for e in wave:
                state = models[e.user_id]
                if e.item_id is not None:
                    self.model.rows([e.item_id])
                    recent = state["recent"]
                    if e.item_id in recent:
                        recent.remove(e.item_id)
                    recent.insert(0, e.item_id)
                    del recent[self.exclude_recent :]
                if e.type in REFRESH_TYPES:
                    refresh.append((e, state["mf"], list(state["recent"])))
        if refresh:
            self.recommend(refresh, out)

    def recommend(self, requests: list[tuple[Event, np.ndarray, list[str]]], out: Outputs) -> None:
        """Top-k of the catalogue per request, leaving out items the user saw recently."""
        scores = self.model.score_catalogue(torch.from_numpy(np.stack([p for _, p, _ in requests])).to(self.device))
        index = self.model.index
        rows, cols = [], []
        for r, (_, _, recent) in enumerate(requests):
            for item in recent:
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
        for (e, _, _), s, r in zip(requests, top_scores, top_rows, strict=True):
            keep = [j for j, v in enumerate(s) if v != float("-inf")]
            out.recommendations.append(
                e.user_id,
                orjson.dumps(
                    {
                        "user_id": e.user_id,
                        "event_id": e.event_id,
                        "ts": e.ts,
                        "items": [ids[r[j]] for j in keep],
                        "scores": [round(s[j], 5) for j in keep],
                        "model_version": 0,
                        "feature_ts": e.ts,
                    }
                ),
            )
