"""Rendering Gaussians to colour, depth, alpha, features and top-K blend weights.

One entry point, :func:`render`, with backends chosen by name:

- ``torch``: the pure-PyTorch reference (CPU or GPU, differentiable). The oracle that every
  faster backend is tested against.
- ``gsplat``: gsplat's CUDA rasteriser (features in chunks of 32 channels); the baseline.
- ``cuda``: ours (``cuda/``): geometry rasterised once into top-K weights, features gathered.
- ``cuda-emulated``: the same kernel source compiled with the host compiler and run on the
  CPU with CUDA semantics (``cuda/emulation.h``): for testing the kernels without a GPU, not
  for speed.
"""

from featgs.render.api import BACKENDS, render
from featgs.render.budget import BYTES_PER_PAIR, estimate_pairs
from featgs.render.output import RenderOutput

__all__ = ["BACKENDS", "BYTES_PER_PAIR", "RenderOutput", "estimate_pairs", "render"]
