"""Fault injection (configuration section ``faults``): fail one operator mid-stream.

    rtrec run --set faults.operator=user-stage --set faults.after_records=40000 [--set faults.times=3]

The first subtask of that operator raises after it has taken in
``after_records`` records since the job last (re)started and a checkpoint has
completed since then, ``times`` times in all. Waiting for a checkpoint makes
every failure a recovery from a checkpoint, not a restart from nothing (a job
under backpressure can take longer to checkpoint than to reach the count). A
marker file next to the checkpoints counts the failures, so the recovered job
fails again only while some are left.
"""

from __future__ import annotations

import glob
import os
import time
from pathlib import Path

from rtrec.config import RtrecConfig


class InjectedFault(RuntimeError):
    """Raised on purpose (faults.operator); the restart strategy recovers the job."""


class FaultInjector:
    def __init__(self, cfg: RtrecConfig, operator: str, subtask: int):
        f = cfg.faults
        self.after = f.after_records
        self.seen = 0
        self.checkpoints = Path(cfg.resolve_path(cfg.flink.checkpoint_dir))
        self.started = time.time()
        self.next_look = 0.0
        self.marker = self.checkpoints / f"fault-{operator}.fired"
        self.fired = fired_count(self.marker)
        self.times = f.times
        self.armed = f.operator == operator and subtask == 0 and self.fired < f.times

    def count(self, n: int) -> None:
        """Note ``n`` more records; raise once the threshold is crossed (``times`` per job, across restarts)."""
        if not self.armed:
            return
        self.seen += n
        if self.seen >= self.after and self._checkpointed_since_start():
            self.armed = False
            self.fired += 1
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            with open(self.marker, "a") as f:
                f.write(f"{self.seen}\n")
            raise InjectedFault(
                f"injected fault {self.fired} of {self.times} after {self.seen} records (faults.operator)")


    def _checkpointed_since_start(self) -> bool:
        now = time.time()
        if now < self.next_look:
            return False
        self.next_look = now + 0.5
        done = glob.glob(str(self.checkpoints / "*" / "chk-*" / "_metadata"))
        return any(os.path.getmtime(m) > self.started for m in done)


def fired_count(marker: Path) -> int:
    """How many injected faults the marker file records (one line each)."""
    return len(marker.read_text().splitlines()) if marker.exists() else 0
