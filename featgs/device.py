"""Where to compute: the one rule for "auto" (the GPU when there is one, else the CPU)."""

from __future__ import annotations

from typing import Optional, Union

import torch

from featgs.errors import FeatgsError


def resolve_device(device: Optional[Union[str, torch.device]] = "auto", *, option: str = "--device") -> torch.device:
    """``"auto"`` (or None): CUDA when available, else the CPU; anything else as torch names it
    ("cpu", "cuda", "cuda:1", a :class:`torch.device`).

    Args:
        option: the setting's name, for the error message.
    Raises:
        FeatgsError: "cuda" asked for on a machine without a CUDA GPU.
    """
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device) == "cuda" and not torch.cuda.is_available():
        raise FeatgsError(f"{option} cuda: no CUDA GPU here; use {option} cpu")
    return torch.device(device)
