"""Initial Gaussians from a point cloud."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree
from torch import Tensor

from featgs.gaussians import Gaussians, num_sh_bases, rgb_to_sh0


def gaussians_from_points(
    points: Tensor, colors: Tensor, *, sh_degree: int, opacity: float, max_points: int, seed: int,
    scale_factor: float = 1.0,
) -> Gaussians:
    """Isotropic Gaussians on ``points`` [M, 3] with ``colors`` [M, 3] in 0..1.

    Each scale is ``scale_factor`` times the RMS distance to the 3 nearest neighbours (as 3DGS
    does with factor 1), so the initial splats just cover the surface the points sample. At
    most ``max_points`` are kept (a seeded random subset).
    """
    points = points.float()
    colors = colors.float()
    if points.shape[0] > max_points:
        keep = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        points, colors = points[keep], colors[keep]
    n = points.shape[0]
    k = min(4, n)
    dist, _ = cKDTree(points.numpy()).query(points.numpy(), k=k)
    d2 = (np.asarray(dist, dtype=np.float64).reshape(n, k)[:, 1:] ** 2).mean(axis=1) if k > 1 else np.ones(n)
    scale = scale_factor * torch.from_numpy(np.sqrt(np.maximum(d2, 1e-14))).float()
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    return Gaussians(
        means=points.clone(),
        scales=torch.log(scale)[:, None].repeat(1, 3),
        quats=quats,
        opacities=torch.logit(torch.full((n,), opacity)),
        sh0=rgb_to_sh0(colors.clamp(0, 1))[:, None, :].clone(),
        shN=torch.zeros(n, num_sh_bases(sh_degree) - 1, 3),
        features=torch.zeros(n, 0),
    )


def scene_extent(camera_centres: Tensor) -> float:
    """1.1 x the largest distance of a camera from their mean (3DGS's "cameras extent")."""
    c = camera_centres.double()
    return 1.1 * float((c - c.mean(0)).norm(dim=-1).max().clamp_min(1e-6))
