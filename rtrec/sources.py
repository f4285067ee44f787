"""Where replayed and backfilled events come from: the built-in MovieLens-100K or a file.

Files hold one event per line (JSON Lines) or per row (CSV, Parquet), with
the fields of event schema v1 as columns. In CSV, ``candidates`` is a JSON
array and empty cells are absent fields. Files are read as a stream, a row at
a time (Parquet a batch of rows at a time), never whole. A row that is not a
valid event comes out as a :class:`BadRow` naming its line (JSON Lines, CSV)
or row (Parquet) and the reason, never skipped silently.
"""

from __future__ import annotations

import csv
import itertools
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from rtrec.events import Event, EventParser, Rejection

BUILT_IN = ("movielens-100k", "movielens-100k-search")
_INT_FIELDS = ("schema_version", "ts", "dwell_ms")
_FLOAT_FIELDS = ("value",)


class SourceError(ValueError):
    """An input file that cannot be read, or a row in it that is not a valid event."""


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row of an input file that is not a valid event: where it is, why, and its bytes as they would be sent.

    ``value`` is the line itself for JSON Lines, the row as a JSON object for CSV and
    Parquet; ``user_id`` is the row's user when that much of it was valid.
    """

    where: str  # "line 7" (JSON Lines, CSV) or "row 7" (Parquet)
    reason: str
    value: bytes
    user_id: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def _clean_row(row: dict) -> dict:
    """A CSV or Parquet row as event fields: numbers and the candidates list parsed where they parse;
    a value that does not stays as it is, for the parser to name."""
    d = {}
    for k, v in row.items():
        if v is None or v == "" or (isinstance(v, float) and math.isnan(v)):
            continue
        try:
            if k in _INT_FIELDS and isinstance(v, str):
                f = float(v)
                v = int(f) if f.is_integer() else f
            elif k in _FLOAT_FIELDS and isinstance(v, str):
                v = float(v)
            elif k == "candidates" and isinstance(v, str):
                v = orjson.loads(v)
            elif k in _INT_FIELDS and isinstance(v, float) and v.is_integer():
                v = int(v)
        except (ValueError, orjson.JSONDecodeError):
            pass
        d[k] = v
    return d


def _records(path: Path) -> Iterator[tuple[str, dict | bytes]]:
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    yield f"line {n}", line.strip()
    elif suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            try:
                while True:
                    start = reader.line_num + 1  # (a quoted cell may span lines: name the row's first)
                    row = next(reader, None)
                    if row is None:
                        return
                    yield f"line {max(start, 2)}", _clean_row(row)
            except (UnicodeDecodeError, csv.Error) as e:
                raise SourceError(f"{path}, line {reader.line_num + 1}: not readable as CSV ({e})") from None
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=10_000)
            n = 0
            for batch in batches:
                for row in batch.to_pylist():
                    n += 1
                    yield f"row {n}", _clean_row(row)
        except (pa.ArrowException, OSError) as e:
            raise SourceError(f"{path}: not readable as Parquet ({e})") from None
    else:
        raise SourceError(f"{path}: unknown format {suffix!r}; use .jsonl, .csv or .parquet")


def read_rows(path: str | Path, parser: EventParser | None = None) -> Iterator[Event | BadRow]:
    """Every row of ``path``, in order, as an :class:`Event` or a :class:`BadRow`."""
    path = Path(path)
    if not path.exists():
        raise SourceError(f"{path} does not exist")
    if path.is_dir():
        raise SourceError(f"{path} is a folder, not a file of events")
    parser = parser or EventParser()
    far_future = 2**62  # (a file's events may be of any age; the job bounds them by its clock)
    for where, rec in _records(path):
        raw = rec if isinstance(rec, bytes) else orjson.dumps(rec, default=str)
        e = parser.parse(raw, now_ms=far_future)
        if isinstance(e, Rejection):
            yield BadRow(where, e.reason, raw, e.user_id)
        else:
            yield e


def read_events(path: str | Path, parser: EventParser | None = None) -> Iterator[Event]:
    """Parse every row of ``path`` as an event; a bad row raises :class:`SourceError` naming it."""
    for row in read_rows(path, parser):
        if isinstance(row, BadRow):
            raise SourceError(f"{path}, {row}")
        yield row


def check_rows(rows: Iterable[Event | BadRow], report: Callable[[BadRow], None]) -> tuple[int, int]:
    """How many rows there are and how many are bad, each bad one handed to ``report`` on the way.

    >>> check_rows([BadRow("line 1", "empty payload", b""), Event("e", "u", "i", "click", 0)], print)
    line 1: empty payload
    (2, 1)
    """
    total = bad = 0
    for row in rows:
        total += 1
        if isinstance(row, BadRow):
            bad += 1
            report(row)
    return total, bad


def stream_rows(source: str, limit: int = 0, parser: EventParser | None = None) -> Iterator[Event | BadRow]:
    """The first ``limit`` rows (all when 0) of a built-in data set or a file (:func:`read_rows`), one at a time.

    The built-in data sets are events only, built in memory (MovieLens-100K is small).
    """
    if source in BUILT_IN:
        yield from load_events(source, limit)
        return
    yield from itertools.islice(read_rows(source, parser), limit or None)


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
