"""The offline feature engine: the same definitions over a replay, point in time.

Each entity's events are folded in ``(ts, event_id)`` order, which is the
order the streaming job sees them in when a replay is produced in timestamp
order (users: their partition's order; items: the ItemStage sorts by event
time). For every event the engine yields the entity's features either as of
just *before* the event (training rows: no label leaks in) or just *after*
it (what the job writes to the features topic).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from rtrec.events import Event
from rtrec.features.definitions import ITEM_FEATURES, USER_FEATURES
from rtrec.features.engine import FeatureEngine, FeatureGroup


@dataclass(frozen=True, slots=True)
class FeatureRow:
    entity: str
    id: str
    event_id: str
    ts: int
    features: dict


def event_order(e: Event) -> tuple[int, str]:
    return (e.ts, e.event_id)


def snapshots(events: Iterable[Event], group: FeatureGroup, as_of: str = "after") -> Iterator[FeatureRow]:
    """Per event with the group's key: the entity's features ``before`` or ``after`` folding it in."""
    if as_of not in ("before", "after"):
        raise ValueError("as_of must be 'before' or 'after'")
    engine = FeatureEngine(group)
    states: dict[str, list] = {}
    for e in sorted(events, key=event_order):
        key = engine.key(e)
        if key is None:
            continue
        state = states.get(key)
        if state is None:
            state = states[key] = engine.new_state()
        if as_of == "before":
            yield FeatureRow(group.entity, key, e.event_id, e.ts, engine.snapshot(state, e.ts))
            engine.update(state, e)
        else:
            engine.update(state, e)
            yield FeatureRow(group.entity, key, e.event_id, e.ts, engine.snapshot(state, e.ts))


def training_rows(events: Iterable[Event]) -> Iterator[dict]:
    """One row per event: its label fields plus user and item features as of just before it."""
    events = sorted(events, key=event_order)
    users = {r.event_id: r.features for r in snapshots(events, USER_FEATURES, "before")}
    items = {r.event_id: r.features for r in snapshots(events, ITEM_FEATURES, "before")}
    for e in events:
        row = {"event_id": e.event_id, "user_id": e.user_id, "item_id": e.item_id, "type": e.type, "ts": e.ts,
               "value": e.value}
        for prefix, feats in (("user", users.get(e.event_id)), ("item", items.get(e.event_id))):
            for name, v in (feats or {}).items():
                row[f"{prefix}__{name}"] = orjson.dumps(v).decode() if isinstance(v, dict) else v
        yield row


def write_parquet(rows: Iterable[dict], path: str | Path) -> int:
    """Write rows to Parquet; columns are the union of the rows' keys (missing values are null)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(rows)
    columns: dict[str, None] = {}
    for r in rows:
        for k in r:
            columns.setdefault(k, None)
    table = pa.table({c: [r.get(c) for r in rows] for c in columns})
    pq.write_table(table, path)
    return len(rows)
