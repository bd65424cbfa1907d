"""Rendering Gaussians to colour, depth, alpha, features and top-K blend weights.

One entry point, :func:`render`, with backends chosen by name:

- ``torch``: the pure-PyTorch reference (CPU or GPU, differentiable). The oracle that every
  faster backend is tested against.
"""

from featgs.render.api import BACKENDS, render
from featgs.render.output import RenderOutput

__all__ = ["BACKENDS", "RenderOutput", "render"]
