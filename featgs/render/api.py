"""The one rendering entry point."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians
from featgs.render.output import RenderOutput

BACKENDS = ("auto", "torch", "gsplat", "cuda", "cuda-emulated")

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
        backend: "torch" (reference, CPU or GPU), "gsplat" (CUDA), "cuda" (ours, CUDA) or
            "auto": torch for CPU tensors, gsplat for CUDA tensors (our kernels become the
            default once they have been verified on a GPU); "cuda-emulated" runs our CUDA
            kernels on the CPU (CPU tensors; for tests, not for speed).
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
    if backend == "auto":
        backend = "gsplat" if gaussians.device.type == "cuda" else "torch"
    if backend in ("gsplat", "cuda") and gaussians.device.type != "cuda":
        raise FeatgsError(f"--backend {backend} needs CUDA tensors (a GPU); use --backend torch on this machine")
    if backend == "torch":
        from featgs.render.torch_backend import render_torch as fn
    elif backend == "gsplat":
        from featgs.render.gsplat_backend import render_gsplat as fn
    elif backend == "cuda-emulated":
        from featgs.render.emulated_backend import render_emulated as fn
    else:
        from featgs.render.cuda_backend import render_cuda as fn
    return fn(
        gaussians,
        camera,
        sh_degree=gaussians.sh_degree if sh_degree is None else sh_degree,
        background=None if background is None else torch.as_tensor(background),
        features=features,
        top_k=top_k,
        near_plane=near_plane,
        far_plane=far_plane,
    )
