"""Operating with your own data on the real broker: replay into new topics (no Flink: each test takes seconds)."""

from __future__ import annotations

import time
import uuid

from rtrec import topics
from rtrec.cli import main
from rtrec.events import Event
from rtrec.sources import write_jsonl

EVENTS = [Event(f"op-{i}", f"u{i % 2}", "i1", "click", 1_000 + i) for i in range(3)]


def _name(tag: str) -> str:
    return f"t.operating-{tag}-{uuid.uuid4().hex[:8]}"


def test_replay_into_a_missing_topic_creates_it_or_says_so(kafka, tmp_path, capsys):
    path = write_jsonl(EVENTS, tmp_path / "ev.jsonl")
    topic = _name("replay")
    servers = ["--bootstrap-servers", kafka.bootstrap_servers]
    try:
        start = time.monotonic()
        assert main(["replay", str(path), "--topic", topic, "--set", "kafka.create_topics=false", *servers]) == 2
        assert time.monotonic() - start < 5
        err = capsys.readouterr().err
        assert err == (f"rtrec: error: no topic '{topic}' at {kafka.bootstrap_servers}, and kafka.create_topics "
                       "is false: create it, or check the kafka.*_topic settings (and --topic)\n")
        assert topic not in topics.admin(kafka).list_topics(timeout=5).topics

        assert main(["replay", str(path), "--topic", topic, "--set", "kafka.partitions=2", *servers]) == 0
        out = capsys.readouterr().out
        assert f"replay: created topic '{topic}' (2 partitions, replication factor 1)" in out
        assert f"replayed 3 events into '{topic}'" in out
        assert len(topics.admin(kafka).list_topics(topic, timeout=5).topics[topic].partitions) == 2
        assert sorted(m.value() for m in topics.read_topic(kafka, topic, idle_s=0.5)) == sorted(
            e.to_json() for e in EVENTS)
    finally:
        topics.delete_topics(kafka, [topic])


def test_a_topic_the_broker_will_not_create_is_one_line_naming_the_settings(kafka, tmp_path, capsys):
    path = write_jsonl(EVENTS, tmp_path / "ev.jsonl")
    topic = _name("replicas")
    try:
        assert main(["replay", str(path), "--topic", topic, "--set", "kafka.replication_factor=2",
                     "--bootstrap-servers", kafka.bootstrap_servers]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"rtrec: error: the broker at {kafka.bootstrap_servers} would not create topic "
                              f"'{topic}' (") and err.count("\n") == 1
        assert "kafka.replication_factor=2" in err
    finally:
        topics.delete_topics(kafka, [topic])
