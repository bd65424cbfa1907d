"""Camera rigs for the procedural scenes: cameras on an orbit, looking at the scene's centre."""

from __future__ import annotations

import math

import numpy as np

from featgs.camera import Camera, intrinsics_from_fov, look_at
from featgs.data.procedural.spec import Rig


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
