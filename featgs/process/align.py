"""How far recovered cameras are from reference ones, up to the similarity SfM cannot know.

Structure from motion recovers poses only up to a similarity (rotation, translation, scale);
:func:`umeyama` finds the one that best maps the recovered camera centres onto the
reference centres (least squares, Umeyama 1991), and :func:`compare_cameras` reports the
rotation and centre errors after it. Used by the tests and benchmarks of ``featgs process``
against scenes whose poses are known.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from featgs.errors import FeatgsError


def umeyama(src: np.ndarray, dst: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """The similarity ``(s, R, t)`` minimising ``sum |dst_i - (s R src_i + t)|^2``.

    Args:
        src, dst: [N, 3] corresponding points, N >= 3 not all on one line.

    Returns:
        s: scale; R: [3, 3] rotation (det +1); t: [3] translation.
    """
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 3 or len(src) < 3:
        raise FeatgsError(f"umeyama: expected two [N, 3] point sets with N >= 3, got {src.shape} and {dst.shape}")
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    U, D, Vt = np.linalg.svd(cov)
    S = np.eye(3)
    if np.linalg.det(U) * np.linalg.det(Vt) < 0:  # a reflection would fit better: take the best rotation
        S[2, 2] = -1.0
    R = U @ S @ Vt
    var = (a**2).sum() / len(src)
    if var <= 0:
        raise FeatgsError("umeyama: the source points all coincide; expected spread-out camera centres")
    s = float(np.trace(np.diag(D) @ S) / var)
    t = mu_d - s * R @ mu_s
    return s, R, t


@dataclass(frozen=True)
class CameraErrors:
    """Errors of recovered cameras against reference ones after the best similarity.

    Attributes:
        matched: cameras present in both (compared by name).
        rotation_deg: [matched] angle of R_ref^T R_aligned per camera, degrees.
        centre: [matched] distance between aligned and reference centres, reference units.
        scene_size: diagonal of the bounding box of the reference centres, reference units.
        scale: the similarity's scale (reference units per recovered unit).
    """

    names: list[str]
    rotation_deg: np.ndarray
    centre: np.ndarray
    scene_size: float
    scale: float

    @property
    def matched(self) -> int:
        return len(self.names)

    @property
    def median_rotation_deg(self) -> float:
        return float(np.median(self.rotation_deg))

    @property
    def median_centre(self) -> float:
        return float(np.median(self.centre))

    @property
    def median_centre_relative(self) -> float:
        """Median centre error as a fraction of the scene size."""
        return self.median_centre / self.scene_size


def compare_cameras(recovered: Mapping[str, np.ndarray], reference: Mapping[str, np.ndarray]) -> CameraErrors:
    """Compare camera-to-world poses ``recovered`` and ``reference`` (name -> [4, 4], OpenCV
    or any one convention shared by both) over the names they share, after aligning the
    recovered centres to the reference ones by :func:`umeyama`."""
    names = sorted(set(recovered) & set(reference))
    if len(names) < 3:
        raise FeatgsError(f"compare_cameras: {len(names)} cameras in common; expected at least 3")
    rec = np.stack([np.asarray(recovered[n], np.float64) for n in names])
    ref = np.stack([np.asarray(reference[n], np.float64) for n in names])
    s, R, t = umeyama(rec[:, :3, 3], ref[:, :3, 3])
    centres = s * rec[:, :3, 3] @ R.T + t
    rotations = R[None] @ rec[:, :3, :3]
    relative = np.transpose(ref[:, :3, :3], (0, 2, 1)) @ rotations
    cos = np.clip((np.trace(relative, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0)
    extent = ref[:, :3, 3].max(0) - ref[:, :3, 3].min(0)
    return CameraErrors(names, np.degrees(np.arccos(cos)), np.linalg.norm(centres - ref[:, :3, 3], axis=1),
                        float(np.linalg.norm(extent)), s)
