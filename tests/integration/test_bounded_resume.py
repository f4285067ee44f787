"""`rtrec run --bounded --resume`: a bounded run stopped part-way, resumed, finishes with every output once.

Flink's Kafka source restored from a checkpoint reads to the end that the run which took the state
had (its splits keep it) and then never finishes (FLINK-31006, open in flink-connector-kafka
5.0.0). jobs.rtrec_job.finish_bounded drains it there with a savepoint; rtrec says that events
which came after wait for the next run, and leaves the consumer group's offsets before them.
Before that, the resumed run hung until it was killed.

Real broker, real Flink: a bounded run (models on) whose one checkpoint the test takes while the
source still has events to read (the job holds it back), stopped by SIGTERM after that checkpoint,
then `rtrec run --bounded --resume`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

from benchmarks.common import shop_events
from rtrec import topics
from rtrec.core.local import LocalPipeline
from rtrec.replay import replay
from tests.conftest import ROOT, LiveJob, committed_values, fresh_config, run_job, wait_for, write_config


def test_a_bounded_run_stopped_part_way_and_resumed_finishes_with_every_output_once(kafka):
    cfg = fresh_config(kafka, "bresume", ["text.enabled=false"])
    events, _ = shop_events(users=1_000, n=40_000, clicks="item")
    first, later = events[:-30], events[-30:]
    replay(first, cfg.kafka, progress=False)
    end = topics.end_offsets(cfg.kafka, cfg.kafka.events_topic)
    interval = cfg.flink.checkpoint_interval_ms
    cfg.flink.checkpoint_interval_ms = 3_600_000  # (the test's checkpoint only)
    job = LiveJob(cfg, timeout_s=180, extra=["--bounded"])
    try:
        def reading() -> bool:
            source = next(v for v in job.rest.get(f"/jobs/{job.job_id}")["vertices"] if "rtrec_events" in v["name"])
            return sum(job.rest.metrics(job.job_id, source["id"], ".pendingRecords").values()) > 0

        job.wait_running()
        wait_for(reading, timeout_s=180, interval_s=0.1, what="the source to read")

        def checkpointed() -> bool:
            counts = job.rest.checkpoints(job.job_id).get("counts", {})
            if counts.get("completed", 0) >= 1:
                return True
            if counts.get("in_progress", 0) == 0:  # (asked again if one was declined)
                job.rest.post(f"/jobs/{job.job_id}/checkpoints", {})  # (its splits: not read to their end)
            return False

        wait_for(checkpointed, timeout_s=120, interval_s=0.5, what="the checkpoint")
    finally:
        job.stop()  # (SIGTERM: the job is cancelled, its checkpoint stays)
    cfg.flink.checkpoint_interval_ms = interval
    partial = topics.count_committed(cfg.kafka, cfg.kafka.predictions_topic)

    replay(later, cfg.kafka, progress=False)
    proc = run_job(cfg, timeout_s=300, extra=["--resume"])
    out = proc.stdout
    assert "rtrec: resuming from the checkpoint" in out, out[-2000:]
    # (Drained, "rtrec: drained savepoint ...", whenever the checkpoint holds splits not read to their end;
    # a source that finished its splits just before the checkpoint reached it finishes by itself. Without
    # the drain the first kind hung until run_job's timeout.)
    assert "rtrec: job finished" in out, out[-2000:]
    assert (f"the 30 events that came since stay for the next `rtrec run --config {write_config(cfg)} --bounded`"
            in proc.stderr), proc.stderr[-2000:]

    # Every labelled example of the first run's events once, across the two runs (the examples the per-batch
    # core makes of them, every impression's outcome included); none of the 30 later events yet.
    expected = set(LocalPipeline(cfg).run(first, 4_000).predictions.event_id)
    seen = Counter(p["event_id"] for p in committed_values(cfg, cfg.kafka.predictions_topic))
    assert max(seen.values()) == 1 and set(seen) == expected, (len(seen), len(expected), partial, out[-3000:])
    assert topics.committed_offsets(cfg.kafka, cfg.kafka.events_topic, cfg.kafka.consumer_group) == end

    # The next run with another model.dim warm-starts from the versions above, made with the old one: it
    # restart-looped on a shape error without a word. With Flink's own restart strategy (restarts without
    # end), as a user's run has it, `rtrec run` must end the job and say why in one line.
    made_with = cfg.model.dim
    cfg.model.dim += 6
    for key in [k for k in cfg.flink.options if k.startswith("restart-strategy")]:
        del cfg.flink.options[key]
    env = {**os.environ, "RTREC_BOOTSTRAP_SERVERS": cfg.kafka.bootstrap_servers}
    refused = subprocess.run([sys.executable, "-m", "rtrec.cli", "run", "--bounded", "--no-progress", "--config",
                              str(write_config(cfg))], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert refused.returncode == 2, (refused.stdout + refused.stderr)[-3000:]
    errors = [line for line in refused.stderr.splitlines() if line.startswith("rtrec: error: ")]
    assert len(errors) == 1, refused.stderr[-3000:]
    assert errors[0].startswith("rtrec: error: the warm start from model version ") and "warm_start=false" in errors[0]
    assert f"mf.q ({made_with},) where this job's is ({cfg.model.dim},)" in errors[0], errors[0]
