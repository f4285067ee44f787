"""Get a local MiniCluster's embedded interpreter ready while the job is still being built.

In thread mode the Python operators run in a CPython that pemja embeds in the
TaskManager's JVM, and each task imports what it needs when it opens: PyFlink's
operation modules (which import Apache Beam and pandas), PyTorch, Numba and the
models, about 4 s of CPU, then the compiled passes from Numba's cache and,
with text on, the text encoder and its catalogue. The tasks open one after
the other on one interpreter lock, so a job used to sit in INITIALIZING for
8-10 s before its first event.

For a local run (``rtrec run``, ``rtrec demo``, the tests) the TaskManager
lives in the JVM the client already started, so the client starts that
interpreter itself (pemja's MULTI_THREAD mode: the one interpreter every
operator shares) and runs :func:`prepare` in it on a background thread while
it builds the job (jobs.environment.warm_embedded_python). The tasks then find
everything imported and loaded. A job on a cluster is not affected: its
TaskManagers are other JVMs.
"""

from __future__ import annotations

import base64
import pickle


def prepare(settings: str) -> None:
    """Import and load, in this (embedded) interpreter, what the job's Python operators will need.

    ``settings``: base64 of a pickled ``(model_enabled, text_config or None)``."""
    import pyflink.fn_execution.datastream.embedded.operations  # noqa: F401
    import pyflink.fn_execution.embedded.operation_utils  # noqa: F401

    import udfs  # noqa: F401  (first: PyTorch and Numba imported on a thread Python made, see udfs/__init__)
    import udfs.item_stage  # noqa: F401
    import udfs.merger  # noqa: F401
    import udfs.user_stage  # noqa: F401

    model_enabled, text = pickle.loads(base64.b64decode(settings))  # noqa: S301 (the client's own bytes)
    if not model_enabled:
        return
    from models import sequential
    from models.worker import torch_call

    # As the UserStage's open() would, on the torch thread: these stay loaded for the whole process.
    torch_call(sequential.warm_up)
    if text is not None:
        from models.search import SearchRanker

        torch_call(SearchRanker.shared, text)


def settings_of(model_enabled: bool, text) -> str:
    """The argument :func:`prepare` takes."""
    return base64.b64encode(pickle.dumps((model_enabled, text))).decode()
