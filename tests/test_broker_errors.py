"""A missing broker: every command fails within seconds with one line, and librdkafka's log stays quiet."""

from __future__ import annotations

import socket
import time

import pytest
from confluent_kafka import Producer

from rtrec import topics
from rtrec.cli import _kafka_log_to_stderr, main
from rtrec.config import KafkaConfig


@pytest.fixture
def nowhere() -> str:
    """A loopback address where nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


def test_check_broker_gives_up_quickly_and_says_why(nowhere, capfd):
    start = time.monotonic()
    with pytest.raises(topics.BrokerUnavailable, match="Connection refused") as e:
        topics.check_broker(KafkaConfig(bootstrap_servers=nowhere), timeout_s=30)
    assert time.monotonic() - start < 5, "a refused connection must not wait out the timeout"
    assert nowhere in str(e.value) and "make kafka-up" in str(e.value)
    assert capfd.readouterr().err == "", "librdkafka's connection errors must not reach stderr"


@pytest.mark.parametrize("command", [
    ["replay", "--limit", "5"],
    ["run", "--bounded"],
    ["demo", "--limit", "5"],
    ["eval"],
    ["serve", "--no-http"],
    ["dead-letters"],
])
def test_every_command_fails_with_one_line(command, nowhere, capfd, tmp_path):
    if command[0] == "serve":
        command = [*command, "--store", str(tmp_path / "store")]
    if command[0] == "run":  # (a job name no run of this checkout has: no note about its earlier runs' state)
        command = [*command, "--set", "flink.job_name=test-broker-errors"]
    start = time.monotonic()
    assert main([*command, "--bootstrap-servers", nowhere]) == 2
    assert time.monotonic() - start < 8
    err = capfd.readouterr().err
    assert err.splitlines() == [err.strip()], err
    assert err.startswith(f"rtrec: error: no Kafka broker at {nowhere} (") and "Traceback" not in err


def test_librdkafka_messages_are_shown_once(nowhere, capfd):
    _kafka_log_to_stderr()  # what main() does first
    p = Producer(topics.client_config(KafkaConfig(bootstrap_servers=nowhere)))
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:
        p.poll(0.1)  # librdkafka retries the connection every few hundred ms
    lines = [line for line in capfd.readouterr().err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("rtrec: kafka: ") and "Connection refused" in lines[0], lines


def test_a_fresh_brokers_coordinator_load_is_not_shown(capfd):
    """The first idempotent producer on a new broker waits for its transaction log; librdkafka retries."""
    _kafka_log_to_stderr()
    topics.KAFKA_LOG.warning("GETPID [rdkafka#producer-4] [thrd:main]: Failed to acquire idempotence PID from broker "
                             "127.0.0.1:29092/1: Broker: Coordinator load in progress: retrying")
    topics.KAFKA_LOG.warning("FAIL [rdkafka#producer-4] [thrd:b:1/bootstrap]: b:1/bootstrap: Connection refused")
    assert capfd.readouterr().err.splitlines() == ["rtrec: kafka: FAIL [rdkafka#producer-4] [thrd:b:1/bootstrap]: b:1/bootstrap: "
                                                   "Connection refused"]


def test_messages_that_differ_only_in_the_attempts_timing_are_shown_once(capfd):
    _kafka_log_to_stderr()
    for ms in (2, 0, 17):
        topics.KAFKA_LOG.error("FAIL [rdkafka#producer-8] [thrd:b:1/bootstrap]: b:1/bootstrap: Connect to ipv4#b:1 "
                               f"failed: Connection refused (after {ms}ms in state CONNECT)")
    assert len(capfd.readouterr().err.splitlines()) == 1


def test_a_partition_whose_leader_is_being_elected_is_asked_again_and_other_errors_raise():
    """`rtrec serve` stopped on NOT_LEADER_FOR_PARTITION from a topic just created (make test, 2026-12-03)."""
    from confluent_kafka import KafkaError, KafkaException

    answers = iter([KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, None])

    def call():
        code = next(answers)
        if code is not None:
            raise KafkaException(KafkaError(code))
        return (0, 5)

    assert topics._retrying(call, topics._ELECTING, timeout_s=5, pause_s=0.01) == (0, 5)

    def denied():
        raise KafkaException(KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED))

    with pytest.raises(KafkaException):
        topics._retrying(denied, topics._ELECTING, timeout_s=5, pause_s=0.01)
