"""The job running unbounded (as in production): state TTL and the freshness metric."""

from __future__ import annotations

import os
import re
import shlex
import signal
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
            "flink.savepoint_on_stop=true",  # (test_sigterm_...: SIGTERM stops it with a savepoint)
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
        s = sample(live.rest, live.job_id, vertices, models=False)
        return s if s.events_in >= 1 and s.lag is not None else None

    s = wait_for(seen, what="events_in and the source's pendingRecords")
    assert s.lag >= 0 and s.model_version is None  # (models are off in this job)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_sigterm_stops_the_job_its_jvm_and_removes_its_files(live):
    """Last in this module: it ends the module's job as systemd, Docker or Kubernetes would."""
    from rtrec.lifecycle import read_run_record

    record = read_run_record(live.cfg)
    assert record is not None and record.pid == live.proc.pid
    assert record.rest_url.endswith(f":{live.cfg.flink.rest_port}")
    started = _descendants(live.proc.pid)
    jvms = [p for p in started if "PythonGatewayServer" in _cmdline(p)]
    assert jvms, "no MiniCluster JVM among the children of rtrec run"
    tmp = re.search(r"-Djava\.io\.tmpdir=(\S+)", _cmdline(jvms[0])).group(1)
    assert os.path.isdir(tmp)

    t0 = time.monotonic()
    live.proc.send_signal(signal.SIGTERM)
    assert live.proc.wait(60) == 0
    took = time.monotonic() - t0
    left = [p for p in started if os.path.exists(f"/proc/{p}") and _cmdline(p)]
    assert not left, f"still running after SIGTERM: {[_cmdline(p)[:120] for p in left]}"
    assert not os.path.exists(tmp), "the JVM's temporary files were left behind"
    assert read_run_record(live.cfg) is None
    log = live.log.read_text()
    assert "SIGTERM received" in log and "Traceback" not in log, log[-2000:]
    savepoint = re.search(r"savepoint at (\S+)", log).group(1)
    assert os.path.isdir(savepoint.removeprefix("file:")), savepoint
    # The command to copy repeats the run's --config (alone, it resumed the default job name and topics).
    resume = shlex.split(re.search(r"rtrec: resume with: (.+)", log).group(1))
    assert resume == ["rtrec", "run", "--config", str(live.config), "--from-savepoint", savepoint], resume
    assert "run summary: events in " in log
    assert took < 30, f"stopping took {took:.1f} s"
