"""Fault injection (configuration section ``faults``): fail one operator once, mid-stream.

    rtrec run --set faults.operator=user-stage --set faults.after_records=40000

The first subtask of that operator raises after it has taken in
``after_records`` records, and leaves a marker file next to the checkpoints
so that the job, recovered from its last checkpoint, does not fail again.
"""

from __future__ import annotations

from pathlib import Path

from rtrec.config import RtrecConfig


class InjectedFault(RuntimeError):
    """Raised on purpose (faults.operator); the restart strategy recovers the job."""


class FaultInjector:
    def __init__(self, cfg: RtrecConfig, operator: str, subtask: int):
        f = cfg.faults
        self.armed = f.operator == operator and subtask == 0
        self.after = f.after_records
        self.seen = 0
        self.marker = Path(cfg.resolve_path(cfg.flink.checkpoint_dir)) / f"fault-{operator}.fired"
        if self.armed and self.marker.exists():
            self.armed = False  # it fired before this restart

    def count(self, n: int) -> None:
        """Note ``n`` more records; raise once the threshold is crossed (once per job, across restarts)."""
        if not self.armed:
            return
        self.seen += n
        if self.seen >= self.after:
            self.armed = False
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(f"{self.seen}\n")
            raise InjectedFault(f"injected fault after {self.seen} records (faults.operator)")
