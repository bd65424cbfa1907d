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

# Peak bytes the torch renderer holds per (tile, Gaussian) pair: its sorted lists (several
# int64 index tensors) and their log-alpha coefficients. Measured on a 2048x2048 view of 50k
# large Gaussians: 2.8 GB for 28M pairs.
BYTES_PER_PAIR = 100
_ESTIMATE_BLOCK = 1 << 16  # Gaussians projected at once by estimate_pairs: bounds its memory


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


@torch.no_grad()
def estimate_pairs(gaussians: Gaussians, camera: Camera, *, near_plane: float = 0.01,
                   far_plane: float = 1e10) -> int:
    """How many (tile, Gaussian) pairs rendering ``gaussians`` at ``camera`` lists: what the
    torch renderer's memory grows with (about :data:`BYTES_PER_PAIR` bytes each). Exact for
    the torch backend, an upper bound for gsplat's larger tiles.

    Costs one projection of the Gaussians, in blocks, so memory stays O(block), not O(pairs):
    callers can refuse a render before it allocates.
    """
    from featgs.render.projection import project
    from featgs.render.tiles import count_pairs
    from featgs.render.torch_backend import TILE_SIZE

    g = gaussians
    total = 0
    for start in range(0, len(g), _ESTIMATE_BLOCK):
        part = slice(start, start + _ESTIMATE_BLOCK)
        proj = project(g.means[part], g.quats[part], g.scales[part], g.opacities[part], camera,
                       near_plane=near_plane, far_plane=far_plane)
        vis = proj.visible
        total += count_pairs(proj.means2d[vis], proj.extents[vis], camera.width, camera.height, TILE_SIZE)
    return total
