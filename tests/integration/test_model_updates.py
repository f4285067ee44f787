"""Model versions over 1 MB on a topic that takes at most 1 MB per record (rtrec.model_updates).

The topic is created as an administrator of a managed cluster would: compacted, one partition,
``max.message.bytes`` at 1 MB. The records are written as the job's Flink sink writes them
(jobs/kafka_tables.insert_model_updates: the merger's chunks, their headers) and read back with
the VersionReader the scorers and the merger use.
"""

from __future__ import annotations

import uuid

import pytest
import torch
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import ConfigResource, NewTopic

from models.params import Version
from rtrec import topics
from rtrec.config import KafkaConfig
from rtrec.model_updates import CHUNK_HEADER, CHUNKS_HEADER, VersionReader, split, whole_versions

LIMIT = 1_000_000  # the topic's max.message.bytes
CHUNK = KafkaConfig().version_chunk_bytes


@pytest.fixture
def topic(kafka):
    k = kafka.with_prefix(f"t.chunks-{uuid.uuid4().hex[:8]}.")
    name = k.model_updates_topic
    config = {**topics.MODEL_TOPIC_CONFIG, "max.message.bytes": str(LIMIT)}
    admin = topics.admin(k)
    for f in admin.create_topics([NewTopic(name, 1, 1, config=config)]).values():
        f.result()
    producer = Producer({"bootstrap.servers": k.bootstrap_servers, "compression.type": "none",
                         "message.max.bytes": 8 * LIMIT})
    reader = VersionReader(k, name)
    yield k, producer, reader
    reader.close()


def publish(producer: Producer, name: str, version: Version, chunks: set[int] | None = None) -> list[int]:
    """Write ``version`` as the job's sink does (only the ``chunks`` given); the records' offsets."""
    offsets = []
    for c in split(version.to_bytes(), version.number, version.created_ms, CHUNK):
        if chunks is not None and c.chunk not in chunks:
            continue
        headers = {topics.VERSION_HEADER: str(c.number).encode(), topics.CREATED_HEADER: str(c.created_ms).encode(),
                   CHUNK_HEADER: str(c.chunk).encode(), CHUNKS_HEADER: str(c.chunks).encode()}
        producer.produce(name, c.value, key=c.key.encode(), headers=headers,
                         on_delivery=lambda err, m: offsets.append(m.offset() if err is None else err))
    producer.flush(30)
    assert all(isinstance(o, int) for o in offsets), offsets
    return offsets


def big_version(number: int) -> Version:
    """A version of about 2.4 MB: random parameters do not compress."""
    torch.manual_seed(number)
    return Version(number, 1_700_000_000_000 + number, {"mf.q": torch.randn(600_000)}, {0: number})


def same(a: Version, b: Version) -> bool:
    return (a.number, a.created_ms, a.merged_upto) == (b.number, b.created_ms, b.merged_upto) and torch.equal(
        a.state["mf.q"], b.state["mf.q"])


def test_the_topic_refuses_a_whole_version_over_its_limit(topic):
    k, producer, _ = topic
    data = big_version(1).to_bytes()
    assert len(data) > 2 * LIMIT
    errors = []
    producer.produce(k.model_updates_topic, data, key=b"rtrec-model", on_delivery=lambda err, m: errors.append(err))
    producer.flush(30)
    assert errors[0] is not None and errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE


def test_a_version_over_the_limit_travels_in_chunks_and_reads_back_whole(topic):
    k, producer, reader = topic
    v = big_version(1)
    offsets = publish(producer, k.model_updates_topic, v)
    assert len(offsets) == 3
    # The job's notice names the last chunk; a scorer reads the version back from there.
    head = reader.head(0, offsets[-1])
    assert head.offset() == offsets[-1]
    assert same(Version.from_bytes(reader.data(head)), v)
    # From any chunk's offset (compaction may have removed the noticed one), the version's last.
    assert reader.head(0, offsets[0]).offset() == offsets[-1]
    assert reader.newest().offset() == offsets[-1]


def test_the_newest_version_and_the_check_for_a_newer_one(topic):
    k, producer, reader = topic
    first = publish(producer, k.model_updates_topic, big_version(1))
    assert reader.newer(0, first[-1]) is None  # the scorer holds the newest
    second = publish(producer, k.model_updates_topic, big_version(2))
    head = reader.newer(0, first[-1])
    assert head.offset() == second[-1] and topics.header_int(head, topics.VERSION_HEADER) == 2
    assert same(Version.from_bytes(reader.data(head)), big_version(2))
    # A notice of version 1 with newest=True takes version 2 (the scorer skips versions behind).
    assert reader.head(0, first[-1], newest=True).offset() == second[-1]


def test_whole_versions_reads_the_complete_ones_off_the_topic(topic):
    k, producer, _ = topic
    publish(producer, k.model_updates_topic, big_version(1))
    publish(producer, k.model_updates_topic, big_version(2), chunks={0, 2})  # incomplete
    publish(producer, k.model_updates_topic, big_version(3))
    found = whole_versions(topics.read_topic(k, k.model_updates_topic, idle_s=0.5))
    assert [topics.header_int(head, topics.VERSION_HEADER) for head, _ in found] == [1, 3]
    assert same(Version.from_bytes(found[1][1]), big_version(3))


def test_a_version_missing_a_chunk_is_not_loaded(topic):
    k, producer, reader = topic
    publish(producer, k.model_updates_topic, big_version(1))
    offsets = publish(producer, k.model_updates_topic, big_version(2), chunks={0, 2})  # chunk 1 lost
    head = reader.head(0, offsets[-1])
    assert topics.header_int(head, topics.VERSION_HEADER) == 2
    assert reader.data(head) is None


def test_a_version_still_being_written_is_not_taken_as_the_newest(topic):
    k, producer, reader = topic
    done = publish(producer, k.model_updates_topic, big_version(1))
    publish(producer, k.model_updates_topic, big_version(2), chunks={0, 1})  # its last chunk not out yet
    assert reader.newer(0, done[-1]) is None
    assert reader.head(0, done[-1], newest=True).offset() == done[-1]


def test_a_whole_version_record_of_an_older_release_still_reads(kafka):
    k = kafka.with_prefix(f"t.whole-{uuid.uuid4().hex[:8]}.")
    topics.ensure_topics(k, [k.model_updates_topic])
    v = Version(3, 1_700_000_000_003, {"mf.q": torch.zeros(4)}, {0: 3})
    producer = Producer({"bootstrap.servers": k.bootstrap_servers})
    producer.produce(k.model_updates_topic, v.to_bytes(), key=b"rtrec-model",
                     headers={topics.VERSION_HEADER: b"3"})
    producer.flush(10)
    reader = VersionReader(k, k.model_updates_topic)
    try:
        head = reader.newest()
        assert Version.from_bytes(reader.data(head)).number == 3
    finally:
        reader.close()


def test_the_topic_rtrec_creates_has_no_size_override(kafka):
    """The chunks fit the broker's default limit, so rtrec asks for no setting a managed cluster may refuse."""
    k = kafka.with_prefix(f"t.cfg-{uuid.uuid4().hex[:8]}.")
    topics.ensure_topics(k, [k.model_updates_topic])
    res = ConfigResource(ConfigResource.Type.TOPIC, k.model_updates_topic)
    admin = topics.admin(k)
    config = admin.describe_configs([res])[res].result()
    assert config["cleanup.policy"].value == "compact"
    assert config["max.message.bytes"].is_default


@pytest.mark.parametrize(("partitions", "config", "expect"), [
    (3, {"cleanup.policy": "compact"}, "has 3 partitions; model versions need exactly one"),
    (1, {"cleanup.policy": "delete"}, "--add-config cleanup.policy=compact"),
    (1, {"cleanup.policy": "compact", "max.message.bytes": "500000"},
     "set kafka.version_chunk_bytes to at most 434,464"),
])
def test_a_model_topic_made_beforehand_with_unsuitable_settings_is_named(kafka, partitions, config, expect):
    k = kafka.with_prefix(f"t.pre-{uuid.uuid4().hex[:8]}.")
    admin = topics.admin(k)
    for f in admin.create_topics([NewTopic(k.model_updates_topic, partitions, 1, config=config)]).values():
        f.result()
    with pytest.raises(topics.TopicError, match=expect):
        topics.prepare_job_topics(k, models=True)
    topics.prepare_job_topics(k, models=False)  # (features only: the job does not use the topic)


def test_topics_made_beforehand_that_suit_the_job_pass(kafka):
    k = kafka.with_prefix(f"t.pre-{uuid.uuid4().hex[:8]}.")
    admin = topics.admin(k)
    config = {"cleanup.policy": "compact", "max.message.bytes": str(LIMIT)}
    for f in admin.create_topics([NewTopic(k.model_updates_topic, 1, 1, config=config)]).values():
        f.result()
    created = topics.prepare_job_topics(k, models=True)
    assert k.model_updates_topic not in created and k.events_topic in created
