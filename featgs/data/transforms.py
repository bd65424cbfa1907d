"""nerfstudio / instant-ngp ``transforms.json`` datasets.

Keys read (all optional unless noted):

- intrinsics, top level (shared) or per frame (overriding): ``fl_x`` ``fl_y`` ``cx`` ``cy``
  ``w`` ``h``, or ``camera_angle_x`` [``camera_angle_y``] (radians); ``camera_model``
  OPENCV (default), PINHOLE or SIMPLE_PINHOLE; OpenCV distortion ``k1 k2 p1 p2`` (images
  are undistorted on loading; ``k3``/``k4`` must be 0). ``w``/``h`` default to the image
  size and ``cx``/``cy`` to its centre; ``fl_y`` to ``fl_x``.
- ``frames`` (required): ``file_path`` (required; relative to the folder, extension optional:
  .png, .jpg, .jpeg are tried), ``transform_matrix`` (required; 4x4 camtoworld with OpenGL
  axes, converted to OpenCV), ``mask_path`` (non-zero = keep), ``depth_file_path`` (16-bit
  PNG or .npy z-depth, times ``depth_unit_scale_factor``, default 0.001 = millimetres),
  ``label_file_path`` (featgs: a single-channel PNG of label ids named in ``labels.json``
  beside transforms.json).
- split: ``train_filenames`` with ``test_filenames`` (or ``val_filenames``), lists of image
  paths as in nerfstudio; frames in neither list are not used. Without them every 8th frame
  (0, 8, 16, ...) is a test frame.
- initial points: ``ply_file_path``, else ``points3D.ply`` beside transforms.json.

Frames whose image file is missing are skipped and counted, with one warning.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import Optional, Sequence

import torch

from featgs.camera import MAX_IMAGE_SIDE, Camera
from featgs.data.conventions import flip_yz
from featgs.data.images import find_image, image_size
from featgs.data.jsonfile import integer, number, read_json_object, shorten
from featgs.data.labels import label_names_beside
from featgs.data.points import read_point_cloud
from featgs.data.scene import Scene, View
from featgs.errors import FeatgsError

log = logging.getLogger(__name__)

INTRINSIC_KEYS = ("camera_model", "fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y", "k1", "k2", "k3", "k4", "p1", "p2")
CAMERA_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
COMPANIONS = (("label_file_path", "labels_path"), ("depth_file_path", "depth_path"), ("mask_path", "mask_path"))
TEST_EVERY = 8  # without an explicit split, frames 0, 8, 16, ... are test frames


def _matrix(value: object, where: str) -> torch.Tensor:
    try:
        m = torch.tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        m = None
    if m is None or m.shape not in ((4, 4), (3, 4)) or not torch.isfinite(m).all():
        raise FeatgsError(f"{where}: transform_matrix is not a finite 4x4 (or 3x4) matrix of numbers")
    if m.shape == (3, 4):
        m = torch.cat([m, torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)])
    return m


def _focal(d: dict, key: str, angle_key: str, size: int, where: str) -> float | None:
    if key in d:
        f = number(d[key], where, key)
    elif angle_key in d:
        angle = number(d[angle_key], where, angle_key)
        if not 0 < angle < math.pi:
            raise FeatgsError(f"{where}: {angle_key} is {angle!r}; expected an angle in radians between 0 and pi")
        f = 0.5 * size / math.tan(0.5 * angle)
    else:
        return None
    if f <= 0:
        raise FeatgsError(f"{where}: {key} is {f!r}; expected a positive focal length in pixels")
    return f


def frame_camera(d: dict, transform_matrix: object, image: Path, where: str) -> Camera:
    """The OpenCV camera of one frame from its merged intrinsics ``d`` and OpenGL camtoworld."""
    iw, ih = image_size(image)
    w = integer(d["w"], where, "w") if "w" in d else iw
    h = integer(d["h"], where, "h") if "h" in d else ih
    if not (0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
        raise FeatgsError(f"{where}: w, h are {shorten(w)}, {shorten(h)}; expected image sizes in pixels, 1 to {MAX_IMAGE_SIDE}")
    if (w, h) != (iw, ih):
        raise FeatgsError(f"{image}: image is {iw}x{ih}; expected {w}x{h} (w, h in {where})")
    model = d.get("camera_model", "OPENCV")
    if model not in CAMERA_MODELS:
        raise FeatgsError(f"{where}: camera_model {shorten(model)} is not supported; expected one of {', '.join(CAMERA_MODELS)}")
    fx = _focal(d, "fl_x", "camera_angle_x", w, where)
    if fx is None:
        raise FeatgsError(f"{where}: no focal length; expected fl_x or camera_angle_x")
    fy = _focal(d, "fl_y", "camera_angle_y", h, where) or fx
    cx = number(d.get("cx", w / 2.0), where, "cx")
    cy = number(d.get("cy", h / 2.0), where, "cy")
    if any(number(d.get(k, 0.0), where, k) != 0.0 for k in ("k3", "k4")):
        raise FeatgsError(f"{where}: k3/k4 distortion is not supported; expected OpenCV k1 k2 p1 p2 only")
    dist = [number(d.get(k, 0.0), where, k) for k in ("k1", "k2", "p1", "p2")]
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    c2w = flip_yz(_matrix(transform_matrix, where))
    try:
        return Camera(c2w, K, w, h, distortion=torch.tensor(dist, dtype=torch.float64) if any(dist) else None, name=image.stem)
    except FeatgsError as e:
        raise FeatgsError(f"{where}: {e}") from None


def _is_file(root: Path, name: str, where: str, key: str) -> bool:
    """Whether ``root / name`` is a file; a name the OS cannot look up (too long, say) is an
    error naming ``where`` and ``key``, not an OSError."""
    try:
        return (root / name).is_file()
    except (OSError, ValueError) as e:
        raise _unusable(root, name, where, key, e) from None


def _find(root: Path, name: str, where: str, key: str) -> Path | None:
    """:func:`find_image` of ``root / name``, with :func:`_is_file`'s errors."""
    try:
        return find_image(root / name)
    except (OSError, ValueError) as e:
        raise _unusable(root, name, where, key, e) from None


def _unusable(root: Path, name: str, where: str, key: str, error: Exception) -> FeatgsError:
    return FeatgsError(f"{where}: {key} {shorten(name)} is not a usable path ({error.__class__.__name__}); "
                       f"expected a file relative to {root}")


def parse_frames(path: Path, meta: dict, root: Path, background: Sequence[float]) -> list[Optional[View]]:
    """One view per entry of the ``frames`` list of ``meta`` (read from ``path``); None where
    the frame's image file is missing."""
    depth_scale = number(meta.get("depth_unit_scale_factor", 1e-3), str(path), "depth_unit_scale_factor")
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise FeatgsError(f"{path}: no frames; expected a non-empty 'frames' list of {{file_path, transform_matrix}}")
    shared = {k: meta[k] for k in INTRINSIC_KEYS if k in meta}
    views: list[Optional[View]] = []
    for i, frame in enumerate(frames):
        where = f"{path}: frames[{i}]"
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str) or "transform_matrix" not in frame:
            raise FeatgsError(f"{where}: expected an object with file_path (a string) and transform_matrix (4x4)")
        image = _find(root, frame["file_path"], where, "file_path")
        if image is None:
            views.append(None)
            continue
        camera = frame_camera({**shared, **{k: frame[k] for k in INTRINSIC_KEYS if k in frame}}, frame["transform_matrix"], image, where)
        companions = {}
        for key, field in COMPANIONS:
            if frame.get(key) is None:
                continue
            if not isinstance(frame[key], str) or not _is_file(root, frame[key], where, key):
                raise FeatgsError(f"{where}: {key} {shorten(frame[key])} not found; expected a file relative to {root}")
            companions[field] = root / frame[key]
        views.append(View(camera, image, depth_scale=depth_scale, background=tuple(background), **companions))
    return views


def unique_names(views: list[View], root: Path) -> list[View]:
    """``views`` with names that identify them: the image stem, or, where two images share a
    stem (NeRF-synthetic's ``train/r_0`` and ``test/r_0``), the path below ``root`` without
    suffix, folders joined by "_" ("train_r_0"). Caches are keyed by these names."""
    stems = [v.camera.name for v in views]
    if len(set(stems)) == len(stems):
        return views
    out = []
    for v in views:
        try:
            rel = v.image_path.relative_to(root).with_suffix("")
        except ValueError:
            rel = Path(v.image_path.parent.name) / v.image_path.stem
        out.append(replace(v, camera=replace(v.camera, name="_".join(rel.parts))))
    return out


def warn_missing(path: Path, views: list[Optional[View]]) -> None:
    """One warning line with the count of frames (from ``path``) whose image is missing."""
    if None in views:
        log.warning("%s: skipped %d of %d frames whose image file is missing", path, views.count(None), len(views))


def check_usable(path: Path, meta: dict, root: Path, views: list[Optional[View]]) -> None:
    """Fail if no frame has its image; else warn about those that lack it."""
    if views.count(None) == len(views):
        first = meta["frames"][0]["file_path"]
        raise FeatgsError(f"{path}: no usable frames, every image file is missing; expected images such as {root / first}")
    warn_missing(path, views)


def every_nth_split(views: list[Optional[View]]) -> tuple[list[View], list[View]]:
    """Frames 0, 8, 16, ... are test views; counted over all frames, so a missing image never
    shifts the split."""
    train = [v for i, v in enumerate(views) if v is not None and i % TEST_EVERY]
    test = [v for i, v in enumerate(views) if v is not None and i % TEST_EVERY == 0]
    return train, test


def _split_set(path: Path, meta: dict, key: str, root: Path) -> set[Path]:
    names = meta.get(key, [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise FeatgsError(f"{path}: {key} must be a list of image paths (strings)")
    found = (_find(root, n, f"{path}: {key}", "an entry") for n in names)
    return {p.resolve() for p in found if p is not None}


def split_views(path: Path, meta: dict, views: list[Optional[View]], root: Path) -> tuple[list[View], list[View]]:
    """nerfstudio's ``train_filenames``/``test_filenames`` (or ``val_filenames``) split, else every 8th."""
    if "train_filenames" not in meta:
        return every_nth_split(views)
    train = _split_set(path, meta, "train_filenames", root)
    test = _split_set(path, meta, "test_filenames" if "test_filenames" in meta else "val_filenames", root)
    found = [v for v in views if v is not None]
    return [v for v in found if v.image_path.resolve() in train], [v for v in found if v.image_path.resolve() in test]


def load_transforms(root: Path, background: Sequence[float]) -> Scene:
    """A nerfstudio / instant-ngp dataset folder (with ``transforms.json``), in its own frame."""
    path = root / "transforms.json"
    meta = read_json_object(path, "a nerfstudio/instant-ngp transforms.json object with a 'frames' list")
    views = parse_frames(path, meta, root, background)
    check_usable(path, meta, root, views)
    train, test = split_views(path, meta, views, root)
    named = unique_names(train + test, root)
    train, test = named[: len(train)], named[len(train) :]
    points = colors = None
    if "ply_file_path" in meta:
        ply = meta["ply_file_path"]
        if not isinstance(ply, str) or not (root / ply).is_file():
            raise FeatgsError(f"{path}: ply_file_path {ply!r} not found; expected a PLY file relative to {root}")
        points, colors = read_point_cloud(root / ply)
    elif (root / "points3D.ply").is_file():
        points, colors = read_point_cloud(root / "points3D.ply")
    return Scene(root, "transforms", train, test, points, colors, label_names_beside(root), num_skipped=views.count(None))
