"""Camera rigs for the procedural scenes: cameras on an orbit (``rig [orbit]``) or on a band
of a sphere (``rig sphere``), looking at the rig's target."""

from __future__ import annotations

import math

import numpy as np

from featgs.camera import Camera, intrinsics_from_fov, look_at
from featgs.data.procedural.spec import Rig, SphereRig

GOLDEN_ANGLE = math.pi * (3.0 - math.sqrt(5.0))  # radians; azimuth step of a Fibonacci spiral


def orbit_cameras(rig: Rig, count: int, size: int, rng: np.random.Generator, prefix: str) -> list[Camera]:
    """``count`` square ``size`` x ``size`` cameras around ``rig.target``.

    Azimuths are stratified (one per equal sector, at a random place inside it, from a random
    start) so views cover the whole orbit at any count; radius and height are uniform in the
    rig's ranges; each camera looks at the target plus Gaussian jitter. World z is up.
    Deterministic for the state of ``rng``. Names are ``{prefix}_{i:04d}``.
    """
    K = intrinsics_from_fov(size, size, math.radians(rig.fov_deg))
    start = rng.uniform(0.0, 2.0 * math.pi)
    cameras = []
    for i in range(count):
        azimuth = start + 2.0 * math.pi * (i + rng.uniform(0.1, 0.9)) / count
        radius = rng.uniform(*rig.radius)
        height = rng.uniform(*rig.height)
        eye = np.array([rig.target[0] + radius * math.cos(azimuth), rig.target[1] + radius * math.sin(azimuth), height])
        target = rig.target + rng.normal(0.0, rig.jitter, 3) if rig.jitter > 0 else rig.target
        cameras.append(Camera(look_at(eye, target), K, size, size, name=f"{prefix}_{i:04d}"))
    return cameras


def sphere_cameras(rig: SphereRig, count: int, size: int, rng: np.random.Generator, prefix: str) -> list[Camera]:
    """``count`` square ``size`` x ``size`` cameras on the band of the sphere around
    ``rig.target`` between the rig's elevations, looking at the target (plus Gaussian jitter).

    Spread evenly by area, as a Fibonacci spiral: camera i sits in the i-th of ``count``
    equal-area rings of the band (uniform in sin(elevation)), at a random height inside it,
    and its azimuth is i golden angles from a random start. Distance is uniform in the rig's
    range. World z is up; as elevations stay inside (-90, 90) degrees no camera looks
    straight along z, where ``look_at`` would have no up direction. Deterministic for the
    state of ``rng``. Names are ``{prefix}_{i:04d}``.
    """
    K = intrinsics_from_fov(size, size, math.radians(rig.fov_deg))
    low, high = (math.sin(math.radians(e)) for e in rig.elevation_deg)
    start = rng.uniform(0.0, 2.0 * math.pi)
    cameras = []
    for i in range(count):
        up = low + (high - low) * (i + rng.uniform(0.1, 0.9)) / count  # sin(elevation)
        azimuth = start + GOLDEN_ANGLE * i
        distance = rng.uniform(*rig.distance)
        across = math.sqrt(max(0.0, 1.0 - up * up))
        eye = rig.target + distance * np.array([across * math.cos(azimuth), across * math.sin(azimuth), up])
        target = rig.target + rng.normal(0.0, rig.jitter, 3) if rig.jitter > 0 else rig.target
        cameras.append(Camera(look_at(eye, target), K, size, size, name=f"{prefix}_{i:04d}"))
    return cameras


def rig_cameras(rig: Rig | SphereRig, count: int, size: int, rng: np.random.Generator, prefix: str) -> list[Camera]:
    """The cameras of either kind of rig (:func:`orbit_cameras`, :func:`sphere_cameras`)."""
    if isinstance(rig, SphereRig):
        return sphere_cameras(rig, count, size, rng, prefix)
    return orbit_cameras(rig, count, size, rng, prefix)
