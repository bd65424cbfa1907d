"""Backend ``cuda``: our feature rasteriser (``cuda/``), geometry once, features by gather.

Projection, SH and tile sorting reuse gsplat's CUDA functions; our kernels then rasterise the
geometry once per pixel into colour, depth, transmittance and the K largest blend weights
with their Gaussian ids, and gather features of any dimension from those: the cost of the
feature map no longer grows with rasterisation work. Features rendered this way sum over each
pixel's top-K contributors (K = 32), which equals the
full blend wherever a pixel has at most K contributors.

The extension compiles on first use (``torch.utils.cpp_extension.load``) into
``~/.cache/featgs/cuda`` (or ``$FEATGS_CUDA_CACHE``), only when a CUDA device is present.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians
from featgs.render.output import RenderOutput

TILE_SIZE = 16
FEATURE_K = 32
_K_CHOICES = (1, 4, 8, 16, 32)
_SOURCES = ("topk_raster.cu", "bindings.cpp")


def cuda_sources() -> Path:
    """The repository's cuda/ folder (the kernels are not shipped inside the package)."""
    folder = Path(__file__).resolve().parents[2] / "cuda"
    if not all((folder / s).exists() for s in _SOURCES):
        raise FeatgsError(f"{folder}: CUDA sources not found; the cuda backend needs a source checkout of featgs")
    return folder


def load_extension():
    """Compile (first time) and import the extension; a clear error without a CUDA device."""
    if not torch.cuda.is_available():
        raise FeatgsError("--backend cuda needs a CUDA GPU and a CUDA build of torch; use --backend torch here")
    from torch.utils.cpp_extension import load

    src = cuda_sources()
    build = Path(os.environ.get("FEATGS_CUDA_CACHE", Path.home() / ".cache" / "featgs" / "cuda"))
    build.mkdir(parents=True, exist_ok=True)
    major, minor = torch.cuda.get_device_capability()
    return load(
        name="featgs_cuda",
        sources=[str(src / s) for s in _SOURCES],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3", f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"],
        build_directory=str(build),
        verbose=False,
    )


def _stream() -> int:
    return torch.cuda.current_stream().cuda_stream


class _Raster(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, ext, offsets, flatten_ids, W, H, K):
        acc, T, last, top_w, top_id = ext.raster_forward(means2d, conics, colors, opacities, W, H, TILE_SIZE,
                                                         offsets, flatten_ids, K, _stream())
        ctx.save_for_backward(means2d, conics, colors, opacities, offsets, flatten_ids, T, last, top_id)
        ctx.ext, ctx.size = ext, (W, H)
        ctx.mark_non_differentiable(top_id)
        return acc, T, top_w, top_id

    @staticmethod
    def backward(ctx, g_acc, g_T, g_top_w, _):
        means2d, conics, colors, opacities, offsets, flatten_ids, T, last, top_id = ctx.saved_tensors
        W, H = ctx.size
        z = lambda g, like: torch.zeros_like(like) if g is None else g.contiguous()  # noqa: E731
        gm, gc, gcol, go = ctx.ext.raster_backward(means2d, conics, colors, opacities, W, H, TILE_SIZE, offsets,
                                                   flatten_ids, T, last, top_id, z(g_acc, colors.new_empty(H * W, 4)),
                                                   z(g_T, T), z(g_top_w, top_id.float()), _stream())
        return gm, gc, gcol, go, None, None, None, None, None, None


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, top_w, top_id, features, ext):
        ctx.save_for_backward(top_w, top_id, features)
        ctx.ext = ext
        return ext.gather_forward(top_w, top_id, features, _stream())

    @staticmethod
    def backward(ctx, g_out):
        top_w, top_id, features = ctx.saved_tensors
        gF, gw = ctx.ext.gather_backward(top_w, top_id, features, g_out.contiguous().to(features.dtype), _stream())
        return gw, None, gF.to(features.dtype), None


def render_cuda(
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
    """See :func:`featgs.render.render`; needs CUDA tensors."""
    from gsplat import fully_fused_projection, isect_offset_encode, isect_tiles, spherical_harmonics

    ext = load_extension()
    g = gaussians
    if not g.means.is_cuda:
        raise FeatgsError("--backend cuda renders CUDA tensors; move the Gaussians with .to('cuda')")
    if top_k > _K_CHOICES[-1]:
        raise FeatgsError(f"--backend cuda keeps at most {_K_CHOICES[-1]} weights per pixel, asked for {top_k}")
    dev = g.device
    W, H = camera.width, camera.height
    viewmats = camera.viewmat().to(device=dev, dtype=torch.float32)[None]
    Ks = camera.K.to(device=dev, dtype=torch.float32)[None]
    opac = torch.sigmoid(g.opacities).float()
    radii, means2d, depths, conics, _ = fully_fused_projection(
        g.means, None, g.quats, torch.exp(g.scales), viewmats, Ks, W, H, eps2d=0.3, near_plane=near_plane,
        far_plane=far_plane, packed=False, opacities=opac)
    if means2d.requires_grad:
        means2d.retain_grad()
    campos = camera.center.to(device=dev, dtype=torch.float32)
    rgb = spherical_harmonics(sh_degree, g.means - campos, torch.cat([g.sh0, g.shN], 1), masks=(radii[0] > 0).all(-1))
    colors = torch.cat([torch.clamp_min(rgb + 0.5, 0.0), depths[0, :, None]], -1).contiguous()
    tiles_x, tiles_y = -(-W // TILE_SIZE), -(-H // TILE_SIZE)
    _, isect_ids, flatten_ids = isect_tiles(means2d, radii, depths, TILE_SIZE, tiles_x, tiles_y)
    offsets = isect_offset_encode(isect_ids, 1, tiles_x, tiles_y)
    with_features = features and g.feature_dim > 0
    need = max(top_k, FEATURE_K if with_features else 1)
    K = next(k for k in _K_CHOICES if k >= need)
    acc, T, top_w, top_id = _Raster.apply(means2d[0].contiguous(), conics[0].contiguous(), colors, opac.contiguous(),
                                          ext, offsets.contiguous(), flatten_ids.int().contiguous(), W, H, K)
    alpha = (1.0 - T).view(H, W, 1)
    image = acc[:, :3].view(H, W, 3)
    if background is not None:
        image = image + (1.0 - alpha) * background.to(device=dev, dtype=image.dtype)
    depth = (acc[:, 3] / alpha.view(-1).clamp_min(1e-10)).view(H, W, 1)
    feats = None
    if with_features:
        feats = _Gather.apply(top_w, top_id, g.features.contiguous(), ext).view(H, W, -1)
        if g.decoder is not None:
            feats = g.decoder(feats.float())
    ids = weights = None
    if top_k:
        ids = top_id[:, :top_k].long().view(H, W, top_k)
        weights = top_w[:, :top_k].view(H, W, top_k)
    info = {"means2d": means2d, "radii": radii, "depths": depths, "width": W, "height": H, "n_cameras": 1,
            "gaussian_ids": None}
    return RenderOutput(rgb=image, alpha=alpha, depth=depth, features=feats, topk_ids=ids, topk_weights=weights,
                        info=info)
