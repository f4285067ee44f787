"""The thin end-to-end slice: Kafka -> PyFlink (MiniCluster) -> PyTorch -> Kafka, all real."""

from __future__ import annotations

from collections import Counter

import orjson

from rtrec import topics
from rtrec.datasets import movielens_events
from rtrec.replay import replay
from tests.conftest import fresh_config, run_job

N = 3_000
BAD = [
    ("u1", b"{not json", "malformed JSON"),
    ("u2", b'{"event_id":"x","user_id":"u2","type":"teleport","item_id":"1","ts":5}', "unknown event type"),
    (None, b"", "empty payload"),
]


def test_every_event_gets_one_recommendation_and_bad_records_are_dead_lettered(kafka):
    cfg = fresh_config(kafka, "slice", ["flink.parallelism=2"])
    events = movielens_events(limit=N)
    records = [(e.user_id, e.to_json(), e.ts) for e in events]
    # Bad records in the middle of the stream must not stop the good ones.
    for i, (key, value, _) in enumerate(BAD):
        records.insert(500 * (i + 1), (key, value, events[0].ts))
    replay(records, cfg.kafka, progress=False)

    run_job(cfg)

    recs = [orjson.loads(m.value()) | {"_key": m.key().decode()}
            for m in topics.read_topic(cfg.kafka, cfg.kafka.recommendations_topic)]
    assert len(recs) == N
    by_event = {r["event_id"]: r for r in recs}
    assert len(by_event) == N, "one recommendation per input event, none twice"
    for e in events:
        r = by_event[e.event_id]
        assert r["user_id"] == e.user_id == r["_key"]
        assert r["ts"] == e.ts
        assert len(r["items"]) <= cfg.model.top_k
        assert e.item_id not in r["items"], "an item the user just rated is not recommended back"
        assert r["scores"] == sorted(r["scores"], reverse=True)
    # Only the very first events of a subtask meet a catalogue smaller than k.
    assert sum(len(r["items"]) == cfg.model.top_k for r in recs) >= 0.98 * N
    # Per user, recommendations come out in the order the user's events went in.
    order = {e.event_id: i for i, e in enumerate(events)}
    per_user: dict[str, list[int]] = {}
    for r in recs:
        per_user.setdefault(r["user_id"], []).append(order[r["event_id"]])
    assert all(seq == sorted(seq) for seq in per_user.values())
    assert Counter(r["user_id"] for r in recs) == Counter(e.user_id for e in events)

    dead = list(topics.read_topic(cfg.kafka, cfg.kafka.dead_letter_topic))
    assert len(dead) == len(BAD)
    got = {m.value(): dict(m.headers()) for m in dead}
    for _key, value, reason in BAD:
        headers = got[value]
        assert headers["rtrec.reason"].decode().startswith(reason)
        assert headers["rtrec.stage"] == b"validate"
        assert headers["rtrec.source"].decode().startswith(cfg.kafka.events_topic + "/")
