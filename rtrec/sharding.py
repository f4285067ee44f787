"""Which key shard an entity id belongs to, and which subtask a shard lands on.

The SQL micro-batching (jobs/kafka_tables.py) shards users with Flink's
``HASH_CODE``, which is Java's ``String.hashCode``; Python stages that shard
by item use the same function, so a shard means the same thing everywhere.

The keyed stages are keyed by the shard number (a Java Integer), and Flink
places a key on a subtask through its key group: a murmur hash of the key's
hashCode modulo the max parallelism (128 for up to 85 subtasks), then a
contiguous range of key groups per subtask. So shards do not spread evenly:
with 16 shards, 2 subtasks get 7 and 9, and from 8 subtasks on some get none;
with 2 or 4 shards, 2 subtasks get all and nothing.

    >>> java_string_hash("42"), shard_of("42", 16)
    (1662, 14)
    >>> shards_per_subtask(16, 2), shards_per_subtask(4, 2)
    ([7, 9], [0, 4])

The count is fixed for the life of the job's state (user and item state are
keyed by shard), so the UserStage records it in state and refuses to run on
state written with another (:func:`state_shard_error`).
"""

from __future__ import annotations

import re


def java_string_hash(s: str) -> int:
    """Java's String.hashCode over UTF-16 code units, as a signed 32-bit int."""
    h = 0
    data = s.encode("utf-16-be", "surrogatepass")
    for i in range(0, len(data), 2):
        h = (31 * h + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
    return h - (1 << 32) if h & 0x80000000 else h


def shard_of(entity_id: str, shards: int) -> int:
    """Floor-mod of the Java hash, as ``MOD(MOD(HASH_CODE(id), n) + n, n)`` in SQL."""
    return java_string_hash(entity_id) % shards


_M32 = 0xFFFFFFFF


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _M32


def flink_murmur_hash(code: int) -> int:
    """Flink's ``MathUtils.murmurHash(int)``: non-negative."""
    code = _rotl((code * 0xCC9E2D51) & _M32, 15)
    code = _rotl((code * 0x1B873593) & _M32, 13)
    h = ((code * 5 + 0xE6546B64) & _M32) ^ 4
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    h = h - (1 << 32) if h & 0x80000000 else h
    return h if h >= 0 else (-h if h != -(1 << 31) else 0)


def default_max_parallelism(parallelism: int) -> int:
    """Flink's ``KeyGroupRangeAssignment.computeDefaultMaxParallelism``: the max parallelism an operator
    gets at its first start (kept in its checkpoints from then on)."""
    p = parallelism + parallelism // 2
    up = 1 << max(0, (p - 1).bit_length())  # the next power of two
    return min(max(up, 128), 32768)


def subtask_of_shard(shard: int, parallelism: int, max_parallelism: int = 128) -> int:
    """The subtask that Flink gives the key ``shard`` (an Integer, whose hashCode is itself):
    ``KeyGroupRangeAssignment.assignKeyToParallelOperator``."""
    group = flink_murmur_hash(shard & _M32) % max_parallelism
    return group * parallelism // max_parallelism


def shards_per_subtask(shards: int, parallelism: int, max_parallelism: int = 128) -> list[int]:
    """How many of ``shards`` key shards each of ``parallelism`` subtasks holds."""
    counts = [0] * parallelism
    for s in range(shards):
        counts[subtask_of_shard(s, parallelism, max_parallelism)] += 1
    return counts


def spreading_shards(parallelism: int, at_least: int = 1) -> int | None:
    """The smallest shard count from ``at_least`` on that gives each of ``parallelism`` subtasks a shard
    (None: none below four times the max parallelism)."""
    if parallelism == 1:
        return max(1, at_least)
    max_p = default_max_parallelism(parallelism)
    return next((n for n in range(max(at_least, parallelism), 4 * max_p)
                 if min(shards_per_subtask(n, parallelism, max_p)) > 0), None)


#: The shard count of releases up to 0.2 (their default), whose state keeps no record of it.
LEGACY_SHARDS = 16
#: ``flink.shards: 0`` (automatic) above parallelism 1: at least this many, so that the shards spread
#: over the subtasks (16: up to 7 subtasks) and a later rescale up to that finds them.
SCALED_SHARDS = 16


def automatic_shards(parallelism: int) -> int:
    """``flink.shards: 0``: one shard at parallelism 1 (one micro-batch per interval, the lowest latency),
    else the smallest count from 16 on that spreads over the subtasks.

    >>> automatic_shards(1), automatic_shards(2), automatic_shards(8)
    (1, 16, 23)
    """
    return 1 if parallelism == 1 else spreading_shards(parallelism, SCALED_SHARDS) or 4 * parallelism


class FatalFailure(RuntimeError):
    """A failure that every restart of the job would meet again: `rtrec run` ends the job and says why
    (:func:`fatal_reason` finds its message in Flink's exception history)."""


class ShardCountMismatch(FatalFailure):
    """The job's state was written with another key shard count than the job runs with."""


def state_shard_error(recorded: int | None, legacy: bool, shards: int, explicit: bool) -> str | None:
    """Why a key shard's state cannot be used by a job with ``shards`` key shards (None: it can).

    ``recorded``: the count that key's state was written with (None: no record); ``legacy``: the key
    holds state but no record (written by a release up to 0.2); ``explicit``: ``flink.shards`` was set,
    not automatic. State without a record is taken as the user's explicit count, or else as those
    releases' default, 16.

    >>> state_shard_error(None, False, 1, False) is None, state_shard_error(4, False, 4, True) is None
    (True, True)
    >>> print(state_shard_error(16, False, 1, False))
    this job's state was written with flink.shards=16 (16 key shards); this job runs with 1 (flink.shards: 0, automatic): its users would start from nothing. Set flink.shards: 16 to run on this state, or start without it (no --from-savepoint, a fresh checkpoint folder)
    """
    written = recorded if recorded is not None else (LEGACY_SHARDS if legacy and not explicit else None)
    if written is None or written == shards:
        return None
    how = ("written by a release up to 0.2 without a record of its key shards: taken as their default, "
           f"flink.shards={written}") if recorded is None else f"written with flink.shards={written}"
    runs = f"{shards}" + ("" if explicit else " (flink.shards: 0, automatic)")
    return (f"this job's state was {how} ({written} key shards); this job runs with {runs}: its users would "
            f"start from nothing. Set flink.shards: {written} to run on this state, or start without it "
            "(no --from-savepoint, a fresh checkpoint folder)")


#: A failure that every restart would meet again (rtrec.sharding.ShardCountMismatch,
#: models.params.ModelShapeMismatch), as pemja words a Python exception inside Flink's:
#: ``<class 'rtrec.sharding.ShardCountMismatch'>: message``.
_FATAL = re.compile(r"(?:ShardCountMismatch|ModelShapeMismatch)'?>?: ([^\n]*)")


def fatal_reason(text: str) -> str | None:
    """The message of a failure no restart can mend, if ``text`` (a Flink exception, or the REST API's
    exception history as JSON) holds one."""
    found = _FATAL.search(text.replace("\\n", "\n"))
    return found.group(1).rstrip('"').strip() if found else None
