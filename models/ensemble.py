"""The model set every scorer and trainer holds: MF, FTRL, the neural ranker, their fusion and the like head.

One :class:`ModelSet` owns one :class:`models.params.ParameterSet` (all global
tables, one item index) and turns examples into each model's inputs. It
predicts every model and the fusion, and learns all of them from the same
examples, so the operators never special-case a model.

Binary feedback (click, cart, purchase; an impression left unclicked) is
learned as the top or bottom of the rating scale; a prediction for such an
example, in the label's units, is the fused rating rescaled to 0..1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models import sequential
from models.base import Batch
from models.ftrl import FTRLProximal
from models.fusion import OnlineFusion
from models.like import LikeHead
from models.mf import BiasedMF
from models.params import ParameterSet
from models.ranker import NeuralRanker
from rtrec.config import ModelConfig
from rtrec.features.model_inputs import ITEM_DENSE, N_DENSE, PAIR_DENSE, id_code

_MIX = 1_000_003
_MOD = 1 << 31


def _mix(a: torch.Tensor | int, b: torch.Tensor | int):
    return (a * _MIX + b) % _MOD


@dataclass
class Examples:
    """What the operators gather per example, before the model set turns it into a :class:`Batch`."""

    rows: torch.Tensor  # (B,) item rows
    user_params: torch.Tensor  # (B, mf width)
    user_dense: torch.Tensor  # (B, len(USER_DENSE))
    user_codes: torch.Tensor  # (B,) id codes
    user_buckets: torch.Tensor  # (B, 2) rating-mean and count buckets
    pair: torch.Tensor | None = None  # (B, len(PAIR_DENSE)) text similarities; None: no text (zeros)

    def subset(self, idx: torch.Tensor) -> Examples:
        return Examples(self.rows[idx], self.user_params[idx], self.user_dense[idx], self.user_codes[idx],
                        self.user_buckets[idx], None if self.pair is None else self.pair[idx])


def similarity_buckets(pair: torch.Tensor | None, n: int, device) -> torch.Tensor:
    """(n, len(PAIR_DENSE)): per pair column, the similarity in tenths (0..20 for -1..1), or 21 for
    "no signal" (exactly 0: no query in the window, no interest yet, or an item without text)."""
    if pair is None:
        return torch.full((n, len(PAIR_DENSE)), 21, dtype=torch.long, device=device)
    tenths = torch.round((pair.clamp(-1, 1) + 1) * 10).long()
    return torch.where(pair == 0, 21, tenths)


def _or_none(rate: float) -> float | None:
    """A configured rate, or None where it is negative ("the same as the user's")."""
    return None if rate < 0 else rate


class ModelSet:
    """MF + FTRL + neural ranker + fusion over one parameter set."""

    def __init__(self, cfg: ModelConfig, device: torch.device | str = "cpu"):
        self.cfg = cfg
        self.device = torch.device(device)
        self.params = ParameterSet(self.device, cfg.seed)
        mid = (cfg.rating_min + cfg.rating_max) / 2
        # Item features from the ItemStage: set by the merger, read by everyone.
        self.item_features = self.params.add("items.features", "item", (len(ITEM_DENSE),))
        self.mf = BiasedMF(self.params, dim=cfg.dim, lr_bias=cfg.mf_lr_bias, lr_latent=cfg.mf_lr_latent,
                           l2_bias=cfg.mf_l2, l2_latent=cfg.mf_l2, mu=mid, warm_bias=cfg.mf_warm_bias,
                           warm_latent=cfg.mf_warm_latent, warm_latent_c=cfg.mf_warm_latent_c,
                           lr_item_bias=_or_none(cfg.mf_lr_item_bias),
                           lr_item_latent=_or_none(cfg.mf_lr_item_latent))
        self.ftrl = FTRLProximal(self.params, bits=cfg.ftrl_bits, alpha=cfg.ftrl_alpha, offset=mid)
        self.ranker = NeuralRanker(self.params, n_dense=N_DENSE, user_dim=cfg.dim, lr=cfg.ranker_lr, offset=mid,
                                   seed=cfg.seed, step_examples=cfg.step_examples, clip=cfg.grad_clip)
        self.models = [self.mf, self.ftrl, self.ranker]
        self.fusion = OnlineFusion(self.params, [m.name for m in self.models], forget=cfg.fusion_forget,
                                   robust=cfg.fusion_robust)
        #: The probability of a positive after the fusion (models.like); None when model.like_bits is 0.
        self.like = LikeHead(cfg, self.params) if cfg.like_bits else None
        self._item_codes = torch.zeros(0, dtype=torch.long, device=self.device)
        # Per item row: [id code, rating-mean bucket + 10, count bucket] (CPU: computed once per change of
        # the item features, not per batch), and the (writes, rows) of the item features it was made from.
        self._item_cols = torch.zeros((0, 3), dtype=torch.long)
        self._item_cols_of: tuple[int, int] | None = None
        #: sparse_codes' field numbers 1..10 (0, the bias, hashes to 0)
        self._field_keys = torch.arange(1, 11, dtype=torch.long, device=self.device)

    # -- inputs ------------------------------------------------------------------
    def rows(self, item_ids: list[str]) -> torch.Tensor:
        rows = self.params.item_rows(item_ids)
        self._extend_item_codes()
        return rows

    def _extend_item_codes(self) -> None:
        n = self.params.n_items
        if self._item_codes.shape[0] < n:
            new = [id_code(i) for i in self.params.index.ids[self._item_codes.shape[0] : n]]
            self._item_codes = torch.cat([self._item_codes, torch.tensor(new, dtype=torch.long, device=self.device)])

    def item_id_codes(self) -> np.ndarray:
        """(items,) int64 id code of every item row (a copy where the tables are on a GPU)."""
        self._extend_item_codes()
        return self._item_codes.cpu().numpy()

    def _item_columns(self) -> np.ndarray:
        """(items, 3) [id code, rating-mean bucket + 10, count bucket] of every item row, remade only when the
        item features were written (Table.writes) or rows were added: the same torch ops as per batch."""
        key = (self.item_features.writes, self.params.n_items)
        if self._item_cols_of != key:
            self._extend_item_codes()
            rows = torch.arange(self.params.n_items, device=self.device)
            mean_bucket, count_bucket = self._item_buckets(rows)
            self._item_cols = torch.stack([self._item_codes[rows], mean_bucket + 10, count_bucket], dim=1).contiguous()
            self._item_cols_of = key
        return self._item_cols.numpy()

    def _item_buckets(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.item_features.data[rows]
        known, n = f[:, 0] > 0, torch.expm1(f[:, 1] * 5.0)
        mean_bucket = torch.where(known & (n > 0.5), torch.round((f[:, 2] + 3.0) * 4).long(), -1)
        count_bucket = torch.floor(torch.log2(n.clamp_min(0) + 1)).long()
        return mean_bucket, count_bucket

    def sparse_codes(self, rows: torch.Tensor, user_codes: torch.Tensor, user_buckets: torch.Tensor,
                     pair: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 11) hashed feature ids (fields as in rtrec.features.model_inputs.SPARSE_FIELDS).

        Field k > 0 hashes its value v as ``_mix(k, v)``, the two crosses as ``_mix(_mix(k, v), i_mean)``.
        On the CPU one compiled loop over the cached item columns (models.sequential.sparse_codes); else
        :meth:`sparse_codes_torch`."""
        if self.device.type != "cpu":
            return self.sparse_codes_torch(rows, user_codes, user_buckets, pair)
        return torch.from_numpy(sequential.sparse_codes(
            self._item_columns(), rows.numpy(), user_codes.numpy(), user_buckets.numpy(),
            None if pair is None else pair.numpy(), _MIX, _MOD, self.ftrl.size))

    def sparse_codes_torch(self, rows: torch.Tensor, user_codes: torch.Tensor, user_buckets: torch.Tensor,
                           pair: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`sparse_codes` as torch ops: all fields in one op each over a (B, 10) table of values."""
        item_codes = self._item_codes[rows]
        u_mean, u_count = user_buckets[:, 0] + 10, user_buckets[:, 1]
        i_mean, i_count = self._item_buckets(rows)
        i_mean = i_mean + 10
        similarity = similarity_buckets(pair, len(item_codes), self.device)
        values = torch.cat([torch.stack([item_codes, user_codes, u_mean, u_count, i_mean, i_count, u_mean, user_codes],
                                        dim=1), similarity], dim=1)
        mixed = _mix(self._field_keys, values)  # fields 1..10
        crosses = mixed[:, 6:8]  # u_mean x i_mean, user x i_mean
        crosses.copy_(_mix(crosses, i_mean[:, None]))
        return torch.cat([torch.zeros_like(item_codes)[:, None], mixed], dim=1) % self.ftrl.size

    def batch(self, ex: Examples) -> Batch:
        pair = ex.pair if ex.pair is not None else torch.zeros(len(ex.rows), len(PAIR_DENSE), device=self.device)
        dense = torch.cat([ex.user_dense, self.item_features.data[ex.rows], pair], dim=1)
        return Batch(
            items=ex.rows,
            user_params={"mf": ex.user_params},
            dense=dense,
            sparse=self.sparse_codes(ex.rows, ex.user_codes, ex.user_buckets, ex.pair),
        )

    # -- predict and learn -------------------------------------------------------
    def predict(self, batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Each model's prediction and the fused one, in rating units (clamped to the scale)."""
        lo, hi = self.cfg.rating_min, self.cfg.rating_max
        raw = {m.name: m.predict_many(batch) for m in self.models}
        fused = self.fusion.predict(raw)
        return {k: v.clamp(lo, hi) for k, v in raw.items()}, fused.clamp(lo, hi)

    def learn(self, batch: Batch, y: torch.Tensor, predictions: dict[str, torch.Tensor], models=None,
              fusion: bool = True) -> None:
        """One step of ``models`` (default: all) and of the fusion (unless not ``fusion``), from predictions
        made before the step."""
        clip = self.cfg.grad_clip
        if fusion:
            self.fusion.learn(predictions, y)
        for m in models if models is not None else self.models:
            grad = (predictions[m.name] - y).clamp(-clip, clip)
            m.learn_many(batch, y, grad=grad)

    def ranker_and_fusion_compiled(self, batch: Batch, user: np.ndarray, y: np.ndarray, learn: np.ndarray,
                                   mf_pred: np.ndarray, ftrl_pred: np.ndarray, shown: np.ndarray | None = None
                                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ranker's and the fusion's predict-and-learn (chunks of ``step_examples`` counted along the
        stream) as one compiled pass over zero-copy views of their tables and of their open chunk (CPU
        only): what :meth:`NeuralRanker.predict_and_learn` and :meth:`OnlineFusion.predict_and_learn` do,
        without a dozen torch ops per chunk. ``user`` (n, dim): each row's MF user vector before it,
        without the bias; ``shown`` (n, 3) the fusion's inputs in place of the models' predictions, NaN where
        none (see :func:`models.sequential.ranker_fusion_pass`). Returns (ranker, fused) raw predictions."""
        r, f = self.ranker, self.fusion
        assert f.models == [self.mf.name, self.ftrl.name, r.name], f.models  # the pass's column order
        w1, b1, w2, b2 = (t.data[0].numpy() for t in r.layers)
        a1, ab1, a2, ab2 = (t.data[0].numpy() for t in r.acc)
        step = self.cfg.step_examples
        r.reserve(step if step > 0 else len(y))
        p1, pb1, p2, pb2 = (t.numpy() for t in r.pending)
        chunk = (p1, pb1, p2.reshape(-1), pb2, r.pending_items.numpy(), r.pending_emb.numpy(),
                 f.pending_a.numpy(), f.pending_b.numpy(), r.open)
        ranker, fused, closed = sequential.ranker_fusion_pass(
            batch.dense.numpy(), user, batch.items.numpy(), y, learn, step,
            (w1, b1, w2.reshape(-1), b2, a1, ab1, a2.reshape(-1), ab2), r.emb.data.numpy(), r.emb_acc.data.numpy(),
            r.lr, r.eps, r.offset, self.cfg.grad_clip, mf_pred, ftrl_pred,
            shown if shown is not None else np.full((len(y), 3), np.nan, np.float32),
            (f.a.data[0].numpy(), f.b.data[0].numpy(), f.weights_view(), f.prior.numpy()), f.ridge, f.forget,
            f.robust, chunk)
        f.open[:] = r.open  # (one chunk for both: the pass kept the ranker's count)
        if len(closed):
            rows = torch.from_numpy(closed)
            for t in (*r.layers, *r.acc, f.a, f.b):
                t.touch_dense(len(closed))
            r.emb.touch(rows)
            r.emb_acc.touch(rows)
        return torch.from_numpy(ranker), torch.from_numpy(fused)

    def loaded(self) -> None:
        """Call after parameters were replaced (a new version): refresh what is derived from them."""
        self.fusion.solve()

    def score_candidates(self, user_params: torch.Tensor, user_dense: torch.Tensor, user_codes: torch.Tensor,
                         user_buckets: torch.Tensor, candidate_rows: torch.Tensor,
                         pair: torch.Tensor | None = None) -> torch.Tensor:
        """Fused scores of (B, M) candidate rows for B users; ``pair`` the (B, M, 2) text similarities or None.

        On the CPU one compiled loop (models.sequential.candidates_pass); else :meth:`score_candidates_torch`."""
        if self.device.type != "cpu":
            return self.score_candidates_torch(user_params, user_dense, user_codes, user_buckets, candidate_rows, pair)
        mf, ftrl, r = self.mf, self.ftrl, self.ranker
        assert self.fusion.models == [mf.name, ftrl.name, r.name], self.fusion.models  # the pass's column order
        w1, b1, w2, b2 = (t.data[0].numpy() for t in r.layers)
        return torch.from_numpy(sequential.candidates_pass(
            np.ascontiguousarray(user_params.numpy(), np.float32), np.ascontiguousarray(user_dense.numpy(), np.float32),
            candidate_rows.numpy(), None if pair is None else pair.numpy(), user_codes.numpy(), user_buckets.numpy(),
            self._item_columns(), self.item_features.data.numpy(),
            (mf.q.data.numpy(), mf.b.data.numpy(), float(mf.mu.data[0, 0])),
            (ftrl.z.data.numpy(), ftrl.n.data.numpy(), ftrl.alpha, ftrl.beta, ftrl.l1, ftrl.l2, ftrl.offset),
            (_MIX, _MOD, ftrl.size), (w1, b1, w2.reshape(-1), b2, r.emb.data.numpy(), r.offset),
            self.fusion.weights_view(), self.cfg.rating_min, self.cfg.rating_max))

    def score_candidates_torch(self, user_params: torch.Tensor, user_dense: torch.Tensor, user_codes: torch.Tensor,
                               user_buckets: torch.Tensor, candidate_rows: torch.Tensor,
                               pair: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`score_candidates` as torch ops (a GPU; and the reference the compiled loop is tested against)."""
        b, m = candidate_rows.shape
        rep = lambda t: t.repeat_interleave(m, dim=0)  # noqa: E731
        ex = Examples(candidate_rows.reshape(-1), rep(user_params), rep(user_dense), rep(user_codes), rep(user_buckets),
                      None if pair is None else pair.reshape(b * m, -1))
        _, fused = self.predict(self.batch(ex))
        return fused.reshape(b, m)
