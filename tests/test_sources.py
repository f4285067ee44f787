import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rtrec.cli import main
from rtrec.events import Event
from rtrec.sources import SourceError, load_events, read_events, write_csv, write_jsonl

EVENTS = [
    Event("e1", "u1", "i1", "rating", 1_000, 4.0, "Drama"),
    Event("e2", "u1", None, "search", 2_000, query="star wars", candidates=["i1", "i2"]),
    Event("e3", "u2", "i2", "click", 3_000, dwell_ms=1500, session_id="s"),
]


@pytest.mark.parametrize("writer", [write_jsonl, write_csv])
def test_files_round_trip(tmp_path, writer):
    path = writer(EVENTS, tmp_path / ("ev.jsonl" if writer is write_jsonl else "ev.csv"))
    assert list(read_events(path)) == EVENTS


def test_parquet(tmp_path):
    rows = [{"event_id": e.event_id, "user_id": e.user_id, "item_id": e.item_id, "type": e.type, "ts": e.ts,
             "value": e.value, "query": e.query} for e in EVENTS]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "ev.parquet")
    got = load_events(str(tmp_path / "ev.parquet"))
    assert [(e.event_id, e.type, e.ts, e.value) for e in got] == [(e.event_id, e.type, e.ts, e.value) for e in EVENTS]


def test_a_bad_row_is_named(tmp_path):
    path = tmp_path / "ev.jsonl"
    path.write_bytes(EVENTS[0].to_json() + b"\n" + b'{"event_id": "x", "user_id": "u"}\n')
    with pytest.raises(SourceError, match=r"line 2: missing field type"):
        list(read_events(path))


def test_unknown_format(tmp_path):
    (tmp_path / "ev.txt").write_text("x")
    with pytest.raises(SourceError, match="unknown format"):
        list(read_events(tmp_path / "ev.txt"))


def test_backfill_command_writes_parquet(tmp_path, capsys):
    src = write_jsonl(EVENTS, tmp_path / "ev.jsonl")
    assert main(["backfill", str(src), "-o", str(tmp_path / "f.parquet")]) == 0
    table = pq.read_table(tmp_path / "f.parquet")
    assert table.num_rows == 3
    assert "user__rating_mean" in table.column_names and "item__popularity_1h" in table.column_names
    assert "3 point-in-time feature rows" in capsys.readouterr().out


def test_missing_input_is_a_clear_error(tmp_path, capsys):
    assert main(["backfill", str(tmp_path / "nope.jsonl")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_csv_with_the_schema_version_column(tmp_path):
    """schema_version is a field of event schema v1, so a column too (it was read as the string '1' and refused)."""
    path = tmp_path / "ev.csv"
    path.write_text("schema_version,event_id,user_id,item_id,type,ts,value\n1,c-1,u1,i1,rating,1700000000000,4\n")
    assert [(e.event_id, e.ts, e.value) for e in read_events(path)] == [("c-1", 1_700_000_000_000, 4.0)]
