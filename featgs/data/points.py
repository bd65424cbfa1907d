"""Initial points for a scene: a dataset's point cloud, or random points the cameras see."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from featgs.data.scene import Scene
from featgs.errors import FeatgsError
from featgs.plyio import read_ply_vertices

NEAR, FAR = 0.05, 2.0  # random points' depth range, in units of the cameras' spread


def read_point_cloud(path: Path) -> tuple[Tensor, Tensor]:
    """A PLY point cloud -> points [M, 3] float32 and colours [M, 3] float32 in 0..1.

    Needs x, y, z; red, green, blue are optional (uchar in 0..255 or float in 0..1; grey
    when absent).
    """
    props = read_ply_vertices(path)
    missing = [k for k in "xyz" if k not in props]
    if missing:
        raise FeatgsError(f"{path}: point cloud lacks vertex propert{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)}; expected x, y, z [red, green, blue]")
    xyz = np.stack([props[k] for k in "xyz"], axis=1).astype(np.float32)
    if all(k in props for k in ("red", "green", "blue")):
        rgb = np.stack([props[k] for k in ("red", "green", "blue")], axis=1)
        rgb = rgb.astype(np.float32) / 255.0 if rgb.dtype.kind in "iu" else np.clip(rgb.astype(np.float32), 0.0, 1.0)
    else:
        rgb = np.full_like(xyz, 0.5)
    if not np.isfinite(xyz).all():
        raise FeatgsError(f"{path}: point cloud has non-finite coordinates; expected finite x, y, z")
    return torch.from_numpy(xyz), torch.from_numpy(rgb)


def initial_points(scene: Scene, n: int, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Points [M, 3] float32 and colours [M, 3] float32 in 0..1 to start a reconstruction from.

    The scene's own points when it has them (``n`` is then unused); otherwise ``n`` points
    uniform in the volume the train cameras see (a random camera, a random pixel, a depth
    between NEAR and FAR times the spread of the camera centres, uniform in volume), with
    uniform random colours. Deterministic for ``seed``.
    """
    if scene.points is not None:
        colors = scene.point_colors if scene.point_colors is not None else torch.full_like(scene.points, 0.5)
        return scene.points, colors
    if n < 1:
        raise FeatgsError(f"initial points: expected n >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    cams = [v.camera for v in scene.train]
    centres = torch.stack([c.center for c in cams])
    spread = float((centres - centres.mean(0)).norm(dim=1).max())
    spread = spread if spread > 1e-12 else 1.0
    which = torch.randint(len(cams), (n,), generator=g)
    u = torch.rand(n, 3, generator=g, dtype=torch.float64)
    near, far = NEAR * spread, FAR * spread
    depth = (near**3 + u[:, 2] * (far**3 - near**3)) ** (1.0 / 3.0)  # density grows as depth^2
    sizes = torch.tensor([[c.width, c.height] for c in cams], dtype=torch.float64)[which]
    K = torch.stack([c.K for c in cams])[which]
    c2w = torch.stack([c.camtoworld for c in cams])[which]
    px = u[:, :2] * sizes
    d_cam = torch.stack([(px[:, 0] - K[:, 0, 2]) / K[:, 0, 0], (px[:, 1] - K[:, 1, 2]) / K[:, 1, 1], torch.ones(n, dtype=torch.float64)], 1)
    points = c2w[:, :3, 3] + depth[:, None] * torch.einsum("nij,nj->ni", c2w[:, :3, :3], d_cam)
    return points.float(), torch.rand(n, 3, generator=g)
