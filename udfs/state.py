"""State descriptors shared by the stages."""

from __future__ import annotations

import time

from pyflink.common import Time, Types
from pyflink.datastream.state import MapStateDescriptor, StateTtlConfig


class _JavaDefault:
    """Stands for "Flink's default" (30 days) of RocksDB periodic compaction.

    PyFlink's default for it builds a java Duration through a Py4J gateway,
    which exists in a MiniCluster's process but not in a TaskManager's (the
    job then fails at open() on a real cluster); thread mode passes only the
    query interval to Java anyway, so Java's own default applies.
    """

    def __bool__(self) -> bool:
        return True


def ttl_config(ttl_ms: int) -> StateTtlConfig:
    """Expire entries ``ttl_ms`` after their last write; RocksDB drops them while compacting."""
    return (
        StateTtlConfig.new_builder(Time.milliseconds(ttl_ms))
        .set_update_type(StateTtlConfig.UpdateType.OnCreateAndWrite)
        .set_state_visibility(StateTtlConfig.StateVisibility.NeverReturnExpired)
        .cleanup_in_rocksdb_compact_filter(1000, _JavaDefault())
        # Only what is set explicitly: PyFlink's background defaults are built eagerly, with a
        # gateway Duration (see _JavaDefault). The compaction filter above still applies.
        .disable_cleanup_in_background()
        .build()
    )


def entity_map(name: str, ttl_ms: int) -> MapStateDescriptor:
    """entity id -> pickled Python state, one entry (and one TTL) per entity."""
    d = MapStateDescriptor(name, Types.STRING(), Types.PICKLED_BYTE_ARRAY())
    d.enable_time_to_live(ttl_config(ttl_ms))
    return d


class CachedMapState:
    """A MapState with a write-through cache of recently used entries, for one operator instance.

    Each PyFlink state call crosses into the JVM (about 15-20 µs in thread
    mode); hot users and items are read from the cache instead. It is safe
    because keyed state has exactly one writer, this subtask, and every write
    goes through ``put_all`` to the real state first. A restore or rescale
    builds new operator instances, so caches start empty. Entries older than
    the state TTL are dropped from the cache too, so an expired entry is never
    served from it.

    The cache is keyed by entity id alone: entity ids map to exactly one key
    shard, so the current Flink key is implied.
    """

    def __init__(self, state, ttl_ms: int, max_entries: int = 20_000):
        self.state = state
        self.ttl_s = ttl_ms / 1000
        self.max_entries = max_entries
        self.cache: dict[str, tuple[float, object]] = {}
        # PyFlink 2.2's process-mode MapState.put_all reads its argument as (key, value) pairs
        # (``for k, v in dict_value``); thread mode's hands a dict to Java's putAll.
        self._pairs = hasattr(state, "get_internal_state")

    def get(self, key: str):
        hit = self.cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl_s:
            return hit[1]
        value = self.state.get(key)
        if hit is not None:
            del self.cache[key]
        return value

    def put_all(self, entries: dict) -> None:
        if not entries:
            return
        self.state.put_all(entries.items() if self._pairs else entries)
        now = time.monotonic()
        cache = self.cache
        for k, v in entries.items():
            cache.pop(k, None)  # re-insert: dict order is least recently written first
            cache[k] = (now, v)
        while len(cache) > self.max_entries:
            del cache[next(iter(cache))]
