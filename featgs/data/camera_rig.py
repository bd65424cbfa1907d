"""What a set of posed cameras tells about the scene: do they look at one common centre?

Object-centric captures (NeRF-synthetic, turntables, walking around an object) have optical
axes that pass close to one point from many directions; forward-facing and handheld walks
do not. Initialisation without SfM points uses this to place random points where the
scene must be (:mod:`featgs.data.points`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from featgs.camera import Camera

MIN_SPREAD = 0.1  # smallest eigenvalue of the mean axis projector: below, the axes are near parallel
MIN_IN_FRONT = 0.9  # share of cameras that must have the centre in front of them
MAX_MISS = 0.35  # largest median distance of the axes from the centre, relative to its depth


@dataclass(frozen=True)
class RigShape:
    """The result of :func:`rig_shape`.

    Attributes:
        object_centric: the cameras surround one centre they all look at.
        centre: [3] float64 the point closest to all optical axes (least squares), or None
            when the axes are near parallel.
        distance: median distance of the cameras from ``centre`` (scene units), or None.
        spread: smallest eigenvalue of the mean of (I - z zᵀ) over optical axes z, 0..0.5:
            0 for parallel axes, 0.5 for cameras all around a ring or sphere.
        in_front: share of cameras with ``centre`` in front of them (0 without a centre).
        miss: median distance of the axes from ``centre`` over its median depth (inf without).
    """

    object_centric: bool
    centre: Optional[Tensor]
    distance: Optional[float]
    spread: float
    in_front: float
    miss: float


def rig_shape(cameras: Sequence[Camera]) -> RigShape:
    """Classify a rig by its optical axes (camera centres and viewing directions)."""
    origins = torch.stack([c.center.double() for c in cameras])  # [C, 3]
    axes = torch.stack([c.camtoworld[:3, 2].double() for c in cameras])  # [C, 3], OpenCV z forward
    axes = axes / axes.norm(dim=1, keepdim=True)
    proj = torch.eye(3, dtype=torch.float64) - axes[:, :, None] * axes[:, None, :]  # [C, 3, 3]
    A = proj.mean(0)
    spread = float(torch.linalg.eigvalsh(A)[0])
    if len(cameras) < 3 or spread < MIN_SPREAD:
        return RigShape(False, None, None, spread, 0.0, float("inf"))
    b = (proj @ origins[:, :, None]).mean(0)[:, 0]
    centre = torch.linalg.solve(A, b)
    rel = centre - origins
    depth = (rel * axes).sum(1)
    miss = (proj @ rel[:, :, None])[:, :, 0].norm(dim=1)
    in_front = float((depth > 0).double().mean())
    miss_ratio = float(miss.median() / depth.median().clamp_min(1e-12)) if float(depth.median()) > 0 else float("inf")
    distance = float(rel.norm(dim=1).median())
    ok = in_front >= MIN_IN_FRONT and miss_ratio <= MAX_MISS
    return RigShape(ok, centre, distance, spread, in_front, miss_ratio)


def seen_by(points: Tensor, cameras: Sequence[Camera], *, near: float = 0.0) -> Tensor:
    """[M] float64 share of ``cameras`` that see each of ``points`` [M, 3] inside their
    image (in front of them, beyond ``near`` along the axis)."""
    p = points.double()
    count = torch.zeros(len(p), dtype=torch.float64)
    for cam in cameras:
        uv, z = cam.project(p)
        inside = (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
        count += ((z > near) & inside).double()
    return count / max(1, len(cameras))
