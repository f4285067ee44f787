"""Search ranking in the scorer: the personal models' scores fused with query-item text similarity.

The UserStage's learner holds one :class:`SearchRanker` when ``text.enabled``.
A micro-batch's searches are ranked together: one forward pass of the text
encoder over the queries it has not seen recently, one gather of the
candidates' text vectors, one batched product, then the per-query fusion of
:func:`rtrec.search.fuse_search`.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import torch

from models.text import ItemTextIndex, TextEncoder, movielens_texts
from rtrec.config import TextConfig
from rtrec.search import fuse_search


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


class SearchRanker:
    """Text encoder + item text index + fusion weight, on one device."""

    def __init__(self, cfg: TextConfig, device: torch.device | str | None = None):
        self.cfg = cfg
        self.encoder = TextEncoder(cfg, device=device)
        self.encoder.warm_up()
        texts = catalogue_texts(cfg.catalogue)
        self.index = ItemTextIndex(self.encoder, texts, capacity=len(texts) + 256)
        self.weight = cfg.search_personal_weight

    def fuse(self, personal: torch.Tensor, queries: list[str], candidates: list[list[str]],
             valid: torch.Tensor) -> torch.Tensor:
        """(S, W) search scores (-inf for padding) from the models' (S, W) candidate scores."""
        similarity, _ = self.index.candidate_similarity(self.encoder.encode(queries), candidates)
        return fuse_search(personal, similarity.to(personal.device), self.weight, valid)
