"""`flink run` on a standalone cluster started from the apache-flink wheel's bin/ (deploy/flink/bin/cluster.sh).

One JobManager and two TaskManagers (two slots each) on loopback. The job is
submitted with `flink run --pyModule jobs.rtrec_job --pyFiles ... --jarfile
<connector>`, consumes a MovieLens replay, and loses the TaskManager its tasks
run on (SIGKILL) halfway: it must recover by itself on the other one, and the
outputs (read_committed) must hold every event exactly once. Then the
script stops it with a savepoint and resumes it on the same cluster, whose
remaining TaskManager has already run the job's Python operators (pemja
used to fail there: NoSuchFieldException loadedLibraryNames).
"""

from __future__ import annotations

import os
import subprocess
import urllib.request
import uuid
from pathlib import Path

import pytest

from rtrec import topics
from rtrec.datasets import movielens_events
from rtrec.flink_rest import FlinkRest
from rtrec.replay import replay
from tests.conftest import (
    ROOT,
    assert_exactly_once,
    committed_values,
    free_port,
    fresh_config,
    wait_for,
    write_config,
)

N = 2_500  # events before and after the TaskManager is killed, and after the resume
CLUSTER = ROOT / "deploy" / "flink" / "bin" / "cluster.sh"


class Cluster:
    def __init__(self):
        self.dir = ROOT / "var" / "test-cluster" / uuid.uuid4().hex[:8]
        self.port = free_port()
        self.env = {**os.environ, "RTREC_CLUSTER_DIR": str(self.dir), "FLINK_REST_PORT": str(self.port)}
        self.rest = FlinkRest(f"http://localhost:{self.port}")

    def sh(self, *args: str, timeout: float = 180) -> str:
        proc = subprocess.run([str(CLUSTER), *args], env=self.env, cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, f"cluster.sh {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def logs(self) -> str:
        return "\n".join(p.read_text()[-3000:] for p in sorted((self.dir / "log").glob("*.log")))


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    c.sh("up", "2")
    yield c
    c.sh("down")


def _prometheus_pages():
    for port in range(9249, 9270):
        try:
            with urllib.request.urlopen(f"http://localhost:{port}/metrics", timeout=10) as r:
                yield r.read().decode()
        except OSError:
            continue


def test_flink_run_survives_a_killed_taskmanager_stops_with_a_savepoint_and_resumes(kafka, cluster):
    cfg = fresh_config(kafka, "cluster", ["flink.parallelism=2"])
    # The cluster's own restart strategy (exponential delay, no limit), not the tests' two quick attempts:
    # until the JobManager notices the killed TaskManager (heartbeat timeout, 15 s), deploying to it fails.
    for key in [k for k in cfg.flink.options if k.startswith("restart-strategy")]:
        del cfg.flink.options[key]
    events = movielens_events(limit=3 * N)
    replay(events[:N], cfg.kafka, progress=False)
    out = cluster.sh("submit", "--config", str(write_config(cfg)), timeout=240)
    assert "Job has been submitted with JobID" in out, out
    job_id = cluster.rest.job_id(cfg.flink.job_name, timeout_s=120)
    assert job_id in cluster.sh("list")

    wait_for(lambda: topics.count_committed(cfg.kafka, cfg.kafka.predictions_topic) >= N,
             timeout_s=240, interval_s=2, what=f"the first {N} predictions; logs:\n{cluster.logs()}")
    busy = [tm["id"] for tm in cluster.rest.get("/taskmanagers")["taskmanagers"] if tm["freeSlots"] < tm["slotsNumber"]]
    assert len(busy) == 2, "the job's two slots should be spread over the two TaskManagers"
    cluster.sh("kill-taskmanager", busy[0])
    replay(events[N:2 * N], cfg.kafka, progress=False)

    wait_for(lambda: topics.count_committed(cfg.kafka, cfg.kafka.predictions_topic) >= 2 * N,
             timeout_s=300, interval_s=2, what=f"predictions after the kill; logs:\n{cluster.logs()}")
    job = cluster.rest.get(f"/jobs/{job_id}")
    assert job["state"] == "RUNNING"
    history = cluster.rest.get(f"/jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
    assert history, "the job should have failed over when its TaskManager died"
    alive = {tm["id"] for tm in cluster.rest.get("/taskmanagers")["taskmanagers"]}
    assert busy[0] not in alive

    # The Prometheus reporter (cluster-conf.py) serves the job's own metrics from a TaskManager. The restarted
    # operators' Python counters reach Java only when a bundle finishes, and a loaded TaskManager can be slow to
    # answer: wait for them (a CI run once looked once, 2 s per port, and saw none).
    wait_for(lambda: any("rtrec_events_in" in text for text in _prometheus_pages()),
             timeout_s=90, interval_s=3, what="rtrec metrics from the Prometheus reporter on ports 9249-9269")

    stopped = cluster.sh("stop", job_id, timeout=240)
    savepoint = stopped.split("Savepoint completed. Path: ")[1].split()[0]
    assert Path(savepoint.removeprefix("file:")).is_dir()

    replay(events[2 * N:], cfg.kafka, progress=False)
    out = cluster.sh("submit", "-s", savepoint, "--config", str(write_config(cfg)), timeout=240)
    resumed = out.split("Job has been submitted with JobID ")[1].split()[0]
    wait_for(lambda: topics.count_committed(cfg.kafka, cfg.kafka.predictions_topic) >= 3 * N,
             timeout_s=300, interval_s=2, what=f"predictions after the resume; logs:\n{cluster.logs()}")
    assert cluster.rest.get(f"/jobs/{resumed}")["state"] == "RUNNING"
    failures = cluster.rest.get(f"/jobs/{resumed}/exceptions")["exceptionHistory"]["entries"]
    assert not failures, failures[0]["exceptionName"] + ": " + failures[0]["stacktrace"][:2000]
    assert_exactly_once(events, committed_values(cfg, cfg.kafka.predictions_topic),
                        committed_values(cfg, cfg.kafka.recommendations_topic))
    cluster.rest.cancel(resumed)
