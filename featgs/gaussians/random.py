"""Random Gaussian scenes for tests and benchmarks (not for training initialisation)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from featgs.camera import Camera, intrinsics_from_fov, look_at
from featgs.gaussians.model import Gaussians, num_sh_bases


def random_gaussians(
    n: int,
    *,
    feature_dim: int = 0,
    sh_degree: int = 0,
    seed: int = 0,
    radius: float = 1.0,
    scale_range: tuple[float, float] = (0.01, 0.08),
    opacity_range: tuple[float, float] = (0.1, 0.9),
    dtype: torch.dtype = torch.float32,
    device: Optional[torch.device | str] = None,
) -> Gaussians:
    """``n`` anisotropic, randomly rotated Gaussians in a ball of ``radius`` around the origin.

    Linear scales are log-uniform in ``scale_range`` (world units); opacities uniform in
    ``opacity_range``; SH and features standard normal (SH scaled down so colours stay sane).
    """
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    direction = randn(n, 3)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    means = direction * radius * rand(n, 1) ** (1 / 3)
    lo, hi = math.log(scale_range[0]), math.log(scale_range[1])
    scales = lo + (hi - lo) * rand(n, 3)
    quats = randn(n, 4)
    op = opacity_range[0] + (opacity_range[1] - opacity_range[0]) * rand(n)
    g = Gaussians(
        means=means,
        scales=scales,
        quats=quats,
        opacities=torch.logit(op),
        sh0=randn(n, 1, 3) * 0.8,
        shN=randn(n, num_sh_bases(sh_degree) - 1, 3) * 0.2,
        features=randn(n, feature_dim),
    )
    return g.to(dtype=dtype, device=device)


def orbit_camera(
    width: int,
    height: int,
    *,
    azimuth_deg: float = 0.0,
    elevation_deg: float = 20.0,
    distance: float = 3.0,
    fov_deg: float = 50.0,
    target=(0.0, 0.0, 0.0),
) -> Camera:
    """A camera on a sphere around ``target`` (z up), looking at it."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    t = torch.tensor(target, dtype=torch.float64)
    eye = t + distance * torch.tensor([math.cos(el) * math.sin(az), -math.cos(el) * math.cos(az), math.sin(el)], dtype=torch.float64)
    return Camera(look_at(eye, t), intrinsics_from_fov(width, height, math.radians(fov_deg)), width, height)
