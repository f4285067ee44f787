"""The one interface every model answers, in batch form (after River's learn_one/predict_one).

A :class:`Batch` is a set of examples gathered from many users. Parameters that
belong to a user (an MF user vector) travel *in* the batch, gathered from the
user's keyed state; models update them in place and the Flink operator writes
them back. Parameters shared by all users (item vectors, dense weights) live in
a :class:`models.params.ParameterSet` on the model's device.

Every model predicts in rating units; binary feedback is learned as the ends
of the rating scale (see models.ensemble), so one score serves both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch


@dataclass
class Batch:
    """``B`` examples. ``items`` are catalogue rows of the shared item index."""

    items: torch.Tensor
    #: per model name: a (B, width) tensor of that model's user parameters
    user_params: dict[str, torch.Tensor] = field(default_factory=dict)
    #: (B, F) engineered numeric features
    dense: torch.Tensor | None = None
    #: (B, K) hashed sparse feature indices
    sparse: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.items.shape[0])

    def subset(self, idx: torch.Tensor) -> Batch:
        """The examples at ``idx``."""
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        return Batch(self.items[idx], {k: v[idx] for k, v in self.user_params.items()}, pick(self.dense),
                     pick(self.sparse))


@runtime_checkable
class Model(Protocol):
    """Predict a batch, learn from a batch; predictions are in rating units."""

    name: str

    def predict_many(self, batch: Batch) -> torch.Tensor: ...

    def learn_many(self, batch: Batch, y: torch.Tensor) -> None: ...


class ItemIndex:
    """Item id <-> catalogue row, grown as new items appear.

    >>> idx = ItemIndex()
    >>> idx.rows(["a", "b", "a"]), idx.ids
    ([0, 1, 0], ['a', 'b'])
    """

    def __init__(self, ids: list[str] | None = None):
        self.ids: list[str] = []
        self._rows: dict[str, int] = {}
        for i in ids or []:
            self.row(i)

    def __len__(self) -> int:
        return len(self.ids)

    def row(self, item_id: str) -> int:
        r = self._rows.get(item_id)
        if r is None:
            r = self._rows[item_id] = len(self.ids)
            self.ids.append(item_id)
        return r

    def rows(self, item_ids) -> list[int]:
        out = list(map(self._rows.get, item_ids))
        if None in out:  # new items: added in order of first appearance
            out = [self.row(i) for i in item_ids]
        return out

    def get(self, item_id: str) -> int | None:
        return self._rows.get(item_id)


def seeded_normal(shape: tuple[int, ...], std: float):
    """An init function for item tables: N(0, std) from the item's seed."""

    def init(seed: int) -> torch.Tensor:
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * std

    return init


def chunk_segments(n: int, filled: int, step: int) -> list[tuple[int, int, bool]]:
    """A batch's ``n`` rows cut at the stream's chunk boundaries: chunks of ``step`` rows counted along
    the stream, not from each batch's start, the open chunk holding ``filled`` rows from batches
    before. Returns (start, end, whether the chunk closes at ``end``). ``step`` 0: the batch is one
    chunk (one step per batch).

    >>> chunk_segments(10, 3, 4)
    [(0, 1, True), (1, 5, True), (5, 9, True), (9, 10, False)]
    >>> chunk_segments(2, 1, 4), chunk_segments(3, 0, 0)
    ([(0, 2, False)], [(0, 3, True)])
    """
    if step <= 0:
        return [(0, n, True)] if n else []
    out, start, end = [], 0, step - filled
    while start < n:
        stop = min(end, n)
        out.append((start, stop, stop == end))
        start, end = stop, end + step
    return out
