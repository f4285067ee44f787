from rtrec.sharding import java_string_hash, shard_of


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
