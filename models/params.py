"""Global parameters as row tables, with the bookkeeping that parallel trainers need.

Every global parameter of every model is a :class:`Table`: a tensor whose
first dimension is rows of one of three kinds:

- ``item``: one row per catalogue item, addressed by item id (rows differ
  between replicas, ids do not),
- ``hashed``: a fixed hash space (hashed sparse features),
- ``dense``: a single row holding a whole weight tensor.

A :class:`ParameterSet` groups the tables of all models. A trainer replica
learns on its tables, then :meth:`ParameterSet.take_delta` hands over what
changed since the last hand-over (only the rows it touched, with how many
examples touched each) and :func:`merge` folds the deltas of several
trainers row by row, by each table's rule (:data:`MERGE_RULES`): by default
their average weighted by those example counts. With one trainer the merged
result equals the trainer's own parameters, whatever the rule.

    >>> ps = ParameterSet()
    >>> t = ps.add("w", "dense", (2,))
    >>> t.data += torch.tensor([1.0, 2.0]); t.touch_dense(3)
    >>> d = ps.take_delta()
    >>> d["w"].values.tolist(), d["w"].counts.tolist()
    ([[1.0, 2.0]], [3.0])
"""

from __future__ import annotations

import io
import itertools
import math
import pickle
import zlib
from dataclasses import dataclass, field

import numpy as np
import orjson
import torch

from models.base import ItemIndex
from models.sequential import name_seeds
from rtrec.sharding import FatalFailure

KINDS = ("item", "hashed", "dense")
#: How :func:`merge` folds several trainers' deltas to a row (``c_k``: the examples behind trainer k's,
#: ``C`` their sum):
#:
#: - ``mean``: ``sum_k c_k d_k / C``, the example-weighted average (model averaging);
#: - ``sum``: ``sum_k d_k``, for counts;
#: - ``counted``: ``sum_k (n0 + c_k) d_k / (n0 + C)``, where ``n0`` is the row's examples so far in the
#:   table named by ``counted_by`` (a ``sum`` table). For an estimate that moves by ``1 / n`` per example
#:   (a running mean) this is exactly what one trainer seeing every example would reach; a new row
#:   (``n0`` 0) gets the average, an established one (``n0`` >> ``C``) every trainer's steps. Averaging
#:   instead gives each trainer's steps on a row both saw only its share: at parallelism N an item
#:   learns at 1/N of the step until the merge.
MERGE_RULES = ("mean", "sum", "counted")
_ROW_ZERO = torch.zeros(1, dtype=torch.long)
#: The format of :func:`delta_to_bytes` (format 2, NumPy arrays pickled one by one, is still read).
DELTA_FORMAT = "rtrec-delta-3"
DELTA_FORMAT_2 = "rtrec-delta-2"
#: The format of :func:`heldout_to_bytes`.
HELDOUT_FORMAT = "rtrec-delta-2"


@dataclass
class RowDelta:
    """Changes to some rows of one table: ``keys`` are item ids (item tables) or row numbers."""

    kind: str
    keys: list[str] | torch.Tensor
    values: torch.Tensor
    counts: torch.Tensor

    def is_finite(self) -> bool:
        return bool(torch.isfinite(self.values).all())


class Table:
    """One global parameter: ``data`` (rows x shape), plus which rows changed and how often."""

    def __init__(self, name: str, kind: str, shape: tuple[int, ...], rows: int, device, init=None,
                 merge: str = "mean", counted_by: str | None = None):
        if kind not in KINDS:
            raise ValueError(f"table kind must be one of {KINDS}")
        if merge not in MERGE_RULES or (merge == "counted") != (counted_by is not None):
            raise ValueError(f"merge must be one of {MERGE_RULES}, and counted (only) needs counted_by")
        self.name, self.kind, self.shape, self.device = name, kind, tuple(shape), device
        self.merge, self.counted_by = merge, counted_by  # (MERGE_RULES)
        self.init = init  # callable(n_rows, start_row) -> tensor for new item rows, or None for zeros
        self.data = torch.zeros((rows, *self.shape), device=device)
        self.base = self.data.clone()  # the values at the last hand-over
        self.counts = torch.zeros(rows, device=device)  # examples per row since then (item and hashed tables)
        self.touched: list[torch.Tensor] = []  # rows counted since then (repeats allowed)
        #: Examples since then of a dense table (a number: no tensor op per learning step), None if none.
        self.dense_examples: float | None = None
        #: Counts the writes through ParameterSet (loads, deltas, new rows, write_rows): what is derived
        #: from a table's values is cached against it (models.ensemble's item columns).
        self.writes = 0

    def ensure_rows(self, n: int) -> None:
        """Grow to at least ``n`` rows (item tables), initialising the new ones."""
        have = self.data.shape[0]
        if n <= have:
            return
        cap = max(64, 2 * have, n)
        new = torch.zeros((cap - have, *self.shape), device=self.device)
        self.data = torch.cat([self.data, new])
        self.base = torch.cat([self.base, new.clone()])
        self.counts = torch.cat([self.counts, torch.zeros(cap - have, device=self.device)])
        self.writes += 1

    def write_rows(self, rows: torch.Tensor, values: torch.Tensor) -> None:
        """Set rows' values (not a learned change: ``base`` stays, nothing is handed over)."""
        self.data[rows] = values
        self.writes += 1

    def touch(self, rows: torch.Tensor, n: torch.Tensor | float = 1.0) -> None:
        """Record that ``rows`` were learned from (``n`` examples each)."""
        if isinstance(n, torch.Tensor):
            self.counts.index_add_(0, rows, n.to(self.counts.dtype))
        else:
            self.counts.index_add_(0, rows, torch.full(rows.shape, float(n), device=self.device))
        self.touched.append(rows)

    def touch_dense(self, n: float) -> None:
        self.dense_examples = (self.dense_examples or 0.0) + n

    def take_touched(self) -> torch.Tensor:
        """The distinct rows counted since the last call (no scan of the table; item and hashed tables:
        take_delta hands dense ones over whole)."""
        touched, self.touched = self.touched, []
        if not touched:
            return _ROW_ZERO[:0]
        if self.data.device.type == "cpu":
            return torch.from_numpy(np.unique(np.concatenate([t.numpy() for t in touched])))
        return torch.unique(torch.cat([t.to(self.device) for t in touched]))


class ParameterSet:
    """All global tables of a model set, sharing one item index."""

    def __init__(self, device: torch.device | str = "cpu", seed: int = 7):
        self.device = torch.device(device)
        self.seed = seed
        self.tables: dict[str, Table] = {}
        self.index = ItemIndex()

    # -- building ------------------------------------------------------------
    def add(self, name: str, kind: str, shape: tuple[int, ...] = (), rows: int = 0, init=None,
            value: torch.Tensor | None = None, merge: str = "mean", counted_by: str | None = None) -> Table:
        """A new table; ``merge`` and ``counted_by``: how trainers' deltas to it fold (:data:`MERGE_RULES`)."""
        rows = 1 if kind == "dense" else rows
        if counted_by is not None:
            by = self.tables.get(counted_by)
            if by is None or by.kind != kind or by.merge != "sum" or by.shape != ():
                raise ValueError(f"{name}: counted_by={counted_by!r} must name a scalar sum table of kind {kind}")
        t = Table(name, kind, shape, rows, self.device, init, merge, counted_by)
        if value is not None:
            t.data[0] = value.to(self.device)
            t.base = t.data.clone()
        if kind == "item" and len(self.index):
            self._grow_table(t, 0)
        self.tables[name] = t
        return t

    def __getitem__(self, name: str) -> Table:
        return self.tables[name]

    def counts_of(self, name: str, keys: list[str] | torch.Tensor) -> torch.Tensor:
        """The values (on the CPU) of scalar table ``name`` at the rows of a delta's ``keys`` (item ids or
        row numbers; a dense table's one row): :func:`merge`'s ``counted`` rule."""
        t = self.tables[name]
        if t.kind == "dense":
            return t.data[:1].reshape(1).cpu()
        rows = self.item_rows(keys) if t.kind == "item" else keys.to(self.device)
        return t.data[rows].reshape(-1).cpu().float()

    def item_rows(self, item_ids: list[str]) -> torch.Tensor:
        """Rows of ``item_ids``, adding new items to every item table (each initialised the same way everywhere)."""
        before = len(self.index)
        rows = self.index.rows(item_ids)
        if len(self.index) > before:
            seeds = name_seeds(self.index.ids[before:], self.seed).tolist()
            for t in self.tables.values():
                if t.kind == "item":
                    self._grow_table(t, before, seeds)
        return torch.tensor(rows, dtype=torch.long, device=self.device)

    def _grow_table(self, t: Table, start: int, seeds: list[int] | None = None) -> None:
        n = len(self.index)
        t.ensure_rows(n)
        if t.init is not None and n > start:
            if seeds is None:
                seeds = name_seeds(self.index.ids[start:n], self.seed).tolist()
            values = torch.stack([t.init(seed) for seed in seeds]).to(self.device)
            t.data[start:n] = values
            t.base[start:n] = values
            t.writes += 1

    @property
    def n_items(self) -> int:
        return len(self.index)

    # -- deltas ----------------------------------------------------------------
    def take_delta(self) -> dict[str, RowDelta]:
        """What changed since the last call (touched rows only), then start counting afresh."""
        # Dense tables (one row each: no gathers), all in a few list-wide ops.
        dense = [(name, t) for name, t in self.tables.items() if t.kind == "dense" and t.dense_examples is not None]
        dense_delta: dict[str, RowDelta] = {}
        if dense:
            data, base = [t.data for _, t in dense], [t.base for _, t in dense]
            values = torch._foreach_sub(data, base)
            torch._foreach_copy_(base, data)
            counts = torch.tensor([t.dense_examples for _, t in dense], dtype=torch.float32).split(1)
            for (name, t), v, c in zip(dense, values, counts, strict=True):
                dense_delta[name] = RowDelta(t.kind, _ROW_ZERO, v.cpu(), c)
                t.dense_examples = None
        delta: dict[str, RowDelta] = {}
        shared: dict[tuple, tuple] = {}
        for name, t in self.tables.items():
            if t.kind == "dense":
                if name in dense_delta:
                    delta[name] = dense_delta[name]
                continue
            # Tables learned together (mf.q and mf.b, ftrl.z and ftrl.n, ...) were touched with the same
            # row tensors: find their distinct rows and keys once.
            memo = shared.get(tuple(map(id, t.touched)))
            if memo is None:
                signature = tuple(map(id, t.touched))
                rows = t.take_touched()
                keys: list[str] | torch.Tensor = (
                    [self.index.ids[r] for r in rows.tolist()] if t.kind == "item" else rows.cpu()
                )
                memo = shared[signature] = (rows, keys)
            else:
                t.touched.clear()
            rows, keys = memo
            if rows.numel() == 0:
                continue
            if t.data.device.type == "cpu":  # NumPy's indexing of a few rows costs a fifth of torch's
                data, base, n, r = t.data.numpy(), t.base.numpy(), t.counts.numpy(), rows.numpy()
                current = data[r]
                values, counts = torch.from_numpy(current - base[r]), torch.from_numpy(n[r])
                base[r] = current
                n[r] = 0
            else:
                current = t.data[rows]
                values, counts = (current - t.base[rows]).cpu(), t.counts[rows].cpu()
                t.base[rows] = current
                t.counts[rows] = 0
            delta[name] = RowDelta(t.kind, keys, values, counts)
        return delta

    def add_delta(self, delta: dict[str, RowDelta]) -> None:
        """Add ``delta`` onto the tables (``base`` moves with it, so it is not handed over again)."""
        for name, d in delta.items():
            t = self.tables.get(name)
            if t is None:
                continue
            rows = self.item_rows(d.keys) if d.kind == "item" else d.keys.to(self.device)
            values = d.values.to(self.device)
            t.data.index_add_(0, rows, values)
            t.base.index_add_(0, rows, values)
            t.writes += 1

    # -- snapshots ---------------------------------------------------------------
    def state_dict(self) -> dict:
        n = len(self.index)
        return {
            "items": list(self.index.ids),
            "tables": {name: (t.data[:n] if t.kind == "item" else t.data).cpu() for name, t in self.tables.items()},
        }

    def check_shapes(self, state: dict) -> None:
        """Raise :class:`ModelShapeMismatch`, naming the tables, if a snapshot's tables have other shapes
        than these (made with another model.dim, say); tables only one side has are not compared."""
        wrong = [f"{name} {_shape(t.kind, values)} where this job's is {_shape(t.kind, t.data)}"
                 for name, values in state["tables"].items()
                 if (t := self.tables.get(name)) is not None and _shape(t.kind, values) != _shape(t.kind, t.data)]
        if wrong:
            raise ModelShapeMismatch(
                "a model version made with other model settings than this job's (model.dim, model.ftrl_bits, "
                "model.like_bits, the features): " + "; ".join(wrong))

    def load_state_dict(self, state: dict) -> None:
        """Replace every table's values with a snapshot's; items the snapshot lacks keep their local rows.
        A snapshot whose tables have other shapes raises :class:`ModelShapeMismatch` (:meth:`check_shapes`)
        and changes nothing; tables only one side has are left as they are."""
        self.check_shapes(state)
        ids = state["items"]
        rows = self.item_rows(ids) if ids else torch.zeros(0, dtype=torch.long, device=self.device)
        for name, values in state["tables"].items():
            t = self.tables.get(name)
            if t is None:
                continue
            values = values.to(self.device)
            if t.kind == "item":
                t.data[rows] = values
                t.base[rows] = values
            else:
                t.data.copy_(values)
                t.base.copy_(values)
            t.counts.zero_()
            t.touched.clear()
            t.dense_examples = None
            t.writes += 1


class ModelShapeMismatch(FatalFailure):
    """A model version (restored, or to warm-start from) does not fit the job's parameters: every
    restart would meet it again (rtrec.sharding.fatal_reason)."""


def _shape(kind: str, values: torch.Tensor) -> tuple[int, ...]:
    """What must match between a snapshot's table and the job's: an item table's row width (its row
    count grows), the whole shape of the others."""
    return tuple(values.shape[1:] if kind == "item" else values.shape)


def _union_rows(parts: list[RowDelta]) -> tuple[list[str] | torch.Tensor, list[torch.Tensor], int]:
    """The union of the parts' row keys, and for each part where its rows land in that union."""
    if parts[0].kind == "item":  # (the loops run in C: map and fromiter, not per-key Python)
        ids = list(dict.fromkeys(itertools.chain.from_iterable(p.keys for p in parts)))
        at = {k: i for i, k in enumerate(ids)}.__getitem__
        return ids, [torch.from_numpy(np.fromiter(map(at, p.keys), np.int64, len(p.keys))) for p in parts], len(ids)
    keys, inverse = torch.unique(torch.cat([p.keys for p in parts]), return_inverse=True)
    return keys, list(torch.split(inverse, [len(p.keys) for p in parts])), len(keys)


def merge(deltas: list[dict[str, RowDelta]], params: ParameterSet | None = None) -> dict[str, RowDelta]:
    """Fold deltas of several trainers, row by row, by each table's rule in ``params`` (:data:`MERGE_RULES`;
    the ``counted`` rule reads its counts there, before the merged delta is added; without ``params``,
    or for a table it lacks: ``mean``).

    >>> a = {"w": RowDelta("hashed", torch.tensor([0, 1]), torch.tensor([[2.0], [4.0]]), torch.tensor([1.0, 1.0]))}
    >>> b = {"w": RowDelta("hashed", torch.tensor([1]), torch.tensor([[1.0]]), torch.tensor([3.0]))}
    >>> m = merge([a, b])["w"]
    >>> sorted(zip(m.keys.tolist(), m.values.flatten().tolist()))
    [(0, 2.0), (1, 1.75)]
    """
    merged: dict[str, RowDelta] = {}
    for name in sorted({n for d in deltas for n in d}):
        parts = [d[name] for d in deltas if name in d]
        keys, index, n_rows = _union_rows(parts)
        shape = parts[0].values.shape[1:]
        ones = [1] * len(shape)
        weight = torch.zeros(n_rows)
        for p, idx in zip(parts, index, strict=True):
            weight.index_add_(0, idx, p.counts)
        table = None if params is None else params.tables.get(name)
        rule = "mean" if table is None else table.merge
        folded = torch.zeros((n_rows, *shape))
        if rule == "sum":
            for p, idx in zip(parts, index, strict=True):
                folded.index_add_(0, idx, p.values)
        elif rule == "counted":
            n0 = params.counts_of(table.counted_by, keys)
            total = (n0 + weight).clamp_min(1e-12)
            for p, idx in zip(parts, index, strict=True):
                folded.index_add_(0, idx, p.values * ((n0[idx] + p.counts) / total[idx]).reshape(-1, *ones))
        else:
            for p, idx in zip(parts, index, strict=True):
                folded.index_add_(0, idx, p.values * p.counts.reshape(-1, *ones))
            folded /= weight.clamp_min(1e-12).reshape(-1, *ones)
        merged[name] = RowDelta(parts[0].kind, keys, folded, weight)
    return merged


def delta_is_finite(delta: dict[str, RowDelta]) -> bool:
    """No NaN or infinity in any table's values (three tensor ops, not two per table)."""
    if not delta:
        return True
    values = [d.values.reshape(-1) for d in delta.values()]
    devices = {v.device for v in values}
    if len(devices) > 1:
        return all(d.is_finite() for d in delta.values())
    return bool(torch.isfinite(torch.cat(values)).all())


def to_bytes(obj) -> bytes:
    """Tensors, lists, dicts and numbers as bytes (torch's format)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def from_bytes(data: bytes):
    """The inverse of :func:`to_bytes`; only plain data is accepted, never arbitrary objects."""
    return torch.load(io.BytesIO(data), weights_only=True)


def delta_to_bytes(delta: dict[str, RowDelta]) -> bytes:
    """A delta as bytes for the merger: every table's values in one float32 buffer, its example counts
    in another and the row numbers of hashed and dense tables in an int64 one, behind a header of
    (name, kind, item ids or None, shape) per table. Pickling each table's NumPy arrays instead cost
    about 0.5 ms a batch (torch.save 2.7 ms).

    >>> d = {"w": RowDelta("item", ["a"], torch.ones(1, 2), torch.ones(1))}
    >>> delta_from_bytes(delta_to_bytes(d))["w"].keys
    ['a']
    """
    header = [(n, d.kind, d.keys if d.kind == "item" else None, tuple(d.values.shape)) for n, d in delta.items()]
    if not delta:
        return pickle.dumps((DELTA_FORMAT, header, b"", b"", b""), protocol=5)
    values = torch.cat([d.values.reshape(-1) for d in delta.values()]).to(torch.float32)
    counts = torch.cat([d.counts.reshape(-1) for d in delta.values()]).to(torch.float32)
    rows = [d.keys.reshape(-1) for d in delta.values() if d.kind != "item"]
    rows = torch.cat(rows).to(torch.int64) if rows else torch.zeros(0, dtype=torch.int64)
    return pickle.dumps((DELTA_FORMAT, header, values.numpy().tobytes(), counts.numpy().tobytes(),
                         rows.numpy().tobytes()), protocol=5)


def delta_from_bytes(data: bytes) -> dict[str, RowDelta]:
    """The inverse of :func:`delta_to_bytes`; reads the earlier formats too (in merger state): format 2
    and torch.save's (releases up to 0.1.0)."""
    if data[:2] == b"PK":  # a zip: torch.save, releases up to 0.1.0
        return delta_from_plain(from_bytes(data))
    fmt, *rest = pickle.loads(data)
    if fmt == DELTA_FORMAT_2:
        return {n: RowDelta(kind, keys if kind == "item" else torch.from_numpy(keys), torch.from_numpy(values),
                            torch.from_numpy(counts)) for n, (kind, keys, values, counts) in rest[0].items()}
    if fmt != DELTA_FORMAT:
        raise ValueError(f"unknown delta format {fmt!r}")
    header, values, counts, rows = rest
    # (sliced and shaped as NumPy views, then wrapped: a torch slice and reshape per table cost more)
    values = np.frombuffer(bytearray(values), np.float32)
    counts = np.frombuffer(bytearray(counts), np.float32)
    rows = np.frombuffer(bytearray(rows), np.int64)
    wrap = torch.from_numpy
    out: dict[str, RowDelta] = {}
    v = c = r = 0
    for name, kind, keys, shape in header:
        size, n = math.prod(shape), shape[0]
        if kind != "item":
            keys, r = wrap(rows[r : r + n]), r + n
        out[name] = RowDelta(kind, keys, wrap(values[v : v + size].reshape(shape)), wrap(counts[c : c + n]))
        v, c = v + size, c + n
    return out


def heldout_to_bytes(rows: list[dict]) -> bytes:
    """Held-out examples (dicts of NumPy arrays and numbers) as bytes for the merger."""
    return pickle.dumps((HELDOUT_FORMAT, rows), protocol=5)


def heldout_from_bytes(data: bytes) -> list[dict]:
    """The inverse of :func:`heldout_to_bytes`; reads the earlier torch.save format too."""
    if data[:2] == b"PK":
        return from_bytes(data)
    fmt, rows = pickle.loads(data)
    if fmt != HELDOUT_FORMAT:
        raise ValueError(f"unknown held-out format {fmt!r}")
    return rows


def delta_to_plain(delta: dict[str, RowDelta]) -> dict:
    return {n: {"kind": d.kind, "keys": d.keys, "values": d.values, "counts": d.counts} for n, d in delta.items()}


def delta_from_plain(plain: dict) -> dict[str, RowDelta]:
    return {n: RowDelta(d["kind"], d["keys"], d["values"], d["counts"]) for n, d in plain.items()}


def sum_deltas(deltas: list[dict[str, RowDelta]]) -> dict[str, RowDelta]:
    """Successive deltas of one trainer add up (rows and example counts alike)."""
    if len(deltas) == 1:
        return deltas[0]
    total: dict[str, RowDelta] = {}
    for name in sorted({n for d in deltas for n in d}):
        parts = [d[name] for d in deltas if name in d]
        keys, index, n_rows = _union_rows(parts)
        values = torch.zeros((n_rows, *parts[0].values.shape[1:]))
        counts = torch.zeros(n_rows)
        for p, idx in zip(parts, index, strict=True):
            values.index_add_(0, idx, p.values)
            counts.index_add_(0, idx, p.counts)
        total[name] = RowDelta(parts[0].kind, keys, values, counts)
    return total


@dataclass
class Version:
    """A numbered, merged parameter set as it travels on the model-updates topic."""

    number: int
    created_ms: int
    state: dict
    #: trainer id -> the last delta sequence number folded into this version
    merged_upto: dict[int, int] = field(default_factory=dict)
    rolled_back: bool = False
    heldout_loss: float | None = None
    examples: int = 0

    def to_bytes(self) -> bytes:
        """As it travels (format 2, :func:`state_to_bytes`): a JSON header and the tensors' raw bytes,
        the mostly-zero hashed tables as their non-zero rows only. Format 1 (torch.save, zlib-compressed)
        cost about 18 ms to write and 16 to read for MovieLens's tables; this costs about 1 ms each."""
        return state_to_bytes({
            "format": VERSION_FORMAT, "number": self.number, "created_ms": self.created_ms,
            "state": self.state, "merged_upto": {str(k): v for k, v in self.merged_upto.items()},
            "rolled_back": self.rolled_back, "heldout_loss": self.heldout_loss, "examples": self.examples})

    @staticmethod
    def from_bytes(data: bytes) -> Version:
        """From format 2, or format 1 (releases up to 0.2: in broadcast and merger state, and on the topic)."""
        if data[:4] == STATE_MAGIC:
            d = state_from_bytes(data)
            d["merged_upto"] = {int(k): v for k, v in d["merged_upto"].items()}
        else:
            try:
                d = from_bytes(zlib.decompress(data))
            except (zlib.error, RuntimeError, pickle.UnpicklingError) as e:
                raise ValueError(f"not an rtrec model version: {e}") from None
            if not isinstance(d, dict) or d.get("format") != VERSION_FORMAT_1:
                raise ValueError("not an rtrec model version")
        if d.get("format") not in (VERSION_FORMAT, VERSION_FORMAT_1):
            raise ValueError("not an rtrec model version")
        return Version(d["number"], d["created_ms"], d["state"], d["merged_upto"], d["rolled_back"],
                       d["heldout_loss"], d["examples"])


#: How :meth:`Version.to_bytes` writes a version; format 1 is still read.
VERSION_FORMAT = "rtrec-version-2"
VERSION_FORMAT_1 = "rtrec-version-1"
#: The first bytes of :func:`state_to_bytes`' output (format 1 starts with zlib's 0x78).
STATE_MAGIC = b"RTS2"
#: Tensors with at least this many rows go as their non-zero rows when those are fewer than half.
SPARSE_MIN_ROWS = 1024
#: How :func:`state_to_bytes` may number a sparse tensor's rows ("bits" aside); "i64": earlier releases.
_ROW_NUMBERS = {"i32": np.int32, "i64": np.int64}
_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64", torch.int64: "int64",
           torch.int32: "int32", torch.bool: "bool", torch.uint8: "uint8"}


def state_to_bytes(obj) -> bytes:
    """Plain data (dicts with string keys, lists, strings, numbers, None) with tensors in it, as bytes:
    ``STATE_MAGIC``, the header's length (4 bytes, little-endian), the header as JSON (the data with
    each tensor replaced by ``{"$tensor": [dtype, shape, offset, bytes, rows offset or -1, rows, rows as]}``),
    then the tensors' bytes. Reading it never runs code from the data (no pickle).

    A tensor of mostly zero rows (the hashed tables) goes as its non-zero rows, and which rows those are
    goes the smaller way: ``"bits"``, a bitmap of all rows (``np.packbits``: 32 KB for 2**18 rows), or
    ``"i32"``, the rows' numbers. Entries of six elements (earlier releases) list the rows as int64,
    which made the rows' numbers twice the size of a scalar table's values; they are still read.

    >>> d = state_from_bytes(state_to_bytes({"w": torch.ones(2), "n": 3}))
    >>> d["w"].tolist(), d["n"]
    ([1.0, 1.0], 3)
    """
    chunks: list[bytes] = []
    size = 0

    def put(b: bytes) -> int:
        nonlocal size
        at = size
        chunks.append(b)
        size += len(b)
        return at

    def walk(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            if t.dtype not in _DTYPES:
                raise TypeError(f"cannot write a tensor of {t.dtype}")
            rows_at, n_rows, rows_as = -1, 0, ""
            if t.dim() >= 1 and t.shape[0] >= SPARSE_MIN_ROWS and t.dtype != torch.bool:
                mask = t.reshape(t.shape[0], -1).numpy().any(axis=1)
                keep = np.flatnonzero(mask)
                if len(keep) < t.shape[0] // 2:
                    n_rows = len(keep)
                    if 4 * n_rows < (t.shape[0] + 7) // 8:
                        rows_at, rows_as = put(keep.astype(np.int32).tobytes()), "i32"
                    else:
                        rows_at, rows_as = put(np.packbits(mask).tobytes()), "bits"
                    t = t[torch.from_numpy(keep)]
            raw = t.numpy().tobytes()
            return {"$tensor": [_DTYPES[t.dtype], list(o.shape), put(raw), len(raw), rows_at, n_rows, rows_as]}
        if isinstance(o, dict):
            return {str(k): walk(v) for k, v in o.items()}
        if isinstance(o, list | tuple):
            return [walk(v) for v in o]
        if isinstance(o, np.ndarray):
            return walk(torch.from_numpy(o))
        return o

    header = orjson.dumps(walk(obj), option=orjson.OPT_SERIALIZE_NUMPY)
    return b"".join([STATE_MAGIC, len(header).to_bytes(4, "little"), header, *chunks])


def state_from_bytes(data: bytes):
    """The inverse of :func:`state_to_bytes` (tensors on the CPU)."""
    if data[:4] != STATE_MAGIC:
        raise ValueError("not rtrec state bytes")
    n = int.from_bytes(data[4:8], "little")
    try:
        header = orjson.loads(data[8 : 8 + n])
    except orjson.JSONDecodeError as e:
        raise ValueError(f"not rtrec state bytes: {e}") from None
    payload = memoryview(bytearray(data[8 + n :]))  # (one copy: the tensors must be writable)

    def walk(o):
        if isinstance(o, dict):
            t = o.get("$tensor")
            if t is not None and len(o) == 1:
                dtype, shape, at, nbytes, rows_at, n_rows = t[:6]
                rows_as = t[6] if len(t) > 6 else "i64"
                values = torch.from_numpy(np.frombuffer(payload[at : at + nbytes], dtype=dtype))
                if rows_at < 0:
                    return values.reshape(shape)
                if rows_as == "bits":
                    bits = np.frombuffer(payload[rows_at : rows_at + (shape[0] + 7) // 8], dtype=np.uint8)
                    rows = torch.from_numpy(np.flatnonzero(np.unpackbits(bits, count=shape[0]).view(bool)))
                elif rows_as in _ROW_NUMBERS:
                    rows = torch.from_numpy(np.frombuffer(payload[rows_at:], dtype=_ROW_NUMBERS[rows_as],
                                                          count=n_rows).astype(np.int64))
                else:
                    raise ValueError(f"not rtrec state bytes: rows as {rows_as!r}")
                full = torch.zeros(shape, dtype=values.dtype)
                full[rows] = values.reshape(n_rows, *shape[1:])
                return full
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            return [walk(v) for v in o]
        return o

    return walk(header)
