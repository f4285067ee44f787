import pytest
import torch

from models.base import Batch, ItemIndex, Model, item_seed
from models.mf import BiasedMF


def make(**kw):
    return BiasedMF(dim=4, seed=3, **kw)


def test_answers_the_model_interface():
    assert isinstance(make(), Model)


def test_items_get_the_same_initial_vector_on_every_subtask():
    a, b = make(), make()
    a.rows(["x", "y"])
    b.rows(["y", "x"])
    assert torch.equal(a.q[a.index.get("x")], b.q[b.index.get("x")])
    assert not torch.equal(a.q[a.index.get("x")], a.q[a.index.get("y")])
    assert item_seed("x", 3) != item_seed("x", 4)


def test_hand_worked_sgd_step():
    m = make(lr_bias=0.1, lr_latent=0.5)
    items = m.rows(["i"])
    m.q[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    m.mu_sum, m.mu_n = 3.0, 1  # mu = 3
    u = torch.tensor([[0.5, 0.0, 0.0, 0.0, 0.2]])  # p = (0.5,0,0,0), b_u = 0.2
    batch = Batch(items=items, user_params={"mf": u})
    # prediction = 3 + 0.2 + 0 + 0.5 * 1 = 3.7; label 4.7 -> error 1.0
    assert torch.allclose(m.predict_many(batch), torch.tensor([3.7]))
    m.learn_many(batch, torch.tensor([4.7]))
    assert torch.allclose(u[0, -1], torch.tensor(0.3))  # b_u += 0.1 * 1
    assert torch.allclose(m.b[0], torch.tensor(0.1))  # b_i += 0.1 * 1
    assert torch.allclose(u[0, 0], torch.tensor(1.0))  # p += 0.5 * 1 * q
    assert torch.allclose(m.q[0, 0], torch.tensor(1.25))  # q += 0.5 * 1 * p (old p)
    assert m.mu == pytest.approx((3.0 + 4.7) / 2)


def test_online_learning_reduces_error_on_a_low_rank_stream():
    g = torch.Generator().manual_seed(0)
    n_users, n_items = 30, 40
    users, items = torch.randn(n_users, 4, generator=g), torch.randn(n_items, 4, generator=g)
    truth = (3 + users @ items.T).clamp(1, 5)
    m = make()
    params = torch.stack([m.new_user(str(u)) for u in range(n_users)])
    ids = [str(i) for i in range(n_items)]
    errors = []
    for _ in range(30):
        err = 0.0
        for _ in range(n_items):
            # every user rates one random item per step, as the job's waves do
            u = torch.arange(n_users)
            i = torch.randint(0, n_items, (n_users,), generator=g)
            p = params[u].clone()
            batch = Batch(items=m.rows([ids[j] for j in i.tolist()]), user_params={"mf": p})
            y = truth[u, i]
            err += float((m.predict_many(batch) - y).abs().sum())
            m.learn_many(batch, y)
            params[u] = p
        errors.append(err)
    assert errors[-1] < 0.6 * errors[0]


def test_catalogue_scores_match_single_predictions():
    m = make()
    rows = m.rows(["a", "b", "c"])
    u = torch.stack([m.new_user("1"), m.new_user("2")])
    full = m.score_catalogue(u)
    for r in range(2):
        single = m.predict_many(Batch(items=rows, user_params={"mf": u[[r, r, r]]}))
        assert torch.allclose(full[r].clamp(1, 5), single)


def test_item_index_grows_in_order():
    idx = ItemIndex(["a"])
    assert idx.rows(["b", "a", "c"]) == [1, 0, 2]
    assert idx.get("zz") is None and len(idx) == 3
