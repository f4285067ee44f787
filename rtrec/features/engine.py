"""Interpret feature declarations over an entity's events, online and offline alike.

    >>> from rtrec.events import Event
    >>> from rtrec.features.definitions import USER_FEATURES
    >>> engine = FeatureEngine(USER_FEATURES)
    >>> state = engine.new_state()
    >>> engine.update(state, Event("e1", "u1", "i1", "rating", 60_000, 4.0, "Drama"))
    >>> f = engine.snapshot(state, 60_000)
    >>> f["count_rating_5m"], f["rating_mean"], f["last_items"]
    (1, 4.0, ['i1'])
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from rtrec.events import EVENT_TYPES, Event
from rtrec.records import encode_feature


@dataclass(frozen=True)
class FeatureGroup:
    """Features of one kind of entity, keyed by an event field (Chronon's GroupBy)."""

    entity: str
    key: str
    features: tuple

    @property
    def version(self) -> str:
        """``{entity}-{hash of the declarations}``: changes whenever a definition does."""
        digest = hashlib.sha1(repr(self.features).encode()).hexdigest()[:10]
        return f"{self.entity}-{digest}"

    def outputs(self) -> list[str]:
        return [name for f in self.features for name in f.outputs()]


# An entity's state: [newest event ts, events folded in, one slot per feature].
NEWEST, COUNT, SLOTS = 0, 1, 2


class FeatureEngine:
    """Runs one :class:`FeatureGroup`: fold events into state, read values at a time."""

    def __init__(self, group: FeatureGroup):
        self.group = group
        self.features = group.features
        self.version = group.version
        self._key = group.key
        # Bound methods (or a declaration's fast_update()), looked up once: update() and snapshot() run
        # per event.
        updates = [f.fast_update() if hasattr(f, "fast_update") else f.update for f in self.features]
        self._slots = [(u, SLOTS + i) for i, u in enumerate(updates)]
        self._reads = [f.read for f in self.features]
        # Per event type, only the features it can change (others' update() would do nothing).
        self._slots_of = {t: [(u, SLOTS + i) for i, (f, u) in enumerate(zip(self.features, updates, strict=True))
                              if f.touched_by() is None or t in f.touched_by()] for t in EVENT_TYPES}

    def new_state(self) -> list:
        return [None, 0, *(f.init() for f in self.features)]

    def key(self, e: Event) -> str | None:
        return getattr(e, self._key)

    def update(self, state: list, e: Event) -> None:
        """Fold one event in."""
        newest = state[NEWEST]
        if newest is None or e.ts > newest:
            state[NEWEST] = e.ts
        state[COUNT] += 1
        for update, i in self._slots_of.get(e.type, self._slots):
            update(state[i], e)

    def snapshot(self, state: list, at_ts: int) -> dict:
        """Feature values as of ``at_ts`` over the events folded in so far."""
        out: dict = {}
        for read, slot in zip(self._reads, state[SLOTS:], strict=True):
            read(slot, at_ts, out)
        return out

    def record(self, entity_id: str, state: list, e: Event) -> bytes:
        """The features-topic value after folding in ``e``: as of its event time."""
        return encode_feature(self.group.entity, entity_id, self.version, e.event_id, state[NEWEST], state[COUNT],
                              self.snapshot(state, e.ts))
