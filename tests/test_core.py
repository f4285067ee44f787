"""The per-batch core without Flink: admission, snapshots, coalesced top-k, state formats, records and schemas."""

import time

import jsonschema
import numpy as np
import orjson
import pytest
import torch

from models.online import Inputs, OnlineLearner, OpenImpression
from models.params import (
    RowDelta,
    delta_from_bytes,
    delta_to_bytes,
    delta_to_plain,
    heldout_from_bytes,
    to_bytes,
)
from rtrec.config import load_config
from rtrec.core.item import ItemCore
from rtrec.core.user import UserCore, UserState
from rtrec.evaluation import Example
from rtrec.events import Event
from rtrec.features.backfill import event_order
from rtrec.features.definitions import USER_FEATURES
from rtrec.features.engine import FeatureEngine
from rtrec.features.model_inputs import id_code
from rtrec.records import schema

SCHEMAS = {"prediction": schema("predictions"), "recommendation": schema("recommendations"),
           "feature": schema("features")}


def _cfg(*overrides):
    return load_config(overrides=["text.enabled=false", *overrides])


def _core(*overrides):
    cfg = _cfg(*overrides)
    learner = OnlineLearner(cfg.model) if cfg.model.enabled else None
    return UserCore(cfg, learner), cfg


def _values(events):
    return [e.to_json() for e in events], [0] * len(events), list(range(len(events)))


def _step(core, events, store, watermark=0, now_ms=10_000):
    values, parts, offsets = _values(events)
    batch = core.step(values, parts, offsets, watermark, store.get, now_ms=now_ms)
    store.update({u: s.to_state() for u, s in batch.users.items()})
    return batch


def _records(topic_records):
    return [(k, orjson.loads(v)) for k, _, v in (r.partition("\x00") for r in topic_records)]


def _session(user="u", start=1_000):
    return [
        Event(f"{user}-1", user, "a", "impression", start),
        Event(f"{user}-2", user, "a", "click", start + 10),
        Event(f"{user}-3", user, "b", "rating", start + 20, 4.0, "Drama"),
        Event(f"{user}-4", user, None, "search", start + 30, query="space films", candidates=["a", "b", "c"]),
        Event(f"{user}-5", user, "c", "view", start + 40),
        Event(f"{user}-6", user, "d", "impression", start + 50),
    ]


def test_every_record_is_accepted_a_duplicate_or_a_dead_letter():
    core, _ = _core()
    store = {}
    events = _session()
    values, parts, offsets = _values(events)
    values += [b"{not json", values[1]]  # a broken record and a duplicate of the click
    parts += [0, 0]
    offsets += [6, 7]
    late = Event("late", "u", "x", "view", 1)  # far behind the watermark
    values.append(late.to_json())
    parts.append(0)
    offsets.append(8)
    a = core.admit(values, parts, offsets, 61_000, store.get, now_ms=10_000)  # late: before 1,000
    assert a.records == 9 and len(a.events) == 6 and a.duplicates == 1 and a.late == 1
    assert a.records == len(a.events) + a.duplicates + a.late + 1
    assert [s for s in a.out.dead_stages] == ["validate", "dedup", "lateness"]
    assert a.out.dead_sources[0] == "events/0@6"
    # the same ids in a later batch are duplicates too (they live in the user's state)
    store.update({u: s.to_state() for u, s in core.process(a).users.items()})
    again = core.admit(values[:2], parts[:2], offsets[:2], 0, store.get, now_ms=20_000)
    assert not again.events and again.duplicates == 2


def test_one_feature_snapshot_per_user_and_batch_equals_the_last_per_event_one():
    batch_core, _ = _core("features.snapshots=batch")
    event_core, _ = _core("features.snapshots=event")
    events = _session("u") + _session("w", 5_000) + [Event("u-7", "u", "e", "click", 9_000),
                                                      Event("u-8", "u", "a", "impression", 8_000)]
    per_batch = _records(_step(batch_core, events, {}).out.features)
    per_event = _records(_step(event_core, events, {}).out.features)
    assert len(per_event) == len(events) and sorted(k for k, _ in per_batch) == ["u", "w"]
    last = {}
    for k, f in per_event:
        last[k] = f
    assert dict(per_batch) == last
    for _, f in per_batch:
        jsonschema.validate(f, SCHEMAS["feature"])


def test_item_snapshots_per_batch_equal_the_last_per_event_ones():
    events = sorted(_session("u") + _session("w", 1_005), key=event_order)
    events = [e for e in events if e.item_id is not None]
    one = ItemCore(True, True, every_event=False).fold(events, {}.get)
    every = ItemCore(True, True, every_event=True).fold(events, {}.get)
    last = {}
    for k, f in _records(every.out.features):
        last[k] = f
    assert dict(_records(one.out.features)) == last and len(one.out.features) == len(last) == 4
    assert set(one.model_inputs) == {"a", "b", "c", "d"} and one.states.keys() == every.states.keys()


def _learner_inputs(events):
    return [Inputs(e, [0.1] * 7, (12, 2), id_code(e.user_id), [0.2] * 7, (13, 2)) for e in events]


@pytest.mark.parametrize("text", [False, True])
def test_the_coalesced_top_k_equals_the_last_per_event_refresh(text):
    cfg = load_config(overrides=[f"text.enabled={str(text).lower()}", "model.heldout_fraction=0"])
    search = None
    if text:
        from models.search import SearchRanker

        search = SearchRanker.shared(cfg.text)
    results = {}
    for every in (True, False):
        learner = OnlineLearner(cfg.model)
        learner.search = search
        learner.refresh_every_event = every
        learner.models.rows([str(i) for i in range(1, 60)])
        events = [Event(f"{u}-{i}", u, str(1 + (i * 7 + len(u)) % 50), "rating" if i % 3 else "click", 1000 + i,
                        float(1 + i % 5) if i % 3 else None) for u in ("1", "2", "3") for i in range(8)]
        events.insert(5, Event("req", "1", None, "view", 1003, candidates=["4", "5", "6"]))
        events.append(Event("imp", "2", "9", "impression", 1100))  # not an interaction: no refresh after it
        users = {u: learner.new_user(u) for u in ("1", "2", "3")}
        results[every] = learner.process(_learner_inputs(events), users).recommendations
    every, coalesced = results[True], results[False]
    refreshes = [r for r in every if not r.event.candidates]
    assert len(refreshes) == 24 and len([r for r in coalesced if not r.event.candidates]) == 3
    last = {}
    for r in refreshes:
        last[r.event.user_id] = r
    got = {r.event.user_id: r for r in coalesced if not r.event.candidates}
    for u, r in last.items():
        assert got[u].event == r.event and got[u].items == r.items and got[u].scores == r.scores
    # a candidates request is still answered for its own event
    assert [r.items for r in coalesced if r.event.event_id == "req"] == [r.items for r in every
                                                                        if r.event.event_id == "req"]


def test_todays_user_state_format_restores_and_learns():
    """A user entry as releases up to 0.1.0 stored it: no format key, impressions as tuples (5 fields
    before text features, 6 after)."""
    core, cfg = _core()
    learner = core.learner
    learner.models.rows(["a", "b"])
    model = learner.new_user("u")
    model["recent"] = ["z"]
    model["impressions"] = {
        "a": (900, "old-imp-a", [0.0] * 7, (-1, 0), id_code("u")),
        "b": (950, "old-imp-b", [0.0] * 7, (-1, 0), id_code("u"), [0.1, 0.2]),
    }
    engine = FeatureEngine(USER_FEATURES)  # (the state of every declaration, as format 2 and 1 kept it)
    features = engine.new_state()
    engine.update(features, Event("x0", "u", "z", "view", 800))
    stored = {"features": features, "model": model, "seen": {"x0": 9_000}}
    state = UserState.read(stored)
    assert state.model is model and state.seen == {"x0": 9_000}
    store = {"u": stored}
    expired = core.expire([("u", "a", "old-imp-a"), ("u", "b", "old-imp-b")], store.get)
    assert sorted(expired.predictions.item_id) == ["a", "b"] and set(expired.predictions.label) == {0.0}
    assert expired.users["u"].model["impressions"] == {}
    store["u"] = expired.users["u"].to_state()
    batch = _step(core, [Event("x0", "u", "c", "rating", 1000, 5.0), Event("x1", "u", "c", "rating", 1001, 5.0)],
                  store)
    assert batch.examples == 1  # x0 was seen: a duplicate
    assert store["u"]["format"] == 3 and UserState.read(store["u"]).features[0][1] == 2  # (events folded in)
    with pytest.raises(ValueError, match="newer"):
        UserState.read({**store["u"], "format": 99})


def test_open_impressions_are_typed_and_stored_as_plain_tuples():
    import pickle

    old = OpenImpression.read((5, "e", [1.0], (1, 2), 7))
    assert old == OpenImpression(5, "e", [1.0], (1, 2), 7, [0.0, 0.0])
    assert OpenImpression.read(old) is old
    stored = pickle.loads(pickle.dumps(old))
    assert type(stored) is tuple and b"OpenImpression" not in pickle.dumps(old)
    assert OpenImpression.read(stored) == old
    assert old.scores is None  # (stored up to 0.1.0: learned and scored at its outcome, as then)
    scored = OpenImpression(5, "e", [1.0], (1, 2), 7, [0.1, 0.2], [0.3, 0.4, 0.5, 0.6, 0.0])
    assert OpenImpression.read(pickle.loads(pickle.dumps(scored))) == scored


def test_deltas_as_bytes_round_trip_and_read_the_earlier_format():
    import pickle

    d = {"mf.q": RowDelta("item", ["a", "b"], torch.arange(6.0).reshape(2, 3), torch.tensor([1.0, 2.0])),
         "ftrl.z": RowDelta("hashed", torch.tensor([4, 9]), torch.tensor([0.5, -1.5]), torch.tensor([3.0, 1.0])),
         "w": RowDelta("dense", torch.zeros(1, dtype=torch.long), torch.full((1, 2, 2), 7.0), torch.tensor([5.0]))}
    format_2 = pickle.dumps(("rtrec-delta-2", {  # what releases before the one-buffer format wrote
        n: (x.kind, x.keys if x.kind == "item" else x.keys.numpy(), x.values.numpy(), x.counts.numpy())
        for n, x in d.items()}))
    for data in (delta_to_bytes(d), format_2, to_bytes(delta_to_plain(d))):
        back = delta_from_bytes(data)
        assert list(back) == list(d) and back["mf.q"].keys == ["a", "b"]
        for name, x in d.items():
            assert back[name].kind == x.kind, name
            if x.kind != "item":
                assert torch.equal(back[name].keys, x.keys), name
            assert torch.equal(back[name].values, x.values) and torch.equal(back[name].counts, x.counts), name
    assert delta_from_bytes(delta_to_bytes({})) == {}
    assert heldout_from_bytes(to_bytes([{"y": 1.0}])) == [{"y": 1.0}]


def test_touched_rows_are_handed_over_without_scanning():
    learner = OnlineLearner(_cfg().model)
    users = {"u": learner.new_user("u")}
    learner.process(_learner_inputs([Event("e1", "u", "a", "rating", 1, 4.0), Event("e2", "u", "b", "click", 2)]),
                    users)
    _, delta, _ = learner.take_delta()
    assert sorted(delta["mf.q"].keys) == ["a", "b"] and delta["mf.mu"].counts.tolist() == [2.0]
    assert delta["ftrl.z"].keys.numel() == int((learner.models.ftrl.z.data != 0).sum())
    assert learner.take_delta() is None  # nothing since


def test_a_batch_writes_records_that_match_their_schemas():
    core, _ = _core()
    store = {}
    batch = _step(core, _session("u") + _session("w", 2_000), store)
    preds = _records(batch.out.predictions)
    recs = _records(batch.out.recommendations)
    assert len(preds) == 4 and len(recs) == 4  # per user: a click and a rating; the search and the last refresh
    for k, p in preds:
        jsonschema.validate(p, SCHEMAS["prediction"])
        assert k == p["user_id"]
    for k, r in recs:
        jsonschema.validate(r, SCHEMAS["recommendation"])
        assert k == r["user_id"]
    assert {r["request"] for _, r in recs} == {"refresh", "search"}
    assert {r["event_id"] for _, r in recs if r["request"] == "refresh"} == {"u-5", "w-5"}
    # Impressions at 1,000, 1,050, 2,000 and 2,050 ms: their windows close on the next whole seconds.
    assert {at: len(v) for at, v in batch.impressions_due.items()} == {1_801_000: 1, 1_802_000: 2, 1_803_000: 1}
    assert batch.delta is not None and batch.delta.as_message()[0] == "delta"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**preds[0][1], "label": "5"}, SCHEMAS["prediction"])
    assert np.isfinite([p["fused"] for _, p in preds]).all()


def test_merger_messages_travel_and_are_stored_as_plain_tuples():
    from models.merger import DeltaMessage, ItemFeaturesMessage, MergerCore, read_message

    core, _ = _core()
    batch = _step(core, _session("u"), {})
    message = batch.delta.as_message()
    assert type(message) is tuple and all(type(v) in (str, int, bytes) for v in message)
    assert read_message(message) == batch.delta and type(read_message(message)) is DeltaMessage
    items = ItemFeaturesMessage({"a": [1.0] * 7})
    assert read_message(items.as_message()) == items
    merger = MergerCore(core.cfg.model)
    merger.add(read_message(message))
    merger.add(items)
    assert merger.pending and merger.items == {"a": [1.0] * 7}
    with pytest.raises(ValueError, match="unknown merger message"):
        read_message(("model", 1))


def _cut_into(events, size: int, *overrides) -> dict[str, dict[str, float]]:
    """Every example's prediction per model (and its label), the stream fed in batches of ``size``."""
    core, _ = _core(*overrides)
    store: dict = {}
    out: dict[str, dict[str, float]] = {}
    for s in range(0, len(events), size):
        p = _step(core, events[s : s + size], store, now_ms=events[-1].ts + 1000).predictions
        for i, eid in enumerate(p.event_id if p is not None else []):
            out[eid] = {**{m: v[i] for m, v in p.scores.items()}, "fused": p.fused[i], "label": p.label[i]}
    return out


def _mae(preds: dict[str, dict[str, float]], model: str) -> float:
    return float(np.mean([abs(p[model] - p["label"]) for p in preds.values()]))


@pytest.mark.parametrize("step", [32, 0])
def test_the_same_stream_cut_into_batches_of_50_and_of_2000_learns_alike(step):
    """MF and FTRL go example by example; the ranker and the fusion predict and step in chunks of 32
    examples (model.step_examples) counted along the stream, a chunk open at a batch's end closing
    in the next: every model's predictions are the same whatever the cut. With one step per batch (0)
    a 2,000-example batch is predicted with weights 2,000 examples old, and the MAE differs."""
    from rtrec.datasets import movielens_events

    events = movielens_events(10_000)
    small, large = (_cut_into(events, n, f"model.step_examples={step}") for n in (50, 2000))
    assert small.keys() == large.keys() and len(small) == len(events)
    for model in ("mf", "ftrl") + (("ranker", "fused") if step else ()):
        assert max(abs(small[e][model] - large[e][model]) for e in small) < 1e-5, model
    if not step:
        gaps = {m: abs(_mae(small, m) - _mae(large, m)) for m in ("ranker", "fused")}
        assert max(gaps.values()) > 0.003, gaps


def test_the_local_pipeline_runs_a_trainer_per_subtask_at_parallelism_2():
    """flink.parallelism=2: each shard batch goes to the core of the subtask Flink gives the shard (so
    each trainer learns from its own users only), and both trainers adopt every merged version."""
    import orjson

    from rtrec.core.local import LocalPipeline
    from rtrec.datasets import movielens_events
    from rtrec.sharding import default_max_parallelism, shard_of, subtask_of_shard

    events = movielens_events(3000)
    pipe = LocalPipeline(_cfg("flink.parallelism=2"))
    seen: list[set[str]] = [set(), set()]
    for core, users in zip(pipe.user_cores, seen, strict=True):  # record which users each core is given
        def step(values, *args, _step=core.step, _users=users):
            _users.update(orjson.loads(v)["user_id"] for v in values)
            return _step(values, *args)
        core.step = step
    pipe.run(events, 1000)
    shards, max_p = pipe.cfg.flink.key_shards, default_max_parallelism(2)
    owner = {e.user_id: subtask_of_shard(shard_of(e.user_id, shards), 2, max_p) for e in events}
    assert seen[0] and seen[1] and seen[0] | seen[1] == set(owner)
    assert all(owner[u] == k for k in range(2) for u in seen[k])
    assert [learner.trainer_id for learner in pipe.learners] == [0, 1]
    assert pipe.merger.version == 3 and all(learner.version == 3 for learner in pipe.learners)
    assert pipe.timings.events == 3000 and len(pipe.predictions) == 3000


def test_the_local_pipeline_cuts_a_shard_batch_as_the_user_stage_does():
    """A batch interval's shard batch larger than flink.max_batch_events goes through the core in parts
    (UserStage.process_batch); LocalPipeline, which the benchmarks run, cuts it the same way."""
    from rtrec.core.local import LocalPipeline
    from rtrec.datasets import movielens_events

    events = movielens_events(700)
    pipe = LocalPipeline(_cfg("model.enabled=false", "flink.shards=1", "flink.max_batch_events=300"))
    pipe.run(events, 700)
    assert pipe.timings.batches == 3  # 300 + 300 + 100
    assert pipe.timings.outputs["dead_letters"] == 0 and pipe.timings.events == 700


def test_prediction_records_take_each_field_from_its_own_column():
    """records.encode_predictions writes one record per example, key its user, every field from the
    example's own row of each column, and valid against the predictions schema."""
    import jsonschema
    import orjson

    from models.online import Predictions
    from rtrec.core.outputs import SEPARATOR, Outputs
    from rtrec.records import encode_predictions

    n = 5
    p = Predictions([f"e{i}" for i in range(n)], [f"u{i % 2}" for i in range(n)], [f"i{i}" for i in range(n)],
                    [1_000 + i for i in range(n)], ["rating", "click", "rating", "purchase", "rating"],
                    [4.0, 1.0, 2.0, 1.0, 5.0], {"mf": [3.0 + i / 10 for i in range(n)], "ftrl": [0.5 + i / 100 for i in range(n)]},
                    [3.5 + i / 10 for i in range(n)], [False, True, False, False, True])
    out = Outputs()
    encode_predictions(p, 7, 3, out.predictions)
    assert len(out.predictions) == n
    for i, record in enumerate(out.predictions):
        key, value = record.split(SEPARATOR, 1)
        d = orjson.loads(value)
        jsonschema.validate(d, SCHEMAS["prediction"])
        assert key == p.user_id[i]
        assert d == {"event_id": p.event_id[i], "user_id": p.user_id[i], "item_id": p.item_id[i], "ts": p.ts[i],
                     "type": p.type[i], "label": p.label[i], "model_version": 7,
                     "scores": {"mf": p.scores["mf"][i], "ftrl": p.scores["ftrl"][i]}, "fused": p.fused[i],
                     "heldout": p.heldout[i], "trainer": 3}
    # With the fusion's per-user correction on, each record carries its own row's correction too.
    p.correction = [i / 100 - 0.02 for i in range(n)]
    out = Outputs()
    encode_predictions(p, 7, 3, out.predictions)
    for i, record in enumerate(out.predictions):
        key, value = record.split(SEPARATOR, 1)
        d = orjson.loads(value)
        jsonschema.validate(d, SCHEMAS["prediction"])
        assert key == p.user_id[i] and d["event_id"] == p.event_id[i] and d["fused"] == p.fused[i]
        assert d["correction"] == p.correction[i] and d["scores"]["ftrl"] == p.scores["ftrl"][i]
        assert Example.from_record(d).correction == p.correction[i]
    # With the like head on as well, each its own row's like (null: an outcome scored before the head).
    p.like = [None, 0.25, 0.5, 0.75, 1.0]
    out = Outputs()
    encode_predictions(p, 7, 3, out.predictions)
    for i, record in enumerate(out.predictions):
        d = orjson.loads(record.split(SEPARATOR, 1)[1])
        jsonschema.validate(d, SCHEMAS["prediction"])
        assert d["like"] == p.like[i] and d["correction"] == p.correction[i] and d["event_id"] == p.event_id[i]
        assert Example.from_record(d).like == p.like[i]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**d, "like": 1.5}, SCHEMAS["prediction"])
    p.correction = []  # (the head without the correction)
    out = Outputs()
    encode_predictions(p, 7, 3, out.predictions)
    d = orjson.loads(out.predictions[3].split(SEPARATOR, 1)[1])
    assert d["like"] == 0.75 and "correction" not in d


@pytest.mark.parametrize("parallelism", [1, 2])
def test_unclicked_impressions_become_negatives_once_the_watermark_passes_their_window(parallelism):
    """LocalPipeline fires the impressions' timers as the UserStage does: every timer the watermark passed,
    per subtask, in one expiry; the rest at the end of the stream. Timers fall on whole seconds."""
    from rtrec.core.local import LocalPipeline
    from rtrec.core.user import IMPRESSION_TIMER_MS

    window_ms = 60_000
    events = []
    for u in range(6):
        user = f"u{u}"
        events += [Event(f"{user}-seen", user, "a", "impression", 10_000 + u),
                   Event(f"{user}-clicked", user, "b", "impression", 10_100 + u),
                   Event(f"{user}-click", user, "b", "click", 20_000 + u),
                   Event(f"{user}-late", user, "c", "impression", 500_000 + u)]
    events.sort(key=lambda e: e.ts)
    events.append(Event("later", "u0", "d", "view", 200_000))  # moves the watermark past the first windows
    events.sort(key=lambda e: e.ts)
    pipe = LocalPipeline(_cfg(f"flink.parallelism={parallelism}", f"model.attribution_window_ms={window_ms}"))
    expired_during = []
    expire = pipe.expire

    def spy(watermark):
        before = len(pipe.predictions)
        expire(watermark)
        expired_during.append((watermark, pipe.predictions.event_id[before:]))

    pipe.expire = spy
    pipe.run(events, 5)
    p = pipe.predictions
    negatives = {e: (t, y) for e, t, y in zip(p.event_id, p.type, p.label, strict=True) if t == "impression"}
    assert negatives.keys() == {f"u{u}-{k}" for u in range(6) for k in ("seen", "late")}
    assert {y for _, y in negatives.values()} == {0.0}
    # The first window's impressions expired while the stream went on, the late ones only at its end.
    during = {e for w, ids in expired_during if w < 2**62 for e in ids}
    assert {f"u{u}-seen" for u in range(6)} <= during and not any(e.endswith("-late") for e in during)
    assert not any(pipe.due) and not any(len(times) for times in pipe.due_times)
    # Each timer on a whole second, and after the window.
    core, _ = _core(f"model.attribution_window_ms={window_ms}")
    batch = core.step([e.to_json() for e in events[:3]], [0] * 3, list(range(3)), -(2**62), lambda _: None)
    assert batch.impressions_due and all(at % IMPRESSION_TIMER_MS == 0 for at in batch.impressions_due)
    assert min(batch.impressions_due) >= events[0].ts + window_ms


def test_due_times_take_what_a_scan_of_the_state_would_in_order_once():
    """The UserStage's index of its impressions' due times against the scan it replaced (every key of
    the MapState, those at or before the watermark, sorted), including an index rebuilt from the keys
    after a restart."""
    import random

    from rtrec.core.user import DueTimes

    rng = random.Random(3)
    state: set[int] = set()  # the MapState's keys
    times = DueTimes()
    watermark = 0
    for step in range(2_000):
        for _ in range(rng.randrange(4)):
            at = watermark + rng.randrange(-2, 40) * 1000
            assert times.add(at) == (at not in state)
            state.add(at)
        if step % 300 == 299:  # a restart: the index is built again from the state's keys
            times = DueTimes(state)
        watermark += rng.randrange(3) * 1000
        expected = sorted(at for at in state if at <= watermark)
        assert times.take(watermark) == expected
        state -= set(expected)
        assert len(times) == len(state) and all(at in times for at in state)


@pytest.mark.parametrize("window", [3, 50])
def test_an_impression_is_a_negative_by_event_time_whenever_its_timer_fires(window):
    """Attribution follows the events' times, not when the watermark lets a timer fire: a click after
    the window does not attribute an impression whose timer has not fired yet (a backlog's watermark trails
    its batches), and an impression shown again after its window closed is a negative too. LocalPipeline
    fires timers after each batch interval, so the cut (``window`` events) moves when they fire."""
    from rtrec.core.local import LocalPipeline

    window_ms = 60_000
    events = [
        Event("a-shown", "ua", "a", "impression", 0), Event("a-click-late", "ua", "a", "click", 100_000),
        Event("b-shown", "ub", "b", "impression", 0), Event("b-shown-again", "ub", "b", "impression", 90_000),
        Event("c-shown", "uc", "c", "impression", 0), Event("c-click", "uc", "c", "click", 30_000),
        Event("d-shown", "ud", "d", "impression", 0), Event("d-shown-again", "ud", "d", "impression", 30_000),
    ]
    events.sort(key=lambda e: (e.ts, e.event_id))
    pipe = LocalPipeline(_cfg(f"model.attribution_window_ms={window_ms}")).run(events, window)
    p = pipe.predictions
    labels = {e: y for e, t, y in zip(p.event_id, p.type, p.label, strict=True)}
    assert len(p.event_id) == len(set(p.event_id)), "each once"
    assert labels == {"a-shown": 0.0, "a-click-late": 1.0, "b-shown": 0.0, "b-shown-again": 0.0, "c-click": 1.0,
                      "d-shown-again": 0.0}


def test_a_window_whose_every_event_is_refused_passes_through_local_pipeline():
    """Every event of the second batch interval is a dead letter (from too far in the future): nothing for
    the item stage, which LocalPipeline then skips (it failed on an empty fold)."""
    from rtrec.core.local import LocalPipeline

    cfg = _cfg()
    future = int(time.time() * 1000) + 10 * cfg.events.max_future_ms
    events = [Event("a", "u1", "i1", "click", 1_000), Event("b", "u1", "i2", "click", 2_000),
              Event("c", "u2", "i1", "click", future), Event("d", "u2", "i2", "click", future + 1)]
    pipe = LocalPipeline(cfg).run(events, 2)
    assert pipe.timings.outputs["dead_letters"] == 2
    assert sorted(pipe.predictions.event_id) == ["a", "b"]


def test_an_attributed_positive_is_scored_and_learned_from_its_impressions_features():
    """A click attributed to an impression is an example with the features the models saw when the item was
    shown (as its negative would have been), not those of the moment of the click: so what the user did in
    between (here: views that move their event counts, session and time since their last event) does not
    change its scores."""
    from rtrec.core.local import LocalPipeline

    def click_scores(between: int) -> dict:
        events = [Event("seen", "u", "a", "impression", 1_000)]
        events += [Event(f"v{k}", "u", f"other{k}", "view", 2_000 + k) for k in range(between)]
        events += [Event("click", "u", "a", "click", 60_000), Event("r", "u2", "b", "rating", 61_000, 4.0)]
        pipe = LocalPipeline(_cfg("text.enabled=false"))
        for learner in pipe.learners:
            learner.learning = False
        p = pipe.run(events, len(events)).predictions
        k = p.event_id.index("click")
        return {m: round(float(col[k]), 6) for m, col in p.scores.items()}

    quiet, busy = click_scores(0), click_scores(8)
    assert quiet == busy


def test_binary_feedback_is_scored_as_its_event_came_not_in_learning_order():
    """Clicks are learned as they come and impressions' negatives when their window closes, in bursts: each
    example scored when it is learned sits inside a run of its own label, and a model whose bias follows
    those runs looked predictive (FTRL's binary AUC 0.91 on labels drawn at random, below). Scored when the
    impression was shown (an organic positive: when it came), no model can beat chance on random labels."""
    from benchmarks.common import shop_events
    from rtrec.core.local import LocalPipeline
    from rtrec.metrics import auc

    events, _ = shop_events(users=700, n=20_000, clicks="random")
    p = LocalPipeline(_cfg()).run(events, 2_000).predictions
    rows = [i for i, t in enumerate(p.type) if t != "rating"]
    labels = [int(p.label[i] > 0.5) for i in rows]
    assert 3_000 < sum(labels) < len(labels) - 3_000
    for name, col in [*p.scores.items(), ("fused", p.fused)]:
        assert abs(auc([col[i] for i in rows], labels) - 0.5) < 0.05, name


def test_scores_as_shown_are_the_models_scores_of_that_moment(monkeypatch):
    """With nothing learning, an example's scores cannot depend on when they are taken: those stored with
    impressions (and organic positives) equal the learning pass's, its reference. (The models learn first,
    then freeze; step_examples=0 steps the ranker and the fusion at each batch's end, leaving no chunk open to
    step later.)"""
    from benchmarks.common import shop_events
    from rtrec.core.local import LocalPipeline

    events, _ = shop_events(users=300, n=4_000)
    early = {(e.user_id, e.item_id) for e in events[:2_000] if e.type == "impression"}  # (shown while learning)

    def run(reference: bool) -> dict:
        pipe = LocalPipeline(_cfg("model.step_examples=0"))
        first = len(pipe.run(events[:2_000], 500).predictions)
        for learner in pipe.learners:
            learner.learning = False
        if reference:  # (scored when learned, as impressions stored by 0.1.0 are)
            monkeypatch.setattr(OnlineLearner, "_score_shown", lambda self, shown, start: None)
        p = pipe.run(events[2_000:], 500).predictions
        return {e: [*(col[i] for col in p.scores.values()), p.fused[i], p.correction[i]]
                for i, e in enumerate(p.event_id)
                if i >= first and p.type[i] != "rating" and (p.user_id[i], p.item_id[i]) not in early}

    shown, learned = run(False), run(True)
    assert shown.keys() == learned.keys() and len(shown) > 1_000
    a, b = np.array(list(shown.values())), np.array(list(learned.values()))
    assert np.abs(a - b).max() < 1e-4
    assert a[:, :-1].std(0).min() > 0.001 and a[:, -1].std() > 0, a.std(0)  # (scores that vary)


def test_binary_feedback_learns_which_items_get_clicked():
    """Impressions learned as 0s at once ("fake negatives"; a click then learned as a 1 from the impression's
    features) keep labels mixed in learning order, and the fusion fuses the scores as shown: on a stream whose
    clicks follow each item's appeal, every model and the fusion rank impressions well above chance (0.58-0.60
    here). Learning each 0 when its window closed, in bursts, and the fusion fitting scores taken when learned,
    FTRL reached 0.53, the ranker 0.53 and the fusion 0.52 (benchmarks/binary_quality.py at full size: the
    item's click rate 0.67, the generator's own probability 0.71)."""
    from benchmarks.binary_quality import binary_aucs, outcomes
    from benchmarks.common import shop_events
    from rtrec.core.local import LocalPipeline

    cfg = _cfg()
    events, _ = shop_events(users=1_000, n=30_000, clicks="item")
    p = LocalPipeline(cfg).run(events, 2_000).predictions
    shown = {record for *_, record in outcomes(events, cfg.model.attribution_window_ms).values()}
    aucs = binary_aucs(p, shown)
    assert min(aucs.values()) > 0.555, aucs


def test_an_impression_is_learned_at_once_and_its_expiry_only_records_it():
    """An impression is learned as a 0 when it comes; its window's end writes its record (the scores it got
    when shown) and learns nothing more. One stored by 0.1.0 (a tuple without scores: never learned) is
    learned as a 0 when its window ends, as then."""
    learner = OnlineLearner(_cfg("model.heldout_fraction=0").model)
    users = {"u": learner.new_user("u")}
    shown = learner.process([Inputs(Event("imp", "u", "i1", "impression", 1_000), [0.1] * 7, (12, 2), 7)], users)
    assert len(shown.examples) == 0  # (no record yet: its outcome is not known)
    _, delta, _ = learner.take_delta()
    assert "ftrl.z" in delta and "mf.q" in delta  # learned as a 0 at once
    stored = OpenImpression.read(users["u"]["impressions"]["i1"])
    # 3 models, fused, correction, like
    assert len(stored.scores) == 6 and all(0.0 <= v <= 1.0 for i, v in enumerate(stored.scores) if i != 4)
    out = learner.expire_impressions([("u", "i1", "imp")], users)
    assert out.event_id == ["imp"] and out.label == [0.0]
    assert [out.scores[m][0] for m in out.scores] + [out.fused[0]] == stored.scores[:4]
    assert out.like == [stored.scores[5]]
    assert learner.take_delta() is None  # nothing more learned

    # Shown again after its window, in the same batch: its 0 is recorded then, and learned only once.
    window = learner.cfg.attribution_window_ms
    again = [Inputs(Event(f"s{k}", "v", "i1", "impression", 1_000 + k * (window + 1)), [0.1] * 7, (12, 2), 8)
             for k in range(2)]
    users["v"] = learner.new_user("v")
    assert learner.process(again, users).examples.event_id == ["s0"]
    assert users["v"]["mf_n"] == 2.0  # (two impressions, each learned once)
    learner.take_delta()

    users["u"]["impressions"]["i2"] = (2_000, "old", [0.1] * 7, (12, 2), 7, [0.0, 0.0])  # (as 0.1.0 stored it)
    out = learner.expire_impressions([("u", "i2", "old")], users)
    assert out.event_id == ["old"] and out.label == [0.0]
    assert "ftrl.z" in learner.take_delta()[1]  # learned now
    assert 0.0 < out.like[0] < 1.0  # (and scored now, the like head too)


def test_impressions_scored_before_the_like_head_keep_their_scores_and_get_a_like_where_one_is_made():
    """An impression stored by a release without the like head (5 scores): its expiry's record has no like
    (None: nothing scored it), its positive's gets the head's score at the outcome; the stored scores stay."""
    learner = OnlineLearner(_cfg("model.heldout_fraction=0").model)
    users = {"u": learner.new_user("u")}
    old_scores = [0.6, 0.5, 0.4, 0.55, 0.0]
    for item, event_id in (("i1", "imp1"), ("i2", "imp2")):
        users["u"]["impressions"][item] = (1_000, event_id, [0.1] * 7, (12, 2), 7, [0.0, 0.0], list(old_scores))
    expired = learner.expire_impressions([("u", "i1", "imp1")], users)
    assert expired.fused == [0.55] and expired.like == [None]
    clicked = learner.process([Inputs(Event("c", "u", "i2", "click", 2_000, category="x"), [0.1] * 7, (12, 2), 7)],
                              users).examples
    assert clicked.event_id == ["c"] and clicked.fused == [0.55] and 0.0 < clicked.like[0] < 1.0
    assert "like.z" in learner.take_delta()[1] and "like" not in users["u"]  # learned (a click moves no row)
