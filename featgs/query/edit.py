"""Edits of a selection: delete, extract, recolour, translate; each gives new Gaussians."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from featgs.errors import FeatgsError
from featgs.gaussians import SH_C0, Gaussians, rgb_to_sh0


@dataclass(frozen=True)
class Delete:
    """Remove the selected Gaussians."""


@dataclass(frozen=True)
class Extract:
    """Keep only the selected Gaussians."""


@dataclass(frozen=True)
class Recolor:
    """Give the selection the colour ``rgb`` (three numbers in 0..1), keeping its shading.

    Each Gaussian's new base colour is ``rgb`` scaled by its luminance relative to the
    selection's median luminance, so texture and baked-in shading survive and only hue and
    saturation change; the view-dependent part keeps its brightness but loses its tint.
    """

    rgb: Tuple[float, float, float]

    def __post_init__(self) -> None:
        rgb = tuple(float(c) for c in self.rgb)
        if len(rgb) != 3 or not all(math.isfinite(c) and 0.0 <= c <= 1.0 for c in rgb):
            raise FeatgsError(f"recolour: expected three numbers in 0..1 (R,G,B), got {self.rgb}")
        object.__setattr__(self, "rgb", rgb)


@dataclass(frozen=True)
class Translate:
    """Move the selection by ``offset`` (x, y, z) in the run's frame (the PLY's units)."""

    offset: Tuple[float, float, float]

    def __post_init__(self) -> None:
        xyz = tuple(float(c) for c in self.offset)
        if len(xyz) != 3 or not all(math.isfinite(c) for c in xyz):
            raise FeatgsError(f"translate: expected three finite numbers (X,Y,Z), got {self.offset}")
        object.__setattr__(self, "offset", xyz)


EditOp = Union[Delete, Extract, Recolor, Translate]
EDIT_NAMES = ("delete", "extract", "recolor", "translate")
_NEEDS = {"recolor": "rgb", "translate": "offset"}  # op name -> the one argument it takes


def make_edit(name: str, *, rgb: Optional[Sequence[float]] = None, offset: Optional[Sequence[float]] = None) -> EditOp:
    """The edit a request names ("delete", "extract", "recolor" with ``rgb``, "translate" with
    ``offset``): the one translation of op names used by the CLI, the HTTP API and the viewer.

    Raises:
        FeatgsError: an unknown name, a missing argument, or one that does not apply.
    """
    if name not in EDIT_NAMES:
        raise FeatgsError(f"op: unknown edit {name!r}; expected one of {', '.join(EDIT_NAMES)}")
    given = {"rgb": rgb, "offset": offset}
    needs = _NEEDS.get(name)
    if needs and given[needs] is None:
        raise FeatgsError(f"op {name!r} needs {needs!r}")
    stray = [k for k, v in given.items() if v is not None and k != needs]
    if stray:
        raise FeatgsError(f"{stray[0]!r} does not apply to op {name!r}")
    if name == "delete":
        return Delete()
    if name == "extract":
        return Extract()
    return Recolor(tuple(rgb)) if name == "recolor" else Translate(tuple(offset))

_LUMA = (0.299, 0.587, 0.114)


def apply_edit(gaussians: Gaussians, keep: Tensor, op: EditOp) -> Gaussians:
    """New Gaussians with ``op`` applied to those where ``keep`` [N] bool is True."""
    keep = keep.to(gaussians.device)
    g = gaussians.detach()
    if isinstance(op, Delete):
        return g.select(~keep)
    if isinstance(op, Extract):
        return g.select(keep)
    if isinstance(op, Translate):
        means = g.means.clone()
        means[keep] += torch.tensor(op.offset, dtype=means.dtype, device=means.device)
        return Gaussians(**{**g.params(), "means": means}, decoder=g.decoder)
    if isinstance(op, Recolor):
        return _recolor(g, keep, op.rgb)
    raise TypeError(f"unknown edit {op!r}")


def _recolor(g: Gaussians, keep: Tensor, rgb: Tuple[float, float, float]) -> Gaussians:
    if not keep.any():
        return g.clone()
    luma = torch.tensor(_LUMA, dtype=g.dtype, device=g.device)
    base = (0.5 + SH_C0 * g.sh0[keep, 0]).clamp(0, 1)  # [M, 3]
    y = base @ luma
    shade = y / y.median().clamp_min(1e-3)
    target = torch.tensor(rgb, dtype=g.dtype, device=g.device)
    sh0 = g.sh0.clone()
    sh0[keep, 0] = rgb_to_sh0((target[None] * shade[:, None]).clamp(0, 1))
    shN = g.shN.clone()
    if shN.shape[1]:
        shN[keep] = (shN[keep] @ luma)[..., None].expand(-1, -1, 3)
    return Gaussians(**{**g.params(), "sh0": sh0, "shN": shN}, decoder=g.decoder)
