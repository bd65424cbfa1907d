"""Binning screen-space Gaussians into square pixel tiles, each tile's list sorted by depth.

A (tile, Gaussian) pair exists only where the Gaussian's alpha >= 1/255 box reaches a pixel
centre of the tile, so the lists are as short as the image allows. Everything here is integer
bookkeeping without gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Tuple

import torch
from torch import Tensor


@dataclass
class TilePlan:
    """Depth-sorted (tile, Gaussian) pairs for one image.

    Attributes:
        tile_size: S, tiles are S x S pixels.
        tiles_x, tiles_y: grid size, ceil(W / S) x ceil(H / S).
        pair_gauss: [P] int64 Gaussian id of each pair (index into the visible subset),
            grouped by tile and, inside a tile, front to back.
        pair_tile: [P] int64 tile id (row-major) of each pair.
        tile_start: [T] int64 first pair of each tile; tile_count: [T] its number of pairs.
    """

    tile_size: int
    tiles_x: int
    tiles_y: int
    pair_gauss: Tensor
    pair_tile: Tensor
    tile_start: Tensor
    tile_count: Tensor

    @property
    def num_tiles(self) -> int:
        return self.tiles_x * self.tiles_y

    @property
    def num_pairs(self) -> int:
        return self.pair_gauss.shape[0]


@torch.no_grad()
def tile_ranges(means2d: Tensor, extents: Tensor, width: int, height: int,
                tile_size: int) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The rectangle of tiles each Gaussian's box reaches: first tile column and row, and how
    many columns and rows ([N] int64 each; 0 columns or rows: it reaches no pixel centre).

    Args:
        means2d: [N, 2] pixel centres; extents: [N, 2] half-widths of the alpha >= 1/255 boxes.
        width, height: image size; tile_size: S.
    """
    S = tile_size
    tx, ty = math.ceil(width / S), math.ceil(height / S)
    lo = means2d - extents
    hi = means2d + extents
    # Tile u holds pixel centres S*u + 0.5 .. S*u + S - 0.5. x0 may be tx (the box lies past the
    # right edge): then it has no columns, where clamping to tx - 1 gave it the last one.
    x0 = torch.ceil((lo[:, 0] - (S - 0.5)) / S).clamp(0, tx).long()
    x1 = torch.floor((hi[:, 0] - 0.5) / S).clamp(-1, tx - 1).long()
    y0 = torch.ceil((lo[:, 1] - (S - 0.5)) / S).clamp(0, ty).long()
    y1 = torch.floor((hi[:, 1] - 0.5) / S).clamp(-1, ty - 1).long()
    return x0, y0, (x1 - x0 + 1).clamp_min(0), (y1 - y0 + 1).clamp_min(0)


@torch.no_grad()
def count_pairs(means2d: Tensor, extents: Tensor, width: int, height: int, tile_size: int) -> int:
    """The number of (tile, Gaussian) pairs :func:`bin_gaussians` would list, without listing
    them: O(N) memory, where the plan takes O(pairs)."""
    _, _, nx, ny = tile_ranges(means2d, extents, width, height, tile_size)
    return int((nx * ny).sum())


@torch.no_grad()
def bin_gaussians(means2d: Tensor, extents: Tensor, depths: Tensor, width: int, height: int, tile_size: int) -> TilePlan:
    """Assign Gaussians to the tiles whose pixel centres their boxes cover.

    Args:
        means2d: [N, 2] pixel centres of the Gaussians.
        extents: [N, 2] half-widths of their alpha >= 1/255 boxes.
        depths: [N] sort key, nearest first.
        width, height: image size; tile_size: S.
    """
    S = tile_size
    tx, ty = math.ceil(width / S), math.ceil(height / S)
    dev = means2d.device
    x0, y0, nx, ny = tile_ranges(means2d, extents, width, height, tile_size)
    count = nx * ny
    n = means2d.shape[0]
    gid = torch.repeat_interleave(torch.arange(n, device=dev), count)
    first = torch.cumsum(count, 0) - count
    k = torch.arange(gid.shape[0], device=dev) - first[gid]
    nxg = nx[gid]
    tile = (y0[gid] + k // nxg) * tx + (x0[gid] + k % nxg)
    depth_rank = torch.empty(n, dtype=torch.long, device=dev)
    depth_rank[torch.argsort(depths)] = torch.arange(n, device=dev)
    order = torch.argsort(tile * n + depth_rank[gid])
    pair_gauss, pair_tile = gid[order], tile[order]
    tile_count = torch.bincount(pair_tile, minlength=tx * ty)
    tile_start = torch.cumsum(tile_count, 0) - tile_count
    return TilePlan(S, tx, ty, pair_gauss, pair_tile, tile_start, tile_count)


def tile_origins(plan: TilePlan, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[T, 2] pixel coordinates (x, y) of each tile's centre."""
    S = plan.tile_size
    t = torch.arange(plan.num_tiles, device=device)
    return torch.stack([(t % plan.tiles_x) * S + 0.5 * S, (t // plan.tiles_x) * S + 0.5 * S], dim=-1).to(dtype)


def tiles_to_image(values: Tensor, plan: TilePlan, width: int, height: int) -> Tensor:
    """[T, S*S, C] per-tile pixel values -> [H, W, C] image."""
    S, C = plan.tile_size, values.shape[-1]
    img = values.reshape(plan.tiles_y, plan.tiles_x, S, S, C).permute(0, 2, 1, 3, 4)
    return img.reshape(plan.tiles_y * S, plan.tiles_x * S, C)[:height, :width]
