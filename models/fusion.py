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
                          step: int, counts: list[int] | None = None) -> torch.Tensor:
        """Predict, then learn, ``step`` examples at a time (0: all at once), in order: each chunk is
        fused with the weights the chunks before it left, then the rows of it that ``learn`` (a bool
        mask; None: none) marks are added (``counts``: how many per chunk, if the caller knows). So
        the weights move as often whatever the batch size."""
        x = self._x(predictions)
        n = len(x)
        if learn is None:
            return x @ self._w
        step = step if step > 0 else n
        weight = learn.to(torch.float32)
        out = []
        for k, start in enumerate(range(0, n, step)):
            xs = x[start : start + step]
            out.append(xs @ self._w)
            count = counts[k] if counts is not None else int(weight[start : start + step].sum())
            if count:
                self._learn_x(xs, y[start : start + step], weight[start : start + step], count)
        return out[0] if len(out) == 1 else torch.cat(out)

    def learn(self, predictions: dict[str, torch.Tensor], y: torch.Tensor) -> None:
        self._learn_x(self._x(predictions), y)

    def _learn_x(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None,
                 count: int | None = None) -> None:
        """Add examples ``x``, ``y``; ``weight`` (0/1 per row) marks those that count, ``count`` of them."""
        y = y.float()
        count = len(y) if count is None else count
        fade = self.forget ** count
        xw = x
        if self.robust > 0:
            xw = x / (y - x @ self._w).abs().clamp_min(self.robust)[:, None]
        if weight is not None:
            xw = xw * weight[:, None]
        self.a.data[0] = self.a.data[0] * fade + xw.T @ x
        self.b.data[0] = self.b.data[0] * fade + xw.T @ y
        self.a.touch_dense(count)
        self.b.touch_dense(count)
        self.solve()

    def weights(self) -> dict[str, float]:
        w = self._w.tolist()
        return {"bias": w[0], **dict(zip(self.models, w[1:], strict=True))}
