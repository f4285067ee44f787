"""Flink operators: thin adapters from keyed state and timers to the logic in rtrec/ and models/.

Importing this package first imports PyTorch and Numba on a thread Python
created. In thread mode a TaskManager's task threads unpickle the operators
concurrently, and each operator module imports torch; loading torch's
extension from a task thread re-takes the GIL under another thread state
than the one pemja holds (see models/worker.py), and the thread waits on
itself forever. Seen on a standalone cluster: a TaskManager stuck in
INITIALIZING, one task thread inside torch's ``dlopen``, the other waiting
for the import lock.
"""

import sys
import threading


def _import_native_modules() -> None:
    import numba  # noqa: F401
    import numpy  # noqa: F401
    import torch  # noqa: F401


if "torch" not in sys.modules:
    _loader = threading.Thread(target=_import_native_modules, name="rtrec-import")
    _loader.start()
    _loader.join()
