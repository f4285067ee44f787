"""Matrix factorisation with biases, learned online by SGD.

    rating(u, i) = mu + b_u + b_i + <p_u, q_i>

``p_u`` and ``b_u`` belong to the user: they travel in the batch as
``user_params["mf"]`` (shape (B, dim + 1), the bias last) and are updated in
place. ``q_i``, ``b_i`` and the running mean ``mu`` are global and stay on the
model's device.
"""

from __future__ import annotations

import torch

from models.base import Batch, ItemIndex, item_seed


class BiasedMF:
    """Online biased MF (as River's ``reco.BiasedMF``, in batch form)."""

    name = "mf"

    def __init__(
        self,
        dim: int = 32,
        lr_bias: float = 0.025,
        lr_latent: float = 0.05,
        l2_bias: float = 0.0,
        l2_latent: float = 0.0,
        init_std: float = 0.1,
        seed: int = 7,
        device: torch.device | str = "cpu",
        rating_min: float = 1.0,
        rating_max: float = 5.0,
    ):
        self.dim = dim
        self.lr_bias, self.lr_latent = lr_bias, lr_latent
        self.l2_bias, self.l2_latent = l2_bias, l2_latent
        self.init_std = init_std
        self.seed = seed
        self.device = torch.device(device)
        self.rating_min, self.rating_max = rating_min, rating_max
        self.index = ItemIndex()
        self.q = torch.zeros(0, dim, device=self.device)
        self.b = torch.zeros(0, device=self.device)
        self.mu_sum = 0.0
        self.mu_n = 0

    # -- parameters --------------------------------------------------------
    @property
    def user_width(self) -> int:
        return self.dim + 1

    def new_user(self, user_id: str) -> torch.Tensor:
        """Initial user parameters (on the CPU, to be stored in keyed state)."""
        g = torch.Generator().manual_seed(item_seed("user:" + user_id, self.seed))
        p = torch.randn(self.dim, generator=g) * self.init_std
        return torch.cat([p, torch.zeros(1)])

    def rows(self, item_ids: list[str]) -> torch.Tensor:
        """Catalogue rows of ``item_ids``, adding items seen for the first time."""
        before = len(self.index)
        rows = self.index.rows(item_ids)
        if len(self.index) > before:
            self._grow(self.index.ids[before:])
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _grow(self, new_ids: list[str]) -> None:
        n = len(self.index)
        if n > self.q.shape[0]:
            cap = max(64, 2 * self.q.shape[0], n)
            q = torch.zeros(cap, self.dim, device=self.device)
            b = torch.zeros(cap, device=self.device)
            q[: self.q.shape[0]] = self.q
            b[: self.b.shape[0]] = self.b
            self.q, self.b = q, b
        start = n - len(new_ids)
        init = torch.stack(
            [
                torch.randn(self.dim, generator=torch.Generator().manual_seed(item_seed(i, self.seed)))
                for i in new_ids
            ]
        )
        self.q[start:n] = init.to(self.device) * self.init_std

    @property
    def mu(self) -> float:
        return self.mu_sum / self.mu_n if self.mu_n else (self.rating_min + self.rating_max) / 2

    # -- Model interface ---------------------------------------------------
    def predict_many(self, batch: Batch) -> torch.Tensor:
        u = batch.user_params[self.name]
        q = self.q[batch.items]
        raw = self.mu + u[:, -1] + self.b[batch.items] + (u[:, :-1] * q).sum(1)
        return raw.clamp(self.rating_min, self.rating_max)

    def learn_many(self, batch: Batch, y: torch.Tensor) -> None:
        """One SGD step per example; examples of one item in the batch add up."""
        u = batch.user_params[self.name]
        items = batch.items
        p, bu = u[:, :-1], u[:, -1]
        q = self.q[items]
        err = y - (self.mu + bu + self.b[items] + (p * q).sum(1))
        grad_p = err[:, None] * q - self.l2_latent * p
        grad_q = err[:, None] * p - self.l2_latent * q
        u[:, -1] += self.lr_bias * (err - self.l2_bias * bu)
        u[:, :-1] += self.lr_latent * grad_p
        self.b.index_add_(0, items, self.lr_bias * (err - self.l2_bias * self.b[items]))
        self.q.index_add_(0, items, self.lr_latent * grad_q)
        self.mu_sum += float(y.sum())
        self.mu_n += int(y.shape[0])

    # -- ranking -----------------------------------------------------------
    def score_catalogue(self, user_params: torch.Tensor) -> torch.Tensor:
        """(B, n_items) predicted ratings of every catalogue item for each user row."""
        n = len(self.index)
        return self.mu + user_params[:, -1:] + self.b[:n][None, :] + user_params[:, :-1] @ self.q[:n].T
