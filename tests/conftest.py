"""Shared fixtures. Integration tests need the broker that `make test` starts."""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import orjson
import pytest
import yaml

from rtrec import topics
from rtrec.config import KafkaConfig, RtrecConfig, load_config
from rtrec.flink_rest import FlinkRest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def kafka() -> KafkaConfig:
    """The test broker (`make test` starts one on 127.0.0.1:19092 and sets RTREC_BOOTSTRAP_SERVERS)."""
    cfg = load_config()
    try:
        topics.check_broker(cfg.kafka, timeout_s=10)
    except topics.BrokerUnavailable as e:
        pytest.fail(f"{e} (integration tests run under `make test`)", pytrace=False)
    return cfg.kafka


def fresh_config(kafka: KafkaConfig, name: str, overrides: list[str] | None = None) -> RtrecConfig:
    """A configuration with its own topics, job name and checkpoint folder, so tests never share state."""
    tag = f"{name}-{uuid.uuid4().hex[:8]}"
    cfg = load_config(overrides=overrides)
    cfg.kafka = kafka.with_prefix(f"t.{tag}.")
    cfg.flink.job_name = f"rtrec-test-{tag}"
    cfg.flink.checkpoint_dir = str(ROOT / "var" / "test-checkpoints" / tag)
    cfg.flink.rest_port = free_port()
    # A broken job should fail the test quickly rather than restart until it times out.
    cfg.flink.options.setdefault("restart-strategy.type", "fixed-delay")
    cfg.flink.options.setdefault("restart-strategy.fixed-delay.attempts", "2")
    cfg.flink.options.setdefault("restart-strategy.fixed-delay.delay", "1 s")
    topics.ensure_topics(cfg.kafka)
    return cfg


def write_config(cfg: RtrecConfig) -> Path:
    """Save ``cfg`` as YAML for a subprocess (next to its checkpoints)."""
    path = cfg.resolve_path(cfg.flink.checkpoint_dir).parent / f"{cfg.flink.job_name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def run_job(cfg: RtrecConfig, timeout_s: float = 300, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run the job to the end of its input (``rtrec run --bounded``) in a fresh process."""
    cmd = [sys.executable, "-m", "rtrec.cli", "run", "--bounded", "--config", str(write_config(cfg)), *(extra or [])]
    start = time.time()
    env = {**os.environ, "RTREC_BOOTSTRAP_SERVERS": cfg.kafka.bootstrap_servers}  # cfg's broker, not make test's
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
        pytest.fail(f"rtrec run failed ({proc.returncode}) after {time.time() - start:.0f} s:\n{tail}", pytrace=False)
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


KAFKA_BIN = ROOT / "deploy" / "kafka" / "bin"


class Broker:
    """A broker of a test's own, on ``port`` with data in ``data`` (deploy/kafka/bin/kafka-up.sh).

    ``sasl_port``: a SASL_SSL listener there too, with the SCRAM user, TLS files and ACLs of
    deploy/kafka/bin/secure.sh (password in ``data/secrets``, CA in ``data/tls``).
    """

    def __init__(self, port: int, data: Path, sasl_port: int | None = None):
        self.port, self.data, self.sasl_port = port, data, sasl_port
        self.env = {**os.environ, "KAFKA_PORT": str(port), "CONTROLLER_PORT": str(free_port()),
                    "KAFKA_DATA": str(data)}
        if sasl_port:
            self.env["KAFKA_SASL_PORT"] = str(sasl_port)

    def start(self) -> None:
        proc = subprocess.run([str(KAFKA_BIN / "kafka-up.sh")], env=self.env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr

    def pid(self) -> int:
        return int((self.data / "kafka.pid").read_text())

    def kill(self) -> None:
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)
        raise AssertionError(f"broker {pid} still alive after SIGKILL")

    def stop(self) -> None:
        subprocess.run([str(KAFKA_BIN / "kafka-down.sh")], env=self.env, capture_output=True, timeout=60)


class LiveJob:
    """``rtrec run`` (unbounded) in a subprocess, with its REST API; stop() ends it."""

    def __init__(self, cfg: RtrecConfig, timeout_s: float = 120, extra: list[str] | None = None):
        self.cfg = cfg
        self.log = cfg.resolve_path(cfg.flink.checkpoint_dir).parent / f"{cfg.flink.job_name}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.config = write_config(cfg)
        cmd = [sys.executable, "-m", "rtrec.cli", "run", "--config", str(self.config), *(extra or [])]
        # $RTREC_BOOTSTRAP_SERVERS (set by `make test`) overrides a config file's broker: pass cfg's on.
        env = {**os.environ, "RTREC_BOOTSTRAP_SERVERS": cfg.kafka.bootstrap_servers}
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.rest = FlinkRest(f"http://127.0.0.1:{cfg.flink.rest_port}")
        try:
            self.job_id = self.rest.job_id(cfg.flink.job_name, timeout_s)
        except TimeoutError:
            self.stop()
            pytest.fail(f"job did not start; log:\n{self.log.read_text()[-3000:]}", pytrace=False)

    def wait_running(self, timeout_s: float = 180) -> None:
        """Until every task runs: past INITIALIZING, so every operator has opened (the UserStage loads its
        text model and compiles its loops there)."""
        def running():
            job = self.rest.get(f"/jobs/{self.job_id}")
            return job["vertices"] and all(v["status"] == "RUNNING" for v in job["vertices"])

        wait_for(running, timeout_s=timeout_s, what=f"the tasks of {self.cfg.flink.job_name} to run")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def wait_for(predicate, timeout_s: float = 60, interval_s: float = 0.5, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after the timeout."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}", pytrace=False)


# The integration modules that take longest (a minute or more each, mostly waiting on JVMs, checkpoints
# and timeouts), longest first: `make test` runs the integration modules on two pytest-xdist workers,
# whole modules at a time (their fixtures are module-scoped), handed out in collection order, so the
# long ones go first and the short ones fill in at the end.
LONGEST_FIRST = (
    "test_movielens_run.py", "test_standalone_cluster.py", "test_savepoint.py", "test_broker_restart.py",
    "test_fuzz.py", "test_run_twice.py", "test_model_propagation.py", "test_kafka_security.py",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)

    def rank(item) -> int:
        name = Path(str(item.fspath)).name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: the order within a module, and of the other modules, stays


def same_values(a, b) -> bool:
    """Equal, with floats compared to 1e-6 relative (feature values computed in another order)."""
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    return a == b


def committed_values(cfg: RtrecConfig, topic: str) -> list:
    """Every committed record of ``topic`` (read_committed), its JSON value parsed."""
    return [orjson.loads(m.value()) for m in topics.read_topic(cfg.kafka, topic, idle_s=0.5)]


def assert_exactly_once(events: list, predictions: list[dict], recommendations: list[dict]) -> None:
    """Each rating event of ``events`` predicted exactly once; top-k lists (one per user and micro-batch,
    after the user's last event in it) never twice for one event, and always after each user's last event."""
    from collections import Counter

    ids = {e.event_id for e in events}
    preds = Counter(p["event_id"] for p in predictions)
    assert set(preds) == ids, f"predictions: {len(ids - set(preds))} events missing"
    assert set(preds.values()) == {1}, f"predictions: duplicates {[k for k, v in preds.items() if v > 1][:5]}"
    recs = Counter(r["event_id"] for r in recommendations)
    assert set(recs) <= ids and set(recs.values()) == {1}, f"recommendations: duplicates or strangers {recs.most_common(3)}"
    last = {e.user_id: e.event_id for e in events}
    assert set(last.values()) <= set(recs), "a user's last event got no top-k"
