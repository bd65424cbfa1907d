"""Between 2D and 3D: per-Gaussian values rendered to pixels, and 2D masks lifted to Gaussians."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.gaussians import Gaussians
from featgs.render import RenderOutput, render


@torch.no_grad()
def render_values(gaussians: Gaussians, camera: Camera, values: Tensor, *, top_k: int = 0) -> RenderOutput:
    """Render per-Gaussian ``values`` [N] or [N, C] in place of the features (no decoder).

    ``out.features`` [H, W, C] is the blend ``sum_i w_i v_i``; divide by ``out.alpha`` for the
    weighted mean. Rendering a scalar costs a fraction of rendering a D-dim feature.
    """
    v = values.to(device=gaussians.device, dtype=gaussians.dtype)
    v = v[:, None] if v.ndim == 1 else v
    return render(gaussians.with_features(v, None), camera, features=True, sh_degree=0, top_k=top_k)


def selection_share(gaussians: Gaussians, camera: Camera, keep: Tensor) -> Tensor:
    """[H, W] share of each pixel's blend weight that comes from the selected Gaussians (0..1)."""
    out = render_values(gaussians, camera, keep.float())
    return (out.features[..., 0] / out.alpha[..., 0].clamp_min(1e-10)).clamp(0, 1)


def weight_shares(topk_ids: Tensor, topk_weights: Tensor, mask: Tensor, num_gaussians: int) -> tuple[Tensor, Tensor]:
    """Each Gaussian's blend weight inside ``mask`` and in all, from a render's top-K.

    Args:
        topk_ids, topk_weights: [H, W, K] (ids -1 where a pixel has fewer contributors).
        mask: [H, W] bool.
    Returns:
        inside [N], total [N] (float32, CPU).
    """
    ids = topk_ids.reshape(-1, topk_ids.shape[-1]).cpu()
    w = topk_weights.reshape(ids.shape).float().cpu()
    valid = ids >= 0
    pix_in = mask.reshape(-1, 1).cpu().expand_as(ids)
    total = torch.zeros(num_gaussians).index_add_(0, ids[valid], w[valid])
    inside = torch.zeros(num_gaussians).index_add_(0, ids[valid & pix_in], w[valid & pix_in])
    return inside, total


def lift_mask(out: RenderOutput, mask: Tensor, num_gaussians: int, *, min_share: float = 0.5,
              min_weight: Optional[float] = None) -> Tensor:
    """[N] bool: Gaussians with at least ``min_share`` of their blend weight inside ``mask``.

    Args:
        out: a render with ``topk_ids``/``topk_weights``.
        mask: [H, W] bool at the render's size.
        min_weight: ignore Gaussians whose total weight in the view is below this (default:
            a tenth of a pixel: a Gaussian that barely shows says little about the mask).
    """
    inside, total = weight_shares(out.topk_ids, out.topk_weights, mask, num_gaussians)
    floor = 0.1 if min_weight is None else min_weight
    return (total >= floor) & (inside >= min_share * total.clamp_min(1e-12))
