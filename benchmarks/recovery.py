"""Recovery from a failure, and checkpoint duration and size, on the MovieLens-100K run.

    .venv/bin/python benchmarks/recovery.py [--rate 2000] [--fail-after 40000]

The job runs unbounded (exactly-once sinks, checkpoints every
flink.checkpoint_interval_ms) while MovieLens-100K is replayed into it at
``--rate``. The UserStage fails once after ``--fail-after`` records
(faults.operator). Measured from the moment it failed (the fault marker's
time):

the time until the first checkpoint of the recovered attempt completes: its
exactly-once outputs become readable under read_committed then.

Checkpoint duration and size come from Flink's checkpoint statistics of the
same run. Writes benchmarks/results/recovery.json.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml  # noqa: E402

from benchmarks.common import RESULTS, fresh, write_results  # noqa: E402
from rtrec.datasets import movielens_events  # noqa: E402
from rtrec.flink_rest import FlinkRest  # noqa: E402
from rtrec.replay import replay  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=2000)
    ap.add_argument("--fail-after", type=int, default=40_000)
    args = ap.parse_args()
    cfg = fresh("bench.recovery.", ["faults.operator=user-stage", f"faults.after_records={args.fail_after}"])
    cfg.flink.bounded = False
    cfg.flink.checkpoint_dir = str(RESULTS.parent / "out" / f"{cfg.flink.job_name}-checkpoints")
    marker = cfg.resolve_path(cfg.flink.checkpoint_dir) / "fault-user-stage.fired"
    config_file = RESULTS.parent / "out" / f"{cfg.flink.job_name}.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(yaml.safe_dump(cfg.to_dict()))
    events = movielens_events()
    proc = subprocess.Popen([sys.executable, "-m", "rtrec.cli", "run", "--config", str(config_file)],
                            cwd=RESULTS.parent.parent, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    rest = FlinkRest(f"http://127.0.0.1:{cfg.flink.rest_port}")
    try:
        job = rest.job_id(cfg.flink.job_name, 120)
        feeder = threading.Thread(target=replay, args=(events, cfg.kafka),
                                  kwargs={"rate": args.rate, "progress": False}, daemon=True)
        feeder.start()
        deadline = time.time() + 600
        while not marker.exists() and time.time() < deadline:
            time.sleep(0.05)
        if not marker.exists():
            raise RuntimeError("the injected fault did not fire")
        failed_at = marker.stat().st_mtime
        visible_at = None
        restored_id = None
        while time.time() < deadline and visible_at is None:
            try:
                latest = rest.checkpoints(job).get("latest") or {}
            except OSError:  # the REST server can drop a connection while the job restarts
                time.sleep(0.1)
                continue
            if restored_id is None and latest.get("restored"):
                restored_id = latest["restored"]["id"]
            done = latest.get("completed") or {}
            if restored_id is not None and done.get("id", 0) > restored_id and done["trigger_timestamp"] / 1000 > failed_at:
                visible_at = done["latest_ack_timestamp"] / 1000
            time.sleep(0.1)
        feeder.join(timeout=120)
        time.sleep(3 * cfg.flink.checkpoint_interval_ms / 1000)
        stats = rest.checkpoints(job)
        summary, counts = stats["summary"], stats["counts"]
        failed = Counter((c.get("failure_message") or "?").split("\n")[0][:160]
                         for c in stats.get("history", []) if c.get("status") == "FAILED")
    finally:
        proc.terminate()
        proc.wait(60)

    def secs(t):
        return round(t - failed_at, 2) if t else None

    result = {
        "command": "python benchmarks/recovery.py " + " ".join(sys.argv[1:]),
        "replay_rate_events_per_s": args.rate,
        "fail_after_records": args.fail_after,
        "checkpoint_interval_ms": cfg.flink.checkpoint_interval_ms,
        # The first checkpoint of the recovered attempt commits its first outputs: from then on
        # read_committed consumers see new output again.
        "seconds_from_failure_to_first_new_visible_output": round(visible_at - failed_at, 2) if visible_at else None,
        "checkpoints": {
            "counts": counts,
            # Why checkpoints failed, of those in Flink's history; one that could not start (triggered
            # while a task was still opening, e.g. during a restart) is counted but not listed.
            "failure_reasons": dict(failed),
            "end_to_end_duration_ms": {k: summary["end_to_end_duration"][k] for k in ("min", "p50", "p99", "max")},
            "checkpointed_size_bytes": {k: summary["checkpointed_size"][k] for k in ("min", "p50", "max")},
            "full_state_size_bytes": {k: summary["state_size"][k] for k in ("min", "p50", "max")},
        },
        "goal_seconds_to_first_new_output": 30,
    }
    print(result)
    print(write_results("recovery", result))


if __name__ == "__main__":
    main()
