"""Render a procedural scene into a nerfstudio-style data folder.

The folder (every path relative to it)::

    transforms.json       nerfstudio format, read back by featgs.data.load_scene:
                            camera_model "OPENCV", fl_x fl_y cx cy w h (shared intrinsics),
                            depth_unit_scale_factor 0.001, ply_file_path "points3D.ply",
                            train_filenames / test_filenames (the split, image paths),
                            featgs_scene {name, seed, spec}, and frames, each with
                            file_path "images/{split}_{i:04d}.png",
                            transform_matrix (4x4 camtoworld, OpenGL axes),
                            depth_file_path "depth/{split}_{i:04d}.png",
                            label_file_path "labels/{split}_{i:04d}.png"
    images/*.png          RGB, 8 bit
    depth/*.png           z-depth (along the optical axis), 16-bit PNG in millimetres
                          (clipped at 65.535 m); never 0, as every pixel sees a surface
    labels/*.png          label id per pixel, 8 bit; every pixel sees a labelled surface
                          (floor, walls and ceiling are labels too)
    labels.json           {"0": "floor", "1": "wall", ...}: label id (string) -> name, ids in
                          order of first appearance in the scene description
    points3D.ply          x y z (float32, metres) red green blue (uchar): surface points seen
                          by the training views, positions jittered by a few millimetres
    scene.txt             a copy of the scene description used

The world frame is the description's: metres, z up. Frames list the train views, then the
test views. Everything is a function of the description and the seed: running twice gives
identical bytes. The folder appears at once (written beside it, then renamed).
"""

from __future__ import annotations

import io
import json
import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from featgs.camera import Camera
from featgs.data.conventions import flip_yz
from featgs.data.procedural.raycast import intersect, shade
from featgs.data.procedural.rig import orbit_cameras
from featgs.data.procedural.spec import SceneSpec, parse_scene_spec
from featgs.errors import FeatgsError
from featgs.plyio import write_ply_vertices

DEPTH_UNIT = 0.001  # metres per depth-PNG step
POINT_NOISE = 0.003  # metres, std of the jitter added to the initial points
SUPERSAMPLE_CONTRAST = 0.05  # a pixel differing this much (max over RGB) from a neighbour is supersampled


@dataclass(frozen=True)
class MakeConfig:
    """How to render a scene: square ``size`` images, ``views`` train and ``test_views`` test
    cameras, ``points`` initial points; ``supersample`` x ``supersample`` colour rays in
    pixels on edges and high-contrast texture (see :func:`render_view`)."""

    size: int = 128
    views: int = 60
    test_views: int = 12
    seed: int = 0
    points: int = 5000
    supersample: int = 2

    def check(self) -> None:
        for name, value, low in (("--size", self.size, 8), ("--views", self.views, 1), ("--test-views", self.test_views, 0),
                                 ("--points", self.points, 0), ("supersample", self.supersample, 1)):  # fmt: skip
            if value < low:
                raise FeatgsError(f"{name}: expected an integer >= {low}, got {value}")
        if self.seed < 0:
            raise FeatgsError(f"--seed: expected a non-negative integer, got {self.seed}")


@dataclass(frozen=True)
class RenderedView:
    """One view's images: rgb [H, W, 3] in 0..1, depth [H, W] z-depth in metres, labels
    [H, W] uint8 label ids, surface [H, W, 3] world point seen at each pixel centre."""

    rgb: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    surface: np.ndarray


def camera_rays(camera: Camera, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays through pixel positions ``uv`` [R, 2] (x right, y down; pixel centres at +0.5).

    Returns origins and directions [R, 3] (world); directions have camera-space z = 1, so a
    ray's hit parameter is the z-depth.
    """
    K = camera.K.numpy()
    c2w = camera.camtoworld.numpy()
    d_cam = np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0], (uv[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(uv))], axis=1)
    dirs = d_cam @ c2w[:3, :3].T
    return np.broadcast_to(c2w[:3, 3], dirs.shape), dirs


def _edges(index: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """[H, W] pixels that differ from a 4-neighbour in surface (``index`` [H, W]) or colour [H, W, 3]."""
    out = np.zeros(index.shape, dtype=bool)
    rows = (index[1:] != index[:-1]) | (np.abs(rgb[1:] - rgb[:-1]).max(-1) > SUPERSAMPLE_CONTRAST)
    out[1:] |= rows
    out[:-1] |= rows
    cols = (index[:, 1:] != index[:, :-1]) | (np.abs(rgb[:, 1:] - rgb[:, :-1]).max(-1) > SUPERSAMPLE_CONTRAST)
    out[:, 1:] |= cols
    out[:, :-1] |= cols
    return out


def render_view(spec: SceneSpec, camera: Camera, supersample: int) -> RenderedView:
    """Ray-cast one view. Depth and labels come from the pixel centre (so label maps never
    blend two objects); colour too, except at edges and high-contrast texture, where it is
    the mean over a ``supersample`` x ``supersample`` grid inside the pixel (anti-aliasing
    where it matters, at a fraction of the cost of supersampling every pixel)."""
    h, w = camera.height, camera.width
    label_of = np.array([p.label_id for p in spec.primitives], dtype=np.uint8)
    jj, ii = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pixels = np.stack([jj.ravel(), ii.ravel()], axis=1)  # [H*W, 2] top-left corners
    origins, dirs = camera_rays(camera, pixels + 0.5)
    hits = intersect(spec.primitives, origins, dirs)
    if (hits.index < 0).any():
        raise FeatgsError(f"scene {spec.name}: camera {camera.name} sees empty background; enclose the scene (floor, walls, ceiling)")
    surface = origins + hits.t[:, None] * dirs
    rgb = shade(spec, hits, surface)
    if supersample > 1:
        busy = np.flatnonzero(_edges(hits.index.reshape(h, w), rgb.reshape(h, w, 3)))
        grid = (np.arange(supersample) + 0.5) / supersample
        offsets = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2)  # [S, 2]
        uv = (pixels[busy][:, None, :] + offsets[None]).reshape(-1, 2)
        ss_origins, ss_dirs = camera_rays(camera, uv)
        ss_hits = intersect(spec.primitives, ss_origins, ss_dirs)
        ss_rgb = shade(spec, ss_hits, ss_origins + np.where(ss_hits.index >= 0, ss_hits.t, 0.0)[:, None] * ss_dirs)
        rgb[busy] = ss_rgb.reshape(len(busy), len(offsets), 3).mean(axis=1)
    return RenderedView(
        rgb=rgb.reshape(h, w, 3),
        depth=hits.t.reshape(h, w),
        labels=label_of[hits.index].reshape(h, w),
        surface=surface.reshape(h, w, 3),
    )


def _png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _write(root: Path, rel: str, data: bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)  # the whole folder is renamed into place at the end


def _frame(camera: Camera, stem: str) -> dict:
    return {
        "file_path": f"images/{stem}.png",
        "transform_matrix": flip_yz(camera.camtoworld).tolist(),
        "depth_file_path": f"depth/{stem}.png",
        "label_file_path": f"labels/{stem}.png",
    }


def _check_out(out: Path, force: bool) -> bool:
    """Whether ``out`` holds something to replace; raises if it may not be replaced."""
    if out.exists() and not out.is_dir():
        raise FeatgsError(f"{out}: exists and is not a folder; expected a folder for the scene")
    occupied = out.is_dir() and any(out.iterdir())
    if occupied and not force:
        raise FeatgsError(f"{out}: folder exists and is not empty; choose another --out or pass --force")
    return occupied


def _replace_dir(tmp: Path, out: Path, force: bool) -> None:
    """Move the finished folder ``tmp`` to ``out``; an existing non-empty ``out`` only with ``force``."""
    if _check_out(out, force):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        if out.is_dir():
            out.rmdir()
        os.replace(tmp, out)


def make_scene(spec_text: str, source: str, out: str | Path, config: MakeConfig = MakeConfig(), *, force: bool = False) -> dict:
    """Render the scene described by ``spec_text`` (from file ``source``) into folder ``out``.

    Returns a summary: ``{"out", "name", "num_train", "num_test", "num_points", "labels"}``.
    """
    config.check()
    spec = parse_scene_spec(spec_text, source)
    out = Path(out)
    _check_out(out, force)  # fail before rendering, not after
    # independent streams, so changing the number of train views keeps the test cameras
    train = orbit_cameras(spec.rig, config.views, config.size, np.random.default_rng([config.seed, 0]), "train")
    test = orbit_cameras(spec.rig, config.test_views, config.size, np.random.default_rng([config.seed, 1]), "test")
    point_rng = np.random.default_rng([config.seed, 2])
    per_view = [config.points // len(train) + (i < config.points % len(train)) for i in range(len(train))]

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()  # not mkdtemp: its 0700 mode would stay on the renamed folder
    try:
        frames, points, colors = [], [], []
        for k, camera in enumerate(tqdm(train + test, desc=f"rendering {spec.name}", unit="view", disable=None)):
            view = render_view(spec, camera, config.supersample)
            stem = camera.name
            _write(tmp, f"images/{stem}.png", _png_bytes(np.round(view.rgb * 255.0).astype(np.uint8)))
            depth_steps = np.clip(np.round(view.depth / DEPTH_UNIT), 0, 65535).astype(np.uint16)
            _write(tmp, f"depth/{stem}.png", _png_bytes(depth_steps))
            _write(tmp, f"labels/{stem}.png", _png_bytes(view.labels))
            frames.append(_frame(camera, stem))
            if k < len(train) and per_view[k]:
                pixels = camera.width * camera.height
                pick = point_rng.choice(pixels, min(per_view[k], pixels), replace=False)
                points.append(view.surface.reshape(-1, 3)[pick] + point_rng.normal(0.0, POINT_NOISE, (len(pick), 3)))
                colors.append(view.rgb.reshape(-1, 3)[pick])
        xyz = np.concatenate(points).astype(np.float32) if points else np.zeros((0, 3), np.float32)
        rgb = np.round(np.concatenate(colors) * 255.0).astype(np.uint8) if colors else np.zeros((0, 3), np.uint8)
        write_ply_vertices(
            tmp / "points3D.ply",
            {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "red": rgb[:, 0], "green": rgb[:, 1], "blue": rgb[:, 2]},
            comments=[f"featgs scene {spec.name} seed {config.seed}"],
        )
        K = train[0].K
        transforms = {
            "camera_model": "OPENCV",
            "fl_x": float(K[0, 0]),
            "fl_y": float(K[1, 1]),
            "cx": float(K[0, 2]),
            "cy": float(K[1, 2]),
            "w": config.size,
            "h": config.size,
            "depth_unit_scale_factor": DEPTH_UNIT,
            "ply_file_path": "points3D.ply",
            "train_filenames": [f["file_path"] for f in frames[: len(train)]],
            "test_filenames": [f["file_path"] for f in frames[len(train) :]],
            "featgs_scene": {"name": spec.name, "seed": config.seed, "spec": "scene.txt"},
            "frames": frames,
        }
        _write(tmp, "transforms.json", (json.dumps(transforms, indent=2) + "\n").encode())
        _write(tmp, "labels.json", (json.dumps({str(i): n for i, n in enumerate(spec.labels)}, indent=2) + "\n").encode())
        _write(tmp, "scene.txt", spec_text.encode())
        _replace_dir(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "name": spec.name, "num_train": len(train), "num_test": len(test), "num_points": len(xyz), "labels": list(spec.labels)}
