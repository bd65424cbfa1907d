"""Backend ``gsplat``: gsplat's CUDA rasterisation, the baseline our ``cuda`` backend must beat.

Colour and expected depth come from one ``rasterization`` call (SH evaluated by gsplat), the
features from a second with ``sh_degree=None`` (gsplat splits them into chunks of 32
channels). The per-pixel top-K blend weights, when asked for, come from gsplat's
``rasterize_to_indices_in_range`` walked batch by batch, with the weights recomputed here.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.gaussians import Gaussians
from featgs.render.output import RenderOutput
from featgs.render.projection import ALPHA_THRESHOLD

TILE_SIZE = 16
_BATCHES_PER_STEP = 4  # tile-list batches (256 Gaussians each) per top-K step: bounds memory


def render_gsplat(
    gaussians: Gaussians,
    camera: Camera,
    *,
    sh_degree: int,
    background: Optional[Tensor] = None,
    features: bool = True,
    top_k: int = 0,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> RenderOutput:
    """See :func:`featgs.render.render`; needs CUDA tensors."""
    from gsplat import rasterization

    g = gaussians
    dev = g.device
    W, H = camera.width, camera.height
    viewmats = camera.viewmat().to(device=dev, dtype=torch.float32)[None]
    Ks = camera.K.to(device=dev, dtype=torch.float32)[None]
    scales = torch.exp(g.scales)
    opac = torch.sigmoid(g.opacities)
    common = dict(viewmats=viewmats, Ks=Ks, width=W, height=H, near_plane=near_plane, far_plane=far_plane,
                  packed=False, rasterize_mode="classic", eps2d=0.3, tile_size=TILE_SIZE)
    bg = None if background is None else background.to(device=dev, dtype=torch.float32)[None]
    colors, alphas, info = rasterization(g.means, g.quats, scales, opac, torch.cat([g.sh0, g.shN], 1),
                                         sh_degree=sh_degree, render_mode="RGB+ED", backgrounds=bg, **common)
    rgb, depth, alpha = colors[0, ..., :3], colors[0, ..., 3:4], alphas[0]
    feats = None
    if features and g.feature_dim > 0:
        fmap, _, _ = rasterization(g.means, g.quats, scales, opac, g.features, sh_degree=None, render_mode="RGB",
                                   **common)
        feats = fmap[0] if g.decoder is None else g.decoder(fmap[0])
    ids = weights = None
    if top_k:
        ids, weights = _topk(info, W, H, top_k)
    info = {
        "means2d": info["means2d"],
        "radii": info["radii"],
        "depths": info["depths"],
        "width": W,
        "height": H,
        "n_cameras": 1,
        "gaussian_ids": None,
    }
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, features=feats, topk_ids=ids, topk_weights=weights, info=info)


@torch.no_grad()
def _topk(info: dict, W: int, H: int, K: int) -> tuple[Tensor, Tensor]:
    """[H, W, K] ids and weights of each pixel's K largest blend weights."""
    from gsplat import rasterize_to_indices_in_range

    means2d, conics = info["means2d"].detach(), info["conics"].detach()
    opac = info["opacities"].detach()
    depths = info["depths"][0].detach()
    dev = means2d.device
    P = W * H
    T = torch.ones(1, H, W, device=dev)
    top_w = torch.zeros(P, K, device=dev)
    top_id = torch.full((P, K), -1, dtype=torch.long, device=dev)
    ys, xs = torch.div(torch.arange(P, device=dev), W, rounding_mode="floor"), torch.arange(P, device=dev) % W
    offsets = info["isect_offsets"].flatten().long()
    ends = torch.cat([offsets[1:], offsets.new_tensor([info["flatten_ids"].numel()])])
    longest = int((ends - offsets).max()) if offsets.numel() else 0
    n_batches = -(-longest // (TILE_SIZE * TILE_SIZE))
    for start in range(0, n_batches, _BATCHES_PER_STEP):
        gs, pix, _ = rasterize_to_indices_in_range(start, start + _BATCHES_PER_STEP, T, means2d, conics, opac, W, H,
                                                   TILE_SIZE, info["isect_offsets"], info["flatten_ids"])
        if gs.numel() == 0:
            continue
        gs, pix = gs.long(), pix.long()
        order = torch.argsort(depths[gs], stable=True)
        order = order[torch.argsort(pix[order], stable=True)]
        gs, pix = gs[order], pix[order]
        d = torch.stack([means2d[0, gs, 0] - (xs[pix] + 0.5), means2d[0, gs, 1] - (ys[pix] + 0.5)], -1)
        c = conics[0, gs]
        sigma = 0.5 * (c[:, 0] * d[:, 0] ** 2 + c[:, 2] * d[:, 1] ** 2) + c[:, 1] * d[:, 0] * d[:, 1]
        alpha = torch.clamp(opac[0, gs] * torch.exp(-sigma), max=0.999)
        alpha = torch.where(alpha >= ALPHA_THRESHOLD, alpha, torch.zeros_like(alpha))
        # Transmittance before each entry: T at the step start times the product of earlier
        # (1 - alpha) of the same pixel, by a segmented cumulative sum of logs in float64.
        log1m = torch.log1p(-alpha.double())
        csum = torch.cumsum(log1m, 0)
        first = torch.ones_like(pix, dtype=torch.bool)
        first[1:] = pix[1:] != pix[:-1]
        seg_start = torch.cummax(torch.where(first, torch.arange(len(pix), device=dev), torch.zeros_like(pix)), 0).values
        before = csum - log1m - (csum[seg_start] - log1m[seg_start])
        Tflat = T.view(-1)
        w = (alpha.double() * Tflat[pix].double() * torch.exp(before)).float()
        seg_end = torch.ones_like(first)
        seg_end[:-1] = first[1:]
        Tflat[pix[seg_end]] = (Tflat[pix[seg_end]].double() * torch.exp(csum[seg_end] - csum[seg_start[seg_end]] + log1m[seg_start[seg_end]])).float()
        # Merge this step's candidates into the running top-K.
        order = torch.argsort(-w, stable=True)
        order = order[torch.argsort(pix[order], stable=True)]
        gs, pix, w = gs[order], pix[order], w[order]
        first = torch.ones_like(pix, dtype=torch.bool)
        first[1:] = pix[1:] != pix[:-1]
        seg_start = torch.cummax(torch.where(first, torch.arange(len(pix), device=dev), torch.zeros_like(pix)), 0).values
        rank = torch.arange(len(pix), device=dev) - seg_start
        keep = rank < K
        cand_w = torch.zeros(P, K, device=dev)
        cand_id = torch.full((P, K), -1, dtype=torch.long, device=dev)
        cand_w[pix[keep], rank[keep]] = w[keep]
        cand_id[pix[keep], rank[keep]] = gs[keep]
        all_w, pos = torch.cat([top_w, cand_w], 1).topk(K, dim=1)
        top_id = torch.cat([top_id, cand_id], 1).gather(1, pos)
        top_w = all_w
    top_id = torch.where(top_w > 0, top_id, torch.full_like(top_id, -1))
    return top_id.view(H, W, K), top_w.view(H, W, K)
