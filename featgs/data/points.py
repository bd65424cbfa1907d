"""Initial points for a scene: a dataset's point cloud, or random points the cameras see."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from featgs.data.camera_rig import MIN_IN_FRONT, RigShape, rig_shape, seen_by
from featgs.data.scene import Scene
from featgs.errors import FeatgsError
from featgs.plyio import read_ply_vertices

NEAR, FAR = 0.05, 2.0  # random points' depth range, in units of the cameras' spread (or of their focus distance)
INIT_CHOICES = ("auto", "points", "random")
SEEN_BY = 0.9  # object-centric rigs: random points go where at least this share of cameras looks
OBJECT_SHARE_OPAQUE = 0.8  # ... and, when the images have a background, the rest into the frusta


@dataclass(frozen=True)
class InitialPoints:
    """Where training starts: points [M, 3] float32, colours [M, 3] float32 in 0..1, and how
    they were chosen (``kind``: "points" = the dataset's point cloud, "object" = random in
    the volume an object-centric rig looks at, "frustum" = random in the cameras' frusta;
    ``info``: the numbers behind the choice, for run.json)."""

    points: Tensor
    colors: Tensor
    kind: str
    info: dict



def read_point_cloud(path: Path) -> tuple[Tensor, Tensor]:
    """A PLY point cloud -> points [M, 3] float32 and colours [M, 3] float32 in 0..1.

    Needs x, y, z; red, green, blue are optional (uchar in 0..255 or float in 0..1; grey
    when absent).
    """
    props = read_ply_vertices(path)
    missing = [k for k in "xyz" if k not in props]
    if missing:
        raise FeatgsError(f"{path}: point cloud lacks vertex propert{'y' if len(missing) == 1 else 'ies'} {', '.join(missing)}; expected x, y, z [red, green, blue]")
    with np.errstate(over="ignore", invalid="ignore"):  # doubles beyond float32 become inf, refused below
        xyz = np.stack([props[k] for k in "xyz"], axis=1).astype(np.float32)
        if all(k in props for k in ("red", "green", "blue")):
            rgb = np.stack([props[k] for k in ("red", "green", "blue")], axis=1)
            rgb = rgb.astype(np.float32) / 255.0 if rgb.dtype.kind in "iu" else np.clip(rgb.astype(np.float32), 0.0, 1.0)
        else:
            rgb = np.full_like(xyz, 0.5)
    if not np.isfinite(xyz).all():
        raise FeatgsError(f"{path}: point cloud has non-finite coordinates; expected finite x, y, z")
    if not np.isfinite(rgb).all():  # float colours: NaN passes the clip
        raise FeatgsError(f"{path}: point cloud has non-finite colours; expected red, green, blue in 0..1 (float) or 0..255")
    return torch.from_numpy(xyz), torch.from_numpy(rgb)


def initial_points(scene: Scene, n: int, seed: int = 0, *, init: str = "auto", transparent: bool = False) -> InitialPoints:
    """The points a reconstruction starts from.

    Args:
        n: how many random points to make (unused for the dataset's own points).
        init: "points" (the dataset's point cloud; an error if it has none), "random", or
            "auto" (the point cloud when there is a non-empty one, else random).
        transparent: the images are RGBA with nothing behind the object (NeRF-synthetic):
            random points of an object-centric rig then all go into the object's volume.

    Random points follow what the cameras tell (:func:`featgs.data.camera_rig.rig_shape`):
    cameras that surround a common centre get points uniform in the volume that at least
    ``SEEN_BY`` of them see (3DGS's recipe for NeRF-synthetic is a box around the object);
    other rigs get points uniform in volume in random cameras' frusta, at depths up to twice
    their focus distance (or the cameras' spread). Colours are uniform random. Deterministic
    for ``seed``.
    """
    if init not in INIT_CHOICES:
        raise FeatgsError(f"--init: expected one of {', '.join(INIT_CHOICES)}, got {init!r}")
    has_points = scene.points is not None and len(scene.points) > 0
    if init == "points" and not has_points:
        raise FeatgsError(f"{scene.root}: --init points, but the dataset has no (or an empty) point cloud; use --init random")
    if init != "random" and has_points:
        colors = scene.point_colors if scene.point_colors is not None else torch.full_like(scene.points, 0.5)
        return InitialPoints(scene.points, colors, "points", {"num_points": len(scene.points)})
    if n < 1:
        raise FeatgsError(f"initial points: expected n >= 1, got {n}")
    g = torch.Generator().manual_seed(seed)
    cams = [v.camera for v in scene.train]
    shape = rig_shape(cams)
    info = {"spread": round(shape.spread, 4), "in_front": round(shape.in_front, 4),
            "miss": None if math.isinf(shape.miss) else round(shape.miss, 4)}
    if shape.object_centric:
        n_obj = n if transparent else int(round(OBJECT_SHARE_OPAQUE * n))
        pts, radius = _object_volume(cams, shape.centre, shape.distance, n_obj, g)
        if len(pts):
            rest = _frustum_points(cams, n - len(pts), shape, g) if len(pts) < n else pts[:0]
            points = torch.cat([pts, rest]).float()
            info.update(centre=[round(float(x), 5) for x in shape.centre], radius=round(radius, 5), num_points=len(points),
                        in_volume=len(pts))
            return InitialPoints(points, torch.rand(len(points), 3, generator=g), "object", info)
    points = _frustum_points(cams, n, shape, g).float()
    info.update(num_points=len(points))
    return InitialPoints(points, torch.rand(n, 3, generator=g), "frustum", info)


def _object_volume(cams, centre: Tensor, distance: float, n: int, g: torch.Generator) -> tuple[Tensor, float]:
    """Up to ``n`` points [M, 3] float64 uniform in the part of the ball around ``centre`` that
    ``SEEN_BY`` of the cameras see, and that part's radius. A first pass over the ball of
    radius ``distance`` finds how far the seen volume reaches; the second samples a ball just
    around it (the acceptance rate of the full ball would be a few percent)."""
    def ball(m: int, r: float) -> Tensor:
        d = torch.randn(m, 3, generator=g, dtype=torch.float64)
        d = d / d.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return centre + d * (r * torch.rand(m, 1, generator=g, dtype=torch.float64) ** (1.0 / 3.0))

    probe = ball(20_000, distance)
    ok = seen_by(probe, cams) >= SEEN_BY
    if not bool(ok.any()):
        return probe[:0], 0.0
    radius = float((probe[ok] - centre).norm(dim=1).max()) * 1.1
    kept: list[Tensor] = []
    total = 0
    for _ in range(20):
        cand = ball(max(2 * n, 1000), radius)
        cand = cand[seen_by(cand, cams) >= SEEN_BY]
        kept.append(cand)
        total += len(cand)
        if total >= n:
            break
    return torch.cat(kept)[:n], radius


def _frustum_points(cams, n: int, shape: RigShape, g: torch.Generator) -> Tensor:
    """``n`` points [n, 3] float64 uniform in volume in random cameras' frusta, between NEAR
    and FAR times the focus distance (cameras converging on a point) or their spread."""
    if shape.centre is not None and shape.in_front >= MIN_IN_FRONT and shape.distance:
        unit = shape.distance
    else:
        centres = torch.stack([c.center for c in cams])
        unit = float((centres - centres.mean(0)).norm(dim=1).max())
        unit = unit if unit > 1e-12 else 1.0
    which = torch.randint(len(cams), (n,), generator=g)
    u = torch.rand(n, 3, generator=g, dtype=torch.float64)
    near, far = NEAR * unit, FAR * unit
    depth = (near**3 + u[:, 2] * (far**3 - near**3)) ** (1.0 / 3.0)  # density grows as depth^2
    sizes = torch.tensor([[c.width, c.height] for c in cams], dtype=torch.float64)[which]
    K = torch.stack([c.K for c in cams])[which]
    c2w = torch.stack([c.camtoworld for c in cams])[which]
    px = u[:, :2] * sizes
    d_cam = torch.stack([(px[:, 0] - K[:, 0, 2]) / K[:, 0, 0], (px[:, 1] - K[:, 1, 2]) / K[:, 1, 1], torch.ones(n, dtype=torch.float64)], 1)
    return c2w[:, :3, 3] + depth[:, None] * torch.einsum("nij,nj->ni", c2w[:, :3, :3], d_cam)
