"""Model maths without Flink: MF and FTRL steps against hand-worked numbers, merging, guards, online learning."""

import json
import math

import numpy as np
import pytest
import torch

from models.base import Batch, Model
from models.ensemble import ModelSet
from models.ftrl import FTRLProximal
from models.fusion import OnlineFusion
from models.merger import MergerCore
from models.mf import BiasedMF
from models.online import Inputs, OnlineLearner
from models.params import (
    STATE_MAGIC,
    ModelShapeMismatch,
    ParameterSet,
    RowDelta,
    Version,
    merge,
    state_from_bytes,
    state_to_bytes,
    sum_deltas,
)
from models.ranker import NeuralRanker
from models.sequential import name_seeds
from rtrec.config import ModelConfig
from rtrec.events import Event
from rtrec.features.model_inputs import id_code
from rtrec.sharding import fatal_reason


def mf(**kw):
    return BiasedMF(ParameterSet(seed=3), dim=4, **kw)


def test_every_model_answers_the_interface():
    ps = ParameterSet()
    m = BiasedMF(ps, dim=4)
    for model in (m, FTRLProximal(ps, bits=8), NeuralRanker(ps, n_dense=3, user_dim=4)):
        assert isinstance(model, Model)


def test_items_get_the_same_initial_vector_on_every_subtask():
    a, b = mf(), mf()
    a.params.item_rows(["x", "y"])
    b.params.item_rows(["y", "x"])
    assert torch.equal(a.q.data[a.params.index.get("x")], b.q.data[b.params.index.get("x")])
    assert not torch.equal(a.q.data[0], a.q.data[1])
    assert name_seeds(["x"], 3)[0] != name_seeds(["x"], 4)[0]


def test_mf_hand_worked_sgd_step():
    m = mf(lr_bias=0.1, lr_latent=0.5, mu=3.0)
    items = m.params.item_rows(["i"])
    m.q.data[0] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    u = torch.tensor([[0.5, 0.0, 0.0, 0.0, 0.2]])  # p = (0.5, 0, 0, 0), b_u = 0.2
    batch = Batch(items=items, user_params={"mf": u})
    # prediction = 3 + 0.2 + 0 + 0.5 * 1 = 3.7; label 4.7 -> error 1.0
    assert torch.allclose(m.predict_many(batch), torch.tensor([3.7]))
    m.learn_many(batch, torch.tensor([4.7]))
    assert u[0, -1].item() == pytest.approx(0.3)  # b_u += 0.1 * 1
    assert m.b.data[0].item() == pytest.approx(0.1)  # b_i += 0.1 * 1
    assert u[0, 0].item() == pytest.approx(1.0)  # p += 0.5 * 1 * q
    assert m.q.data[0, 0].item() == pytest.approx(1.25)  # q += 0.5 * 1 * p (the old p)
    assert m.mu.data[0, 0].item() == pytest.approx(4.7)  # running mean of the labels seen (one)


def test_mf_item_rated_twice_in_one_step_takes_the_mean_update():
    m = mf(lr_bias=0.1, lr_latent=0.0, mu=3.0)
    items = m.params.item_rows(["i", "i"])
    u = torch.zeros(2, 5)
    m.learn_many(Batch(items=items, user_params={"mf": u}), torch.tensor([4.0, 5.0]))
    # errors 1 and 2 from the same stale b_i = 0: mean step 0.1 * 1.5
    assert m.b.data[0].item() == pytest.approx(0.15)


def test_ftrl_hand_worked_steps():
    ps = ParameterSet()
    f = FTRLProximal(ps, bits=4, alpha=1.0, beta=1.0, l1=0.0, l2=0.0, offset=0.0)
    batch = Batch(items=torch.zeros(1, dtype=torch.long), sparse=torch.tensor([[3]]))
    # w = 0 -> prediction 0; label 1 -> g = -1; sigma = (sqrt(1) - 0) / 1 = 1; z = -1 - 1 * 0 = -1; n = 1
    f.learn_many(batch, torch.tensor([1.0]))
    assert f.z.data[3].item() == pytest.approx(-1.0) and f.n.data[3].item() == pytest.approx(1.0)
    # w = -z / ((beta + sqrt(n)) / alpha) = 1 / 2
    assert f.predict_many(batch).item() == pytest.approx(0.5)
    f.learn_many(batch, torch.tensor([1.0]))  # g = -0.5; sigma = (sqrt(1.25) - 1); z = -1.5 - sigma * 0.5
    sigma = math.sqrt(1.25) - 1
    assert f.z.data[3].item() == pytest.approx(-1.5 - sigma * 0.5)
    assert f.n.data[3].item() == pytest.approx(1.25)


def test_ftrl_l1_keeps_rare_weights_at_exactly_zero():
    f = FTRLProximal(ParameterSet(), bits=4, alpha=0.1, l1=5.0, offset=0.0)
    batch = Batch(items=torch.zeros(1, dtype=torch.long), sparse=torch.tensor([[2]]))
    f.learn_many(batch, torch.tensor([1.0]))
    assert f.predict_many(batch).item() == 0.0


def test_robust_fusion_weights_each_example_by_its_error_before_the_step():
    f = OnlineFusion(ParameterSet(), ["a", "b"], forget=1.0, ridge=1.0, robust=0.5)
    x = {"a": torch.tensor([3.0, 4.0]), "b": torch.tensor([2.0, 5.0])}
    y = torch.tensor([5.0, 4.4])
    # before any example: the even average, 2.5 and 4.5: errors 2.5 and 0.1 -> weights 1/2.5 and 1/0.5
    f.learn(x, y)
    rows = torch.tensor([[1.0, 3.0, 2.0], [1.0, 4.0, 5.0]])
    w = torch.tensor([0.4, 2.0])
    assert torch.allclose(f.a.data[0], (rows * w[:, None]).T @ rows)
    assert torch.allclose(f.b.data[0], (rows * w[:, None]).T @ y)


def test_robust_fusion_resists_outliers_that_pull_least_squares():
    g = torch.Generator().manual_seed(0)
    plain = OnlineFusion(ParameterSet(), ["a"], forget=1.0, ridge=1e-3)
    robust = OnlineFusion(ParameterSet(), ["a"], forget=1.0, ridge=1e-3, robust=0.1)
    for _ in range(40):
        a = torch.rand(100, generator=g) * 4 + 1
        y = a + 0.5
        y[:10] += 4.0  # one in ten labels far above the line: the median stays on it, the mean does not
        plain.learn({"a": a}, y)
        robust.learn({"a": a}, y)
    assert abs(plain.weights()["bias"] - 0.9) < 0.05  # least squares: 0.5 + 4 / 10
    assert abs(robust.weights()["bias"] - 0.5) < 0.1 and abs(robust.weights()["a"] - 1.0) < 0.05


def test_fusion_recovers_a_linear_combination():
    f = OnlineFusion(ParameterSet(), ["a", "b"], forget=1.0, ridge=1e-6)
    g = torch.Generator().manual_seed(1)
    x = {"a": torch.randn(200, generator=g), "b": torch.randn(200, generator=g)}
    f.learn(x, 0.5 + 0.3 * x["a"] + 0.7 * x["b"])
    w = f.weights()
    assert w["bias"] == pytest.approx(0.5, abs=1e-3) and w["a"] == pytest.approx(0.3, abs=1e-3)
    assert w["b"] == pytest.approx(0.7, abs=1e-3)


# -- merging ---------------------------------------------------------------------------------------------


def test_merge_weights_rows_by_examples():
    a = {"t": RowDelta("item", ["x", "y"], torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 3.0]))}
    b = {"t": RowDelta("item", ["y"], torch.tensor([[6.0]]), torch.tensor([1.0]))}
    m = merge([a, b])["t"]
    got = dict(zip(m.keys, m.values.flatten().tolist(), strict=True))
    assert got == {"x": 1.0, "y": pytest.approx((2.0 * 3 + 6.0 * 1) / 4)}
    assert m.counts.tolist() == [1.0, 4.0]


def _running_means(n0: float, m0: float, values: list[list[float]]) -> tuple[ParameterSet, list[dict]]:
    """A parameter set holding a mean ``m0`` of ``n0`` examples per row (rows "x", "y"), and per trainer
    the delta of a running mean over its ``values`` (each ``1 / n`` towards the value, n counting on
    from ``n0``), for row "x" and, every second trainer, row "y"."""
    ps = ParameterSet()
    n = ps.add("n", "item", (), merge="sum")
    m = ps.add("m", "item", (), merge="counted", counted_by="n")
    rows = ps.item_rows(["x", "y"])
    n.data[rows], m.data[rows] = n0, m0
    deltas = []
    for k, xs in enumerate(values):
        mean, count = m0, n0
        for v in xs:
            count += 1
            mean += (v - mean) / count
        keys = ["x", "y"] if k % 2 == 0 else ["x"]
        c = torch.full((len(keys),), float(len(xs)))
        deltas.append({"n": RowDelta("item", keys, torch.full((len(keys),), float(len(xs))), c),
                       "m": RowDelta("item", keys, torch.full((len(keys),), mean - m0), c)})
    return ps, deltas


@pytest.mark.parametrize("n0", [0.0, 5.0, 400.0])
def test_counted_merge_reaches_what_one_trainer_seeing_every_example_reaches(n0):
    """The ``counted`` rule on running means from a shared start: the merged mean is the mean over all
    the trainers' examples and the ``n0`` before them, the summed count their number; ``mean``
    (averaging) falls short of it once the row has history."""
    values = [[4.0, 5.0, 5.0], [1.0, 2.0], [3.0, 5.0, 4.0, 4.0]]
    ps, deltas = _running_means(n0, 3.0, values)
    merged = merge(deltas, ps)
    x = {k: dict(zip(d.keys, d.values.tolist(), strict=True))["x"] for k, d in merged.items()}
    everything = [v for xs in values for v in xs]
    assert x["n"] == len(everything)
    assert 3.0 + x["m"] == pytest.approx((n0 * 3.0 + sum(everything)) / (n0 + len(everything)), abs=1e-6)
    y = dict(zip(merged["m"].keys, merged["m"].values.tolist(), strict=True))["y"]  # trainers 0 and 2 only
    seen_y = values[0] + values[2]
    assert 3.0 + y == pytest.approx((n0 * 3.0 + sum(seen_y)) / (n0 + len(seen_y)), abs=1e-6)
    averaged = merge(deltas)["m"]  # (no rules: the mean)
    mean_x = dict(zip(averaged.keys, averaged.values.tolist(), strict=True))["x"]
    assert (mean_x == pytest.approx(x["m"], abs=1e-6)) == (n0 == 0.0)
    # one trainer: its own delta, whatever the rule
    alone = merge(deltas[:1], ps)
    assert alone["m"].values.tolist() == deltas[0]["m"].values.tolist()
    assert alone["n"].values.tolist() == deltas[0]["n"].values.tolist()


def test_a_counted_table_needs_a_scalar_sum_table_of_its_kind():
    ps = ParameterSet()
    ps.add("mean_n", "item", ())
    ps.add("hashed_n", "hashed", (), rows=4, merge="sum")
    for by in ("mean_n", "hashed_n", "missing"):
        with pytest.raises(ValueError, match="counted_by"):
            ps.add("m", "item", (), merge="counted", counted_by=by)
    with pytest.raises(ValueError, match="merge must be"):
        ps.add("m", "item", (), merge="median")


def test_successive_deltas_of_one_trainer_add_up():
    d1 = {"t": RowDelta("hashed", torch.tensor([0]), torch.tensor([1.0]), torch.tensor([1.0]))}
    d2 = {"t": RowDelta("hashed", torch.tensor([0, 2]), torch.tensor([2.0, 5.0]), torch.tensor([1.0, 1.0]))}
    s = sum_deltas([d1, d2])["t"]
    assert s.keys.tolist() == [0, 2] and s.values.tolist() == [3.0, 5.0] and s.counts.tolist() == [2.0, 1.0]


def _examples(n, seed=0, users=20):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        u, item = int(torch.randint(users, (1,), generator=g)), int(torch.randint(30, (1,), generator=g))
        rating = float(1 + (u * 7 + item * 3) % 5)
        out.append(Event(f"e{seed}-{i}", str(u), str(item), "rating", 1000 + i, rating))
    return out


def _inputs(events):
    return [Inputs(e, [0.0] * 7, (-1, 0), id_code(e.user_id)) for e in events]


def test_one_trainer_merged_equals_no_merge():
    cfg = ModelConfig(heldout_fraction=0.0, rollback_margin=100.0)
    alone, trainer = OnlineLearner(cfg), OnlineLearner(cfg)
    merger = MergerCore(cfg)
    users_a, users_t = {}, {}
    for step in range(3):
        batch = _examples(200, seed=step)
        for e in batch:
            users_a.setdefault(e.user_id, alone.new_user(e.user_id))
            users_t.setdefault(e.user_id, trainer.new_user(e.user_id))
        alone.process(_inputs(batch), users_a)
        trainer.process(_inputs(batch), users_t)
        merger.add_delta(0, *trainer.take_delta())
        v = merger.merge()
        assert trainer.apply_version(Version.from_bytes(v.to_bytes()))
    for name, t in alone.models.params.tables.items():
        n = alone.models.params.n_items if t.kind == "item" else t.data.shape[0]
        # (the like head: relative 1e-3. Its tables are float32 and every example steps its bias and user
        # coordinates, |z| ~ 10 here: the last bits of base + delta after a merge feed back through its
        # logistic steps, 1e-4 apart after 600 examples; a wrong merge is off by whole steps)
        rtol = 1e-3 if name.startswith("like.") else 1e-5
        assert torch.allclose(t.data[:n], trainer.models.params[name].data[:n], rtol=rtol, atol=1e-5), name


def _version_format_1(v: Version) -> bytes:
    """A version as releases up to 0.2 wrote it (torch.save, zlib level 1)."""
    import zlib

    from models.params import to_bytes
    return zlib.compress(to_bytes({
        "format": "rtrec-version-1", "number": v.number, "created_ms": v.created_ms, "state": v.state,
        "merged_upto": v.merged_upto, "rolled_back": v.rolled_back, "heldout_loss": v.heldout_loss,
        "examples": v.examples}), 1)


def test_versions_round_trip_and_the_earlier_format_is_read():
    """Format 2: every table back exactly (the hashed one mostly zeros, so sent as its non-zero rows),
    with the bookkeeping; format 1 (in broadcast and merger state, and on the topic) still read."""
    cfg = ModelConfig(heldout_fraction=0.0, rollback_margin=100.0)
    trainer, merger = OnlineLearner(cfg), MergerCore(cfg)
    users = {}
    batch = _examples(300, seed=5)
    for e in batch:
        users.setdefault(e.user_id, trainer.new_user(e.user_id))
    trainer.process(_inputs(batch), users)
    merger.add_delta(0, *trainer.take_delta())
    v = merger.merge()
    v.merged_upto, v.heldout_loss, v.rolled_back = {0: 7, 3: 2}, 0.5, True
    tables = v.state["tables"]
    hashed = next(n for n, t in tables.items() if t.shape[0] >= 65536)
    assert 0 < int((tables[hashed] != 0).sum()) < tables[hashed].shape[0] // 2  # the sparse way is taken
    for data in (v.to_bytes(), _version_format_1(v)):
        back = Version.from_bytes(data)
        assert (back.number, back.created_ms, back.merged_upto, back.rolled_back, back.heldout_loss, back.examples) \
            == (v.number, v.created_ms, {0: 7, 3: 2}, True, 0.5, v.examples)
        assert back.state["items"] == v.state["items"]
        assert back.state["tables"].keys() == tables.keys()
        for name, t in tables.items():
            assert back.state["tables"][name].dtype == t.dtype and torch.equal(back.state["tables"][name], t), name
    assert len(v.to_bytes()) < 8 * sum(t.numel() for t in tables.values()) // 2
    for garbage in (b"", b"RTS2\x05\x00\x00\x00{bad", b"x\x01garbage", b"\x80\x05N."):
        with pytest.raises(ValueError):
            Version.from_bytes(garbage)


def test_sparse_tables_name_their_rows_the_smaller_way_and_the_earlier_int64_rows_are_still_read():
    """A hashed table's non-zero rows are named by a bitmap when many (the like head's 45k of 2**18 rows:
    32 KB, against 360 KB as int64 numbers, which made versions twice the size) or by int32 numbers when
    few; state written with int64 numbers (earlier releases: savepoints, merger state, the topic) is read."""
    gen = torch.Generator().manual_seed(3)
    many, few = torch.zeros(2**18), torch.zeros(2**16, 3)
    many[torch.randperm(2**18, generator=gen)[:45_000]] = torch.rand(45_000, generator=gen) + 0.1
    few[torch.randperm(2**16, generator=gen)[:100]] = torch.rand(100, 3, generator=gen) + 0.1
    data = state_to_bytes({"many": many, "few": few, "n": 3})
    back = state_from_bytes(data)
    assert torch.equal(back["many"], many) and torch.equal(back["few"], few) and back["n"] == 3
    values = 4 * (45_000 + 300)
    assert len(data) < values + 2**18 // 8 + 4 * 100 + 400  # (a bitmap for many, int32 for few, the header)

    def int64_rows(name: str, t: torch.Tensor) -> bytes:  # as earlier releases wrote it
        keep = t.reshape(t.shape[0], -1).ne(0).any(1).nonzero().squeeze(1)
        raw = t[keep].numpy().tobytes()
        header = {name: {"$tensor": ["float32", list(t.shape), 0, len(raw), len(raw), len(keep)]}}
        head = json.dumps(header).encode()
        return STATE_MAGIC + len(head).to_bytes(4, "little") + head + raw + keep.numpy().astype(np.int64).tobytes()

    for name, t in (("many", many), ("few", few)):
        assert torch.equal(state_from_bytes(int64_rows(name, t))[name], t), name
    with pytest.raises(ValueError, match="rows as 'xxxx'"):
        state_from_bytes(data.replace(b'"bits"', b'"xxxx"', 1))


def test_a_version_of_other_model_settings_is_refused_whole_and_named_as_no_restart_mends_it():
    """A version made with another model.dim (a warm start, or a resume with changed settings) hit a raw
    shape error in the middle of loading, on every restart; now it changes nothing and says which tables
    differ, in words rtrec.sharding.fatal_reason finds in Flink's exception history."""
    old, new = MergerCore(ModelConfig(dim=10)), MergerCore(ModelConfig(dim=16))
    old.models.params.item_rows(["a", "b"])
    before = {n: t.data.clone() for n, t in new.models.params.tables.items()}
    version = old.merge()
    with pytest.raises(ModelShapeMismatch) as refused:
        new.start_from(version)
    message = str(refused.value)
    assert "mf.q (10,) where this job's is (16,)" in message and "model.dim" in message, message
    assert "ranker.w1 (1, " in message and "ftrl.z" not in message  # (the tables that differ)
    assert all(torch.equal(t.data, before[n]) for n, t in new.models.params.tables.items())  # (nothing loaded)
    assert new.version == 0
    raised = f"Caused by: pemja.core.PythonException: <class 'models.params.ModelShapeMismatch'>: {message}\n\tat x"
    assert fatal_reason(raised) == message
    MergerCore(ModelConfig(dim=10)).start_from(version)  # (the same settings load it)
    # The scorers' check of a version on the topic (UserStage._made_elsewise, which skips it) is the same one:
    with pytest.raises(ModelShapeMismatch, match=r"mf\.q \(10,\) where this job's is \(16,\)"):
        OnlineLearner(ModelConfig(dim=16)).models.params.check_shapes(version.state)
    OnlineLearner(ModelConfig(dim=10)).models.params.check_shapes(version.state)


def test_two_trainers_merge_new_items_to_the_example_weighted_average_and_add_their_counts():
    cfg = ModelConfig(heldout_fraction=0.0, rollback_margin=100.0)
    merger = MergerCore(cfg)
    start = merger.models.params["mf.b"]
    trainers = [OnlineLearner(cfg, trainer_id=i) for i in range(2)]
    deltas = []
    for i, t in enumerate(trainers):
        users = {}
        batch = [e for e in _examples(300, seed=10 + i) if (int(e.user_id) % 2) == i]
        for e in batch:
            users.setdefault(e.user_id, t.new_user(e.user_id))
        t.process(_inputs(batch), users)
        seq, d, heldout = t.take_delta()
        deltas.append(d)
        merger.add_delta(i, seq, d, heldout)
    merger.merge()
    # new items (no examples before): their MF rows are the example-weighted average of the trainers'
    expected = merge(deltas)["mf.b"]
    rows = merger.models.params.item_rows(expected.keys)
    assert torch.allclose(start.data[rows], expected.values, atol=1e-6)
    # the item counts add up
    n = merge(deltas, merger.models.params)["mf.n"]
    assert torch.equal(merger.models.params["mf.n"].data[merger.models.params.item_rows(n.keys)], n.counts)
    assert float(n.counts.sum()) == sum(float(d["mf.n"].counts.sum()) for d in deltas)
    # dense rows too: each trainer's change weighted by its examples
    mu = merge(deltas)["mf.mu"]
    assert mu.counts.item() == sum(float(d["mf.mu"].counts.sum()) for d in deltas)
    assert torch.allclose(merger.models.params["mf.mu"].data[0], torch.tensor([3.0, 0.0]) + mu.values[0])


def test_nan_delta_is_rejected_whole():
    cfg = ModelConfig()
    merger = MergerCore(cfg)
    merger.models.rows(["x"])
    bad = {"mf.b": RowDelta("item", ["x"], torch.tensor([float("nan")]), torch.tensor([1.0]))}
    merger.add_delta(0, 1, bad, [])
    v = merger.merge()
    assert merger.rejected == 1
    assert torch.isfinite(merger.models.params["mf.b"].data).all()
    assert v.merged_upto[0] == 1  # the trainer will drop it


def _trainer(n: int, heldout_fraction: float) -> tuple[OnlineLearner, dict, list]:
    """A trainer holding out ``heldout_fraction`` of ``n`` examples, their users' models, the examples."""
    learner = OnlineLearner(ModelConfig(heldout_fraction=heldout_fraction))
    batch = _examples(n)
    users: dict = {}
    for e in batch:
        users.setdefault(e.user_id, learner.new_user(e.user_id))
    return learner, users, batch


def test_held_out_columns_kept_as_examples_come_equal_the_examples_stacked_at_once():
    """MergerCore extends its stacked held-out columns with each delta's examples, dropping the oldest past
    model.heldout_size, as its deque does: the batch a merge scores is the one stacking the deque gives."""
    from models.merger import _held_columns

    cfg = ModelConfig(heldout_min=5, heldout_size=50)
    merger = MergerCore(cfg)
    learner, users, batch = _trainer(600, heldout_fraction=0.3)
    added = 0
    for k in range(0, len(batch), 100):
        learner.process(_inputs(batch[k : k + 100]), users)
        seq, d, heldout = learner.take_delta()
        merger.add_delta(0, seq, d, heldout)
        added += len(heldout)
        stacked = _held_columns(list(merger.heldout))
        assert all(np.array_equal(merger._held[f], stacked[f]) for f in stacked)
    assert added > cfg.heldout_size == len(merger.heldout), "the oldest were dropped"
    kept, y = merger.heldout_batch()
    merger._held = None  # stacked from the deque now
    again, y2 = merger.heldout_batch()
    assert torch.equal(y, y2) and torch.equal(kept.dense, again.dense) and torch.equal(kept.sparse, again.sparse)
    assert merger.heldout_loss((kept, y)) == merger.heldout_loss((again, y2))


def test_a_version_worse_on_held_out_examples_is_rolled_back():
    cfg = ModelConfig(heldout_min=20, rollback_margin=0.1)
    merger = MergerCore(cfg)
    learner, users, batch = _trainer(400, heldout_fraction=0.2)
    learner.process(_inputs(batch), users)
    merger.add_delta(0, *learner.take_delta())
    good = merger.merge()
    assert not good.rolled_back and len(merger.heldout) >= 20
    before = {n: t.data.clone() for n, t in merger.models.params.tables.items()}
    # a delta that pushes every item bias of the MF and the ranker's output far off: the fused prediction moves
    # whichever of the two the fusion trusts (on these 400 examples it is mostly the ranker)
    ids = list(merger.models.params.index.ids)
    harm = {"mf.b": RowDelta("item", ids, torch.full((len(ids),), 3.0), torch.ones(len(ids))),
            "ranker.b2": RowDelta("dense", torch.zeros(1, dtype=torch.long), torch.full((1, 1), 3.0), torch.ones(1))}
    merger.add_delta(0, 99, harm, [])
    v = merger.merge()
    assert v.rolled_back and merger.rollbacks == 1
    assert v.number == good.number + 1
    for n, t in merger.models.params.tables.items():
        assert torch.equal(t.data, before[n]), n


def test_prequential_online_learning_beats_the_frozen_start():
    cfg = ModelConfig(heldout_fraction=0.0)
    learner = OnlineLearner(cfg)
    users = {}
    errors = []
    for step in range(8):
        batch = _examples(300, seed=100 + step, users=10)
        for e in batch:
            users.setdefault(e.user_id, learner.new_user(e.user_id))
        result = learner.process(_inputs(batch), users)
        p = result.examples
        errors.append(sum(abs(s - y) for s, y in zip(p.scores["mf"], p.label, strict=True)) / len(p))
    assert errors[-1] < 0.6 * errors[0]


def test_impression_without_click_becomes_a_negative():
    learner = OnlineLearner(ModelConfig())
    users = {"u": learner.new_user("u")}
    seen = Event("i1", "u", "a", "impression", 1000)
    clicked = Event("i2", "u", "b", "impression", 1000)
    learner.process(_inputs([seen, clicked, Event("c1", "u", "b", "click", 1500)]), users)
    negatives = learner.expire_impressions([("u", "a", "i1"), ("u", "b", "i2")], users)
    assert list(zip(negatives.item_id, negatives.label, negatives.type, strict=True)) == [("a", 0.0, "impression")]
    assert 0.0 <= negatives.fused[0] <= 1.0


def test_recommendations_leave_out_recent_items_and_rank_candidates():
    learner = OnlineLearner(ModelConfig(top_k=3))
    users = {"1": learner.new_user("1")}
    learner.models.rows([str(i) for i in range(10)])
    refresh = Event("r", "1", "4", "rating", 10, 5.0)
    request = Event("q", "1", None, "view", 11, candidates=["7", "2", "new-item"])
    x = _inputs([refresh, request])
    for i in x:
        i.dense_after, i.buckets_after = i.dense, i.buckets
    recs = learner.process(x, users).recommendations
    by_event = {r.event.event_id: r for r in recs}
    assert "4" not in by_event["r"].items and len(by_event["r"].items) == 3
    assert sorted(by_event["q"].items) == ["2", "7", "new-item"]
    assert by_event["q"].scores == sorted(by_event["q"].scores, reverse=True)


def test_model_set_runs_on_the_chosen_device():
    from models.device import resolve_device

    dev = resolve_device("auto")
    m = ModelSet(ModelConfig(), dev)
    assert all(t.data.device.type == dev.type for t in m.params.tables.values())


def test_version_files_round_trip_and_keep_the_newest(tmp_path):
    from udfs.merger import newest_version_file, write_version

    merger = MergerCore(ModelConfig())
    merger.models.rows(["a", "b"])
    for _ in range(4):
        v = merger.merge()
        write_version(tmp_path, v, v.to_bytes(), keep=2)
    assert sorted(p.name for p in tmp_path.glob("v*.pt")) == ["v000000003.pt", "v000000004.pt"]
    (tmp_path / "v000000005.pt").write_bytes(b"torn")  # a broken newest file is skipped
    newest = newest_version_file(tmp_path)
    assert newest.number == 4 and newest.state["items"] == ["a", "b"]
    warm = MergerCore(ModelConfig())
    warm.start_from(newest)
    assert warm.merge().number == 5  # numbering continues after a warm start
    for name, t in merger.models.params.tables.items():
        n = 2 if t.kind == "item" else t.data.shape[0]
        assert torch.equal(t.data[:n], warm.models.params[name].data[:n]), name


def test_the_rankers_written_out_gradients_equal_autograds():
    ps = ParameterSet(seed=4)
    r = NeuralRanker(ps, n_dense=3, user_dim=4, item_dim=5, hidden=6)
    items = ps.item_rows(["a", "b", "a"])
    torch.manual_seed(0)
    batch = Batch(items=items, user_params={"mf": torch.randn(3, 5)}, dense=torch.randn(3, 3))
    g = torch.tensor([0.5, -1.0, 2.0])
    weights = [t.data[0].clone().requires_grad_(True) for t in r.layers]
    emb = ps["ranker.emb"].data[items].clone().requires_grad_(True)
    torch.autograd.backward(r._forward(batch, *weights, emb), g)
    grads, ge = r.gradients(batch, g)
    for mine, theirs in zip(grads, weights, strict=True):
        assert torch.allclose(mine, theirs.grad, atol=1e-6)
    assert torch.allclose(ge, emb.grad, atol=1e-6)
