"""``load_scene``: any supported dataset folder -> a :class:`Scene`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from featgs.data.blender import load_blender
from featgs.data.colmap import load_colmap
from featgs.data.downscale import downscale_scene
from featgs.data.normalize import normalize_scene
from featgs.data.scene import Scene
from featgs.data.transforms import load_transforms
from featgs.errors import FeatgsError

FORMATS = ("transforms", "blender", "colmap")
_LOADERS = {"transforms": load_transforms, "blender": load_blender, "colmap": load_colmap}


def detect_format(root: Path) -> str:
    """"transforms" (transforms.json), "blender" (transforms_train.json) or "colmap" (sparse/)."""
    if not root.exists():
        raise FeatgsError(f"{root}: dataset folder not found")
    if not root.is_dir():
        raise FeatgsError(f"{root}: is a file; expected a dataset folder")
    if (root / "transforms.json").is_file():
        return "transforms"
    if (root / "transforms_train.json").is_file():
        return "blender"
    if (root / "sparse").is_dir():
        return "colmap"
    raise FeatgsError(
        f"{root}: unknown dataset layout; expected transforms.json (nerfstudio/instant-ngp), "
        "transforms_train.json (NeRF-synthetic) or sparse/ with images/ (COLMAP)"
    )


def load_scene(
    path: str | Path,
    *,
    downscale: float = 1.0,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    normalize: bool = True,
) -> Scene:
    """Load the dataset in folder ``path`` (format autodetected, see :func:`detect_format`).

    Args:
        downscale: divide image sizes by this factor (>= 1), through an on-disk cache
            (:mod:`featgs.data.downscale`); intrinsics follow.
        background: [3] colour in 0..1 behind transparent pixels (RGBA images).
        normalize: move the scene so its cameras lie in the unit sphere around the origin
            (:mod:`featgs.data.normalize`); ``Scene.normalization`` records the transform.
    """
    root = Path(path)
    background = tuple(float(c) for c in background)
    if len(background) != 3 or not all(math.isfinite(c) and 0.0 <= c <= 1.0 for c in background):
        raise FeatgsError(f"background: expected three numbers in 0..1, got {background}")
    fmt = detect_format(root)
    scene = _LOADERS[fmt](root, background)
    if not scene.train:
        raise FeatgsError(f"{root}: no usable train views ({len(scene.test)} test views); expected at least one")
    scene = downscale_scene(scene, downscale)
    return normalize_scene(scene) if normalize else scene
