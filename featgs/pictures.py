"""Pictures people look at: feature maps as colour, label maps with a legend, contact sheets."""

from __future__ import annotations

import colorsys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor


def to_uint8(image: Tensor) -> np.ndarray:
    """[H, W, 3] float in 0..1 -> uint8 array."""
    return (image.detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


class FeaturePCA:
    """A fixed 3-component projection of features to RGB, so every view shares its colours.

    Fitted once on per-Gaussian (decoded) features; colours are stretched by the 1st/99th
    percentiles of the fitting data.
    """

    def __init__(self, samples: Tensor):
        x = samples.float()
        self.mean = x.mean(0)
        _, _, v = torch.linalg.svd(x - self.mean, full_matrices=False)
        self.basis = v[:3].T  # [D, 3]
        if self.basis.shape[1] < 3:
            self.basis = torch.cat([self.basis, torch.zeros(x.shape[1], 3 - self.basis.shape[1])], 1)
        proj = (x - self.mean) @ self.basis
        self.lo = torch.quantile(proj, 0.01, dim=0)
        self.hi = torch.quantile(proj, 0.99, dim=0)

    def __call__(self, features: Tensor) -> Tensor:
        """[H, W, D] -> [H, W, 3] in 0..1."""
        p = (features.float() - self.mean) @ self.basis
        return ((p - self.lo) / (self.hi - self.lo).clamp_min(1e-8)).clamp(0, 1)


def palette(n: int) -> np.ndarray:
    """[n, 3] uint8 distinct colours (golden-ratio hues)."""
    cols = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.65 if i % 2 else 0.9, 0.95 if i % 3 else 0.75)
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.array(cols, dtype=np.uint8).reshape(n, 3)


def colorize_labels(labels: Tensor, colors: np.ndarray) -> np.ndarray:
    """[H, W] int ids (-1 = none, black) -> [H, W, 3] uint8."""
    ids = labels.cpu().numpy()
    out = np.zeros(ids.shape + (3,), dtype=np.uint8)
    ok = ids >= 0
    out[ok] = colors[ids[ok]]
    return out


def contact_sheet(
    panels: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    legend: Optional[Dict[str, np.ndarray]] = None,
    scale: int = 2,
    footer: str = "",
) -> Image.Image:
    """Panels side by side, each titled, scaled up ``scale`` x (nearest), with an optional legend."""
    font = ImageFont.load_default()
    imgs: List[Image.Image] = [Image.fromarray(p).resize((p.shape[1] * scale, p.shape[0] * scale), Image.NEAREST) for p in panels]
    w = sum(i.width for i in imgs) + 8 * (len(imgs) + 1)
    h = max(i.height for i in imgs)
    legend_rows = len(legend) if legend else 0
    legend_w = 150 if legend else 0
    sheet = Image.new("RGB", (w + legend_w, max(h + 40, 24 + 16 * legend_rows) + (16 if footer else 0)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    x = 8
    for img, title in zip(imgs, titles):
        sheet.paste(img, (x, 24))
        draw.text((x, 6), title, fill=(0, 0, 0), font=font)
        x += img.width + 8
    if legend:
        draw.text((x, 6), "labels", fill=(0, 0, 0), font=font)
        for k, (name, col) in enumerate(legend.items()):
            y = 24 + 16 * k
            draw.rectangle([x, y, x + 12, y + 12], fill=tuple(int(c) for c in col), outline=(0, 0, 0))
            draw.text((x + 18, y), name, fill=(0, 0, 0), font=font)
    if footer:
        draw.text((8, sheet.height - 14), footer, fill=(60, 60, 60), font=font)
    return sheet
