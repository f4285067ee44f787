"""udfs/state.py: the TTL config must be buildable in a TaskManager, where PyFlink has no Py4J gateway."""

import pyflink.common.time

from udfs.state import entity_map


def test_ttl_config_needs_no_java_gateway(monkeypatch):
    def no_gateway(*_a, **_k):
        raise FileNotFoundError("a TaskManager has no Py4J gateway to launch")

    monkeypatch.setattr(pyflink.common.time, "get_gateway", no_gateway)
    ttl = entity_map("users", 60_000)._ttl_config  # (PyFlink has no public getter)
    strategies = ttl.get_cleanup_strategies()
    assert ttl.get_ttl().to_milliseconds() == 60_000
    assert strategies.get_rocksdb_compact_filter_cleanup_strategy().get_query_time_after_num_entries() == 1000
