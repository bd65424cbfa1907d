"""EWA projection of 3D Gaussians to screen-space ellipses, with gsplat's "classic" rules."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.rotations import quat_to_rotmat

ALPHA_THRESHOLD = 1.0 / 255.0
BLUR_EPS = 0.3  # low-pass dilation of the 2D covariance, pixels^2
MAX_EXTENT = 3.33  # sigmas


@dataclass
class Projection:
    """Screen-space Gaussians for one camera. All tensors cover all N Gaussians.

    Attributes:
        means2d: [N, 2] pixel coordinates of the centres.
        conics: [N, 3] (a, b, c) of the inverse blurred 2D covariance [[a, b], [b, c]].
        depths: [N] camera-space z of the centres.
        opacities: [N] in (0, 1).
        extents: [N, 2] half-widths in pixels of the box outside which alpha < 1/255.
        radii: [N, 2] int32, ceil of ``extents``; 0 for culled Gaussians (gsplat's convention).
        visible: [N] bool, not culled.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    opacities: Tensor
    extents: Tensor
    radii: Tensor
    visible: Tensor


def project(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacity_logits: Tensor,
    camera: Camera,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Projection:
    """Project Gaussians through a pinhole camera (gsplat 1.5.3 ``fully_fused_projection``).

    The Jacobian clamps x/z and y/z to 1.3x the field of view, as gsplat does, so that
    Gaussians far outside the frustum do not blow up. A Gaussian is culled when its centre is
    outside [near, far], its blurred 2D covariance is degenerate, its opacity is below 1/255,
    or its box lies outside the image. The box uses gsplat's opacity-aware extent
    ``min(3.33, sqrt(2 ln(255 o)))`` sigmas, exactly where alpha drops below 1/255, so the
    rendered image does not depend on how pixels are grouped into tiles.

    Args:
        means [N, 3], quats [N, 4] (wxyz), scales [N, 3] (log), opacity_logits [N].
    """
    dt, dev = means.dtype, means.device
    vm = camera.viewmat().to(dtype=dt, device=dev)
    R, t = vm[:3, :3], vm[:3, 3]
    p = means @ R.T + t  # [N, 3]
    x, y, z = p.unbind(-1)

    rot = quat_to_rotmat(quats)
    M = rot * torch.exp(scales)[:, None, :]  # R S
    cov = M @ M.transpose(1, 2)
    cov_c = R @ cov @ R.T  # [N, 3, 3]

    fx, fy, cx, cy = camera.fx, camera.fy, camera.cx, camera.cy
    W, H = camera.width, camera.height
    tan_x, tan_y = 0.5 * W / fx, 0.5 * H / fy
    lim_x_pos, lim_x_neg = (W - cx) / fx + 0.3 * tan_x, cx / fx + 0.3 * tan_x
    lim_y_pos, lim_y_neg = (H - cy) / fy + 0.3 * tan_y, cy / fy + 0.3 * tan_y
    # Behind-camera Gaussians are culled below; keep their arithmetic finite meanwhile.
    zs = torch.where(z.abs() < 1e-12, torch.full_like(z, 1e-12), z)
    rz = 1.0 / zs
    tx = zs * (x * rz).clamp(-lim_x_neg, lim_x_pos)
    ty = zs * (y * rz).clamp(-lim_y_neg, lim_y_pos)
    zero = torch.zeros_like(z)
    J = torch.stack(
        [fx * rz, zero, -fx * tx * rz * rz, zero, fy * rz, -fy * ty * rz * rz], dim=-1
    ).reshape(-1, 2, 3)
    cov2d = J @ cov_c @ J.transpose(1, 2)
    a = cov2d[:, 0, 0] + BLUR_EPS
    b = cov2d[:, 0, 1]
    c = cov2d[:, 1, 1] + BLUR_EPS
    det = a * c - b * b
    det_safe = torch.where(det > 0, det, torch.ones_like(det))
    conics = torch.stack([c / det_safe, -b / det_safe, a / det_safe], dim=-1)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], dim=-1)
    opac = torch.sigmoid(opacity_logits)

    with torch.no_grad():
        o = opac.detach()
        ext = torch.sqrt(2.0 * torch.log((o / ALPHA_THRESHOLD).clamp_min(1.0))).clamp_max(MAX_EXTENT)
        half = torch.stack([a.detach().clamp_min(0).sqrt(), c.detach().clamp_min(0).sqrt()], dim=-1) * ext[:, None]
        radii = torch.ceil(half)
        m2 = means2d.detach()
        inside = (
            (m2[:, 0] + radii[:, 0] > 0)
            & (m2[:, 0] - radii[:, 0] < W)
            & (m2[:, 1] + radii[:, 1] > 0)
            & (m2[:, 1] - radii[:, 1] < H)
        )
        visible = (
            (z >= near_plane)
            & (z <= far_plane)
            & (det > 0)
            & (o >= ALPHA_THRESHOLD)
            & ((radii[:, 0] > 0) | (radii[:, 1] > 0))
            & inside
            & torch.isfinite(m2).all(-1)
        )
        radii = torch.where(visible[:, None], radii, torch.zeros_like(radii)).to(torch.int32)
    return Projection(
        means2d=means2d,
        conics=conics,
        depths=z,
        opacities=opac,
        extents=half,
        radii=radii,
        visible=visible,
    )
