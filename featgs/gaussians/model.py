"""The Gaussian scene: geometry, colour (spherical harmonics) and a feature per Gaussian.

Parameters are stored in their unconstrained form, as gsplat does, so that an optimiser can
act on them directly: log-scales, unnormalised wxyz quaternions, opacity logits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Dict, Optional

import torch
from torch import Tensor

from featgs.errors import FeatgsError

SH_C0 = 0.28209479177387814


def num_sh_bases(degree: int) -> int:
    """(degree + 1)^2 coefficients per colour channel."""
    return (degree + 1) ** 2


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """Degree-0 SH coefficient whose colour is ``rgb`` (inverse of 0.5 + C0 * f_dc)."""
    return (rgb - 0.5) / SH_C0


@dataclass
class LinearDecoder:
    """The 1x1 "speed-up" decoder of Feature 3DGS: ``f_D = weight @ f_d + bias``.

    Attributes:
        weight: [D, d]
        bias: [D]
    """

    weight: Tensor
    bias: Tensor

    def __post_init__(self) -> None:
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise FeatgsError(
                f"decoder: weight must be [D, d] and bias [D], got {tuple(self.weight.shape)} and {tuple(self.bias.shape)}"
            )

    @property
    def in_dim(self) -> int:
        return self.weight.shape[1]

    @property
    def out_dim(self) -> int:
        return self.weight.shape[0]

    def __call__(self, f: Tensor) -> Tensor:
        """[..., d] -> [..., D]."""
        return f @ self.weight.T + self.bias

    def to(self, *args, **kwargs) -> "LinearDecoder":
        return LinearDecoder(self.weight.to(*args, **kwargs), self.bias.to(*args, **kwargs))


@dataclass
class Gaussians:
    """N Gaussians in world space.

    Attributes:
        means: [N, 3] centres.
        scales: [N, 3] log standard deviations along the local axes.
        quats: [N, 4] rotations, wxyz, not necessarily normalised.
        opacities: [N] opacity logits.
        sh0: [N, 1, 3] degree-0 SH coefficients (colour = 0.5 + C0 * sh0, clamped at 0).
        shN: [N, K, 3] higher-order SH, K = (degree + 1)^2 - 1 (K = 0 for degree 0).
        features: [N, d] per-Gaussian features, d >= 0.
        decoder: optional linear d -> D map applied to rendered features.
    """

    means: Tensor
    scales: Tensor
    quats: Tensor
    opacities: Tensor
    sh0: Tensor
    shN: Tensor
    features: Tensor
    decoder: Optional[LinearDecoder] = None

    PARAM_NAMES = ("means", "scales", "quats", "opacities", "sh0", "shN", "features")

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        expect = {
            "means": (n, 3),
            "scales": (n, 3),
            "quats": (n, 4),
            "opacities": (n,),
        }
        for name, shape in expect.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise FeatgsError(f"gaussians: {name} must have shape {shape}, got {got}")
        if tuple(self.sh0.shape) != (n, 1, 3):
            raise FeatgsError(f"gaussians: sh0 must have shape ({n}, 1, 3), got {tuple(self.sh0.shape)}")
        if self.shN.ndim != 3 or self.shN.shape[0] != n or self.shN.shape[2] != 3:
            raise FeatgsError(f"gaussians: shN must have shape ({n}, K, 3), got {tuple(self.shN.shape)}")
        k = self.shN.shape[1] + 1
        if k not in (1, 4, 9, 16):
            raise FeatgsError(f"gaussians: shN holds {k - 1} coefficients; expected 0, 3, 8 or 15 (SH degree 0..3)")
        if self.features.ndim != 2 or self.features.shape[0] != n:
            raise FeatgsError(f"gaussians: features must have shape ({n}, d), got {tuple(self.features.shape)}")
        if self.decoder is not None and self.decoder.in_dim != self.features.shape[1]:
            raise FeatgsError(
                f"gaussians: decoder expects {self.decoder.in_dim}-dim features, Gaussians carry {self.features.shape[1]}"
            )

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        means: Tensor,
        *,
        colors: Optional[Tensor] = None,
        scales: Optional[Tensor] = None,
        opacity: float = 0.1,
        sh_degree: int = 0,
        feature_dim: int = 0,
    ) -> "Gaussians":
        """Isotropic Gaussians at ``means`` [N, 3] with ``colors`` [N, 3] in [0, 1].

        ``scales`` is [N] or [N, 3] of *linear* standard deviations (default 0.01).
        """
        n = means.shape[0]
        dt, dev = means.dtype, means.device
        if colors is None:
            colors = torch.full((n, 3), 0.5, dtype=dt, device=dev)
        if scales is None:
            scales = torch.full((n,), 0.01, dtype=dt, device=dev)
        scales = torch.as_tensor(scales, dtype=dt, device=dev)
        if scales.ndim == 1:
            scales = scales[:, None].expand(n, 3)
        quats = torch.zeros(n, 4, dtype=dt, device=dev)
        quats[:, 0] = 1.0
        return cls(
            means=means.clone(),
            scales=torch.log(scales.clamp_min(1e-8)).clone(),
            quats=quats,
            opacities=torch.logit(torch.full((n,), opacity, dtype=dt, device=dev)),
            sh0=rgb_to_sh0(colors.to(dt)).reshape(n, 1, 3).clone(),
            shN=torch.zeros(n, num_sh_bases(sh_degree) - 1, 3, dtype=dt, device=dev),
            features=torch.zeros(n, feature_dim, dtype=dt, device=dev),
        )

    # -- properties -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return int(round((self.shN.shape[1] + 1) ** 0.5)) - 1

    @property
    def feature_dim(self) -> int:
        """d, the stored per-Gaussian feature dimension."""
        return self.features.shape[1]

    @property
    def output_feature_dim(self) -> int:
        """D, the dimension of rendered features (after the decoder, if any)."""
        return self.decoder.out_dim if self.decoder is not None else self.feature_dim

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    # -- conversions ----------------------------------------------------------------------
    def params(self) -> Dict[str, Tensor]:
        """The seven parameter tensors by name (the keys gsplat's strategies expect)."""
        return {name: getattr(self, name) for name in self.PARAM_NAMES}

    @classmethod
    def from_params(cls, params, decoder: Optional[LinearDecoder] = None) -> "Gaussians":
        """Inverse of :meth:`params`; accepts a dict or ``torch.nn.ParameterDict``."""
        return cls(**{name: params[name] for name in cls.PARAM_NAMES}, decoder=decoder)

    def map(self, fn) -> "Gaussians":
        """Apply ``fn`` to every parameter tensor (and the decoder's)."""
        dec = None if self.decoder is None else LinearDecoder(fn(self.decoder.weight), fn(self.decoder.bias))
        return Gaussians(**{name: fn(getattr(self, name)) for name in self.PARAM_NAMES}, decoder=dec)

    def to(self, *args, **kwargs) -> "Gaussians":
        return self.map(lambda t: t.to(*args, **kwargs))

    def detach(self) -> "Gaussians":
        return self.map(lambda t: t.detach())

    def clone(self) -> "Gaussians":
        return self.map(lambda t: t.clone())

    def select(self, index: Tensor) -> "Gaussians":
        """A subset by boolean mask [N] or integer ids; the decoder is shared."""
        out = Gaussians(**{name: getattr(self, name)[index] for name in self.PARAM_NAMES}, decoder=self.decoder)
        return out

    def with_features(self, features: Tensor, decoder: Optional[LinearDecoder] = None) -> "Gaussians":
        return replace(self, features=features, decoder=decoder)

    def with_sh_degree(self, degree: int) -> "Gaussians":
        """Same Gaussians with ``shN`` truncated or zero-padded to ``degree``."""
        k = num_sh_bases(degree) - 1
        shN = self.shN[:, :k]
        if shN.shape[1] < k:
            pad = torch.zeros(len(self), k - shN.shape[1], 3, dtype=self.dtype, device=self.device)
            shN = torch.cat([shN, pad], dim=1)
        return replace(self, shN=shN)

    @staticmethod
    def concat(items: "list[Gaussians]") -> "Gaussians":
        if not items:
            raise ValueError("concat needs at least one Gaussians")
        return Gaussians(
            **{name: torch.cat([getattr(g, name) for g in items]) for name in Gaussians.PARAM_NAMES},
            decoder=items[0].decoder,
        )

