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
    monkeypatch.setattr("rtrec.topics.check_broker", lambda kafka: None)
    monkeypatch.setattr("rtrec.topics.ensure_topics", lambda kafka, names=None: [])
    return p


def events(ts: list[int]) -> list[Event]:
    return [Event(f"e{i}", f"u{i % 3}", f"i{i}", "click", t) for i, t in enumerate(ts)]


def test_rate_paces_events_per_second(fake):
    begin = time.perf_counter()
    summary = replay(events(list(range(0, 40_000, 1000))), KafkaConfig(), topic="t", rate=200, progress=False)
    # Event n leaves at n / rate seconds after the start, never earlier. (Measured from before the call: the
    # first send may come late on a busy machine, and the ones due by then follow at once.)
    for n, (t, *_rest) in enumerate(fake.sent):
        assert t - begin >= n / 200 - 0.001
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


# -- bad rows, limits, streaming -------------------------------------------------------
GOOD = [Event(f"g{i}", f"u{i}", "i1", "click", 1_000 * (i + 1)) for i in range(3)]
#: line number -> (line, reason prefix the report gives)
BAD = {
    2: (b'{"event_id": "b1", "user_id": "u9", "item_id": "i1", "ts": 5}', "missing field type"),
    3: (b"{not json", "malformed JSON"),
    5: (b'{"event_id": "b2", "user_id": "u9", "item_id": "i1", "type": "rating", "ts": 7, "value": 9}',
        "rating 9 is outside"),
    7: (b'{"event_id": "b3", "user_id": "u9", "type": "click", "ts": "yesterday", "item_id": "i1"}',
        "ts must be an integer"),
}


@pytest.fixture
def mixed(tmp_path):
    """A JSON Lines file: good events on lines 1, 4 and 6; the rows of BAD on theirs."""
    lines, good = [], iter(GOOD)
    for n in range(1, 8):
        lines.append(BAD[n][0] if n in BAD else next(good).to_json())
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def reported(err: str, path) -> dict[int, str]:
    """Line number -> reason, from the lines `rtrec replay` writes for bad rows."""
    prefix = f"replay: {path}, line "
    return {int(line[len(prefix):].split(":")[0]): line.split(": ", 2)[2]
            for line in err.splitlines() if line.startswith(prefix)}


def test_by_default_every_bad_row_is_listed_and_nothing_is_sent(fake, mixed, capsys):
    assert main(["replay", str(mixed), "--topic", "t"]) == 2
    err = capsys.readouterr().err
    got = reported(err, mixed)
    assert sorted(got) == sorted(BAD) and all(got[n].startswith(BAD[n][1]) for n in BAD), err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"rtrec: error: {mixed}: 4 of 7 rows are not valid events") and "--bad-rows" in last
    assert not fake.sent


def test_skip_sends_the_valid_events_and_counts_the_rest(fake, mixed, capsys):
    assert main(["replay", str(mixed), "--topic", "t", "--bad-rows", "skip"]) == 0
    out, err = capsys.readouterr()
    assert [s[3] for s in fake.sent] == [e.to_json() for e in GOOD]
    assert sorted(reported(err, mixed)) == sorted(BAD)
    assert "replayed 3 events into 't'" in out
    assert "7 rows read: 3 events, 4 bad rows, 4 skipped; by reason: " in out and "1 × missing field type" in out


def test_send_produces_bad_rows_as_they_are_without_moving_event_time(fake, mixed, capsys):
    assert main(["replay", str(mixed), "--topic", "t", "--set", "replay.bad_rows=send"]) == 0
    out, err = capsys.readouterr()
    assert len(fake.sent) == 7 and sorted(reported(err, mixed)) == sorted(BAD)
    by_line = dict(enumerate(fake.sent, 1))
    for n, (line, _reason) in BAD.items():
        _t, _topic, key, value, ts = by_line[n]
        assert value == line  # the original bytes, for the job to dead-letter
        newest = max([e.ts for e in GOOD[: sum(1 for m in range(1, n) if m not in BAD)]], default=0)
        assert ts == newest, "a bad row is stamped with the newest event time sent before it"
        assert key == (b"u9" if b'"u9"' in line else None)
    assert "4 sent as they are (the job dead-letters them with their reasons)" in out


def test_limit_counts_rows_and_zero_is_refused(fake, mixed, capsys):
    assert main(["replay", str(mixed), "--topic", "t", "--limit", "1"]) == 0  # line 2's bad row is not read
    assert len(fake.sent) == 1
    with pytest.raises(SystemExit) as e:
        main(["replay", str(mixed), "--limit", "0"])
    assert e.value.code == 2
    assert "--limit: must be at least 1, got 0 (leave --limit out to take every row)" in capsys.readouterr().err
    assert main(["replay", str(mixed), "--set", "replay.limit=-1"]) == 2
    assert "replay.limit must not be negative" in capsys.readouterr().err


def test_csv_and_parquet_bad_rows_name_their_line_or_row(fake, tmp_path, capsys):
    csv_path = write_csv([GOOD[0], GOOD[1]], tmp_path / "ev.csv")
    text = csv_path.read_text().splitlines()
    text.insert(2, "b1,u9,i1,teleport,5,,,,,,")  # line 3
    text.append('b2,u9,i1,click,soon,,,,,"[1, 2",')  # line 5: ts and candidates do not parse
    csv_path.write_text("\n".join(text) + "\n")
    assert main(["replay", str(csv_path), "--topic", "t"]) == 2
    err = capsys.readouterr().err
    assert f"{csv_path}, line 3: unknown event type 'teleport'" in err
    assert f"{csv_path}, line 5: ts must be an integer (epoch ms), got string" in err
    rows = [{"event_id": "p1", "user_id": "u1", "item_id": "i", "type": "click", "ts": 1},
            {"event_id": "p2", "user_id": "u1", "item_id": "i", "type": "click", "ts": -5}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ev.parquet")
    assert main(["replay", str(tmp_path / "ev.parquet"), "--topic", "t", "--bad-rows", "send"]) == 0
    assert f"{tmp_path / 'ev.parquet'}, row 2: ts must not be negative" in capsys.readouterr().err
    assert len(fake.sent) == 2


def test_a_file_is_read_as_a_stream(tmp_path):
    import os
    import threading

    from rtrec.sources import read_rows

    fifo = tmp_path / "ev.jsonl"
    os.mkfifo(fifo)
    first_seen = threading.Event()
    waited: list[bool] = []

    def write():
        with open(fifo, "wb") as f:
            f.write(GOOD[0].to_json() + b"\n")
            f.flush()
            waited.append(first_seen.wait(10))  # a reader that wants the whole file first never sees line 1
            f.write(GOOD[1].to_json() + b"\n")

    writer = threading.Thread(target=write)
    writer.start()
    rows = read_rows(fifo)
    assert next(rows) == GOOD[0]
    first_seen.set()
    assert list(rows) == [GOOD[1]]
    writer.join()
    assert waited == [True]
