"""Camera-axis conventions at the edges of the data loaders.

featgs uses OpenCV axes (x right, y down, z forward). NeRF, Blender, nerfstudio and
instant-ngp ``transform_matrix`` use OpenGL axes (x right, y up, z backward). The two differ
by flipping the camera's y and z axes, which is its own inverse.
"""

from __future__ import annotations

import torch
from torch import Tensor

from featgs.rotations import quat_to_rotmat

_FLIP_YZ = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def flip_yz(camtoworld: Tensor) -> Tensor:
    """[4, 4] camtoworld with its camera y and z axes negated (OpenGL <-> OpenCV)."""
    return torch.as_tensor(camtoworld, dtype=torch.float64) @ _FLIP_YZ


def quat_to_rotation(qvec: Tensor) -> Tensor:
    """[4] quaternion (w, x, y, z), any norm -> [3, 3] rotation matrix (float64; NaNs for a zero
    quaternion, which the :class:`~featgs.camera.Camera` built from it then rejects)."""
    return quat_to_rotmat(torch.as_tensor(qvec, dtype=torch.float64), eps=0.0)


def colmap_to_camtoworld(qvec: Tensor, tvec: Tensor) -> Tensor:
    """COLMAP world-to-camera pose (quaternion w x y z, translation [3]) -> [4, 4] OpenCV camtoworld.

    COLMAP cameras already use OpenCV axes; only the direction of the transform changes.
    """
    R = quat_to_rotation(qvec)
    out = torch.eye(4, dtype=torch.float64)
    out[:3, :3] = R.T
    out[:3, 3] = -R.T @ torch.as_tensor(tvec, dtype=torch.float64)
    return out
