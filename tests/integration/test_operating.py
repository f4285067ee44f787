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


def test_dead_letters_lists_the_newest_with_reasons_and_sources(kafka, capsys):
    from confluent_kafka import Producer

    topic = _name("dead")
    topics.ensure_topics(kafka, [topic])
    p = Producer(topics.client_config(kafka))
    for i in range(5):
        p.produce(topic, key=f"u{i}".encode() if i != 3 else None, value=b'{"event_id": ' + str(i).encode(),
                  partition=i % 2, timestamp=1_700_000_000_000 + i * 1000,
                  headers=[(topics.REASON_HEADER, f"malformed JSON #{i}".encode()),
                           (topics.STAGE_HEADER, b"validate"), (topics.SOURCE_HEADER, f"events/0@{i}".encode())])
    assert p.flush(10) == 0
    try:
        argv = ["dead-letters", "--set", f"kafka.dead_letter_topic={topic}", "--bootstrap-servers",
                kafka.bootstrap_servers]
        assert main([*argv, "--limit", "3"]) == 0
        out = capsys.readouterr().out.splitlines()
        assert out[0].startswith(f"dead-letters: the newest 3 in '{topic}'")
        shown = [line for line in out if "  from events/0@" in line]
        assert [line.split("from ")[1].split()[0] for line in shown] == ["events/0@2", "events/0@3", "events/0@4"]
        assert "key u2" in shown[0] and "key" not in shown[1].split("(")[0]
        assert "    reason: malformed JSON #4" in out and '    value:  {"event_id": 4' in out
        assert out[-1] == "dead-letters: by stage: validate 3"

        assert main([*argv, "--limit", "50"]) == 0
        assert capsys.readouterr().out.startswith(f"dead-letters: the newest 5 in '{topic}'")
    finally:
        topics.delete_topics(kafka, [topic])
    assert main(["dead-letters", "--set", f"kafka.dead_letter_topic={topic}", "--bootstrap-servers",
                 kafka.bootstrap_servers]) == 2
    assert capsys.readouterr().err.startswith(f"rtrec: error: no topic '{topic}' at {kafka.bootstrap_servers}: "
                                              "the job creates it")


def test_dead_letters_looks_further_back_past_aborted_transactions(kafka, capsys):
    """The job writes dead letters in transactions: aborted ones and markers take offsets but show nothing."""
    from confluent_kafka import Producer

    topic = _name("dead-tx")
    topics.ensure_topics(kafka, [topic])
    p = Producer(topics.client_config(kafka, **{"transactional.id": f"{topic}-tx"}))
    p.init_transactions(10)
    headers = [(topics.REASON_HEADER, b"kept"), (topics.STAGE_HEADER, b"dedup"), (topics.SOURCE_HEADER, b"e/0@1")]
    try:
        p.begin_transaction()
        p.produce(topic, key=b"u", value=b"{}", partition=0, headers=headers)
        p.commit_transaction(10)
        for _ in range(20):  # 40 offsets after it, none readable
            p.begin_transaction()
            p.produce(topic, key=b"u", value=b"{}", partition=0, headers=[(topics.REASON_HEADER, b"aborted")])
            p.flush(10)
            p.abort_transaction(10)
        assert main(["dead-letters", "--limit", "1", "--set", f"kafka.dead_letter_topic={topic}",
                     "--bootstrap-servers", kafka.bootstrap_servers]) == 0
        out = capsys.readouterr().out
        assert "    reason: kept" in out and "aborted" not in out and "from e/0@1" in out
    finally:
        topics.delete_topics(kafka, [topic])
