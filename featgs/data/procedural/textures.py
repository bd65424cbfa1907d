"""Procedural solid textures: patterns in 0..1 evaluated at points of an object's local frame.

Solid (3D) textures need no surface parametrisation, and because they depend on the surface
point only, the rendered colour is the same from every view.
"""

from __future__ import annotations

import numpy as np


def _lattice_values(ix: np.ndarray, iy: np.ndarray, iz: np.ndarray) -> np.ndarray:
    """Pseudo-random values in [0, 1) at integer lattice points (a fixed integer hash)."""
    h = (ix * 73856093) ^ (iy * 19349663) ^ (iz * 83492791)
    h = (h ^ (h >> 13)) * 1274126177  # int64 wrap-around is part of the hash
    h = h ^ (h >> 16)
    return (h & 0xFFFFFF).astype(np.float64) / float(0x1000000)


def value_noise(p: np.ndarray) -> np.ndarray:
    """Smooth value noise: [R, 3] points (lattice units) -> [R] values in [0, 1)."""
    base = np.floor(p)
    f = p - base
    f = f * f * (3.0 - 2.0 * f)  # smoothstep, so the noise has no visible lattice creases
    i = base.astype(np.int64)
    out = np.zeros(len(p))
    for dx in (0, 1):
        wx = f[:, 0] if dx else 1.0 - f[:, 0]
        for dy in (0, 1):
            wy = f[:, 1] if dy else 1.0 - f[:, 1]
            for dz in (0, 1):
                wz = f[:, 2] if dz else 1.0 - f[:, 2]
                out += wx * wy * wz * _lattice_values(i[:, 0] + dx, i[:, 1] + dy, i[:, 2] + dz)
    return out


def pattern(kind: str, p_local: np.ndarray, scale: float) -> np.ndarray:
    """[R, 3] local points (metres) -> [R] pattern values in [0, 1] (1 = the plain albedo).

    ``scale`` is the pattern's period in metres.
    """
    q = p_local / scale
    if kind == "checker":
        # cell borders at half-integers, so surfaces lying on a local axis plane (z = 0 for
        # planes) never sit on a border and never speckle from rounding
        cells = np.floor(q + 0.5).astype(np.int64).sum(axis=1)
        return (cells % 2).astype(np.float64)
    if kind == "stripes":
        return 0.5 + 0.5 * np.sin(2.0 * np.pi * q[:, 2])
    if kind == "noise":
        octaves = [value_noise(q * 2.0**o) * 0.5**o for o in range(3)]
        return sum(octaves) / sum(0.5**o for o in range(3))
    return np.ones(len(p_local))
