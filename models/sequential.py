"""Exact-order passes over a batch, compiled: the MF's and FTRL's predict-then-learn, the ranker's and the
fusion's chunked predict-then-learn, the text-interest fold; and the hashed sparse codes of a batch.

A user's examples must apply in order, and each must be predicted before
anything learns from it. Batched torch ops can only keep that order in
"waves" (the n-th example of every user together), which costs tens of torch
ops per wave; MovieLens users rate in bursts, so a 250-event batch holds
about 130 waves. A plain loop keeps the order exactly and, compiled, costs
about 0.03 µs per example (a pure-Python loop about 2 µs, a tiny torch op
1.2-2.5 µs).

The loops run over zero-copy NumPy views of the models' torch tables, so the
parameters stay torch tensors and learning happens in place. They are
compiled with Numba on first use (:func:`warm_up`: several seconds, then cached on disk). Numba's
compiled code must be entered from a thread Python created: on a Flink task
thread (pemja) it hung; the operators call in through models.worker's
thread. On a CUDA device the caller keeps the batched form instead
(models.online): these loops are for the CPU.

    >>> import numpy as np
    >>> users = np.zeros((1, 3), np.float32); users[0, :2] = [0.1, 0.2]
    >>> q = np.array([[0.5, 0.5]], np.float32); b = np.zeros(1, np.float32); mu = np.array([3.0, 0.0], np.float32)
    >>> pred, before, after = mf_pass(users, np.array([0]), np.array([0]), np.array([4.0], np.float32),
    ...                               np.array([True]), q, b, mu, 0.05, 0.1, 0.0, 0.0, 4.0)
    >>> round(float(pred[0]), 4), round(float(users[0, 2]), 4), round(float(b[0]), 4), mu.tolist()
    (3.15, 0.0425, 0.0425, [4.0, 1.0])
"""

from __future__ import annotations

import math

import numba
import numpy as np


def jit(fn=None, *, reassociate: bool = False):
    """Compiled, and cached on disk (beside this file, or in numba's user-wide cache folder where that
    is read-only; ``NUMBA_CACHE_DIR`` chooses another): a compile costs seconds, a cache hit a fraction
    of one. With no writable folder at all, it compiles at every start instead of failing.

    ``reassociate``: sums may be reordered (and multiply-adds fused), so that a dot product's loop runs in
    SIMD lanes; the result differs from the strict order in the last bits. Only where that is harmless."""
    if fn is None:
        return lambda f: jit(f, reassociate=reassociate)
    options = {"nogil": True, **({"fastmath": {"reassoc", "contract"}} if reassociate else {})}
    try:
        return numba.njit(cache=True, **options)(fn)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(**options)(fn)



@jit
def _clipped(g, clip):
    """The error clipped to [-clip, clip] (model.grad_clip), as every model's is."""
    return min(max(g, -clip), clip)


@jit
def _step(lr, warm, c, n):
    """The step size of a parameter seen in ``n`` examples so far: ``lr``, or ``warm / (n + c)`` while that is
    larger (``warm`` 0: always ``lr``). With ``warm`` 1 a bias starts as a running mean of its errors (shrunk
    by ``c`` pseudo-examples), then settles to ``lr`` once ``n + c`` reaches ``1 / lr``."""
    if warm > 0:
        return max(lr, warm / (n + c))
    return lr


@jit
def _mf_pass(users, user_of, items, y, learn, q, b, mu, lr_bias, lr_latent, l2_bias, l2_latent, clip,
             n_user, n_item, warm_bias, warm_latent, warm_latent_c, lr_item_bias, lr_item_latent, pred, before,
             after):
    n = items.shape[0]
    dim = q.shape[1]
    for i in range(n):
        r = user_of[i]
        u = users[r]
        it = items[i]
        before[i, :] = u
        p = mu[0] + u[dim] + b[it]
        for k in range(dim):
            p += u[k] * q[it, k]
        pred[i] = p
        if learn[i]:
            err = -_clipped(p - y[i], clip)
            bu = u[dim]
            bi = b[it]
            nu = n_user[r]
            ni = n_item[it]
            lr_u = _step(lr_latent, warm_latent, warm_latent_c, nu)
            lr_i = _step(lr_item_latent, warm_latent, warm_latent_c, ni)
            u[dim] = bu + _step(lr_bias, 1.0 if warm_bias > 0 else 0.0, warm_bias, nu) * (err - l2_bias * bu)
            for k in range(dim):
                pk = u[k]
                qk = q[it, k]
                u[k] = pk + lr_u * (err * qk - l2_latent * pk)
                q[it, k] = qk + lr_i * (err * pk - l2_latent * qk)
            b[it] = bi + _step(lr_item_bias, 1.0 if warm_bias > 0 else 0.0, warm_bias, ni) * (err - l2_bias * bi)
            n_user[r] = nu + 1.0
            n_item[it] = ni + 1.0
            mu[1] += 1.0
            mu[0] += (y[i] - mu[0]) / mu[1]
            for k in range(dim + 1):  # a diverged user vector is reset, not stored
                if not math.isfinite(u[k]):
                    u[k] = 0.0
        after[i, :] = u


def mf_pass(users: np.ndarray, user_of: np.ndarray, items: np.ndarray, y: np.ndarray, learn: np.ndarray,
            q: np.ndarray, b: np.ndarray, mu: np.ndarray, lr_bias: float, lr_latent: float, l2_bias: float,
            l2_latent: float, clip: float, n_user: np.ndarray | None = None, n_item: np.ndarray | None = None,
            warm_bias: float = 0.0, warm_latent: float = 0.0, warm_latent_c: float = 1.0,
            lr_item_bias: float | None = None,
            lr_item_latent: float | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Biased MF over examples in order: predict each, then (where ``learn``) take one SGD step.

    ``users`` (U, dim + 1, the bias last) holds the batch's user vectors and
    ``user_of`` each example's row in it; ``q`` (items, dim), ``b`` (items,)
    and ``mu`` ([mean, count]) are the global tables. All are updated in
    place, as :class:`models.mf.BiasedMF` would one example at a time.

    ``n_user`` (U,) and ``n_item`` (items,) count the examples each user and
    item was learned from (updated in place; None: zeros, thrown away). A
    bias's step is ``max(lr_bias, 1 / (n + warm_bias))`` (``warm_bias`` 0:
    ``lr_bias``), a factor's ``max(lr_latent, warm_latent / (n +
    warm_latent_c))`` (``warm_latent`` 0: ``lr_latent``): large first steps
    for a new user or item, the configured ones once it is known. An item's
    steps settle to ``lr_item_bias`` and ``lr_item_latent`` instead (None:
    the users' rates).

    Returns each example's raw prediction and its user's vector before and
    after it.
    """
    n = len(items)
    pred = np.empty(n, np.float32)
    before = np.empty((n, users.shape[1]), np.float32)
    after = np.empty_like(before)
    if n_user is None:
        n_user = np.zeros(len(users), np.float32)
    if n_item is None:
        n_item = np.zeros(len(q), np.float32)
    _mf_pass(users, user_of, items, y, learn, q, b, mu, np.float32(lr_bias), np.float32(lr_latent),
             np.float32(l2_bias), np.float32(l2_latent), np.float32(clip), n_user, n_item, np.float32(warm_bias),
             np.float32(warm_latent), np.float32(warm_latent_c),
             np.float32(lr_bias if lr_item_bias is None else lr_item_bias),
             np.float32(lr_latent if lr_item_latent is None else lr_item_latent), pred, before, after)
    return pred, before, after


def warm_step(lr: float, warm: float, c: float, n: float) -> float:
    """:func:`_step` in plain Python (the reference's)."""
    return max(lr, warm / (n + c)) if warm > 0 else lr


def mf_reference(users, user_of, items, y, learn, q, b, mu, lr_bias, lr_latent, l2_bias, l2_latent, clip,
                 n_user=None, n_item=None, warm_bias=0.0, warm_latent=0.0, warm_latent_c=1.0, lr_item_bias=None,
                 lr_item_latent=None):
    """:func:`mf_pass` in plain Python on lists of floats (the tests' reference; same in-place contract)."""
    pred, before, after = [], [], []
    dim = len(q[0])
    n_user = n_user if n_user is not None else [0.0] * len(users)
    n_item = n_item if n_item is not None else [0.0] * len(q)
    lr_item_bias = lr_bias if lr_item_bias is None else lr_item_bias
    lr_item_latent = lr_latent if lr_item_latent is None else lr_item_latent
    for i, it in enumerate(items):
        r = user_of[i]
        u = users[r]
        before.append(list(u))
        p = mu[0] + u[dim] + b[it] + sum(u[k] * q[it][k] for k in range(dim))
        pred.append(p)
        if learn[i]:
            err = -max(-clip, min(clip, p - y[i]))
            pu, qi, bu, bi = list(u[:dim]), list(q[it]), u[dim], b[it]
            nu, ni = n_user[r], n_item[it]
            bias_on = 1.0 if warm_bias > 0 else 0.0
            u[dim] = bu + warm_step(lr_bias, bias_on, warm_bias, nu) * (err - l2_bias * bu)
            for k in range(dim):
                u[k] = pu[k] + warm_step(lr_latent, warm_latent, warm_latent_c, nu) * (err * qi[k] - l2_latent * pu[k])
                q[it][k] = qi[k] + (warm_step(lr_item_latent, warm_latent, warm_latent_c, ni)
                                    * (err * pu[k] - l2_latent * qi[k]))
            b[it] = bi + warm_step(lr_item_bias, bias_on, warm_bias, ni) * (err - l2_bias * bi)
            n_user[r], n_item[it] = nu + 1.0, ni + 1.0
            mu[1] += 1.0
            mu[0] += (y[i] - mu[0]) / mu[1]
        after.append(list(u))
    return pred, before, after


@jit
def _interest_pass(vecs, mass, last_ts, known, user_of, item_vecs, ts, weight, half_life_ms, out):
    n = user_of.shape[0]
    dim = vecs.shape[1]
    for k in range(n):
        r = user_of[k]
        if known[r]:
            dt = ts[k] - last_ts[r]
            if dt < 0:
                dt = 0
            keep = np.float32(2.0 ** (-dt / half_life_ms)) * mass[r]
        else:
            keep = np.float32(0.0)
        norm_u = 0.0
        norm_i = 0.0
        for j in range(dim):
            norm_u += vecs[r, j] * vecs[r, j]
            norm_i += item_vecs[k, j] * item_vecs[k, j]
        norm_u = max(math.sqrt(norm_u), 1e-12)
        norm_i = max(math.sqrt(norm_i), 1e-12)
        w = weight[k]
        s = 0.0
        for j in range(dim):
            v = keep * (vecs[r, j] / norm_u) + w * (item_vecs[k, j] / norm_i)
            out[k, j] = v
            s += v * v
        s = max(math.sqrt(s), 1e-12)
        for j in range(dim):
            out[k, j] = out[k, j] / s
            vecs[r, j] = out[k, j]
        mass[r] = keep + w
        if known[r]:
            last_ts[r] = max(last_ts[r], ts[k])
        else:
            last_ts[r] = ts[k]
        known[r] = True


def interest_pass(vecs: np.ndarray, mass: np.ndarray, last_ts: np.ndarray, known: np.ndarray, user_of: np.ndarray,
                  item_vecs: np.ndarray, ts: np.ndarray, weight: np.ndarray, half_life_ms: float) -> np.ndarray:
    """Fold liked items into users' text interest in order (:func:`models.text.decay_interest`, one at a time).

    ``vecs`` (U, dim), ``mass``, ``last_ts`` and ``known`` (has an interest
    yet) are per user and updated in place; update ``k`` folds ``item_vecs[k]``
    with ``weight[k]`` at ``ts[k]`` into user ``user_of[k]``. Returns each
    update's resulting interest vector (n, dim).
    """
    out = np.empty((len(user_of), vecs.shape[1]), np.float32)
    if len(user_of):
        _interest_pass(vecs, mass, last_ts, known, user_of, item_vecs, ts, weight, np.float32(half_life_ms), out)
    return out


@jit
def _ftrl_weight(z, n, c, alpha, beta, l1, l2):
    """FTRL-Proximal's weight of hashed feature ``c`` (0 inside the L1 ball)."""
    zc = z[c]
    if abs(zc) <= l1:
        return 0.0
    sign = 1.0 if zc > 0 else -1.0
    return -(zc - sign * l1) / ((beta + math.sqrt(n[c])) / alpha + l2)


@jit
def _code(field, value, mix, mod, size):
    """Hashed feature id of ``value`` in sparse field ``field`` (1-10; 0, the bias, is id 0)."""
    return ((field * mix + value) % mod) % size


@jit
def _cross(field, value, i_mean, mix, mod, size):
    """Hashed feature id of ``value`` crossed with the item's rating-mean bucket ``i_mean`` (fields 7, 8)."""
    return ((((field * mix + value) % mod) * mix + i_mean) % mod) % size


@jit
def _pair_bucket(p, has_pair):
    """A text similarity in tenths (0-20), 21 for "no signal" (exactly 0, or no text)."""
    if not has_pair or p == 0:
        return 21
    p = min(max(p, np.float32(-1.0)), np.float32(1.0))
    return np.int64(np.round((p + np.float32(1.0)) * np.float32(10.0)))


@jit
def _ftrl_pass(z, n, codes, y, learn, alpha, beta, l1, l2, offset, clip, pred):
    k = codes.shape[1]
    w = np.empty(k, np.float32)
    for i in range(codes.shape[0]):
        p = offset
        for j in range(k):
            w[j] = _ftrl_weight(z, n, codes[i, j], alpha, beta, l1, l2)
            p += w[j]
        pred[i] = p
        if learn[i]:
            g = _clipped(p - y[i], clip)
            for j in range(k):
                c = codes[i, j]
                nc = n[c]
                sigma = (math.sqrt(nc + g * g) - math.sqrt(nc)) / alpha
                z[c] += g - sigma * w[j]
                n[c] = nc + g * g


def ftrl_pass(z: np.ndarray, n: np.ndarray, codes: np.ndarray, y: np.ndarray, learn: np.ndarray, alpha: float,
              beta: float, l1: float, l2: float, offset: float, clip: float) -> np.ndarray:
    """FTRL-Proximal (McMahan et al., 2013) over examples in order: predict each, then (where ``learn``)
    update the per-coordinate state ``z`` and ``n`` of its hashed features ``codes`` (B, K), in place.

    Returns each example's prediction (``offset`` + the sum of its features' weights) before it was
    learned from. The error is clipped to ``clip``, as every model's is (models.ensemble).
    """
    pred = np.empty(len(codes), np.float32)
    if len(codes):
        _ftrl_pass(z, n, codes, y, learn, np.float32(alpha), np.float32(beta), np.float32(l1), np.float32(l2),
                   np.float32(offset), np.float32(clip), pred)
    return pred


@jit
def _solve_ridge(a, b, ridge, prior, out):
    """``out`` = (a + ridge I)^-1 (b + ridge prior), by Gaussian elimination with partial pivoting (float64)."""
    k = b.shape[0]
    m = np.empty((k, k + 1), np.float64)
    for r in range(k):
        for c in range(k):
            m[r, c] = a[r, c] + (ridge if r == c else 0.0)
        m[r, k] = b[r] + ridge * prior[r]
    for c in range(k):
        piv = c
        for r in range(c + 1, k):
            if abs(m[r, c]) > abs(m[piv, c]):
                piv = r
        if piv != c:
            for j in range(k + 1):
                t = m[c, j]
                m[c, j] = m[piv, j]
                m[piv, j] = t
        for r in range(c + 1, k):
            f = m[r, c] / m[c, c]
            for j in range(c, k + 1):
                m[r, j] -= f * m[c, j]
    for r in range(k - 1, -1, -1):
        s = m[r, k]
        for j in range(r + 1, k):
            s -= m[r, j] * out[j]
        out[r] = s / m[r, r]


@jit
def _ranker_fusion_pass(dense, user, items, y, learn, step, w1, b1, w2, b2, a_w1, a_b1, a_w2, a_b2, emb, emb_acc,
                        lr, eps, offset, clip, mf_pred, ftrl_pred, shown, fa, fb, fw, prior, ridge, forget, robust,
                        p_w1, p_b1, p_w2, p_b2, p_items, p_e, p_fa, p_fb, open_, ranker_out, fused_out, closed_items):
    n = items.shape[0]
    nd = dense.shape[1]
    de = emb.shape[1]
    du = user.shape[1]
    n_in = nd + de + du
    hid = w1.shape[1]
    k = fw.shape[0]
    x = np.empty(n_in, np.float32)
    pre = np.empty(hid, np.float32)
    w_new = np.empty(k, np.float64)
    xf = np.empty(k, np.float64)
    filled = open_[0]
    count = open_[1]
    closed = 0
    for i in range(n):
        # Predict with the weights the chunks before this one left: the ranker, then the fusion.
        for j in range(nd):
            x[j] = dense[i, j]
        for j in range(de):
            x[nd + j] = emb[items[i], j]
        for j in range(du):
            x[nd + de + j] = user[i, j]
        out = offset + b2[0]
        for h in range(hid):
            s = b1[h]
            for j in range(n_in):
                s += x[j] * w1[j, h]
            pre[h] = s
            if s > 0:
                out += s * w2[h]
        ranker_out[i] = out
        # The fusion's inputs: the models' predictions now, or the scores the row's event got as it came.
        xf[0] = 1.0
        if shown[i, 0] == shown[i, 0]:  # (not NaN)
            xf[1] = shown[i, 0]
            xf[2] = shown[i, 1]
            xf[3] = shown[i, 2]
        else:
            xf[1] = mf_pred[i]
            xf[2] = ftrl_pred[i]
            xf[3] = out
        fused_out[i] = fw[0] + fw[1] * xf[1] + fw[2] * xf[2] + fw[3] * xf[3]
        if learn[i]:
            # Into the open chunk: the ranker's gradient (NeuralRanker._add), the fusion's row.
            g = min(max(out - y[i], -clip), clip)
            p_b2[0] += g
            for j in range(de):
                p_e[count, j] = 0.0
            for h in range(hid):
                if pre[h] > 0:
                    p_w2[h] += pre[h] * g
                    d = g * w2[h]
                    p_b1[h] += d
                    for j in range(n_in):
                        p_w1[j, h] += x[j] * d
                    for j in range(de):
                        p_e[count, j] += d * w1[nd + j, h]
            p_items[count] = items[i]
            wt = 1.0
            if robust > 0 and shown[i, 0] != shown[i, 0]:  # (binary feedback weighs 1: its median is no fit)
                wt = 1.0 / max(abs(y[i] - fused_out[i]), robust)
            for r in range(k):
                p_fb[r] += wt * xf[r] * y[i]
                for c in range(k):
                    p_fa[r, c] += wt * xf[r] * xf[c]
            count += 1
        filled += 1
        if filled < step:
            continue
        # The chunk is complete: its steps, if any of it learns.
        filled = 0
        if count == 0:
            continue
        # The ranker: one Adagrad step on the chunk's summed gradient (NeuralRanker._step).
        for j in range(n_in):
            for h in range(hid):
                gg = p_w1[j, h]
                a_w1[j, h] += gg * gg
                w1[j, h] -= lr * gg / (math.sqrt(a_w1[j, h]) + eps)
                p_w1[j, h] = 0.0
        for h in range(hid):
            gg = p_b1[h]
            a_b1[h] += gg * gg
            b1[h] -= lr * gg / (math.sqrt(a_b1[h]) + eps)
            gg = p_w2[h]
            a_w2[h] += gg * gg
            w2[h] -= lr * gg / (math.sqrt(a_w2[h]) + eps)
            p_b1[h] = 0.0
            p_w2[h] = 0.0
        gg = p_b2[0]
        a_b2[0] += gg * gg
        b2[0] -= lr * gg / (math.sqrt(a_b2[0]) + eps)
        p_b2[0] = 0.0
        # The item embeddings: accumulators first (repeated items add up), then the steps.
        for c in range(count):
            for j in range(de):
                emb_acc[p_items[c], j] += p_e[c, j] * p_e[c, j]
        for c in range(count):
            for j in range(de):
                emb[p_items[c], j] -= lr * p_e[c, j] / (math.sqrt(emb_acc[p_items[c], j]) + eps)
            closed_items[closed] = p_items[c]
            closed += 1
        # The fusion: fade, add the chunk's statistics, solve (OnlineFusion._absorb).
        fade = forget ** count
        for r in range(k):
            fb[r] = fb[r] * fade + p_fb[r]
            p_fb[r] = 0.0
            for c in range(k):
                fa[r, c] = fa[r, c] * fade + p_fa[r, c]
                p_fa[r, c] = 0.0
        _solve_ridge(fa, fb, ridge, prior, w_new)
        for r in range(k):
            fw[r] = w_new[r]
        count = 0
    open_[0] = filled
    open_[1] = count
    return closed


def ranker_fusion_pass(dense: np.ndarray, user: np.ndarray, items: np.ndarray, y: np.ndarray, learn: np.ndarray,
                       step: int, ranker: tuple, emb: np.ndarray, emb_acc: np.ndarray, lr: float, eps: float,
                       offset: float, clip: float, mf_pred: np.ndarray, ftrl_pred: np.ndarray, shown: np.ndarray,
                       fusion: tuple, ridge: float, forget: float, robust: float,
                       chunk: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The neural ranker and the fusion over a batch, in chunks of ``step`` examples counted along the
    stream (0: the batch is one chunk), as :meth:`models.ranker.NeuralRanker.predict_and_learn` and
    :meth:`models.fusion.OnlineFusion.predict_and_learn` do with torch ops: each example is predicted
    with the weights the chunks before it left; the rows that ``learn`` marks join their chunk, which
    takes one Adagrad step (ranker) and is added to the statistics (fusion) when its last row has come,
    in this batch or a later one.

    ``ranker``: the views (w1, b1, w2 as (hidden,), b2, and their Adagrad accumulators in that order);
    ``emb``/``emb_acc`` the item embedding and its accumulator; ``dense`` (n, F) and ``user`` (n, dim)
    the ranker's inputs besides the embedding. ``fusion``: (A, b, weights, prior), with the weights
    solved again after each chunk. ``chunk``: the open chunk, (gradients of w1, b1, w2 as (hidden,), b2;
    items (capacity >= step, or n for step 0); their embedding gradients; the fusion's A and b; [rows,
    learning rows]). ``shown`` (n, 3): per row, the fusion's inputs in place of the three models' predictions
    (the scores binary feedback got as its event came, which serving fused), or NaN: the predictions. Rows
    with ``shown`` scores weigh 1 in the fusion's fit, the others by ``robust`` (towards least absolute
    error, for ratings: the median of 0/1 labels is no fit).
    Everything is updated in place. Returns (ranker, fused) predictions, the fused one
    not clamped, and the item of each example whose chunk closed in this batch (for the touched rows).
    """
    n = len(items)
    ranker_out = np.empty(n, np.float32)
    fused_out = np.empty(n, np.float32)
    p_w1, p_b1, p_w2, p_b2, p_items, p_e, p_fa, p_fb, open_ = chunk
    closed = np.empty(n + len(p_items), np.int64)
    done = 0
    if n:
        w1, b1, w2, b2, a_w1, a_b1, a_w2, a_b2 = ranker
        fa, fb, fw, prior = fusion
        done = _ranker_fusion_pass(dense, user, items, y, learn, step if step > 0 else n, w1, b1, w2, b2, a_w1,
                                   a_b1, a_w2, a_b2, emb, emb_acc, np.float32(lr), np.float32(eps),
                                   np.float32(offset), np.float32(clip), mf_pred, ftrl_pred, shown, fa, fb, fw, prior,
                                   float(ridge), float(forget), float(robust), p_w1, p_b1, p_w2, p_b2, p_items, p_e,
                                   p_fa, p_fb, open_, ranker_out, fused_out, closed)
    return ranker_out, fused_out, closed[:done]


@jit
def _sparse_codes(item_cols, rows, user_codes, user_buckets, pair, has_pair, mix, mod, size, out):
    for i in range(rows.shape[0]):
        r = rows[i]
        i_mean = item_cols[r, 1]
        u_mean = user_buckets[i, 0] + 10
        out[i, 0] = 0  # the bias
        out[i, 1] = _code(1, item_cols[r, 0], mix, mod, size)
        out[i, 2] = _code(2, user_codes[i], mix, mod, size)
        out[i, 3] = _code(3, u_mean, mix, mod, size)
        out[i, 4] = _code(4, user_buckets[i, 1], mix, mod, size)
        out[i, 5] = _code(5, i_mean, mix, mod, size)
        out[i, 6] = _code(6, item_cols[r, 2], mix, mod, size)
        out[i, 7] = _cross(7, u_mean, i_mean, mix, mod, size)
        out[i, 8] = _cross(8, user_codes[i], i_mean, mix, mod, size)
        out[i, 9] = _code(9, _pair_bucket(pair[i, 0], has_pair), mix, mod, size)
        out[i, 10] = _code(10, _pair_bucket(pair[i, 1], has_pair), mix, mod, size)


def sparse_codes(item_cols: np.ndarray, rows: np.ndarray, user_codes: np.ndarray, user_buckets: np.ndarray,
                 pair: np.ndarray | None, mix: int, mod: int, size: int) -> np.ndarray:
    """(B, 11) hashed sparse feature ids, as :meth:`models.ensemble.ModelSet.sparse_codes_torch` makes them:
    ``item_cols`` (items, 3) holds each item row's [id code, rating-mean bucket + 10, count bucket],
    ``user_buckets`` (B, 2) the users' [rating-mean bucket, count bucket], ``pair`` (B, 2) the text
    similarities (None: no text)."""
    n = len(rows)
    out = np.empty((n, 11), np.int64)
    if n:
        has_pair = pair is not None
        _sparse_codes(item_cols, np.ascontiguousarray(rows), np.ascontiguousarray(user_codes),
                      np.ascontiguousarray(user_buckets),
                      np.ascontiguousarray(pair, np.float32) if has_pair else np.zeros((n, 2), np.float32),
                      has_pair, mix, mod, size, out)
    return out


@jit
def _candidates_pass(user, user_dense, cand, pair, has_pair, user_codes, user_buckets, item_cols, item_feats,
                     q, b, mu0, z, n, alpha, beta, l1, l2, ftrl_offset, mix, mod, size,
                     w1, b1, w2, b2, emb, ranker_offset, fw, lo, hi, out):
    n_users, width = cand.shape
    du = user_dense.shape[1]
    di = item_feats.shape[1]
    dp = pair.shape[2]
    de = emb.shape[1]
    dim = q.shape[1]
    hid = w1.shape[1]
    at_item = du  # w1's rows: [user dense, item dense, pair, item embedding, user vector]
    at_pair = du + di
    at_emb = du + di + dp
    at_user = du + di + dp + de
    # What depends on the item alone, once per distinct candidate: its share of the ranker's hidden
    # layer and the weights of its FTRL fields (the bias, its id, rating-mean and count buckets).
    slot = np.full(item_feats.shape[0], -1, np.int64)
    order = np.empty(n_users * width, np.int64)
    distinct = 0
    for i in range(n_users):
        for j in range(width):
            r = cand[i, j]
            if slot[r] < 0:
                slot[r] = distinct
                order[distinct] = r
                distinct += 1
    item_h = np.zeros((distinct, hid), np.float32)
    item_f = np.empty(distinct, np.float64)
    bias_w = _ftrl_weight(z, n, 0, alpha, beta, l1, l2)
    for s in range(distinct):
        r = order[s]
        for k in range(di):
            v = item_feats[r, k]
            for h in range(hid):
                item_h[s, h] += v * w1[at_item + k, h]
        for k in range(de):
            v = emb[r, k]
            for h in range(hid):
                item_h[s, h] += v * w1[at_emb + k, h]
        item_f[s] = (bias_w + _ftrl_weight(z, n, _code(1, item_cols[r, 0], mix, mod, size), alpha, beta, l1, l2)
                     + _ftrl_weight(z, n, _code(5, item_cols[r, 1], mix, mod, size), alpha, beta, l1, l2)
                     + _ftrl_weight(z, n, _code(6, item_cols[r, 2], mix, mod, size), alpha, beta, l1, l2))
    user_h = np.empty(hid, np.float32)
    hs = np.empty(hid, np.float32)
    for i in range(n_users):
        # What depends on the user alone, once per user.
        for h in range(hid):
            user_h[h] = b1[h]
        for k in range(du):
            v = user_dense[i, k]
            for h in range(hid):
                user_h[h] += v * w1[k, h]
        for k in range(dim):
            v = user[i, k]
            for h in range(hid):
                user_h[h] += v * w1[at_user + k, h]
        u_code = user_codes[i]
        u_mean = user_buckets[i, 0] + 10
        user_f = (_ftrl_weight(z, n, _code(2, u_code, mix, mod, size), alpha, beta, l1, l2)
                  + _ftrl_weight(z, n, _code(3, u_mean, mix, mod, size), alpha, beta, l1, l2)
                  + _ftrl_weight(z, n, _code(4, user_buckets[i, 1], mix, mod, size), alpha, beta, l1, l2))
        mf_user = mu0 + user[i, dim]
        for j in range(width):
            r = cand[i, j]
            s = slot[r]
            # MF: mu + b_u + b_i + p_u . q_i
            mf = mf_user + b[r]
            for k in range(dim):
                mf += user[i, k] * q[r, k]
            # FTRL: the item's and the user's fields, then the crosses and the pair similarities (tenths)
            i_mean = item_cols[r, 1]
            ftrl = ftrl_offset + item_f[s] + user_f
            ftrl += _ftrl_weight(z, n, _cross(7, u_mean, i_mean, mix, mod, size), alpha, beta, l1, l2)
            ftrl += _ftrl_weight(z, n, _cross(8, u_code, i_mean, mix, mod, size), alpha, beta, l1, l2)
            for k in range(2):
                ftrl += _ftrl_weight(z, n, _code(9 + k, _pair_bucket(pair[i, j, k], has_pair), mix, mod, size),
                                     alpha, beta, l1, l2)
            # The ranker: the user's and the item's hidden shares, the pair's, relu, out
            for h in range(hid):
                hs[h] = user_h[h] + item_h[s, h]
            if has_pair:
                for k in range(dp):
                    v = pair[i, j, k]
                    for h in range(hid):
                        hs[h] += v * w1[at_pair + k, h]
            ranker = ranker_offset + b2[0]
            for h in range(hid):
                if hs[h] > 0:
                    ranker += hs[h] * w2[h]
            fused = fw[0] + fw[1] * mf + fw[2] * ftrl + fw[3] * ranker
            out[i, j] = min(max(fused, lo), hi)


def candidates_pass(user: np.ndarray, user_dense: np.ndarray, cand: np.ndarray, pair: np.ndarray | None,
                    user_codes: np.ndarray, user_buckets: np.ndarray, item_cols: np.ndarray, item_feats: np.ndarray,
                    mf: tuple, ftrl: tuple, hashing: tuple, ranker: tuple, fusion_weights: np.ndarray,
                    lo: float, hi: float) -> np.ndarray:
    """(B, M) fused scores of each of B users' M candidate item rows ``cand``, clamped to [lo, hi], as
    :meth:`models.ensemble.ModelSet.predict` makes them with torch ops (about a dozen per model): what the
    top-k refresh and candidate requests score, in one loop. What depends on the user alone (its share
    of the ranker's hidden layer, its FTRL fields) is computed once per user, what depends on the item
    alone once per distinct candidate; per (user, item) remain the MF product, four hashed fields and
    the hidden layer's sum. (No NumPy matrix product: BLAS would start threads of its own beside the
    job's, and they spin.) ``user`` (B, dim + 1) the MF vectors with the bias last, ``user_dense``
    (B, F), ``pair`` (B, M, 2) the text similarities or None, ``user_codes`` (B,) and ``user_buckets``
    (B, 2) the users' id codes and [rating-mean, count] buckets, ``item_cols`` the items' [id code,
    rating-mean bucket + 10, count bucket] (:meth:`models.ensemble.ModelSet._item_columns`),
    ``item_feats`` the item features table. ``mf``: (q, b, mu); ``ftrl``: (z, n, alpha, beta, l1, l2,
    offset); ``hashing``: (mix, mod, size) of :func:`sparse_codes`; ``ranker``: (w1, b1, w2 as
    (hidden,), b2, embedding, offset)."""
    out = np.empty(cand.shape, np.float32)
    if cand.size:
        q, b, mu = mf
        z, n, alpha, beta, l1, l2, ftrl_offset = ftrl
        mix, mod, size = hashing
        w1, b1, w2, b2, emb, ranker_offset = ranker
        has_pair = pair is not None
        pair = (np.zeros((*cand.shape, 2), np.float32) if pair is None else np.ascontiguousarray(pair, np.float32))
        _candidates_pass(user, user_dense, np.ascontiguousarray(cand, np.int64), pair, has_pair,
                         np.ascontiguousarray(user_codes, np.int64), np.ascontiguousarray(user_buckets, np.int64),
                         item_cols, item_feats, q, b, np.float32(mu), z, n, np.float32(alpha), np.float32(beta),
                         np.float32(l1), np.float32(l2), np.float32(ftrl_offset), mix, mod, size, w1, b1, w2, b2,
                         emb, np.float32(ranker_offset), fusion_weights, np.float32(lo), np.float32(hi), out)
    return out


@jit(reassociate=True)
def _text_pairs(table, rows, query, interest, out):
    for b in range(rows.shape[0]):
        for m in range(rows.shape[1]):
            r = rows[b, m]
            s_query = np.float32(0.0)
            s_interest = np.float32(0.0)
            for d in range(table.shape[1]):
                v = table[r, d]
                s_query += query[b, d] * v
                s_interest += interest[b, d] * v
            out[b, m, 0] = s_query
            out[b, m, 1] = s_interest


def text_pairs(table: np.ndarray, rows: np.ndarray, query: np.ndarray, interest: np.ndarray) -> np.ndarray:
    """(B, M, 2) ``[query . vector, interest . vector]`` of the (B, M) ``rows`` of ``table`` (float32,
    (n, dim)) against (B, dim) query and interest vectors: one pass over each candidate's row, where
    gathering them into a (B, M, dim) array first (then two ``einsum``) moved 150 KB a candidate list and
    took 25 times as long on a CPU (a batch of 1,500 top-k refreshes of 100: 148 ms against 6)."""
    out = np.empty((*rows.shape, 2), np.float32)
    _text_pairs(table, rows, query, interest, out)
    return out


@jit
def _name_seeds(data, ends, seed, out):
    start = 0
    for u in range(out.shape[0]):
        h = np.uint64(1469598103934665603)  # (see name_seeds)
        for k in range(start, ends[u]):
            h = (h ^ np.uint64(data[k])) * np.uint64(1099511628211)
        start = ends[u]
        out[u] = np.int64((h ^ np.uint64(seed)) & np.uint64(0x7FFFFFFFFFFFFFFF))


def name_seeds(names: list[str], seed: int) -> np.ndarray:
    """A seed per name (an item id, ``"user:" + a user id``) that every subtask computes alike, for a list of
    names in one compiled call: the FNV-1a steps (64 bits) over its UTF-8 bytes, xor ``seed``, in 63 bits.
    The starting value is 1469598103934665603, FNV's offset basis without its last digit, as every release
    has used (a standard basis would give every item other initial vectors). Item tables seed their new
    rows' torch generators with it (models.params), new users their factors (:func:`seeded_normals`).

    >>> a = name_seeds(["x", "y"], 3)
    >>> a.dtype, int(a[1]) == int(name_seeds(["y"], 3)[0]), int(a[0]) != int(name_seeds(["x"], 4)[0])
    (dtype('int64'), True, True)
    """
    encoded = [n.encode() for n in names]
    ends = np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)))
    out = np.empty(len(names), np.int64)
    _name_seeds(np.frombuffer(b"".join(encoded), np.uint8), ends, seed, out)
    return out


@jit
def _splitmix_uniform(state):
    """The next splitmix64 state and a uniform draw in (0, 1) from it."""
    state = state + np.uint64(0x9E3779B97F4A7C15)
    z = (state ^ (state >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return state, (float(z >> np.uint64(11)) + 0.5) * (1.0 / 9007199254740992.0)


@jit
def _seeded_normals(seeds, out):
    n, dim = out.shape
    for u in range(n):
        state = np.uint64(seeds[u])
        for k in range(0, dim, 2):  # two uniforms -> two normals (Box-Muller)
            state, a = _splitmix_uniform(state)
            state, b = _splitmix_uniform(state)
            r = math.sqrt(-2.0 * math.log(a))
            out[u, k] = r * math.cos(2.0 * math.pi * b)
            if k + 1 < dim:
                out[u, k + 1] = r * math.sin(2.0 * math.pi * b)


def seeded_normals(names: list[str], seed: int, dim: int) -> np.ndarray:
    """N(0, 1) vectors of ``dim`` values, one per name, each a function of its name and ``seed`` only
    (the same on every subtask, whatever else is in the list): the name's seed (:func:`name_seeds`)
    starts a splitmix64 sequence, whose draws become normals by Box-Muller. One compiled call for a
    batch's new users; a torch generator per user cost about 8 µs each.

    >>> a = seeded_normals(["u1", "u2"], 7, 4)
    >>> bool((a[1] == seeded_normals(["u2"], 7, 4)[0]).all()), a.shape, a.dtype
    (True, (2, 4), dtype('float32'))
    """
    out = np.empty((len(names), dim), np.float32)
    _seeded_normals(name_seeds(names, seed), out)
    return out


@jit
def _affinity_of(t, c_row, width, prior):
    """The correction of one item (attribute codes ``c_row``, ending at the first negative) for one user's
    table ``t``, and how many codes it has."""
    a = 0.0
    m = 0
    for j in range(c_row.shape[0]):
        c = c_row[j]
        if c < 0:
            break
        a += t[c] / (t[width + c] + prior)
        m += 1
    return (a / math.sqrt(m) if m else 0.0), m


@jit
def _affinity_pass(tables, user_of, rows, codes, base, y, learn, prior, out):
    width = tables.shape[1] // 2
    for i in range(len(user_of)):
        t = tables[user_of[i]]
        c_row = codes[rows[i]]
        a, m = _affinity_of(t, c_row, width, prior)
        out[i] = a
        if learn[i]:
            r = y[i] - (base[i] + a)
            for j in range(m):
                c = c_row[j]
                t[c] += r
                t[width + c] += 1.0


def affinity_pass(tables: np.ndarray, user_of: np.ndarray, rows: np.ndarray, codes: np.ndarray, base: np.ndarray,
                  y: np.ndarray, learn: np.ndarray, prior: float) -> np.ndarray:
    """models.affinity's per-user attribute residuals over a batch in order, each example corrected before
    it learns: the correction of example i is the mean over its item's attribute codes ``codes[rows[i]]``
    (ending at the first negative) of the user's shrunk residual means ``sum / (count + prior)``, times
    the square root of their number; then, where ``learn``, the residual ``y - (base + correction)`` is
    added to each of those codes' sums and 1 to their counts. ``tables`` (users, 2 * buckets) float32,
    sums then counts, is updated in place. Returns the (n,) corrections.

    >>> t = np.zeros((1, 4), np.float32)
    >>> affinity_pass(t, np.zeros(2, np.int64), np.zeros(2, np.int64), np.array([[1, -1]], np.int32),
    ...               np.array([3.0, 3.0], np.float32), np.array([5.0, 5.0], np.float32), np.ones(2, np.bool_),
    ...               1.0).tolist(), t.tolist()
    ([0.0, 1.0], [[0.0, 3.0, 0.0, 2.0]])
    """
    out = np.zeros(len(user_of), np.float32)
    _affinity_pass(tables, user_of, rows, codes, base, y, learn, np.float32(prior), out)
    return out


@jit
def _affinity_scores(tables, cand, codes, prior, out):
    width = tables.shape[1] // 2
    for b in range(cand.shape[0]):
        t = tables[b]
        for k in range(cand.shape[1]):
            out[b, k] = _affinity_of(t, codes[cand[b, k]], width, prior)[0]


def affinity_scores(tables: np.ndarray, cand: np.ndarray, codes: np.ndarray, prior: float) -> np.ndarray:
    """The corrections :func:`affinity_pass` would give (B, M) candidate rows ``cand`` (attribute codes
    ``codes[cand]``) for B users' ``tables`` (B, 2 * buckets), without learning."""
    out = np.zeros(cand.shape, np.float32)
    _affinity_scores(tables, cand, codes, np.float32(prior), out)
    return out


@jit
def _like_code(field, a, b, mix, mod, size):
    """Hashed feature id of the pair (``a``, ``b``) in like-head field ``field``."""
    return ((((field * mix + a) % mod) * mix + b) % mod) % size


@jit
def _like_codes(k, u, stats, user_codes, item_codes, rows, attr, uattr, ts, rating, mix, mod, size, out):
    """The like head's hashed features of example ``k`` (user row ``u``) into ``out``; returns how many."""
    m = 0
    out[m] = _like_code(1, 0, 0, mix, mod, size)  # the bias
    out[m + 1] = _like_code(2, user_codes[k], 0, mix, mod, size)
    item = item_codes[rows[k]]
    out[m + 2] = _like_code(3, item, 0, mix, mod, size)
    m = 3
    a_row = attr[rows[k]]
    for j in range(a_row.shape[0]):  # the user x each of the item's attributes
        if a_row[j] < 0:
            break
        out[m] = _like_code(4, user_codes[k], a_row[j], mix, mod, size)
        m += 1
    for j in range(uattr.shape[1]):  # the item x each of the user's attributes
        if uattr[u, j] < 0:
            break
        out[m] = _like_code(5, item, uattr[u, j], mix, mod, size)
        m += 1
    if not rating[k]:  # (binary feedback is learned at its outcome, not when shown: no time of day in it)
        return m
    st = stats[u]
    fresh = st[3] == 0  # the user's first rating: no recent error, no session (st[3] is 1 from the first on)
    recent = 99 if fresh else int(min(max(round(st[2] * 4.0), -8.0), 8.0))
    gap = ts[k] - st[4]
    session = 0.0 if fresh or gap > 3600.0 else st[3]
    out[m] = _like_code(6, recent + 16, 0, mix, mod, size)
    out[m + 1] = _like_code(7, int(math.log2(session + 1.0)), 0, mix, mod, size)
    out[m + 2] = _like_code(8, 99 if fresh else int(math.log10(max(gap, 0.0) + 1.0)), 0, mix, mod, size)
    return m + 3


@jit
def _like_pass(stats, user_of, user_codes, item_codes, rows, attr, uattr, fused, y, positive, ts, rating, learn, z,
               n, mse, threshold, prior, alpha, beta, l1, l2, recent, mix, mod, size, codes, out):
    w = np.empty(codes.shape[1], np.float64)
    for k in range(len(user_of)):
        u = user_of[k]
        st = stats[u]
        # (a rating's user error: shrunk towards everyone's; binary feedback's error says how often the user
        # clicks, not how well they are known: everyone's error of ratings, or 1)
        var = (st[0] + prior * mse[0]) / (st[1] + prior) if rating[k] else mse[0]
        logit = (fused[k] - threshold) / math.sqrt(max(var, 1e-6))
        c_row = codes[k]
        m = _like_codes(k, u, stats, user_codes, item_codes, rows, attr, uattr, ts, rating, mix, mod, size, c_row)
        for j in range(m):
            w[j] = _ftrl_weight(z, n, c_row[j], alpha, beta, l1, l2)
            logit += w[j]
        p = 1.0 / (1.0 + math.exp(-min(max(logit, -30.0), 30.0)))
        out[k] = p
        if learn[k]:
            g = p - (1.0 if positive[k] else 0.0)
            for j in range(m):
                c = c_row[j]
                nc = n[c]
                sigma = (math.sqrt(nc + g * g) - math.sqrt(nc)) / alpha
                z[c] += g - sigma * w[j]
                n[c] = nc + g * g
            if rating[k]:
                r = y[k] - fused[k]
                gap = ts[k] - st[4]
                fresh = st[3] == 0  # (no rating yet)
                st[3] = 1.0 if fresh or gap > 3600.0 else st[3] + 1.0
                st[2] = r if fresh else recent * st[2] + (1.0 - recent) * r
                st[4] = ts[k]
                st[0] += r * r
                st[1] += 1.0
                mse[1] += 1.0
                mse[0] += (r * r - mse[0]) / mse[1]


def like_pass(stats: np.ndarray, user_of: np.ndarray, user_codes: np.ndarray, item_codes: np.ndarray,
              rows: np.ndarray, attr: np.ndarray, uattr: np.ndarray, fused: np.ndarray, y: np.ndarray,
              positive: np.ndarray, ts: np.ndarray, rating: np.ndarray, learn: np.ndarray, z: np.ndarray,
              n: np.ndarray, mse: np.ndarray,
              threshold: float, prior: float, ftrl: tuple, recent: float, hashing: tuple,
              codes: np.ndarray | None = None) -> np.ndarray:
    """models.like's probability that each example is positive, over a batch in order, each predicted
    before it learns.

    The logit is ``(fused - threshold) / sigma_u`` (``sigma_u``: the user's root mean squared error of the
    fused rating, shrunk towards the global ``mse[0]`` by ``prior`` ratings; for binary feedback the global
    one, whose errors say how often a user clicks rather than how well the models know them) plus the FTRL-Proximal
    weights (``ftrl``: alpha, beta, l1, l2; tables ``z``, ``n``) of the example's hashed features: a bias,
    the user, the item, the user x each item attribute (``attr[rows]``, ending at the first negative), the
    item x each user attribute (``uattr[user_of]``, likewise: a row per user), and for a ``rating`` the
    user's recent error, session position and time since their last rating, bucketed (binary feedback is
    learned at its outcome, seconds or minutes after it was shown and scored: those would differ between
    the two). Where ``learn``:
    FTRL's logistic step on ``positive``, then, for a rating, the user's ``stats`` row (``user_of``;
    float64 [sum of squared errors, count, recent error (an exponential mean, ``recent`` the weight of
    the past), position in the session, last ``ts`` in seconds]) and ``mse`` ([mean squared error,
    count]) take its error ``y - fused``. A session ends after an hour without ratings. ``hashing``: (mix, mod, size). ``codes``: (n, 3 + attributes +
    user attributes + 3) int64, -1 filled, receives each example's features (the rows it learned). Returns
    the (n,) probabilities.
    """
    out = np.zeros(len(user_of), np.float64)
    if codes is None:
        codes = np.full((len(user_of), 6 + attr.shape[1] + uattr.shape[1]), -1, np.int64)
    if len(user_of):
        alpha, beta, l1, l2 = ftrl
        mix, mod, size = hashing
        _like_pass(stats, user_of, user_codes, item_codes, rows, attr, uattr, fused, y, positive, ts, rating, learn,
                   z, n, mse, float(threshold), float(prior), float(alpha), float(beta), float(l1), float(l2),
                   float(recent), mix, mod, size, codes, out)
    return out


def warm_up() -> None:
    """Compile the passes now, so the first batch does not pay for it: about 20 s the first time on a
    machine (``make setup`` does it once), under a second from numba's cache after that. Every array
    argument must come in the layout (contiguous) and type used here, or the first batch compiles again."""
    users = np.zeros((1, 3), np.float32)
    one = np.zeros(1, np.int64)
    mf_pass(users, one, one, np.zeros(1, np.float32), np.ones(1, np.bool_), np.zeros((1, 2), np.float32),
            np.zeros(1, np.float32), np.zeros(2, np.float32), 0.1, 0.1, 0.0, 0.0, 1.0)
    interest_pass(np.zeros((1, 2), np.float32), np.zeros(1, np.float32), np.zeros(1, np.int64),
                  np.zeros(1, np.bool_), one, np.ones((1, 2), np.float32), np.zeros(1, np.int64),
                  np.ones(1, np.float32), 1000.0)
    ftrl_pass(np.zeros(4, np.float32), np.zeros(4, np.float32), np.zeros((1, 2), np.int64), np.zeros(1, np.float32),
              np.ones(1, np.bool_), 0.1, 1.0, 0.1, 1.0, 3.0, 4.0)
    f = lambda *shape: np.zeros(shape, np.float32)  # noqa: E731
    sparse_codes(np.zeros((1, 3), np.int64), one, one, np.zeros((1, 2), np.int64), f(1, 2), 1_000_003, 1 << 31, 64)
    ranker_fusion_pass(f(1, 2), f(1, 2), one, f(1), np.ones(1, np.bool_), 1,
                       (f(6, 3), f(3), f(3), f(1), f(6, 3), f(3), f(3), f(1)), f(1, 2), f(1, 2), 0.1, 1e-8, 3.0, 4.0,
                       f(1), f(1), f(1, 3), (f(4, 4), f(4), f(4), f(4)), 1.0, 0.9999, 1.0,
                       (f(6, 3), f(3), f(3), f(1), one, f(1, 2), f(4, 4), f(4), np.zeros(2, np.int64)))
    text_pairs(f(2, 4), np.zeros((1, 1), np.int64), f(1, 4), f(1, 4))
    seeded_normals(["u"], 7, 2)
    codes = np.full((1, 2), -1, np.int32)
    affinity_pass(f(1, 4), one, one, codes, f(1), f(1), np.ones(1, np.bool_), 10.0)
    affinity_scores(f(1, 4), np.zeros((1, 1), np.int64), codes, 10.0)
    i64 = np.zeros(1, np.int64)
    like_pass(np.zeros((1, 5)), one, i64, i64, one, codes, np.full((1, 4), -1, np.int64), np.zeros(1), np.zeros(1),
              np.ones(1, np.bool_), np.zeros(1), np.ones(1, np.bool_), np.ones(1, np.bool_), f(4), f(4),
              np.array([1.0, 0.0], np.float32),
              3.8, 5.0, (0.08, 1.0, 0.0, 1.0), 0.7, (1_000_003, 1 << 31, 4))
    for pair in (f(1, 1, 2), None):  # (one compilation: the pass gets zeros and a flag for None)
        candidates_pass(f(1, 3), f(1, 2), np.zeros((1, 1), np.int64), pair, one, np.zeros((1, 2), np.int64),
                        np.zeros((1, 3), np.int64), f(1, 2), (f(1, 2), f(1), 3.0), (f(4), f(4), 0.1, 1.0, 0.1, 1.0, 3.0),
                        (1_000_003, 1 << 31, 4), (f(10, 3), f(3), f(3), f(1), f(1, 2), 3.0), f(4), 1.0, 5.0)
