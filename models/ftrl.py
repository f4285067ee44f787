"""FTRL-Proximal linear regression over hashed, engineered features (McMahan et al., 2013).

Each example is a set of active feature ids (one-hot, hashed into ``2**bits``
slots); the prediction is ``offset + sum(w_i)`` over them. Per coordinate the
model keeps ``z`` and ``n`` (the FTRL state) as global hashed tables; weights
are derived from them, with L1 giving exact zeros for rare features.
"""

from __future__ import annotations

import torch

from models.base import Batch
from models.params import ParameterSet


class FTRLProximal:
    name = "ftrl"

    def __init__(self, params: ParameterSet, bits: int = 18, alpha: float = 0.05, beta: float = 1.0,
                 l1: float = 0.1, l2: float = 1.0, offset: float = 3.5):
        self.size = 1 << bits
        self.alpha, self.beta, self.l1, self.l2, self.offset = alpha, beta, l1, l2, offset
        self.z = params.add("ftrl.z", "hashed", (), rows=self.size)
        self.n = params.add("ftrl.n", "hashed", (), rows=self.size)

    def weights(self, idx: torch.Tensor) -> torch.Tensor:
        z, n = self.z.data[idx], self.n.data[idx]
        w = -(z - torch.sign(z) * self.l1) / ((self.beta + n.sqrt()) / self.alpha + self.l2)
        return torch.where(z.abs() <= self.l1, torch.zeros_like(w), w)

    def predict_many(self, batch: Batch) -> torch.Tensor:
        return self.offset + self.weights(batch.sparse).sum(1)

    def learn_many(self, batch: Batch, y: torch.Tensor, grad: torch.Tensor | None = None) -> None:
        idx = batch.sparse
        g_example = grad if grad is not None else self.predict_many(batch) - y
        flat = idx.flatten()
        uniq, inverse = torch.unique(flat, return_inverse=True)
        g = torch.zeros(len(uniq), device=idx.device).index_add_(
            0, inverse, g_example[:, None].expand_as(idx).flatten())
        hits = torch.zeros(len(uniq), device=idx.device).index_add_(0, inverse, torch.ones_like(flat, dtype=torch.float))
        w = self.weights(uniq)
        n = self.n.data[uniq]
        sigma = ((n + g * g).sqrt() - n.sqrt()) / self.alpha
        self.z.data[uniq] += g - sigma * w
        self.n.data[uniq] += g * g
        self.z.touch(uniq, hits)
        self.n.touch(uniq, hits)
