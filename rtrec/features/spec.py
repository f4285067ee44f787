"""Feature declarations: each is data (which events, which aggregation, which window).

A declaration also knows how to aggregate: ``init()`` makes its slot of an
entity's state, ``update(slot, event)`` folds one event in (a no-op for event
types outside ``touched_by()``), and ``read(slot, at_ts, out)`` writes its
values as of ``at_ts`` into ``out``. The
engine (rtrec.features.engine) runs the same declarations for the streaming
job and for the offline backfill, so the two agree by construction.

Slots are plain lists, dicts and numbers, so an entity's state pickles small
and fast into Flink keyed state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rtrec.events import Event

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR


@dataclass(frozen=True)
class Window:
    """A sliding window kept as ``buckets`` time buckets of ``ms / buckets`` each.

    The count "in the window at time t" is the count in the bucket holding t
    and the ``buckets - 1`` before it, so memory is bounded by ``buckets``
    whatever the event rate, and the window slides in bucket steps.
    """

    name: str
    ms: int
    buckets: int = 12
    width: int = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "width", max(1, self.ms // self.buckets))


FIVE_MINUTES = Window("5m", 5 * MINUTE, 10)
ONE_HOUR = Window("1h", HOUR, 12)
ONE_DAY = Window("24h", DAY, 24)


@dataclass(frozen=True)
class WindowedCount:
    """Events of ``event_types`` in each window, per type (``per_type``) or all together.

    Outputs ``{name}_{type}_{window}`` (or ``{name}_{window}``).
    """

    name: str
    event_types: tuple[str, ...]
    windows: tuple[Window, ...] = (FIVE_MINUTES, ONE_HOUR, ONE_DAY)
    per_type: bool = True

    def __post_init__(self):
        # Looked up per event: the counter column of each event type, each window's (bucket width,
        # buckets), and the output names per window.
        cols = {t: (i if self.per_type else 0) for i, t in enumerate(self.event_types)}
        if self.per_type:
            names = [[f"{self.name}_{t}_{w.name}" for t in self.event_types] for w in self.windows]
        else:
            names = [[f"{self.name}_{w.name}"] for w in self.windows]
        object.__setattr__(self, "_columns", cols)
        object.__setattr__(self, "_spec", tuple((w.width, w.buckets) for w in self.windows))
        object.__setattr__(self, "_names", names)

    def outputs(self) -> list[str]:
        return [name for names in self._names for name in names]

    def touched_by(self) -> tuple[str, ...] | None:
        """The event types whose events can change the slot (None: any)."""
        return self.event_types

    def init(self) -> list:
        # per window: [newest bucket, running totals per column, {bucket: counts per column}]
        cols = len(self.event_types) if self.per_type else 1
        return [[-1, [0] * cols, {}] for _ in self.windows]

    def update(self, slot: list, e: Event) -> None:
        col = self._columns.get(e.type)
        if col is None:
            return
        ts = e.ts
        for (width, nb), win in zip(self._spec, slot, strict=False):  # (as many: init() made them)
            b = ts // width
            if b == win[0]:  # the common case: same bucket as the newest event
                win[2][b][col] += 1
                win[1][col] += 1
            else:
                _count_in(win, b, nb, col)

    def fast_update(self):
        """:meth:`update` as a function made for this declaration (its windows unrolled, their widths
        constants): the same state, changed the same way, in about two thirds of the time. The
        engine calls it per event; it is made on request, never kept on the declaration (which
        pickles)."""
        lines = ["def update(slot, e):", "    col = columns.get(e.type)", "    if col is None:", "        return",
                 f"    if len(slot) != {len(self._spec)}:", "        return generic(slot, e)", "    ts = e.ts"]
        for i, (width, nb) in enumerate(self._spec):
            lines += [f"    win = slot[{i}]", f"    b = ts // {width}", "    if b == win[0]:",
                      "        win[2][b][col] += 1", "        win[1][col] += 1", "    else:",
                      f"        count_in(win, b, {nb}, col)"]
        scope = {"columns": self._columns, "count_in": _count_in, "generic": self.update}
        exec("\n".join(lines), scope)  # noqa: S102 (code made from this declaration's numbers only)
        return scope["update"]

    def total_at(self, slot: list, window: int, at_ts: int, col: int = 0) -> int:
        """The count of column ``col`` in the ``window``-th window (as declared; negative from the end) as of
        ``at_ts``: one number of :meth:`totals_at`, without the others (it runs per item and batch)."""
        w = self.windows[window]
        newest, totals, buckets = slot[window]
        b = at_ts // w.width
        if b == newest:
            return totals[col]
        lo = b - w.buckets + 1
        if newest < lo:  # every bucket is older than the window (keys <= newest)
            return 0
        return sum([counts[col] for k, counts in buckets.items() if lo <= k <= b])

    def totals_at(self, slot: list, at_ts: int) -> list[list[int]]:
        """Per window (as declared), the counts per column as of ``at_ts``."""
        out = []
        for w, (newest, totals, buckets) in zip(self.windows, slot, strict=True):
            b = at_ts // w.width
            if b == newest:
                out.append(totals)
                continue
            lo = b - w.buckets + 1
            values = [0] * len(totals)
            if newest >= lo:  # (else every bucket is older than the window: keys <= newest)
                for k, counts in buckets.items():
                    if lo <= k <= b:
                        for c, n in enumerate(counts):
                            values[c] += n
            out.append(values)
        return out

    def read(self, slot: list, at_ts: int, out: dict) -> None:
        for w, names, (newest, totals, buckets) in zip(self.windows, self._names, slot, strict=True):
            b = at_ts // w.width
            if b == newest:
                values = totals
            else:
                lo = b - w.buckets + 1
                values = [0] * len(totals)
                if newest < lo:  # every bucket is older than the window (keys <= newest)
                    out.update(zip(names, values, strict=True))
                    continue
                for k, counts in buckets.items():
                    if lo <= k <= b:
                        for c, n in enumerate(counts):
                            values[c] += n
            out.update(zip(names, values, strict=True))


def _count_in(win: list, b: int, nb: int, col: int) -> None:
    """Count an event of column ``col`` in bucket ``b`` of a window ``[newest bucket, totals, {bucket:
    counts}]`` of ``nb`` buckets, where ``b`` is not the newest bucket: slide the window forward, or
    count an out-of-order event in its bucket if that is still in the window."""
    newest = win[0]
    if b > newest:
        if newest <= b - nb:  # every bucket kept so far is out of the window (keys <= newest)
            totals = [0] * len(win[1])
            totals[col] = 1
            win[0], win[1], win[2] = b, totals, {b: totals.copy()}
            return
        oldest_kept = b - nb + 1
        totals, buckets = win[1], win[2]
        for old in [k for k in buckets if k < oldest_kept]:
            for c, n in enumerate(buckets.pop(old)):
                totals[c] -= n
        win[0] = b
    elif b <= newest - nb:
        return  # older than the whole window: it can never be counted again
    totals, buckets = win[1], win[2]
    counts = buckets.get(b)
    if counts is None:
        counts = buckets[b] = [0] * len(totals)
    counts[col] += 1
    totals[col] += 1


@dataclass(frozen=True)
class DecayedAffinity:
    """Exponentially decayed count of events per value of ``field`` (e.g. category).

    Each event adds 1, which halves every ``half_life_ms``. Only the
    ``max_keys`` strongest values are kept. Outputs ``{name}``: the ``top``
    strongest as a value -> score mapping, as of the read time.
    """

    name: str
    field: str = "category"
    half_life_ms: int = DAY
    max_keys: int = 32
    top: int = 5
    event_types: tuple[str, ...] = ("view", "click", "add_to_cart", "purchase", "rating")

    def outputs(self) -> list[str]:
        return [self.name]

    def touched_by(self) -> tuple[str, ...] | None:
        return self.event_types

    def init(self) -> list:
        return [0, {}]  # [reference time, {value: score at the reference time}]

    def update(self, slot: list, e: Event) -> None:
        key = getattr(e, self.field)
        if key is None or e.type not in self.event_types:
            return
        ref, scores = slot
        if e.ts >= ref:
            if scores and e.ts > ref:
                f = 0.5 ** ((e.ts - ref) / self.half_life_ms)
                for k in scores:
                    scores[k] *= f
            slot[0] = e.ts
            scores[key] = scores.get(key, 0.0) + 1.0
        else:  # out of order: add its contribution as seen from the reference time
            scores[key] = scores.get(key, 0.0) + 0.5 ** min((ref - e.ts) / self.half_life_ms, 1074.0)
        if len(scores) > self.max_keys:
            del scores[min(scores, key=scores.__getitem__)]

    def read(self, slot: list, at_ts: int, out: dict) -> None:
        ref, scores = slot
        # Read as of the newest event folded in when at_ts is older (an out-of-order event): a
        # decay factor above 1 would not mean anything, and overflows for events years older.
        f = 0.5 ** (max(0, at_ts - ref) / self.half_life_ms) if scores else 1.0
        best = sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[: self.top]
        out[self.name] = {k: v * f for k, v in best}

    def score(self, slot: list, key: str | None, at_ts: int) -> float:
        """The decayed affinity to one value (0 if never seen)."""
        if key is None:
            return 0.0
        ref, scores = slot
        s = scores.get(key)
        return 0.0 if s is None else s * 0.5 ** (max(0, at_ts - ref) / self.half_life_ms)


@dataclass(frozen=True)
class LastN:
    """The ``n`` most recent distinct values of ``field``, newest first."""

    name: str
    field: str = "item_id"
    n: int = 10

    def outputs(self) -> list[str]:
        return [self.name]

    def touched_by(self) -> tuple[str, ...] | None:
        return None

    def init(self) -> list:
        return []

    def update(self, slot: list, e: Event) -> None:
        v = getattr(e, self.field)
        if v is None:
            return
        if v in slot:
            slot.remove(v)
        slot.insert(0, v)
        del slot[self.n :]

    def read(self, slot: list, at_ts: int, out: dict) -> None:
        out[self.name] = list(slot)


@dataclass(frozen=True)
class Session:
    """Gap-based sessions: a new session starts after ``gap_ms`` of silence or when ``session_id`` changes.

    Outputs ``{name}_events``, ``{name}_duration_ms`` (time since the session
    started, as of its newest event), ``{name}_start_ts`` and ``{name}_count``.
    """

    name: str = "session"
    gap_ms: int = 30 * MINUTE

    def outputs(self) -> list[str]:
        return [f"{self.name}_{s}" for s in ("events", "duration_ms", "start_ts", "count")]

    def touched_by(self) -> tuple[str, ...] | None:
        return None

    def init(self) -> list:
        return [0, 0, 0, 0, None]  # start, last ts, events, sessions, session id

    def update(self, slot: list, e: Event) -> None:
        start, last, events, sessions, sid = slot
        new = events == 0 or e.ts - last > self.gap_ms or (e.session_id is not None and e.session_id != sid)
        if new:
            slot[0], slot[1], slot[2], slot[3] = e.ts, e.ts, 1, sessions + 1
        else:
            slot[0], slot[1], slot[2] = min(start, e.ts), max(last, e.ts), events + 1
        if e.session_id is not None:
            slot[4] = e.session_id

    def read(self, slot: list, at_ts: int, out: dict) -> None:
        start, last, events, sessions, _ = slot
        n = self.name
        out[f"{n}_events"] = events
        out[f"{n}_duration_ms"] = last - start if events else 0
        out[f"{n}_start_ts"] = start if events else None
        out[f"{n}_count"] = sessions


@dataclass(frozen=True)
class Recency:
    """Milliseconds since the newest event of each type (null if none yet): ``{name}_{type}_ms``."""

    name: str
    event_types: tuple[str, ...]

    def outputs(self) -> list[str]:
        names = self.__dict__.get("_names_cache")
        if names is None:
            names = [f"{self.name}_{t}_ms" for t in self.event_types]
            object.__setattr__(self, "_names_cache", names)
        return names

    def touched_by(self) -> tuple[str, ...] | None:
        return self.event_types

    def init(self) -> list:
        return [None] * len(self.event_types)

    def update(self, slot: list, e: Event) -> None:
        if e.type in self.event_types:
            i = self.event_types.index(e.type)
            if slot[i] is None or e.ts > slot[i]:
                slot[i] = e.ts

    def read(self, slot: list, at_ts: int, out: dict) -> None:
        for name, last in zip(self.outputs(), slot, strict=True):
            out[name] = None if last is None else at_ts - last


@dataclass(frozen=True)
class SmoothedCTR:
    """Click-through rate shrunk towards ``prior`` with the weight of ``prior_weight`` impressions.

    ``(clicks + prior * w) / (impressions + w)``; outputs ``{name}``,
    ``{name}_clicks`` and ``{name}_impressions``.
    """

    name: str = "ctr"
    click_types: tuple[str, ...] = ("click",)
    impression_types: tuple[str, ...] = ("impression",)
    prior: float = 0.05
    prior_weight: float = 20.0

    def outputs(self) -> list[str]:
        return [self.name, f"{self.name}_clicks", f"{self.name}_impressions"]

    def touched_by(self) -> tuple[str, ...] | None:
        return self.click_types + self.impression_types

    def init(self) -> list:
        return [0, 0]

    def update(self, slot: list, e: Event) -> None:
        if e.type in self.click_types:
            slot[0] += 1
        elif e.type in self.impression_types:
            slot[1] += 1

    def read(self, slot: list, at_ts: int, out: dict) -> None:
        clicks, impressions = slot
        out[self.name] = (clicks + self.prior * self.prior_weight) / (max(impressions, clicks) + self.prior_weight)
        out[f"{self.name}_clicks"] = clicks
        out[f"{self.name}_impressions"] = impressions


@dataclass(frozen=True)
class RatingStats:
    """Count, mean and (population) variance of ``value`` on rating events (Welford's update)."""

    name: str = "rating"
    event_type: str = "rating"

    def outputs(self) -> list[str]:
        return [f"{self.name}_count", f"{self.name}_mean", f"{self.name}_var"]

    def touched_by(self) -> tuple[str, ...] | None:
        return (self.event_type,)

    def init(self) -> list:
        return [0, 0.0, 0.0]

    def update(self, slot: list, e: Event) -> None:
        if e.type != self.event_type or e.value is None:
            return
        n, mean, m2 = slot
        n += 1
        delta = e.value - mean
        mean += delta / n
        slot[0], slot[1], slot[2] = n, mean, m2 + delta * (e.value - mean)

    def read(self, slot: list, at_ts: int, out: dict) -> None:
        n, mean, m2 = slot
        out[f"{self.name}_count"] = n
        out[f"{self.name}_mean"] = mean if n else None
        out[f"{self.name}_var"] = m2 / n if n else None


@dataclass(frozen=True)
class Trend:
    """Short-window rate over long-window rate of a non-per-type :class:`WindowedCount`.

    ``(short * long_ms / short_ms + 1) / (long + 1)``: above 1 when the recent
    rate beats the long-run one. Reads the counts other features wrote, so it
    is declared after them.
    """

    name: str
    source: str
    short: Window
    long: Window

    def outputs(self) -> list[str]:
        return [self.name]

    def touched_by(self) -> tuple[str, ...] | None:
        return ()

    def init(self) -> None:
        return None

    def update(self, slot, e: Event) -> None:
        return None

    def read(self, slot, at_ts: int, out: dict) -> None:
        s = out[f"{self.source}_{self.short.name}"]
        n = out[f"{self.source}_{self.long.name}"]
        out[self.name] = (s * self.long.ms / self.short.ms + 1) / (n + 1)
