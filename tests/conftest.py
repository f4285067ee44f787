"""Shared fixtures. Integration tests need the broker that `make test` starts."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from rtrec import topics
from rtrec.config import KafkaConfig, RtrecConfig, load_config

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
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s, env=os.environ.copy())
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
        pytest.fail(f"rtrec run failed ({proc.returncode}) after {time.time() - start:.0f} s:\n{tail}", pytrace=False)
    return proc


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "integration" in Path(str(item.fspath)).parts:
            item.add_marker(pytest.mark.integration)
