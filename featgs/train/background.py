"""What lies behind the Gaussians: the background colour of training steps and of evaluation.

A render composites its colour over a background where it is not opaque. Transparent
(RGBA) datasets, such as NeRF-synthetic objects, have no captured background: training must
composite the target image over the *same* colour it renders over, or the Gaussians have to
paint the background themselves (screen-filling splats, slow steps, floaters). Choices:

- ``white`` / ``black``: one fixed colour, target and render alike;
- ``random``: a new uniform random colour every step (for transparent datasets: the Gaussians
  cannot explain any background, so empty space stays empty; for opaque images: pixels must
  be fully covered, which discourages holes);
- ``auto``: ``random`` for transparent datasets, ``black`` for opaque ones (as 3DGS).

Evaluation follows the NeRF-synthetic protocol: transparent datasets are scored over white;
opaque ones over the training's fixed colour (black after ``random``).
"""

from __future__ import annotations

import torch
from torch import Tensor


BACKGROUNDS = ("auto", "white", "black", "random")
_COLOURS = {"white": (1.0, 1.0, 1.0), "black": (0.0, 0.0, 0.0)}


def resolve_background(name: str, transparent: bool) -> str:
    """``name`` with "auto" decided by whether the dataset's images are transparent (RGBA)."""
    if name == "auto":
        return "random" if transparent else "black"
    return name


def eval_background(name: str, transparent: bool) -> tuple[float, float, float]:
    """[3] colour that test views are composited over and rendered over for scoring."""
    if transparent:
        return _COLOURS["white"]
    return _COLOURS.get(resolve_background(name, transparent), _COLOURS["black"])


def step_background(name: str, step: int, seed: int, device: torch.device) -> Tensor:
    """[3] float32 background of training step ``step``; ``name`` resolved (no "auto").

    Random colours are a function of (seed, step), so a resumed run sees the same ones.
    """
    if name == "random":
        gen = torch.Generator().manual_seed(seed * 7_919 + step)
        return torch.rand(3, generator=gen).to(device)
    return torch.tensor(_COLOURS[name], dtype=torch.float32, device=device)
