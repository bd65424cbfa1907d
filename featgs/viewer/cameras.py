"""The browser's camera as a featgs :class:`Camera`, and back.

viser reports each client's camera as a pose (``wxyz`` rotation and ``position`` of the
camera in the world, OpenCV axes: x right, y down, z forward, the same as ours), a vertical
field of view in radians and the canvas aspect (width / height). The viewer renders that view
at a chosen long side; the canvas stretches the picture back to its own size, so the
intrinsics map the canvas exactly (fx and fy may differ by a rounding of the size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
import torch

from featgs.camera import Camera
from featgs.rotations import quat_to_rotmat


def quat_to_matrix(wxyz: Sequence[float]) -> np.ndarray:
    """[3, 3] float64 rotation of a (not necessarily unit) wxyz quaternion (ValueError for a
    zero or non-finite one)."""
    q = torch.tensor([float(v) for v in wxyz], dtype=torch.float64)
    n = float(q.norm())
    if n == 0.0 or not math.isfinite(n):
        raise ValueError(f"not a rotation quaternion: {tuple(wxyz)}")
    return quat_to_rotmat(q).numpy()


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """wxyz unit quaternion (w >= 0) of a [3, 3] rotation matrix."""
    R = np.asarray(R, dtype=np.float64)
    m00, m11, m22 = R[0, 0], R[1, 1], R[2, 2]
    tr = m00 + m11 + m22
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [0.25 * s, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    elif m00 > m11 and m00 > m22:
        s = 2.0 * math.sqrt(1.0 + m00 - m11 - m22)
        q = [(R[2, 1] - R[1, 2]) / s, 0.25 * s, (R[0, 1] + R[1, 0]) / s, (R[0, 2] + R[2, 0]) / s]
    elif m11 > m22:
        s = 2.0 * math.sqrt(1.0 + m11 - m00 - m22)
        q = [(R[0, 2] - R[2, 0]) / s, (R[0, 1] + R[1, 0]) / s, 0.25 * s, (R[1, 2] + R[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m22 - m00 - m11)
        q = [(R[1, 0] - R[0, 1]) / s, (R[0, 2] + R[2, 0]) / s, (R[1, 2] + R[2, 1]) / s, 0.25 * s]
    q = np.array(q)
    q /= np.linalg.norm(q)
    return -q if q[0] < 0 else q


def render_size(aspect: float, long_side: int) -> Tuple[int, int]:
    """(width, height) with the canvas ``aspect`` and ``long_side`` pixels along the longer axis."""
    if not (aspect > 0 and math.isfinite(aspect)):
        aspect = 1.0
    long_side = max(1, int(long_side))
    if aspect >= 1.0:
        return long_side, max(1, int(round(long_side / aspect)))
    return max(1, int(round(long_side * aspect))), long_side


@dataclass(frozen=True)
class ViewPose:
    """A browser camera, as viser reports it (immutable, so a worker can keep it)."""

    wxyz: Tuple[float, float, float, float]
    position: Tuple[float, float, float]
    fov_y: float  # vertical field of view, radians
    aspect: float  # canvas width / height

    @classmethod
    def of(cls, wxyz, position, fov_y, aspect) -> "ViewPose":
        return cls(tuple(float(v) for v in wxyz), tuple(float(v) for v in position), float(fov_y), float(aspect))

    def camera(self, long_side: int) -> Camera:
        """The featgs camera that sees what the canvas shows, ``long_side`` pixels on its longer axis."""
        W, H = render_size(self.aspect, long_side)
        t = math.tan(0.5 * self.fov_y)
        fy = 0.5 * H / t
        fx = 0.5 * W / (t * self.aspect)
        K = torch.tensor([[fx, 0.0, W / 2.0], [0.0, fy, H / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        c2w = torch.eye(4, dtype=torch.float64)
        c2w[:3, :3] = torch.from_numpy(quat_to_matrix(self.wxyz))
        c2w[:3, 3] = torch.tensor(self.position, dtype=torch.float64)
        return Camera(camtoworld=c2w, K=K, width=W, height=H, name="browser")


def pose_of(camera: Camera) -> ViewPose:
    """The browser pose that looks through ``camera`` (vertical FoV from fy and the height)."""
    c2w = camera.camtoworld.numpy()
    fov_y = 2.0 * math.atan(0.5 * camera.height / camera.fy)
    return ViewPose.of(matrix_to_quat(c2w[:3, :3]), c2w[:3, 3], fov_y, camera.width / camera.height)


def up_direction(cameras: Sequence[Camera]) -> np.ndarray:
    """The world direction the cameras' image "up" (-y) points to on average (unit; +z if unclear)."""
    if not cameras:
        return np.array([0.0, 0.0, 1.0])
    up = -np.mean([c.camtoworld[:3, 1].numpy() for c in cameras], axis=0)
    n = np.linalg.norm(up)
    return up / n if n > 1e-6 else np.array([0.0, 0.0, 1.0])


def look_at_point(camera: Camera, distance: float) -> np.ndarray:
    """The point ``distance`` in front of ``camera`` along its optical axis."""
    c2w = camera.camtoworld.numpy()
    return c2w[:3, 3] + distance * c2w[:3, 2]
