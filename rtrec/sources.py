"""Where replayed and backfilled events come from: the built-in MovieLens-100K or a file.

Files hold one event per line (JSON Lines) or per row (CSV, Parquet), with
the fields of event schema v1 as columns. In CSV, ``candidates`` is a JSON
array and empty cells are absent fields. Rows that do not parse are reported
with their line number, never skipped silently.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from pathlib import Path

import orjson

from rtrec.events import Event, EventParser, Rejection

BUILT_IN = ("movielens-100k",)
_INT_FIELDS = ("ts", "dwell_ms")
_FLOAT_FIELDS = ("value",)


class SourceError(ValueError):
    """An input file that cannot be read, or a row in it that is not a valid event."""


def _clean_row(row: dict) -> dict:
    d = {}
    for k, v in row.items():
        if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
            continue
        if k in _INT_FIELDS and isinstance(v, str):
            v = int(float(v))
        elif k in _FLOAT_FIELDS and isinstance(v, str):
            v = float(v)
        elif k == "candidates" and isinstance(v, str):
            v = orjson.loads(v)
        elif k in _INT_FIELDS and isinstance(v, float) and v.is_integer():
            v = int(v)
        d[k] = v
    return d


def _records(path: Path) -> Iterator[tuple[int, dict | bytes]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield n, line.strip()
    elif suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            for n, row in enumerate(csv.DictReader(f), 2):
                yield n, _clean_row(row)
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        for n, row in enumerate(table.to_pylist(), 1):
            yield n, _clean_row(row)
    else:
        raise SourceError(f"{path}: unknown format {suffix!r}; use .jsonl, .csv or .parquet")


def read_events(path: str | Path, parser: EventParser | None = None) -> Iterator[Event]:
    """Parse every row of ``path`` as an event; a bad row raises :class:`SourceError` naming it."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    parser = parser or EventParser()
    far_future = 2**62
    for n, rec in _records(path):
        raw = rec if isinstance(rec, bytes) else orjson.dumps(rec)
        e = parser.parse(raw, now_ms=far_future)
        if isinstance(e, Rejection):
            raise SourceError(f"{path}, row {n}: {e.reason}")
        yield e


def load_events(source: str, limit: int = 0, parser: EventParser | None = None) -> list[Event]:
    """``movielens-100k``, ``movielens-100k-search`` or a file path; the first ``limit`` events when limit > 0.

    ``movielens-100k-search`` is the ratings with made-up searches before some
    of them (rtrec.search.search_sessions): a query drawn from the title or
    genres of the item the user goes on to rate, that item among 50 candidates.
    """
    if source == "movielens-100k":
        from rtrec.datasets import movielens_events

        return movielens_events(limit)
    if source == "movielens-100k-search":
        from rtrec.datasets import load_movies, movielens_events
        from rtrec.search import search_sessions

        stream = search_sessions(movielens_events(), load_movies())
        return stream[:limit] if limit else stream
    events = []
    for e in read_events(source, parser):
        events.append(e)
        if limit and len(events) >= limit:
            break
    return events


def write_jsonl(events, path: str | Path) -> Path:
    path = Path(path)
    with open(path, "wb") as f:
        for e in events:
            f.write(e.to_json() + b"\n")
    return path


def write_csv(events, path: str | Path) -> Path:
    path = Path(path)
    fields = ["event_id", "user_id", "item_id", "type", "ts", "value", "category", "dwell_ms", "query",
              "candidates", "session_id"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for e in events:
            row = {k: getattr(e, k) for k in fields}
            if row["candidates"] is not None:
                row["candidates"] = orjson.dumps(row["candidates"]).decode()
            w.writerow({k: "" if v is None else v for k, v in row.items()})
    return path
