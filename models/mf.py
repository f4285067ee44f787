"""Matrix factorisation with biases, learned online by SGD (River's ``reco.BiasedMF``, in batch form).

    rating(u, i) = mu + b_u + b_i + <p_u, q_i>

``p_u`` and ``b_u`` belong to the user: they travel in the batch as
``user_params["mf"]`` (shape (B, dim + 1), the bias last) and are updated in
place. ``q_i``, ``b_i`` and ``mu`` (the running mean rating) are global tables
of the parameter set.

Learning rates are per unit of (prediction - label): River's ``optim.SGD(lr)``
on its squared loss, whose gradient carries a factor 2, matches ``2 * lr`` here.
With warm-up steps (``warm_bias``, ``warm_latent``: see
models.sequential.mf_pass) a user or item seen ``n`` times steps by at least
``1 / (n + warm_bias)`` (biases) and ``warm_latent / (n + warm_latent_c)``
(factors); ``n`` is the item table ``mf.n`` and, for users, the count kept
beside their vector (``user_params["mf_n"]``, the user state's ``"mf_n"``).
"""

from __future__ import annotations

import numpy as np
import torch

from models import sequential
from models.base import Batch, seeded_normal
from models.params import ParameterSet


class BiasedMF:
    name = "mf"

    def __init__(self, params: ParameterSet, dim: int = 10, lr_bias: float = 0.05, lr_latent: float = 0.1,
                 l2_bias: float = 0.0, l2_latent: float = 0.0, init_std: float = 0.1, mu: float = 3.0,
                 warm_bias: float = 0.0, warm_latent: float = 0.0, warm_latent_c: float = 1.0,
                 lr_item_bias: float | None = None, lr_item_latent: float | None = None):
        self.params, self.dim = params, dim
        self.lr_bias, self.lr_latent, self.l2_bias, self.l2_latent = lr_bias, lr_latent, l2_bias, l2_latent
        self.warm_bias, self.warm_latent, self.warm_latent_c = warm_bias, warm_latent, warm_latent_c
        # an item's steps settle to these (None: the user's)
        self.lr_item_bias = lr_bias if lr_item_bias is None else lr_item_bias
        self.lr_item_latent = lr_latent if lr_item_latent is None else lr_item_latent
        self.init_std = init_std
        # Examples learned per item: the warm-up steps' n, and what weighs the trainers' steps when they
        # merge. Trainers' counts add up; an item's factors and bias merge by the ``counted`` rule
        # (models.params.MERGE_RULES): a new item's first steps average, an established item's add up,
        # as one trainer seeing every example would take them. (Averaged instead, an item that several
        # trainers see learns at 1/N of the step between merges: at parallelism 4, merging every 4,000
        # examples, fused MAE 0.7436 against 0.7397: benchmarks/model_quality_offline.py.)
        self.n = params.add("mf.n", "item", (), merge="sum")
        self.q = params.add("mf.q", "item", (dim,), init=seeded_normal((dim,), init_std), merge="counted",
                            counted_by="mf.n")
        self.b = params.add("mf.b", "item", (), merge="counted", counted_by="mf.n")
        # [running mean of the labels, how many]
        self.mu = params.add("mf.mu", "dense", (2,), value=torch.tensor([mu, 0.0]))

    @property
    def user_width(self) -> int:
        return self.dim + 1

    def new_user(self, user_id: str) -> np.ndarray:
        """Initial user parameters (float32: the factors, then the bias), the same on every subtask."""
        return self.new_users([user_id])[0]

    def new_users(self, user_ids: list[str]) -> np.ndarray:
        """:meth:`new_user` of each id, as rows of one array (one compiled call: models.sequential.seeded_normals).
        Earlier code drew the factors from a torch generator per user (8-13 µs a user, most of a new
        user's cost, paid per event on a stream of mostly new users); users it stored keep theirs."""
        v = np.zeros((len(user_ids), self.dim + 1), np.float32)
        v[:, :-1] = sequential.seeded_normals(["user:" + u for u in user_ids], self.params.seed, self.dim)
        v[:, :-1] *= self.init_std
        return v

    def _raw(self, u: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        return self.mu.data[0, 0] + u[:, -1] + self.b.data[items] + (u[:, :-1] * self.q.data[items]).sum(1)

    def predict_many(self, batch: Batch) -> torch.Tensor:
        return self._raw(batch.user_params[self.name], batch.items)

    def learn_many(self, batch: Batch, y: torch.Tensor, grad: torch.Tensor | None = None, touch: bool = True) -> None:
        """One SGD step per example (an item's steps averaged over its examples in the batch).

        ``grad`` is dLoss/dprediction; by default the squared-error one, ``prediction - y``.
        ``touch``: count the examples against the rows (False when the caller does it).
        """
        u, items = batch.user_params[self.name], batch.items
        p, bu = u[:, :-1].clone(), u[:, -1].clone()  # the step uses the values before it
        q = self.q.data[items]
        err = -(grad if grad is not None else self._raw(u, items) - y)
        n_user = batch.user_params.get("mf_n")
        if n_user is None:
            n_user = torch.zeros(len(items), device=u.device)
        n_item = self.n.data[items]
        bias_on = float(self.warm_bias > 0)
        lr_bu = self._step(self.lr_bias, bias_on, self.warm_bias, n_user)
        lr_bi = self._step(self.lr_item_bias, bias_on, self.warm_bias, n_item)
        lr_u = self._step(self.lr_latent, self.warm_latent, self.warm_latent_c, n_user)
        lr_i = self._step(self.lr_item_latent, self.warm_latent, self.warm_latent_c, n_item)
        u[:, -1] += lr_bu * (err - self.l2_bias * bu)
        u[:, :-1] += lr_u[:, None] * (err[:, None] * q - self.l2_latent * p)
        # An item several users rated in the same step gets the mean of their
        # updates: summing steps all taken from the same stale vector overshoots.
        share = 1.0 / torch.bincount(items)[items].float()
        self.b.data.index_add_(0, items, share * lr_bi * (err - self.l2_bias * self.b.data[items]))
        self.q.data.index_add_(0, items, (share * lr_i)[:, None] * (err[:, None] * p - self.l2_latent * q))
        self.n.data.index_add_(0, items, torch.ones_like(share))
        n_user += 1.0
        mean, n = self.mu.data[0]
        k = len(items)
        self.mu.data[0, 0] = mean + (float(y.sum()) - k * mean) / (n + k)
        self.mu.data[0, 1] = n + k
        if touch:
            self.q.touch(items)
            self.b.touch(items)
            self.n.touch(items)
            self.mu.touch_dense(len(items))

    @staticmethod
    def _step(lr: float, warm: float, c: float, n: torch.Tensor) -> torch.Tensor:
        """Per example, the step size after ``n`` examples (models.sequential's warm-up steps)."""
        return (warm / (n + c)).clamp_min(lr) if warm > 0 else torch.full_like(n, lr)

    def score_catalogue(self, user_params: torch.Tensor) -> torch.Tensor:
        """(B, n_items) predicted ratings of every catalogue item for each user row."""
        n = self.params.n_items
        return (self.mu.data[0, 0] + user_params[:, -1:] + self.b.data[:n][None, :]
                + user_params[:, :-1] @ self.q.data[:n].T)
