"""Pictures people look at: feature maps as colour, label maps with a legend, contact sheets."""

from __future__ import annotations

import colorsys
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from featgs.gaussians import Gaussians


def to_uint8(image: Union[Tensor, np.ndarray]) -> np.ndarray:
    """[H, W, 3] float in 0..1 (a tensor on any device, or an array) -> uint8 array."""
    return (torch.as_tensor(image).detach().float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()


class FeaturePCA:
    """A fixed 3-component projection of features to RGB, so every view shares its colours.

    Fitted once on per-Gaussian (decoded) features; colours are stretched by the 1st/99th
    percentiles of the fitting data. Its tensors stay where the samples were (the CPU for
    :meth:`fit_gaussians`); the methods take them to the device of what they are given.
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

    @classmethod
    def fit_gaussians(cls, gaussians: "Gaussians", max_samples: int = 20000, seed: int = 0) -> "FeaturePCA":
        """The PCA of the decoded features of a random sample of ``max_samples`` Gaussians
        (``seed`` picks it, so a scene always gets the same colours): what every picture of a
        scene's features (field renders, the viewer, evaluation sheets) uses."""
        f = gaussians.features.detach().float()
        pick = torch.randperm(len(f), generator=torch.Generator().manual_seed(seed))[:max_samples].to(f.device)
        x = f[pick]
        dec = gaussians.decoder
        if dec is not None:
            x = x @ dec.weight.detach().float().to(x.device).T + dec.bias.detach().float().to(x.device)
        return cls(x.cpu())

    def project(self, features: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None) -> Tensor:
        """[..., D] features -> [..., 3] coordinates in the components.

        With a decoder's ``weight`` [D, d] and ``bias`` [D], ``features`` are the [..., d]
        undecoded ones (e.g. a render without its decoder): the projection of their decoded
        feature, computed without building the [..., D] map.
        """
        basis = self.basis.to(features.device)
        if weight is None:
            return (features.float() - self.mean.to(features.device)) @ basis
        proj = features.float() @ (weight.T @ basis)
        return proj + ((bias - self.mean.to(proj.device)) @ basis)

    def colour(self, coords: Tensor) -> Tensor:
        """[..., 3] coordinates (from :meth:`project`) -> RGB in 0..1."""
        lo, span = self.lo.to(coords.device), (self.hi - self.lo).clamp_min(1e-8).to(coords.device)
        return ((coords - lo) / span).clamp(0, 1)

    def __call__(self, features: Tensor) -> Tensor:
        """[H, W, D] -> [H, W, 3] in 0..1."""
        return self.colour(self.project(features))


def palette(n: int) -> np.ndarray:
    """[n, 3] uint8 distinct colours (golden-ratio hues)."""
    cols = []
    for i in range(n):
        h = (i * 0.618033988749895) % 1.0
        r, g, b = colorsys.hsv_to_rgb(h, 0.65 if i % 2 else 0.9, 0.95 if i % 3 else 0.75)
        cols.append((int(r * 255), int(g * 255), int(b * 255)))
    return np.array(cols, dtype=np.uint8).reshape(n, 3)


def colorize_labels(labels: Tensor, colors: np.ndarray) -> np.ndarray:
    """[H, W] int ids (-1 or past the colours = none, black) -> [H, W, 3] uint8."""
    ids = torch.as_tensor(labels).cpu().numpy()
    out = np.zeros(ids.shape + (3,), dtype=np.uint8)
    ok = (ids >= 0) & (ids < len(colors))
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
