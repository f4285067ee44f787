"""Model versions on the model-updates topic: one version, one or more records (chunks).

Managed Kafka clusters cap a record at about 1 MB (the broker's
``message.max.bytes``), and a version (models.params.Version.to_bytes) grows
with the catalogue and the model's width. So the merger cuts each version into
chunks of at most ``kafka.version_chunk_bytes`` (:func:`split`) and writes them
in order to the topic's one partition, each with headers:

- ``rtrec.version`` and ``rtrec.created_ms``: the version's number and creation time;
- ``rtrec.chunk`` and ``rtrec.chunks``: the chunk's index and how many there are.

Chunk ``i`` has key ``rtrec-model`` (``i`` = 0) or ``rtrec-model#i``, so
compaction keeps every chunk of the newest version (a version with fewer chunks
leaves older chunks behind under higher keys; readers never take them, as their
number differs). The job's notice source passes on only the last chunk of each
version (jobs/kafka_tables.model_updates_source); :class:`VersionReader` finds
a version's last chunk and reads the others back. A record without
``rtrec.chunks`` holds a whole version, as every record did before chunks.
"""

from __future__ import annotations

from dataclasses import dataclass

from rtrec import topics
from rtrec.config import KafkaConfig

MODEL_KEY = "rtrec-model"
CHUNK_HEADER, CHUNKS_HEADER = "rtrec.chunk", "rtrec.chunks"


@dataclass(frozen=True, slots=True)
class VersionChunk:
    """One record of a version as the merger emits it (jobs/kafka_tables.insert_model_updates adds the headers)."""

    key: str
    value: bytes
    number: int
    created_ms: int
    chunk: int
    chunks: int


def split(data: bytes, number: int, created_ms: int, chunk_bytes: int) -> list[VersionChunk]:
    """``data`` (a version's bytes) as records of at most ``chunk_bytes`` each.

    >>> [(c.key, c.value, c.chunk, c.chunks) for c in split(b"abcde", 7, 0, 2)]
    [('rtrec-model', b'ab', 0, 3), ('rtrec-model#1', b'cd', 1, 3), ('rtrec-model#2', b'e', 2, 3)]
    """
    n = max(1, -(-len(data) // chunk_bytes))
    return [VersionChunk(MODEL_KEY if i == 0 else f"{MODEL_KEY}#{i}", data[i * chunk_bytes:(i + 1) * chunk_bytes],
                         number, created_ms, i, n) for i in range(n)]


def is_last_chunk(record) -> bool:
    """Whether ``record`` ends a version (a whole-version record without chunk headers does too)."""
    chunks = topics.header_int(record, CHUNKS_HEADER)
    return chunks is None or topics.header_int(record, CHUNK_HEADER) == chunks - 1


def whole_versions(records) -> list[tuple[object, bytes]]:
    """The complete versions among ``records`` (a partition's, in offset order): (last record, bytes)."""
    out, parts = [], {}
    for m in records:
        chunks = topics.header_int(m, CHUNKS_HEADER)
        if chunks is None:
            out.append((m, m.value()))
            continue
        number, chunk = topics.header_int(m, topics.VERSION_HEADER), topics.header_int(m, CHUNK_HEADER)
        got = parts.setdefault(number, {})
        got[chunk] = m.value()
        if chunk == chunks - 1 and len(got) == chunks:
            out.append((m, b"".join(got.pop(i) for i in range(chunks))))
            del parts[number]
    return out


class VersionReader:
    """Reads versions back from the topic over one consumer kept open (the scorers and the merger's warm start).

    ``head`` methods return a version's last record (its headers tell the number and creation time
    without loading anything); :meth:`data` then reads the whole version.
    """

    def __init__(self, kafka: KafkaConfig, topic: str):
        self.fetcher = topics.RecordFetcher(kafka, topic)

    def head(self, partition: int, offset: int, newest: bool = False, timeout_s: float = 10.0):
        """The last record of the version at ``offset`` (a notice's offset) or, if compaction removed
        it, of the first version after it; with ``newest``, of the partition's newest version if that
        is further on. None if there is none within ``timeout_s``."""
        record = self.fetcher.fetch(partition, offset, newest=newest, timeout_s=timeout_s)
        head = self._to_last(record, timeout_s)
        if head is None and newest:  # the newest version is still being written: the one at ``offset``
            head = self._to_last(self.fetcher.fetch(partition, offset, timeout_s=timeout_s), timeout_s)
        return head

    def newer(self, partition: int, offset: int, timeout_s: float = 1.0):
        """The last record of the partition's newest version if it lies past ``offset``, else None (one
        round trip to the broker when nothing is newer: the scorers ask between batches)."""
        return self._to_last(self.fetcher.newer(partition, offset, timeout_s=timeout_s), timeout_s)

    def newest(self, timeout_s: float = 10.0):
        """The last record of the newest version on the topic, or None."""
        return self._to_last(topics.read_last(self.fetcher.kafka, self.fetcher.topic, timeout_s), timeout_s)

    def _to_last(self, record, timeout_s: float):
        """From a chunk to its version's last one: the merger may still be writing the others."""
        if record is None or is_last_chunk(record):
            return record
        number = topics.header_int(record, topics.VERSION_HEADER)
        for m in self.fetcher.records(record.partition(), record.offset() + 1, timeout_s):
            if topics.header_int(m, topics.VERSION_HEADER) == number and is_last_chunk(m):
                return m
        return None

    def data(self, head, timeout_s: float = 10.0) -> bytes | None:
        """The whole version that ``head`` (a version's last record) ends; None if some chunk is gone
        (compaction removes a version's chunks once a newer version has written the same keys)."""
        chunks = topics.header_int(head, CHUNKS_HEADER)
        if chunks is None or chunks == 1:
            return head.value()
        number, end = topics.header_int(head, topics.VERSION_HEADER), head.offset()
        parts: dict[int, bytes] = {}
        # Chunks are written in order by one producer, so they are the ``chunks`` records up to the
        # head; a retried send can put a duplicate in between, so look further back once.
        for start in (end - chunks + 1, end - 4 * chunks):
            for m in self.fetcher.records(head.partition(), max(0, start), timeout_s):
                if m.offset() > end:
                    break
                chunk = topics.header_int(m, CHUNK_HEADER)
                if chunk is not None and topics.header_int(m, topics.VERSION_HEADER) == number:
                    parts[chunk] = m.value()
                if m.offset() == end:
                    break
            if len(parts) == chunks:
                return b"".join(parts[i] for i in range(chunks))
        return None

    def close(self) -> None:
        self.fetcher.close()
