"""10,000 generated bad or odd records through the whole job (models on): no task fails, every record is accounted for.

Hypothesis draws the records (valid events with odd but legal values, broken
JSON, wrong types, control characters, huge or negative numbers, unknown
types, invalid UTF-8, oversized payloads) from a fixed seed, so a failure
reproduces.
"""

from __future__ import annotations

import re
from collections import Counter

import orjson
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from rtrec import topics
from rtrec.replay import replay
from tests.conftest import fresh_config, run_job

N = 10_000
TS = 1_700_000_000_000

ids = st.one_of(st.text(min_size=0, max_size=12), st.integers(-5, 10**12), st.none(), st.floats(), st.booleans())
types = st.sampled_from(["view", "click", "add_to_cart", "purchase", "rating", "impression", "search", "bogus", "",
                         "RATING"])
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**20, 10**20), st.text(max_size=5),
                    st.none())
event = st.fixed_dictionaries(
    {"event_id": ids, "user_id": ids, "type": types},
    optional={"item_id": ids, "ts": st.one_of(st.integers(TS - 10**6, TS + 10**6), numbers), "value": numbers,
              "category": st.one_of(st.text(max_size=20), st.integers()), "dwell_ms": numbers,
              "query": st.text(max_size=50), "candidates": st.lists(ids, max_size=5),
              "schema_version": st.sampled_from([1, 2, "1"])},
)
raw = st.one_of(
    event.map(lambda d: orjson.dumps(d, option=orjson.OPT_NON_STR_KEYS) if _dumpable(d) else b"{}"),
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.just(b"\xff\xfe not utf-8"),
    st.just(b'{"event_id": "x", "user_id": "u", "type": "click", "pad": "' + b"a" * 70_000 + b'"}'),
)


def _dumpable(d) -> bool:
    try:
        orjson.dumps(d)
        return True
    except orjson.JSONEncodeError:
        return False


def draw_records() -> list[bytes]:
    out: list[bytes] = []

    @seed(20261123)
    @settings(max_examples=N, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(raw)
    def collect(value):
        out.append(value)

    collect()
    return out[:N]


def test_ten_thousand_odd_records_fail_no_task_and_are_all_accounted_for(kafka):
    records = draw_records()
    assert len(records) == N
    # (a snapshot per event, so that every processed event shows on the features topic)
    cfg = fresh_config(kafka, "fuzz", ["flink.parallelism=2", "features.snapshots=event"])
    # Half of them with a record key, half without; all stamped near TS.
    replay([(f"k{i % 7}" if i % 2 else None, v, TS + i) for i, v in enumerate(records)], cfg.kafka, progress=False)
    proc = run_job(cfg, timeout_s=400)
    failures = re.search(r"task failures recovered from during the run: (\d+)", proc.stdout)
    assert failures and int(failures.group(1)) == 0, proc.stdout[-2000:]

    dead = Counter(dict(m.headers())["rtrec.stage"].decode()
                   for m in topics.read_topic(cfg.kafka, cfg.kafka.dead_letter_topic))
    # each processed event yields exactly one user snapshot
    snapshots = [f for f in (orjson.loads(m.value()) for m in topics.read_topic(cfg.kafka, cfg.kafka.features_topic))
                 if f["entity"] == "user"]
    assert len({(f["id"], f["event_id"]) for f in snapshots}) == len(snapshots)
    assert len(snapshots) + sum(dead.values()) == N, (len(snapshots), dead)
    assert dead["validate"] > N // 2  # most of them are broken on purpose
