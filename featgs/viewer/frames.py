"""One frame of the viewer: a render mode, the selection highlight and the prompt mask.

Scalar per-Gaussian quantities (is it selected? its relevancy) are drawn by rendering them
as a feature channel next to the colour, in the same rasterisation pass: the highlight costs
one extra channel, not a second render.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from featgs.camera import Camera
from featgs.gaussians import Gaussians
from featgs.pictures import FeaturePCA, palette
from featgs.render import render
from featgs.viewer import images

MODES = ("RGB", "Depth", "Features (PCA)", "Relevancy", "Segmentation")


@dataclass
class Overlay:
    """What is drawn on top of a mode.

    Attributes:
        selected: [N] bool, Gaussians to highlight (None: nothing selected).
        relevancy: [N] float per-Gaussian relevancy of the current query (relevancy mode).
        relevancy_range: (lo, hi) of the heat ramp: transparent at lo, opaque from hi.
        mask: [h, w] bool 2D prompt mask to outline, at any size (None: none).
    """

    selected: Optional[torch.Tensor] = None
    relevancy: Optional[torch.Tensor] = None
    relevancy_range: tuple = (0.0, 1.0)
    mask: Optional[np.ndarray] = None


@dataclass
class Frame:
    image: np.ndarray  # [H, W, 3] uint8
    seconds: float  # rendering and colouring time
    legend: Dict[str, np.ndarray] = field(default_factory=dict)  # segmentation: name -> colour


class FeatureColours:
    """The per-Gaussian feature PCA colours of one field (fitted once, shared by every view).

    The fit is :class:`featgs.pictures.FeaturePCA` on the same sample of decoded features
    that :meth:`featgs.query.FeatureField.render` uses, so the colours match its "features"
    mode. The decoder is linear, so each Gaussian's projected decoded feature, rendered as 3
    channels, is (up to the background) the projection of the rendered D-dim map: 3 channels
    instead of d.
    """

    def __init__(self, gaussians: Gaussians, samples: int = 20000) -> None:
        f = gaussians.features.detach().float()
        dec = gaussians.decoder
        decode = (lambda x: dec(x.float())) if dec is not None else (lambda x: x)
        pick = torch.randperm(len(f), generator=torch.Generator().manual_seed(0))[:samples]
        self.pca = FeaturePCA(decode(f[pick]))
        basis, mean = self.pca.basis, self.pca.mean
        self.per_gaussian = torch.cat([(decode(blk) - mean) @ basis for blk in f.split(1 << 15)]) if len(f) else f.new_zeros(0, 3)

    def colour(self, projected: torch.Tensor) -> np.ndarray:
        x = (projected - self.pca.lo) / (self.pca.hi - self.pca.lo).clamp_min(1e-8)
        return images.to_uint8(x.clamp(0, 1).numpy())


def _channels(g: Gaussians, columns: List[torch.Tensor]) -> Gaussians:
    """``g`` carrying the given [N] or [N, k] columns as its (undecoded) features."""
    cols = [c.float().reshape(len(g), -1) for c in columns]
    return g.with_features(torch.cat(cols, 1) if cols else g.features.new_zeros(len(g), 0), None)


@torch.no_grad()
def draw(
    gaussians: Gaussians,
    camera: Camera,
    mode: str,
    overlay: Overlay,
    *,
    feature_colours: Optional[FeatureColours] = None,
    segment=None,
    label_names: Sequence[str] = (),
) -> Frame:
    """Render ``mode`` at ``camera`` with the overlay.

    Args:
        segment: for "Segmentation": a function camera -> [H, W] int64 label index (-1: none),
            indexing ``label_names``.
    """
    t0 = time.perf_counter()
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    cols: List[torch.Tensor] = []
    sel_col = rel_col = pca_col = None
    if overlay.selected is not None and bool(overlay.selected.any()):
        sel_col = len(cols)
        cols.append(overlay.selected)
    if mode == "Relevancy" and overlay.relevancy is not None:
        rel_col = len(cols)
        cols.append(overlay.relevancy)
    if mode == "Features (PCA)" and feature_colours is not None:
        pca_col = len(cols)
        cols.append(feature_colours.per_gaussian)
    g = _channels(gaussians, cols)
    out = render(g, camera, features=bool(cols))
    feats = out.features
    alpha = out.alpha[..., 0].clamp_min(1e-6)

    def channel(i: int, k: int = 1) -> np.ndarray:
        c = feats[..., i:i + k] / alpha[..., None]  # un-premultiplied by coverage
        return c.squeeze(-1).numpy() if k == 1 else c.numpy()

    rgb = images.to_uint8(out.rgb.numpy())
    legend: Dict[str, np.ndarray] = {}
    if mode == "RGB":
        img = rgb
    elif mode == "Depth":
        img = images.depth_image(out.depth[..., 0].numpy(), out.alpha[..., 0].numpy())
    elif mode == "Features (PCA)":
        img = feature_colours.colour(torch.from_numpy(channel(pca_col, 3))) if pca_col is not None else rgb
    elif mode == "Relevancy":
        if rel_col is None:
            img = images.grey(rgb)
        else:
            lo, hi = overlay.relevancy_range
            img = images.heat_overlay(rgb, channel(rel_col), lo, hi)
    else:  # Segmentation
        if segment is None or not label_names:  # (no labels: the mode is not offered)
            img = images.grey(rgb)
        else:
            ids = segment(camera).cpu().numpy()
            colours = palette(len(label_names))
            img = np.zeros(ids.shape + (3,), np.uint8)
            ok = (ids >= 0) & (ids < len(label_names))
            img[ok] = colours[ids[ok]]
            img = (0.8 * img + 0.2 * rgb + 0.5).astype(np.uint8)
            present = np.unique(ids[ok])
            legend = {str(label_names[i]): colours[i] for i in present}
    if sel_col is not None:
        cover = channel(sel_col) * out.alpha[..., 0].numpy()  # share of the pixel's colour from the selection
        img = images.tint(img, cover > 0.5)
    if overlay.mask is not None:
        m = images.resize_nearest(overlay.mask, camera.height, camera.width)
        img = images.tint(img, m, images.MASK, 0.35)
        edge = images.outline(m)
        img[edge] = images.MASK
    return Frame(image=img, seconds=time.perf_counter() - t0, legend=legend)
