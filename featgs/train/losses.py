"""Image losses and metrics: L1, SSIM, PSNR."""

from __future__ import annotations

import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def _gaussian_window(size: int, sigma: float, channels: int, like: Tensor) -> Tensor:
    x = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(x * x) / (2 * sigma * sigma))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: Tensor, b: Tensor, *, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean structural similarity of two images [H, W, C] in [0, 1] (11x11 Gaussian window).

    Uses 'same' padding as 3DGS's training loss does, so it is defined for any size.
    """
    x = a.permute(2, 0, 1)[None]
    y = b.permute(2, 0, 1)[None]
    C = x.shape[1]
    w = _gaussian_window(window, sigma, C, x)
    pad = window // 2
    mu_x = F.conv2d(x, w, padding=pad, groups=C)
    mu_y = F.conv2d(y, w, padding=pad, groups=C)
    sxx = F.conv2d(x * x, w, padding=pad, groups=C) - mu_x * mu_x
    syy = F.conv2d(y * y, w, padding=pad, groups=C) - mu_y * mu_y
    sxy = F.conv2d(x * y, w, padding=pad, groups=C) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x * mu_x + mu_y * mu_y + c1) * (sxx + syy + c2))
    return s.mean()


def psnr(a: Tensor, b: Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]."""
    mse = float(((a.detach().clamp(0, 1) - b) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


def photometric_loss(render: Tensor, target: Tensor, ssim_weight: float = 0.2) -> Tensor:
    """3DGS's colour loss: (1 - lambda) L1 + lambda (1 - SSIM)."""
    return (1.0 - ssim_weight) * (render - target).abs().mean() + ssim_weight * (1.0 - ssim(render, target))


def feature_l1(features: Tensor, targets: Sequence[Tuple[Tuple[int, int], Tensor]]) -> Tensor:
    """Sum over teachers of the mean absolute error of their channels of the rendered features.

    Args:
        features: [H, W, C] rendered (decoded) features.
        targets: per teacher, (its channels [start, end), its map [D_t, h, w]); the rendered
            channels are resized (bilinear) to the map's resolution when they differ.
    """
    pred = features.permute(2, 0, 1)[None]
    total = features.new_zeros(())
    for (start, end), target in targets:
        block = pred[:, start:end]
        if block.shape[-2:] != target.shape[-2:]:
            block = F.interpolate(block, size=target.shape[-2:], mode="bilinear", align_corners=False)
        total = total + (block[0] - target.to(features.device).float()).abs().mean()
    return total
