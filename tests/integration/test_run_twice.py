"""`rtrec run` started again without a savepoint continues from the consumer group's committed offsets
(Kafka's convention), so each event's outputs appear once; --from-beginning reads it all again."""

from __future__ import annotations

import time
from collections import Counter

import orjson

from rtrec.replay import replay
from tests.conftest import committed_values, fresh_config, run_job


def _send(cfg, first: int, n: int) -> list[str]:
    ts = int(time.time() * 1000)
    records = []
    for i in range(first, first + n):
        value = orjson.dumps({"event_id": f"twice-{i}", "user_id": f"u{i % 7}", "item_id": f"i{i % 5}",
                              "type": "click", "ts": ts + i})
        records.append((f"u{i % 7}", value, ts + i))
    replay(records, cfg.kafka, progress=False)
    return [f"twice-{i}" for i in range(first, first + n)]


def test_a_second_run_continues_where_the_first_committed(kafka):
    cfg = fresh_config(kafka, "twice", ["model.enabled=false", "features.snapshots=event"])
    first = _send(cfg, 0, 40)
    out = run_job(cfg).stdout
    assert "(the consumer group has committed no offsets)" in out
    second = _send(cfg, 40, 25)
    out = run_job(cfg).stdout
    assert "from the consumer group's committed offsets (25 events behind)" in out, out[-2000:]
    assert "job finished: 25 events" in out
    per_event = Counter(r["event_id"] for r in committed_values(cfg, cfg.kafka.features_topic))
    # one user and one item snapshot per event, each written by exactly one of the two runs
    assert per_event == {e: 2 for e in first + second}
