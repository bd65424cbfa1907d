"""Reading a COLMAP sparse model (``cameras``, ``images``, ``points3D``; ``.bin`` or ``.txt``).

Only what posing and initialising needs is kept: camera models and parameters, image poses
and names, point positions and colours (2D keypoints and tracks are skipped).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from featgs.errors import FeatgsError

# COLMAP's model ids, names and parameter counts (src/colmap/sensor/models.h).
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
_PARAMS_BY_NAME = {name: n for name, n in CAMERA_MODELS.values()}


@dataclass(frozen=True)
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass(frozen=True)
class ColmapImage:
    id: int
    qvec: tuple[float, float, float, float]  # world-to-camera rotation (w, x, y, z)
    tvec: tuple[float, float, float]  # world-to-camera translation
    camera_id: int
    name: str


@dataclass(frozen=True)
class ColmapModel:
    """A sparse model; ``points`` [M, 3] float64 and ``colors`` [M, 3] uint8, or None."""

    cameras_path: Path
    images_path: Path
    cameras: dict[int, ColmapCamera]
    images: list[ColmapImage]
    points: Optional[np.ndarray]
    colors: Optional[np.ndarray]


class _Binary:
    """Little-endian reads from a whole file, with errors naming it."""

    def __init__(self, path: Path, expected: str):
        self.path = path
        self.expected = expected
        try:
            self.data = path.read_bytes()
        except OSError as e:
            raise FeatgsError(f"{path}: cannot read file ({e.__class__.__name__}); expected {expected}") from None
        self.offset = 0

    def fail(self, why: str = "truncated or malformed") -> FeatgsError:
        return FeatgsError(f"{self.path}: {why} COLMAP binary file; expected {self.expected}")

    def read(self, fmt: str) -> tuple:
        try:
            values = struct.unpack_from("<" + fmt, self.data, self.offset)
        except struct.error:
            raise self.fail() from None
        self.offset += struct.calcsize("<" + fmt)
        return values

    def cstring(self) -> str:
        end = self.data.find(b"\0", self.offset)
        if end < 0:
            raise self.fail()
        text = self.data[self.offset : end].decode("utf-8", errors="replace")
        self.offset = end + 1
        return text

    def skip(self, nbytes: int) -> None:
        if self.offset + nbytes > len(self.data):
            raise self.fail()
        self.offset += nbytes


def _read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    f = _Binary(path, "cameras.bin")
    cameras = {}
    for _ in range(f.read("Q")[0]):
        cam_id, model_id, width, height = f.read("iiQQ")
        if model_id not in CAMERA_MODELS:
            raise FeatgsError(f"{path}: camera {cam_id} has unknown model id {model_id}; expected a COLMAP model id 0..{max(CAMERA_MODELS)}")
        name, n = CAMERA_MODELS[model_id]
        cameras[cam_id] = ColmapCamera(cam_id, name, width, height, f.read(f"{n}d"))
    return cameras


def _read_images_bin(path: Path) -> list[ColmapImage]:
    f = _Binary(path, "images.bin")
    images = []
    for _ in range(f.read("Q")[0]):
        image_id, qw, qx, qy, qz, tx, ty, tz, cam_id = f.read("i7di")
        name = f.cstring()
        f.skip(24 * f.read("Q")[0])  # 2D points: x, y (double), point3D id (int64)
        images.append(ColmapImage(image_id, (qw, qx, qy, qz), (tx, ty, tz), cam_id, name))
    return images


def _read_points_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    f = _Binary(path, "points3D.bin")
    count = f.read("Q")[0]
    # records have variable-length tracks: find their offsets, then gather the fixed heads at once
    offsets = np.empty(count, dtype=np.int64)
    for i in range(count):
        offsets[i] = f.offset
        f.skip(43)  # id (uint64), xyz (3 double), rgb (3 uint8), error (double)
        f.skip(8 * f.read("Q")[0])  # track: (image id, point2D index) int32 pairs
    head = np.dtype([("id", "<u8"), ("xyz", "<f8", 3), ("rgb", "u1", 3)])
    raw = np.frombuffer(f.data, dtype=np.uint8)
    records = raw[offsets[:, None] + np.arange(head.itemsize)].copy().view(head).reshape(count)
    return records["xyz"].astype(np.float64), records["rgb"].astype(np.uint8)


def _text_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as e:
        raise FeatgsError(f"{path}: cannot read file ({e.__class__.__name__}); expected a COLMAP text model file") from None


def _read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cameras = {}
    for lineno, line in enumerate(_text_lines(path), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            cam_id, model, width, height = int(words[0]), words[1], int(words[2]), int(words[3])
            params = tuple(float(w) for w in words[4:])
        except (IndexError, ValueError):
            raise FeatgsError(f"{path}:{lineno}: expected CAMERA_ID MODEL WIDTH HEIGHT PARAMS...") from None
        if model not in _PARAMS_BY_NAME:
            raise FeatgsError(f"{path}:{lineno}: unknown camera model {model!r}; expected a COLMAP model name such as PINHOLE or OPENCV")
        if len(params) != _PARAMS_BY_NAME[model]:
            raise FeatgsError(f"{path}:{lineno}: {model} has {len(params)} parameters; expected {_PARAMS_BY_NAME[model]}")
        cameras[cam_id] = ColmapCamera(cam_id, model, width, height, params)
    return cameras


def _read_images_txt(path: Path) -> list[ColmapImage]:
    images = []
    lines = _text_lines(path)
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#"):
            continue
        words = line.split()
        try:
            image_id = int(words[0])
            q = tuple(float(w) for w in words[1:5])
            t = tuple(float(w) for w in words[5:8])
            cam_id = int(words[8])
            name = " ".join(words[9:])
        except (IndexError, ValueError):
            name = ""
        if not name:
            raise FeatgsError(f"{path}:{i}: expected IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME")
        images.append(ColmapImage(image_id, q, t, cam_id, name))
        i += 1  # the image's 2D points line follows, even when it is empty
    return images


def _read_points_txt(path: Path) -> tuple[np.ndarray, np.ndarray]:
    xyz, rgb = [], []
    for lineno, line in enumerate(_text_lines(path), start=1):
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        try:
            xyz.append([float(w) for w in words[1:4]])
            rgb.append([int(w) for w in words[4:7]])
        except ValueError:
            raise FeatgsError(f"{path}:{lineno}: expected POINT3D_ID X Y Z R G B ERROR TRACK...") from None
        if len(xyz[-1]) != 3 or len(rgb[-1]) != 3:
            raise FeatgsError(f"{path}:{lineno}: expected POINT3D_ID X Y Z R G B ERROR TRACK...")
    return np.array(xyz, dtype=np.float64).reshape(-1, 3), np.clip(np.array(rgb), 0, 255).astype(np.uint8).reshape(-1, 3)


def read_model(folder: Path) -> ColmapModel:
    """The model in ``folder``: binary files when ``cameras.bin`` exists, else text."""
    ext = ".bin" if (folder / "cameras.bin").is_file() else ".txt"
    cameras_path, images_path, points_path = (folder / f"{name}{ext}" for name in ("cameras", "images", "points3D"))
    for path in (cameras_path, images_path):
        if not path.is_file():
            raise FeatgsError(f"{path}: file not found; expected a COLMAP model (cameras, images, points3D as .bin or .txt) in {folder}")
    if ext == ".bin":
        cameras, images = _read_cameras_bin(cameras_path), _read_images_bin(images_path)
        points = _read_points_bin(points_path) if points_path.is_file() else (None, None)
    else:
        cameras, images = _read_cameras_txt(cameras_path), _read_images_txt(images_path)
        points = _read_points_txt(points_path) if points_path.is_file() else (None, None)
    return ColmapModel(cameras_path, images_path, cameras, images, *points)
