"""The compiled exact-order passes against plain-Python references, and against the batched GPU form."""

import numpy as np
import pytest
import torch

from models import sequential
from models.online import Inputs, OnlineLearner
from models.text import decay_interest
from rtrec.config import ModelConfig
from rtrec.events import Event
from rtrec.features.model_inputs import id_code

HYPER = dict(lr_bias=0.05, lr_latent=0.1, l2_bias=0.01, l2_latent=0.02, clip=4.0)


def _compiled(users, user_of, items, y, learn, q, b, mu, **hyper):
    arrays = [np.array(users, np.float32), np.array(q, np.float32), np.array(b, np.float32), np.array(mu, np.float32)]
    pred, before, after = sequential.mf_pass(arrays[0], np.array(user_of, np.int64), np.array(items, np.int64),
                                             np.array(y, np.float32), np.array(learn, np.bool_), arrays[1], arrays[2],
                                             arrays[3], **hyper)
    return pred, before, after, arrays


def test_mf_pass_hand_worked_two_examples_of_one_user_and_item():
    # p = (0.5, 0), b_u = 0.2, q = (1, 0), b_i = 0, mu = 3 (seen 0); lr_bias 0.1, lr_latent 0.5
    hyper = dict(lr_bias=0.1, lr_latent=0.5, l2_bias=0.0, l2_latent=0.0, clip=4.0)
    pred, before, after, (users, q, b, mu) = _compiled(
        [[0.5, 0.0, 0.2]], [0, 0], [0, 0], [4.7, 4.0], [True, False], [[1.0, 0.0]], [0.0], [3.0, 0.0], **hyper)
    # 1st: 3 + 0.2 + 0 + 0.5 = 3.7, error 1.0: b_u 0.3, b_i 0.1, p = (1.0, 0), q = (1.25, 0), mu = 4.7 (1)
    # 2nd (predicted, not learned): 4.7 + 0.3 + 0.1 + 1.0 * 1.25 = 6.35
    assert pred.tolist() == pytest.approx([3.7, 6.35])
    assert before[0].tolist() == pytest.approx([0.5, 0.0, 0.2]) and after[0].tolist() == pytest.approx([1.0, 0.0, 0.3])
    assert after[1].tolist() == pytest.approx(after[0].tolist())  # the held-out one changed nothing
    assert users[0].tolist() == pytest.approx([1.0, 0.0, 0.3])
    assert q[0].tolist() == pytest.approx([1.25, 0.0]) and b[0] == pytest.approx(0.1)
    assert mu.tolist() == pytest.approx([4.7, 1.0])


def test_mf_pass_clips_the_error_and_resets_a_diverged_user():
    hyper = dict(lr_bias=1.0, lr_latent=0.0, l2_bias=0.0, l2_latent=0.0, clip=0.5)
    pred, _, after, (_, _, b, _) = _compiled([[0.0, 0.0]], [0], [0], [100.0], [True], [[0.0]], [0.0], [3.0, 0.0],
                                             **hyper)
    assert after[0].tolist() == [0.0, 0.5] and b[0] == 0.5  # error 97 clipped to 0.5
    _, _, after, _ = _compiled([[np.inf, 0.0]], [0], [0], [4.0], [True], [[1.0]], [0.0], [3.0, 0.0], **HYPER)
    assert np.isfinite(after[0]).all()


def test_mf_pass_equals_the_python_reference_on_a_random_stream():
    rng = np.random.default_rng(5)
    n_users, n_items, dim, n = 7, 5, 4, 400
    users = rng.normal(0, 0.1, (n_users, dim + 1)).astype(np.float32)
    q = rng.normal(0, 0.1, (n_items, dim)).astype(np.float32)
    b = np.zeros(n_items, np.float32)
    mu = np.array([3.0, 0.0], np.float32)
    user_of = rng.integers(0, n_users, n)
    items = rng.integers(0, n_items, n)
    y = rng.integers(1, 6, n).astype(np.float32)
    learn = rng.random(n) > 0.1
    pred, before, after, (u_c, q_c, b_c, mu_c) = _compiled(users, user_of, items, y, learn, q, b, mu, **HYPER)
    ref_users, ref_q, ref_b, ref_mu = users.tolist(), q.tolist(), b.tolist(), mu.tolist()
    r_pred, r_before, r_after = sequential.mf_reference(ref_users, user_of.tolist(), items.tolist(), y.tolist(),
                                                        learn.tolist(), ref_q, ref_b, ref_mu, **HYPER)
    # example by example: the prediction before learning, and the user's vector before and after
    np.testing.assert_allclose(pred, r_pred, atol=1e-4)
    np.testing.assert_allclose(before, r_before, atol=1e-4)
    np.testing.assert_allclose(after, r_after, atol=1e-4)
    # the state after the stream
    np.testing.assert_allclose(u_c, ref_users, atol=1e-4)
    np.testing.assert_allclose(q_c, ref_q, atol=1e-4)
    np.testing.assert_allclose(b_c, ref_b, atol=1e-4)
    np.testing.assert_allclose(mu_c, ref_mu, atol=1e-4)


WARM = dict(warm_bias=5.0, warm_latent=2.0, warm_latent_c=10.0, lr_item_bias=0.01, lr_item_latent=0.05)


def test_mf_pass_warm_up_steps_hand_worked():
    # p = q = 0, biases 0, mu 3 (seen 0); lr_bias 0.05 -> warm-up 1 / (n + 4): 1/4 for the first example,
    # then 1/5 for the user (n = 1) and 1/5 for the item; the user's count starts at 0, the item's at 0
    hyper = dict(lr_bias=0.05, lr_latent=0.0, l2_bias=0.0, l2_latent=0.0, clip=4.0)
    n_user, n_item = np.zeros(1, np.float32), np.zeros(1, np.float32)
    pred, _, after, (_, _, b, _) = _compiled([[0.0, 0.0]], [0, 0], [0, 0], [5.0, 5.0], [True, True], [[0.0]], [0.0],
                                             [3.0, 0.0], n_user=n_user, n_item=n_item, warm_bias=4.0, **hyper)
    # 1st: pred 3, error 2: b_u = b_i = 2/4 = 0.5, mu = 5 (1); 2nd: pred 5 + 1 = 6, error -1: b_u = 0.5 - 1/5
    assert pred.tolist() == pytest.approx([3.0, 6.0])
    assert after[1].tolist() == pytest.approx([0.0, 0.3]) and b[0] == pytest.approx(0.3)
    assert n_user.tolist() == [2.0] and n_item.tolist() == [2.0]
    # once n + 4 >= 1 / lr_bias (n = 16) the configured rate is back
    assert sequential.warm_step(0.05, 1.0, 4.0, 16.0) == 0.05 and sequential.warm_step(0.05, 1.0, 4.0, 15.0) > 0.05
    assert sequential.warm_step(0.05, 0.0, 4.0, 0.0) == 0.05  # off


def test_mf_pass_with_warm_up_steps_equals_the_python_reference():
    rng = np.random.default_rng(6)
    n_users, n_items, dim, n = 6, 9, 3, 500
    users = rng.normal(0, 0.1, (n_users, dim + 1)).astype(np.float32)
    q = rng.normal(0, 0.1, (n_items, dim)).astype(np.float32)
    b, mu = np.zeros(n_items, np.float32), np.array([3.0, 0.0], np.float32)
    n_user = rng.integers(0, 4, n_users).astype(np.float32)
    n_item = rng.integers(0, 4, n_items).astype(np.float32)
    user_of, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    y, learn = rng.integers(1, 6, n).astype(np.float32), rng.random(n) > 0.1
    ref = dict(users=users.tolist(), q=q.tolist(), b=b.tolist(), mu=mu.tolist(), n_user=n_user.tolist(),
               n_item=n_item.tolist())
    pred, before, after, (u_c, q_c, b_c, mu_c) = _compiled(users, user_of, items, y, learn, q, b, mu, n_user=n_user,
                                                           n_item=n_item, **HYPER, **WARM)
    r_pred, r_before, r_after = sequential.mf_reference(
        ref["users"], user_of.tolist(), items.tolist(), y.tolist(), learn.tolist(), ref["q"], ref["b"], ref["mu"],
        **HYPER, n_user=ref["n_user"], n_item=ref["n_item"], **WARM)
    np.testing.assert_allclose(pred, r_pred, atol=1e-4)
    np.testing.assert_allclose(before, r_before, atol=1e-4)
    np.testing.assert_allclose(after, r_after, atol=1e-4)
    for got, want in ((u_c, "users"), (q_c, "q"), (b_c, "b"), (mu_c, "mu"), (n_user, "n_user"), (n_item, "n_item")):
        np.testing.assert_allclose(got, ref[want], atol=1e-4)


def test_mf_torch_step_with_warm_up_equals_the_compiled_pass_one_example_at_a_time():
    from models.base import Batch
    from models.mf import BiasedMF
    from models.params import ParameterSet

    rng = np.random.default_rng(3)
    mf = BiasedMF(ParameterSet(), dim=3, lr_bias=0.05, lr_latent=0.1, l2_bias=0.01, l2_latent=0.02, **WARM)
    rows = mf.params.item_rows([str(i) for i in range(4)])
    q, b = mf.q.data.numpy().copy(), mf.b.data.numpy().copy()
    mu, n_item = mf.mu.data.numpy()[0].copy(), mf.n.data.numpy().copy()
    user = rng.normal(0, 0.1, (1, 4)).astype(np.float32)
    n_user = np.zeros(1, np.float32)
    torch_user, torch_n = torch.from_numpy(user.copy()), torch.zeros(1)
    items, y = rng.integers(0, 4, 30), rng.integers(1, 6, 30).astype(np.float32)
    for it, label in zip(items, y, strict=True):
        batch = Batch(items=rows[[int(it)]], user_params={"mf": torch_user, "mf_n": torch_n})
        mf.learn_many(batch, torch.tensor([label]))
        sequential.mf_pass(user, np.zeros(1, np.int64), np.array([it]), np.array([label], np.float32),
                           np.ones(1, np.bool_), q, b, mu, 0.05, 0.1, 0.01, 0.02, 100.0, n_user, n_item, **WARM)
    np.testing.assert_allclose(torch_user.numpy(), user, atol=1e-4)
    np.testing.assert_allclose(mf.q.data.numpy(), q, atol=1e-4)
    np.testing.assert_allclose(mf.b.data.numpy(), b, atol=1e-4)
    np.testing.assert_allclose(mf.n.data.numpy(), n_item)
    assert float(torch_n[0]) == float(n_user[0]) == 30.0


def test_user_state_written_before_the_warm_up_counts_is_read():
    learner = OnlineLearner(ModelConfig())
    old = learner.new_user("u1")
    del old["mf_n"]  # as stored before
    old["recent"] = ["a", "b", "c"]
    x = [Inputs(Event("e1", "u1", "i1", "rating", 1, 4.0), [0.0] * 7, (-1, 0), id_code("u1"))]
    learner.process(x, {"u1": old})
    # the recent items as of the batch (i1, a, b, c) stood in, plus this example (not held out)
    assert old["mf_n"] == 5.0 and learner.new_user("u2")["mf_n"] == 0.0


def test_interest_pass_equals_decay_interest_one_at_a_time():
    rng = np.random.default_rng(2)
    dim, n = 8, 60
    start = rng.normal(size=(3, dim)).astype(np.float32)
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    vecs, mass = start.copy(), np.array([2.0, 0.0, 0.5], np.float32)
    last_ts, known = np.array([0, 0, 100], np.int64), np.array([True, False, True])
    user_of = rng.integers(0, 3, n)
    items = rng.normal(size=(n, dim)).astype(np.float32)
    ts = np.sort(rng.integers(0, 10_000, n))
    weight = rng.uniform(0.1, 1.0, n).astype(np.float32)
    out = sequential.interest_pass(vecs, mass, last_ts, known, user_of, items, ts, weight, 2_000.0)
    ref = {0: (torch.from_numpy(start[0]), 2.0, 0), 1: (torch.zeros(dim), 0.0, None), 2: (torch.from_numpy(start[2]), 0.5, 100)}
    for k in range(n):
        u = int(user_of[k])
        v, m, t = ref[u]
        dt = 0 if t is None else int(ts[k]) - t
        v, m = decay_interest(v, torch.from_numpy(items[k]), dt, 2_000.0, mass=m, weight=float(weight[k]))
        ref[u] = (v, m, int(ts[k]) if t is None else max(t, int(ts[k])))
        np.testing.assert_allclose(out[k], v.numpy(), atol=1e-5)
    for u in range(3):
        np.testing.assert_allclose(vecs[u], ref[u][0].numpy(), atol=1e-5)
        assert mass[u] == pytest.approx(ref[u][1], rel=1e-5) and last_ts[u] == ref[u][2]


def _ratings(n, users=6, items=12, seed=0):
    g = np.random.default_rng(seed)
    return [Event(f"e{seed}-{i}", str(g.integers(users)), str(g.integers(items)), "rating", 1000 + i,
                  float(g.integers(1, 6))) for i in range(n)]


def test_the_batched_gpu_form_stays_close_to_the_compiled_pass_on_the_cpu():
    cfg = ModelConfig(heldout_fraction=0.1)
    compiled, waves = OnlineLearner(cfg), OnlineLearner(cfg)
    waves.compiled = False
    users_c, users_w, err_c, err_w = {}, {}, [], []
    for step in range(6):
        batch = _ratings(150, seed=step)
        for e in batch:
            users_c.setdefault(e.user_id, compiled.new_user(e.user_id))
            users_w.setdefault(e.user_id, waves.new_user(e.user_id))
        x = [Inputs(e, [0.0] * 7, (-1, 0), id_code(e.user_id)) for e in batch]
        pc, pw = compiled.process(x, users_c).examples, waves.process(x, users_w).examples
        err_c += [abs(s - y) for s, y in zip(pc.scores["mf"], pc.label, strict=True)]
        err_w += [abs(s - y) for s, y in zip(pw.scores["mf"], pw.label, strict=True)]
        # the first wave of every batch sees the same state in both: identical predictions there
        assert pc.scores["mf"][0] == pytest.approx(pw.scores["mf"][0], abs=0.05 * (step + 1))
    # waves average an item's steps within a wave, the pass takes them one by one: close, not equal
    assert abs(np.mean(err_c) - np.mean(err_w)) < 0.05
    for u in users_c:
        assert np.abs(users_c[u]["mf"] - users_w[u]["mf"]).max() < 0.5


def test_ftrl_pass_equals_one_example_at_a_time_steps_of_the_torch_model():
    from models.base import Batch
    from models.ftrl import FTRLProximal
    from models.params import ParameterSet

    rng = np.random.default_rng(9)
    n, k = 300, 5
    codes = np.stack([rng.choice(64, k, replace=False) for _ in range(n)]).astype(np.int64)  # no repeats in a row
    y = rng.integers(1, 6, n).astype(np.float32)
    learn = rng.random(n) > 0.2
    ref = FTRLProximal(ParameterSet(), bits=6, alpha=0.1, offset=3.0)
    z, nn = np.zeros(64, np.float32), np.zeros(64, np.float32)
    pred = sequential.ftrl_pass(z, nn, codes, y, learn, ref.alpha, ref.beta, ref.l1, ref.l2, ref.offset, 2.0)
    for i in range(n):
        batch = Batch(items=torch.zeros(1, dtype=torch.long), sparse=torch.from_numpy(codes[i : i + 1]))
        p = ref.predict_many(batch)
        assert float(pred[i]) == pytest.approx(float(p[0]), abs=1e-4), i
        if learn[i]:
            ref.learn_many(batch, torch.from_numpy(y[i : i + 1]), grad=(p - torch.from_numpy(y[i : i + 1])).clamp(-2, 2))
    np.testing.assert_allclose(z, ref.z.data.numpy(), atol=1e-4)
    np.testing.assert_allclose(nn, ref.n.data.numpy(), atol=1e-4)


def test_the_mf_error_clip_is_its_own_or_everyone_s():
    x = [Inputs(Event("e1", "u1", "i1", "rating", 1, 5.0), [0.0] * 7, (-1, 0), id_code("u1"))]
    bias = {}
    for clip in (0.5, -1.0):
        learner = OnlineLearner(ModelConfig(mf_grad_clip=clip, mf_warm_bias=0.0, heldout_fraction=0.0))
        users = {"u1": learner.new_user("u1")}
        pred = learner.process(x, users).examples.scores["mf"][0]
        bias[clip] = (users["u1"]["mf"][-1], pred)
    lr = ModelConfig().mf_lr_bias
    assert bias[0.5][0] == pytest.approx(lr * 0.5)  # error about 2, clipped to 0.5
    assert bias[-1.0][0] == pytest.approx(lr * (5.0 - bias[-1.0][1]), rel=1e-4)  # grad_clip 4: not clipped


@pytest.mark.parametrize("step", [8, 0])
def test_ranker_and_fusion_pass_equals_their_torch_chunks(step):
    """The compiled ranker+fusion pass against NeuralRanker/OnlineFusion.predict_and_learn, over two batches
    with repeated items and held-out rows, a third of them fused from scores given as shown (binary feedback):
    the same predictions, tables, touched rows and example counts."""
    from models.base import Batch
    from models.ensemble import ModelSet
    from rtrec.features.model_inputs import N_DENSE

    cfg = ModelConfig(step_examples=step)
    torch_set, compiled_set = ModelSet(cfg), ModelSet(cfg)
    rng = np.random.default_rng(11)
    for n in (37, 20):
        ids = [f"i{k}" for k in rng.integers(0, 12, n)]  # repeats within a chunk
        user = rng.normal(0, 0.3, (n, cfg.dim + 1)).astype(np.float32)
        dense = rng.normal(0, 1, (n, N_DENSE)).astype(np.float32)
        y = rng.integers(1, 6, n).astype(np.float32)
        learn = rng.random(n) > 0.25
        mf, ftrl = (rng.normal(3.5, 0.8, n).astype(np.float32) for _ in range(2))
        shown = np.full((n, 3), np.nan, np.float32)
        draw = np.random.default_rng(n)  # (its own draws: the stream's rows as before)
        at = draw.random(n) < 0.33
        shown[at] = draw.uniform(1, 5, (int(at.sum()), 3))
        batches = [Batch(m.rows(ids), {"mf": torch.from_numpy(user)}, torch.from_numpy(dense))
                   for m in (torch_set, compiled_set)]
        with torch.no_grad():
            mask = torch.from_numpy(learn)
            r_t = torch_set.ranker.predict_and_learn(batches[0], torch.from_numpy(y), mask)
            into = {k: torch.where(torch.from_numpy(at), torch.from_numpy(shown[:, j]), v) for j, (k, v) in
                    enumerate({"mf": torch.from_numpy(mf), "ftrl": torch.from_numpy(ftrl), "ranker": r_t}.items())}
            f_t = torch_set.fusion.predict_and_learn(into, torch.from_numpy(y), mask, step, torch.from_numpy(at))
        r_c, f_c = compiled_set.ranker_and_fusion_compiled(batches[1], user[:, :-1], y, learn, mf, ftrl, shown)
        np.testing.assert_allclose(r_c.numpy(), r_t.numpy(), atol=1e-4)
        np.testing.assert_allclose(f_c.numpy(), f_t.numpy(), atol=1e-4)
    assert not torch.allclose(torch_set.fusion._w, torch_set.fusion.prior)  # the fusion did learn
    for name in ("ranker.w1", "ranker.b1", "ranker.w2", "ranker.b2", "ranker.emb", "fusion.A", "fusion.b",
                 "ranker.w1.adagrad", "ranker.emb.adagrad"):
        t, c = torch_set.params[name], compiled_set.params[name]
        assert not torch.equal(t.data, t.base), name  # it moved
        np.testing.assert_allclose(c.data.numpy(), t.data.numpy(), rtol=1e-4, atol=1e-4, err_msg=name)
        assert c.dense_examples == t.dense_examples, name
        if t.kind == "item":
            assert torch.equal(c.counts, t.counts), name
            # the rows that learned (torch also lists the chunk's held-out rows, with no change)
            assert torch.equal(c.take_touched(), torch.nonzero(t.counts).flatten()), name
    np.testing.assert_allclose(compiled_set.fusion._w.numpy(), torch_set.fusion._w.numpy(), atol=1e-4)
    # the chunk left open at the end (57 rows: one of 8 still open with step 8), alike in both
    assert torch_set.ranker.open.tolist() == compiled_set.ranker.open.tolist() == compiled_set.fusion.open.tolist()
    assert torch_set.fusion.open.tolist() == torch_set.ranker.open.tolist()
    if step:
        assert torch_set.ranker.open[0] == 57 % step and torch_set.ranker.open[1] > 0
    for t, c in zip((*torch_set.ranker.pending, torch_set.fusion.pending_a),
                    (*compiled_set.ranker.pending, compiled_set.fusion.pending_a), strict=True):
        np.testing.assert_allclose(c.numpy(), t.numpy(), rtol=1e-4, atol=1e-4)


def _ranker_fusion_stream(cuts: list[int], compiled: bool, step: int = 8, seed: int = 5, restart: bool = False):
    """One stream of 90 rows through a ModelSet's ranker and fusion, cut into batches of ``cuts``
    (``restart``: the open chunk closed after each): the predictions and the tables after it."""
    from models.base import Batch
    from models.ensemble import ModelSet
    from rtrec.features.model_inputs import N_DENSE

    cfg = ModelConfig(step_examples=step)
    models = ModelSet(cfg)
    rng = np.random.default_rng(seed)
    n = 90
    ids = [f"i{k}" for k in rng.integers(0, 15, n)]
    user = rng.normal(0, 0.3, (n, cfg.dim)).astype(np.float32)
    dense = rng.normal(0, 1, (n, N_DENSE)).astype(np.float32)
    y = rng.integers(1, 6, n).astype(np.float32)
    learn = rng.random(n) > 0.25
    mf, ftrl = (rng.normal(3.5, 0.8, n).astype(np.float32) for _ in range(2))
    rows = models.rows(ids)
    preds = []
    bounds = np.cumsum([0, *cuts])
    assert bounds[-1] == n
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        batch = Batch(rows[a:b], {"mf": torch.from_numpy(np.pad(user[a:b], ((0, 0), (0, 1))))},
                      torch.from_numpy(dense[a:b]))
        with torch.no_grad():
            if compiled:
                r, f = models.ranker_and_fusion_compiled(batch, np.ascontiguousarray(user[a:b]), y[a:b],
                                                         learn[a:b], mf[a:b], ftrl[a:b])
            else:
                mask = torch.from_numpy(learn[a:b])
                r = models.ranker.predict_and_learn(batch, torch.from_numpy(y[a:b]), mask)
                f = models.fusion.predict_and_learn({"mf": torch.from_numpy(mf[a:b]),
                                                     "ftrl": torch.from_numpy(ftrl[a:b]), "ranker": r},
                                                    torch.from_numpy(y[a:b]), mask, step)
        preds.append(np.stack([r.numpy(), f.numpy()]))
        if restart:
            models.ranker.close_chunk()
            models.fusion.close_chunk()
    tables = {k: t.data.numpy().copy() for k, t in models.params.tables.items() if k.startswith(("ranker", "fusion"))}
    return np.concatenate(preds, axis=1), tables, models


@pytest.mark.parametrize("compiled", [True, False])
def test_the_ranker_and_the_fusion_learn_the_same_whatever_the_cut(compiled):
    """Chunks are counted along the stream, not from each batch's start: a stream cut into batches of 1,
    7, 40, 42 (chunks of 8 spanning batches) predicts and learns as the same stream in one batch, and a
    chunk a batch leaves open takes its step in the batch that completes it."""
    whole, tables, _ = _ranker_fusion_stream([90], compiled)
    cut, cut_tables, models = _ranker_fusion_stream([1, 7, 40, 42], compiled)
    np.testing.assert_allclose(cut, whole, rtol=1e-4, atol=1e-4)  # (torch: sums in another order)
    for k, v in tables.items():
        np.testing.assert_allclose(cut_tables[k], v, rtol=1e-4, atol=1e-4, err_msg=k)
    # 90 rows: 11 chunks of 8 stepped, 2 rows still open, with their gradient pending
    assert models.ranker.open[0] == 2 and models.fusion.open[0] == 2
    assert float(models.ranker.pending[1].abs().sum()) > 0 or models.ranker.open[1] == 0
    # A chunk closed at each batch's end instead (as before chunks were counted along the stream) would
    # differ: the comparison can fail.
    restarted, _, _ = _ranker_fusion_stream([1, 7, 40, 42], compiled, restart=True)
    assert not np.allclose(restarted, whole, atol=1e-3)


def test_nothing_compiles_after_warm_up():
    """The passes' first batch in the job runs what warm_up() compiled (a compile there costs seconds on
    the torch thread): the same argument types and layouts (contiguous), one example or many."""
    from rtrec.config import load_config
    from rtrec.core.local import LocalPipeline
    from rtrec.datasets import movielens_events

    passes = [getattr(sequential, f) for f in ("_mf_pass", "_ftrl_pass", "_ranker_fusion_pass", "_sparse_codes",
                                                "_candidates_pass", "_interest_pass")]
    pipe = LocalPipeline(load_config(overrides=["text.enabled=false"]))  # (calls warm_up)
    assert all(p.signatures for p in passes)  # warm_up compiled each
    compiled = [len(p.signatures) for p in passes]
    events = movielens_events(600)
    pipe.run(events[:1], 1)  # a batch of one example
    pipe.run(events[1:], 100)
    assert len(pipe.predictions) > 500
    assert [len(p.signatures) for p in passes] == compiled


def test_compiled_candidate_scores_equal_the_torch_ops():
    """ModelSet.score_candidates (one compiled loop on the CPU) against its torch form, with and without
    the text pair features, after every model and the fusion learned from a stream."""
    from rtrec.config import load_config
    from rtrec.core.local import LocalPipeline
    from rtrec.datasets import movielens_events
    from rtrec.features.model_inputs import USER_DENSE

    pipe = LocalPipeline(load_config(overrides=["text.enabled=false"]))
    pipe.run(movielens_events(3000), 500)
    m = pipe.learner.models
    assert not torch.allclose(m.fusion._w, m.fusion.prior) and m.ftrl.z.data.abs().sum() > 0  # all learned
    rng = np.random.default_rng(5)
    b, k = 6, 40
    users = torch.from_numpy(np.stack([u["model"]["mf"] for u in list(pipe.users.values())[:b]]))
    dense = torch.from_numpy(rng.normal(0, 0.5, (b, len(USER_DENSE))).astype(np.float32))
    codes = torch.from_numpy(rng.integers(0, 2**31 - 1, b))
    buckets = torch.from_numpy(np.stack([rng.integers(-1, 20, b), rng.integers(0, 8, b)], 1))
    cand = torch.from_numpy(rng.integers(0, m.params.n_items, (b, k)))
    pair = torch.from_numpy(rng.choice([0.0, -0.4, 0.05, 0.33, 0.9], (b, k, 2)).astype(np.float32))
    for p in (pair, None):
        got = m.score_candidates(users, dense, codes, buckets, cand, p)
        want = m.score_candidates_torch(users, dense, codes, buckets, cand, p)
        assert got.shape == (b, k) and want.std() > 0.05
        np.testing.assert_allclose(got.numpy(), want.numpy(), atol=2e-5)


def test_compiled_sparse_codes_equal_the_torch_ops_and_follow_item_feature_writes():
    """Hashed codes from the cached item columns and one compiled loop, against the torch ops, on item
    features at bucket boundaries (counts 2^k - 1, means at x.125) and similarities at tenths' halves; and
    after each way the item features are written (merger, version load, delta), the codes follow."""
    from models.ensemble import ModelSet
    from models.params import RowDelta
    from rtrec.features.model_inputs import ITEM_DENSE

    m = ModelSet(ModelConfig())
    ids = [f"i{k}" for k in range(40)]
    rows = m.rows(ids)
    rng = np.random.default_rng(3)
    feats = torch.zeros(40, len(ITEM_DENSE))
    counts = torch.tensor([float(c) for c in rng.integers(0, 40, 40)])
    counts[:8] = torch.tensor([0.0, 1, 3, 7, 15, 31, 2, 4])
    feats[:, 0] = (counts > 0).float()
    feats[:, 1] = torch.log1p(counts) / 5
    feats[:, 2] = torch.tensor(rng.choice([-2.0, -0.875, 0.125, 0.625, 1.125, 0.3], 40), dtype=torch.float32)
    m.item_features.write_rows(rows, feats)
    b = 300
    at = torch.from_numpy(rng.integers(0, 40, b))
    codes = torch.from_numpy(rng.integers(0, 2**31 - 1, b))
    buckets = torch.from_numpy(np.stack([rng.integers(-1, 20, b), rng.integers(0, 8, b)], 1))
    pair = torch.from_numpy(rng.choice([0.0, -1.0, 1.0, 0.05, -0.05, 0.15, 0.25, 0.33, -0.65, 2.0], (b, 2))
                            .astype(np.float32))
    for p in (pair, None):
        assert torch.equal(m.sparse_codes(rows[at], codes, buckets, p), m.sparse_codes_torch(rows[at], codes, buckets, p))

    def same_as_torch() -> bool:
        return torch.equal(m.sparse_codes(rows, codes[:40], buckets[:40], pair[:40]),
                           m.sparse_codes_torch(rows, codes[:40], buckets[:40], pair[:40]))

    before = m.sparse_codes(rows, codes[:40], buckets[:40], pair[:40])
    m.item_features.write_rows(rows[:20], feats[20:])  # the merger's way
    assert same_as_torch() and not torch.equal(m.sparse_codes(rows, codes[:40], buckets[:40], pair[:40]), before)
    state = m.params.state_dict()
    state["tables"] = {k: v.clone() for k, v in state["tables"].items()}  # (views of the tables on the CPU)
    state["tables"]["items.features"] = feats.flip(0)
    m.params.load_state_dict(state)  # a version
    assert same_as_torch()
    m.params.add_delta({"items.features": RowDelta("item", ids[:10], torch.full((10, len(ITEM_DENSE)), 0.5),
                                                   torch.ones(10))})
    assert same_as_torch()
    m.rows(["new-item"])  # rows added since
    assert torch.equal(m.sparse_codes(m.rows(["new-item"]), codes[:1], buckets[:1], None),
                       m.sparse_codes_torch(m.rows(["new-item"]), codes[:1], buckets[:1], None))


def test_text_pairs_equal_the_dot_products_of_the_gathered_vectors():
    """The compiled top-k pair features (one pass over each candidate's row) against TextContext.pair of
    the vectors gathered, as on a GPU; row 0 (no text) gives zeros."""
    from models.search import TextContext

    g = torch.Generator().manual_seed(3)
    table = torch.nn.functional.normalize(torch.randn(50, 24, generator=g), dim=-1)
    table[0] = 0.0
    rows = torch.randint(1, 50, (7, 11), generator=g)
    rows[0, :3] = 0
    query, interest = torch.randn(7, 24, generator=g), torch.randn(7, 24, generator=g)
    got = sequential.text_pairs(table.numpy(), rows.numpy(), query.numpy(), interest.numpy())
    expected = TextContext.pair(query, interest, table[rows]).numpy()
    assert got.shape == (7, 11, 2) and np.allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert (got[0, :3] == 0).all() and (got[0, 3:] != 0).all() and (got[1:] != 0).all()


def test_seeded_normals_depend_on_the_name_and_seed_only_and_are_standard_normal():
    names = [f"user:{i}" for i in range(20_000)]
    a = sequential.seeded_normals(names, 7, 10)
    assert a.shape == (20_000, 10) and a.dtype == np.float32
    # the same vector for a name whatever else is in the call (every subtask makes its users alike)
    assert (sequential.seeded_normals(["user:17", "x"], 7, 10)[0] == a[17]).all()
    assert (sequential.seeded_normals(["user:17"], 8, 10)[0] != a[17]).any()
    assert len({row.tobytes() for row in a}) == len(names)
    assert abs(float(a.mean())) < 0.01 and abs(float(a.std()) - 1) < 0.01
    assert abs(float((a[:, 0] * a[:, 1]).mean())) < 0.03  # (the two values of a Box-Muller pair)
    assert abs(float((np.abs(a) > 1.96).mean()) - 0.05) < 0.005  # the normal's tails, not a uniform's
    odd = sequential.seeded_normals(["é", ""], 7, 3)  # non-ASCII and empty names, an odd width
    assert odd.shape == (2, 3) and np.isfinite(odd).all() and (odd[0] != odd[1]).any()


def test_new_users_made_together_equal_each_made_alone():
    learner = OnlineLearner(ModelConfig())
    together = learner.new_users(["a", "b", "c"])
    for u, state in zip("abc", together, strict=True):
        alone = learner.new_user(u)["mf"]
        assert (state["mf"] == alone).all() and state["mf"][-1] == 0.0
    std = learner.models.mf.init_std
    rows = learner.models.mf.new_users([str(i) for i in range(5000)])[:, :-1]
    assert abs(float(rows.std()) - std) < 0.03 * std


def test_binary_feedback_through_the_batched_gpu_form():
    """The torch form (a GPU's) of a stream with impressions and clicks: impressions learned as 0s at once,
    scored when shown, and the fusion fed those scores (OnlineFusion.predict_and_learn with ``plain`` rows),
    giving the compiled pass's records, with scores close to its."""
    from benchmarks.common import shop_events
    from rtrec.config import load_config
    from rtrec.core.local import LocalPipeline

    events, _ = shop_events(users=200, n=3_000, clicks="item")
    runs = []
    for compiled in (True, False):
        pipe = LocalPipeline(load_config(overrides=["text.enabled=false"]))
        pipe.learner.compiled = compiled
        runs.append(pipe.run(events, 500).predictions)
    a, b = runs
    assert a.event_id == b.event_id and a.label == b.label and len(a) > 1_500
    assert all(0.0 <= v <= 1.0 for v in b.fused)
    assert np.abs(np.array(a.fused) - np.array(b.fused)).mean() < 0.05
