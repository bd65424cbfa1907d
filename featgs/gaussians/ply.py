"""Gaussians as PLY files in the layout every 3DGS viewer reads.

Vertex properties, all float32, in this order::

    x y z nx ny nz f_dc_0..2 f_rest_0..(3K-1) opacity scale_0..2 rot_0..3 feat_0..(d-1)

``f_rest`` is channel-major, as the original 3DGS writes it (its ``features_rest`` is
[N, 3, K] when flattened): ``f_rest_{c*K + k}`` is SH coefficient ``k`` of channel ``c``.
Opacity is a logit, scales are logs, ``rot`` a wxyz quaternion, exactly as :class:`Gaussians`
stores them. Normals are written as zeros and ignored on load. The optional linear decoder
lives beside the PLY in ``<name>.decoder.safetensors`` (``weight`` [D, d], ``bias`` [D]).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from featgs.atomic import atomic_write_bytes
from featgs.errors import FeatgsError
from featgs.gaussians.model import Gaussians, LinearDecoder
from featgs.plyio import read_ply_vertices, row_blocks, write_ply_vertices

# f_rest_ counts of SH degrees 0..3: 3 channels x ((degree + 1)^2 - 1) coefficients.
_REST_COUNT_TO_DEGREE = {0: 0, 9: 1, 24: 2, 45: 3}


def decoder_path(ply_path: str | os.PathLike) -> Path:
    """Where the decoder of ``scene.ply`` lives: ``scene.decoder.safetensors``."""
    ply_path = Path(ply_path)
    stem = ply_path.name[:-4] if ply_path.name.lower().endswith(".ply") else ply_path.name
    return ply_path.with_name(stem + ".decoder.safetensors")


def save_ply(path: str | os.PathLike, gaussians: Gaussians) -> None:
    """Write ``gaussians`` to ``path`` (float32) and its decoder, if any, beside it.

    A decoder file left over from an earlier save to the same path is removed when the
    Gaussians carry no decoder, so that loading gives back exactly what was saved.
    """
    g = gaussians.detach().to(device="cpu", dtype=torch.float32)
    n = len(g)
    cols: Dict[str, np.ndarray] = {}

    def put(prefix: str, table: torch.Tensor) -> None:
        for i, column in enumerate(table.flatten(1).numpy().T):
            cols[f"{prefix}{i}"] = column

    for i, axis in enumerate("xyz"):
        cols[axis] = g.means[:, i].numpy()
    for axis in "xyz":
        cols[f"n{axis}"] = np.zeros(n, dtype=np.float32)
    put("f_dc_", g.sh0[:, 0, :])
    put("f_rest_", g.shN.transpose(1, 2))  # [N, K, 3] -> [N, 3, K]: channel-major
    cols["opacity"] = g.opacities.numpy()
    put("scale_", g.scales)
    put("rot_", g.quats)
    put("feat_", g.features)
    write_ply_vertices(path, cols, comments=[f"featgs sh_degree={g.sh_degree} feature_dim={g.feature_dim}"])

    sidecar = decoder_path(path)
    if g.decoder is not None:
        tensors = {"weight": g.decoder.weight.contiguous(), "bias": g.decoder.bias.contiguous()}
        atomic_write_bytes(sidecar, save_safetensors(tensors))
    elif sidecar.exists():
        sidecar.unlink()


def load_ply(path: str | os.PathLike) -> Gaussians:
    """Read a 3DGS PLY (ours or any standard trainer's: SH degree 0..3, ``feat_*`` optional).

    Returns float32 CPU Gaussians; the decoder is loaded from ``decoder_path(path)`` when
    that file exists.

    Raises:
        FeatgsError: naming the file and the property that is missing, not a float, or not
            finite.
    """
    path = Path(path)
    props = read_ply_vertices(path)

    def column(name: str) -> np.ndarray:
        if name not in props:
            raise FeatgsError(f"{path}: missing vertex property {name!r}; expected the 3DGS layout (x y z f_dc_0..2 f_rest_* opacity scale_0..2 rot_0..3)")
        a = props[name]
        if a.dtype.kind != "f":
            raise FeatgsError(f"{path}: vertex property {name!r} is {a.dtype.name}; expected float")
        with np.errstate(over="ignore"):  # a double beyond float32 becomes inf, refused below
            a = a.astype(np.float32, copy=False)
        bad = np.flatnonzero(~np.isfinite(a))
        if len(bad):  # one NaN would poison every render, query and k-d tree built on the scene
            raise FeatgsError(f"{path}: vertex property {name!r} is {a[bad[0]]} at vertex {bad[0]} "
                              f"({len(bad)} non-finite values); expected finite numbers")
        return a

    def table(names: List[str]) -> torch.Tensor:
        """[N, len(names)] float32, filled block by block (as the columns came from records)."""
        columns = [column(name) for name in names]
        out = np.empty((n, len(names)), dtype=np.float32)
        for rows in row_blocks(n, out.strides[0]):
            for j, c in enumerate(columns):
                out[rows, j] = c[rows]
        return torch.from_numpy(out)

    n = len(column("x"))
    rest = _numbered(props, "f_rest_", path)
    if len(rest) not in _REST_COUNT_TO_DEGREE:
        raise FeatgsError(f"{path}: found {len(rest)} f_rest_* properties; expected 0, 9, 24 or 45 (SH degree 0..3)")
    k = len(rest) // 3
    feats = _numbered(props, "feat_", path)
    return Gaussians(
        means=table(["x", "y", "z"]),
        scales=table([f"scale_{i}" for i in range(3)]),
        quats=table([f"rot_{i}" for i in range(4)]),
        opacities=torch.from_numpy(column("opacity")),
        sh0=table([f"f_dc_{i}" for i in range(3)]).reshape(n, 1, 3),
        shN=table(rest).reshape(n, 3, k).transpose(1, 2).contiguous(),  # channel-major -> [N, K, 3]
        features=table(feats),
        decoder=_load_decoder(decoder_path(path), len(feats)),
    )


def _numbered(props: Dict[str, np.ndarray], prefix: str, path: Path) -> List[str]:
    """Names ``prefix0 .. prefix{m-1}`` in index order, whatever their order in the file."""
    pattern = re.compile(re.escape(prefix) + r"(0|[1-9][0-9]*)")
    found = sorted(int(m.group(1)) for m in map(pattern.fullmatch, props) if m)
    if found != list(range(len(found))):
        gap = min(set(range(len(found))) - set(found))
        raise FeatgsError(f"{path}: vertex property '{prefix}{gap}' is missing; expected {prefix}0..{prefix}{found[-1]} without gaps")
    return [f"{prefix}{i}" for i in found]


def _load_decoder(path: Path, feature_dim: int) -> Optional[LinearDecoder]:
    if not path.exists():
        return None
    try:
        tensors = load_safetensors(path.read_bytes())
    except (OSError, SafetensorError) as e:
        raise FeatgsError(f"{path}: not a readable safetensors decoder file ({e.__class__.__name__})") from None
    if set(tensors) != {"weight", "bias"}:
        raise FeatgsError(f"{path}: decoder holds {sorted(tensors)}; expected exactly 'weight' [D, d] and 'bias' [D]")
    weight, bias = tensors["weight"], tensors["bias"]
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or weight.shape[1] != feature_dim:
        raise FeatgsError(
            f"{path}: decoder weight {tuple(weight.shape)} and bias {tuple(bias.shape)} do not fit "
            f"{feature_dim}-dim features; expected weight [D, {feature_dim}] and bias [D]"
        )
    return LinearDecoder(weight.to(torch.float32), bias.to(torch.float32))
