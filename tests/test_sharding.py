import json

import pytest

from rtrec.config import ConfigError, load_config
from rtrec.sharding import (
    LEGACY_SHARDS,
    automatic_shards,
    default_max_parallelism,
    fatal_reason,
    flink_murmur_hash,
    java_string_hash,
    shard_of,
    shards_per_subtask,
    spreading_shards,
    state_shard_error,
    subtask_of_shard,
)


def test_matches_java_string_hashcode():
    # "...".hashCode() as a JVM computes it (UTF-16 code units, 32-bit overflow).
    assert java_string_hash("") == 0
    assert java_string_hash("hello") == 99162322
    assert java_string_hash("polygenelubricants") == -(2**31)
    assert java_string_hash("\u00ff\u20ac") == 255 * 31 + 8364
    assert java_string_hash("\U0001d11e") == 0xD834 * 31 + 0xDD1E  # a surrogate pair


def test_shard_is_a_floor_mod_of_negative_hashes_too():
    assert shard_of("polygenelubricants", 16) == 0
    for s in ["1", "42", "user-7", "ü", "polygenelubricants!"]:
        assert 0 <= shard_of(s, 7) < 7
        assert shard_of(s, 7) == java_string_hash(s) % 7


def test_subtask_of_shard_is_flinks_key_group_assignment():
    """The Python port against Flink's own KeyGroupRangeAssignment and MathUtils (through PyFlink's JVM)."""
    from pyflink.java_gateway import get_gateway  # (starts a JVM: only here)

    jvm = get_gateway().jvm
    assign = jvm.org.apache.flink.runtime.state.KeyGroupRangeAssignment
    for p in (1, 2, 3, 4, 8, 86, 100, 30000):
        assert default_max_parallelism(p) == assign.computeDefaultMaxParallelism(p), p
    for code in (0, 1, 7, 15, 127, -1, -(2**31), 2**31 - 1, 123456789):
        assert flink_murmur_hash(code) == jvm.org.apache.flink.util.MathUtils.murmurHash(code), code
    for shards, p, max_p in ((16, 2, 128), (16, 4, 128), (4, 2, 128), (64, 8, 128), (300, 100, 256)):
        for s in range(shards):
            assert subtask_of_shard(s, p, max_p) == assign.assignKeyToParallelOperator(
                jvm.java.lang.Integer(s), max_p, p), (shards, p, s)


def test_a_parallelism_that_leaves_a_subtask_without_shards_is_refused_with_a_count_that_works():
    assert shards_per_subtask(4, 2) == [0, 4]  # fewer shards than usual can all land on one subtask
    with pytest.raises(ConfigError, match=r"1 of the 2 subtasks would get no shard .*\[0, 4\]\); flink.shards=(\d+)"
                       ) as e:
        load_config(overrides=["flink.parallelism=2", "flink.shards=4"])
    better = int(e.value.args[0].split("flink.shards=")[-1].split()[0])
    assert min(shards_per_subtask(better, 2)) > 0
    load_config(overrides=["flink.parallelism=2", "flink.shards=16"])  # 16 spreads over 2 (7 and 9)
    load_config(overrides=["flink.parallelism=1", "flink.shards=1"])
    with pytest.raises(ConfigError, match="flink.parallelism=64 exceeds flink.shards=16"):
        load_config(overrides=["flink.parallelism=64", "flink.shards=16"])


@pytest.mark.parametrize("parallelism", [1, 2, 3, 7, 8, 64])
def test_the_automatic_shard_count_is_one_at_parallelism_one_and_else_spreads_over_every_subtask(parallelism):
    cfg = load_config(overrides=[f"flink.parallelism={parallelism}"])  # (flink.shards: 0, the default)
    n = cfg.flink.key_shards
    assert n == automatic_shards(parallelism)
    if parallelism == 1:
        assert n == 1
    else:
        assert n >= 16 and min(shards_per_subtask(n, parallelism, default_max_parallelism(parallelism))) > 0
    explicit = spreading_shards(parallelism, 2 * parallelism)
    assert load_config(overrides=[f"flink.parallelism={parallelism}", f"flink.shards={explicit}"]
                       ).flink.key_shards == explicit


def test_state_written_with_another_shard_count_is_refused():
    # New state, or state written with this count: fine.
    assert state_shard_error(None, False, 1, explicit=False) is None
    assert state_shard_error(16, False, 16, explicit=True) is None
    assert state_shard_error(1, False, 1, explicit=False) is None
    # Recorded with another count, whether the job's is automatic or set.
    assert "written with flink.shards=16" in state_shard_error(16, False, 1, explicit=False)
    assert "Set flink.shards: 1 " in state_shard_error(1, False, 16, explicit=True)
    # Without a record (releases up to 0.2): the user's explicit count is trusted; else it was their default.
    assert state_shard_error(None, True, 4, explicit=True) is None
    assert state_shard_error(None, True, LEGACY_SHARDS, explicit=False) is None  # (automatic at parallelism > 1)
    error = state_shard_error(None, True, 1, explicit=False)
    assert "without a record of its key shards" in error and "Set flink.shards: 16 " in error


def test_the_mismatch_is_found_in_flinks_words_for_it():
    message = state_shard_error(16, False, 1, explicit=False)
    raised = ("org.apache.flink.runtime.JobException: Recovery is suppressed\nCaused by: pemja.core.PythonException: "
              f"<class 'rtrec.sharding.ShardCountMismatch'>: {message}\n\tat pemja.core.object.PyIterator.next")
    assert fatal_reason(raised) == message
    assert fatal_reason(json.dumps({"exceptionHistory": {"entries": [{"stacktrace": raised}]}})) == message
    assert fatal_reason("java.lang.RuntimeException: a broker went away") is None
