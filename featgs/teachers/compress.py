"""A feature cache compressed to its top principal components.

Layout, beside the source cache ``features/<name>/``::

    features/<name>.pca<r>/<image>.safetensors   key "features": [r, h, w] float16 coefficients
    features/<name>.pca<r>/pca.safetensors       "basis" [D, r], "mean" [D] float32
    features/<name>.pca<r>/meta.json             written last: source identity, r, images, errors

A map is ``basis @ coefficients + mean``: D channels back from r. Teacher maps are highly
redundant (a few dozen components carry most of a SAM or CLIP map's variance), so r << D
keeps them to within a small error at r/D of the size.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor
from tqdm import tqdm

from featgs.atomic import atomic_write_bytes, atomic_write_text
from featgs.errors import FeatgsError
from featgs.teachers.cache import KEY, META, SUFFIX, FeatureCache
from featgs.teachers.pca import flat_map, teacher_pca

BASIS = "pca.safetensors"


@dataclass(frozen=True)
class CompressionReport:
    """What compression kept.

    Attributes:
        relative_error: sqrt(sum |x - x_hat|^2 / sum |x|^2) over every feature of every map.
        mean_cosine: mean over pixels of cos(x, x_hat).
        variance_kept: share of the features' variance in the kept components.
        bytes_before, bytes_after: sizes of the map files (after: with the basis file).
    """

    folder: Path
    images: int
    source_dim: int
    dim: int
    bytes_before: int
    bytes_after: int
    relative_error: float
    mean_cosine: float
    variance_kept: float


class CompressedCache:
    """Reads a compressed cache; :meth:`load` gives the D-channel reconstruction of a map."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._basis: Optional[tuple[Tensor, Tensor]] = None

    @property
    def meta(self) -> Optional[dict[str, Any]]:
        """The parsed meta.json, or None while the compressed cache is absent or incomplete."""
        try:
            return json.loads((self.folder / META).read_text())
        except (OSError, ValueError):
            return None

    def load(self, name: str) -> Tensor:
        """[D, h, w] float16: the map of image ``name`` rebuilt from its components."""
        if self._basis is None:
            with safe_open(str(self.folder / BASIS), framework="pt") as f:
                self._basis = f.get_tensor("basis"), f.get_tensor("mean")
        basis, mean = self._basis
        path = self.folder / f"{name}{SUFFIX}"
        try:
            with safe_open(str(path), framework="pt") as f:
                coefficients = f.get_tensor(KEY)
        except FileNotFoundError:
            raise FeatgsError(f"{path}: no compressed features for image {name!r}") from None
        r, h, w = coefficients.shape
        return (basis @ coefficients.float().reshape(r, -1) + mean[:, None]).reshape(-1, h, w).half()


def compressed_folder(cache: FeatureCache, dim: int) -> Path:
    return cache.folder.with_name(f"{cache.folder.name}.pca{dim}")


@torch.no_grad()
def compress_cache(cache: FeatureCache, dim: int, progress: bool = True) -> CompressionReport:
    """Write the ``dim``-component compression of a complete cache and measure what it loses."""
    meta = cache.meta
    if meta is None:
        raise FeatgsError(f"{cache.folder}: no complete feature cache to compress; build it first "
                          f"(featgs features extract)")
    D = int(meta["dim"])
    if not 1 <= dim < D:
        raise FeatgsError(f"--dim must be between 1 and {D - 1} for {D}-channel features, got {dim}")
    names = sorted(meta["images"])
    basis, mean, kept = teacher_pca([lambda n=n: cache.load(n) for n in names], dim, progress=progress)
    folder = compressed_folder(cache, dim)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    atomic_write_bytes(folder / BASIS, save({"basis": basis.contiguous(), "mean": mean.contiguous()}))
    err2 = norm2 = cos_sum = 0.0
    pixels = bytes_before = 0
    for name in tqdm(names, desc=f"compress {cache.folder.name}", unit="image", disable=not progress):
        original = cache.load(name)
        _, h, w = original.shape
        x = flat_map(original)
        coefficients = ((x - mean) @ basis).half()
        atomic_write_bytes(folder / f"{name}{SUFFIX}", save({KEY: coefficients.T.reshape(dim, h, w).contiguous()}))
        x_hat = (coefficients.float() @ basis.T + mean).half().float()
        err2 += float(((x - x_hat) ** 2).sum())
        norm2 += float((x ** 2).sum())
        cos_sum += float(torch.nn.functional.cosine_similarity(x, x_hat, dim=1).sum())
        pixels += x.shape[0]
        bytes_before += cache.path(name).stat().st_size
    bytes_after = sum(p.stat().st_size for p in folder.iterdir())
    report = CompressionReport(folder=folder, images=len(names), source_dim=D, dim=dim, bytes_before=bytes_before,
                               bytes_after=bytes_after, relative_error=(err2 / max(norm2, 1e-30)) ** 0.5,
                               mean_cosine=cos_sum / max(pixels, 1), variance_kept=kept)
    source = {k: meta[k] for k in ("teacher", "model_id", "key", "dim")}
    atomic_write_text(folder / META, json.dumps({
        "format": 1, "source": source, "dim": dim, "images": {n: meta["images"][n] for n in names},
        "variance_kept": kept, "relative_error": report.relative_error, "mean_cosine": report.mean_cosine,
    }, indent=1) + "\n")
    return report
