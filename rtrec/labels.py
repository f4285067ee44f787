"""The label scale: how ratings and binary feedback share one set of units. Defined here only.

Every model predicts in rating units on ``[lo, hi]`` (``model.rating_min`` and
``model.rating_max``). Binary feedback is learned as the ends of that scale,
and a score for it is reported in 0..1, the rating rescaled. A rating counts
as positive at ``positive_rating`` and up.

    >>> s = LabelScale(1.0, 5.0)
    >>> s.target(1.0, rating=False), s.target(4.0, rating=True), s.probability(3.0), s.positive(4.0, rating=True)
    (5.0, 4.0, 0.5, True)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True)
class LabelScale:
    lo: float = 1.0
    hi: float = 5.0
    positive_rating: float = 4.0

    @classmethod
    def of(cls, model_cfg) -> LabelScale:
        """The scale of a rtrec.config.ModelConfig."""
        return cls(model_cfg.rating_min, model_cfg.rating_max)

    def target(self, label: float, rating: bool) -> float:
        """What the models learn from a label: a rating as it is, binary feedback as an end of the scale."""
        return label if rating else (self.hi if label >= 0.5 else self.lo)

    def probability(self, score: float) -> float:
        """A score in rating units as 0..1 (clamped): the units of binary feedback."""
        return min(1.0, max(0.0, (score - self.lo) / (self.hi - self.lo)))

    def units(self, score: float, rating: bool) -> float:
        """A score (rating units) in the label's units."""
        return min(self.hi, max(self.lo, score)) if rating else self.probability(score)

    def positive(self, label: float, rating: bool) -> bool:
        """A rating at ``positive_rating`` or more, or positive binary feedback."""
        return label >= self.positive_rating if rating else label >= 0.5

    def positives(self, labels: np.ndarray, rating: np.ndarray) -> np.ndarray:
        """:meth:`positive` of many labels at once (``rating``: which are ratings), as a bool array.

        >>> LabelScale().positives(np.array([4.0, 3.0, 1.0, 0.0]), np.array([True, True, False, False])).tolist()
        [True, False, True, False]
        """
        return np.where(rating, labels >= self.positive_rating, labels >= 0.5)
