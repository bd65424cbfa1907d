"""A brute-force renderer for tests: float64, one Gaussian at a time over every pixel.

Written independently of featgs.render (plain formulas of gsplat 1.5.3's classic mode), so
that agreement means something.
"""

from __future__ import annotations

import torch

SH_C0 = 0.28209479177387814


def _rotmat(q):
    w, x, y, z = (q / q.norm()).tolist()
    return torch.tensor(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ],
        dtype=torch.float64,
    )


def brute_force_render(g, cam, colors, background=None, near=0.01):
    """Render per-Gaussian ``colors`` [N, C] (float64).

    Returns (acc [H, W, C] = sum w c, alpha [H, W], depth [H, W] expected, weights
    dict {(i, j): {gaussian id: w}}) - the last one only for small images.
    """
    g = g.to(torch.float64)
    W, H = cam.width, cam.height
    c2w = cam.camtoworld
    R = c2w[:3, :3].T
    t = -R @ c2w[:3, 3]
    fx, fy, cx, cy = cam.fx, cam.fy, cam.cx, cam.cy
    items = []
    for i in range(len(g)):
        p = R @ g.means[i].detach() + t
        x, y, z = p.tolist()
        if z < near:
            continue
        rot = _rotmat(g.quats[i].detach())
        S = torch.diag(torch.exp(g.scales[i].detach()))
        cov = R @ (rot @ S @ S @ rot.T) @ R.T
        tan_x, tan_y = 0.5 * W / fx, 0.5 * H / fy
        tx = z * min((W - cx) / fx + 0.3 * tan_x, max(-(cx / fx + 0.3 * tan_x), x / z))
        ty = z * min((H - cy) / fy + 0.3 * tan_y, max(-(cy / fy + 0.3 * tan_y), y / z))
        J = torch.tensor([[fx / z, 0, -fx * tx / z**2], [0, fy / z, -fy * ty / z**2]], dtype=torch.float64)
        c2 = J @ cov @ J.T + 0.3 * torch.eye(2, dtype=torch.float64)
        if torch.det(c2) <= 0:
            continue
        o = torch.sigmoid(g.opacities[i].detach()).item()
        if o < 1 / 255:
            continue
        items.append((z, i, torch.tensor([fx * x / z + cx, fy * y / z + cy], dtype=torch.float64), torch.inverse(c2), o))
    items.sort(key=lambda it: it[0])
    C = colors.shape[1]
    acc = torch.zeros(H, W, C, dtype=torch.float64)
    depth = torch.zeros(H, W, dtype=torch.float64)
    T = torch.ones(H, W, dtype=torch.float64)
    done = torch.zeros(H, W, dtype=torch.bool)
    jj, ii = torch.meshgrid(torch.arange(W, dtype=torch.float64) + 0.5, torch.arange(H, dtype=torch.float64) + 0.5, indexing="xy")
    weights = {}
    for z, i, m, conic, o in items:
        dx, dy = m[0] - jj, m[1] - ii
        sigma = 0.5 * (conic[0, 0] * dx * dx + conic[1, 1] * dy * dy) + conic[0, 1] * dx * dy
        alpha = torch.clamp(o * torch.exp(-sigma), max=0.999)
        skip = (sigma < 0) | (alpha < 1 / 255) | done
        next_T = T * (1 - alpha)
        stop = ~skip & (next_T <= 1e-4)
        done |= stop
        use = ~skip & ~stop
        w = torch.where(use, alpha * T, torch.zeros_like(T))
        acc += w[..., None] * colors[i].detach().to(torch.float64)
        depth += w * z
        T = torch.where(use, next_T, T)
        if H * W <= 4096:
            for (a, b) in torch.nonzero(use).tolist():
                weights.setdefault((a, b), {})[i] = w[a, b].item()
    alpha = 1 - T
    if background is not None:
        acc = acc + T[..., None] * torch.as_tensor(background, dtype=torch.float64)
    return acc, alpha, depth / alpha.clamp_min(1e-10), weights


def sh_colors(g, cam, degree):
    """Per-Gaussian view-dependent colour, written out from the 3DGS formulas."""
    from featgs.render.sh import sh_to_rgb  # the SH constants are checked separately

    return sh_to_rgb(degree, g.sh0.detach(), g.shN.detach(), g.means.detach() - cam.center.to(g.means))


def sh_dc_color(sh0):
    return (0.5 + SH_C0 * sh0[:, 0]).clamp_min(0)

