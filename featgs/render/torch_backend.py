"""The reference renderer in pure PyTorch: gsplat "classic" semantics, CPU or GPU, differentiable."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.gaussians import Gaussians
from featgs.render.blend import BlendSettings, blend, pair_coefficients
from featgs.render.output import RenderOutput
from featgs.render.projection import project
from featgs.render.sh import sh_to_rgb
from featgs.render.tiles import bin_gaussians, tile_origins, tiles_to_image

TILE_SIZE = 8


def render_torch(
    gaussians: Gaussians,
    camera: Camera,
    *,
    sh_degree: int,
    background: Optional[Tensor] = None,
    features: bool = True,
    top_k: int = 0,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    tile_size: int = TILE_SIZE,
    settings: BlendSettings = BlendSettings(),
) -> RenderOutput:
    """See :func:`featgs.render.render`. ``tile_size`` and ``settings`` change speed only."""
    g = gaussians
    dt, dev = g.dtype, g.device
    W, H = camera.width, camera.height
    proj = project(g.means, g.quats, g.scales, g.opacities, camera, near_plane=near_plane, far_plane=far_plane)
    means2d = proj.means2d[None]  # [1, N, 2], the tensor whose grad densification reads
    if means2d.requires_grad:
        means2d.retain_grad()
    vis = torch.nonzero(proj.visible).squeeze(1)

    campos = camera.center.to(dtype=dt, device=dev)
    rgb = sh_to_rgb(sh_degree, g.sh0[vis], g.shN[vis], g.means[vis] - campos)
    channels = [rgb, proj.depths[vis, None]]
    with_features = features and g.feature_dim > 0
    if with_features:
        channels.append(g.features[vis])
    colors = torch.cat(channels, dim=-1)

    plan = bin_gaussians(proj.means2d.detach()[vis], proj.extents[vis], proj.depths.detach()[vis], W, H, tile_size)
    q = pair_coefficients(means2d[0, vis], proj.conics[vis], proj.opacities[vis], plan, tile_origins(plan, dt, dev))
    acc, t_final, top_w, top_id = blend(q, colors, plan, settings, top_k)

    acc = tiles_to_image(acc, plan, W, H)
    t_final = tiles_to_image(t_final[..., None], plan, W, H)
    alpha = 1.0 - t_final
    image = acc[..., :3]
    if background is not None:
        image = image + t_final * background.to(dtype=dt, device=dev)
    depth = acc[..., 3:4] / alpha.clamp_min(1e-10)
    feats = None
    if with_features:
        feats = acc[..., 4:]
        if g.decoder is not None:
            feats = g.decoder(feats)
    ids = weights = None
    if top_k:
        weights = tiles_to_image(top_w, plan, W, H)
        local = tiles_to_image(top_id, plan, W, H)
        # no visible Gaussian: every slot is empty (-1), and there is nothing to index
        ids = torch.where(local >= 0, vis[local.clamp_min(0)], local) if len(vis) else local
    info = {
        "means2d": means2d,
        "radii": proj.radii[None],
        "depths": proj.depths[None],
        "width": W,
        "height": H,
        "n_cameras": 1,
        "gaussian_ids": None,
        "num_pairs": plan.num_pairs,
    }
    return RenderOutput(rgb=image, alpha=alpha, depth=depth, features=feats, topk_ids=ids, topk_weights=weights, info=info)
