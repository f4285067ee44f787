"""Stop with a savepoint, change the parallelism (1 -> 2), resume: state and model carry over.

Real broker, real Flink MiniClusters. The first job (parallelism 1, 16 key
shards set explicitly, so that it can be rescaled) consumes the first half of
a MovieLens replay and is stopped with `rtrec stop`. A resume with another
shard count (the automatic one at parallelism 1) is refused with the reason.
The second (parallelism 2, no warm start from the model topic, so the model
can only come from the savepoint) resumes with `rtrec run --resume`, which
finds the savepoint the first run left, and consumes the second half.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import urllib.parse

import pytest

from models.params import Version
from rtrec import topics
from rtrec.datasets import movielens_events
from rtrec.features.backfill import snapshots
from rtrec.features.definitions import USER_FEATURES
from rtrec.replay import replay
from tests.conftest import (
    ROOT,
    LiveJob,
    assert_exactly_once,
    committed_values,
    free_port,
    fresh_config,
    same_values,
    wait_for,
    write_config,
)

HALF = 6_000


@pytest.fixture(scope="module")
def resumed(kafka):
    events = movielens_events(limit=2 * HALF)
    cfg = fresh_config(kafka, "savepoint", ["flink.parallelism=1", "flink.shards=16"])
    replay(events[:HALF], cfg.kafka, progress=False)
    first = LiveJob(cfg)
    try:
        wait_for(lambda: topics.count_committed(cfg.kafka, cfg.kafka.predictions_topic) >= HALF,
                 timeout_s=180, interval_s=2, what="the first half's predictions")
        stop = subprocess.run(
            [sys.executable, "-m", "rtrec.cli", "stop", "--config", str(write_config(cfg)),
             "--rest", f"http://127.0.0.1:{cfg.flink.rest_port}"],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )
        assert stop.returncode == 0, stop.stdout + stop.stderr
        first.proc.wait(60)
    finally:
        first.stop()
    # The command to copy names the run's configuration (without it, it resumed the default job name and topics).
    hint = shlex.split(stop.stdout.split("resume with: ")[1])
    assert hint[:4] == ["rtrec", "run", "--config", str(write_config(cfg))] and hint[4] == "--from-savepoint", hint
    savepoint = hint[5]
    before = committed_values(cfg, cfg.kafka.predictions_topic)
    published_before = _version_numbers(cfg)

    replay(events[HALF:], cfg.kafka, progress=False)
    # The same savepoint with the automatic shard count (1 at parallelism 1): refused at its first batch.
    # With Flink's own restart strategy (restarts without end), as a user's run has it: `rtrec run`
    # must see that no restart can mend this, end the job and say why.
    cfg.flink.shards = 0
    restarts = {k: cfg.flink.options.pop(k) for k in list(cfg.flink.options) if k.startswith("restart-strategy")}
    cfg.flink.rest_port = free_port()
    name = cfg.flink.job_name
    cfg.flink.job_name = f"{name}-refused"  # (not a run of the job name the --resume below looks up)
    refused = subprocess.run(
        [sys.executable, "-m", "rtrec.cli", "run", "--config", str(write_config(cfg)), "--from-savepoint", savepoint],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "RTREC_BOOTSTRAP_SERVERS": cfg.kafka.bootstrap_servers, "PYTHONUNBUFFERED": "1"},
    )

    cfg.flink.options.update(restarts)
    cfg.flink.job_name = name
    cfg.flink.shards = 16
    cfg.flink.parallelism = 2
    cfg.flink.rest_port = free_port()
    cfg.model.warm_start = False
    second = LiveJob(cfg, extra=["--resume"])
    try:
        wait_for(lambda: topics.count_committed(cfg.kafka, cfg.kafka.predictions_topic) >= 2 * HALF,
                 timeout_s=180, interval_s=2, what="the second half's predictions")
    finally:
        second.stop()
    read = {t: committed_values(cfg, t) for t in (cfg.kafka.recommendations_topic, cfg.kafka.features_topic,
                                            cfg.kafka.predictions_topic)}
    return {"cfg": cfg, "events": events, "savepoint": savepoint, "before": before, "log": second.log,
            "refused": refused,
            "published_before": published_before, "published": _version_numbers(cfg), **read}


def _version_numbers(cfg) -> list[int]:
    return [Version.from_bytes(m.value()).number
            for m in topics.read_topic(cfg.kafka, cfg.kafka.model_updates_topic, idle_s=0.5)]


def test_the_second_job_restored_the_savepoint(resumed):
    assert "savepoints" in resumed["savepoint"]
    # (`rtrec stop` prints it as Flink names it, a file: URI; --resume as a path)
    path = urllib.parse.urlparse(resumed["savepoint"]).path
    assert f"rtrec: resuming from the savepoint {path} (taken " in resumed["log"].read_text()
    assert f"restoring {path}" in resumed["log"].read_text()


def test_a_resume_with_another_shard_count_is_refused_with_the_reason(resumed):
    """Its users' state lies under other key shards: running on would start them from nothing."""
    refused = resumed["refused"]
    out = refused.stdout + refused.stderr
    assert refused.returncode == 2, out[-3000:]
    assert "rtrec: error: this job's state was written with flink.shards=16 (16 key shards); this job runs " \
           "with 1 (flink.shards: 0, automatic)" in out, out[-3000:]


def test_every_event_is_processed_exactly_once_across_the_stop(resumed):
    cfg = resumed["cfg"]
    assert_exactly_once(resumed["events"], resumed[cfg.kafka.predictions_topic],
                        resumed[cfg.kafka.recommendations_topic])


def test_user_state_carries_over_to_the_new_parallelism(resumed):
    """User features after the resume count the first half's events too (state restored and re-sharded)."""
    cfg, events = resumed["cfg"], resumed["events"]
    online = {(f["id"], f["event_id"]): f["features"]
              for f in resumed[cfg.kafka.features_topic] if f["entity"] == "user"}
    second_half = {e.event_id for e in events[HALF:]}
    # (one snapshot per user and micro-batch: the ones the job wrote after second-half events)
    offline = {(row.id, row.event_id): row.features for row in snapshots(events, USER_FEATURES, as_of="after")}
    written = [k for k in online if k[1] in second_half]
    assert len(written) >= len({e.user_id for e in events[HALF:]})
    checked = sum(same_values(online[k], offline[k]) for k in written)
    assert checked >= 0.999 * len(written)
    trainers = {p["trainer"] for p in resumed[cfg.kafka.predictions_topic] if p["event_id"] in second_half}
    assert trainers == {0, 1}, "the resumed job should score with two UserStage subtasks"


def test_the_model_carries_over(resumed):
    """Without a warm start, only the savepoint can give the resumed job the model it had: the
    merger's numbering goes on from the savepoint's version, and the scorers never go back."""
    cfg = resumed["cfg"]
    before, published = resumed["published_before"], resumed["published"]
    assert before and max(before) >= 2
    new = published[len(before):]
    assert new and min(new) > max(before) - 1, f"after the resume the merger published {new[:5]}..."
    first_ids = {q["event_id"] for q in resumed["before"]}
    last_before = max(p["model_version"] for p in resumed["before"])
    after = [p["model_version"] for p in resumed[cfg.kafka.predictions_topic] if p["event_id"] not in first_ids]
    assert min(after) >= last_before, "the resumed scorers started from an older model than the savepoint's"
