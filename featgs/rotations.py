"""Rotations as (w, x, y, z) quaternions: the one quaternion-to-matrix formula every stage uses.

A base module (it imports only torch), so the renderer, the data loaders and the viewer can
all share it without import cycles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def quat_to_rotmat(quats: Tensor, *, eps: float = 1e-12) -> Tensor:
    """[..., 4] wxyz quaternions (any norm) -> [..., 3, 3] rotation matrices (same dtype and
    device; differentiable).

    Args:
        eps: norms below it are raised to it before normalising, so a zero quaternion gives the
            identity instead of NaNs (what optimisation wants). ``eps=0`` lets a zero quaternion
            give NaNs, for callers whose validation rejects non-finite poses.
    """
    w, x, y, z = F.normalize(quats, dim=-1, eps=eps).unbind(-1)
    return torch.stack(
        [
            1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
        ],
        dim=-1,
    ).reshape(*quats.shape[:-1], 3, 3)
