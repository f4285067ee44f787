"""The interpreter's cyclic garbage collector, told about what lives for good.

A TaskManager's interpreter (thread mode: one for all Python operators) holds
hundreds of thousands of objects that never die: the modules of torch, numba
and PyFlink, the text model, compiled functions. Each full collection walks
all of them again. :func:`settle` moves everything alive once an operator has
opened into the permanent generation (``gc.freeze``), so collections walk
only what the batches make. Objects still die by reference counting as ever.

    >>> settle()
    >>> gc.get_freeze_count() > 0
    True
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Collect once, then keep everything alive now out of later collections."""
    gc.collect()
    gc.freeze()
