"""Render modes: one vocabulary, and one implementation of the picture each mode draws.

A mode turns one rendered view (a :class:`~featgs.render.RenderOutput`) and what the mode
needs besides it into an [H, W, 3] float picture in 0..1, on the CPU:

======================  ====================================================================
``rgb``                 the colour render
``depth``               expected depth, turbo: near warm, far cool, empty pixels black
``features``            the view's features in a fitted :class:`~featgs.pictures.FeaturePCA`'s
                        coordinates, as colour (one PCA per scene, so all views match)
``relevancy``           a per-pixel relevancy map as a heat map, transparent-blue at ``lo``,
                        red at ``hi``
``segmentation``        per-pixel label indices in :func:`~featgs.pictures.palette` colours
``selection``           the colour render, dimmed outside a selection's mask
======================  ====================================================================

:meth:`featgs.query.FeatureField.render` returns these pictures; the browser viewer
(:mod:`featgs.viewer.frames`) draws them and lays its highlights on top. How the inputs are
rendered (one pass with extra channels, or one per quantity) is the caller's choice.
"""

from __future__ import annotations

import typing
from typing import Literal, Optional, Tuple

import torch
from torch import Tensor

from featgs.errors import FeatgsError
from featgs.pictures import FeaturePCA, colorize_labels, palette
from featgs.query.images import depth_to_rgb, heat
from featgs.render import RenderOutput

RenderMode = Literal["rgb", "depth", "features", "relevancy", "segmentation", "selection"]
RENDER_MODES: Tuple[RenderMode, ...] = typing.get_args(RenderMode)


def check_mode(mode: str) -> RenderMode:
    """``mode`` when it names a render mode; else a FeatgsError that lists them."""
    if mode not in RENDER_MODES:
        raise FeatgsError(f"render mode must be one of {', '.join(RENDER_MODES)}, got {mode!r}")
    return typing.cast(RenderMode, mode)


def rgb_image(out: RenderOutput) -> Tensor:
    return out.rgb.clamp(0, 1).cpu()


def depth_image(out: RenderOutput) -> Tensor:
    return depth_to_rgb(out.depth[..., 0].cpu(), out.alpha[..., 0].cpu())


def features_image(coords: Tensor, pca: FeaturePCA) -> Tensor:
    """``coords`` [H, W, 3]: the view's features projected by ``pca`` (:meth:`FeaturePCA.project`)."""
    return pca.colour(coords).cpu()


def relevancy_image(relevancy: Tensor, lo: float, hi: float) -> Tensor:
    """``relevancy`` [H, W] mapped from ``lo``..``hi`` to the heat ramp."""
    return heat(relevancy.cpu(), lo, hi)


def segmentation_image(labels: Tensor, num_labels: int) -> Tensor:
    """``labels`` [H, W] int indices of ``num_labels`` labels (-1: none, black)."""
    return torch.from_numpy(colorize_labels(labels, palette(num_labels))).float() / 255


def selection_image(rgb: Tensor, inside: Tensor) -> Tensor:
    """``rgb`` [H, W, 3] dimmed where ``inside`` [H, W] bool does not hold."""
    return torch.where(inside.cpu()[..., None], rgb, 0.25 * rgb + 0.15)


def mode_image(
    mode: RenderMode,
    out: Optional[RenderOutput],
    *,
    relevancy: Optional[Tensor] = None,
    relevancy_range: Tuple[float, float] = (0.0, 1.0),
    labels: Optional[Tensor] = None,
    num_labels: int = 0,
    pca: Optional[FeaturePCA] = None,
    pca_coords: Optional[Tensor] = None,
    inside: Optional[Tensor] = None,
) -> Tensor:
    """[H, W, 3] float picture in 0..1 (CPU) of ``mode``.

    Args:
        out: the view (colour, depth, alpha); ``relevancy`` and ``segmentation`` do not read it.
        relevancy, relevancy_range: [H, W] per-pixel relevancy and the (lo, hi) of its ramp.
        labels, num_labels: [H, W] int64 label index per pixel (-1: none) and how many labels.
        pca, pca_coords: the scene's fitted PCA and the view's features in its coordinates
            [H, W, 3].
        inside: [H, W] bool, the pixels of the selection.
    Raises:
        FeatgsError: an unknown mode, or a mode without what it needs.
    """
    mode = check_mode(mode)
    if mode in ("rgb", "depth", "selection") and out is None:
        raise _lacks(mode, "a render")
    if mode == "rgb":
        return rgb_image(out)
    if mode == "depth":
        return depth_image(out)
    if mode == "features":
        if pca is None or pca_coords is None:
            raise _lacks(mode, "a fitted PCA and the view's coordinates in it")
        return features_image(pca_coords, pca)
    if mode == "relevancy":
        if relevancy is None:
            raise _lacks(mode, "a relevancy map")
        return relevancy_image(relevancy, *relevancy_range)
    if mode == "segmentation":
        if labels is None:
            raise _lacks(mode, "label indices")
        return segmentation_image(labels, num_labels)
    if inside is None:
        raise _lacks(mode, "the selection's mask")
    return selection_image(rgb_image(out), inside)


def _lacks(mode: str, what: str) -> FeatgsError:
    return FeatgsError(f"render mode {mode!r} needs {what}")
