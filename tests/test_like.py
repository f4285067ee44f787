"""The like head (models.like): the fused probability of a positive, after the fused rating."""

import json
import math

import numpy as np
import pytest

from models import sequential
from models.like import STATS, USER_WIDTH, LikeHead, user_attributes, user_codes
from models.online import Inputs, OnlineLearner
from models.params import ParameterSet
from rtrec.config import ConfigError, ModelConfig, RtrecConfig, validate
from rtrec.evaluation import evaluate, markdown, summary_lines
from rtrec.events import Event
from rtrec.features.model_inputs import id_code

MIX, MOD = 1_000_003, 1 << 31


def _code(field, a, b, size):
    return ((((field * MIX + a) % MOD) * MIX + b) % MOD) % size


def _reference(stats, user_of, ucodes, icodes, rows, attr, uattr, fused, y, positive, ts, rating, learn, z, n, mse,
               threshold, prior, alpha, recent, size):
    """like_pass as plain Python (beta 1, no L1, L2 1), on float64 copies."""
    out = []
    for k in range(len(user_of)):
        st = stats[user_of[k]]
        var = (st[0] + prior * mse[0]) / (st[1] + prior) if rating[k] else mse[0]
        fresh = st[3] == 0  # (no rating yet)
        gap = ts[k] - st[4]
        session = 0.0 if fresh or gap > 3600 else st[3]
        recent_bucket = 99 if fresh else int(min(max(round(st[2] * 4), -8), 8))
        codes = [_code(1, 0, 0, size), _code(2, ucodes[k], 0, size), _code(3, icodes[rows[k]], 0, size)]
        codes += [_code(4, ucodes[k], int(a), size) for a in attr[rows[k]] if a >= 0]
        codes += [_code(5, icodes[rows[k]], int(a), size) for a in uattr[user_of[k]] if a >= 0]
        if rating[k]:
            codes += [_code(6, recent_bucket + 16, 0, size), _code(7, int(math.log2(session + 1)), 0, size),
                      _code(8, 99 if fresh else int(math.log10(max(gap, 0) + 1)), 0, size)]
        w = []
        for c in codes:
            w.append(0.0 if z[c] == 0 else -z[c] / ((1 + math.sqrt(n[c])) / alpha + 1))
        logit = (fused[k] - threshold) / math.sqrt(max(var, 1e-6)) + sum(w)
        p = 1 / (1 + math.exp(-min(max(logit, -30), 30)))
        out.append(p)
        if learn[k]:
            g = p - float(positive[k])
            for c, wc in zip(codes, w, strict=True):
                sigma = (math.sqrt(n[c] + g * g) - math.sqrt(n[c])) / alpha
                z[c] += g - sigma * wc
                n[c] += g * g
            if rating[k]:
                r = y[k] - fused[k]
                st[3] = 1.0 if fresh or gap > 3600 else st[3] + 1
                st[2] = r if fresh else recent * st[2] + (1 - recent) * r
                st[4] = ts[k]
                st[0] += r * r
                st[1] += 1
                mse[1] += 1
                mse[0] += (r * r - mse[0]) / mse[1]
    return np.array(out)


def _stream(n=300, users=6, items=10, seed=5):
    g = np.random.default_rng(seed)
    attr = np.full((items, 3), -1, np.int32)
    for i in range(items):
        k = g.integers(0, 4)
        attr[i, :k] = g.choice(20, k, replace=False)
    uattr = np.full((users, USER_WIDTH), -1, np.int64)  # (a row per user)
    user_of = g.integers(0, users, n).astype(np.int64)
    for u in range(users):
        uattr[u, : u % 3] = [11, 12][: u % 3]
    y = g.integers(1, 6, n).astype(np.float64)
    return {"user_of": user_of, "ucodes": (user_of * 7919 + 3).astype(np.int64),
            "icodes": np.arange(100, 100 + items, dtype=np.int64), "rows": g.integers(0, items, n).astype(np.int64),
            "attr": attr, "uattr": uattr, "fused": g.uniform(2, 5, n), "y": y, "positive": y >= 4,
            "ts": np.cumsum(g.choice([1.0, 30.0, 5000.0], n)), "rating": g.random(n) < 0.7,
            "learn": g.random(n) < 0.9}


def _run(s, lo, hi, stats, tables, size=256):
    z, n, mse = tables
    return sequential.like_pass(stats, s["user_of"][lo:hi], s["ucodes"][lo:hi], s["icodes"], s["rows"][lo:hi],
                                s["attr"], s["uattr"], s["fused"][lo:hi], s["y"][lo:hi], s["positive"][lo:hi],
                                s["ts"][lo:hi], s["rating"][lo:hi], s["learn"][lo:hi], z, n, mse, 3.8, 5.0, (0.08, 1.0, 0.0, 1.0), 0.7,
                                (MIX, MOD, size))


def _tables(size=256):
    return np.zeros(size, np.float32), np.zeros(size, np.float32), np.array([1.0, 0.0], np.float32)


def test_the_compiled_pass_equals_plain_python_and_learns_in_place():
    s = _stream()
    stats, tables = np.zeros((6, STATS)), _tables()
    got = _run(s, 0, len(s["y"]), stats, tables)
    ref_stats, (z, n, mse) = np.zeros((6, STATS)), (t.astype(np.float64) for t in _tables())
    expected = _reference(ref_stats, s["user_of"], s["ucodes"], s["icodes"], s["rows"], s["attr"], s["uattr"],
                          s["fused"], s["y"], s["positive"], s["ts"], s["rating"], s["learn"], z, n, mse, 3.8, 5.0,
                          0.08, 0.7, 256)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(stats, ref_stats, rtol=1e-6)
    np.testing.assert_allclose(tables[0], z, atol=1e-3)
    assert ((got > 0) & (got < 1)).all() and np.abs(got - got[0]).max() > 0.1  # probabilities, that moved
    assert stats[:, 1].sum() == (s["learn"] & s["rating"]).sum()  # every learned rating, no held-out one


def test_the_probabilities_do_not_depend_on_how_the_stream_is_cut():
    s = _stream()
    n = len(s["y"])
    whole_stats, whole_tables = np.zeros((6, STATS)), _tables()
    whole = _run(s, 0, n, whole_stats, whole_tables)
    cut_stats, cut_tables = np.zeros((6, STATS)), _tables()
    cut = np.concatenate([_run(s, lo, min(lo + 7, n), cut_stats, cut_tables) for lo in range(0, n, 7)])
    np.testing.assert_array_equal(cut, whole)
    np.testing.assert_array_equal(cut_stats, whole_stats)


def test_binary_feedback_carries_no_time_features_and_moves_no_session():
    """A click is learned at its outcome, seconds after it was shown and scored: features of the time would
    differ between the two (on a shop stream they drowned the item's appeal: AUC 0.51 against 0.58). Only
    ratings have them, and only ratings move the user's row: binary feedback's errors say how often a
    user clicks, not how well the models know them (scaled by them, the taste stream's AUC fell 0.02)."""
    s = _stream()
    codes = np.full((len(s["y"]), 14), -1, np.int64)
    stats = np.zeros((6, STATS))
    sequential.like_pass(stats, s["user_of"], s["ucodes"], s["icodes"], s["rows"], s["attr"], s["uattr"], s["fused"],
                         s["y"], s["positive"], s["ts"], s["rating"], s["learn"], *_tables(), 3.8, 5.0,
                         (0.08, 1.0, 0.0, 1.0), 0.7, (MIX, MOD, 256), codes)
    width = [3 + int((s["attr"][s["rows"][k]] >= 0).sum()) + int((s["uattr"][s["user_of"][k]] >= 0).sum())
             for k in range(len(s["y"]))]
    used = (codes >= 0).sum(1)
    assert (used == np.array(width) + 3 * s["rating"]).all()
    binary_only = np.zeros((6, STATS))
    no = np.zeros(len(s["y"]), np.bool_)
    sequential.like_pass(binary_only, s["user_of"], s["ucodes"], s["icodes"], s["rows"], s["attr"], s["uattr"],
                         s["fused"], s["y"], s["positive"], s["ts"], no, s["learn"], *_tables(), 3.8, 5.0,
                         (0.08, 1.0, 0.0, 1.0), 0.7, (MIX, MOD, 256))
    assert (binary_only == 0).all()  # (binary feedback's errors say how often a user clicks)


def test_it_learns_which_attributes_each_user_likes_from_binary_feedback():
    """The fused score says nothing (0.5 for all); user u likes attribute 1 and not 2, user v the reverse.
    The head's user x attribute features learn it: its later probabilities rank each user's items."""
    cfg = ModelConfig()
    head = LikeHead(cfg, ParameterSet())
    g = np.random.default_rng(0)
    n = 2_000
    user_of = g.integers(0, 2, n).astype(np.int64)
    rows = g.integers(0, 40, n).astype(np.int64)
    attr = np.full((40, 2), -1, np.int32)
    attr[:, 0] = 1 + (np.arange(40) % 2)  # items 0, 2, ...: attribute 1; the others 2
    positive = (attr[rows, 0] == 1) == (user_of == 0)
    y = np.where(positive, 5.0, 1.0)
    p = head.pass_(np.zeros((2, STATS)), user_of, ["u", "v"],
                   np.array([id_code("u"), id_code("v")])[user_of], np.arange(40, dtype=np.int64), rows, attr,
                   np.full(n, 3.0), y, positive, np.arange(n, dtype=np.int64) * 60_000, np.zeros(n, np.bool_),
                   np.ones(n, np.bool_))
    late = slice(n // 2, n)
    assert p[late][positive[late]].min() > p[late][~positive[late]].max()
    assert head.z.take_touched().numel() > 0 and head.mse.dense_examples == n  # counted for the merger


def test_it_carries_what_a_user_attribute_likes_to_users_it_has_not_seen(tmp_path):
    """Women like item a, men item b; new users (each seen once) still get the right order from their
    gender: the item x user attribute features."""
    catalogue = tmp_path / "users.jsonl"
    n = 1_500
    genders = ["F" if k % 2 else "M" for k in range(n)]
    catalogue.write_text("".join(json.dumps({"user_id": f"u{k}", "attributes": [genders[k]]}) + "\n"
                                 for k in range(n)))
    head = LikeHead(ModelConfig(user_attributes=str(catalogue)), ParameterSet())
    rows = np.array([k % 4 // 2 for k in range(n)], np.int64)  # item 0 twice, then item 1 twice, ...
    positive = np.array([(rows[k] == 0) == (genders[k] == "F") for k in range(n)])
    users = [f"u{k}" for k in range(n)]
    p = head.pass_(np.zeros((n, STATS)), np.arange(n, dtype=np.int64), users,
                   np.array([id_code(u) for u in users], np.int64), np.array([7, 8], np.int64), rows,
                   np.full((2, 1), -1, np.int32), np.full(n, 3.0), np.where(positive, 5.0, 1.0), positive,
                   np.arange(n, dtype=np.int64) * 1000, np.ones(n, np.bool_), np.ones(n, np.bool_))
    late = slice(n // 2, n)
    assert p[late][positive[late]].min() > p[late][~positive[late]].max()
    unknown = head.attributes_of(["nobody"])
    assert (unknown == -1).all()


def test_user_attribute_catalogues(tmp_path):
    ml = user_attributes("movielens-100k")
    assert len(ml) == 943 and ml["1"] == ("age20s", "gender M", "occupation technician")
    jsonl = tmp_path / "u.jsonl"
    jsonl.write_text('{"user_id": 7, "attributes": ["a", "b"]}\n{"user_id": "x", "attributes": []}\n')
    assert user_attributes(str(jsonl)) == {"7": ("a", "b"), "x": ()}
    csv = tmp_path / "u.csv"
    csv.write_text("user_id,attributes\n7,a|b|c\n")
    assert user_attributes(str(csv)) == {"7": ("a", "b", "c")}
    assert user_attributes("") == {}
    codes = user_codes(["a", "b", "a", "c", "d", "e"])
    assert codes.shape == (USER_WIDTH,) and len(set(codes.tolist())) == USER_WIDTH and (codes >= 0).all()
    assert (user_codes(["a"]) == [codes[0], -1, -1, -1]).all()  # stable across calls: crc32


@pytest.mark.parametrize("setting, message", [
    ({"like_bits": 2}, "model.like_bits"), ({"like_prior": 0.0}, "model.like_prior"),
    ({"like_recent": 1.0}, "model.like_recent"), ({"user_attributes": "nowhere.csv"}, "model.user_attributes"),
])
def test_bad_like_settings_are_refused_up_front(setting, message):
    with pytest.raises(ConfigError, match=message):
        validate(RtrecConfig(model=ModelConfig(**setting)))


def test_with_the_head_off_its_catalogue_is_not_needed():
    validate(RtrecConfig(model=ModelConfig(like_bits=0, user_attributes="nowhere.csv")))


def _ratings(n=60):
    return [Inputs(Event(f"e{k}", f"u{k % 3}", f"i{k % 7}", "rating", 1_000 * k, float(1 + k % 5), "Drama"),
                   [0.1] * 7, (12, 2), id_code(f"u{k % 3}")) for k in range(n)]


def test_the_learner_reports_a_like_per_example_and_keeps_each_users_row():
    learner = OnlineLearner(ModelConfig(heldout_fraction=0.0))
    users = {f"u{k}": learner.new_user(f"u{k}") for k in range(3)}
    out = learner.process(_ratings(), users).examples
    assert len(out.like) == len(out.event_id) == 60 and all(0.0 < v < 1.0 for v in out.like)
    assert [users[f"u{k}"]["like"][1] for k in range(3)] == [20.0, 20.0, 20.0]
    _, delta, _ = learner.take_delta()
    assert {"like.z", "like.n", "like.mse"} <= set(delta)
    # A user whose state predates the head (no "like") starts afresh; nothing else changes.
    del users["u0"]["like"]
    more = learner.process(_ratings(3), users).examples
    assert users["u0"]["like"][1] == 1.0 and users["u1"]["like"][1] == 21.0 and len(more.like) == 3


def test_off_it_costs_nothing_and_changes_nothing_else():
    on, off = OnlineLearner(ModelConfig(heldout_fraction=0.0)), OnlineLearner(ModelConfig(heldout_fraction=0.0,
                                                                                          like_bits=0))
    users_on = {f"u{k}": on.new_user(f"u{k}") for k in range(3)}
    users_off = {f"u{k}": off.new_user(f"u{k}") for k in range(3)}
    a, b = on.process(_ratings(), users_on).examples, off.process(_ratings(), users_off).examples
    assert a.fused == b.fused and a.scores == b.scores  # the head feeds nothing back
    assert b.like == [] and "like" not in users_off["u0"] and "like.z" not in off.models.params.tables
    # A version without the head's tables loads into a job with it (they keep their own values), and back.
    on.models.params.load_state_dict(off.models.params.state_dict())
    off.models.params.load_state_dict(on.models.params.state_dict())


def test_eval_reports_the_likes_auc_and_log_loss_apart_from_the_ratings_errors():
    records = [{"event_id": f"e{k}", "user_id": "u", "item_id": f"i{k}", "ts": k, "type": "rating",
                "label": float(1 + k % 5), "scores": {"mf": 3.0}, "fused": 3.0 + (k % 2) / 10,
                "like": (k % 5) / 5 + 0.1} for k in range(50)]
    ev = evaluate(records, [])
    assert ev.models == ["mf", "fused", "like"]
    like = ev.overall["models"]["like"]["rating"]
    assert like["auc"] == 1.0 and math.isnan(like["mae"]) and like["n"] == 50
    assert ev.overall["fusion_share"]["rating"] is None or "like" not in ev.overall["fusion_share"]["rating"]
    assert "| like | 50 | – | – | 1.0000 |" in markdown(ev)
    assert any(line.startswith("like") and "AUC(>=4) 1.000" in line and "MAE" not in line
               for line in summary_lines(ev))
    assert evaluate([{**r, "like": None} for r in records], []).models == ["mf", "fused"]
