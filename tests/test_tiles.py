"""featgs.render.tiles: binning boxes into tiles, depth order, and the tile <-> image layout."""

from __future__ import annotations

import math

import pytest
import torch

from featgs.render.blend import pixel_monomials
from featgs.render.tiles import bin_gaussians, tile_origins, tiles_to_image


def _random_boxes(n: int, width: int, height: int, seed: int, margin: float = 6.0):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([width + 2 * margin, height + 2 * margin],
                                                                               dtype=torch.float64) - margin
    extents = torch.rand(n, 2, generator=g, dtype=torch.float64) * 7.0
    extents[: n // 8] = 0.0  # points: cover a pixel centre only if they sit on one
    depths = torch.rand(n, generator=g, dtype=torch.float64) * 10.0
    return means, extents, depths


def _brute_force_pairs(means, extents, width, height, S, *, image_pixels_only: bool) -> set:
    """(tile, gaussian) pairs by brute force over boxes [mean - extent, mean + extent] (closed).

    image_pixels_only: the box holds a pixel centre of the tile that lies in the image (such
    pairs must be listed); else the box meets the rectangle spanned by all S x S pixel centres
    of the tile (no other pair may be listed: a box between two centres of a tile may count).
    """
    tx, ty = math.ceil(width / S), math.ceil(height / S)
    pairs = set()
    for i in range(means.shape[0]):
        lo = (means[i] - extents[i]).tolist()
        hi = (means[i] + extents[i]).tolist()
        for t in range(tx * ty):
            u, v = t % tx, t // tx
            if image_pixels_only:
                xs = [x for x in (S * u + k + 0.5 for k in range(S)) if x < width]
                ys = [y for y in (S * v + k + 0.5 for k in range(S)) if y < height]
                hit = any(lo[0] <= x <= hi[0] for x in xs) and any(lo[1] <= y <= hi[1] for y in ys)
            else:
                hit = (lo[0] <= S * u + S - 0.5 and hi[0] >= S * u + 0.5
                       and lo[1] <= S * v + S - 0.5 and hi[1] >= S * v + 0.5)
            if hit:
                pairs.add((t, i))
    return pairs


def _plan_pairs(plan) -> set:
    return set(zip(plan.pair_tile.tolist(), plan.pair_gauss.tolist()))


@pytest.mark.parametrize("width,height,S,seed", [(32, 24, 8, 0), (30, 21, 8, 1), (17, 40, 16, 2), (9, 5, 4, 3)])
def test_every_overlapping_pair_and_no_other(width, height, S, seed):
    # boxes around and partly over every edge, but none wholly past the right or bottom edge
    # (see test_boxes_wholly_past_the_right_or_bottom_edge_get_no_tile)
    means, extents, depths = _random_boxes(200, width, height, seed)
    last_x, last_y = math.ceil(width / S) * S - 0.5, math.ceil(height / S) * S - 0.5  # the last tile pixel centres
    keep = ((means - extents)[:, 0] <= last_x) & ((means - extents)[:, 1] <= last_y)
    means, extents, depths = means[keep], extents[keep], depths[keep]
    plan = bin_gaussians(means, extents, depths, width, height, S)
    got = _plan_pairs(plan)
    assert len(got) == plan.num_pairs, "a (tile, Gaussian) pair is listed twice"
    must = _brute_force_pairs(means, extents, width, height, S, image_pixels_only=True)
    may = _brute_force_pairs(means, extents, width, height, S, image_pixels_only=False)
    assert must <= got, f"missing pairs: {sorted(must - got)[:5]}"
    assert got <= may, f"pairs whose box reaches no pixel centre of the tile: {sorted(got - may)[:5]}"
    assert plan.tiles_x == math.ceil(width / S) and plan.tiles_y == math.ceil(height / S)
    assert plan.num_tiles == plan.tiles_x * plan.tiles_y


def test_boxes_on_pixel_centres_and_between_them():
    """A box reaching exactly a pixel centre counts; one between the centres either side of a
    tile border belongs to neither tile."""
    S, width, height = 4, 8, 4
    means = torch.tensor([[3.5, 1.5], [4.0, 1.5], [4.0, 1.5], [5.0, 2.0]], dtype=torch.float64)
    extents = torch.tensor([[0.0, 0.0], [0.49, 0.0], [0.5, 0.0], [0.1, 0.1]], dtype=torch.float64)
    plan = bin_gaussians(means, extents, torch.arange(4.0, dtype=torch.float64), width, height, S)
    got = _plan_pairs(plan)
    assert (0, 0) in got and (1, 0) not in got  # a point on the centre 3.5 of tile 0
    assert (0, 1) not in got and (1, 1) not in got  # 3.51..4.49: no centre
    assert {(0, 2), (1, 2)} <= got  # 3.5..4.5: the last centre of tile 0 and the first of tile 1
    assert (0, 3) not in got  # 4.9..5.1: right of tile 0's last centre (inside tile 1 it may count)
    assert got - {(1, 3)} == {(0, 0), (0, 2), (1, 2)}


def test_grouped_by_tile_and_front_to_back_inside_a_tile():
    width, height, S = 40, 32, 8
    means, extents, depths = _random_boxes(300, width, height, seed=7, margin=0.0)
    plan = bin_gaussians(means, extents, depths, width, height, S)
    tiles = plan.pair_tile
    assert bool((tiles[1:] >= tiles[:-1]).all()), "pairs are not grouped by tile"
    assert torch.equal(plan.tile_count, torch.bincount(tiles, minlength=plan.num_tiles))
    assert torch.equal(plan.tile_start, torch.cumsum(plan.tile_count, 0) - plan.tile_count)
    busy = 0
    for t in range(plan.num_tiles):
        s, c = int(plan.tile_start[t]), int(plan.tile_count[t])
        assert bool((tiles[s:s + c] == t).all())
        d = depths[plan.pair_gauss[s:s + c]]
        assert bool((d[1:] >= d[:-1]).all()), f"tile {t} is not sorted front to back"
        busy += c > 1
    assert busy > plan.num_tiles // 2  # the order was checked on real lists


def test_negative_depths_sort_first():
    means = torch.full((4, 2), 4.0, dtype=torch.float64)
    extents = torch.full((4, 2), 2.0, dtype=torch.float64)
    depths = torch.tensor([0.5, -3.0, 2.0, -0.1], dtype=torch.float64)
    plan = bin_gaussians(means, extents, depths, 8, 8, 8)
    assert plan.pair_gauss.tolist() == [1, 3, 0, 2]


def test_nothing_visible_gives_an_empty_plan():
    empty = torch.zeros(0, 2, dtype=torch.float64)
    plan = bin_gaussians(empty, empty, torch.zeros(0, dtype=torch.float64), 20, 12, 8)
    assert plan.num_pairs == 0 and plan.tile_count.tolist() == [0] * 6 and plan.num_tiles == 6
    far_left = torch.tensor([[-30.0, 5.0], [5.0, -40.0]], dtype=torch.float64)
    plan = bin_gaussians(far_left, torch.ones(2, 2, dtype=torch.float64), torch.ones(2, dtype=torch.float64), 20, 12, 8)
    assert plan.num_pairs == 0


def test_boxes_wholly_past_the_right_or_bottom_edge_get_no_tile():
    width, height, S = 16, 16, 8
    means = torch.tensor([[40.0, 4.0], [4.0, 40.0], [16.6, 4.0]], dtype=torch.float64)
    extents = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.5, 0.5]], dtype=torch.float64)  # the last: 16.1..17.1
    plan = bin_gaussians(means, extents, torch.ones(3, dtype=torch.float64), width, height, S)
    assert _plan_pairs(plan) == set()


@pytest.mark.parametrize("width,height,S", [(32, 24, 8), (30, 21, 8), (5, 13, 4), (16, 16, 16)])
def test_tiles_to_image_round_trip(width, height, S):
    plan = bin_gaussians(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0), width, height, S)
    tx, ty = plan.tiles_x, plan.tiles_y
    C = 3
    image = torch.randn(height, width, C, generator=torch.Generator().manual_seed(width * height))
    padded = torch.zeros(ty * S, tx * S, C)
    padded[:height, :width] = image
    # tile t = row-major (v, u); inside a tile, pixel k = row-major (dy, dx)
    values = padded.reshape(ty, S, tx, S, C).permute(0, 2, 1, 3, 4).reshape(tx * ty, S * S, C)
    back = tiles_to_image(values, plan, width, height)
    assert back.shape == (height, width, C)
    assert torch.equal(back, image)
    # and pixel by pixel: tile t, slot k lands at (y, x)
    for t, k in [(0, 0), (tx * ty - 1, S * S - 1), (tx - 1, S - 1), (tx, S), (min(1, tx * ty - 1), S * S // 2 + 1)]:
        x = (t % tx) * S + k % S
        y = (t // tx) * S + k // S
        if x < width and y < height:
            assert torch.equal(back[y, x], values[t, k])


def test_tile_centres_and_pixel_offsets_give_the_image_pixel_centres():
    """The blender's pixel coordinates (tile centre + monomial offsets) are the centres of the
    pixels that tiles_to_image puts there."""
    width, height, S = 22, 13, 8
    plan = bin_gaussians(torch.zeros(0, 2), torch.zeros(0, 2), torch.zeros(0), width, height, S)
    centres = tile_origins(plan, torch.float64, torch.device("cpu"))
    uv = pixel_monomials(S, torch.float64, torch.device("cpu"))[:, 1:3]
    coords = centres[:, None, :] + uv[None]  # [T, S*S, 2] (x, y)
    img = tiles_to_image(coords, plan, width, height)
    ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    torch.testing.assert_close(img[..., 0], xs + 0.5, atol=0, rtol=0)
    torch.testing.assert_close(img[..., 1], ys + 0.5, atol=0, rtol=0)
