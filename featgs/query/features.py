"""Per-Gaussian features seen through the run's decoder, scored against texts or seed vectors.

A run stores d-dim features and a linear decoder d -> D (D = 384 for the labels teacher).
Cosines to a D-dim vector ``t`` need only ``decoded . t = f . (W^T t) + b . t`` and the norm of
each decoded feature, so the [N, D] decoded table is never materialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians

_CHUNK = 1 << 14  # Gaussians per block when computing decoded norms


@dataclass(frozen=True)
class FeatureSpace:
    """The decoded feature of Gaussian i is ``weight @ features[i] + bias``.

    Attributes:
        features: [N, d] stored features.
        weight: [D, d] decoder weight (the identity without a decoder).
        bias: [D] decoder bias (zeros without a decoder).
        norms: [N] norms of the decoded features (0 for a Gaussian whose feature is 0).
    """

    features: Tensor
    weight: Tensor
    bias: Tensor
    norms: Tensor

    @classmethod
    def of(cls, gaussians: Gaussians, channels: Optional[Tuple[int, int]] = None) -> "FeatureSpace":
        """The feature space of ``gaussians``, or of decoded channels ``[start, end)`` only
        (one teacher's block in a run of several); raises when they carry no features."""
        if gaussians.feature_dim == 0:
            raise FeatgsError("this run's Gaussians carry no features (trained with --teacher none?): nothing to query")
        f = gaussians.features.detach().float()
        dec = gaussians.decoder
        if dec is None:
            weight = torch.eye(f.shape[1], dtype=f.dtype, device=f.device)
            bias = torch.zeros(f.shape[1], dtype=f.dtype, device=f.device)
        else:
            weight, bias = dec.weight.detach().float().to(f.device), dec.bias.detach().float().to(f.device)
        if channels is not None:
            start, end = channels
            if not 0 <= start < end <= weight.shape[0]:
                raise FeatgsError(f"feature channels {start}..{end} do not fit the {weight.shape[0]} decoded channels")
            weight, bias = weight[start:end], bias[start:end]
        norms = torch.cat([(blk @ weight.T + bias).norm(dim=1) for blk in f.split(_CHUNK)]) if len(f) else f.new_zeros(0)
        return cls(features=f, weight=weight, bias=bias, norms=norms)

    @property
    def dim(self) -> int:
        """D, the dimension texts and seed vectors live in."""
        return self.weight.shape[0]

    def decode(self, f: Tensor) -> Tensor:
        """[..., d] stored (or rendered, undecoded) features -> [..., D]."""
        return f.float() @ self.weight.T + self.bias

    def dots(self, f: Tensor, vectors: Tensor) -> Tensor:
        """[..., T] decoded(f) . vectors[t] for features ``f`` [..., d] and ``vectors`` [T, D]."""
        v = vectors.float().to(self.weight.device)
        return f.float() @ (self.weight.T @ v.T) + self.bias @ v.T

    def cosine_of(self, f: Tensor, vectors: Tensor) -> Tensor:
        """[..., T] cosine of decoded(``f``) to each row of ``vectors`` [T, D], for stored or
        rendered features ``f`` [..., d], without decoding them: the norm of ``W f + b`` is
        ``sqrt(f.(W^T W) f + 2 (W^T b).f + b.b)``."""
        v = F.normalize(vectors.float().to(self.weight.device), dim=1)
        f = f.float()
        w, b = self.weight, self.bias
        squared = ((f @ (w.T @ w)) * f).sum(-1) + 2 * f @ (w.T @ b) + b @ b
        return self.dots(f, v) / squared.clamp_min(1e-24).sqrt()[..., None]

    def cosine(self, vectors: Tensor) -> Tensor:
        """[N, T] cosine of every Gaussian's decoded feature to each row of ``vectors`` [T, D]."""
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise FeatgsError(f"expected [T, {self.dim}] vectors in the run's feature space, got {tuple(vectors.shape)}")
        v = F.normalize(vectors.float().to(self.weight.device), dim=1)
        return self.dots(self.features, v) / self.norms.clamp_min(1e-12)[:, None]
