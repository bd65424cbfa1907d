"""What a render will cost in memory, known before it allocates: callers refuse a view that
cannot fit (``featgs render``, the query field's ``max_render_pairs``) instead of dying in an
allocation.

The torch renderer's memory grows with two things: the (tile, Gaussian) pairs it lists and the
pixels it writes. Both constants are measured peaks of the process (``ru_maxrss``), CPU, 1 thread.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

from featgs.camera import Camera
from featgs.gaussians import Gaussians

# Per (tile, Gaussian) pair: the sorted lists (several int64 index tensors) and their
# log-alpha coefficients. Measured on a 2048x2048 view of 50k large Gaussians: 2.8 GB for 28M pairs.
BYTES_PER_PAIR = 100
# Per pixel: 40 B for colour, alpha, depth and the blending state, and 8 B per feature channel
# (the blended map and its composited copy); measured at 2048x2048 with D = 0, 16, 64:
# 40, 168, 553 B. Writing it out (a uint8 image, an .npy copy of the features) adds 4 B per
# channel and a few per pixel.
BYTES_PER_PIXEL = 48
BYTES_PER_PIXEL_CHANNEL = 12
_ESTIMATE_BLOCK = 1 << 16  # Gaussians projected at once by estimate_pairs: bounds its memory


@torch.no_grad()
def estimate_pairs(gaussians: Gaussians, camera: Camera, *, near_plane: float = 0.01,
                   far_plane: float = 1e10) -> int:
    """How many (tile, Gaussian) pairs rendering ``gaussians`` at ``camera`` lists: what the
    torch renderer's memory grows with (about :data:`BYTES_PER_PAIR` bytes each). Exact for
    the torch backend, an upper bound for gsplat's larger tiles.

    Costs one projection of the Gaussians, in blocks, so memory stays O(block), not O(pairs):
    callers can refuse a render before it allocates.
    """
    from featgs.render.projection import project
    from featgs.render.tiles import count_pairs
    from featgs.render.torch_backend import TILE_SIZE

    g = gaussians
    total = 0
    for start in range(0, len(g), _ESTIMATE_BLOCK):
        part = slice(start, start + _ESTIMATE_BLOCK)
        proj = project(g.means[part], g.quats[part], g.scales[part], g.opacities[part], camera,
                       near_plane=near_plane, far_plane=far_plane)
        vis = proj.visible
        total += count_pairs(proj.means2d[vis], proj.extents[vis], camera.width, camera.height, TILE_SIZE)
    return total


def tile_count(camera: Camera) -> int:
    """Tiles of the torch renderer in a view at ``camera``: a Gaussian lists at most this many pairs."""
    from featgs.render.torch_backend import TILE_SIZE

    return -(-camera.width // TILE_SIZE) * -(-camera.height // TILE_SIZE)


def image_bytes(camera: Camera, channels: int) -> int:
    """Bytes of the per-pixel buffers of a render at ``camera`` with ``channels`` feature
    channels (0: colour only), written out."""
    return camera.width * camera.height * (BYTES_PER_PIXEL + BYTES_PER_PIXEL_CHANNEL * channels)


def available_bytes(device: torch.device) -> Optional[int]:
    """Memory a render on ``device`` can still take (CUDA: free device memory; CPU: the
    kernel's MemAvailable), or None where it cannot be told."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_render_fits(gaussians: Gaussians, camera: Camera, *, channels: int, device: torch.device) -> None:
    """Refuse, before anything is allocated, a render that needs more memory than ``device``
    has free: the image buffers (``channels`` feature channels) and the tile lists.

    Raises:
        FeatgsError: one line with the estimate, what is free, and what to do.
    """
    from featgs.errors import FeatgsError

    free = available_bytes(device)
    if free is None:
        return
    image = image_bytes(camera, channels)
    if image + len(gaussians) * tile_count(camera) * BYTES_PER_PAIR <= free:  # fits even if every Gaussian hit every tile
        return
    pairs = 0 if image > free else estimate_pairs(gaussians, camera)  # projecting is pointless then
    need = image + pairs * BYTES_PER_PAIR
    if need > free:
        count = f"{pairs / 1e6:.1f}M" if pairs >= 10**6 else f"{pairs:,}"
        lists = f", {count} (tile, Gaussian) pairs" if pairs else ""
        raise FeatgsError(
            f"a {camera.width}x{camera.height} render of {len(gaussians)} Gaussians with {channels} feature channels "
            f"needs about {_gb(need)} ({_gb(image)} of image buffers{lists}); {_gb(free)} is free on {device.type}; "
            f"expected a smaller camera (width, height)")


def _gb(n: int) -> str:
    return f"{n / 1e9:.3g} GB"
