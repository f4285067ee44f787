"""Folding trainers' deltas into numbered versions, with guards. Plain Python; udfs/merger.py runs it in Flink.

Per merge:

1. each trainer's pending deltas are summed (they are successive steps),
2. a delta holding NaN or Inf is rejected whole (and counted),
3. the trainers' sums are folded row by row by each table's rule
   (models.params.merge): by default averaged, weighted by the examples
   behind each row; MF's item tables by how many examples each item had
   before (``counted``), its item counts added up. With one trainer this is
   exactly its own progress,
4. the candidate is scored on the held-out examples the trainers sent; if its
   loss is worse than the current version's by more than the margin, the
   merge is rolled back and the version number still advances (with the old
   parameters), so trainers drop the rejected updates and resynchronise.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from models.base import Batch
from models.ensemble import Examples, ModelSet
from models.params import (
    RowDelta,
    Version,
    delta_from_bytes,
    delta_is_finite,
    heldout_from_bytes,
    merge,
    sum_deltas,
)
from rtrec.config import ModelConfig


@dataclass(slots=True)
class DeltaMessage:
    """A trainer's change to the global parameters since its last hand-over."""

    trainer: int
    seq: int
    delta: bytes  # models.params.delta_to_bytes
    heldout: bytes  # the held-out examples gathered meanwhile (models.params.heldout_to_bytes)

    def as_message(self) -> tuple:
        return ("delta", self.trainer, self.seq, self.delta, self.heldout)


@dataclass(slots=True)
class ItemFeaturesMessage:
    """The models' view of items the ItemStage just updated (rtrec.features.model_inputs.ITEM_DENSE)."""

    features: dict[str, list[float]]

    def as_message(self) -> tuple:
        return ("items", self.features)


def read_message(message: tuple) -> DeltaMessage | ItemFeaturesMessage:
    """A message as the merger receives and checkpoints it: a tuple of plain values, so that its
    state never depends on these classes' names (the same tuples since release 0.1.0)."""
    kind = message[0]
    if kind == "delta":
        return DeltaMessage(*message[1:])
    if kind == "items":
        return ItemFeaturesMessage(message[1])
    raise ValueError(f"unknown merger message {kind!r}")


#: The held-out fields that make models.ensemble.Examples after the items' rows, in its order, and
#: their types.
_HELD_FIELDS = {"user_params": np.float32, "user_dense": np.float32, "user_code": np.int64,
                "user_buckets": np.int64, "pair": np.float32}


def _held_columns(rows: list[dict]) -> dict[str, np.ndarray]:
    """Held-out examples (fields as NumPy arrays, or tensors from releases up to 0.1.0) as one array per
    field, and the labels as ``y``."""
    cols = {k: np.stack([np.asarray(r[k] if k != "pair" else r.get(k, (0.0, 0.0))) for r in rows]).astype(t, copy=False)
            for k, t in _HELD_FIELDS.items() if k != "user_code"}
    cols["user_code"] = np.array([r["user_code"] for r in rows], np.int64)
    cols["y"] = np.array([r["y"] for r in rows], np.float32)
    return cols


class MergerCore:
    def __init__(self, cfg: ModelConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.models = ModelSet(cfg, device)
        self.version = 0
        self.merged_upto: dict[int, int] = {}
        self.pending: dict[int, list[tuple[int, dict[str, RowDelta]]]] = {}
        self.pending_examples = 0
        self.heldout: deque = deque(maxlen=cfg.heldout_size)
        #: The held-out examples' fields stacked (the rows of ``heldout``, in its order), extended as
        #: examples come, so a merge does not stack every row again.
        self._held: dict[str, np.ndarray] | None = None
        self.items: dict[str, list[float]] = {}
        self.rejected = 0
        self.rollbacks = 0
        self.last_loss: float | None = None

    # -- input -----------------------------------------------------------------------
    def add_delta(self, trainer: int, seq: int, delta: dict[str, RowDelta], heldout: list[dict]) -> None:
        self.heldout.extend(heldout)
        if heldout:
            new = _held_columns(heldout)
            if self._held is not None:
                keep = self.heldout.maxlen
                new = {k: np.concatenate((self._held[k], v))[-keep:] for k, v in new.items()}
            self._held = new
        if not delta_is_finite(delta):
            self.rejected += 1
            self.merged_upto[trainer] = max(self.merged_upto.get(trainer, 0), seq)
            return
        self.pending.setdefault(trainer, []).append((seq, delta))
        if "fusion.A" in delta:
            self.pending_examples += int(delta["fusion.A"].counts.sum())

    def add(self, message: DeltaMessage | ItemFeaturesMessage) -> None:
        """Take a message of a trainer or of the ItemStage."""
        if type(message) is DeltaMessage:
            self.add_delta(message.trainer, message.seq, delta_from_bytes(message.delta),
                           heldout_from_bytes(message.heldout))
        else:
            self.add_item_features(message.features)

    def add_item_features(self, features: dict[str, list[float]]) -> None:
        self.items.update(features)

    def due(self) -> bool:
        return self.pending_examples >= self.cfg.merge_examples

    def has_work(self) -> bool:
        return bool(self.pending or self.items)

    # -- merging ---------------------------------------------------------------------
    def heldout_loss(self, held: tuple[Batch, torch.Tensor] | None = None) -> float | None:
        """Mean squared error of the fused prediction on the held-out examples (rating units); ``held``:
        their batch and labels from :meth:`heldout_batch`, if made already (only the learned tables may
        have changed since)."""
        held = held or self.heldout_batch()
        if held is None:
            return None
        batch, y = held
        with torch.no_grad():
            _, fused = self.models.predict(batch)
        return float(((fused - y) ** 2).mean())

    def heldout_batch(self) -> tuple[Batch, torch.Tensor] | None:
        """The held-out examples as one batch, and their labels (None: too few yet)."""
        if len(self.heldout) < self.cfg.heldout_min:
            return None
        m = self.models
        held = self._held
        if held is None or len(held["y"]) != len(self.heldout):  # (the deque was changed from outside)
            held = self._held = _held_columns(list(self.heldout))
        dev = m.device
        ex = Examples(m.rows([r["item"] for r in self.heldout]),
                      *(torch.as_tensor(held[k], device=dev) for k in _HELD_FIELDS))
        return m.batch(ex), torch.as_tensor(held["y"], device=dev)

    def merge(self, now_ms: int | None = None) -> Version:
        """Fold everything pending into the next version (or roll it back)."""
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        per_trainer = []
        examples = self.pending_examples
        for trainer, deltas in self.pending.items():
            per_trainer.append(sum_deltas([d for _, d in deltas]))
            self.merged_upto[trainer] = max(self.merged_upto.get(trainer, 0), max(s for s, _ in deltas))
        self.pending, self.pending_examples = {}, 0

        params = self.models.params
        if self.items:
            rows = self.models.rows(list(self.items))
            params["items.features"].write_rows(rows, torch.tensor(list(self.items.values()), device=params.device))
            self.items = {}
        rolled_back = False
        loss = None
        if per_trainer:
            merged = merge(per_trainer, params)
            held = self.heldout_batch()  # (the deltas change learned tables, never its inputs)
            before = self.heldout_loss(held)
            saved = {n: t.data.clone() for n, t in params.tables.items()} if before is not None else None
            params.add_delta(merged)
            loss = self.heldout_loss(held)
            if before is not None and loss is not None and loss > before * (1 + self.cfg.rollback_margin):
                for n, t in params.tables.items():  # exactly the previous values (rows added since stay)
                    t.data[: saved[n].shape[0]] = saved[n]
                    t.base[: saved[n].shape[0]] = saved[n]
                    t.writes += 1
                rolled_back, loss = True, before
                self.rollbacks += 1
        params.take_delta()  # the global copy keeps no hand-over bookkeeping
        self.models.loaded()
        self.last_loss = loss
        self.version += 1
        return Version(self.version, now_ms, params.state_dict(), dict(self.merged_upto), rolled_back, loss, examples)

    def start_from(self, version: Version) -> None:
        """Warm start: take a version's parameters and continue its numbering."""
        self.models.params.load_state_dict(version.state)
        self.models.loaded()
        self.version = max(self.version, version.number)
