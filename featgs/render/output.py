"""What every renderer backend returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from torch import Tensor


@dataclass
class RenderOutput:
    """One rendered view.

    Attributes:
        rgb: [H, W, 3] colour, background composited in.
        alpha: [H, W, 1] accumulated opacity (1 - final transmittance).
        depth: [H, W, 1] expected depth: sum(w * z) / alpha, 0 where alpha == 0
            (z is the camera-space depth of each Gaussian's centre).
        features: [H, W, D] rendered features (decoded to D when the Gaussians carry a
            decoder), or None when the Gaussians have no features or they were not asked for.
        topk_ids: [H, W, K] int64 ids of the Gaussians with the K largest blend weights at
            each pixel, largest first, -1 where a pixel has fewer than K contributors; None
            unless requested.
        topk_weights: [H, W, K] their blend weights ``w = alpha * T`` (0 where id is -1).
        info: what densification strategies need: ``means2d`` [1, N, 2] (grad retained
            when it requires grad), ``radii`` [1, N, 2] int32 (0 = culled), ``depths`` [1, N],
            ``width``, ``height``, ``n_cameras`` (1), ``gaussian_ids`` (None: not packed).
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    features: Optional[Tensor] = None
    topk_ids: Optional[Tensor] = None
    topk_weights: Optional[Tensor] = None
    info: Dict[str, Any] = field(default_factory=dict)
