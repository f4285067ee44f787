"""Which key shard an entity id belongs to.

The SQL micro-batching (jobs/kafka_tables.py) shards users with Flink's
``HASH_CODE``, which is Java's ``String.hashCode``; Python stages that shard
by item use the same function, so a shard means the same thing everywhere.

    >>> java_string_hash("42"), shard_of("42", 16)
    (1662, 14)
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
