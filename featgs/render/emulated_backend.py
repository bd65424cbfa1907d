"""Backend ``cuda-emulated``: our CUDA kernels (``cuda/``) executed on the CPU, for tests.

The very kernel sources of the ``cuda`` backend, compiled as C++ with the host compiler behind
``cuda/emulation.h`` (CUDA threads as fibers, real block barriers, warp collectives with warp
semantics, atomics as atomics), so that every machine runs them: CI checks their indexing,
synchronisation, top-K, gather and both backwards against the torch reference without a GPU.
It is slow (a few seconds for a small image, far slower than ``torch``) and not meant for
rendering anything real.

Projection, SH and tile binning are the torch reference's (``featgs.render.projection``,
``featgs.render.tiles``, tiles of 16x16 like the kernels'); the rasterisation, the top-K and the
feature gather, and their backwards, are the kernels'. Outputs are float32 (features keep
their float16/bfloat16 dtype), as with ``cuda``.

The extension compiles on first use (``torch.utils.cpp_extension.load``, C++20, about a minute
on two cores) into ``~/.cache/featgs/cuda/cuda-emulated-<hash of the sources>`` (root:
``$FEATGS_CUDA_CACHE``). Needs only a C++ compiler (``$CXX``, default ``c++``).
"""

from __future__ import annotations

import os
import shutil
from typing import Optional

import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians
from featgs.render.cuda_backend import TILE_SIZE, build_directory, choose_k, compose, cuda_sources, rasterize
from featgs.render.output import RenderOutput
from featgs.render.projection import project
from featgs.render.sh import sh_to_rgb
from featgs.render.tiles import bin_gaussians

_SOURCES = ("emulated.cpp", "bindings.cpp")
_FLAGS = ["-O2", "-std=c++20", "-pthread", "-Wno-unknown-pragmas"]
_extension = None


def compiler() -> Optional[str]:
    """The C++ compiler torch's extension builder will use, or None when there is none."""
    return shutil.which(os.environ.get("CXX", "c++"))


def load_emulated_extension():
    """Compile (first time) and import the CPU build of the kernels."""
    global _extension
    if _extension is not None:
        return _extension
    if compiler() is None:
        raise FeatgsError("--backend cuda-emulated compiles cuda/ with the host C++ compiler; none found "
                          f"({os.environ.get('CXX', 'c++')})")
    from torch.utils.cpp_extension import load

    src = cuda_sources()
    _extension = load(
        name="featgs_cuda_emulated",
        sources=[str(src / s) for s in _SOURCES],
        extra_cflags=_FLAGS,
        extra_ldflags=["-pthread"],
        build_directory=str(build_directory("cuda-emulated", _FLAGS)),
        verbose=False,
    )
    return _extension


def render_emulated(
    gaussians: Gaussians,
    camera: Camera,
    *,
    sh_degree: int,
    background: Optional[Tensor] = None,
    features: bool = True,
    top_k: int = 0,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> RenderOutput:
    """See :func:`featgs.render.render`; needs CPU tensors."""
    g = gaussians
    if g.device.type != "cpu":
        raise FeatgsError("--backend cuda-emulated runs the kernels on the CPU; move the Gaussians with .to('cpu')")
    with_features = features and g.feature_dim > 0
    K = choose_k(top_k, with_features, "cuda-emulated")
    ext = load_emulated_extension()
    W, H = camera.width, camera.height
    proj = project(g.means, g.quats, g.scales, g.opacities, camera, near_plane=near_plane, far_plane=far_plane)
    means2d = proj.means2d[None]  # [1, N, 2], the tensor whose grad densification reads
    if means2d.requires_grad:
        means2d.retain_grad()
    vis = torch.nonzero(proj.visible).squeeze(1)
    campos = camera.center.to(dtype=g.dtype, device=g.device)
    rgb = sh_to_rgb(sh_degree, g.sh0[vis], g.shN[vis], g.means[vis] - campos)
    colors = torch.cat([rgb, proj.depths[vis, None]], dim=-1).float().contiguous()
    plan = bin_gaussians(proj.means2d.detach()[vis], proj.extents[vis], proj.depths.detach()[vis], W, H, TILE_SIZE)
    feats_in = None
    if with_features:
        f = g.features[vis]
        feats_in = (f if f.dtype in (torch.float16, torch.bfloat16) else f.float()).contiguous()
    acc, T, top_w, top_id, feats = rasterize(
        ext, means2d[0, vis].float().contiguous(), proj.conics[vis].float().contiguous(), colors,
        proj.opacities[vis].float().contiguous(), feats_in, plan.tile_start.int().contiguous(),
        plan.pair_gauss.int().contiguous(), W, H, K)
    out = compose(acc, T, top_w, top_id, feats, W, H, background=background, decoder=g.decoder, top_k=top_k,
                  ids_of=vis)
    info = {"means2d": means2d, "radii": proj.radii[None], "depths": proj.depths[None], "width": W, "height": H,
            "n_cameras": 1, "gaussian_ids": None, "num_pairs": plan.num_pairs}
    return RenderOutput(**out, info=info)
