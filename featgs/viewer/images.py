"""Turning rendered maps into the pictures the browser shows (uint8 [H, W, 3] arrays)."""

from __future__ import annotations

import html
from typing import Sequence, Union

import numpy as np
import torch
from torch import Tensor

from featgs.pictures import to_uint8
from featgs.query.images import depth_to_rgb

HIGHLIGHT = (255, 64, 200)  # selected Gaussians: a magenta no scene object has
MASK = (0, 230, 255)  # a prompt's 2D mask: cyan


def depth_image(depth: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Expected depth [H, W] -> colours (the query package's turbo: near warm, far cool, empty black)."""
    return to_uint8(depth_to_rgb(torch.as_tensor(depth).float(), torch.as_tensor(alpha).float()))


def grey(rgb: np.ndarray, keep: float = 0.35) -> np.ndarray:
    """Desaturate and darken a uint8 picture, so an overlay stands out on it."""
    f = rgb.astype(np.float32)
    lum = f @ np.array([0.299, 0.587, 0.114], np.float32)
    out = 0.6 * (keep * f + (1.0 - keep) * lum[..., None])
    return (out + 0.5).astype(np.uint8)


def heat_overlay(rgb: np.ndarray, heat: Union[Tensor, np.ndarray], score: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The ``heat`` colours [H, W, 3] (0..1) of ``score`` [H, W] on a greyed ``rgb``: transparent
    at ``lo`` and below, opaque from halfway to ``hi`` up, so the scene stays readable around it."""
    s = np.asarray(score, dtype=np.float32).reshape(rgb.shape[:2])
    col = np.asarray(heat, dtype=np.float32) * 255.0
    a = np.clip(2.0 * (s - lo) / max(hi - lo, 1e-8), 0.0, 1.0)[..., None]
    out = grey(rgb).astype(np.float32) * (1.0 - a) + col * a
    return (out + 0.5).astype(np.uint8)


def tint(rgb: np.ndarray, mask: np.ndarray, colour: Sequence[int] = HIGHLIGHT, strength: float = 0.6) -> np.ndarray:
    """Blend ``colour`` into the pixels where ``mask`` [H, W] (bool or 0..1 weights) holds."""
    m = np.asarray(mask, dtype=np.float32).reshape(rgb.shape[:2])[..., None] * strength
    out = rgb.astype(np.float32) * (1.0 - m) + np.asarray(colour, np.float32) * m
    return (out + 0.5).astype(np.uint8)


def outline(mask: np.ndarray) -> np.ndarray:
    """[H, W] bool: the pixels of ``mask`` with a 4-neighbour outside it."""
    m = np.asarray(mask, dtype=bool)
    inner = m.copy()
    inner[1:] &= m[:-1]
    inner[:-1] &= m[1:]
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    return m & ~inner


def resize_nearest(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of the first two axes."""
    a = np.asarray(a)
    if a.shape[:2] == (height, width):
        return a
    rows = np.minimum((np.arange(height) + 0.5) * a.shape[0] / height, a.shape[0] - 1).astype(np.int64)
    cols = np.minimum((np.arange(width) + 0.5) * a.shape[1] / width, a.shape[1] - 1).astype(np.int64)
    return a[rows][:, cols]


def legend_html(names: Sequence[str], colours: np.ndarray) -> str:
    """A colour swatch and a name per label, as HTML for the GUI panel."""
    rows = []
    for name, c in zip(names, colours):
        r, g, b = (int(v) for v in c[:3])
        rows.append(
            f'<div style="display:flex;align-items:center;gap:6px;font-size:0.8em;line-height:1.4em">'
            f'<span style="display:inline-block;width:12px;height:12px;border:1px solid #333;'
            f'background:rgb({r},{g},{b})"></span>{html.escape(str(name))}</div>'
        )
    return '<div style="padding:2px 4px">' + "".join(rows) + "</div>"
