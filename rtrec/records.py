"""The records on rtrec's output topics: written and read here, and nowhere else.

Each topic's JSON Schema lies in ``rtrec/schema/`` (:data:`SCHEMAS`); the
integration tests validate what the job writes against them. The job encodes
a batch's columns (:func:`encode_predictions`, :func:`encode_recommendations`:
one small dict and one ``orjson.dumps`` per record); the features topic's
records come from :func:`encode_feature` (the feature engine and the cores
call it with the features they read). Consumers (the
serving store, ``rtrec eval``, the demo) decode with :func:`read_record`.

    >>> read_record("recommendations", b'{"user_id": "7", "items": ["a"]}')["items"]
    ['a']
    >>> read_record("predictions", b'{"user_id": "7"}')
    Traceback (most recent call last):
    ...
    ValueError: not a predictions record: missing event_id, item_id, ts, type, label, scores, fused
"""

from __future__ import annotations

import itertools
import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from rtrec.core.outputs import SEPARATOR

if TYPE_CHECKING:
    from models.online import Predictions, Recommendation
    from rtrec.core.outputs import TopicRecords

SCHEMA_DIR = Path(__file__).parent / "schema"
#: Output topic -> its JSON Schema file.
SCHEMAS = {"features": SCHEMA_DIR / "feature-v1.json", "recommendations": SCHEMA_DIR / "recommendation-v1.json",
           "predictions": SCHEMA_DIR / "prediction-v1.json"}
#: What a consumer needs of each topic's records (a subset of each schema's required fields: records of
#: earlier releases lack some of the others).
_NEEDED = {"features": ("entity", "id", "features"), "recommendations": ("user_id", "items"),
           "predictions": ("event_id", "user_id", "item_id", "ts", "type", "label", "scores", "fused")}


def encode_feature(entity: str, entity_id: str, version: str, event_id: str, event_ts: int, events: int,
                   features: dict) -> bytes:
    """A features-topic value: an entity's features as of ``event_id`` (its newest event time and the
    number of events folded in), under the definitions' ``version``."""
    return orjson.dumps({"entity": entity, "id": entity_id, "version": version, "event_id": event_id,
                         "event_ts": event_ts, "events": events, "features": features})


@cache
def schema(topic: str) -> dict:
    """The JSON Schema of an output topic's records (``features``, ``recommendations`` or ``predictions``)."""
    return json.loads(SCHEMAS[topic].read_text())


def read_record(topic: str, value: bytes) -> dict:
    """A record of an output topic as a dict; ValueError (naming what is wrong) if it is not one."""
    try:
        d = orjson.loads(value)
    except orjson.JSONDecodeError as e:
        raise ValueError(f"not a {topic} record: {e}") from None
    if not isinstance(d, dict):
        raise ValueError(f"not a {topic} record: a JSON {type(d).__name__}")
    missing = [f for f in _NEEDED[topic] if f not in d]
    if missing:
        raise ValueError(f"not a {topic} record: missing {', '.join(missing)}")
    return d


def encode_predictions(p: Predictions, version: int, trainer: int, out: TopicRecords) -> None:
    """One predictions-topic record per example (key: user id); ``correction`` where the fusion's per-user
    correction (models.affinity) is on, ``like`` where the like head (models.like) is."""
    names = tuple(p.scores)
    dumps, sep = orjson.dumps, SEPARATOR
    # (one comprehension over the columns, each record straight into the list as TopicRecords.append
    # writes it: this runs per example, and took 3 µs an example as a loop of appends; a score row has
    # one value per name by construction, hence strict=False there)
    columns = zip(p.event_id, p.user_id, p.item_id, p.ts, p.type, p.label,
                  zip(*(p.scores[n] for n in names), strict=True), p.fused, p.heldout, strict=True)
    # The optional fields are on or off for the whole batch: their columns are zipped in, not checked per
    # example.
    optional = tuple(name for name in ("correction", "like") if getattr(p, name))
    extra = zip(*(getattr(p, name) for name in optional), strict=True) if optional else itertools.repeat(())
    list.extend(out, [
        f"{user}{sep}" + dumps({
            "event_id": event_id, "user_id": user, "item_id": item_id, "ts": ts, "type": type_, "label": label,
            "model_version": version, "scores": dict(zip(names, scores, strict=False)), "fused": fused,
            "heldout": heldout, "trainer": trainer, **dict(zip(optional, values, strict=True)),
        }).decode()
        for (event_id, user, item_id, ts, type_, label, scores, fused, heldout), values in zip(columns, extra, strict=False)  # (extra: endless when empty)
    ])


def request_of(r: Recommendation) -> dict:
    """What a list answers: a user's top-k after an interaction, a request's candidates, or a search."""
    e = r.event
    if e.type == "search" and e.candidates:
        return {"request": "search", "query": e.query}
    return {"request": "candidates" if e.candidates else "refresh"}


def encode_recommendations(recs: list[Recommendation], version: int, out: TopicRecords) -> None:
    """One recommendations-topic record per list (key: user id)."""
    dumps = orjson.dumps
    for r in recs:
        e = r.event
        out.append(e.user_id, dumps({
            "user_id": e.user_id, "event_id": e.event_id, "ts": e.ts, "items": r.items, "scores": r.scores,
            "model_version": version, "feature_ts": e.ts, **request_of(r),
        }))
