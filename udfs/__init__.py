"""Flink operators: thin adapters from keyed state and timers to the logic in rtrec/ and models/.

Importing this package first imports PyTorch and Numba on a thread Python
created. In thread mode a TaskManager's task threads unpickle the operators
concurrently, and each operator module imports torch; loading torch's
extension from a task thread re-takes the GIL under another thread state
than the one pemja holds (see models/worker.py), and the thread waits on
itself forever. Seen on a standalone cluster: a TaskManager stuck in
INITIALIZING, one task thread inside torch's ``dlopen``, the other waiting
for the import lock.

In process mode PyFlink's Beam worker replaces ``builtins.print`` with a
method of its own (``beam_sdk_worker_main.CustomPrint``). Numba's typing
registers ``print`` by looking it up in the module it says it comes from,
and its import failed there ("module 'pyflink.fn_execution.beam.
beam_sdk_worker_main' has no attribute 'print'"), so every task failed to
open. Numba is imported with the real ``print`` in place.
"""

import builtins
import sys
import threading


def _import_native_modules() -> None:
    replaced = builtins.print
    builtins.print = getattr(getattr(replaced, "__self__", None), "_print", replaced)
    try:
        import numba  # noqa: F401
        import numpy  # noqa: F401
        import torch  # noqa: F401
    finally:
        builtins.print = replaced


if "torch" not in sys.modules or "numba" not in sys.modules:
    _loader = threading.Thread(target=_import_native_modules, name="rtrec-import")
    _loader.start()
    _loader.join()
