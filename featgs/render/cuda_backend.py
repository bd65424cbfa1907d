"""Backend ``cuda``: our feature rasteriser (``cuda/``), geometry once, features by gather.

Projection, SH and tile sorting reuse gsplat's CUDA functions; our kernels then rasterise the
geometry once per pixel into colour, depth, transmittance and the K largest blend weights
with their Gaussian ids, and gather features of any dimension from those, in one launch
sequence (no second traversal of the Gaussians): the cost of the feature map no longer grows
with rasterisation work. Features rendered this way sum over each pixel's top-K contributors
(K = 32), which equals the full blend wherever a pixel has at most K contributors.

The same kernel sources also run on the CPU through ``cuda/emulation.h`` (backend
``cuda-emulated``, :mod:`featgs.render.emulated_backend`); the autograd functions and the
composition of the outputs below serve both builds.

The extension compiles on first use (``torch.utils.cpp_extension.load``) into
``~/.cache/featgs/cuda/cuda-<hash of the sources>`` (root: ``$FEATGS_CUDA_CACHE``), only
when a CUDA device is present.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians
from featgs.render.output import RenderOutput

TILE_SIZE = 16
FEATURE_K = 32
K_CHOICES = (1, 4, 8, 16, 32)
_SOURCES = ("topk_raster.cu", "bindings.cpp")

# Tests set this: every output buffer is filled with NaN (ints: -2^31) before the kernels run,
# so an element a kernel fails to write shows. Off, the buffers are left uninitialised.
POISON = False


def cuda_sources() -> Path:
    """The repository's cuda/ folder (the kernels are not shipped inside the package)."""
    folder = Path(__file__).resolve().parents[2] / "cuda"
    if not all((folder / s).exists() for s in _SOURCES):
        raise FeatgsError(f"{folder}: CUDA sources not found; the cuda backend needs a source checkout of featgs")
    return folder


def build_directory(kind: str, flags: Sequence[str]) -> Path:
    """``$FEATGS_CUDA_CACHE/<kind>-<hash>`` (default root ``~/.cache/featgs/cuda``): the hash
    covers every file of cuda/, the flags and torch's version, so an edited kernel is rebuilt
    and switching back reuses the earlier build."""
    src = cuda_sources()
    h = hashlib.sha256()
    for f in sorted(src.iterdir()):
        if f.suffix in (".cu", ".h", ".cpp", ".cuh"):
            h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    h.update(" ".join(flags).encode() + torch.__version__.encode())
    root = Path(os.environ.get("FEATGS_CUDA_CACHE", Path.home() / ".cache" / "featgs" / "cuda"))
    build = root / f"{kind}-{h.hexdigest()[:16]}"
    build.mkdir(parents=True, exist_ok=True)
    return build


def load_extension():
    """Compile (first time) and import the extension; a clear error without a CUDA device."""
    if not torch.cuda.is_available():
        raise FeatgsError("--backend cuda needs a CUDA GPU and a CUDA build of torch; use --backend torch here")
    from torch.utils.cpp_extension import load

    src = cuda_sources()
    major, minor = torch.cuda.get_device_capability()
    cflags = ["-O3"]
    cuda_flags = ["-O3", f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}"]
    return load(
        name="featgs_cuda",
        sources=[str(src / s) for s in _SOURCES],
        extra_cflags=cflags,
        extra_cuda_cflags=cuda_flags,
        build_directory=str(build_directory("cuda", cflags + cuda_flags)),
        verbose=False,
    )


def _stream(ext) -> int:
    return 0 if ext.on_host() else torch.cuda.current_stream().cuda_stream


class _Render(torch.autograd.Function):
    """Rasterise + gather (one extension call each way); differentiable in means2d, conics,
    colors, opacities and features, through the outputs acc, T, top_w and the features."""

    @staticmethod
    def forward(ctx, means2d, conics, colors, opacities, features, ext, offsets, flatten_ids, W, H, K):
        outs = ext.forward(means2d, conics, colors, opacities, W, H, TILE_SIZE, offsets, flatten_ids, K, features,
                           POISON, _stream(ext))
        acc, T, last, top_w, top_id = outs[:5]
        feats = outs[5] if features is not None else None
        ctx.save_for_backward(means2d, conics, colors, opacities, features, offsets, flatten_ids, T, last, top_w,
                              top_id)
        ctx.ext, ctx.size = ext, (W, H)
        ctx.mark_non_differentiable(top_id)
        ctx.set_materialize_grads(False)
        return acc, T, top_w, top_id, feats

    @staticmethod
    def backward(ctx, g_acc, g_T, g_top_w, _g_id, g_feats):
        means2d, conics, colors, opacities, features, offsets, flatten_ids, T, last, top_w, top_id = ctx.saved_tensors
        W, H = ctx.size
        g_acc = colors.new_zeros(H * W, 4) if g_acc is None else g_acc.contiguous()
        g_T = torch.zeros_like(T) if g_T is None else g_T.contiguous()
        if g_top_w is not None:
            g_top_w = g_top_w.contiguous()
        if g_feats is not None:
            g_feats = g_feats.to(features.dtype).contiguous()
        grads = ctx.ext.backward(means2d, conics, colors, opacities, W, H, TILE_SIZE, offsets, flatten_ids, T, last,
                                 top_w, top_id, features, g_acc, g_T, g_top_w, g_feats, _stream(ctx.ext))
        g_features = grads[4].to(features.dtype) if len(grads) > 4 else None
        return grads[0], grads[1], grads[2], grads[3], g_features, None, None, None, None, None, None


def rasterize(ext, means2d: Tensor, conics: Tensor, colors: Tensor, opacities: Tensor, features: Optional[Tensor],
              offsets: Tensor, flatten_ids: Tensor, width: int, height: int,
              K: int) -> Tuple[Tensor, Tensor, Tensor, Tensor, Optional[Tensor]]:
    """Our kernels on projected Gaussians, differentiably.

    Args:
        ext: the extension (:func:`load_extension` or the emulated one).
        means2d [N, 2], conics [N, 3], colors [N, 4] (rgb + depth), opacities [N]: float32;
        features: [N, D] float32/float16/bfloat16, or None.
        offsets: [tiles] int32 first list entry of each 16x16 tile; flatten_ids: [pairs] int32
            Gaussian of each list entry, each tile's list front to back.
        K: top-K length, one of :data:`K_CHOICES`.
    Returns:
        acc [H*W, 4], T [H*W] final transmittance, top_w [H*W, K], top_id [H*W, K] int32 (-1:
        none), and features [H*W, D] gathered from the top-K (None without features).
    """
    if K not in K_CHOICES:
        raise FeatgsError(f"top-K length must be one of {K_CHOICES}, got {K}")
    return _Render.apply(means2d, conics, colors, opacities, features, ext, offsets, flatten_ids, width, height, K)


class _Gather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, top_w, top_id, features, ext):
        ctx.save_for_backward(top_w, top_id, features)
        ctx.ext = ext
        return ext.gather_forward(top_w, top_id, features, POISON, _stream(ext))

    @staticmethod
    def backward(ctx, g_out):
        top_w, top_id, features = ctx.saved_tensors
        gF, gw = ctx.ext.gather_backward(top_w, top_id, features, g_out.to(features.dtype).contiguous(), None, POISON,
                                         _stream(ctx.ext))
        return gw, None, gF.to(features.dtype), None


def gather(ext, top_w: Tensor, top_id: Tensor, features: Tensor) -> Tensor:
    """[P, D] = sum_k top_w[:, k] features[top_id[:, k]] (fp32 accumulation), differentiable in
    top_w and features: the feature gather alone, for weights already rasterised."""
    return _Gather.apply(top_w, top_id, features, ext)


def choose_k(top_k: int, with_features: bool, limit_name: str) -> int:
    if top_k > K_CHOICES[-1]:
        raise FeatgsError(f"--backend {limit_name} keeps at most {K_CHOICES[-1]} weights per pixel, asked for {top_k}")
    need = max(top_k, FEATURE_K if with_features else 1)
    return next(k for k in K_CHOICES if k >= need)


def compose(acc: Tensor, T: Tensor, top_w: Tensor, top_id: Tensor, feats: Optional[Tensor], W: int, H: int, *,
            background: Optional[Tensor], decoder, top_k: int, ids_of: Optional[Tensor] = None) -> dict:
    """The kernels' per-pixel buffers as :class:`RenderOutput` fields. ``ids_of`` maps the
    kernels' Gaussian ids to the caller's (None: the same)."""
    alpha = (1.0 - T).view(H, W, 1)
    image = acc[:, :3].view(H, W, 3)
    if background is not None:
        image = image + (1.0 - alpha) * background.to(device=image.device, dtype=image.dtype)
    depth = (acc[:, 3] / alpha.view(-1).clamp_min(1e-10)).view(H, W, 1)
    if feats is not None:
        feats = feats.view(H, W, -1)
        if decoder is not None:
            feats = decoder(feats.float())
    ids = weights = None
    if top_k:
        local = top_id[:, :top_k].long()
        if ids_of is not None and len(ids_of):
            local = torch.where(local >= 0, ids_of[local.clamp_min(0)], local)
        ids = local.view(H, W, top_k)
        weights = top_w[:, :top_k].view(H, W, top_k)
    return {"rgb": image, "alpha": alpha, "depth": depth, "features": feats, "topk_ids": ids, "topk_weights": weights}


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
    with_features = features and g.feature_dim > 0
    K = choose_k(top_k, with_features, "cuda")
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
    feats_in = None
    if with_features:
        feats_in = g.features if g.features.dtype in (torch.float16, torch.bfloat16) else g.features.float()
        feats_in = feats_in.contiguous()
    acc, T, top_w, top_id, feats = rasterize(ext, means2d[0].float().contiguous(), conics[0].float().contiguous(),
                                             colors.float(), opac.contiguous(), feats_in, offsets.int().contiguous(),
                                             flatten_ids.int().contiguous(), W, H, K)
    out = compose(acc, T, top_w, top_id, feats, W, H, background=background, decoder=g.decoder, top_k=top_k)
    info = {"means2d": means2d, "radii": radii, "depths": depths, "width": W, "height": H, "n_cameras": 1,
            "gaussian_ids": None}
    return RenderOutput(**out, info=info)
