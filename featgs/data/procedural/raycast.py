"""Ray casting analytic primitives and shading the hits, vectorised over rays in numpy.

Rays are ``origin + t * direction`` with directions not necessarily unit length: camera rays
use directions whose camera-space z is 1, so the hit parameter ``t`` is the z-depth directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from featgs.data.procedural.spec import Primitive, SceneSpec
from featgs.data.procedural.textures import pattern

_EPS = 1e-6  # smallest accepted hit distance, so a ray never re-hits its own origin surface
_SHADOW_OFFSET = 1e-4  # metres; lifts shadow-ray origins off the surface


@dataclass(frozen=True)
class Hits:
    """The nearest hit of each of R rays.

    Attributes:
        t: [R] ray parameter of the hit (inf where the ray hits nothing).
        index: [R] int64 index of the primitive hit, -1 for none.
        normal: [R, 3] unit world normal, turned to face the ray origin (zero where no hit).
    """

    t: np.ndarray
    index: np.ndarray
    normal: np.ndarray


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise dot product of [R, 3] arrays (einsum: much faster than ``(x * y).sum(1)``)."""
    return np.einsum("ij,ij->i", x, y)


def _bounding_radius(p: Primitive) -> float:
    if p.shape == "box":
        return float(np.linalg.norm(p.extent))
    if p.shape == "cylinder":
        return float(np.hypot(p.extent[0], p.extent[2]))
    return float(p.extent.max())


def _intersect_local(shape: str, extent: np.ndarray, o: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Hits of rays [R, 3] given in a (non-plane) primitive's local frame -> t [R] (inf: miss)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        if shape in ("sphere", "ellipsoid"):
            os_, ds = o / extent, d / extent  # the ellipsoid becomes the unit sphere
            a = _dot(ds, ds)
            b = _dot(os_, ds)
            disc = b * b - a * (_dot(os_, os_) - 1.0)
            sq = np.sqrt(np.maximum(disc, 0.0))
            near, far = (-b - sq) / a, (-b + sq) / a
            t = np.where(near > _EPS, near, far)
            return np.where((disc >= 0) & (t > _EPS), t, np.inf)
        if shape == "box":
            d = np.where(np.abs(d) < 1e-12, 1e-12, d)  # keeps the slab test free of 0 * inf
            t1, t2 = (-extent - o) / d, (extent - o) / d
            t_in, t_out = np.minimum(t1, t2).max(1), np.maximum(t1, t2).min(1)
            t = np.where(t_in > _EPS, t_in, t_out)
            return np.where((t_in <= t_out) & (t_out > _EPS), t, np.inf)
        # cylinder: side, then the cap facing the ray
        r, h = extent[0], extent[2]
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
        disc = b * b - a * (o[:, 0] ** 2 + o[:, 1] ** 2 - r * r)
        t_side = (-b - np.sqrt(np.maximum(disc, 0.0))) / a
        z_side = o[:, 2] + t_side * d[:, 2]
        t_side = np.where((disc >= 0) & (t_side > _EPS) & (np.abs(z_side) <= h), t_side, np.inf)
        t_cap = (-h * np.sign(d[:, 2]) - o[:, 2]) / d[:, 2]
        x_cap, y_cap = o[:, 0] + t_cap * d[:, 0], o[:, 1] + t_cap * d[:, 1]
        t_cap = np.where((t_cap > _EPS) & (x_cap**2 + y_cap**2 <= r * r), t_cap, np.inf)
        return np.minimum(t_side, t_cap)


def _normal_local(shape: str, extent: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Outward normals (not unit) at surface points [R, 3] of a primitive, in its local frame."""
    if shape in ("sphere", "ellipsoid"):
        return p / extent**2
    if shape == "plane":
        return np.broadcast_to(np.array([0.0, 0.0, 1.0]), p.shape)
    if shape == "box":  # the face whose slab the point is closest to leaving
        axis = (np.abs(p) / extent).argmax(1)
    else:  # cylinder: a cap where the point is relatively nearer a cap than the side
        axis = np.where(np.abs(p[:, 2]) / extent[2] > np.hypot(p[:, 0], p[:, 1]) / extent[0], 2, -1)
    out = np.zeros_like(p)
    flat = np.flatnonzero(axis >= 0)
    out[flat, axis[flat]] = np.sign(p[flat, axis[flat]])
    curved = np.flatnonzero(axis < 0)
    out[curved, :2] = p[curved, :2]
    return out


def intersect(primitives: Sequence[Primitive], origins: np.ndarray, dirs: np.ndarray) -> Hits:
    """Nearest hits of rays ``origins`` [R, 3] + t ``dirs`` [R, 3] (world) with ``primitives``."""
    n = len(origins)
    best_t = np.full(n, np.inf)
    best_i = np.full(n, -1, dtype=np.int64)
    # per-ray dot products shared by every primitive's bounding-sphere test
    dd = _dot(dirs, dirs)
    od = _dot(origins, dirs)
    oo = _dot(origins, origins)
    for k, prim in enumerate(primitives):
        c = prim.center
        if prim.shape == "plane":  # in world space, no gathering: planes see most rays
            normal = prim.rotation[:, 2]
            with np.errstate(divide="ignore", invalid="ignore"):
                t = (c @ normal - origins @ normal) / (dirs @ normal)
            closer = (t > _EPS) & (t < best_t)
            best_t = np.where(closer, t, best_t)
            best_i[closer] = k
            continue
        # cheap bounding-sphere test first: most rays miss a small object entirely
        b = od - dirs @ c  # (o - c) . d
        cq = oo - 2.0 * (origins @ c) + (c @ c - _bounding_radius(prim) ** 2)
        disc = b * b - dd * cq
        sq = np.sqrt(np.maximum(disc, 0.0))
        rows = np.flatnonzero((disc >= 0) & (sq - b > _EPS * dd) & (-b - sq < best_t * dd))
        if rows.size == 0:
            continue
        t = _intersect_local(prim.shape, prim.extent, (origins[rows] - c) @ prim.rotation, dirs[rows] @ prim.rotation)
        closer = t < best_t[rows]
        best_t[rows[closer]] = t[closer]
        best_i[rows[closer]] = k
    normals = np.zeros((n, 3))
    for k, prim in enumerate(primitives):
        rows = np.flatnonzero(best_i == k)
        if rows.size:
            p_local = (origins[rows] + best_t[rows, None] * dirs[rows] - prim.center) @ prim.rotation
            normals[rows] = _normal_local(prim.shape, prim.extent, p_local) @ prim.rotation.T
    hit = best_i >= 0
    normals[hit] /= np.linalg.norm(normals[hit], axis=1, keepdims=True)
    normals[_dot(normals, dirs) > 0] *= -1.0  # two-sided: face the ray origin
    return Hits(best_t, best_i, normals)


def albedo(spec: SceneSpec, hits: Hits, points: np.ndarray) -> np.ndarray:
    """[R, 3] textured albedo at hit ``points`` [R, 3] (black where nothing was hit)."""
    out = np.zeros((len(points), 3))
    for k, prim in enumerate(spec.primitives):
        rows = np.flatnonzero(hits.index == k)
        if rows.size == 0:
            continue
        m = prim.material
        local = (points[rows] - prim.center) @ prim.rotation
        factor = 1.0 - m.contrast * (1.0 - pattern(m.texture, local, m.scale))
        out[rows] = factor[:, None] * np.asarray(m.color)
    return out


def shade(spec: SceneSpec, hits: Hits, points: np.ndarray) -> np.ndarray:
    """[R, 3] colour in 0..1: albedo x (ambient + Lambert per light, dimmed in shadow).

    Depends on the surface point and normal only, never on the viewing direction, so that
    low-degree spherical harmonics can reproduce it.
    """
    light = np.full(len(points), spec.ambient)
    hit = hits.index >= 0
    # planes bound the room; letting them cast shadows would put everything in the dark
    casters = [p for p in spec.primitives if p.shape != "plane"]
    for lamp in spec.lights:
        lambert = np.where(hit, np.maximum(0.0, hits.normal @ lamp.direction), 0.0)
        lit = np.flatnonzero(lambert > 0)
        if lamp.shadow > 0 and lit.size and casters:
            origins = points[lit] + _SHADOW_OFFSET * hits.normal[lit]
            blocked = intersect(casters, origins, np.broadcast_to(lamp.direction, origins.shape)).index >= 0
            lambert[lit[blocked]] *= 1.0 - lamp.shadow
        light += lamp.intensity * lambert
    return np.clip(albedo(spec, hits, points) * light[:, None], 0.0, 1.0)
