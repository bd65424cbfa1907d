"""Front-to-back alpha blending of depth-sorted tile lists, with a hand-written backward.

For a pixel and its front-to-back list of Gaussians, ``alpha_i = min(0.999, o_i exp(-sigma_i))``
(skipped below 1/255), ``T_i = prod_{j<i} (1 - alpha_j)``, blend weight ``w_i = alpha_i T_i``,
and the pixel value is ``sum_i w_i c_i``. A pixel stops before the Gaussian that would take its
transmittance to 1e-4 or below (gsplat's rule), so Gaussian i counts iff
``T_i (1 - alpha_i) > 1e-4``: a prefix of the list, found with one cumulative product.

``log alpha`` is a quadratic in the pixel coordinates, so for a (tile, Gaussian) pair it is six
coefficients ``q`` times the tile's pixel monomials [1, u, v, u^2, uv, v^2]: one matmul per
chunk. Lists are walked in chunks of Gaussians, batches of tiles together, and tiles whose
pixels have all stopped leave the batch, so work follows what is visible.

The backward recomputes alphas chunk by chunk instead of storing them (memory stays bounded)
and uses ``dL/dalpha_i = T_i <g, c_i> - (<g, S_i> + g_T T_final) / (1 - alpha_i)`` with
``S_i = sum_{j>i} w_j c_j``, obtained as the total minus a running prefix sum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from featgs.render.projection import ALPHA_THRESHOLD
from featgs.render.tiles import TilePlan

MAX_ALPHA = 0.999
T_STOP = 1e-4
_SENTINEL_LOG_ALPHA = -100.0  # a padding pair that can never reach the alpha threshold
_MIN_LOG_ALPHA = -30.0  # far below log(1/255); exp of large negatives is slow on CPUs
_MIN_TRANSMITTANCE = 1e-30  # far below T_STOP, far above float32's denormals


@dataclass(frozen=True)
class BlendSettings:
    """Work sizes of the blender; they change speed and memory, never the image.

    Attributes:
        chunk: Gaussians per step along a tile's depth-sorted list.
        budget: pixel x Gaussian entries per step (sets how many tiles go together).
    """

    chunk: int = 64
    budget: int = 1 << 18


def pixel_monomials(tile_size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[S*S, 6] monomials [1, u, v, u^2, uv, v^2] of the pixel centres, relative to the tile centre."""
    S = tile_size
    k = torch.arange(S * S, device=device)
    u = (k % S).to(dtype) + 0.5 - 0.5 * S
    v = (k // S).to(dtype) + 0.5 - 0.5 * S
    return torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v], dim=-1)


def pair_coefficients(means2d: Tensor, conics: Tensor, opacities: Tensor, plan: TilePlan, centres: Tensor) -> Tensor:
    """[P, 6] coefficients of log(alpha) per (tile, Gaussian) pair.

    With (u, v) a pixel relative to the tile centre and m the Gaussian's centre in the same
    frame, ``log alpha = log o - (a du^2 + c dv^2) / 2 - b du dv`` where du = u - m_x.

    Args:
        means2d [N, 2], conics [N, 3] (a, b, c), opacities [N]: the visible Gaussians.
        centres: [T, 2] tile centres in pixels.
    """
    g, t = plan.pair_gauss, plan.pair_tile
    m = means2d[g] - centres[t]
    a, b, c = conics[g].unbind(-1)
    mx, my = m.unbind(-1)
    lo = torch.log(opacities[g])
    return torch.stack(
        [
            lo - 0.5 * a * mx * mx - 0.5 * c * my * my - b * mx * my,
            a * mx + b * my,
            c * my + b * mx,
            -0.5 * a,
            -b,
            -0.5 * c,
        ],
        dim=-1,
    )


class _Walk:
    """Iterates one batch of tiles chunk by chunk, keeping each pixel's transmittance."""

    def __init__(self, tiles: Tensor, plan: TilePlan, npix: int, chunk: int, dtype, device):
        self.tiles = tiles
        self.start = plan.tile_start[tiles]
        self.count = plan.tile_count[tiles]
        self.chunk = chunk
        self.sentinel = plan.num_pairs
        B = tiles.shape[0]
        self.t_run = torch.ones(B, npix, dtype=dtype, device=device)  # 0 once a pixel has stopped
        self.t_final = torch.ones(B, npix, dtype=dtype, device=device)
        self.alive = torch.ones(B, dtype=torch.bool, device=device)
        self.pos = torch.arange(chunk, device=device)

    def __iter__(self):
        n_chunks = -(-int(self.count.max()) // self.chunk) if self.count.numel() else 0
        for c in range(n_chunks):
            rows = torch.nonzero(self.alive & (self.count > c * self.chunk)).squeeze(1)
            if rows.numel() == 0:
                return
            pos = c * self.chunk + self.pos
            idx = self.start[rows, None] + pos
            idx = torch.where(pos < self.count[rows, None], idx, torch.full_like(idx, self.sentinel))
            yield rows, idx

    def step(self, rows: Tensor, q: Tensor, M: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """Alphas and weights of one chunk, and advance the transmittance.

        Args:
            rows: [b] rows of the batch in this chunk; q: [b, L, 6] pair coefficients.
            M: [S*S, 6] pixel monomials.
        Returns:
            a [b, S*S, L] alphas (0 where skipped), om = 1 - a, t_excl [b, S*S, L]
            transmittance before each Gaussian, keep [b, S*S, L] whether it counts.
        """
        la = torch.matmul(M, q.transpose(1, 2))  # [b, P, L]
        la.clamp_(min=_MIN_LOG_ALPHA)
        a = la.exp_()
        a.clamp_(max=MAX_ALPHA)
        a = torch.nn.functional.threshold(a, ALPHA_THRESHOLD, 0.0)  # keeps alpha > 1/255
        om = 1.0 - a
        t0 = self.t_run[rows].unsqueeze(-1)
        t_incl = torch.cumprod(om, dim=-1).mul_(t0)
        # Long opaque runs underflow to denormals, which slow every later op ~10x; flush them.
        t_incl = torch.nn.functional.threshold(t_incl, _MIN_TRANSMITTANCE, 0.0)
        keep = t_incl > T_STOP
        t_excl = torch.cat([t0, t_incl[..., :-1]], dim=-1)
        t_new = torch.where(keep, t_incl, self.t_final[rows].unsqueeze(-1)).amin(dim=-1)
        stopped = ~keep[..., -1]
        self.t_final[rows] = t_new
        self.t_run[rows] = torch.where(stopped, torch.zeros_like(t_new), t_new)
        self.alive[rows] = ~stopped.all(dim=-1)
        return a, om, t_excl, keep


def _batches(plan: TilePlan, npix: int, settings: BlendSettings):
    """Non-empty tiles, longest lists first, grouped so a step stays within the budget."""
    order = torch.argsort(plan.tile_count, descending=True)
    order = order[plan.tile_count[order] > 0]
    per_batch = max(1, settings.budget // (npix * settings.chunk))
    return torch.split(order, per_batch)


def _padded(q: Tensor, colors: Tensor, plan: TilePlan):
    """Pixel monomials, and pairs/colours with one trailing sentinel that padding indices hit."""
    M = pixel_monomials(plan.tile_size, colors.dtype, colors.device)
    q_pad = torch.cat([q, q.new_tensor([[_SENTINEL_LOG_ALPHA, 0, 0, 0, 0, 0]])])
    gid_pad = torch.cat([plan.pair_gauss, plan.pair_gauss.new_tensor([colors.shape[0]])])
    col_pad = torch.cat([colors, colors.new_zeros(1, colors.shape[1])])
    return M, q_pad, gid_pad, col_pad


class _Blend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: Tensor, colors: Tensor, plan: TilePlan, settings: BlendSettings, top_k: int):
        S2, C = plan.tile_size ** 2, colors.shape[1]
        dt, dev = colors.dtype, colors.device
        M, q_pad, gid_pad, col_pad = _padded(q, colors, plan)
        acc = colors.new_zeros(plan.num_tiles, S2, C)
        t_final = colors.new_ones(plan.num_tiles, S2)
        top_w = colors.new_zeros(plan.num_tiles, S2, top_k)
        top_id = torch.full((plan.num_tiles, S2, top_k), -1, dtype=torch.long, device=dev)
        for tiles in _batches(plan, S2, settings):
            walk = _Walk(tiles, plan, S2, settings.chunk, dt, dev)
            acc_b = colors.new_zeros(tiles.shape[0], S2, C)
            tw, ti = top_w[tiles], top_id[tiles]
            for rows, idx in walk:
                a, _, t_excl, keep = walk.step(rows, q_pad[idx], M)
                w = a.mul_(t_excl).mul_(keep)
                gid = gid_pad[idx]
                acc_b[rows] += torch.bmm(w, col_pad[gid])
                if top_k:
                    vals = torch.cat([tw[rows], w], dim=-1)
                    ids = torch.cat([ti[rows], gid[:, None, :].expand_as(w)], dim=-1)
                    vals, pos = vals.topk(top_k, dim=-1)
                    tw[rows], ti[rows] = vals, ids.gather(-1, pos)
            acc[tiles] = acc_b
            t_final[tiles] = walk.t_final
            if top_k:
                top_w[tiles], top_id[tiles] = tw, torch.where(tw > 0, ti, torch.full_like(ti, -1))
        ctx.save_for_backward(q, colors, acc, t_final)
        ctx.plan, ctx.settings = plan, settings
        ctx.mark_non_differentiable(top_w, top_id)
        return acc, t_final, top_w, top_id

    @staticmethod
    def backward(ctx, g_acc: Tensor, g_t: Tensor, _g_w, _g_id):
        q, colors, acc, t_final = ctx.saved_tensors
        plan, settings = ctx.plan, ctx.settings
        S2, C = plan.tile_size ** 2, colors.shape[1]
        dt, dev = colors.dtype, colors.device
        M, q_pad, gid_pad, col_pad = _padded(q, colors, plan)
        grad_q = torch.zeros_like(q_pad)
        grad_col = torch.zeros_like(col_pad)
        g_acc = g_acc.contiguous()
        # <g, total> + g_T T_final: the part of dL/dalpha shared by the whole list.
        base = (g_acc * acc).sum(-1) + g_t * t_final
        for tiles in _batches(plan, S2, settings):
            walk = _Walk(tiles, plan, S2, settings.chunk, dt, dev)
            ga, base_b = g_acc[tiles], base[tiles]
            carry = colors.new_zeros(tiles.shape[0], S2)
            for rows, idx in walk:
                a, om, t_excl, keep = walk.step(rows, q_pad[idx], M)
                w = a * t_excl * keep
                gid = gid_pad[idx]
                g_rows = ga[rows]
                col = col_pad[gid]
                gc = torch.bmm(g_rows, col.transpose(1, 2))  # [b, P, L] <g, c_i>
                prefix = torch.cumsum(w * gc, dim=-1).add_(carry[rows].unsqueeze(-1))
                carry[rows] = prefix[..., -1]
                d_alpha = t_excl * gc - (base_b[rows].unsqueeze(-1) - prefix) / om
                live = keep & (a > 0) & (a < MAX_ALPHA)
                d_log_alpha = torch.where(live, d_alpha * a, torch.zeros_like(a))
                grad_q.index_add_(0, idx.reshape(-1), torch.matmul(d_log_alpha.transpose(1, 2), M).reshape(-1, 6))
                grad_col.index_add_(0, gid.reshape(-1), torch.bmm(w.transpose(1, 2), g_rows).reshape(-1, C))
        return grad_q[:-1], grad_col[:-1], None, None, None


def blend(
    q: Tensor, colors: Tensor, plan: TilePlan, settings: BlendSettings, top_k: int = 0
) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tensor]]:
    """Blend every tile's list.

    Args:
        q: [P, 6] log-alpha coefficients of the plan's pairs.
        colors: [N, C] values to blend per Gaussian (colour, depth, features...).
        plan: the depth-sorted tile lists; settings: work sizes.
        top_k: also keep each pixel's K largest blend weights.
    Returns:
        acc [T, S*S, C] sum of w * colour, t_final [T, S*S] final transmittance, and when
        top_k > 0, top_w [T, S*S, K] and top_id [T, S*S, K] (ids into ``colors``, -1 = none).
    """
    acc, t_final, top_w, top_id = _Blend.apply(q, colors, plan, settings, top_k)
    if not top_k:
        return acc, t_final, None, None
    return acc, t_final, top_w, top_id
