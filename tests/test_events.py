"""The event parser and the JSON Schema file say the same thing."""

import json

import jsonschema
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from rtrec.events import SCHEMA_PATH, Event, EventParser, Rejection, parse_event

NOW = 1_700_000_000_000
SCHEMA = json.loads(SCHEMA_PATH.read_text())


def good(**kw):
    d = {"event_id": "e1", "user_id": "u1", "item_id": "i1", "type": "click", "ts": 1_000}
    d.update(kw)
    return {k: v for k, v in d.items() if v is not None}


def parse(d):
    return parse_event(orjson.dumps(d), now_ms=NOW)


def test_schema_file_is_a_valid_json_schema():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


@pytest.mark.parametrize(
    "d",
    [
        good(),
        good(user_id=42, item_id=7),
        good(type="rating", value=4),
        good(type="search", item_id=None, query="star wars", candidates=["1", 2]),
        good(type="purchase", value=19.99, category="Drama", dwell_ms=1200, session_id="s1"),
        good(schema_version=1),
        good(extra_field="kept for forward compatibility"),
    ],
)
def test_valid_events_parse_and_satisfy_the_schema(d):
    jsonschema.validate(d, SCHEMA)
    e = parse(d)
    assert isinstance(e, Event), e
    assert e.user_id == str(d["user_id"]) and e.event_id == d["event_id"]


@pytest.mark.parametrize(
    "d, reason",
    [
        (good(user_id=None), "missing field user_id"),
        (good(type="teleport"), "unknown event type"),
        (good(ts="yesterday"), "ts must be an integer"),
        (good(ts=-5), "must not be negative"),
        (good(item_id=None), "missing field item_id"),
        (good(type="rating"), "missing field value"),
        (good(user_id=True), "user_id must be a string or a non-negative integer"),
        (good(user_id=""), "user_id must be 1..128"),
        (good(candidates="1,2"), "candidates must be a list"),
        (good(schema_version=2), "unsupported schema_version"),
        (good(value=-1), "outside"),
        (good(type="search", item_id=None), "missing field query"),
    ],
)
def test_invalid_events_are_rejected_by_parser_and_schema(d, reason):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(d, SCHEMA)
    r = parse(d)
    assert isinstance(r, Rejection) and reason in r.reason, r


def test_rules_beyond_json_schema():
    assert "max_future_ms" in parse(good(ts=NOW + 2 * 86_400_000)).reason
    assert "outside model.rating_min" in parse(good(type="rating", value=9)).reason
    assert "exceeds events.max_payload_bytes" in parse_event(b"{" + b" " * 70_000 + b"}", now_ms=NOW).reason
    assert parse_event(b'{"user_id": "\xff"}', now_ms=NOW).reason == "payload is not valid UTF-8"
    assert parse_event(b"[1, 2]", now_ms=NOW).reason == "payload must be a JSON object, got array"


def test_canonical_json_round_trips():
    e = parse(good(type="rating", value=3.5, category="Drama", candidates=["a"]))
    assert EventParser().parse(e.to_json(), now_ms=NOW) == e


_ids = st.one_of(st.sampled_from(["u1", "i1", "", "a\nb", "a\x7fb", "a\x00b", "tab\tbed", "back\\slash", "é",
                                  "x" * 128, "x" * 129, "é" * 128, "😀" * 129]),
                 st.text(max_size=4), st.integers(-2, 3), st.sampled_from([2**64 - 1, 2**64, -(2**63)]),
                 st.booleans(), st.none(), st.floats(allow_nan=False, allow_infinity=False, width=32))
_events = st.fixed_dictionaries(
    {"event_id": _ids, "user_id": _ids, "type": st.sampled_from(["click", "rating", "search", "teleport"]),
     "ts": st.sampled_from([1_000, -1, 2.0, 2.5, "x", None, True, NOW + 86_400_000, NOW + 86_400_001])},
    optional={"item_id": _ids, "value": st.sampled_from([4, 3.5, -1, "5", 0.5, 6, 1e9, 1e10, True, None]),
              "category": _ids, "session_id": _ids, "query": _ids,
              "dwell_ms": st.sampled_from([5, -5, 1.5, 2.0, 86_400_001, None, "5"]),
              "candidates": st.one_of(st.lists(_ids, max_size=3), st.none(), st.just("i1")),
              "schema_version": st.sampled_from([1, 2, 1.0, True, None, "1"]), "extra": _ids},
)


def _dumps(d: dict) -> bytes:
    """(json, not orjson: it writes integers past 64 bits, which orjson reads back as floats)"""
    return json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode()


@settings(max_examples=400, deadline=None)
@given(_events)
def test_parse_equals_the_checks_on_every_string(d):
    """parse() skips the control-character search on payloads without a backslash or DEL byte; the
    outcome is the same as with every string searched."""
    raw = _dumps(d)
    parser = EventParser()
    assert parser.parse(raw, now_ms=NOW) == parser.parse_checked(raw, NOW)
    if not isinstance(parser.parse(raw, now_ms=NOW), Rejection):
        assert parser.parse(raw, now_ms=NOW) == parser.fields(orjson.loads(raw), NOW, plain=False)


@settings(max_examples=1000, deadline=None)
@given(_events, st.sampled_from([b"", b" ", b"\n"]))
@example(good(item_id=2**64), b"")
@example(good(user_id=2**64), b"")
@example(good(candidates=["a", 2**64]), b"")
@example(good(candidates=["a", "b\nc"]), b"")
@example(good(event_id="e\x7f"), b"")
@example(good(type="rating", value=5.5), b"")
@example(good(type="search", item_id=None), b"")
@example(good(ts=NOW + 86_400_001), b"")
def test_the_fast_path_accepts_only_what_the_checks_accept_and_alike(d, pad):
    """parse() first decodes with msgspec into a struct of the schema's types, then checks the rest; whatever
    it accepts that way, parse_checked (each rule in turn, in Python) accepts too, as the same event."""
    raw = _dumps(d) + pad
    parser = EventParser()
    checked = parser.parse_checked(raw, now_ms=NOW)
    try:
        wire = parser._decode(raw)
    except Exception:  # noqa: BLE001
        return
    fast = parser._accept(wire, raw, NOW)
    assert fast is None or fast == checked, (fast, checked)


def test_a_plain_event_takes_the_fast_path():
    raw = orjson.dumps(good(user_id=7, candidates=["a", 8]))
    parser = EventParser()
    fast = parser._accept(parser._decode(raw), raw, NOW)
    assert fast is not None and fast == parser.parse_checked(raw, NOW) and fast.user_id == "7"
    assert fast.candidates == ["a", "8"]


def test_packed_events_come_back_equal_with_every_field_and_old_lists_are_read_too():
    """The UserStage hands events to the ItemStage, which keeps held-back ones in state, as
    rtrec.events.pack_events columns; lists of events (what earlier releases kept) still read."""
    import dataclasses
    import pickle

    from rtrec.events import pack_events, unpack_events

    full = Event("e1", "u1", "i1", "click", 5, 2.5, "Drama", 300, "star wars", ["i1", "i2"], "s1")
    assert all(getattr(full, f.name) is not None for f in dataclasses.fields(Event))  # (every field set)
    sparse = Event("e2", "u2", None, "search", 6, query="q")
    events = [full, sparse]
    assert unpack_events(pickle.loads(pickle.dumps(pack_events(events)))) == events
    assert len(pack_events(events)) == 1 + len(dataclasses.fields(Event))
    assert unpack_events(pickle.loads(pickle.dumps(events))) == events
    assert unpack_events(pack_events([])) == []


@pytest.mark.parametrize("raw", [b'{"event_id":"a\x01b","user_id":"u","item_id":"i","type":"click","ts":1}',
                                 b'{"event_id":"e","user_id":"u","item_id":"i","type":"click","ts":1,"candidates":["a\x00"]}',
                                 b'{"event_id":"e","user_id":"u\x7f","item_id":"i","type":"click","ts":1}'])
def test_raw_control_characters_are_refused_by_both_paths(raw):
    """JSON forbids raw control characters in strings (both decoders refuse them) save DEL, which is searched."""
    parser = EventParser()
    assert isinstance(parser.parse(raw, NOW), Rejection) and parser.parse(raw, NOW) == parser.parse_checked(raw, NOW)
