"""Replay pacing (--rate, --speedup) and inputs (CSV, Parquet, MovieLens) with a stand-in producer."""

from __future__ import annotations

import importlib.util
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rtrec import replay as replay_mod
from rtrec.cli import main
from rtrec.config import KafkaConfig
from rtrec.events import Event
from rtrec.replay import replay
from rtrec.sources import write_csv


class FakeProducer:
    """Records (send time, topic, key, value, timestamp) instead of talking to a broker."""

    def __init__(self):
        self.sent: list[tuple[float, str, bytes, bytes, int]] = []

    def produce(self, topic, key, value, timestamp, on_delivery):
        self.sent.append((time.perf_counter(), topic, key, value, timestamp))
        on_delivery(None, None)

    def poll(self, timeout=0):
        if timeout:
            time.sleep(timeout)
        return 0

    def flush(self, timeout=None):
        return 0


@pytest.fixture
def fake(monkeypatch):
    p = FakeProducer()
    monkeypatch.setattr(replay_mod, "producer", lambda kafka, **extra: p)
    monkeypatch.setattr("rtrec.topics.ensure_topics", lambda kafka, names=None: [])
    return p


def events(ts: list[int]) -> list[Event]:
    return [Event(f"e{i}", f"u{i % 3}", f"i{i}", "click", t) for i, t in enumerate(ts)]


def test_rate_paces_events_per_second(fake):
    summary = replay(events(list(range(0, 40_000, 1000))), KafkaConfig(), topic="t", rate=200, progress=False)
    t0 = fake.sent[0][0]
    # Event n leaves at n / rate seconds after the start, never earlier.
    for n, (t, *_rest) in enumerate(fake.sent):
        assert t - t0 >= n / 200 - 0.01
    assert 0.19 <= summary.seconds < 1.5 and summary.events == 40


def test_speedup_divides_the_gaps_between_event_times(fake):
    # 0, 2 s, 2 s, 5 s, then an out-of-order event (1 s): sent at once, and 6 s.
    ts = [1_000_000, 1_002_000, 1_002_000, 1_005_000, 1_001_000, 1_006_000]
    summary = replay(events(ts), KafkaConfig(), topic="t", speedup=10, progress=False)
    t0 = fake.sent[0][0]
    offsets = [t - t0 for t, *_ in fake.sent]
    expected = [0, 0.2, 0.2, 0.5, 0.5, 0.6]
    for got, want in zip(offsets, expected, strict=True):
        assert want - 0.005 <= got <= want + 0.15  # each send waits for its own deadline: no drift
    assert [s[4] for s in fake.sent] == ts  # the record timestamp is the event time, as given
    assert summary.event_span_ms == 6000 and "6.0 s of event time at 10x" in str(summary)


def test_rate_and_speedup_are_mutually_exclusive(fake, capsys):
    with pytest.raises(ValueError, match="mutually exclusive"):
        replay(events([0]), KafkaConfig(), rate=1, speedup=2, progress=False)
    assert main(["replay", "--rate", "100", "--speedup", "3600"]) == 2
    err = capsys.readouterr().err
    assert "--rate and --speedup are mutually exclusive" in err and "not both" in err
    assert main(["replay", "--set", "replay.rate=5", "--set", "replay.speedup=2"]) == 2
    assert "mutually exclusive" in capsys.readouterr().err
    assert not fake.sent


def test_command_line_speedup_replaces_a_configured_rate(fake, tmp_path, capsys):
    path = write_csv(events([0, 100, 200]), tmp_path / "ev.csv")
    assert main(["replay", str(path), "--topic", "t", "--set", "replay.rate=1", "--speedup", "1000"]) == 0
    assert len(fake.sent) == 3 and fake.sent[-1][0] - fake.sent[0][0] < 0.5
    assert "at 1000x" in capsys.readouterr().out


EVENTS = [
    Event("e1", "u1", "i1", "rating", 1_000, 4.0, "Drama"),
    Event("e2", "u1", None, "search", 2_000, query="star wars", candidates=["i1", "i2"]),
    Event("e3", "u2", "i2", "click", 3_000, dwell_ms=1500, session_id="s"),
]


def test_replay_a_csv_file(fake, tmp_path, capsys):
    path = write_csv(EVENTS, tmp_path / "ev.csv")
    assert main(["replay", str(path), "--topic", "t"]) == 0
    assert [(s[1], s[2], s[3], s[4]) for s in fake.sent] == [("t", e.user_id.encode(), e.to_json(), e.ts)
                                                             for e in EVENTS]
    assert "replayed 3 events into 't'" in capsys.readouterr().out


def test_replay_a_parquet_file(fake, tmp_path):
    rows = [{"event_id": e.event_id, "user_id": e.user_id, "item_id": e.item_id, "type": e.type, "ts": e.ts,
             "value": e.value, "category": e.category, "query": e.query,
             "candidates": None if e.candidates is None else '["i1", "i2"]'} for e in EVENTS]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ev.parquet")
    assert main(["replay", str(tmp_path / "ev.parquet"), "--topic", "t", "--limit", "2"]) == 0
    assert [(s[2], s[4]) for s in fake.sent] == [(b"u1", 1_000), (b"u1", 2_000)]
    assert fake.sent[1][3] == EVENTS[1].to_json()


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="MovieLens-100K ships in the recbole wheel")
def test_replay_movielens(fake):
    assert main(["replay", "movielens-100k", "--topic", "t", "--limit", "50"]) == 0
    assert len(fake.sent) == 50
    ts = [s[4] for s in fake.sent]
    assert ts == sorted(ts) and all(s[3].startswith(b"{") for s in fake.sent)


def test_a_missing_input_is_a_clear_error(fake, tmp_path, capsys):
    assert main(["replay", str(tmp_path / "nope.csv")]) == 2
    assert "does not exist" in capsys.readouterr().err
