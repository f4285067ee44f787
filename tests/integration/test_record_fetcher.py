"""RecordFetcher against the real broker: how scorers load an announced model version by its offset."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer

from rtrec import topics


@pytest.fixture
def topic(kafka):
    k = kafka.with_prefix(f"t.fetch-{uuid.uuid4().hex[:8]}.")
    topics.ensure_topics(k, [k.model_updates_topic])  # one partition, compacted, like the job's
    producer = Producer({"bootstrap.servers": k.bootstrap_servers})

    def publish(*values: bytes) -> None:
        for v in values:
            producer.produce(k.model_updates_topic, v, key=b"rtrec-model")
        producer.flush(10)

    fetcher = topics.RecordFetcher(k, k.model_updates_topic)
    yield fetcher, publish
    fetcher.close()


def test_fetches_the_record_at_an_offset_or_the_newest(topic):
    fetcher, publish = topic
    publish(*(f"v{i}".encode() for i in range(5)))
    assert fetcher.fetch(0, 2).value() == b"v2"
    assert fetcher.fetch(0, 0).value() == b"v0"  # the one consumer goes back as well as forward
    assert fetcher.fetch(0, 1, newest=True).value() == b"v4"
    assert fetcher.fetch(0, 4, newest=True).offset() == 4


def test_sees_records_published_after_it_reached_the_end(topic):
    fetcher, publish = topic
    publish(b"first")
    assert fetcher.fetch(0, 0, newest=True).value() == b"first"
    publish(b"second", b"third")
    assert fetcher.fetch(0, 1, newest=True).value() == b"third"
    assert fetcher.fetch(0, 1).value() == b"second"


def test_an_offset_past_the_end_gives_none(topic):
    fetcher, publish = topic
    publish(b"only")
    assert fetcher.fetch(0, 5, timeout_s=3) is None


def test_read_last_gives_the_newest_record_or_none(kafka):
    k = kafka.with_prefix(f"t.last-{uuid.uuid4().hex[:8]}.")
    topics.ensure_topics(k, [k.model_updates_topic, k.events_topic])  # one partition, and several
    assert topics.read_last(k, k.model_updates_topic) is None
    assert topics.read_last(k, k.events_topic) is None
    producer = Producer({"bootstrap.servers": k.bootstrap_servers})
    for i, key in enumerate([b"a", b"b", b"c"]):
        producer.produce(k.events_topic, f"e{i}".encode(), key=key, timestamp=1_000 + i)
    producer.produce(k.model_updates_topic, b"m", key=b"rtrec-model", headers={topics.VERSION_HEADER: b"7"})
    producer.flush(10)
    assert topics.read_last(k, k.events_topic).value() == b"e2"
    assert dict(topics.read_last(k, k.model_updates_topic).headers())[topics.VERSION_HEADER] == b"7"


def test_newer_gives_the_newest_record_past_an_offset_or_none(topic):
    fetcher, publish = topic
    assert fetcher.newer(0, -1) is None  # an empty topic
    publish(b"v0", b"v1")
    assert fetcher.newer(0, -1).value() == b"v1"
    assert fetcher.newer(0, 1) is None  # the scorer holds the newest
    publish(b"v2", b"v3")
    newest = fetcher.newer(0, 1)
    assert (newest.offset(), newest.value()) == (3, b"v3")
    assert fetcher.newer(0, 3) is None


def test_header_int_reads_a_number_or_none(kafka):
    k = kafka.with_prefix(f"t.hdr-{uuid.uuid4().hex[:8]}.")
    topics.ensure_topics(k, [k.model_updates_topic])
    producer = Producer({"bootstrap.servers": k.bootstrap_servers})
    producer.produce(k.model_updates_topic, b"m", key=b"rtrec-model",
                     headers={topics.VERSION_HEADER: b"12", topics.CREATED_HEADER: b"1700000000000"})
    producer.flush(10)
    record = topics.read_last(k, k.model_updates_topic)
    assert topics.header_int(record, topics.VERSION_HEADER) == 12
    assert topics.header_int(record, topics.CREATED_HEADER) == 1_700_000_000_000
    assert topics.header_int(record, "absent") is None


def test_commit_forward_moves_a_groups_offsets_on_never_back(kafka):
    k = kafka.with_prefix(f"t.commit-{uuid.uuid4().hex[:8]}.")
    topics.ensure_topics(k, [k.events_topic])
    group = f"g-{uuid.uuid4().hex[:8]}"
    assert topics.commit_forward(k, k.events_topic, group, {0: 5, 1: 0}) == {0: 5}  # (0 is where it stands)
    assert topics.committed_offsets(k, k.events_topic, group)[0] == 5
    assert topics.commit_forward(k, k.events_topic, group, {0: 3, 1: 2}) == {1: 2}
    committed = topics.committed_offsets(k, k.events_topic, group)
    assert (committed[0], committed[1]) == (5, 2)
