"""Feature maths: hand-worked cases, brute-force references (hypothesis), and bounded state."""

import math
import pickle
import statistics

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rtrec.events import EVENT_TYPES, Event
from rtrec.features.backfill import snapshots, training_rows
from rtrec.features.definitions import ITEM_FEATURES, USER_FEATURES
from rtrec.features.engine import FeatureEngine
from rtrec.features.spec import (
    MINUTE,
    DecayedAffinity,
    LastN,
    RatingStats,
    Recency,
    Session,
    SmoothedCTR,
    Trend,
    Window,
    WindowedCount,
)


def ev(ts, type="click", item="i1", user="u1", value=None, category=None, session=None, eid=None):
    return Event(eid or f"e{ts}-{type}-{item}", user, item, type, ts, value, category, None, None, None, session)


def fold(feature, events):
    slot = feature.init()
    for e in events:
        feature.update(slot, e)
    return slot


def read(feature, slot, at):
    out = {}
    feature.read(slot, at, out)
    return out


# -- hand-worked ---------------------------------------------------------------

def test_windowed_count_slides_by_buckets():
    w = Window("10m", 10 * MINUTE, buckets=10)  # one-minute buckets
    f = WindowedCount("n", ("click", "view"), (w,))
    slot = fold(f, [ev(0), ev(30_000), ev(61_000, "view"), ev(9 * MINUTE)])
    assert read(f, slot, 9 * MINUTE) == {"n_click_10m": 3, "n_view_10m": 1}
    f.update(slot, ev(10 * MINUTE + 1))  # minute 10: minute 0 leaves the window
    assert read(f, slot, 10 * MINUTE + 1) == {"n_click_10m": 2, "n_view_10m": 1}
    f.update(slot, ev(60 * MINUTE))  # everything before minute 51 is gone
    assert read(f, slot, 60 * MINUTE) == {"n_click_10m": 1, "n_view_10m": 0}
    assert len(slot[0][2]) == 1, "buckets outside the window are dropped"


def test_windowed_count_all_types_together():
    f = WindowedCount("pop", ("click", "view"), (Window("1h", 3_600_000, 12),), per_type=False)
    slot = fold(f, [ev(0), ev(1, "view"), ev(2, "purchase")])
    assert read(f, slot, 2) == {"pop_1h": 2}


def test_decayed_affinity_halves_every_half_life():
    f = DecayedAffinity("aff", half_life_ms=1000, top=2)
    slot = fold(f, [ev(0, category="a"), ev(1000, category="a"), ev(1000, category="b")])
    out = read(f, slot, 2000)["aff"]
    assert out["a"] == pytest.approx(0.25 + 0.5)
    assert out["b"] == pytest.approx(0.5)
    assert f.score(slot, "a", 1000) == pytest.approx(1.5)
    assert f.score(slot, "zzz", 1000) == 0.0


def test_last_n_keeps_distinct_newest_first():
    f = LastN("last", n=3)
    slot = fold(f, [ev(1, item="a"), ev(2, item="b"), ev(3, item="a"), ev(4, item="c"), ev(5, item="d")])
    assert read(f, slot, 5) == {"last": ["d", "c", "a"]}


def test_sessions_split_on_gaps_and_on_new_session_ids():
    f = Session("s", gap_ms=100)
    slot = fold(f, [ev(0), ev(50), ev(120)])
    assert read(f, slot, 120) == {"s_events": 3, "s_duration_ms": 120, "s_start_ts": 0, "s_count": 1}
    f.update(slot, ev(300))  # gap of 180 > 100
    assert read(f, slot, 300) == {"s_events": 1, "s_duration_ms": 0, "s_start_ts": 300, "s_count": 2}
    f.update(slot, ev(310, session="x"))  # explicit session id starts a new one
    assert read(f, slot, 310)["s_count"] == 3


def test_recency_smoothed_ctr_and_rating_stats():
    r = Recency("since", ("click", "view"))
    assert read(r, fold(r, [ev(10), ev(40, "view")]), 100) == {"since_click_ms": 90, "since_view_ms": 60}

    c = SmoothedCTR("ctr", prior=0.1, prior_weight=10)
    slot = fold(c, [ev(1, "impression")] * 10 + [ev(2, "click")] * 3)
    assert read(c, slot, 2)["ctr"] == pytest.approx((3 + 1) / (10 + 10))

    s = RatingStats("r")
    values = [4.0, 3.0, 5.0, 1.0]
    out = read(s, fold(s, [ev(i, "rating", value=v) for i, v in enumerate(values)]), 9)
    assert out == {"r_count": 4, "r_mean": pytest.approx(statistics.mean(values)),
                   "r_var": pytest.approx(statistics.pvariance(values))}


def test_trend_compares_short_and_long_rates():
    short, long = Window("1h", 3_600_000, 12), Window("24h", 86_400_000, 24)
    pop = WindowedCount("pop", ("click",), (short, long), per_type=False)
    trend = Trend("trend", "pop", short, long)
    out = read(pop, fold(pop, [ev(86_000_000 + i) for i in range(10)]), 86_000_100)
    trend.read(None, 86_000_100, out)
    assert out["trend"] == pytest.approx((10 * 24 + 1) / (10 + 1))


# -- brute-force references ----------------------------------------------------

events_st = st.lists(
    st.tuples(st.integers(0, 50 * MINUTE), st.sampled_from(["click", "view", "rating"]), st.sampled_from("abc")),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(events_st, st.integers(1, 12), st.integers(1, 20))
def test_windowed_count_equals_brute_force(raw, buckets, minutes):
    w = Window("w", minutes * MINUTE, buckets)
    f = WindowedCount("n", ("click", "view", "rating"), (w,))
    events = [ev(ts, t) for ts, t, _ in raw]  # any arrival order
    slot = fold(f, events)
    now = max(e.ts for e in events)
    lo = now // w.width - buckets + 1
    for t in ("click", "view", "rating"):
        expected = sum(1 for e in events if e.type == t and lo <= e.ts // w.width <= now // w.width)
        assert read(f, slot, now)[f"n_{t}_w"] == expected


@settings(max_examples=300, deadline=None)
@given(events_st, st.lists(st.tuples(st.integers(1, 30), st.integers(1, 12)), min_size=1, max_size=3), st.booleans())
def test_fast_windowed_count_changes_state_as_the_declared_update(raw, windows, per_type):
    """FeatureEngine folds with WindowedCount.fast_update(): the same state as update() in any arrival
    order, and the brute-force count in every window."""
    wins = tuple(Window(f"w{i}", minutes * MINUTE, buckets) for i, (minutes, buckets) in enumerate(windows))
    f = WindowedCount("n", ("click", "view"), wins, per_type=per_type)
    events = [ev(ts, t) for ts, t, _ in raw]
    fast = f.fast_update()
    slow_slot, fast_slot = f.init(), f.init()
    for e in events:
        f.update(slow_slot, e)
        fast(fast_slot, e)
        assert fast_slot == slow_slot
    now = max(e.ts for e in events)
    out = read(f, fast_slot, now)
    for w in wins:
        lo, hi = now // w.width - w.buckets + 1, now // w.width
        counted = [e for e in events if e.type in ("click", "view") and lo <= e.ts // w.width <= hi]
        if per_type:
            for t in ("click", "view"):
                assert out[f"n_{t}_{w.name}"] == sum(e.type == t for e in counted)
        else:
            assert out[f"n_{w.name}"] == len(counted)


@given(events_st, st.lists(st.tuples(st.integers(1, 30), st.integers(1, 12)), min_size=1, max_size=3),
       st.integers(-60 * MINUTE, 60 * MINUTE))
@example([(0, "click", "a"), (60_000, "rating", "a")], [(1, 1)], -1)  # (the newest event is not a counted one)
def test_one_windows_total_at_a_time_equals_the_totals_and_brute_force(raw, windows, offset):
    """WindowedCount.total_at (the item model inputs read two windows per item and batch) is one entry of
    totals_at, at any read time: before, at or after the newest event."""
    wins = tuple(Window(f"w{i}", minutes * MINUTE, buckets) for i, (minutes, buckets) in enumerate(windows))
    f = WindowedCount("n", ("click", "view"), wins, per_type=False)
    events = [ev(ts, t) for ts, t, _ in raw]
    slot = fold(f, events)
    at = max(max(e.ts for e in events) + offset, 0)
    totals = f.totals_at(slot, at)
    for k, w in enumerate(wins):
        lo, hi = at // w.width - w.buckets + 1, at // w.width
        counted = [e for e in events if e.type in ("click", "view")]  # (other types never touch the slot)
        newest = max((e.ts for e in counted), default=0) // w.width
        # (a read before the newest bucket counts what the slot still holds: buckets the newest counted
        # event pushed out of its window are gone)
        expected = sum(lo <= e.ts // w.width <= hi and e.ts // w.width > newest - w.buckets for e in counted)
        assert f.total_at(slot, k, at) == f.total_at(slot, k - len(wins), at) == totals[k][0] == expected


def test_engine_folds_with_the_fast_update_and_declarations_still_pickle():
    engine = FeatureEngine(USER_FEATURES)
    count = USER_FEATURES.features[0]
    assert isinstance(count, WindowedCount)
    assert engine._slots[0][0] is not count.update and engine._slots[0][0].__name__ == "update"
    assert pickle.loads(pickle.dumps(USER_FEATURES)) == USER_FEATURES


@settings(max_examples=300, deadline=None)
@given(events_st, st.integers(1, 10 * MINUTE))
def test_decay_equals_brute_force_in_any_arrival_order(raw, half_life):
    f = DecayedAffinity("aff", half_life_ms=half_life, top=3)
    events = [ev(ts, "click", category=c) for ts, _, c in raw]
    slot = fold(f, events)
    now = max(e.ts for e in events) + 1234
    got = read(f, slot, now)["aff"]
    for cat, score in got.items():
        expected = sum(0.5 ** ((now - e.ts) / half_life) for e in events if e.category == cat)
        assert math.isclose(score, expected, rel_tol=1e-9, abs_tol=1e-300)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(1, 5, allow_nan=False), min_size=1, max_size=50))
def test_welford_equals_statistics(values):
    s = RatingStats("r")
    out = read(s, fold(s, [ev(i, "rating", value=v) for i, v in enumerate(values)]), 0)
    assert out["r_mean"] == pytest.approx(statistics.fmean(values), rel=1e-9)
    assert out["r_var"] == pytest.approx(statistics.pvariance(values), rel=1e-6, abs=1e-9)


# -- bounded state ---------------------------------------------------------------

def test_state_per_user_stays_bounded_as_events_grow():
    engine = FeatureEngine(USER_FEATURES)
    state = engine.new_state()
    sizes = []
    for i in range(60_000):
        t = EVENT_TYPES[i % len(EVENT_TYPES)]
        e = Event(f"e{i}", "u", f"item{i}", t, i * 7_000, 3.0 if t == "rating" else None, f"cat{i % 97}")
        engine.update(state, e)
        if i % 10_000 == 9_999:
            sizes.append(len(pickle.dumps(state)))
    # five days of a busy user: the state does not grow with the number of events
    assert max(sizes) < 6_000
    assert sizes[-1] <= sizes[1] * 1.1


# -- engine and offline engine -----------------------------------------------------

def test_definition_version_changes_with_the_definitions():
    assert USER_FEATURES.version.startswith("user-") and ITEM_FEATURES.version.startswith("item-")
    assert USER_FEATURES.version != ITEM_FEATURES.version
    changed = type(USER_FEATURES)("user", "user_id", USER_FEATURES.features[:-1])
    assert changed.version != USER_FEATURES.version


def test_snapshot_names_are_the_declared_outputs():
    for group in (USER_FEATURES, ITEM_FEATURES):
        engine = FeatureEngine(group)
        state = engine.new_state()
        engine.update(state, ev(1000, "rating", value=4.0, category="Drama"))
        assert list(engine.snapshot(state, 1000)) == group.outputs()


def test_training_rows_are_point_in_time():
    events = [ev(1000, "rating", value=4.0, eid="a"), ev(2000, "rating", value=2.0, eid="b"),
              ev(3000, "rating", value=5.0, item="i2", eid="c")]
    rows = {r["event_id"]: r for r in training_rows(events)}
    assert rows["a"]["user__rating_count"] == 0 and rows["a"]["user__rating_mean"] is None
    assert rows["b"]["user__rating_mean"] == 4.0, "the label of b is not in b's own features"
    assert rows["c"]["user__rating_count"] == 2 and rows["c"]["item__rating_count"] == 0
    after = {r.event_id: r.features for r in snapshots(events, USER_FEATURES, "after")}
    assert after["b"]["rating_mean"] == 3.0


def test_an_event_decades_older_than_the_users_newest_is_folded_in_and_read():
    """After a restore the watermark starts again, so an event from 1970 can reach a user whose
    newest event is from 1998: its features must still be computed (this raised OverflowError)."""
    engine = FeatureEngine(USER_FEATURES)
    state = engine.new_state()
    engine.update(state, Event("new", "u", "1", "rating", 893_286_638_000, 4.0, "Drama"))
    old = Event("old", "u", "2", "click", 1000, None, "Comedy")
    engine.update(state, old)
    engine.record("u", state, old)
    snap = engine.snapshot(state, old.ts)
    affinity = snap["category_affinity"] if "category_affinity" in snap else snap["features"]["category_affinity"]
    assert affinity["Drama"] == pytest.approx(1.0) and 0.0 <= affinity["Comedy"] < 1e-300


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3 * 86_400_000), st.sampled_from(EVENT_TYPES), st.sampled_from("ab"),
                          st.sampled_from([None, "Drama", "Comedy"]), st.sampled_from([None, 1.0, 4.5]),
                          st.sampled_from([None, "s1", "s2"])), min_size=1, max_size=40))
def test_engine_updates_only_the_features_an_event_type_touches_with_the_same_result(raw):
    """FeatureEngine.update skips the features outside an event type's touched_by(): the state equals
    folding every event into every feature (events in any order)."""
    events = [Event(f"e{n}", "u1", item, t, ts, value, category, None, None, None, session)
              for n, (ts, t, item, category, value, session) in enumerate(raw)]
    for group in (USER_FEATURES, ITEM_FEATURES):
        engine = FeatureEngine(group)
        state, reference = engine.new_state(), engine.new_state()
        for e in events:
            engine.update(state, e)
            reference[0] = e.ts if reference[0] is None or e.ts > reference[0] else reference[0]
            reference[1] += 1
            for i, f in enumerate(group.features):
                f.update(reference[2 + i], e)
        assert pickle.dumps(state) == pickle.dumps(reference)
