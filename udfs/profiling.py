"""Opt-in profiling of the Python operators: ``RTREC_PROFILE_DIR=/some/dir rtrec run ...``.

Each operator instance wraps its per-batch work in cProfile and writes
``<operator>-<subtask>.prof`` when it closes (read with ``python -m pstats``).
Sampling profilers cannot see the interpreter that PyFlink embeds in the JVM
well, so this is how to get the Python-side split of an operator's time.
"""

from __future__ import annotations

import cProfile
import os
from pathlib import Path


class OperatorProfile:
    """Accumulates a cProfile over ``with profile:`` blocks; a no-op unless RTREC_PROFILE_DIR is set."""

    def __init__(self, name: str, subtask: int):
        directory = os.environ.get("RTREC_PROFILE_DIR")
        self.path = Path(directory) / f"{name}-{subtask}.prof" if directory else None
        self.profile = cProfile.Profile() if self.path else None

    def __enter__(self):
        if self.profile:
            self.profile.enable()
        return self

    def __exit__(self, *exc):
        if self.profile:
            self.profile.disable()
        return False

    def dump(self) -> None:
        if self.profile and self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.profile.dump_stats(self.path)
