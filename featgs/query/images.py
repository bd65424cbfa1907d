"""Scalar maps as colour: relevancy heat maps and depth, with the turbo colour map."""

from __future__ import annotations

import torch
from torch import Tensor

# Polynomial fit of Google's turbo colour map (A. Mikhailov, 2019): [t^0 .. t^5] per channel.
_TURBO = torch.tensor([
    [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
    [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
    [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
])


def turbo(t: Tensor) -> Tensor:
    """[...] values in 0..1 (clamped) -> [..., 3] RGB in 0..1."""
    t = t.float().clamp(0, 1)
    powers = torch.stack([t**k for k in range(6)], dim=-1)
    return (powers @ _TURBO.T.to(t.device)).clamp(0, 1)


def heat(values: Tensor, lo: float, hi: float) -> Tensor:
    """[H, W] -> [H, W, 3]: turbo of ``values`` mapped from ``lo``..``hi`` to 0..1."""
    return turbo((values - lo) / max(hi - lo, 1e-12))


def depth_to_rgb(depth: Tensor, alpha: Tensor) -> Tensor:
    """[H, W] depth, [H, W] alpha -> [H, W, 3]: near is warm, far is cool, empty pixels black.

    The range is the 2nd..98th percentile of the depth of pixels with alpha > 0.5, so one far
    floater does not flatten the picture.
    """
    solid = alpha > 0.5
    if not solid.any():
        return torch.zeros(*depth.shape, 3)
    d = depth[solid].float()
    if len(d) > 1 << 20:
        d = d[:: len(d) // (1 << 20) + 1]
    lo, hi = float(torch.quantile(d, 0.02)), float(torch.quantile(d, 0.98))
    img = turbo(1.0 - (depth.float() - lo) / max(hi - lo, 1e-12))
    return img * solid[..., None]
