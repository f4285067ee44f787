"""Pick the torch device once, at start-up."""

from __future__ import annotations

import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else CPU; anything else is taken as a torch device name.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"model.device={name!r} but torch sees no CUDA device; use 'auto' or 'cpu'")
    return device
