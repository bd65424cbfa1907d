"""Builders of the scenes and trained runs that several test files share (no tests here).

tests/conftest.py turns them into session fixtures, so each is made once per test session:

- ``tabletop_data``: the built-in tabletop scene at 32 px, 24 train + 3 test views, 400 points;
- ``tabletop_run``: a run trained on it (TINY_RUN: 300 steps, 16-dim features with a PCA
  decoder to the labels teacher's 384), for the query and HTTP tests;
- ``viewer_run``: the same scene at 64 px (VIEWER_DATA), trained for 400 steps, for the
  browser tests. At 32 px the red mug (the largest object in the first view) is ~23 pixels
  of each view, a click on it gave a mask of IoU 0.37 with it, and float round-off alone (a
  change in the tile binning that renders identical images) tipped the click-and-delete test
  below its bar. At 64 px, 4 seeds: the click's mask IoU 0.65-0.79, its deletion changes the mug's
  pixels by 84-121 (the test asks for 40). The query tests' assertions were set on the
  32-px run, so neither run can stand in for the other.

The runs are shared read-only: a test that writes into a run folder (edits, a server saving
under RUN/edits) works on its own copy (``copy_run``).
"""

from __future__ import annotations

import math
import shutil
import socket
from pathlib import Path

import torch

from featgs.camera import Camera, intrinsics_from_fov, look_at
from featgs.data.procedural import MakeConfig, make_scene, resolve_scene
from featgs.gaussians import Gaussians
from featgs.train import TrainConfig
from featgs.train.run import train_run

TABLETOP = MakeConfig(size=32, views=24, test_views=3, points=400)
VIEWER_DATA = MakeConfig(size=64, views=24, test_views=3, points=400)
TINY_RUN = dict(iters=300, feature_dim=16, refine_start=30, refine_every=30, checkpoint_every=1000)
VIEWER_RUN = {**TINY_RUN, "iters": 400}


def make_tabletop_data(out: Path, config: MakeConfig = TABLETOP) -> Path:
    """Render the built-in tabletop scene into the dataset folder ``out``."""
    spec = resolve_scene("tabletop")
    make_scene(spec.read_text(), str(spec), out, config)
    return out


def train_tiny_run(data: Path, out: Path, settings: dict = TINY_RUN) -> Path:
    """Train ``TrainConfig(**settings)`` on ``data`` into ``out``, on one CPU thread: a
    32-pixel scene gains nothing from more and loses much when the cores are busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_run(data, out, TrainConfig(**settings), progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def copy_run(run: Path, out: Path) -> Path:
    """A private copy of a run folder, for tests that write into it (it still reads the same data)."""
    shutil.copytree(run, out)
    return out


def small_solve_scene(n: int = 7, size=(10, 8)):
    """n Gaussians near the origin (the last one far above every camera's view) and three cameras
    of ``size`` (W, H) pixels: the small rendered scene of the solve and back-projection tests."""
    g = torch.Generator().manual_seed(0)
    means = (torch.rand(n, 3, generator=g) - 0.5) * torch.tensor([1.2, 1.2, 0.8])
    means[-1] = torch.tensor([0.0, 0.0, 60.0])  # never seen
    gaussians = Gaussians.create(means, scales=torch.full((n,), 0.25), opacity=0.6)
    w, h = size
    cams = []
    for angle in (0.0, 0.7, -0.9):
        eye = (3.0 * math.sin(angle), -3.0 * math.cos(angle), 0.3)
        cams.append(Camera(look_at(eye, (0.0, 0.0, 0.0)), intrinsics_from_fov(w, h, math.radians(50)), w, h))
    return gaussians, cams


def has_ipv6() -> bool:
    """Whether this machine has an IPv6 loopback to listen on (tests of ::1 skip without)."""
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False
