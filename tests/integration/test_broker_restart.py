"""A Kafka broker restart during the run: the job reconnects and nothing is lost.

Real Flink MiniCluster; the broker is this test's own single-node KRaft broker
(started with deploy/kafka/bin/kafka-up.sh on a free port and its own data
folder, so the session broker the other tests share is never touched). The job
consumes half a replay, the broker process is SIGKILLed, stays down for a few
seconds while the job keeps running, and is started again on the same data
folder; the second half is replayed afterwards. Every event's outputs must be
committed exactly once.
"""

from __future__ import annotations

import dataclasses
import time

import pytest

from rtrec import topics
from rtrec.datasets import movielens_events
from rtrec.replay import replay
from tests.conftest import (
    Broker,
    LiveJob,
    assert_exactly_once,
    committed_values,
    free_port,
    fresh_config,
    wait_for,
)

HALF = 3_000
DOWN_S = 8


@pytest.fixture(scope="module")
def restarted(kafka, tmp_path_factory):
    port = free_port()
    broker = Broker(port, tmp_path_factory.mktemp("broker"))
    broker.start()
    try:
        own = dataclasses.replace(kafka, bootstrap_servers=f"127.0.0.1:{port}")
        cfg = fresh_config(own, "broker-restart", ["flink.parallelism=1"])
        events = movielens_events(limit=2 * HALF)
        replay(events[:HALF], cfg.kafka, progress=False)
        job = LiveJob(cfg)
        try:
            wait_for(lambda: topics.count_committed(cfg.kafka, cfg.kafka.predictions_topic) >= HALF,
                     timeout_s=180, interval_s=2, what="the first half's predictions")
            before = topics.end_offsets(cfg.kafka, cfg.kafka.events_topic)
            failed_before = job.rest.checkpoints(job.job_id)["counts"]["failed"]
            broker.kill()
            time.sleep(DOWN_S)
            assert job.proc.poll() is None, "the job ended while the broker was down"
            broker.start()
            after_restart = topics.end_offsets(cfg.kafka, cfg.kafka.events_topic)
            replay(events[HALF:], cfg.kafka, progress=False)
            wait_for(lambda: topics.count_committed(cfg.kafka, cfg.kafka.predictions_topic) >= 2 * HALF,
                     timeout_s=240, interval_s=2, what="the second half's predictions after the restart")
            time.sleep(3)  # a late duplicate would show up after another checkpoint or two
            status = job.rest.get(f"/jobs/{job.job_id}")["state"]
            checkpoints = job.rest.checkpoints(job.job_id)
            counts = checkpoints["counts"]
            longest_ms = checkpoints["summary"]["end_to_end_duration"]["max"]
            history = job.rest.get(f"/jobs/{job.job_id}/exceptions").get("exceptionHistory", {}).get("entries", [])
        finally:
            job.stop()
        read = {t: committed_values(cfg, t) for t in (cfg.kafka.recommendations_topic,
                                                    cfg.kafka.predictions_topic)}
        return {"cfg": cfg, "events": events, "before": before, "after_restart": after_restart,
                "status": status, "log": job.log, "failed_before": failed_before, "counts": counts,
                "longest_ms": longest_ms,
                "restarts": len(history), **read}
    finally:
        broker.stop()


def test_the_restarted_broker_kept_what_it_had(restarted):
    assert sum(restarted["before"].values()) == HALF
    assert restarted["after_restart"] == restarted["before"]


def test_the_job_felt_the_outage_and_recovered_by_itself(restarted):
    """While the broker was down, a checkpoint (whose Kafka transactions need the broker) waited for
    it, failed, or the job restarted; afterwards the job runs and checkpoints complete again.
    (Observed: no restart; the checkpoint in flight at the kill waited ~23 s and completed.)"""
    counts = restarted["counts"]
    print(f"checkpoints {counts}, failed before the kill {restarted['failed_before']}, "
          f"longest {restarted['longest_ms']} ms, restarts {restarted['restarts']}")
    assert (counts["failed"] > restarted["failed_before"] or restarted["restarts"] > 0
            or restarted["longest_ms"] >= DOWN_S * 1000 / 2)
    assert restarted["status"] == "RUNNING", restarted["log"].read_text()[-3000:]


def test_every_event_is_processed_exactly_once_across_the_restart(restarted):
    cfg = restarted["cfg"]
    assert_exactly_once(restarted["events"], restarted[cfg.kafka.predictions_topic],
                        restarted[cfg.kafka.recommendations_topic])
