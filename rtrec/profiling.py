"""Opt-in profiling of the Python operators: ``RTREC_PROFILE_DIR=/some/dir rtrec run ...``.

Each operator instance wraps its per-batch work in cProfile and writes
``<operator>-<subtask>.prof``; so does the torch thread (models/worker.py),
where the per-batch cores run, as ``torch-thread-<pid>.prof``. Read them with
``python -m pstats``. The files are rewritten every ``RTREC_PROFILE_EVERY_S``
seconds (default 10) while the job runs, and when the operator closes: a job
that is cancelled leaves a profile at most that old. Sampling profilers cannot
see the interpreter that PyFlink embeds in the JVM well, so this is how to get
the Python-side split of a job's time.
"""

from __future__ import annotations

import cProfile
import os
import time
from pathlib import Path


class OperatorProfile:
    """Accumulates a cProfile over ``with profile:`` blocks; a no-op unless RTREC_PROFILE_DIR is set.

    Enter and leave it on the thread to profile (cProfile follows one thread)."""

    def __init__(self, name: str, subtask: int):
        directory = os.environ.get("RTREC_PROFILE_DIR")
        self.path = Path(directory) / f"{name}-{subtask}.prof" if directory else None
        self.profile = cProfile.Profile() if self.path else None
        self.every_s = float(os.environ.get("RTREC_PROFILE_EVERY_S", "10"))
        self._next_dump = time.monotonic() + self.every_s

    def __bool__(self) -> bool:
        return self.profile is not None

    def __enter__(self):
        if self.profile:
            self.profile.enable()
        return self

    def __exit__(self, *exc):
        if self.profile:
            self.profile.disable()
            if time.monotonic() >= self._next_dump:
                self.dump()
        return False

    def dump(self) -> None:
        if self.profile and self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.profile.dump_stats(self.path)
            self._next_dump = time.monotonic() + self.every_s
