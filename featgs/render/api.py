"""The one rendering entry point."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians
from featgs.render.output import RenderOutput

BACKENDS = ("auto", "torch")


def render(
    gaussians: Gaussians,
    camera: Camera,
    *,
    backend: str = "auto",
    sh_degree: Optional[int] = None,
    background: Optional[Sequence[float] | Tensor] = None,
    features: bool = True,
    top_k: int = 0,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> RenderOutput:
    """Render ``gaussians`` seen from ``camera``.

    Args:
        gaussians: the scene (any device; the output lives on the same device and dtype).
        camera: where to look from; its size sets H and W.
        backend: "auto" (the fastest available) or a name from :data:`BACKENDS`.
        sh_degree: SH degree to evaluate (default: all the Gaussians carry).
        background: [3] colour composited behind (default black).
        features: render per-Gaussian features too (ignored when d == 0).
        top_k: if > 0, also return each pixel's K largest blend weights and their ids.
        near_plane, far_plane: Gaussians whose centre depth lies outside are culled.
    """
    if backend not in BACKENDS:
        raise FeatgsError(f"--backend: unknown renderer {backend!r}; expected one of {', '.join(BACKENDS)}")
    if top_k < 0:
        raise FeatgsError(f"top_k must be >= 0, got {top_k}")
    if sh_degree is not None and not 0 <= sh_degree <= gaussians.sh_degree:
        raise FeatgsError(f"sh_degree must be in 0..{gaussians.sh_degree}, got {sh_degree}")
    from featgs.render.torch_backend import render_torch

    return render_torch(
        gaussians,
        camera,
        sh_degree=gaussians.sh_degree if sh_degree is None else sh_degree,
        background=None if background is None else torch.as_tensor(background),
        features=features,
        top_k=top_k,
        near_plane=near_plane,
        far_plane=far_plane,
    )
