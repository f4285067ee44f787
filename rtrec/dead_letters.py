"""``rtrec dead-letters``: the newest records of the dead-letter topic, with why and where from.

The job writes one there for every input it could not take (jobs/kafka_tables.py):
the original bytes as the value, the user id as the key when it is known, and
headers naming the reason, the stage that refused it (``validate``, ``dedup``,
``lateness``) and its source (``topic/partition@offset``). They are read here
with ``isolation.level=read_committed``, as the job commits them.
"""

from __future__ import annotations

import contextlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from confluent_kafka import Consumer, TopicPartition

from rtrec import topics
from rtrec.config import KafkaConfig
from rtrec.topics import REASON_HEADER, SOURCE_HEADER, STAGE_HEADER

#: How much of a dead letter's value is shown.
PREVIEW_CHARS = 200


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record of the dead-letter topic."""

    partition: int
    offset: int
    ts: int  # record timestamp, epoch ms
    key: str | None
    reason: str
    stage: str
    source: str
    value: bytes | None

    @classmethod
    def from_record(cls, partition: int, offset: int, ts: int, key: bytes | None, value: bytes | None,
                    headers: Iterable[tuple[str, bytes | None]] | None) -> DeadLetter:
        """From a record's parts; a header that is missing (a record not written by the job) reads ``?``.

        >>> d = DeadLetter.from_record(0, 7, 0, b"u1", b"{", [("rtrec.reason", b"malformed JSON"),
        ...                            ("rtrec.stage", b"validate"), ("rtrec.source", b"events/3@41")])
        >>> d.reason, d.stage, d.source, d.key
        ('malformed JSON', 'validate', 'events/3@41', 'u1')
        """
        h = {k: (v or b"").decode("utf-8", "replace") for k, v in headers or []}
        return cls(partition, offset, ts, key.decode("utf-8", "replace") if key is not None else None,
                   h.get(REASON_HEADER, "?"), h.get(STAGE_HEADER, "?"), h.get(SOURCE_HEADER, "?"), value)

    def lines(self) -> list[str]:
        """How ``rtrec dead-letters`` shows it: when, stage, source and key; the reason; the value's start.

        >>> print("\\n".join(DeadLetter(0, 7, 86_400_000, None, "empty payload", "validate", "events/3@41", b"").lines()))
        1970-01-02 00:00:00 UTC  validate  from events/3@41  (dead-letter 0@7)
            reason: empty payload
            value:  (empty)
        """
        when = datetime.fromtimestamp(self.ts / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        key = f"  key {self.key}" if self.key is not None else ""
        return [f"{when}  {self.stage}  from {self.source}{key}  (dead-letter {self.partition}@{self.offset})",
                f"    reason: {self.reason}",
                f"    value:  {preview(self.value)}"]


def preview(value: bytes | None, chars: int = PREVIEW_CHARS) -> str:
    """The start of a value on one line: control characters and bytes that are not UTF-8 escaped.

    >>> preview(b'{"a": "x\\ny"}'), preview(b"\\xff{"), preview(None), preview(b"x" * 5, chars=3)
    ('{"a": "x\\\\ny"}', '\\\\xff{', '(no value)', 'xxx... (5 bytes)')
    """
    if value is None:
        return "(no value)"
    if not value:
        return "(empty)"
    text = value.decode("utf-8", "backslashreplace")
    shown = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text[:chars])
    return shown + (f"... ({len(value):,} bytes)" if len(text) > chars else "")


def newest(letters: Iterable[DeadLetter], limit: int) -> list[DeadLetter]:
    """The ``limit`` newest by record timestamp (then partition and offset), oldest first.

    >>> letters = [DeadLetter(p, o, ts, None, "r", "s", "x", b"") for p, o, ts in [(0, 5, 30), (1, 2, 10), (0, 6, 20)]]
    >>> [(d.partition, d.offset) for d in newest(letters, 2)]
    [(0, 6), (0, 5)]
    """
    ordered = sorted(letters, key=lambda d: (d.ts, d.partition, d.offset))
    return ordered[-limit:] if limit else ordered


def read_newest(kafka: KafkaConfig, limit: int, timeout_s: float = 10.0) -> list[DeadLetter]:
    """The ``limit`` newest committed dead letters of ``kafka.dead_letter_topic`` (see :func:`newest`).

    Reads only the end of each partition: the last ``2 * limit + 10`` offsets (transaction
    markers take offsets too), further back while a partition gives fewer than ``limit``.
    """
    topic = kafka.dead_letter_topic
    c = topics._consumer(kafka)
    try:
        md = c.list_topics(topic, timeout=timeout_s).topics.get(topic)
        if md is None or md.error is not None:
            raise topics.TopicError(
                f"no topic '{topic}' at {kafka.bootstrap_servers}: the job creates it when it starts "
                "(`rtrec run`); for the demo's, add --set kafka.dead_letter_topic=demo.dead-letter"
            )
        found: list[DeadLetter] = []
        for p in sorted(md.partitions):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout_s)
            window, got = 2 * limit + 10, []
            while True:
                start = max(low, high - window)
                got = _read_range(c, topic, p, start, high, timeout_s)
                if len(got) >= limit or start == low:
                    break
                window *= 4
            found += got
        return newest(found, limit)
    finally:
        c.close()


def _read_range(c: Consumer, topic: str, partition: int, start: int, end: int, timeout_s: float) -> list[DeadLetter]:
    """The committed records of one partition from ``start`` up to its end (``end``, the last stable offset)."""
    if start >= end:
        return []
    out = []
    with contextlib.closing(topics.partition_records(c, topic, partition, start, timeout_s)) as records:
        for m in records:
            out.append(DeadLetter.from_record(m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value(),
                                              m.headers()))
            if m.offset() >= end - 1:
                break
    return out


def reason_kind(reason: str, stage: str) -> str:
    """A dead letter's reason without what is particular to the record (its event_id, time, size or
    value), so that a summary can count the reasons: 2,000 replayed events are "duplicate event_id
    2,000", not 2,000 reasons of one each.

    >>> reason_kind("duplicate event_id 'ml100k-000042'", "dedup")
    'duplicate event_id'
    >>> reason_kind("payload of 70000 bytes exceeds events.max_payload_bytes=65536", "validate")
    'payload of N bytes exceeds events.max_payload_bytes=65536'
    >>> reason_kind("unknown event type 'like'", "validate")
    "unknown event type '...'"
    """
    if stage == "dedup":
        return "duplicate event_id"
    if stage == "lateness":
        return "late"
    reason = re.sub(r"'[^']*'", "'...'", reason)
    return re.sub(r"(?<![\w.=])-?\d+(?:\.\d+)?(?![\w.])", "N", reason)


def reasons_since(kafka: KafkaConfig, start: dict[int, int], timeout_s: float = 10.0) -> Counter:
    """Reason (its :func:`reason_kind`) -> how many committed dead letters ``kafka.dead_letter_topic``
    got after ``start`` (partition -> offset, as topics.end_offsets gave it when a run began)."""
    topic = kafka.dead_letter_topic
    c = topics._consumer(kafka)
    try:
        reasons: Counter = Counter()
        for p, high in topics.end_offsets(kafka, topic).items():
            if high > start.get(p, 0):
                reasons.update(reason_kind(d.reason, d.stage) for d in _read_range(c, topic, p, start.get(p, 0), high, timeout_s))
        return reasons
    finally:
        c.close()
