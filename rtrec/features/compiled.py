"""A feature group folded by compiled code: the same declarations, numeric state, one call per batch.

:class:`CompiledGroup` runs a :class:`~rtrec.features.engine.FeatureGroup`
made only of numeric declarations (:class:`~rtrec.features.spec.WindowedCount`,
:class:`~rtrec.features.spec.SmoothedCTR`, :class:`~rtrec.features.spec.RatingStats`,
:class:`~rtrec.features.spec.Recency`, :class:`~rtrec.features.spec.Trend`:
the item features) the way :class:`~rtrec.features.engine.FeatureEngine` does,
with the same results (tests/test_compiled_features.py holds the two against
each other, events in any order), at a fraction of the Python cost: an
entity's state is one float64 vector, and a batch of events folds into the
states of its entities in one compiled loop (Numba), which also reads the
values after each entity's last event (or after every event). Python is left
with building the columns, once per event, and the records, once per entity.

The vector: ``[newest event ts (NaN: none), events folded in, slots...]``,
where a windowed count's window is ``[newest bucket, counts of nb buckets x
columns in a ring (bucket b at b % nb)]``, a smoothed CTR's ``[clicks,
impressions]``, rating statistics' ``[n, mean, m2]`` (Welford), a recency's the
newest time per type (NaN: none). :meth:`CompiledGroup.from_engine_state`
reads the engine's state (item state as every release before this one kept
it), :meth:`CompiledGroup.to_engine_state` gives it back, and
:meth:`CompiledGroup.store` is the stored form (for users, its non-zero values).

:class:`HybridGroup` runs a group with other declarations too (the user
features): the numeric ones compiled, the others on the engine.

Numba's compiled code must be entered from a thread Python created
(models/sequential.py says why): the stages call their cores through
models.worker.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from models.sequential import jit
from rtrec.events import EVENT_TYPES, Event
from rtrec.features.engine import COUNT, NEWEST, SLOTS, FeatureEngine, FeatureGroup
from rtrec.features.spec import RatingStats, Recency, SmoothedCTR, Trend, WindowedCount

_WC, _CTR, _RATING, _RECENCY, _TREND = 0, 1, 2, 3, 4
_NO_PICK = np.zeros(0, np.int64)
_KINDS = {WindowedCount: _WC, SmoothedCTR: _CTR, RatingStats: _RATING, Recency: _RECENCY, Trend: _TREND}
_TYPE_CODE = {t: i for i, t in enumerate(EVENT_TYPES)}


class Folded(NamedTuple):
    """What :meth:`CompiledGroup.fold` gives back."""

    vectors: dict[str, np.ndarray]  # entity id -> its vector after the batch
    ids: list[str]  # per read: its entity
    raw: np.ndarray  # per read: the entity's raw values (CompiledGroup.snapshot makes the features)
    reads: np.ndarray  # per read: the index of the event it is after
    picked: np.ndarray  # per event: the picked values of its entity before it ([:, 0]) and after it ([:, 1])


def compilable(group: FeatureGroup) -> bool:
    """Whether every declaration of ``group`` is of a kind :class:`CompiledGroup` runs."""
    return all(type(f) in _KINDS for f in group.features)


class CompiledGroup:
    """:class:`~rtrec.features.engine.FeatureEngine`'s fold and snapshot for a numeric group, compiled;
    ``sparse``: store vectors as their non-zero values (:meth:`store`)."""

    def __init__(self, group: FeatureGroup, sparse: bool = False):
        self.sparse = sparse
        if not compilable(group):
            kinds = sorted({type(f).__name__ for f in group.features if type(f) not in _KINDS})
            raise ValueError(f"{group.entity} features declare {', '.join(kinds)}: not compiled (numeric kinds only)")
        self.group = group
        self.version = group.version
        nt = len(EVENT_TYPES)
        kinds, offsets, params, windows, sizes = [], [], [], [], []
        # per declaration: kind, its slot's offset in the vector, and a row of event-type parameters
        # (a windowed count's column per type, -1: not counted; a CTR's 1 click / 2 impression; a rating's 1;
        # a recency's index per type)
        at = SLOTS
        self._read_plan = []  # per declaration: (kind, offset, first window row, windows)
        for f in group.features:
            kind = _KINDS[type(f)]
            row = [-1] * nt
            first = len(windows)
            if kind == _WC:
                for t, c in f._columns.items():
                    row[_TYPE_CODE[t]] = c
                nc = len(f.event_types) if f.per_type else 1
                for w in f.windows:
                    windows.append((w.width, w.buckets, nc, at))
                    at += 1 + w.buckets * nc
                size = 0
            elif kind == _CTR:
                for t in f.click_types:
                    row[_TYPE_CODE[t]] = 1
                for t in f.impression_types:
                    if row[_TYPE_CODE[t]] < 0:
                        row[_TYPE_CODE[t]] = 2
                size = 2
            elif kind == _RATING:
                row[_TYPE_CODE[f.event_type]] = 1
                size = 3
            elif kind == _RECENCY:
                for i, t in enumerate(f.event_types):
                    if row[_TYPE_CODE[t]] < 0:
                        row[_TYPE_CODE[t]] = i
                size = len(f.event_types)
            else:
                size = 0
            kinds.append(kind)
            offsets.append(at if kind != _WC else windows[first][3])
            params.append(row)
            sizes.append(size)
            self._read_plan.append((kind, offsets[-1], first, len(windows) - first))
            at += size
        self.size = at
        self._kinds = np.array(kinds, np.int64)
        self._offsets = np.array(offsets, np.int64)
        self._params = np.array(params, np.int64).reshape(len(kinds), nt)
        self._windows = np.array(windows, np.int64).reshape(len(windows), 4)
        self._first_window = np.array([p[2] for p in self._read_plan], np.int64)
        self._n_windows = np.array([p[3] for p in self._read_plan], np.int64)
        self._sizes = np.array(sizes, np.int64)
        if at >= 1 << 16:
            raise ValueError(f"{group.entity} features of {at} state values: at most 65,536 are compiled")
        self._size_bytes = np.uint16(at).tobytes()
        self._template = self._new()
        self._width = self._raw_width()
        self.snapshot = self._snapshot_function()

    # -- state -------------------------------------------------------------------------
    def _new(self) -> np.ndarray:
        v = np.zeros(self.size, np.float64)
        v[NEWEST] = np.nan
        for (kind, off, first, n), f in zip(self._read_plan, self.group.features, strict=True):
            if kind == _WC:
                for _width, _nb, _nc, woff in self._windows[first : first + n].tolist():
                    v[woff] = -1.0
            elif kind == _RECENCY:
                v[off : off + len(f.event_types)] = np.nan
        return v

    def new_state(self) -> np.ndarray:
        return self._template.copy()

    def from_engine_state(self, state: list) -> np.ndarray:
        """The vector of a state :class:`~rtrec.features.engine.FeatureEngine` folded."""
        v = self.new_state()
        v[NEWEST] = np.nan if state[NEWEST] is None else state[NEWEST]
        v[COUNT] = state[COUNT]
        for (kind, off, first, n), slot in zip(self._read_plan, state[SLOTS:], strict=True):
            if kind == _WC:
                for (_width, nb, nc, woff), (newest, _, buckets) in zip(self._windows[first : first + n].tolist(), slot,
                                                                       strict=True):
                    v[woff] = newest
                    for b, counts in buckets.items():
                        if newest - nb < b <= newest:
                            base = woff + 1 + (b % nb) * nc
                            v[base : base + nc] = counts
            elif kind in (_CTR, _RATING):
                v[off : off + len(slot)] = slot
            elif kind == _RECENCY:
                v[off : off + len(slot)] = [np.nan if t is None else t for t in slot]
        return v

    def to_engine_state(self, v: np.ndarray) -> list:
        """The state :class:`~rtrec.features.engine.FeatureEngine` keeps for the same events."""
        vals = v.tolist()
        state: list = [None if math.isnan(vals[NEWEST]) else int(vals[NEWEST]), int(vals[COUNT])]
        for (kind, off, first, n), f in zip(self._read_plan, self.group.features, strict=True):
            if kind == _WC:
                slot = []
                for _width, nb, nc, woff in self._windows[first : first + n].tolist():
                    newest = int(vals[woff])
                    buckets = {}
                    for b in range(newest - nb + 1, newest + 1):
                        base = woff + 1 + (b % nb) * nc
                        counts = [int(c) for c in vals[base : base + nc]]
                        if any(counts):
                            buckets[b] = counts
                    totals = [sum(c[i] for c in buckets.values()) for i in range(nc)]
                    slot.append([newest, totals, buckets])
                state.append(slot)
            elif kind == _CTR:
                state.append([int(vals[off]), int(vals[off + 1])])
            elif kind == _RATING:
                state.append([int(vals[off]), vals[off + 1], vals[off + 2]])
            elif kind == _RECENCY:
                state.append([None if math.isnan(t) else int(t) for t in vals[off : off + len(f.event_types)]])
            else:
                state.append(f.init())
        return state

    def read_state(self, stored) -> np.ndarray:
        """A stored entry (:meth:`store`'s bytes, the whole vector as bytes, or the engine's list: state kept
        before) as a vector."""
        if type(stored) is list:
            return self.from_engine_state(stored)
        if len(stored) % 10 == 3 and stored[:1] == b"S":  # (the whole vector is 8 * size bytes: never odd)
            n = len(stored) // 10
            size = int.from_bytes(stored[1:3], sys.byteorder)  # (a native uint16, as store() writes it)
            if size != self.size:
                raise ValueError(self._other_definitions(size))
            v = np.zeros(size, np.float64)
            v[np.frombuffer(stored, np.uint16, n, 3)] = np.frombuffer(stored, np.float64, n, 3 + 2 * n)
            return v
        v = np.frombuffer(stored, np.float64)
        if v.shape[0] != self.size:
            raise ValueError(self._other_definitions(v.shape[0]))
        return v

    def store(self, v: np.ndarray) -> bytes:
        """A vector as stored. ``sparse`` (the user features: 433 values, most of a windowed count's ring of
        9 event types zero): ``S``, its length, the offsets of its non-zero values (uint16s), then those
        values. Else (the item features: 74 values) the whole vector, which costs a fraction of the
        CPU per entity."""
        if not self.sparse:
            return v.tobytes()
        idx = v.nonzero()[0]  # (flatnonzero: the same for a vector, at twice the cost)
        return b"S" + self._size_bytes + idx.astype(np.uint16).tobytes() + v[idx].tobytes()

    def _other_definitions(self, values: int) -> str:
        entity = self.group.entity
        return (f"a stored {entity} state of {values} values, these features keep {self.size}: state written "
                f"with other {entity} feature definitions")

    # -- fold and read -----------------------------------------------------------------------
    def fold(self, events: Sequence[Event], key: str, states: dict[str, np.ndarray], every_event: bool = False,
             pick: np.ndarray | None = None) -> Folded:
        """Fold ``events`` (in the order given) into the vectors of ``states`` (entity id -> vector, a new
        one for an entity not in it): see :class:`Folded` for what comes back. Reads: one per entity after
        its last event here, or one per event with ``every_event``. ``pick``: offsets into the vector to
        give per event, before and after it."""
        n = len(events)
        keys = [getattr(e, key) for e in events]
        order = list(dict.fromkeys(keys))
        index = {k: j for j, k in enumerate(order)}
        ent = np.fromiter(map(index.__getitem__, keys), np.int64, n)
        ts = np.array([e.ts for e in events], np.float64)
        typ = np.fromiter(map(_TYPE_CODE.__getitem__, [e.type for e in events]), np.int64, n)
        val = np.array([e.value for e in events], np.float64)  # (None: NaN)
        get, template = states.get, self._template
        table = np.stack([get(k, template) for k in order])
        raw_width = self._width
        if every_event:
            reads = np.arange(n, dtype=np.int64)
        else:  # each entity's last event: the first in reverse
            _, first_from_end = np.unique(ent[::-1], return_index=True)
            reads = np.sort(n - 1 - first_from_end)
        raw = np.empty((len(reads), raw_width), np.float64)
        pick = _NO_PICK if pick is None else pick
        picked = np.empty((n, 2, len(pick)), np.float64)
        _fold(table, ent, ts, typ, val, reads, raw, self._kinds, self._offsets, self._params, self._windows,
              self._first_window, self._n_windows, self._sizes, pick, picked)
        return Folded({k: table[j] for j, k in enumerate(order)}, [order[j] for j in ent[reads].tolist()], raw, reads,
                      picked)

    def read_at(self, vectors: list[np.ndarray], at_ts: int) -> np.ndarray:
        """The raw values of each vector as of ``at_ts`` (one row each)."""
        table = np.stack(vectors) if vectors else np.empty((0, self.size))
        raw = np.empty((len(vectors), self._width), np.float64)
        _read_all(table, float(at_ts), raw, self._kinds, self._offsets, self._windows, self._first_window,
                  self._n_windows, self._sizes)
        return raw

    def offset(self, feature: int) -> int:
        """Where the ``feature``-th declaration's slot starts in the vector."""
        return self._read_plan[feature][1]

    def raw_start(self, feature: int) -> int:
        """Where the ``feature``-th declaration's values start in a row of raw values (a windowed count's: its
        first window's columns, then the next window's ...; CTR: clicks, impressions; rating: n, mean, m2)."""
        return self._raw_starts[feature]

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the fold and the reads now, not in the first batch."""
        e = Event("warm-up", "u", "i", EVENT_TYPES[0], 0)
        vectors = self.fold([e], "item_id", {}).vectors
        self.read_at(list(vectors.values()), 0)

    def _raw_width(self) -> int:
        w = 2
        self._raw_starts = []
        for (kind, _, first, n), f in zip(self._read_plan, self.group.features, strict=True):
            self._raw_starts.append(w)
            if kind == _WC:
                w += int(self._windows[first : first + n, 2].sum())
            elif kind == _CTR:
                w += 2
            elif kind == _RATING:
                w += 3
            elif kind == _RECENCY:
                w += len(f.event_types)
        return w

    def _snapshot_function(self, outputs: list[str] | None = None):
        """The features :meth:`FeatureEngine.snapshot` gives, from one row of :meth:`fold`'s raw values, as a
        function made for these declarations: one dict display of the outputs, each computed as the
        declaration's read() computes it (the tests hold it to the engine).

        ``outputs``: a whole group's outputs, in order, of which these declarations give some; the function
        then takes a dict of the others' values too, ``snapshot(r, at, o)`` (:class:`HybridGroup`)."""
        lines, items, local = ["def snapshot(r, at):" if outputs is None else "def snapshot(r, at, o):"], [], {}
        scope: dict = {"nan": math.isnan}
        i = 2
        for d, f in enumerate(self.group.features):
            kind = _KINDS[type(f)]
            if kind == _WC:
                for names in f._names:
                    for name in names:
                        var = local[name] = f"v{len(local)}"
                        lines.append(f"    {var} = int(r[{i}])")
                        items.append((name, var))
                        i += 1
            elif kind == _CTR:
                lines += [f"    c{d} = int(r[{i}])", f"    m{d} = int(r[{i + 1}])"]
                scope[f"p{d}"], scope[f"w{d}"] = f.prior * f.prior_weight, f.prior_weight
                items += [(f.name, f"(c{d} + p{d}) / (max(m{d}, c{d}) + w{d})"), (f"{f.name}_clicks", f"c{d}"),
                          (f"{f.name}_impressions", f"m{d}")]
                i += 2
            elif kind == _RATING:
                lines.append(f"    n{d} = int(r[{i}])")
                items += [(f"{f.name}_count", f"n{d}"), (f"{f.name}_mean", f"r[{i + 1}] if n{d} else None"),
                          (f"{f.name}_var", f"r[{i + 2}] / n{d} if n{d} else None")]
                i += 3
            elif kind == _RECENCY:
                for name in f.outputs():
                    items.append((name, f"None if nan(r[{i}]) else at - int(r[{i}])"))
                    i += 1
            else:  # a trend: (short * long_ms / short_ms + 1) / (long + 1), as Trend.read
                short, long = local[f"{f.source}_{f.short.name}"], local[f"{f.source}_{f.long.name}"]
                items.append((f.name, f"({short} * {f.long.ms} / {f.short.ms} + 1) / ({long} + 1)"))
        if outputs is not None:
            mine = dict(items)
            items = [(name, mine.get(name, f"o[{name!r}]")) for name in outputs]
        lines.append("    return {" + ", ".join(f"{name!r}: {expr}" for name, expr in items) + "}")
        exec("\n".join(lines), scope)  # noqa: S102 (code made from these declarations' names and numbers only)
        return scope["snapshot"]


@jit
def _fold(table, ent, ts, typ, val, reads, raw, kinds, offsets, params, windows, first_window, n_windows, sizes,
          pick, picked):
    """Fold every event into its entity's row of ``table``, in order; after event ``reads[r]`` (ascending),
    write its entity's raw values as of that event's time into ``raw[r]``; before and after each event ``i``,
    its entity's values at the offsets ``pick`` into ``picked[i, 0]`` and ``picked[i, 1]``."""
    r = 0
    n_reads = reads.shape[0]
    for i in range(ent.shape[0]):
        row = table[ent[i]]
        t = ts[i]
        code = typ[i]
        for c in range(pick.shape[0]):
            picked[i, 0, c] = row[pick[c]]
        if np.isnan(row[0]) or t > row[0]:
            row[0] = t
        row[1] += 1.0
        for d in range(kinds.shape[0]):
            kind = kinds[d]
            p = params[d, code]
            if p < 0:
                continue
            off = offsets[d]
            if kind == 0:  # windowed count: p is the column
                for w in range(first_window[d], first_window[d] + n_windows[d]):
                    width, nb, nc, woff = windows[w, 0], windows[w, 1], windows[w, 2], windows[w, 3]
                    b = int(t) // width
                    newest = int(row[woff])
                    if b > newest:
                        steps = min(b - newest, nb)
                        for k in range(newest + 1, newest + 1 + steps):
                            base = woff + 1 + (k % nb) * nc
                            for c in range(nc):
                                row[base + c] = 0.0
                        row[woff] = b
                    elif b <= newest - nb:
                        continue
                    row[woff + 1 + (b % nb) * nc + p] += 1.0
            elif kind == 1:  # smoothed CTR: 1 click, 2 impression
                row[off + p - 1] += 1.0
            elif kind == 2:  # rating statistics (Welford), on events with a value
                x = val[i]
                if not np.isnan(x):
                    cnt = row[off] + 1.0
                    mean = row[off + 1]
                    delta = x - mean
                    mean += delta / cnt
                    row[off] = cnt
                    row[off + 1] = mean
                    row[off + 2] = row[off + 2] + delta * (x - mean)
            elif kind == 3:  # recency: p is the type's index
                last = row[off + p]
                if np.isnan(last) or t > last:
                    row[off + p] = t
        for c in range(pick.shape[0]):
            picked[i, 1, c] = row[pick[c]]
        while r < n_reads and reads[r] == i:
            _read(row, t, raw[r], kinds, offsets, windows, first_window, n_windows, sizes)
            r += 1


@jit
def _read_all(table, at, raw, kinds, offsets, windows, first_window, n_windows, sizes):
    for r in range(table.shape[0]):
        _read(table[r], at, raw[r], kinds, offsets, windows, first_window, n_windows, sizes)


@jit
def _read(row, at, out, kinds, offsets, windows, first_window, n_windows, sizes):
    out[0] = row[0]
    out[1] = row[1]
    j = 2
    for d in range(kinds.shape[0]):
        kind = kinds[d]
        off = offsets[d]
        if kind == 0:
            for w in range(first_window[d], first_window[d] + n_windows[d]):
                width, nb, nc, woff = windows[w, 0], windows[w, 1], windows[w, 2], windows[w, 3]
                b = int(at) // width
                newest = int(row[woff])
                lo = max(b - nb + 1, newest - nb + 1)
                hi = min(b, newest)
                for c in range(nc):
                    s = 0.0
                    for k in range(lo, hi + 1):
                        s += row[woff + 1 + (k % nb) * nc + c]
                    out[j + c] = s
                j += nc
        else:  # (CTR, rating statistics, recency: the slot as it is; a trend has none)
            for c in range(sizes[d]):
                out[j + c] = row[off + c]
            j += sizes[d]


class HybridGroup:
    """A feature group of numeric and other declarations (the user features): the numeric ones fold compiled
    (:class:`CompiledGroup`), the others (a decayed affinity, the last N items, sessions: strings) on the
    :class:`~rtrec.features.engine.FeatureEngine`, event by event. A state is ``[vector, the engine's state of
    the others]``; snapshots and records are the whole group's, in its declared order."""

    def __init__(self, group: FeatureGroup):
        self.group = group
        self.version = group.version
        numeric = tuple(f for f in group.features if type(f) in _KINDS)
        self.compiled = CompiledGroup(FeatureGroup(group.entity, group.key, numeric), sparse=True)
        self.engine = FeatureEngine(FeatureGroup(group.entity, group.key,
                                                 tuple(f for f in group.features if type(f) not in _KINDS)))
        self.outputs = group.outputs()
        self._numeric = [type(f) in _KINDS for f in group.features]
        self._snapshot = self.compiled._snapshot_function(self.outputs)  # (in declared order, in one dict display)

    def new_state(self) -> list:
        return [self.compiled.new_state(), self.engine.new_state()]

    def slot(self, declaration) -> tuple[int, int]:
        """Where a declaration's slot is: (0, its offset in the vector) or (1, its index in the engine's state)."""
        for part, g in ((0, self.compiled.group), (1, self.engine.group)):
            for i, f in enumerate(g.features):
                if f is declaration:
                    return (0, self.compiled.offset(i)) if part == 0 else (1, SLOTS + i)
        raise LookupError(f"{declaration!r} is not one of the {self.group.entity} features")

    def from_engine_state(self, state: list) -> list:
        """From the state :class:`~rtrec.features.engine.FeatureEngine` keeps for the whole group."""
        head, slots = state[:SLOTS], state[SLOTS:]
        numeric = [*head, *(s for s, num in zip(slots, self._numeric, strict=True) if num)]
        other = [*head, *(s for s, num in zip(slots, self._numeric, strict=True) if not num)]
        return [self.compiled.from_engine_state(numeric), other]

    def to_engine_state(self, state: list) -> list:
        compiled = self.compiled.to_engine_state(state[0])
        numeric, other = iter(compiled[SLOTS:]), iter(state[1][SLOTS:])
        return [*compiled[:SLOTS], *(next(numeric) if num else next(other) for num in self._numeric)]

    def snapshot(self, raw: list[float], other: list | dict, at_ts: int) -> dict:
        """The group's features from a row of the compiled part's raw values and the others' engine state (or
        their snapshot, taken already)."""
        return self._snapshot(raw, at_ts, other if type(other) is dict else self.engine.snapshot(other, at_ts))
