"""What every loader produces: a :class:`Scene` of train and test :class:`View` s.

Pixel data stays on disk until asked for: ``view.image()`` reads, composites and undistorts
the file on each call (callers that revisit views keep the tensors themselves), so a scene of
thousands of views costs nothing to open.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.data.distortion import undistort_image
from featgs.data.images import has_alpha, over, read_depth, read_label_map, read_mask, read_rgba, resize_nearest
from featgs.errors import FeatgsError


@dataclass(frozen=True)
class View:
    """One posed image and its optional per-pixel companions.

    Attributes:
        camera: the pinhole camera of the undistorted image, in the scene frame.
            ``camera.distortion`` (if set) is the original lens, undone on loading.
        image_path: the colour image, already at the camera's size.
        labels_path, depth_path, mask_path: optional companions at any size (resized to
            the camera's with nearest neighbour).
        depth_scale: file depth value x depth_scale = z-depth in scene units.
        background: [3] colour in 0..1 behind transparent pixels.
    """

    camera: Camera
    image_path: Path
    labels_path: Optional[Path] = None
    depth_path: Optional[Path] = None
    mask_path: Optional[Path] = None
    depth_scale: float = 1.0
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @property
    def name(self) -> str:
        return self.camera.name

    def _fit(self, array: np.ndarray, nearest: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Undistort a map at the camera's size; also the [H, W] coverage map, or None."""
        dist = self.camera.distortion
        if dist is None or not bool((dist != 0).any()):
            return array, None
        return undistort_image(array, self.camera.K.numpy(), dist.numpy(), nearest=nearest)

    def image(self) -> Tensor:
        """[H, W, 3] float32 colour in 0..1, composited over ``background`` where transparent."""
        return over(self.rgba(), torch.tensor(self.background, dtype=torch.float32))

    def rgba(self) -> Tensor:
        """[H, W, 4] float32 colour and alpha in 0..1 (straight alpha; 1 for opaque images)."""
        rgba = read_rgba(self.image_path)
        if rgba.shape[:2] != (self.camera.height, self.camera.width):
            raise FeatgsError(
                f"{self.image_path}: image is {rgba.shape[1]}x{rgba.shape[0]}; expected {self.camera.width}x{self.camera.height} as its camera says"
            )
        return torch.from_numpy(np.ascontiguousarray(self._fit(rgba, nearest=False)[0]))

    def labels(self) -> Optional[Tensor]:
        """[H, W] int64 label ids, or None."""
        if self.labels_path is None:
            return None
        ids = resize_nearest(read_label_map(self.labels_path), self.camera.width, self.camera.height)
        return torch.from_numpy(np.ascontiguousarray(self._fit(ids, nearest=True)[0]))

    def depth(self) -> Optional[Tensor]:
        """[H, W] float32 z-depth (along the optical axis) in scene units; 0 = unknown. Or None."""
        if self.depth_path is None:
            return None
        raw = resize_nearest(read_depth(self.depth_path), self.camera.width, self.camera.height)
        return torch.from_numpy(np.ascontiguousarray(self._fit(raw, nearest=True)[0] * np.float32(self.depth_scale)))

    def mask(self) -> Optional[Tensor]:
        """[H, W] bool, True for pixels to use: the mask file's non-zero pixels, and (for
        undistorted images) the pixels the original image covers. None when all are usable."""
        h, w = self.camera.height, self.camera.width
        keep = None
        if self.mask_path is not None:
            keep, _ = self._fit(resize_nearest(read_mask(self.mask_path), w, h), nearest=True)
        _, covered = self._fit(np.ones((h, w), dtype=bool), nearest=True)
        if covered is not None:
            keep = covered if keep is None else keep & covered
        return None if keep is None else torch.from_numpy(np.ascontiguousarray(keep))


def transform_points(T: Tensor, points: Tensor) -> Tensor:
    """Apply a [4, 4] transform to points [..., 3] (result in the points' dtype)."""
    T = T.to(torch.float64)
    p = points.to(torch.float64)
    return (p @ T[:3, :3].T + T[:3, 3]).to(points.dtype)


@dataclass(frozen=True)
class Scene:
    """Train and test views of one scene, in the scene frame.

    Attributes:
        root: the dataset folder.
        format: "transforms" | "blender" | "colmap".
        train, test: the views; never empty train.
        points: [M, 3] float32 initial points (e.g. SfM), or None.
        point_colors: [M, 3] float32 colours in 0..1 (with ``points``), or None.
        label_names: label id -> name (for views with label maps), or None.
        normalization: [4, 4] float64 similarity from the input (dataset) frame to the scene
            frame; the identity when not normalised. :meth:`to_input_frame` undoes it.
        num_skipped: frames listed by the dataset whose image file was missing.
    """

    root: Path
    format: str
    train: list[View]
    test: list[View]
    points: Optional[Tensor] = None
    point_colors: Optional[Tensor] = None
    label_names: Optional[dict[int, str]] = None
    normalization: Tensor = field(default_factory=lambda: torch.eye(4, dtype=torch.float64))
    num_skipped: int = 0

    @property
    def views(self) -> list[View]:
        return self.train + self.test

    def has_alpha(self) -> bool:
        """Whether the images are transparent where nothing was captured (RGBA, e.g. NeRF-synthetic);
        read from the first train image's header."""
        return has_alpha(self.train[0].image_path)

    def to_input_frame(self, points: Tensor) -> Tensor:
        """Scene-frame points [..., 3] -> the dataset's own frame."""
        return transform_points(torch.linalg.inv(self.normalization), points)
