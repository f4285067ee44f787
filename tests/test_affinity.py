"""The fusion's per-user attribute correction (models.affinity)."""

import json

import numpy as np
import pytest

from models import sequential
from models.affinity import UNSET, WIDTH, UserAffinity, attribute_codes, catalogue_attributes
from models.online import Inputs, OnlineLearner
from rtrec.config import ConfigError, ModelConfig, RtrecConfig, TextConfig, validate
from rtrec.events import Event
from rtrec.features.model_inputs import id_code


def _reference(tables, user_of, codes, base, y, learn, prior):
    """affinity_pass as plain Python."""
    width = tables.shape[1] // 2
    out = []
    for i, u in enumerate(user_of):
        cs = []
        for c in codes[i]:
            if c < 0:
                break
            cs.append(int(c))
        a = sum(tables[u, c] / (tables[u, width + c] + prior) for c in cs)
        a = a / np.sqrt(len(cs)) if cs else 0.0
        out.append(a)
        if learn[i]:
            for c in cs:
                tables[u, c] += y[i] - (base[i] + a)
                tables[u, width + c] += 1
    return np.array(out, np.float32)


def _stream(n=400, users=5, buckets=8, seed=3):
    g = np.random.default_rng(seed)
    codes = np.full((n, 3), -1, np.int32)
    for i in range(n):
        k = g.integers(0, 4)
        codes[i, :k] = g.choice(buckets, k, replace=False)
    return (g.integers(0, users, n).astype(np.int64), codes, g.uniform(1, 5, n).astype(np.float32),
            g.integers(1, 6, n).astype(np.float32), g.random(n) < 0.9)


def test_the_compiled_pass_equals_plain_python_and_learns_in_place():
    user_of, codes, base, y, learn = _stream()
    tables = np.zeros((5, 16), np.float32)
    expected_tables = tables.astype(np.float64)
    expected = _reference(expected_tables, user_of, codes, base, y, learn, 10.0)
    got = sequential.affinity_pass(tables, user_of, np.arange(len(user_of)), codes, base, y, learn, 10.0)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(tables, expected_tables, atol=1e-4)
    assert np.abs(got).max() > 0.05  # it did learn something


def test_the_correction_does_not_depend_on_how_the_stream_is_cut():
    user_of, codes, base, y, learn = _stream()
    whole = np.zeros((5, 16), np.float32)
    rows = np.arange(len(user_of))
    one = sequential.affinity_pass(whole, user_of, rows, codes, base, y, learn, 5.0)
    cut = np.zeros((5, 16), np.float32)
    parts = [sequential.affinity_pass(cut, user_of[s], rows[s], codes, base[s], y[s], learn[s], 5.0)
             for s in (slice(0, 7), slice(7, 150), slice(150, 400))]
    np.testing.assert_array_equal(np.concatenate(parts), one)
    np.testing.assert_array_equal(cut, whole)


def test_candidate_scores_are_the_corrections_the_pass_would_give_without_learning():
    user_of, codes, base, y, learn = _stream()
    tables = np.zeros((5, 16), np.float32)
    sequential.affinity_pass(tables, user_of, np.arange(len(user_of)), codes, base, y, learn, 10.0)
    cand = np.arange(12).reshape(3, 4)[:, ::-1].copy()
    got = sequential.affinity_scores(tables[[0, 2, 4]], cand, codes, 10.0)
    for b, u in enumerate([0, 2, 4]):
        frozen = tables.copy()
        want = sequential.affinity_pass(frozen, np.full(4, u, np.int64), cand[b], codes, np.zeros(4, np.float32),
                                        np.zeros(4, np.float32), np.zeros(4, np.bool_), 10.0)
        np.testing.assert_allclose(got[b], want, atol=1e-6)


def test_catalogue_files_and_their_errors(tmp_path):
    jsonl = tmp_path / "items.jsonl"
    jsonl.write_text(json.dumps({"item_id": 7, "attributes": ["Western", "1950s"]}) + "\n"
                     + json.dumps({"item_id": "8"}) + "\n")
    assert catalogue_attributes(str(jsonl)) == {"7": ("Western", "1950s"), "8": ()}
    csv = tmp_path / "items.csv"
    csv.write_text("item_id,attributes\n7,Western|1950s\n8,\n")
    assert catalogue_attributes(str(csv)) == {"7": ("Western", "1950s"), "8": ()}
    with pytest.raises(FileNotFoundError, match="model.item_attributes"):
        catalogue_attributes(str(tmp_path / "missing.jsonl"))
    ml = catalogue_attributes("movielens-100k")
    assert ml["1"] == ("Animation", "Children's", "Comedy", "1990s")  # Toy Story (1995)
    with pytest.raises(ConfigError, match="affinity_buckets"):
        validate(RtrecConfig(model=ModelConfig(affinity_buckets=-1)))
    with pytest.raises(ConfigError, match="existing .jsonl"):
        validate(RtrecConfig(model=ModelConfig(item_attributes=str(tmp_path / "missing.jsonl"))))
    validate(RtrecConfig(model=ModelConfig(item_attributes=str(csv))))
    with pytest.raises(ConfigError, match="text.catalogue"):  # the same check for the texts' catalogue
        validate(RtrecConfig(text=TextConfig(catalogue=str(tmp_path / "texts.txt"))))
    validate(RtrecConfig(model=ModelConfig(item_attributes=str(tmp_path / "missing.jsonl"), affinity_buckets=0)))


def test_item_rows_take_the_catalogue_then_the_events_category(tmp_path):
    cat = tmp_path / "items.jsonl"
    cat.write_text(json.dumps({"item_id": "a", "attributes": ["Western", "1950s", "Western"]}) + "\n")
    aff = UserAffinity(ModelConfig(item_attributes=str(cat), affinity_buckets=64))
    aff.note("c", "Horror")  # before its row exists
    codes = aff.update(["a", "b", "c"])
    assert codes.shape[1] == WIDTH
    assert codes[0].tolist() == attribute_codes(["Western", "1950s"], 64) + [-1] * (WIDTH - 2)
    assert codes[1, 0] == UNSET  # not known yet
    assert codes[2].tolist() == attribute_codes(["Horror"], 64) + [-1] * (WIDTH - 1)
    aff.note("b", "Drama")  # after: its row is filled
    aff.note("a", "Comedy")  # the catalogue wins
    aff.note("c", "Comedy")  # the first category wins
    codes = aff.update(["a", "b", "c", "d"])
    assert codes[1].tolist() == attribute_codes(["Drama"], 64) + [-1] * (WIDTH - 1)
    assert codes[0].tolist() == attribute_codes(["Western", "1950s"], 64) + [-1] * (WIDTH - 2)
    assert codes[2].tolist() == attribute_codes(["Horror"], 64) + [-1] * (WIDTH - 1)
    assert codes[3, 0] == UNSET
    # An unknown row corrects nothing and learns nothing.
    t = np.zeros((1, 128), np.float32)
    got = aff.learn(t, np.zeros(2, np.int64), np.array([3, 3]), np.zeros(2, np.float32), np.full(2, 5.0, np.float32),
                    np.ones(2, np.bool_), ["a", "b", "c", "d"])
    assert got.tolist() == [0.0, 0.0] and not t.any()


def _catalogue(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps({"item_id": f"i{k}", "attributes": ["Western" if k % 2 else "Musical"]}) + "\n"
                            for k in range(200)))
    return str(path)


def _ratings(n, seed):
    """Users who rate Westerns (odd items) 5 and Musicals 1, whatever the item."""
    g = np.random.default_rng(seed)
    out = []
    for i in range(n):
        u, k = int(g.integers(0, 30)), int(g.integers(0, 40))
        out.append(Event(f"e{seed}-{i}", f"u{u}", f"i{k}", "rating", 1000 + i, 5.0 if (k % 2) == (u % 2) else 1.0))
    return out


def _inputs(events):
    return [Inputs(e, [0.0] * 7, (-1, 0), id_code(e.user_id)) for e in events]


def _run(cfg, batches):
    learner = OnlineLearner(cfg)
    users, errors = {}, []
    for batch in batches:
        for e in batch:
            users.setdefault(e.user_id, learner.new_user(e.user_id))
        p = learner.process(_inputs(batch), users).examples
        errors.append(np.abs(np.array(p.fused) - np.array(p.label)).mean())
    return learner, users, errors


def test_the_learner_corrects_the_blend_by_what_each_user_thinks_of_an_attribute(tmp_path):
    # Half the users love Westerns and hate Musicals, the other half the reverse: the item ids say nothing
    # a global blend could use, each user's attribute residuals say it all.
    batches = [_ratings(300, seed) for seed in range(6)]
    cfg = ModelConfig(heldout_fraction=0.0, item_attributes=_catalogue(tmp_path))
    on, users, with_it = _run(cfg, batches)
    _, users_off, without = _run(ModelConfig(heldout_fraction=0.0, item_attributes=cfg.item_attributes,
                                             affinity_buckets=0), batches)
    assert with_it[-1] < 0.6 * without[-1]
    assert users["u1"]["aff"].shape == (2 * cfg.affinity_buckets,) and "aff" not in users_off["u1"]
    # A user who only asks for recommendations keeps no table.
    request = Event("q", "viewer", None, "view", 10**6, candidates=["i1", "i2"])
    on.process(_inputs([request]), users | {"viewer": (viewer := on.new_user("viewer"))})
    assert "aff" not in viewer
    # The per-model scores are the models' own: the correction is the fusion's.
    assert on.process(_inputs(_ratings(50, 99)), users).examples.scores.keys() == {"mf", "ftrl", "ranker"}


def test_state_written_before_the_correction_reads_and_starts_a_table(tmp_path):
    learner = OnlineLearner(ModelConfig(heldout_fraction=0.0, item_attributes=_catalogue(tmp_path)))
    old = learner.new_user("u1")
    old.pop("aff", None)
    learner.process(_inputs(_ratings(20, 1)), {u: (old if u == "u1" else learner.new_user(u))
                                                for u in {e.user_id for e in _ratings(20, 1)}})
    assert old["aff"].dtype == np.float32 and old["aff"][-learner.affinity.buckets:].sum() > 0


def test_recommendations_rank_candidates_by_the_users_attribute_correction(tmp_path):
    cfg = ModelConfig(heldout_fraction=0.0, item_attributes=_catalogue(tmp_path), top_k=2, affinity_ranking=True)
    learner, users, _ = _run(cfg, [_ratings(300, seed) for seed in range(4)])
    # Items no one has rated yet, known only by their attributes: u1 (odd) loves Westerns (odd items), u2 Musicals.
    fans = {"u1": ["i101", "i103"], "u2": ["i102", "i104"]}
    for user, liked in fans.items():
        request = Event(f"q{user}", user, None, "view", 10**6, candidates=["i101", "i102", "i103", "i104"])
        x = _inputs([request])
        x[0].dense_after, x[0].buckets_after = x[0].dense, x[0].buckets
        rec = learner.process(x, users).recommendations[0]
        assert sorted(rec.items) == liked


def test_by_default_lists_are_ranked_by_the_blend_alone(tmp_path):
    """model.affinity_ranking off (the default): the correction changes predictions, not the lists."""
    batches = [_ratings(200, seed) + [Event(f"v{seed}", "u1", "i7", "view", 10**6 + seed)] for seed in range(3)]

    def lists(**kw):
        learner = OnlineLearner(ModelConfig(heldout_fraction=0.0, item_attributes=_catalogue(tmp_path), **kw))
        users, out = {}, []
        for batch in batches:
            for e in batch:
                users.setdefault(e.user_id, learner.new_user(e.user_id))
            x = _inputs(batch)
            for i in x:
                i.dense_after, i.buckets_after = i.dense, i.buckets
            out += [(r.event.event_id, r.items, r.scores) for r in learner.process(x, users).recommendations]
        return out

    plain = lists(affinity_buckets=0)
    assert lists() == plain
    assert lists(affinity_ranking=True) != plain


def test_the_texts_catalogue_reads_the_same_files(tmp_path):
    from models.search import catalogue_texts

    (tmp_path / "t.jsonl").write_text(json.dumps({"item_id": 7, "text": "Shane (1953)"}) + "\n")
    (tmp_path / "t.csv").write_text("item_id,text\n7,Shane (1953)\n")
    (tmp_path / "t.txt").write_text("7 Shane\n")
    for name in ("t.jsonl", "t.csv"):
        assert catalogue_texts(str(tmp_path / name)) == {"7": "Shane (1953)"}
    with pytest.raises(ValueError, match="text.catalogue"):
        catalogue_texts(str(tmp_path / "t.txt"))
