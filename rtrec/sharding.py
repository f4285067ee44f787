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
"""

from __future__ import annotations


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
