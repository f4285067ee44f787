"""A batch's output records, bound for the features, recommendations, predictions and dead-letter topics.

Each output record is one string, ``key + NUL + value``: ids cannot contain
control characters (rtrec.events) and JSON never holds a raw NUL, and one
string per record is the shape PyFlink converts fastest (udfs/records.py says
why). Dead letters keep their original bytes, which need not be UTF-8, in
parallel lists; there are few of them.

    >>> out = Outputs()
    >>> out.predictions.append("u1", b'{"x":1}')
    >>> out.predictions, bool(out)
    (['u1\\x00{"x":1}'], True)
"""

from __future__ import annotations

SEPARATOR = "\x00"
#: Output topics with (key, value) records, in the order of the stages' output row.
OUTPUT_TOPICS = ("features", "recommendations", "predictions")
#: Dead letters carry the original bytes plus why, where and whence.
DEAD_LETTER_FIELDS = ("dead_keys", "dead_values", "dead_reasons", "dead_stages", "dead_sources")


class TopicRecords(list):
    """Records bound for one topic, each ``key NUL value``."""

    __slots__ = ()

    def append(self, key: str | None, value: bytes) -> None:  # type: ignore[override]
        super().append(f"{key or ''}{SEPARATOR}{value.decode()}")


class Outputs:
    """Collects a batch's output records."""

    __slots__ = ("features", "recommendations", "predictions", "dead_keys", "dead_values", "dead_reasons",
                 "dead_stages", "dead_sources")

    def __init__(self):
        self.features = TopicRecords()
        self.recommendations = TopicRecords()
        self.predictions = TopicRecords()
        self.dead_keys: list[str | None] = []
        self.dead_values: list[bytes] = []
        self.dead_reasons: list[str] = []
        self.dead_stages: list[str] = []
        self.dead_sources: list[str] = []

    def dead(self, key: str | None, value: bytes, reason: str, stage: str, source: str) -> None:
        self.dead_keys.append(key)
        self.dead_values.append(value)
        self.dead_reasons.append(reason)
        self.dead_stages.append(stage)
        self.dead_sources.append(source)

    def __bool__(self) -> bool:
        return bool(self.features or self.recommendations or self.predictions or self.dead_keys)

    def fields(self) -> tuple:
        """The lists in the order of the stages' output row (udfs/records.STAGE_OUTPUT)."""
        return (list(self.features), list(self.recommendations), list(self.predictions), self.dead_keys,
                self.dead_values, self.dead_reasons, self.dead_stages, self.dead_sources)
