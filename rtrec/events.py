"""Behaviour events, schema version 1.

The schema is written once, in ``rtrec/schema/event-v1.json``; :func:`parse_event`
implements the same rules (a JSON Schema validator per event would cost more
than the rest of the pipeline) plus the ones JSON Schema cannot state: payload
size, UTF-8, the wall-clock bound on ``ts`` and the configured rating scale.
A well-formed event is decoded into a msgspec struct of the schema's types
(checked in C), then the other rules are checked; anything else goes through
the same rules written out one by one, which name the reason
(:meth:`EventParser.parse_checked`). It returns an :class:`Event` or a
:class:`Rejection` naming the reason; it never raises on input::

    >>> parse_event(b'{"event_id":"e1","user_id":42,"item_id":"7","type":"click","ts":1000}', now_ms=2000)
    Event(event_id='e1', user_id='42', item_id='7', type='click', ts=1000, value=None, category=None, dwell_ms=None, query=None, candidates=None, session_id=None)
    >>> parse_event(b'{"event_id":"e1"', now_ms=0).reason
    'malformed JSON: unexpected end of data'
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import orjson

from rtrec.config import EventConfig, ModelConfig

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).parent / "schema" / "event-v1.json"



@dataclass(frozen=True, slots=True)
class EventType:
    """What an event type means to the features, the learner and the evaluation: defined here only."""

    name: str
    #: Binary feedback that is a positive example (and attributes an open impression of its item).
    positive: bool = False
    #: The user acted on the item: it joins their recent items, counts in popularity, refreshes their top-k.
    interaction: bool = False
    #: How much it pulls the user's text interest towards the item (a rating: by its value, see
    #: models.search.interest_weight).
    interest: float = 0.0


#: Every event type of schema version 1, in the schema's order.
EVENT_TABLE = {t.name: t for t in (
    EventType("impression"),
    EventType("view", interaction=True, interest=0.25),
    EventType("click", positive=True, interaction=True, interest=0.5),
    EventType("add_to_cart", positive=True, interaction=True, interest=0.75),
    EventType("purchase", positive=True, interaction=True, interest=1.0),
    EventType("rating", interaction=True),
    EventType("search"),
)}
EVENT_TYPES = tuple(EVENT_TABLE)
_EVENT_TYPES = frozenset(EVENT_TYPES)
#: Binary positive feedback: learned as the top of the rating scale.
POSITIVE_TYPES = frozenset(t.name for t in EVENT_TABLE.values() if t.positive)
#: The user acted on the item (see EventType.interaction).
INTERACTION_TYPES = frozenset(t.name for t in EVENT_TABLE.values() if t.interaction)
#: Types whose example is labelled in rating units; every other labelled type is binary.
RATING_TYPE = "rating"
MAX_VALUE = 1e9
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(slots=True)
class Event:
    """A validated event. Ids are strings whatever their JSON type."""

    event_id: str
    user_id: str
    item_id: str | None
    type: str
    ts: int
    value: float | None = None
    category: str | None = None
    dwell_ms: int | None = None
    query: str | None = None
    candidates: list[str] | None = None
    session_id: str | None = None

    def __reduce__(self):
        # Pickle as a plain tuple of fields: about five times faster than the
        # default for slotted dataclasses, and events cross between operators.
        return (Event, (self.event_id, self.user_id, self.item_id, self.type, self.ts, self.value, self.category,
                        self.dwell_ms, self.query, self.candidates, self.session_id))

    def to_json(self) -> bytes:
        """Canonical JSON (optional fields left out when absent)."""
        d = {
            "schema_version": SCHEMA_VERSION,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "type": self.type,
            "ts": self.ts,
        }
        for name in ("item_id", "value", "category", "dwell_ms", "query", "candidates", "session_id"):
            v = getattr(self, name)
            if v is not None:
                d[name] = v
        return orjson.dumps(d)


#: The tag of :func:`pack_events`' format: events as columns, one list per field of :class:`Event`.
EVENT_COLUMNS = "event-columns-1"


def pack_events(events: list[Event]) -> tuple:
    """``events`` as columns (a tag, then one list per field in :class:`Event`'s order): how the UserStage
    hands accepted events to the ItemStage and how that keeps held-back ones in state. Pickled, columns of
    plain values take about half the time of Event objects (0.7 against 1.3 µs an event), and both
    crossings pickle every event.

    >>> e = Event("e1", "u1", "i1", "rating", 5, 4.0)
    >>> packed = pack_events([e, Event("e2", "u1", None, "search", 6, query="q", candidates=["i1"])])
    >>> packed[:3]
    ('event-columns-1', ['e1', 'e2'], ['u1', 'u1'])
    >>> unpack_events(packed)[0] == e, unpack_events(pack_events([]))
    (True, [])
    """
    es = events  # (a comprehension per field: twice as fast as transposing attrgetter tuples)
    return (EVENT_COLUMNS, [e.event_id for e in es], [e.user_id for e in es], [e.item_id for e in es],
            [e.type for e in es], [e.ts for e in es], [e.value for e in es], [e.category for e in es],
            [e.dwell_ms for e in es], [e.query for e in es], [e.candidates for e in es], [e.session_id for e in es])


def unpack_events(value) -> list[Event]:
    """The events of :func:`pack_events`' columns, or of a list of events (what releases up to 0.1.0 sent and
    kept in the ItemStage's state)."""
    if type(value) is tuple and value and value[0] == EVENT_COLUMNS:
        return list(map(Event, *value[1:])) if len(value) > 1 else []
    return list(value)


@dataclass(slots=True)
class Rejection:
    """Why a record could not be processed, and at which stage."""

    reason: str
    stage: str = "validate"
    user_id: str | None = None


class EventParser:
    """Parses raw record values into events under one configuration.

    ``now_ms`` is the wall clock used for the future-timestamp bound; tests pin it.
    """

    __slots__ = ("max_bytes", "max_id", "max_candidates", "max_query", "max_future_ms", "rating_min", "rating_max",
                 "_decode")

    def __init__(self, events: EventConfig | None = None, model: ModelConfig | None = None):
        events = events or EventConfig()
        model = model or ModelConfig()
        self.max_bytes = events.max_payload_bytes
        self.max_id = events.max_id_chars
        self.max_candidates = events.max_candidates
        self.max_query = events.max_query_chars
        self.max_future_ms = events.max_future_ms
        self.rating_min = model.rating_min
        self.rating_max = model.rating_max
        self._decode = _wire_decoder(self.max_id, self.max_query, self.max_candidates)

    def _id(self, v, name: str) -> str | Rejection:
        if type(v) is str:
            if not v or len(v) > self.max_id:
                return Rejection(f"{name} must be 1..{self.max_id} characters")
            if _CONTROL.search(v):
                return Rejection(f"{name} must not contain control characters")
            return v
        if type(v) is int:
            if v < 0:
                return Rejection(f"{name} must not be negative")
            return str(v)
        return Rejection(f"{name} must be a string or a non-negative integer, got {_jtype(v)}")

    def _opt_str(self, d: dict, name: str, limit: int) -> str | None | Rejection:
        v = d.get(name)
        if v is None:
            return None
        if type(v) is not str:
            return Rejection(f"{name} must be a string, got {_jtype(v)}")
        if not v or len(v) > limit:
            return Rejection(f"{name} must be 1..{limit} characters")
        return v

    def parse(self, raw: bytes | None, now_ms: int | None = None) -> Event | Rejection:
        """The event in a record value, or why it was refused.

        A well-formed event is decoded and type-checked in one C call (msgspec, into a struct made for this
        configuration's limits) and the rules JSON types cannot state are checked after it. Anything that
        path does not accept (a refusal, or a rare form such as a ``ts`` written as ``1000.0``) goes
        through :meth:`parse_checked`, which gives each refusal its reason; the two agree on every
        event they both accept (tests/test_events.py holds them to it). 1.5 µs an event against 4.2
        on MovieLens' records."""
        if type(raw) is bytes and 0 < len(raw) <= self.max_bytes:
            try:
                w = self._decode(raw)
            except Exception:  # (msgspec's errors, UnicodeDecodeError, deep nesting...: the checked path says why)  # noqa: BLE001
                pass
            else:
                now = int(time.time() * 1000) if now_ms is None else now_ms
                event = self._accept(w, raw, now)
                if event is not None:
                    return event
        return self.parse_checked(raw, now_ms)

    def _accept(self, w, raw: bytes, now: int) -> Event | None:
        """The event of a decoded well-formed struct, or None where a rule says no (parse_checked says why)."""
        ts, etype, item, value = w.ts, w.type, w.item_id, w.value
        if ts > now + self.max_future_ms:
            return None
        if item is None:
            if etype != "search":
                return None
        elif type(item) is int:
            if item > _MAX_INT_ID:
                return None
            item = str(item)
        if etype == "rating" and (value is None or not self.rating_min <= value <= self.rating_max):
            return None
        if etype == "search" and w.query is None:
            return None
        user, event_id, candidates = w.user_id, w.event_id, w.candidates
        if type(user) is int:
            if user > _MAX_INT_ID:
                return None
            user = str(user)
        if candidates is not None:
            ids = []
            for c in candidates:
                if type(c) is int:
                    if c > _MAX_INT_ID:
                        return None
                    c = str(c)
                ids.append(c)
            candidates = ids
        # A JSON string can hold a control character only as an escape (orjson and msgspec refuse raw ones)
        # or as DEL: without a backslash or a DEL byte, none does.
        if raw.find(b"\\") >= 0 or raw.find(b"\x7f") >= 0:
            search = _CONTROL.search
            if (search(user) or search(event_id) or (item is not None and search(item))
                    or (candidates is not None and any(search(c) for c in candidates))):
                return None
        return Event(event_id, user, item, etype, ts, value, w.category, w.dwell_ms, w.query, candidates,
                     w.session_id)

    def parse_checked(self, raw: bytes | None, now_ms: int | None = None) -> Event | Rejection:
        """:meth:`parse`, each rule checked in turn in Python: the reason of every refusal."""
        if raw is None or len(raw) == 0:
            return Rejection("empty payload")
        if len(raw) > self.max_bytes:
            return Rejection(f"payload of {len(raw)} bytes exceeds events.max_payload_bytes={self.max_bytes}")
        try:
            d = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            msg = str(e)
            if "utf-8" in msg.lower() or "surrogate" in msg.lower():
                return Rejection("payload is not valid UTF-8")
            return Rejection(f"malformed JSON: {msg.split(':', 1)[0].strip().lower() or 'parse error'}")
        if type(d) is not dict:
            return Rejection(f"payload must be a JSON object, got {_jtype(d)}")
        # A JSON string cannot hold a raw control character (orjson refuses them) save DEL, only escapes
        # (\n, \u0001, ...): without a backslash or a DEL byte, no string in the payload holds one.
        plain = type(raw) is bytes and raw.find(b"\\") < 0 and raw.find(b"\x7f") < 0  # (find: memchr)
        return self.fields(d, now_ms, plain)

    def fields(self, d: dict, now_ms: int | None = None, plain: bool = False) -> Event | Rejection:
        """The event in a decoded payload; ``plain``: its strings are known to hold no control characters
        (so they are not searched for any)."""
        get = d.get
        max_id = self.max_id
        version = get("schema_version", SCHEMA_VERSION)
        if version != SCHEMA_VERSION or type(version) is not int:
            return Rejection(f"unsupported schema_version {version!r} (this job reads {SCHEMA_VERSION})")

        user = get("user_id")
        if not (type(user) is str and 0 < len(user) <= max_id and (plain or not _CONTROL.search(user))):
            if user is None:
                return Rejection("missing field user_id")
            user = self._id(user, "user_id")
            if type(user) is Rejection:
                return user

        event_id = get("event_id")
        if event_id is None:
            return Rejection("missing field event_id", user_id=user)
        if (type(event_id) is not str or not event_id or len(event_id) > max_id
                or (not plain and _CONTROL.search(event_id))):
            return Rejection(
                f"event_id must be a string of 1..{max_id} characters without control characters", user_id=user
            )

        etype = get("type")
        if etype is None:
            return Rejection("missing field type", user_id=user)
        if type(etype) is not str or etype not in _EVENT_TYPES:
            return Rejection(f"unknown event type {str(etype)[:40]!r}", user_id=user)

        ts = get("ts")
        if ts is None:
            return Rejection("missing field ts", user_id=user)
        if type(ts) is float and math.isfinite(ts) and ts == int(ts):
            ts = int(ts)
        if type(ts) is not int:
            return Rejection(f"ts must be an integer (epoch ms), got {_jtype(ts)}", user_id=user)
        if ts < 0:
            return Rejection("ts must not be negative", user_id=user)
        now = int(time.time() * 1000) if now_ms is None else now_ms
        if ts > now + self.max_future_ms:
            return Rejection(f"ts {ts} is more than events.max_future_ms ahead of the clock", user_id=user)

        item = get("item_id")
        if item is not None:
            if not (type(item) is str and 0 < len(item) <= max_id and (plain or not _CONTROL.search(item))):
                item = self._id(item, "item_id")
                if type(item) is Rejection:
                    item.user_id = user
                    return item
        elif etype != "search":
            return Rejection(f"missing field item_id (required for {etype} events)", user_id=user)

        value = get("value")
        if value is not None:
            if type(value) not in (int, float):
                return Rejection(f"value must be a number, got {_jtype(value)}", user_id=user)
            value = float(value)
            if not math.isfinite(value) or value < 0 or value > MAX_VALUE:
                return Rejection(f"value {value!r} is outside 0..{MAX_VALUE:g}", user_id=user)
        if etype == "rating":
            if value is None:
                return Rejection("missing field value (the rating of a rating event)", user_id=user)
            if not self.rating_min <= value <= self.rating_max:
                return Rejection(
                    f"rating {value:g} is outside model.rating_min..rating_max "
                    f"({self.rating_min:g}..{self.rating_max:g})",
                    user_id=user,
                )

        # Optional strings: absent, or 1..limit characters (checked by _opt_str when not plainly so).
        category = get("category")
        if category is not None and not (type(category) is str and 0 < len(category) <= max_id):
            category = self._opt_str(d, "category", max_id)
            category.user_id = user
            return category
        session_id = get("session_id")
        if session_id is not None and not (type(session_id) is str and 0 < len(session_id) <= max_id):
            session_id = self._opt_str(d, "session_id", max_id)
            session_id.user_id = user
            return session_id
        query = get("query")
        if query is not None and not (type(query) is str and 0 < len(query) <= self.max_query):
            query = self._opt_str(d, "query", self.max_query)
            query.user_id = user
            return query
        if etype == "search" and query is None:
            return Rejection("missing field query (required for search events)", user_id=user)

        dwell = get("dwell_ms")
        if dwell is not None:
            if type(dwell) is float and math.isfinite(dwell) and dwell == int(dwell):
                dwell = int(dwell)
            if type(dwell) is not int or not 0 <= dwell <= 86_400_000:
                return Rejection("dwell_ms must be an integer in 0..86400000", user_id=user)

        candidates = get("candidates")
        if candidates is not None:
            if type(candidates) is not list:
                return Rejection(f"candidates must be a list, got {_jtype(candidates)}", user_id=user)
            if len(candidates) > self.max_candidates:
                return Rejection(
                    f"{len(candidates)} candidates exceed events.max_candidates={self.max_candidates}",
                    user_id=user,
                )
            ids = []
            for c in candidates:
                if not (type(c) is str and 0 < len(c) <= max_id and (plain or not _CONTROL.search(c))):
                    c = self._id(c, "candidate id")
                    if type(c) is Rejection:
                        c.user_id = user
                        return c
                ids.append(c)
            candidates = ids

        return Event(event_id, user, item, etype, ts, value, category, dwell, query, candidates, session_id)


#: The largest integer id orjson reads as an integer (larger ones become floats, which ids may not be).
_MAX_INT_ID = 2**64 - 1


def _wire_decoder(max_id: int, max_query: int, max_candidates: int):
    """A msgspec JSON decoder of the event schema's types and lengths (what :meth:`EventParser.parse` tries
    first), into an untracked struct: its field's types are checked in C; unknown fields are ignored, as
    the schema allows."""
    text = Annotated[str, msgspec.Meta(min_length=1, max_length=max_id)]
    ident = text | Annotated[int, msgspec.Meta(ge=0)]  # (and at most _MAX_INT_ID: EventParser._accept)
    wire = msgspec.defstruct("EventWire", [
        ("event_id", text),
        ("user_id", ident),
        ("type", Literal[EVENT_TYPES]),
        ("ts", Annotated[int, msgspec.Meta(ge=0)]),
        ("schema_version", Literal[SCHEMA_VERSION], SCHEMA_VERSION),
        ("item_id", ident | None, None),
        ("value", Annotated[float, msgspec.Meta(ge=0, le=MAX_VALUE)] | None, None),
        ("category", text | None, None),
        ("dwell_ms", Annotated[int, msgspec.Meta(ge=0, le=86_400_000)] | None, None),
        ("query", Annotated[str, msgspec.Meta(min_length=1, max_length=max_query)] | None, None),
        ("candidates", Annotated[list[ident], msgspec.Meta(max_length=max_candidates)] | None, None),
        ("session_id", text | None, None),
    ], gc=False)
    return msgspec.json.Decoder(wire).decode


def parse_event(raw: bytes | None, now_ms: int | None = None, parser: EventParser | None = None) -> Event | Rejection:
    """Parse one record value with the default configuration (see :class:`EventParser`)."""
    return (parser or _DEFAULT).parse(raw, now_ms)


def _jtype(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


_DEFAULT = EventParser()
