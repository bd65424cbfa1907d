"""Where featgs may write derived files (downscaled copies, teacher maps) for a dataset.

Beside the dataset when its folder can be written, else in the per-user cache,
``$XDG_CACHE_HOME/featgs/<kind>`` (default ``~/.cache/featgs/<kind>``): a shared, read-only
dataset must still train.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping, Optional


def user_cache_dir(kind: str, environ: Optional[Mapping[str, str]] = None) -> Path:
    """``$XDG_CACHE_HOME/featgs/<kind>``, else ``~/.cache/featgs/<kind>``."""
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "featgs" / kind


def dataset_key(root: Path) -> str:
    """16 hex digits naming a dataset folder by its resolved path (for its user-cache folder)."""
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]


def writable_folder(folder: Path) -> bool:
    """Whether files can be created in ``folder``, or in the nearest folder above it that
    exists (where ``folder`` would be made)."""
    for f in (folder, *folder.parents):
        if f.exists():
            return f.is_dir() and os.access(f, os.W_OK | os.X_OK)
    return False
