"""A catalogue of records the job must refuse, each with the reason it must give."""

from __future__ import annotations

import orjson

GOOD = {"event_id": "bad-0", "user_id": "bad-user", "item_id": "1", "type": "click", "ts": 880_000_000_000}


def variant(**changes) -> bytes:
    d = {k: v for k, v in {**GOOD, **changes}.items() if v is not ...}
    return orjson.dumps(d)


# (kafka key, record value, expected reason prefix)
CATALOGUE: list[tuple[str | None, bytes | None, str]] = [
    ("bad-user", b"{not json", "malformed JSON"),
    ("bad-user", b'{"event_id": "x", "user_id": "bad-user"', "malformed JSON"),
    ("bad-user", b'{"value": NaN, "event_id": "x"}', "malformed JSON"),
    (None, b"", "empty payload"),
    (None, None, "empty payload"),  # a tombstone
    ("bad-user", b"[1, 2, 3]", "payload must be a JSON object, got array"),
    ("bad-user", b'"just a string"', "payload must be a JSON object, got string"),
    ("bad-user", b"null", "payload must be a JSON object, got null"),
    ("bad-user", b"\xff\xfe{}", "payload is not valid UTF-8"),
    ("bad-user", b'{"user_id": "bad-user", "event_id": "x", "type": "click", "ts": 1, "item_id": "\xc3\x28"}',
     "payload is not valid UTF-8"),
    ("bad-user", b'{"pad": "' + b"x" * 70_000 + b'"}', "payload of"),
    ("bad-user", variant(user_id=...), "missing field user_id"),
    ("bad-user", variant(event_id=...), "missing field event_id"),
    ("bad-user", variant(type=...), "missing field type"),
    ("bad-user", variant(ts=...), "missing field ts"),
    ("bad-user", variant(type="teleport"), "unknown event type"),
    ("bad-user", variant(ts="yesterday"), "ts must be an integer"),
    ("bad-user", variant(ts=1.5), "ts must be an integer"),
    ("bad-user", variant(ts=-1), "ts must not be negative"),
    ("bad-user", variant(ts=32_503_680_000_000), "ts 32503680000000 is more than events.max_future_ms"),
    ("bad-user", variant(value=-3), "value -3.0 is outside"),
    ("bad-user", variant(value=1e12), "value 1000000000000.0 is outside"),
    ("bad-user", variant(value="cheap"), "value must be a number"),
    ("bad-user", variant(type="rating", value=9), "rating 9 is outside"),
    ("bad-user", variant(type="rating"), "missing field value"),
    ("bad-user", variant(user_id=True), "user_id must be a string or a non-negative integer"),
    ("bad-user", variant(user_id=""), "user_id must be 1..128 characters"),
    ("bad-user", variant(user_id="a\u0000b"), "user_id must not contain control characters"),
    ("bad-user", variant(item_id=...), "missing field item_id"),
    ("bad-user", variant(item_id={"id": 1}), "item_id must be a string or a non-negative integer"),
    ("bad-user", variant(candidates="1,2"), "candidates must be a list"),
    ("bad-user", variant(candidates=list(range(1001))), "1001 candidates exceed"),
    ("bad-user", variant(type="search", item_id=...), "missing field query"),
    ("bad-user", variant(schema_version=2), "unsupported schema_version"),
    ("bad-user", variant(event_id="e" * 200), "event_id must be a string of 1..128"),
    ("bad-user", variant(dwell_ms=-5), "dwell_ms must be an integer"),
    ("bad-user", variant(query="q" * 1001), "query must be 1..1000 characters"),
    ("bad-user", variant(category=7), "category must be a string"),
]
