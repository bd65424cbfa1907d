"""Scene normalisation: centre and scale the input frame so the cameras lie in the unit sphere.

The transform is a similarity ``x -> s (x - c)`` with ``c`` the mean camera centre and ``s``
one over the largest camera distance from it (1 for a single camera). Rotations are left
alone, so a dataset's "up" stays up. The :class:`Scene` records the 4x4 matrix, so that
results map back with :meth:`Scene.to_input_frame`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.data.scene import Scene, View, transform_points
from featgs.errors import FeatgsError


def camera_normalization(centres: Tensor) -> Tensor:
    """[N, 3] camera centres -> [4, 4] float64 similarity mapping them into the unit sphere."""
    centres = centres.to(torch.float64)
    c = centres.mean(dim=0)
    radius = float((centres - c).norm(dim=1).max())
    s = 1.0 / radius if radius > 1e-12 else 1.0
    T = torch.eye(4, dtype=torch.float64)
    T[:3, :3] *= s
    T[:3, 3] = -s * c
    return T


def transform_camera(T: Tensor, camera: Camera) -> Camera:
    """The camera seen in the frame a similarity ``T`` [4, 4] maps to (axes stay orthonormal)."""
    scale = float(torch.linalg.det(T[:3, :3])) ** (1.0 / 3.0)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = (T[:3, :3] / scale) @ camera.camtoworld[:3, :3]
    c2w[:3, 3] = T[:3, :3] @ camera.camtoworld[:3, 3] + T[:3, 3]
    return replace(camera, camtoworld=c2w)


def normalize_scene(scene: Scene) -> Scene:
    """``scene`` moved into the frame of :func:`camera_normalization` of all its cameras."""
    centres = torch.stack([v.camera.center for v in scene.views])
    T = camera_normalization(centres)
    scale = float(T[0, 0])
    if not (bool(torch.isfinite(T).all()) and float(torch.linalg.det(T[:3, :3])) > 0):  # overflow, underflow
        raise FeatgsError(f"{scene.root}: camera positions up to {float(centres.abs().max()):.3g} from the origin cannot "
                          f"be normalised into the unit sphere; expected the {scene.format} poses of a real capture")

    def move(view: View) -> View:
        return replace(view, camera=transform_camera(T, view.camera), depth_scale=view.depth_scale * scale)

    return replace(
        scene,
        train=[move(v) for v in scene.train],
        test=[move(v) for v in scene.test],
        points=None if scene.points is None else transform_points(T, scene.points),
        normalization=T @ scene.normalization,
    )
