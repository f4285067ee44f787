"""How `rtrec dead-letters` reads and shows a record (the broker side is in tests/integration/test_operating.py)."""

from rtrec.dead_letters import PREVIEW_CHARS, DeadLetter, newest
from rtrec.topics import REASON_HEADER, SOURCE_HEADER, STAGE_HEADER


def test_a_record_of_the_job_shows_why_where_from_and_what():
    d = DeadLetter.from_record(2, 41, 1_700_000_000_000, b"u7", b'{"user_id": "u7",\n"ts": "x"}',
                               [(STAGE_HEADER, b"validate"), (REASON_HEADER, b"ts must be an integer (epoch ms)"),
                                (SOURCE_HEADER, b"events/1@99")])
    when, reason, value = d.lines()
    assert when == "2023-11-14 22:13:20 UTC  validate  from events/1@99  key u7  (dead-letter 2@41)"
    assert reason == "    reason: ts must be an integer (epoch ms)"
    assert value == '    value:  {"user_id": "u7",\\n"ts": "x"}'  # one line per field, whatever the bytes


def test_values_are_shown_on_one_line_and_cut():
    long = DeadLetter(0, 0, 0, None, "r", "s", "x", b"\xff" + b"a" * 1000).lines()[2]
    assert long.startswith("    value:  \\xffaaa") and long.endswith("... (1,001 bytes)")
    assert len(long) < PREVIEW_CHARS + 40


def test_a_record_without_the_headers_still_shows():
    d = DeadLetter.from_record(0, 1, 0, None, None, None)
    assert (d.reason, d.stage, d.source, d.key) == ("?", "?", "?", None)
    assert d.lines()[2] == "    value:  (no value)"


def test_newest_are_by_record_time_across_partitions():
    letters = [DeadLetter(p, o, ts, None, "r", "s", "x", b"") for p, o, ts in
               [(0, 1, 100), (1, 9, 50), (0, 2, 300), (1, 10, 200), (2, 0, 300)]]
    assert [(d.partition, d.offset) for d in newest(letters, 3)] == [(1, 10), (0, 2), (2, 0)]
    assert len(newest(letters, 10)) == 5


def test_reason_kinds_count_a_replayed_backlog_as_one_reason():
    from rtrec.dead_letters import reason_kind

    kinds = {reason_kind(f"duplicate event_id 'ml100k-{i:06d}'", "dedup") for i in range(50)}
    kinds |= {reason_kind(f"event time {t} is more than events.allowed_lateness_ms=60000 behind the watermark "
                          f"{t + 90_000}", "lateness") for t in (1, 2)}
    assert kinds == {"duplicate event_id", "late"}
    assert reason_kind("ts 99999999999999 is more than events.max_future_ms ahead of the clock", "validate") \
        == "ts N is more than events.max_future_ms ahead of the clock"
    assert reason_kind("user_id must be 1..128 characters", "validate") == "user_id must be 1..128 characters"
    assert reason_kind("value 7.5 is outside 0..5", "validate") == "value N is outside 0..5"
