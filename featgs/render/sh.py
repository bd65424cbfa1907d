"""Real spherical harmonics up to degree 3, with the constants and signs of 3DGS / gsplat."""

from __future__ import annotations

import torch
from torch import Tensor

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """SH basis functions evaluated at unit directions.

    Args:
        degree: 0..3.
        dirs: [N, 3] unit vectors.
    Returns:
        [N, (degree + 1)^2]
    """
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree >= 1:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree >= 2:
        xx, yy, zz = x * x, y * y, z * z
        out += [
            C2[0] * x * y,
            C2[1] * y * z,
            C2[2] * (2.0 * zz - xx - yy),
            C2[3] * x * z,
            C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            C3[0] * y * (3.0 * xx - yy),
            C3[1] * x * y * z,
            C3[2] * y * (4.0 * zz - xx - yy),
            C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            C3[4] * x * (4.0 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def sh_to_rgb(degree: int, sh0: Tensor, shN: Tensor, dirs: Tensor) -> Tensor:
    """View-dependent colour, ``max(0, 0.5 + sum_k basis_k(dir) * coeff_k)``.

    Args:
        degree: SH degree to evaluate (0..3; coefficients beyond it are ignored).
        sh0: [N, 1, 3]; shN: [N, K, 3] with K >= (degree + 1)^2 - 1.
        dirs: [N, 3] viewing directions (camera centre -> Gaussian), any length.
    Returns:
        [N, 3]
    """
    if degree == 0:
        return (0.5 + C0 * sh0[:, 0]).clamp_min(0.0)
    coeffs = torch.cat([sh0, shN[:, : (degree + 1) ** 2 - 1]], dim=1)  # [N, B, 3]
    dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(degree, dirs)  # [N, B]
    return (0.5 + (basis[:, :, None] * coeffs).sum(dim=1)).clamp_min(0.0)
