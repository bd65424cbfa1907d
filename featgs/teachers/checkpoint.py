"""Model weights from a file the user gives: read safely, identify by hash, load strictly.

A checkpoint is a safetensors file or a PyTorch state dict (``torch.save``), read with
``torch.load(weights_only=True)``, which unpickles tensors and plain containers only; a file
that needs anything else is refused rather than executed. Tensors are read onto the CPU
(``map_location``), so a checkpoint saved on a GPU loads on a CPU-only machine and vice versa.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path
from typing import Mapping

import torch
from torch import Tensor, nn

from featgs.errors import FeatgsError

# safetensors files start with an 8-byte header length, then JSON: "{".
_SAFETENSORS_MAGIC_AT = 8
# Containers that training scripts wrap a state dict in.
_WRAPPERS = ("state_dict", "model")


def checked_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path, or a one-line error if it is not an existing file."""
    path = Path(path)
    if not path.is_file():
        raise FeatgsError(f"{path}: no such {what} file")
    return path


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path, mmap: bool = False) -> dict[str, Tensor]:
    """Name -> tensor, on the CPU, from a safetensors file or a ``torch.save``d state dict.

    A dict wrapping the state dict under "state_dict" or "model" is unwrapped, and a
    "module." prefix (from DistributedDataParallel) is dropped. ``mmap`` maps the file
    instead of reading it (for a look at names and shapes), where its format allows.
    """
    with open(path, "rb") as f:
        head = f.read(_SAFETENSORS_MAGIC_AT + 1)
    if mmap and head[:2] == b"PK":  # torch.save's zip format: tensors stay on disk until touched
        try:
            return _unwrapped(torch.load(path, map_location="cpu", weights_only=True, mmap=True), path)
        except (pickle.UnpicklingError, RuntimeError, OSError, ValueError):
            pass  # read it the ordinary way below, which reports what is wrong
    if head[_SAFETENSORS_MAGIC_AT:] == b"{":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise FeatgsError(f"{path}: unreadable safetensors file ({e})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            reason = "it holds Python objects besides tensors" if "weights_only" in str(e) else "not a PyTorch file"
            raise FeatgsError(f"{path}: cannot read it as a state dict ({reason})") from None
        except (RuntimeError, EOFError, OSError, ValueError) as e:
            raise FeatgsError(f"{path}: not a PyTorch or safetensors checkpoint ({e.__class__.__name__})") from None
    return _unwrapped(state, path)


def _unwrapped(state: object, path: Path) -> dict[str, Tensor]:
    for key in _WRAPPERS:
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise FeatgsError(f"{path}: not a state dict (expected a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_strict(module: nn.Module, state: Mapping[str, Tensor], path: Path, what: str) -> None:
    """Load ``state`` into ``module``, all keys and shapes matching, or a one-line error naming
    the file and ``what`` it should have been (e.g. "SAM vit_b")."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches, e.g. {k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}")
        raise FeatgsError(f"{path}: not a {what} checkpoint ({'; '.join(parts)})")
    module.load_state_dict(state, strict=True)
