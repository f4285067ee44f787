"""Run PyTorch work on a thread Python itself created.

Flink's thread mode runs Python operators on JVM task threads through pemja,
which gives each operator its own interpreter thread state. PyTorch releases
and re-takes the GIL inside many calls (pybind11's gil_scoped_release), and
re-takes it under the thread's *first* state; on a task thread that hosts a
second Python operator, or a two-input operator (the UserStage with its
broadcast input), that state is not the one pemja holds, and the thread waits
on itself forever. So every torch call of the operators goes through one
worker thread per process: a hand-off costs tens of microseconds, paid once
per micro-batch.

    >>> torch_call(sum, [1, 2, 3])
    6
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

from rtrec.profiling import OperatorProfile

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_profile: OperatorProfile | None = None  # with RTREC_PROFILE_DIR set (rtrec.profiling)


def _executor() -> ThreadPoolExecutor:
    global _pool
    if _pool is None:
        with _lock:
            if _pool is None:
                _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rtrec-torch")
    return _pool


def _profiled(fn, *args, **kwargs):
    global _profile
    if _profile is None:
        _profile = OperatorProfile("torch-thread", os.getpid())
    with _profile:
        return fn(*args, **kwargs)


def torch_call(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the torch thread; returns its result or raises its exception."""
    if threading.current_thread().name.startswith("rtrec-torch"):
        return fn(*args, **kwargs)
    if os.environ.get("RTREC_PROFILE_DIR"):
        return _executor().submit(_profiled, fn, *args, **kwargs).result()
    return _executor().submit(fn, *args, **kwargs).result()
