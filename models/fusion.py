"""Online fusion of the models' predictions with learned weights (linear stacking by recursive least squares).

    fused = w0 + sum_m w_m * prediction_m

The weights solve a ridge regression of the labels on the models' (prequential)
predictions, over an exponentially fading window of past examples. The
sufficient statistics ``A = sum x x^T`` and ``b = sum x y`` are the learned
state: a batch of examples adds to them in one step, and merging trainers'
updates (an average of their increments) scales A and b alike, which leaves
the solved weights as they would be had one trainer seen everything.

With ``robust`` > 0 each example counts with weight ``1 / max(|y - fused|,
robust)`` (its error under the weights before the step): one pass of
iteratively reweighted least squares, which moves the fit from the mean
towards the median of the labels, i.e. towards least absolute error (MAE)
for errors larger than ``robust``; 0 is plain least squares.

    >>> import torch
    >>> from models.params import ParameterSet
    >>> f = OnlineFusion(ParameterSet(), ["a", "b"], forget=1.0, ridge=1e-6)
    >>> x = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([5.0, 1.0, 4.0, 2.0])}
    >>> f.learn(x, 2 * x["a"] + 1)
    >>> [round(v, 2) + 0.0 for v in f.weights().values()]
    [1.0, 2.0, 0.0]
"""

from __future__ import annotations

import numpy as np
import torch

from models.base import chunk_segments
from models.params import ParameterSet


class OnlineFusion:
    name = "fusion"

    def __init__(self, params: ParameterSet, models: list[str], forget: float = 0.9999, ridge: float = 1.0,
                 robust: float = 0.0):
        self.models, self.forget, self.ridge, self.robust = list(models), forget, ridge, robust
        n = len(models) + 1
        self.a = params.add("fusion.A", "dense", (n, n))
        self.b = params.add("fusion.b", "dense", (n,))
        # Before any example: an even average of the models.
        self.prior = torch.tensor([0.0] + [1.0 / len(models)] * len(models), device=params.device)
        self._w = self.prior.clone()
        # The open chunk (this trainer's own: not merged, not checkpointed): its rows so far and those of
        # them that learn, and their statistics.
        self.open = np.zeros(2, np.int64)
        self.pending_a, self.pending_b = torch.zeros(n, n, device=params.device), torch.zeros(n, device=params.device)

    def _x(self, predictions: dict[str, torch.Tensor]) -> torch.Tensor:
        cols = [predictions[m].float() for m in self.models]
        return torch.stack([torch.ones_like(cols[0]), *cols], dim=1)

    def solve(self) -> torch.Tensor:
        """Weights from the statistics (ridge towards the even average), cached until they change."""
        a, b = self.a.data[0], self.b.data[0]
        eye = torch.eye(len(b), device=b.device) * self.ridge
        self._w = torch.linalg.solve(a + eye, b + eye @ self.prior)
        return self._w

    def weights_view(self) -> np.ndarray:
        """The solved weights as a writable NumPy view (CPU): the compiled pass solves in place."""
        return self._w.numpy()

    def predict(self, predictions: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._x(predictions) @ self._w

    def predict_and_learn(self, predictions: dict[str, torch.Tensor], y: torch.Tensor, learn: torch.Tensor | None,
                          step: int, plain: torch.Tensor | None = None) -> torch.Tensor:
        """Predict, then learn, in chunks of ``step`` examples counted along the stream
        (models.base.chunk_segments; 0: one chunk per batch): each example is fused with the weights
        the chunks before it left; the rows that ``learn`` (a bool mask; None: none) marks join their
        chunk's statistics, which are added, and the weights solved again, when its last example has
        come. So the weights move as often, at the same examples, whatever the batch size. ``plain``: a bool
        mask of rows that weigh 1 whatever their error (binary feedback: the median of 0/1 labels is no fit)."""
        x = self._x(predictions)
        n = len(x)
        weight = learn.to(torch.float32) if learn is not None else None
        out = []
        for start, end, closes in chunk_segments(n, int(self.open[0]), step):
            xs = x[start:end]
            out.append(xs @ self._w)
            if weight is not None:
                w = weight[start:end]
                count = int(w.sum())
                if count:
                    a, b = self._rows(xs, y[start:end], w, None if plain is None else plain[start:end])
                    self.pending_a += a
                    self.pending_b += b
                    self.open[1] += count
            self.open[0] += end - start
            if closes:
                self.close_chunk()
        if not out:
            return torch.zeros(0, device=self._w.device)
        return out[0] if len(out) == 1 else torch.cat(out)

    def close_chunk(self) -> None:
        """Add the open chunk's statistics, if any of its examples learn, and solve again."""
        count = int(self.open[1])
        self.open[:] = 0
        if count:
            self._absorb(self.pending_a, self.pending_b, count)
            self.pending_a.zero_()
            self.pending_b.zero_()

    def learn(self, predictions: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        """Add every example of a batch at once, outside any chunk."""
        x = self._x(predictions)
        self._absorb(*self._rows(x, y), len(y))

    def _rows(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
              plain: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The statistics of examples ``x``, ``y`` (``weight``: 0/1 per row, the rows that count), each
        weighted (robust) by its error under the weights now, but the ``plain`` rows."""
        y = y.float()
        xw = x
        if self.robust > 0:
            scale = (y - x @ self._w).abs().clamp_min(self.robust)
            if plain is not None:
                scale = torch.where(plain, torch.ones_like(scale), scale)
            xw = x / scale[:, None]
        if weight is not None:
            xw = xw * weight[:, None]
        return xw.T @ x, xw.T @ y

    def _absorb(self, a: torch.Tensor, b: torch.Tensor, count: int) -> None:
        """Fade the statistics by ``count`` examples, add ``a``, ``b`` (from ``count`` examples), solve."""
        fade = self.forget ** count
        self.a.data[0] = self.a.data[0] * fade + a
        self.b.data[0] = self.b.data[0] * fade + b
        self.a.touch_dense(count)
        self.b.touch_dense(count)
        self.solve()

    def weights(self) -> dict[str, float]:
        w = self._w.tolist()
        return {"bias": w[0], **dict(zip(self.models, w[1:], strict=True))}
