"""The serving store: the latest features and recommendations in a local RocksDB (``rocksdict``).

``rtrec serve`` writes it; ``rtrec lookup`` and the HTTP API read it. Keys::

    uf:<user id>           the newest `features` record with entity "user" (its JSON value, as written by the job)
    if:<item id>           the newest `features` record with entity "item"
    ur:<user id>           the newest `recommendations` record with request "refresh" (the user's top-k)
    uc:<user id>           the newest `recommendations` record with request "candidates" (a ranked request)
    ~off:<topic>:<part>    the next offset to consume from that partition
    ~n:<counter>           records applied (per kind) and skipped
    ~source                the broker cluster and topics this store follows

"Newest" is last-write-wins in offset order within a partition. The job keys
both topics by the entity id, so all records of one user (or item) land in one
partition in the order the job wrote them, and under exactly-once delivery the
job writes a user's records in the order of its events. A record is never
compared with a stored one by timestamp: a late event legitimately produces a
newer recommendation with an older event time. (Under the job's at-least-once
delivery, a recovery writes some records again; the store briefly holds an
older value until the re-written newer one arrives, and ends the same.)

Every :meth:`ServeStore.apply` is one RocksDB ``WriteBatch`` holding the
records of one consumed batch *and* the offsets they advance, so the store
always holds exactly the effects of the records before its stored offsets:
after a crash (even one that loses the tail of the write-ahead log) the
consumer resumes at the stored offsets and applies nothing twice and nothing
never.

    >>> import tempfile
    >>> s = ServeStore(tempfile.mkdtemp())
    >>> s.apply([Record("features", "f", 0, 0, b'{"entity": "user", "id": "7", "features": {"n": 1}}'),
    ...          Record("features", "f", 0, 1, b'{"entity": "user", "id": "7", "features": {"n": 2}}')])
    (2, 0)
    >>> s.user_features("7")["features"], s.offsets(), s.counters()["applied"]
    ({'n': 2}, {('f', 0): 2}, 2)
    >>> s.close()
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import orjson
from rocksdict import AccessType, Options, Rdict, WriteBatch

from rtrec.records import read_record

USER_FEATURES = b"uf:"
ITEM_FEATURES = b"if:"
RECOMMENDATIONS = b"ur:"
CANDIDATES = b"uc:"
OFFSET = b"~off:"
COUNTER = b"~n:"
SOURCE = b"~source"

# Per-kind counters kept in the store (their sum is "applied").
KINDS = ("user_features", "item_features", "recommendations", "candidates")
_PREFIX_OF_KIND = {"user_features": USER_FEATURES, "item_features": ITEM_FEATURES,
                   "recommendations": RECOMMENDATIONS, "candidates": CANDIDATES}


class StoreError(RuntimeError):
    """A store that cannot be opened or does not belong to the configured topics."""


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed record: ``topic_kind`` is "features" or "recommendations"."""

    topic_kind: str
    topic: str
    partition: int
    offset: int
    value: bytes | None


def classify(topic_kind: str, value: bytes | None) -> tuple[str, bytes] | None:
    """(kind, store key) of a record value, or None if it is not one the store keeps.

    >>> classify("features", b'{"entity": "item", "id": "7", "features": {}}')
    ('item_features', b'if:7')
    >>> classify("recommendations", b'{"user_id": "42", "items": [], "request": "candidates"}')
    ('candidates', b'uc:42')
    >>> classify("features", b'not json') is None
    True
    """
    if not value or topic_kind not in ("features", "recommendations"):
        return None
    try:
        d = read_record(topic_kind, value)
    except ValueError:
        return None
    if topic_kind == "features":
        entity, ident = d["entity"], d["id"]
        if not isinstance(ident, str | int) or entity not in ("user", "item"):
            return None
        kind = "user_features" if entity == "user" else "item_features"
    elif topic_kind == "recommendations":
        ident = d["user_id"]
        if not isinstance(ident, str | int) or not isinstance(d["items"], list):
            return None
        kind = "candidates" if d.get("request") == "candidates" else "recommendations"
    else:
        return None
    return kind, _PREFIX_OF_KIND[kind] + str(ident).encode()


def _offset_key(topic: str, partition: int) -> bytes:
    return OFFSET + f"{topic}:{partition}".encode()


class ServeStore:
    """The store at ``path``: read-write (one process, ``rtrec serve``) or read-only (any number, beside it)."""

    def __init__(self, path: str | Path, read_only: bool = False):
        self.path = Path(path)
        self.read_only = read_only
        self._offsets_cache: dict[tuple[str, int], int] | None = None
        opts = Options(raw_mode=True)
        try:
            if read_only:
                if not (self.path / "CURRENT").exists():
                    raise StoreError(f"no serve store at {self.path}: run `rtrec serve` first (or pass --store)")
                self.db = self._open_read_only(opts)
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                opts.create_if_missing(True)
                self.db = Rdict(str(self.path), opts)
        except StoreError:
            raise
        except Exception as e:  # rocksdict raises plain Exceptions
            if "lock" in str(e).lower():
                raise StoreError(
                    f"serve store {self.path} is open in another process (another `rtrec serve`?): "
                    "stop it, or give this one its own --store"
                ) from None
            raise StoreError(f"cannot open serve store {self.path}: {e}") from None
        self._counters = self._read_counters()

    def _open_read_only(self, opts: Options) -> Rdict:
        # A read-only instance replays the write-ahead log of the live writer; if that
        # writer retires a log file at the same moment, opening again succeeds.
        for attempt in range(5):
            try:
                return Rdict(str(self.path), opts, access_type=AccessType.read_only())
            except Exception:
                if attempt == 4:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- writing ---------------------------------------------------------------------
    def apply(self, records: Iterable[Record], positions: dict[tuple[str, int], int] | None = None) -> tuple[int, int]:
        """Apply consumed records in order, with their offsets, as one atomic write; returns (applied, skipped).

        ``positions`` may move a partition's stored offset further than its last
        record (past transaction markers and aborted records, which are not
        delivered); it never moves one back.
        """
        batch = WriteBatch(raw_mode=True)
        offsets: dict[tuple[str, int], int] = {}
        counts = dict.fromkeys(KINDS, 0)
        skipped = 0
        for r in records:
            found = classify(r.topic_kind, r.value)
            if found is None:
                skipped += 1
            else:
                kind, key = found
                batch.put(key, r.value)
                counts[kind] += 1
            tp = (r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, -1), r.offset + 1)
        stored = self.offsets()
        for tp, pos in (positions or {}).items():
            if pos is not None and pos >= 0 and pos > max(offsets.get(tp, -1), stored.get(tp, -1)):
                offsets[tp] = pos
        if not offsets:
            return 0, 0
        for (topic, partition), nxt in offsets.items():
            batch.put(_offset_key(topic, partition), str(nxt).encode())
        new = dict(self._counters)
        for kind, n in counts.items():
            new[kind] += n
        new["skipped"] += skipped
        for name, n in new.items():
            if n != self._counters[name]:
                batch.put(COUNTER + name.encode(), str(n).encode())
        self.db.write(batch)
        self._counters = new
        self._offsets_cache = {**stored, **offsets}
        return sum(counts.values()), skipped

    def set_source(self, source: dict) -> None:
        self.db.put(SOURCE, orjson.dumps(source))

    # -- reading ---------------------------------------------------------------------
    def source(self) -> dict | None:
        raw = self.db.get(SOURCE)
        return orjson.loads(raw) if raw else None

    def offsets(self) -> dict[tuple[str, int], int]:
        """(topic, partition) -> next offset to consume."""
        if self._offsets_cache is not None and not self.read_only:
            return dict(self._offsets_cache)
        out = {}
        for k, v in self.db.items(from_key=OFFSET):
            if not k.startswith(OFFSET):
                break
            topic, _, part = k[len(OFFSET):].decode().rpartition(":")
            out[(topic, int(part))] = int(v)
        if not self.read_only:
            self._offsets_cache = dict(out)
        return out

    def _read_counters(self) -> dict[str, int]:
        out = {}
        for name in (*KINDS, "skipped"):
            raw = self.db.get(COUNTER + name.encode())
            out[name] = int(raw) if raw else 0
        return out

    def counters(self) -> dict[str, int]:
        """Records applied per kind, in all ("applied"), and skipped (not a record the store keeps)."""
        c = dict(self._counters)
        c["applied"] = sum(c[k] for k in KINDS)
        return c

    def get_raw(self, prefix: bytes, ident: str) -> bytes | None:
        return self.db.get(prefix + ident.encode())

    def _get(self, prefix: bytes, ident: str) -> dict | None:
        raw = self.get_raw(prefix, ident)
        return orjson.loads(raw) if raw is not None else None

    def user_features(self, user_id: str) -> dict | None:
        return self._get(USER_FEATURES, user_id)

    def item_features(self, item_id: str) -> dict | None:
        return self._get(ITEM_FEATURES, item_id)

    def recommendations(self, user_id: str, request: str = "refresh") -> dict | None:
        """The user's newest top-k (``refresh``) or newest ranked request (``candidates``)."""
        return self._get(CANDIDATES if request == "candidates" else RECOMMENDATIONS, user_id)

    def lookup(self, entity: str, ident: str) -> dict | None:
        """What ``rtrec lookup`` prints: a user's features and recommendations, or an item's features."""
        if entity == "item":
            f = self.item_features(ident)
            return None if f is None else {"item_id": ident, "features": f}
        out = {"user_id": ident, "features": self.user_features(ident),
               "recommendations": self.recommendations(ident), "candidates": self.recommendations(ident, "candidates")}
        return None if all(out[k] is None for k in ("features", "recommendations", "candidates")) else out

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ServeStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
