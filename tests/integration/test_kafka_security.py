"""rtrec's Kafka clients against a SASL_SSL listener with SCRAM-SHA-512, a private CA and ACLs.

The broker is this module's own (deploy/kafka/bin/kafka-up.sh with KAFKA_SASL_PORT: see
deploy/kafka/bin/secure.sh), with rtrec's topics created beforehand by the administrator and
ACLs that allow rtrec's principal its own topics, groups and transactional ids only. One bounded
run of the Flink job (exactly-once, learning on) goes over the listener; the client that
flink-sql-connector-kafka bundles is also checked alone, given exactly the properties rtrec
passes to its SQL tables (FlinkKafkaProbe.java), for what a log shows of them.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import orjson
import pytest

from rtrec import kafka_clients, topics
from rtrec.cli import main
from rtrec.config import RtrecConfig, load_config
from rtrec.events import POSITIVE_TYPES, RATING_TYPE, Event
from rtrec.serve import serve
from rtrec.sources import write_jsonl
from tests.conftest import ROOT, Broker, free_port, run_job, write_config

WRONG = "not-the-password-9d1c"


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(free_port(), tmp_path_factory.mktemp("secured-broker"), sasl_port=free_port())
    b.start()
    yield b
    b.stop()


@pytest.fixture
def cfg(broker, tmp_path) -> RtrecConfig:
    """rtrec over SASL_SSL as the user that secure.sh created; the password from its file."""
    c = load_config(overrides=[
        f"kafka.bootstrap_servers=127.0.0.1:{broker.sasl_port}",
        "kafka.security_protocol=SASL_SSL",
        "kafka.sasl_mechanism=SCRAM-SHA-512",
        "kafka.sasl_username=rtrec",
        f"kafka.sasl_password_file={broker.data / 'secrets' / 'rtrec.password'}",
        f"kafka.ssl_ca_file={broker.data / 'tls' / 'ca.pem'}",
    ])
    c.flink.checkpoint_dir = str(tmp_path / "checkpoints")  # write_config puts the YAML beside it
    c.serve.store_dir = str(tmp_path / "store")
    return c


def password(broker) -> str:
    return (broker.data / "secrets" / "rtrec.password").read_text()


def rtrec(cfg: RtrecConfig, *args: str, capsys) -> tuple[int, str, float]:
    """``rtrec ARGS`` in this process with ``cfg``; (exit status, stdout + stderr, seconds)."""
    start = time.monotonic()
    rc = main([*args, "--config", str(write_config(cfg)), "--bootstrap-servers", cfg.kafka.bootstrap_servers])
    out = capsys.readouterr()
    return rc, out.out + out.err, time.monotonic() - start


def test_replay_then_read_back_over_sasl_ssl(cfg, broker, tmp_path, capsys):
    events = write_jsonl([Event(f"e{n}", f"u{n % 7}", f"i{n % 5}", "click", 1_700_000_000_000 + n) for n in range(40)],
                         tmp_path / "events.jsonl")
    rc, out, _ = rtrec(cfg, "replay", str(events), capsys=capsys)
    assert rc == 0, out
    assert "replayed 40 events" in out
    records = list(topics.read_topic(cfg.kafka, cfg.kafka.events_topic, idle_s=0.5))
    assert len(records) >= 40 and all(m.key() for m in records)
    # serve's consumers over the same listener: the (empty) output topics are caught up at once
    stats = serve(cfg, http=False, until_caught_up=True, log=lambda _text: None)
    assert stats.error is None and stats.caught_up_once
    assert password(broker) not in out


def test_a_bounded_exactly_once_run_over_sasl_ssl_predicts_every_labelled_event_once(cfg, broker, tmp_path, capsys):
    """The Flink job itself (MiniCluster): its Kafka source, exactly-once sinks and model-updates reader and
    writer take rtrec's security settings; the password reaches the Java clients by reference only."""
    rc, out, _ = rtrec(cfg, "replay", "--limit", "1500", capsys=capsys)
    assert rc == 0, out
    cfg.model.warm_start = False
    cfg.text.enabled = False
    cfg.flink.delivery_guarantee = "exactly-once"
    proc = run_job(cfg, extra=["--no-progress"])
    logs = proc.stdout + proc.stderr
    assert password(broker) not in logs
    labelled = {e["event_id"] for e in (orjson.loads(m.value()) for m in topics.read_topic(
        cfg.kafka, cfg.kafka.events_topic, idle_s=0.5)) if e["type"] == RATING_TYPE or e["type"] in POSITIVE_TYPES}
    predicted = [orjson.loads(m.value())["event_id"] for m in topics.read_topic(
        cfg.kafka, cfg.kafka.predictions_topic, idle_s=0.5)]  # (read_committed)
    # (the module's other tests replay events of 2023 into the same topic: MovieLens' of 1997 behind
    # them on a partition may come after the watermark has passed them, and are dead letters then)
    dead = {orjson.loads(m.value())["event_id"] for m in topics.read_topic(
        cfg.kafka, cfg.kafka.dead_letter_topic, idle_s=0.3)}
    assert len(predicted) == len(set(predicted)) >= 1400  # each once
    assert set(predicted) == labelled - dead
    # and rtrec eval reads them back over the same listener
    rc, out, _ = rtrec(cfg, "eval", "--idle", "0.5", "--output-dir", str(tmp_path / "eval"), capsys=capsys)
    assert rc == 0 and "eval: report" in out, out
    assert (tmp_path / "eval" / "metrics.json").exists()


def test_wrong_password_fails_fast_naming_the_setting(cfg, broker, capsys, monkeypatch):
    monkeypatch.setenv("RTREC_TEST_KAFKA_PASSWORD", WRONG)
    cfg.kafka.sasl_password_file, cfg.kafka.sasl_password_env = "", "RTREC_TEST_KAFKA_PASSWORD"
    rc, out, seconds = rtrec(cfg, "replay", "--limit", "5", capsys=capsys)
    assert rc == 2 and seconds < 10, out
    assert "refused rtrec's login" in out and "$RTREC_TEST_KAFKA_PASSWORD (kafka.sasl_password_env)" in out
    assert WRONG not in out and password(broker) not in out


def test_an_untrusted_broker_certificate_is_named(cfg, capsys):
    cfg.kafka.ssl_ca_file = ""  # the system's CAs do not include the local one
    rc, out, seconds = rtrec(cfg, "eval", "--idle", "0.2", capsys=capsys)
    assert rc == 2 and seconds < 10 and "kafka.ssl_ca_file" in out


def test_a_topic_outside_the_acl_fails_fast(cfg, capsys):
    cfg.kafka.events_topic = "not-rtrecs"
    rc, out, seconds = rtrec(cfg, "replay", "--limit", "5", capsys=capsys)
    assert rc == 2 and seconds < 10
    assert "topic 'not-rtrecs' is not visible to rtrec" in out and "TOPIC_AUTHORIZATION_FAILED" in out
    assert "kafka.events_topic" in out


def test_a_job_told_to_write_where_the_acl_only_lets_it_read_fails_before_it_starts(cfg, capsys):
    """Without the check, the job's exactly-once sink fails on its first write and Flink restarts it over
    and over; the check asks the broker which operations rtrec's principal may do on each topic."""
    cfg.kafka.predictions_topic = "readonly"
    rc, out, seconds = rtrec(cfg, "run", "--bounded", "--no-progress", capsys=capsys)
    assert rc == 2 and seconds < 15, out
    assert "rtrec's principal may not WRITE topic 'readonly'" in out and "kafka.predictions_topic" in out
    assert "its ACLs allow DESCRIBE, READ" in out


def test_the_flink_jobs_kafka_client_works_with_rtrecs_properties(cfg, broker, tmp_path, monkeypatch):
    """The shaded Java client of the SQL connector, configured as the SQL tables are: password by reference."""
    java = shutil.which("java")
    jar = next((ROOT / "deploy" / "flink" / "lib").glob("flink-sql-connector-kafka-*.jar"), None)
    lib = ROOT / "deploy" / "kafka" / "lib"
    if not (java and jar):
        pytest.skip("needs java and deploy/flink/lib (make flink-jars)")
    monkeypatch.setenv("RTREC_TEST_KAFKA_PASSWORD", password(broker))
    cfg.kafka.sasl_password_file, cfg.kafka.sasl_password_env = "", "RTREC_TEST_KAFKA_PASSWORD"
    options = kafka_clients.flink_sql_options(cfg.kafka)
    props = tmp_path / "client.properties"
    lines = [f"bootstrap.servers={cfg.kafka.bootstrap_servers}"]
    lines += [f"{k.removeprefix('properties.')}={v}" for k, v in options.items()]
    props.write_text("\n".join(line.replace("\\", "\\\\") for line in lines) + "\n")
    classpath = ":".join(str(p) for p in [jar, *lib.glob("slf4j-api-*.jar"), *lib.glob("log4j-*.jar"), *lib.glob("lz4-java-*.jar")])
    proc = subprocess.run(
        [java, "-Dorg.apache.logging.log4j.level=INFO", "-cp", classpath,
         str(Path(__file__).with_name("FlinkKafkaProbe.java")), str(props), cfg.kafka.events_topic],
        capture_output=True, text=True, timeout=120,
    )
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "probe ok" in logs, logs[-3000:]
    assert "sasl.jaas.config = [hidden]" in logs  # the clients' INFO config dump ran, and hid it
    assert password(broker) not in logs + props.read_text()
