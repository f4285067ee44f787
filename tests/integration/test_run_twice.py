"""`rtrec run` started again without a savepoint continues from the consumer group's committed offsets
(Kafka's convention), so each event's outputs appear once; --from-beginning reads it all again."""

from __future__ import annotations

import re
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
    assert "run summary: events in 40: accepted 40, duplicates 0, dead letters 0; outputs: " in out, out[-2000:]
    second = _send(cfg, 40, 25)
    replay([("u1", b"{not json", int(time.time() * 1000))], cfg.kafka, progress=False)
    out = run_job(cfg).stdout
    assert "from the consumer group's committed offsets (26 events behind)" in out, out[-2000:]
    assert "job finished: 26 events" in out
    # the summary counts this run only, with the dead letter's reason
    summary = next(line for line in out.splitlines() if "run summary:" in line)
    assert "events in 26: accepted 25, duplicates 0, dead letters 1 (malformed JSON" in summary, summary
    written = int(re.search(r"features ([\d,]+)", summary).group(1).replace(",", ""))
    assert 50 <= written <= 80, summary  # 25 events x 2 snapshots, and a few transaction markers
    per_event = Counter(r["event_id"] for r in committed_values(cfg, cfg.kafka.features_topic))
    # one user and one item snapshot per event, each written by exactly one of the two runs
    assert per_event == {e: 2 for e in first + second}
