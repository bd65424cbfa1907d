"""The pinhole camera every stage shares.

OpenCV convention: x right, y down, z forward (the camera looks along +z). Pixel (row i,
column j) has its centre at (j + 0.5, i + 0.5). Converters from other conventions live in the
data loaders only; nothing past them knows where a camera came from.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor

from featgs.errors import FeatgsError

# Largest image side, in pixels, a camera or dataset file may ask for: far beyond any real
# camera, so a larger one is a mistake (1e30, Infinity) that would only fail later, deep in
# an allocation or an integer overflow.
MAX_IMAGE_SIDE = 1 << 20
# Smallest focal length, in pixels, of a user's camera: a field of view of 179.9 degrees at one
# pixel wide. A smaller one makes the renderer's float32 view bounds (image size / focal) overflow.
MIN_FOCAL = 1e-3


@dataclass(frozen=True)
class Camera:
    """A posed pinhole camera.

    Attributes:
        camtoworld: [4, 4] camera-to-world rigid transform (OpenCV axes).
        K: [3, 3] intrinsics in pixels (fx, fy, cx, cy).
        width, height: image size in pixels.
        distortion: optional [4] OpenCV (k1, k2, p1, p2) of the *original* images; loaders
            undistort images, so renderers ignore it. Kept so that outputs can be mapped back.
        name: a label for messages and file names (e.g. the image stem).
    """

    camtoworld: Tensor
    K: Tensor
    width: int
    height: int
    distortion: Optional[Tensor] = None
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        c2w = torch.as_tensor(self.camtoworld, dtype=torch.float64)
        K = torch.as_tensor(self.K, dtype=torch.float64)
        if c2w.shape != (4, 4):
            raise FeatgsError(f"camera {self.name}: camtoworld must be 4x4, got {tuple(c2w.shape)}")
        if K.shape != (3, 3):
            raise FeatgsError(f"camera {self.name}: K must be 3x3, got {tuple(K.shape)}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise FeatgsError(f"camera {self.name}: width and height must be positive, got {self.width}x{self.height}")
        if not (torch.isfinite(c2w).all() and torch.isfinite(K).all()):
            raise FeatgsError(f"camera {self.name}: camtoworld and K must be finite")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise FeatgsError(f"camera {self.name}: focal lengths in K must be positive")
        object.__setattr__(self, "camtoworld", c2w)
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "width", int(self.width))
        object.__setattr__(self, "height", int(self.height))
        if self.distortion is not None:
            object.__setattr__(self, "distortion", torch.as_tensor(self.distortion, dtype=torch.float64))

    # -- derived quantities -------------------------------------------------------------
    @property
    def fx(self) -> float:
        return float(self.K[0, 0])

    @property
    def fy(self) -> float:
        return float(self.K[1, 1])

    @property
    def cx(self) -> float:
        return float(self.K[0, 2])

    @property
    def cy(self) -> float:
        return float(self.K[1, 2])

    @property
    def center(self) -> Tensor:
        """[3] camera centre in world coordinates."""
        return self.camtoworld[:3, 3]

    def viewmat(self) -> Tensor:
        """[4, 4] world-to-camera transform (the inverse of ``camtoworld``)."""
        R = self.camtoworld[:3, :3]
        t = self.camtoworld[:3, 3]
        out = torch.eye(4, dtype=torch.float64)
        out[:3, :3] = R.T
        out[:3, 3] = -R.T @ t
        return out

    def project(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Project world points to pixels.

        Args:
            points: [..., 3] world coordinates.
        Returns:
            uv: [..., 2] pixel coordinates (x right, y down; pixel centres at +0.5).
            z: [...] depth along the optical axis (camera-space z).
        """
        vm = self.viewmat().to(points)
        pc = points @ vm[:3, :3].T + vm[:3, 3]
        z = pc[..., 2]
        K = self.K.to(points)
        u = K[0, 0] * pc[..., 0] / z + K[0, 2]
        v = K[1, 1] * pc[..., 1] / z + K[1, 2]
        return torch.stack([u, v], dim=-1), z

    def fov_x(self) -> float:
        """Horizontal field of view in radians."""
        return 2.0 * math.atan(0.5 * self.width / self.fx)

    def scaled(self, factor: float) -> "Camera":
        """The same camera for images resized by ``factor`` (e.g. 0.5 halves the size)."""
        return self.resized(max(1, int(round(self.width * factor))), max(1, int(round(self.height * factor))))

    def resized(self, width: int, height: int) -> "Camera":
        """The same camera for images resampled to ``width`` x ``height`` pixels."""
        K = self.K.clone()
        K[0] *= width / self.width
        K[1] *= height / self.height
        return replace(self, K=K, width=int(width), height=int(height))

    def check_plausible(self, *, max_focal: float, source: str = "camera") -> None:
        """Raise a one-line :class:`FeatgsError` unless ``camtoworld`` is rigid (orthonormal
        rotation with det +1, last row [0, 0, 0, 1]), ``K`` is a pinhole matrix
        [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], focal lengths are MIN_FOCAL to ``max_focal`` pixels
        and the principal point lies within ten image sizes of the image (for cameras that
        come from users, e.g. over HTTP)."""
        c2w = self.camtoworld
        R = c2w[:3, :3]
        if not (torch.allclose(R.T @ R, torch.eye(3, dtype=R.dtype), atol=1e-3) and float(torch.det(R)) > 0
                and torch.allclose(c2w[3], torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype))):
            raise FeatgsError(f"{source}.camtoworld must be a rigid transform: a rotation (orthonormal, det +1) "
                              "and a translation, last row [0, 0, 0, 1]")
        K = self.K
        if float(K[0, 1]) != 0 or float(K[1, 0]) != 0 or K[2].tolist() != [0.0, 0.0, 1.0]:
            raise FeatgsError(f"{source}.K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]")
        if not (MIN_FOCAL <= self.fx <= max_focal and MIN_FOCAL <= self.fy <= max_focal
                and abs(self.cx) <= 10 * self.width and abs(self.cy) <= 10 * self.height):
            raise FeatgsError(f"{source}.K: focal lengths must be {MIN_FOCAL:g} to {max_focal:g} pixels and the "
                              "principal point within ten image sizes of the image")

    # -- CAM.json -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {
            "width": self.width,
            "height": self.height,
            "K": self.K.tolist(),
            "camtoworld": self.camtoworld.tolist(),
        }
        if self.distortion is not None:
            out["distortion"] = self.distortion.tolist()
        if self.name:
            out["name"] = self.name
        return out

    @classmethod
    def from_dict(cls, d: dict, *, source: str = "camera") -> "Camera":
        """Build from ``{"width", "height", "K", "camtoworld"}`` (OpenCV convention)."""
        if not isinstance(d, dict):
            raise FeatgsError(f"{source}: expected a JSON object with width, height, K, camtoworld")
        missing = [k for k in ("width", "height", "K", "camtoworld") if k not in d]
        if missing:
            raise FeatgsError(f"{source}: missing key(s) {', '.join(missing)}; expected width, height, K (3x3), camtoworld (4x4)")
        try:
            w = d["width"]
            h = d["height"]
            if isinstance(w, bool) or isinstance(h, bool) or int(w) != w or int(h) != h:
                raise ValueError
            K = torch.tensor(d["K"], dtype=torch.float64)
            c2w = torch.tensor(d["camtoworld"], dtype=torch.float64)
            dist = d.get("distortion")
            dist = None if dist is None else torch.tensor(dist, dtype=torch.float64)
        # OverflowError: int(Infinity), or a number beyond float range in a matrix;
        # RuntimeError: torch's word for some values it cannot make a tensor of.
        except (TypeError, ValueError, OverflowError, RuntimeError) as e:
            raise FeatgsError(f"{source}: width/height must be integers and K, camtoworld numeric matrices") from e
        if not (0 < int(w) <= MAX_IMAGE_SIDE and 0 < int(h) <= MAX_IMAGE_SIDE):
            raise FeatgsError(f"{source}: width and height must be 1 to {MAX_IMAGE_SIDE} pixels")
        if dist is not None and dist.shape != (4,):
            raise FeatgsError(f"{source}: distortion must be 4 numbers (OpenCV k1, k2, p1, p2), got shape {tuple(dist.shape)}")
        if dist is not None and not bool(torch.isfinite(dist).all()):
            raise FeatgsError(f"{source}: distortion must be finite")
        try:
            return cls(camtoworld=c2w, K=K, width=int(w), height=int(h), distortion=dist, name=str(d.get("name", "")))
        except FeatgsError as e:
            raise FeatgsError(f"{source}: {e}") from e

    @classmethod
    def load_json(cls, path: str | Path) -> "Camera":
        """The camera in a CAM.json file (:meth:`to_dict`'s keys); NaN and Infinity are refused."""
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"), parse_constant=_refuse_constant)
        except FileNotFoundError:
            raise FeatgsError(f"{path}: camera file not found") from None
        except _NotFinite as e:
            raise FeatgsError(f"{path}: {e}; expected a JSON camera file of finite numbers") from None
        except RecursionError:
            raise FeatgsError(f"{path}: JSON nested too deeply to read; expected a JSON camera file") from None
        # ValueError: JSONDecodeError, and the decoder's refusal of integers of thousands of digits.
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise FeatgsError(f"{path}: not a readable JSON camera file ({e.__class__.__name__})") from None
        return cls.from_dict(d, source=str(path))


class _NotFinite(ValueError):
    """NaN or Infinity in a camera file."""


def _refuse_constant(name: str) -> float:
    # Python's json reads NaN/Infinity, which are not JSON and make no camera.
    raise _NotFinite(f"{name} is not a finite number")


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> Tensor:
    """[4, 4] OpenCV camtoworld for a camera at ``eye`` looking at ``target``.

    ``up`` is the world direction that should appear upwards in the image.
    """
    eye = torch.as_tensor(eye, dtype=torch.float64)
    target = torch.as_tensor(target, dtype=torch.float64)
    up = torch.as_tensor(up, dtype=torch.float64)
    z = target - eye
    z = z / z.norm()
    x = torch.linalg.cross(z, up)
    if x.norm() < 1e-9:  # looking straight along `up`: pick any perpendicular
        x = torch.linalg.cross(z, torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64))
    x = x / x.norm()
    y = torch.linalg.cross(z, x)  # y points down in the image
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = x, y, z, eye
    return c2w


def intrinsics_from_fov(width: int, height: int, fov_x: float) -> Tensor:
    """[3, 3] K with square pixels, principal point at the image centre, horizontal FoV in radians."""
    f = 0.5 * width / math.tan(0.5 * fov_x)
    return torch.tensor([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
