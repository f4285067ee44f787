"""The compiled fold (rtrec.features.compiled) against the feature engine: same events, same features."""

import pickle

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtrec.events import EVENT_TYPES, INTERACTION_TYPES, Event
from rtrec.features.compiled import CompiledGroup, compilable
from rtrec.features.definitions import ITEM_FEATURES, USER_FEATURES
from rtrec.features.engine import FeatureEngine, FeatureGroup
from rtrec.features.spec import MINUTE, RatingStats, Recency, SmoothedCTR, Window, WindowedCount
from tests.conftest import same_values

#: Every numeric kind, per-type counts and recency included (the item group has neither).
NUMERIC = FeatureGroup("user", "user_id", (
    WindowedCount("count", EVENT_TYPES, (Window("3m", 3 * MINUTE, 3), Window("20m", 20 * MINUTE, 5))),
    Recency("since", ("click", "rating", "purchase")),
    SmoothedCTR("ctr"),
    RatingStats("rating"),
))

raw_events = st.lists(
    st.tuples(st.integers(0, 40 * 3_600_000), st.sampled_from(EVENT_TYPES), st.sampled_from("abc"),
              st.sampled_from([1.0, 2.5, 4.0, 5.0])),
    min_size=1, max_size=60,
)


def _events(raw, key):
    out = []
    for n, (ts, t, entity, value) in enumerate(raw):
        v = value if t == "rating" else None
        item, user = (entity, "u") if key == "item_id" else ("i", entity)
        out.append(Event(f"e{n}", user, item, t, ts, v))
    return out


def _engine_reads(group, events, every_event):
    engine = FeatureEngine(group)
    states, reads = {}, {}
    for e in events:
        k = getattr(e, group.key)
        s = states.setdefault(k, engine.new_state())
        engine.update(s, e)
        if every_event:
            reads[e.event_id] = (k, engine.snapshot(s, e.ts))
        else:
            reads[k] = (e.event_id, engine.snapshot(s, e.ts))
    return states, reads


@pytest.mark.parametrize("group", [ITEM_FEATURES, NUMERIC], ids=["item", "numeric"])
@settings(max_examples=150, deadline=None)
@given(raw=raw_events, cut=st.integers(0, 60), every_event=st.booleans())
def test_compiled_fold_gives_the_engines_features_and_state_in_any_order_and_cut(group, raw, cut, every_event):
    """Events in any order (windows sliding, out-of-order events counted or dropped), folded in two
    batches with the vectors carried over: the features after each entity's last event (or after every
    event) and the state are the engine's."""
    events = _events(raw, group.key)
    compiled = CompiledGroup(group)
    store = CompiledGroup(group, sparse=bool(cut % 2)).store
    states: dict = {}
    got = {}
    for part in (events[:cut], events[cut:]):
        if not part:
            continue
        new, ids, raw_values, reads, _ = compiled.fold(part, group.key, states, every_event)
        # (stored as their non-zero values, as the user features are, or whole, as the item features are)
        states.update({k: store(v) for k, v in new.items()})
        states = {k: compiled.read_state(v) for k, v in states.items()}
        for k, row, i in zip(ids, raw_values.tolist(), reads.tolist(), strict=True):
            e = part[i]
            assert getattr(e, group.key) == k
            if every_event:
                got[e.event_id] = (k, compiled.snapshot(row, e.ts))
            else:
                got[k] = (e.event_id, compiled.snapshot(row, e.ts))
    engine_states, expected = _engine_reads(group, events, every_event)
    assert got.keys() == expected.keys()
    for k in expected:
        assert got[k][0] == expected[k][0]
        assert same_values(got[k][1], expected[k][1]), (k, got[k][1], expected[k][1])
        assert list(got[k][1]) == list(expected[k][1]) == group.outputs()
    for k, s in engine_states.items():
        back = compiled.to_engine_state(states[k])
        assert same_values(_plain(back), _plain(s))
        assert np.array_equal(compiled.from_engine_state(s), states[k], equal_nan=True)


def _plain(state):
    return pickle.loads(pickle.dumps(state))


def test_engine_state_stored_before_reads_and_folds_on_alike():
    """Item state as releases before the compiled fold stored it (the engine's list) is read into a vector that
    folds on to the same features as if the engine had gone on."""
    compiled, engine = CompiledGroup(ITEM_FEATURES), FeatureEngine(ITEM_FEATURES)
    events = [Event(f"e{n}", "u", "it", ("view", "click", "rating", "impression")[n % 4], 1_000_000 + n * 1_700_000,
                    4.0 if n % 4 == 2 else None) for n in range(200)]
    old = engine.new_state()
    for e in events[:120]:
        engine.update(old, e)
    stored = _plain(old)
    _, ids, raw, _, _ = compiled.fold(events[120:], "item_id", {"it": compiled.read_state(stored)})
    for e in events[120:]:
        engine.update(old, e)
    assert ids == ["it"]
    assert same_values(compiled.snapshot(raw[0].tolist(), events[-1].ts), engine.snapshot(old, events[-1].ts))


def test_a_stored_vector_of_other_definitions_is_refused_clearly():
    compiled = CompiledGroup(ITEM_FEATURES)
    with pytest.raises(ValueError, match="other item feature definitions"):
        compiled.read_state(np.zeros(compiled.size + 3).tobytes())
    other = CompiledGroup(FeatureGroup("item", "item_id", ITEM_FEATURES.features[:2]), sparse=True)
    assert other.size < compiled.size
    with pytest.raises(ValueError, match="other item feature definitions"):
        compiled.read_state(other.store(other.new_state()))


def test_a_stored_vector_keeps_only_its_non_zero_values():
    compiled = CompiledGroup(ITEM_FEATURES, sparse=True)
    v = compiled.fold([Event("e", "u", "it", "click", 5_000_000)], "item_id", {}).vectors["it"]
    stored = compiled.store(v)
    assert len(stored) == 3 + 10 * np.count_nonzero(v) < v.nbytes / 4
    assert np.array_equal(compiled.read_state(stored), v, equal_nan=True)


def test_only_numeric_groups_are_compiled():
    assert compilable(ITEM_FEATURES) and compilable(NUMERIC)
    assert not compilable(USER_FEATURES)
    with pytest.raises(ValueError, match="DecayedAffinity"):
        CompiledGroup(USER_FEATURES)


def test_item_core_gives_the_same_records_and_model_inputs_compiled_or_on_the_engine():
    """ItemCore folds the item features compiled; on the feature engine (definitions it cannot compile) the
    feature records, the models' dense view and the state are the same, batch after batch."""
    import orjson

    from rtrec.core.item import ItemCore
    from rtrec.datasets import movielens_events
    from rtrec.features.backfill import event_order

    events = movielens_events(3_000)
    compiled, engine = ItemCore(True, True), ItemCore(True, True)
    engine.compiled = engine._dense_of_raw = None
    assert compiled.compiled is not None
    stores: tuple[dict, dict] = ({}, {})
    for start in range(0, len(events), 700):
        due = sorted(events[start : start + 700], key=event_order)
        a, b = compiled.fold(due, stores[0].get), engine.fold(due, stores[1].get)
        stores[0].update(a.states)
        stores[1].update(b.states)
        assert all(type(s) is bytes for s in a.states.values()) and a.states.keys() == b.states.keys()
        records = ({k: orjson.loads(v) for k, v in (r.split("\0", 1) for r in out.features)} for out in (a.out, b.out))
        assert same_values(*records)
        assert a.model_inputs.keys() == b.model_inputs.keys()
        for item, dense in a.model_inputs.items():
            assert dense == pytest.approx(b.model_inputs[item], rel=1e-12, abs=1e-15)
    for item, stored in stores[0].items():
        assert same_values(_plain(compiled.compiled.to_engine_state(compiled.compiled.read_state(stored))),
                           _plain(stores[1][item]))


def test_the_models_dense_view_of_an_item_by_hand():
    """ITEM_DENSE of one item: ratings 4, 5 and 3 and two clicks a day ago, ten impressions just now."""
    import math

    from rtrec.core.item import ItemCore

    day, now = 86_400_000, 30 * 86_400_000
    events = ([Event(f"r{k}", "u", "it", "rating", now - day - 1000 + k, float(v)) for k, v in enumerate((4, 5, 3))]
              + [Event(f"c{k}", "u", "it", "click", now - day + k) for k in range(2)]
              + [Event(f"m{k}", "u", "it", "impression", now - 10 + k) for k in range(10)])
    compiled, engine = ItemCore(), ItemCore()
    engine.compiled = engine._dense_of_raw = None
    # interactions in the 7 days and in the 24 hours (hour buckets: the clicks' hour is its oldest) up to the last
    # event; impressions are not interactions
    long, short = 5, 2
    expected = [1.0, math.log1p(3) / 5, 1.0, math.sqrt(2 / 3), math.log1p(long) / 5, math.log((short * 7 + 1) / (long + 1)),
                (2 + 0.05 * 20) / (10 + 20)]
    for core in (compiled, engine):
        assert core.fold(events, {}.get).model_inputs["it"] == pytest.approx(expected, rel=1e-12)


# -- the user features: numeric declarations compiled, the others on the engine (HybridGroup) ---------------

user_events = st.lists(
    st.tuples(st.integers(0, 30 * 3_600_000), st.sampled_from(EVENT_TYPES), st.sampled_from("uvw"),
              st.sampled_from("abcd"), st.sampled_from([1.0, 3.5, 5.0]), st.sampled_from([None, "Drama", "Comedy"]),
              st.sampled_from([None, "s1", "s2"])),
    min_size=1, max_size=50,
)


def _user_events(raw):
    out = []
    for n, (ts, t, user, item, value, category, session) in enumerate(raw):
        if t == "search":
            out.append(Event(f"e{n}", user, None, t, ts, None, None, None, "space films", ["a", "b"], session))
        else:
            out.append(Event(f"e{n}", user, item, t, ts, value if t == "rating" else None, category, None, None,
                             None, session))
    return out


def _reference_dense(state, at):
    """USER_DENSE and the buckets from the feature engine's state of every user declaration, as the scalar
    code computed them before the compiled fold (written out here as the reference)."""
    import math

    n, mean, m2 = state[2 + 6]
    clicks, impressions = state[2 + 5]
    newest, events, session = state[0], state[1], state[2 + 3][2]
    dense = [math.log1p(n) / 5.0, (mean - 3.0) if n else 0.0, math.sqrt(m2 / n) if n > 1 else 0.0,
             math.log1p(events) / 5.0, math.log1p(session) / 5.0,
             math.log1p(max(at - newest, 0) / 1000.0) / 15.0 if newest is not None else 1.0,
             (clicks + 0.05 * 20.0) / (max(impressions, clicks) + 20.0)]
    return dense, (int(round(mean * 4)) if n else -1, (n + 1).bit_length() - 1)


@settings(max_examples=100, deadline=None)
@given(raw=user_events, cut=st.integers(0, 50), every_event=st.booleans())
def test_user_core_gives_the_engines_features_and_model_inputs(raw, cut, every_event):
    """UserCore folds the user features half on the engine, half compiled, and reads what the models need in
    NumPy: the feature records (after each user's last event, or every event), the models' dense inputs and
    buckets before each event and after the refreshed ones, and the state are the engine's, for events in any
    order over two batches, the state stored in between."""
    from models.online import OnlineLearner
    from rtrec.config import load_config
    from rtrec.core.outputs import Outputs
    from rtrec.core.user import UserBatch, UserCore, UserState

    assert USER_FEATURES.features[6].__class__ is RatingStats and USER_FEATURES.features[5].__class__ is SmoothedCTR
    cfg = load_config(overrides=["text.enabled=false", f"features.snapshots={'event' if every_event else 'batch'}"])
    core = UserCore(cfg, OnlineLearner(cfg.model))
    engine = FeatureEngine(USER_FEATURES)
    events = _user_events(raw)
    store: dict = {}
    reference: dict = {}
    got_records, expected_records = {}, {}
    for part in (events[:cut], events[cut:]):
        if not part:
            continue
        users = {u: UserState.read(store[u]) if u in store else UserState(core.features.new_state(), None, {})
                 for u in {e.user_id for e in part}}
        batch = UserBatch(users, Outputs())
        inputs = core._featurise(part, users, batch)
        store.update({u: s.to_state() for u, s in users.items()})
        last = {e.user_id: e for e in part}
        for e, x in zip(part, inputs, strict=True):
            state = reference.setdefault(e.user_id, engine.new_state())
            dense, buckets = _reference_dense(state, e.ts)
            assert x.dense == pytest.approx(dense, rel=1e-12, abs=1e-15) and x.buckets == buckets
            engine.update(state, e)
            if x.dense_after is not None:
                dense, buckets = _reference_dense(state, e.ts)
                assert x.dense_after == pytest.approx(dense, rel=1e-12, abs=1e-15) and x.buckets_after == buckets
            if every_event or last[e.user_id] is e:
                expected_records[(e.user_id, e.event_id)] = engine.snapshot(state, e.ts)
        refreshed = {pos for pos, x in enumerate(inputs) if x.dense_after is not None}
        lasts = {max(p for p, e in enumerate(part) if e.user_id == u and e.type in INTERACTION_TYPES)
                 for u in {e.user_id for e in part if e.type in INTERACTION_TYPES}}
        assert refreshed == lasts | {p for p, e in enumerate(part) if e.candidates}
        for r in batch.out.features:
            key, _, value = r.partition("\0")
            record = orjson.loads(value)
            got_records[(key, record["event_id"])] = record["features"]
    assert got_records.keys() == expected_records.keys()
    for k, f in expected_records.items():
        assert same_values(got_records[k], f) and list(got_records[k]) == list(f)
    for u, state in reference.items():
        assert same_values(_plain(core.features.to_engine_state(UserState.read(store[u]).features)), _plain(state))
