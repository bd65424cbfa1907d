"""One frame of the viewer: a render mode, the selection highlight and the prompt mask.

Scalar per-Gaussian quantities (is it selected? its relevancy) are drawn by rendering them
as a feature channel next to the colour, in the same rasterisation pass: the highlight costs
one extra channel, not a second render.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Generic, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.gaussians import Gaussians
from featgs.pictures import FeaturePCA, palette, to_uint8
from featgs.query.modes import RenderMode, mode_image
from featgs.render import render
from featgs.viewer import images

# The viewer's modes, as its dropdown names them (in this order); the selection is an overlay here.
LABELS: Dict[RenderMode, str] = {"rgb": "RGB", "depth": "Depth", "features": "Features (PCA)",
                                 "relevancy": "Relevancy", "segmentation": "Segmentation"}
MODES = tuple(LABELS.values())
_MODE_OF_LABEL: Dict[str, RenderMode] = {label: mode for mode, label in LABELS.items()}


def mode_of(name: str) -> RenderMode:
    """The render mode a dropdown label (or a mode's own name) stands for."""
    mode = _MODE_OF_LABEL.get(name, name)
    if mode not in LABELS:
        raise ValueError(f"unknown mode {name!r}; expected one of {', '.join(MODES)}")
    return mode  # type: ignore[return-value]


@dataclass
class Overlay:
    """What is drawn on top of a mode.

    Attributes:
        selected: [N] bool, Gaussians to highlight (None: nothing selected).
        relevancy: [N] float per-Gaussian relevancy of the current query (relevancy mode).
        relevancy_range: (lo, hi) of the heat ramp: transparent at lo, opaque from hi.
        mask: [h, w] bool 2D prompt mask to outline, at any size (None: none).
    """

    selected: Optional[Tensor] = None
    relevancy: Optional[Tensor] = None
    relevancy_range: Tuple[float, float] = (0.0, 1.0)
    mask: Optional[np.ndarray] = None


@dataclass
class Frame:
    image: np.ndarray  # [H, W, 3] uint8
    seconds: float  # rendering and colouring time
    legend: Dict[str, np.ndarray] = field(default_factory=dict)  # segmentation: name -> colour


class FeatureColours:
    """The per-Gaussian feature PCA colours of one field (fitted once, shared by every view).

    The fit is :meth:`featgs.pictures.FeaturePCA.fit_gaussians`, the one
    :meth:`featgs.query.FeatureField.render` uses, so the colours match its "features" mode.
    The decoder is linear, so each Gaussian's projected decoded feature, rendered as 3
    channels, is (up to the background) the projection of the rendered D-dim map: 3 channels
    instead of d.
    """

    def __init__(self, gaussians: Gaussians, samples: int = 20000) -> None:
        self.pca = FeaturePCA.fit_gaussians(gaussians, max_samples=samples)
        f = gaussians.features.detach().float()
        dec = gaussians.decoder
        decode = (lambda x: dec(x.float())) if dec is not None else (lambda x: x)
        self.per_gaussian = torch.cat([self.pca.project(decode(blk)) for blk in f.split(1 << 15)]) if len(f) else f.new_zeros(0, 3)


FieldT = TypeVar("FieldT")


class FeatureColourTable(Generic[FieldT]):
    """The viewer's colour table: the feature colours of the scene's current field, fitted on
    first use and refitted when an edit or undo brings another field (None without features).

    Args:
        gaussians_of: the Gaussians of a field.
    """

    def __init__(self, gaussians_of: Callable[[FieldT], Gaussians]) -> None:
        self._gaussians_of = gaussians_of
        self._lock = threading.Lock()
        self._entry: Tuple[Optional[FieldT], Optional[FeatureColours]] = (None, None)

    def __call__(self, field: FieldT) -> Optional[FeatureColours]:
        g = self._gaussians_of(field)
        if g.feature_dim == 0 or len(g) == 0:
            return None
        with self._lock:
            if self._entry[0] is field:
                return self._entry[1]
            colours = FeatureColours(g)
            self._entry = (field, colours)
            return colours


def _channels(g: Gaussians, columns: List[Tensor]) -> Gaussians:
    """``g`` carrying the given [N] or [N, k] columns as its (undecoded) features.

    The columns may live anywhere (a selection's mask is on the CPU, a query's relevancy and
    the feature colours on the field's device); they go to ``g``'s device, where the render is.
    """
    cols = [c.to(device=g.device, dtype=torch.float32).reshape(len(g), -1) for c in columns]
    return g.with_features(torch.cat(cols, 1) if cols else g.features.new_zeros(len(g), 0), None)


@torch.no_grad()
def draw(
    gaussians: Gaussians,
    camera: Camera,
    mode: str,
    overlay: Overlay,
    *,
    feature_colours: Optional[FeatureColours] = None,
    segment: Optional[Callable[[Camera], Tensor]] = None,
    label_names: Sequence[str] = (),
) -> Frame:
    """Render ``mode`` (a render mode or its dropdown label) at ``camera`` with the overlay.

    The mode's picture is :func:`featgs.query.modes.mode_image`'s; here relevancy is laid over
    the greyed colour image (transparent below its range), segmentation blended with it, and a
    mode without what it needs (no query, no labels) shows the greyed colour image.

    Args:
        segment: for segmentation: a function camera -> [H, W] int64 label index (-1: none),
            indexing ``label_names``.
    """
    t0 = time.perf_counter()
    mode = mode_of(mode)
    cols: List[Tensor] = []
    sel_col = rel_col = pca_col = None
    if overlay.selected is not None and bool(overlay.selected.any()):
        sel_col = len(cols)
        cols.append(overlay.selected)
    if mode == "relevancy" and overlay.relevancy is not None:
        rel_col = len(cols)
        cols.append(overlay.relevancy)
    if mode == "features" and feature_colours is not None:
        pca_col = len(cols)
        cols.append(feature_colours.per_gaussian)
    g = _channels(gaussians, cols)
    out = render(g, camera, features=bool(cols))
    alpha = out.alpha[..., 0].cpu()

    def channel(i: int, k: int = 1) -> Tensor:
        c = out.features[..., i:i + k].cpu() / alpha.clamp_min(1e-6)[..., None]  # un-premultiplied by coverage
        return c.squeeze(-1) if k == 1 else c

    rgb = to_uint8(mode_image("rgb", out))
    legend: Dict[str, np.ndarray] = {}
    if mode in ("rgb", "depth"):
        img = to_uint8(mode_image(mode, out))
    elif mode == "features":
        img = rgb if pca_col is None else to_uint8(mode_image(mode, out, pca=feature_colours.pca,
                                                              pca_coords=channel(pca_col, 3)))
    elif mode == "relevancy":
        if rel_col is None:
            img = images.grey(rgb)
        else:
            score = channel(rel_col)
            heat = mode_image(mode, out, relevancy=score, relevancy_range=overlay.relevancy_range)
            img = images.heat_overlay(rgb, heat, score.numpy(), *overlay.relevancy_range)
    else:  # segmentation
        if segment is None or not label_names:  # (no labels: the mode is not offered)
            img = images.grey(rgb)
        else:
            ids = segment(camera).cpu()
            seg = to_uint8(mode_image(mode, out, labels=ids, num_labels=len(label_names)))
            img = (0.8 * seg + 0.2 * rgb + 0.5).astype(np.uint8)
            colours = palette(len(label_names))
            present = np.unique(ids[(ids >= 0) & (ids < len(label_names))].numpy())
            legend = {str(label_names[i]): colours[i] for i in present}
    if sel_col is not None:
        cover = channel(sel_col).numpy() * alpha.numpy()  # share of the pixel's colour from the selection
        img = images.tint(img, cover > 0.5)
    if overlay.mask is not None:
        m = images.resize_nearest(overlay.mask, camera.height, camera.width)
        img = images.tint(img, m, images.MASK, 0.35)
        edge = images.outline(m)
        img[edge] = images.MASK
    return Frame(image=img, seconds=time.perf_counter() - t0, legend=legend)
