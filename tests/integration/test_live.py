"""The job running unbounded (as in production): state TTL and the freshness metric."""

from __future__ import annotations

import time

import orjson
import pytest

from rtrec import topics
from rtrec.replay import replay
from tests.conftest import LiveJob, fresh_config, wait_for

TTL_MS = 4_000


@pytest.fixture(scope="module")
def live(kafka):
    cfg = fresh_config(
        kafka,
        "live",
        [
            f"features.user_ttl_ms={TTL_MS}",
            "flink.checkpoint_interval_ms=1000",
            "flink.batch_interval_ms=100",
            "events.partition_idle_ms=2000",
            "model.enabled=false",
        ],
    )
    job = LiveJob(cfg)
    yield job
    job.stop()


def send(cfg, user: str, n: int) -> str:
    ts = int(time.time() * 1000)
    event_id = f"{user}-{n}-{ts}"
    value = orjson.dumps({"event_id": event_id, "user_id": user, "item_id": f"i{n}", "type": "click", "ts": ts})
    replay([(user, value, ts)], cfg.kafka, progress=False)
    return event_id


def user_snapshot(cfg, event_id: str):
    for m in topics.read_topic(cfg.kafka, cfg.kafka.features_topic, idle_s=0.2):
        f = orjson.loads(m.value())
        if f["entity"] == "user" and f["event_id"] == event_id:
            return f
    return None


def test_state_of_an_idle_user_expires_while_an_active_one_is_kept(live):
    cfg = live.cfg
    first = send(cfg, "idle", 1)
    wait_for(lambda: user_snapshot(cfg, first), what="the first snapshot")
    # Keep one user busy for longer than the TTL; leave the other alone.
    sent = 0
    start = time.time()
    while time.time() - start < TTL_MS / 1000 + 3:
        sent += 1
        send(cfg, "busy", sent)
        time.sleep(0.7)
    again = send(cfg, "idle", 2)
    last = send(cfg, "busy", sent + 1)
    idle = wait_for(lambda: user_snapshot(cfg, again), what="the idle user's second snapshot")
    busy = wait_for(lambda: user_snapshot(cfg, last), what="the busy user's last snapshot")
    assert idle["events"] == 1, "the idle user's state expired: this event starts from nothing"
    assert idle["features"]["last_items"] == ["i2"]
    assert busy["events"] == sent + 1, "the busy user's state was written within the TTL every time"
    assert busy["features"]["last_items"][:2] == [f"i{sent + 1}", f"i{sent}"]


def test_freshness_is_a_flink_metric(live):
    send(live.cfg, "fresh", 1)
    vertex = live.rest.vertex_id(live.job_id, "UserStage")

    def fresh():
        values = live.rest.metrics(live.job_id, vertex, "rtrec.freshness_ms")
        return values if values and max(values.values()) > 0 else None

    values = wait_for(fresh, what="a freshness_ms value")
    # Events are stamped when sent, so freshness is the job's own delay: well under a minute.
    assert 0 < max(values.values()) < 60_000


def test_progress_reads_events_in_and_lag_from_the_job(live):
    from rtrec.progress import find_vertices, sample

    send(live.cfg, "progress", 1)
    vertices = find_vertices(live.rest, live.job_id)
    assert {"user", "source"} <= set(vertices)

    def seen():
        s = sample(live.rest, live.job_id, vertices)
        return s if s.events_in >= 1 and s.lag is not None else None

    s = wait_for(seen, what="events_in and the source's pendingRecords")
    assert s.lag >= 0 and s.model_version is None  # (models are off in this job)
