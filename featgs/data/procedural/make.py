"""Render a procedural scene into a dataset folder: nerfstudio style, or NeRF-synthetic
("Blender") style for scenes with ``background transparent``.

The folder of a scene with a background (enclosed; every path relative to it)::

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

The folder of a transparent scene (``background transparent``), laid out like a public
NeRF-synthetic capture (lego etc.)::

    transforms_train.json NeRF-synthetic format, read back by featgs.data.load_scene:
    transforms_test.json    camera_angle_x (horizontal field of view, radians) and frames,
                            each with file_path "./{split}/r_{i}" (no extension),
                            transform_matrix (4x4 camtoworld, OpenGL axes),
                            label_file_path "{split}/r_{i}_labels.png"; no test file
                            when there are no test views
    train/r_{i}.png       RGBA, 8 bit: alpha = the pixel's coverage by the scene (fractional
    test/r_{i}.png          at silhouettes), colour not premultiplied; 0,0,0,0 where empty
    {split}/r_{i}_labels.png  label id per pixel (its centre), 8 bit; 0 where it sees nothing
    labels.json           {"0": "background", "1": ...}: label id (string) -> name
    scene.txt             a copy of the scene description used
                          (no depth maps and no point cloud, like the public datasets)

The world frame is the description's: metres, z up. transforms.json lists the train views,
then the test views. Everything is a function of the description and the seed: running twice gives
identical bytes. The folder appears at once (written beside it, then renamed).
"""

from __future__ import annotations

import io
import json
import math
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
from featgs.data.procedural.rig import rig_cameras
from featgs.data.procedural.spec import CONFIG_MINIMUMS, SceneSpec, parse_scene_spec
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
        for key, low in CONFIG_MINIMUMS.items():
            value = getattr(self, key)
            if value < low:
                name = key if key == "supersample" else "--" + key.replace("_", "-")
                raise FeatgsError(f"{name}: expected an integer >= {low}, got {value}")
        if self.seed < 0:
            raise FeatgsError(f"--seed: expected a non-negative integer, got {self.seed}")

    @classmethod
    def for_scene(cls, spec: SceneSpec, **overrides: int | None) -> "MakeConfig":
        """The class defaults, then the scene's ``defaults`` statement, then the ``overrides``
        that are not None (command-line flags)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        return cls(**{**spec.defaults, **given})


@dataclass(frozen=True)
class RenderedView:
    """One view's images: rgb [H, W, 3] in 0..1, depth [H, W] z-depth in metres, labels
    [H, W] uint8 label ids, surface [H, W, 3] world point seen at each pixel centre, alpha
    [H, W] in 0..1 the pixel's coverage by the scene. Where a (transparent) scene's pixel
    centre sees nothing: depth inf, label 0, surface nan; rgb is the mean colour of the
    covered part of the pixel (not premultiplied), 0 where alpha is 0."""

    rgb: np.ndarray
    depth: np.ndarray
    labels: np.ndarray
    surface: np.ndarray
    alpha: np.ndarray


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
    blend two objects); colour too, except at edges (of surfaces, and of the empty
    background of a transparent scene) and high-contrast texture, where it is the mean over
    a ``supersample`` x ``supersample`` grid inside the pixel (anti-aliasing where it
    matters, at a fraction of the cost of supersampling every pixel). Alpha is whether the
    centre ray hits, or at those pixels the fraction of the grid's rays that hit; colour
    there is the mean of the rays that hit. An odd ``supersample`` puts a grid ray on the
    pixel centre, so a labelled pixel always has alpha > 0."""
    h, w = camera.height, camera.width
    label_of = np.array([p.label_id for p in spec.primitives], dtype=np.uint8)
    jj, ii = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pixels = np.stack([jj.ravel(), ii.ravel()], axis=1)  # [H*W, 2] top-left corners
    origins, dirs = camera_rays(camera, pixels + 0.5)
    hits = intersect(spec.primitives, origins, dirs)
    hit = hits.index >= 0
    if not spec.transparent and not hit.all():
        raise FeatgsError(
            f"scene {spec.name}: camera {camera.name} sees empty background; enclose the scene (floor, walls, ceiling) "
            "or declare `background transparent`"
        )
    surface = origins + np.where(hit, hits.t, 0.0)[:, None] * dirs
    rgb = shade(spec, hits, surface)
    alpha = hit.astype(np.float64)
    if supersample > 1:
        busy = np.flatnonzero(_edges(hits.index.reshape(h, w), rgb.reshape(h, w, 3)))
        grid = (np.arange(supersample) + 0.5) / supersample
        offsets = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2)  # [S, 2]
        uv = (pixels[busy][:, None, :] + offsets[None]).reshape(-1, 2)
        ss_origins, ss_dirs = camera_rays(camera, uv)
        ss_hits = intersect(spec.primitives, ss_origins, ss_dirs)
        ss_rgb = shade(spec, ss_hits, ss_origins + np.where(ss_hits.index >= 0, ss_hits.t, 0.0)[:, None] * ss_dirs)
        ss_rgb = ss_rgb.reshape(len(busy), len(offsets), 3)
        if spec.transparent:
            ss_hit = (ss_hits.index >= 0).reshape(len(busy), len(offsets))
            count = ss_hit.sum(axis=1)
            alpha[busy] = count / len(offsets)
            rgb[busy] = (ss_rgb * ss_hit[..., None]).sum(axis=1) / np.maximum(count, 1)[:, None]
        else:
            rgb[busy] = ss_rgb.mean(axis=1)
    surface[~hit] = np.nan
    return RenderedView(
        rgb=rgb.reshape(h, w, 3),
        depth=hits.t.reshape(h, w),
        labels=np.where(hit, label_of[hits.index], 0).astype(np.uint8).reshape(h, w),
        surface=surface.reshape(h, w, 3),
        alpha=alpha.reshape(h, w),
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


def _render(spec: SceneSpec, cameras: list[Camera], config: MakeConfig):
    """Yield (index, camera, RenderedView) for each camera, with a progress bar."""
    for k, camera in enumerate(tqdm(cameras, desc=f"rendering {spec.name}", unit="view", disable=None)):
        yield k, camera, render_view(spec, camera, config.supersample)


def _write_labels_and_spec(tmp: Path, spec: SceneSpec, spec_text: str) -> None:
    _write(tmp, "labels.json", (json.dumps({str(i): n for i, n in enumerate(spec.labels)}, indent=2) + "\n").encode())
    _write(tmp, "scene.txt", spec_text.encode())


def _write_nerfstudio(tmp: Path, spec: SceneSpec, spec_text: str, config: MakeConfig, train: list[Camera], test: list[Camera]) -> int:
    """Render and write the nerfstudio layout (module docstring) into ``tmp``; returns the
    number of initial points written."""
    point_rng = np.random.default_rng([config.seed, 2])
    per_view = [config.points // len(train) + (i < config.points % len(train)) for i in range(len(train))]
    frames, points, colors = [], [], []
    for k, camera, view in _render(spec, train + test, config):
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
    _write_labels_and_spec(tmp, spec, spec_text)
    return len(xyz)


def rgba8(view: RenderedView) -> np.ndarray:
    """[H, W, 4] uint8 RGBA of a view: colour not premultiplied, 0,0,0,0 where alpha rounds to 0."""
    alpha = np.round(view.alpha * 255.0).astype(np.uint8)
    rgb = np.where(alpha[..., None] > 0, np.round(view.rgb * 255.0), 0.0).astype(np.uint8)
    return np.concatenate([rgb, alpha[..., None]], axis=-1)


def _write_blender(tmp: Path, spec: SceneSpec, spec_text: str, config: MakeConfig, train: list[Camera], test: list[Camera]) -> int:
    """Render and write the NeRF-synthetic layout (module docstring) into ``tmp``; returns 0,
    the number of initial points (there is no point cloud)."""
    splits = {"train": [], "test": []}
    for k, camera, view in _render(spec, train + test, config):
        split, i = ("train", k) if k < len(train) else ("test", k - len(train))
        _write(tmp, f"{split}/r_{i}.png", _png_bytes(rgba8(view)))
        _write(tmp, f"{split}/r_{i}_labels.png", _png_bytes(view.labels))
        splits[split].append(
            {
                "file_path": f"./{split}/r_{i}",
                "transform_matrix": flip_yz(camera.camtoworld).tolist(),
                "label_file_path": f"{split}/r_{i}_labels.png",
            }
        )
    for split, frames in splits.items():
        if frames:  # an empty frames list is not a valid NeRF-synthetic file
            meta = {"camera_angle_x": math.radians(spec.rig.fov_deg), "frames": frames}
            _write(tmp, f"transforms_{split}.json", (json.dumps(meta, indent=2) + "\n").encode())
    _write_labels_and_spec(tmp, spec, spec_text)
    return 0


def make_scene(spec_text: str, source: str, out: str | Path, config: MakeConfig = MakeConfig(), *, force: bool = False) -> dict:
    """Render the scene described by ``spec_text`` (from file ``source``) into folder ``out``:
    the nerfstudio layout, or the NeRF-synthetic one for a transparent scene (module docstring).

    Returns a summary: ``{"out", "name", "format", "num_train", "num_test", "num_points",
    "labels"}``; format is "transforms" or "blender", as :func:`featgs.data.load_scene` names it.
    """
    config.check()
    spec = parse_scene_spec(spec_text, source)
    out = Path(out)
    _check_out(out, force)  # fail before rendering, not after
    # independent streams, so changing the number of train views keeps the test cameras
    train = rig_cameras(spec.rig, config.views, config.size, np.random.default_rng([config.seed, 0]), "train")
    test = rig_cameras(spec.rig, config.test_views, config.size, np.random.default_rng([config.seed, 1]), "test")
    writer = _write_blender if spec.transparent else _write_nerfstudio

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{secrets.token_hex(4)}.tmp"
    tmp.mkdir()  # not mkdtemp: its 0700 mode would stay on the renamed folder
    try:
        num_points = writer(tmp, spec, spec_text, config, train, test)
        _replace_dir(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {
        "out": str(out),
        "name": spec.name,
        "format": "blender" if spec.transparent else "transforms",
        "num_train": len(train),
        "num_test": len(test),
        "num_points": num_points,
        "labels": list(spec.labels),
    }
