"""Reading a COLMAP sparse model (``cameras``, ``images``, ``points3D``; ``.bin`` or ``.txt``).

pycolmap's ``Reconstruction`` reads the files (both formats, with or without the rigs and
frames of COLMAP 3.12+); this module keeps what posing and initialising need (camera models
and parameters, image poses and names, point positions and colours) and turns what pycolmap
raises into one line naming the folder.

Before pycolmap sees a binary file, the element count in its first 8 bytes is checked
against the file's size: pycolmap reserves memory for the count it reads, so a corrupt count
(2^40 points) would ask for terabytes.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from featgs.errors import FeatgsError

# The fewest bytes one record of each binary file can take (COLMAP's reconstruction_io_binary):
# cameras: id, model id (int32), width, height (uint64), >= 3 doubles;
# images: id (int32), qvec + tvec (7 doubles), camera id (int32), a name of >= 1 char and its
#   NUL, the 2D point count (uint64);
# points3D: id (uint64), xyz (3 doubles), rgb (3 bytes), error (double), track length (uint64).
_MIN_RECORD_BYTES = {"cameras": 4 + 4 + 8 + 8 + 3 * 8, "images": 4 + 7 * 8 + 4 + 2 + 8, "points3D": 8 + 24 + 3 + 8 + 8}


@dataclass(frozen=True)
class ColmapCamera:
    id: int
    model: str  # COLMAP's model name, e.g. "PINHOLE"
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


def read_model(folder: Path) -> ColmapModel:
    """The model in ``folder``: binary files when ``cameras.bin`` exists, else text.

    Registered images only (an image without a pose cannot be a view). ``points`` is None
    when the model has no points3D file.
    """
    import pycolmap

    ext = ".bin" if (folder / "cameras.bin").is_file() else ".txt"
    cameras_path, images_path, points_path = (folder / f"{name}{ext}" for name in ("cameras", "images", "points3D"))
    for path in (cameras_path, images_path):
        if not path.is_file():
            raise FeatgsError(f"{path}: file not found; expected a COLMAP model (cameras, images, points3D as .bin or .txt) in {folder}")
    if ext == ".bin":
        for path in (cameras_path, images_path, points_path):
            if path.is_file():
                _check_binary_count(path)
    has_points = points_path.is_file()
    try:
        if has_points:
            model = pycolmap.Reconstruction(str(folder))
        else:  # pycolmap reads all three files or none: give it an empty points3D beside copies
            model = _read_without_points(folder, ext, pycolmap)
    except (ValueError, IndexError, RuntimeError, MemoryError, OverflowError) as e:
        raise FeatgsError(_explained(e, folder, cameras_path, images_path)) from None
    cameras = {
        cam_id: ColmapCamera(cam_id, cam.model.name, int(cam.width), int(cam.height), tuple(float(p) for p in cam.params))
        for cam_id, cam in model.cameras.items()
    }
    images = []
    for image_id, image in model.images.items():
        if not image.has_pose:
            continue
        pose = image.cam_from_world()
        x, y, z, w = (float(v) for v in pose.rotation.quat)  # Eigen's order
        try:
            name = image.name
        except UnicodeDecodeError:
            raise FeatgsError(f"{images_path}: the name of image {image_id} is not UTF-8 text; truncated or corrupt {images_path.name}") from None
        images.append(ColmapImage(image_id, (w, x, y, z), tuple(float(v) for v in pose.translation), image.camera_id, name))
    points = colors = None
    if has_points:
        table = model.points3D
        records = [table[i] for i in sorted(table)]  # the file's (id) order, not the hash map's
        points = np.array([p.xyz for p in records], dtype=np.float64).reshape(-1, 3)
        colors = np.array([p.color for p in records], dtype=np.uint8).reshape(-1, 3)
        if not (np.abs(points) <= np.finfo(np.float32).max).all():  # (NaN too) training holds float32
            raise FeatgsError(f"{points_path}: has non-finite point coordinates (or beyond float32's 3.4e38); "
                              "expected finite X Y Z")
    return ColmapModel(cameras_path, images_path, cameras, images, points, colors)


def _explained(error: Exception, folder: Path, cameras_path: Path, images_path: Path) -> str:
    """pycolmap's exception as one line, in the user's terms where we know them."""
    reason = " ".join(str(error).split()) or error.__class__.__name__
    # A model without rigs gets one trivial rig per camera, so a missing rig is a missing camera.
    missing = re.fullmatch(r"(?:Rig|Camera) with ID (\d+) does not exist", reason)
    if missing:
        return f"{images_path}: an image uses camera {missing.group(1)}, which {cameras_path.name} lacks (or {images_path.name} is corrupt)"
    return f"{folder}: unreadable COLMAP model ({reason})"


def _check_binary_count(path: Path) -> None:
    """A one-line error if the count heading a COLMAP binary file, or a count inside one of its
    records (an image's 2D points, a point's track), cannot fit in the file."""
    kind = path.stem
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise FeatgsError(f"{path}: truncated COLMAP binary file; expected {path.name} starting with a count")
    (count,) = struct.unpack("<Q", head)
    if count * _MIN_RECORD_BYTES[kind] > size - 8:
        raise FeatgsError(f"{path}: claims {count} records, more than its {size} bytes can hold; truncated or corrupt {path.name}")
    if kind in _INNER_COUNTS:
        _check_inner_counts(path, count, *_INNER_COUNTS[kind])


# Records whose length is a count they hold: (bytes before the name (None: no name), bytes from
# the name's NUL or the record's start to the count, bytes per counted element, what is counted).
# images: id, qvec, tvec, camera id, name NUL, count of 2D points (x, y doubles, point3D id int64);
# points3D: id, xyz, rgb, error, track length (image id, 2D point index: two int32).
_INNER_COUNTS = {"images": (4 + 7 * 8 + 4, 0, 24, "2D points"), "points3D": (None, 8 + 24 + 3 + 8, 8, "track elements")}


def _check_inner_counts(path: Path, count: int, name_at: Optional[int], count_at: int, element: int, what: str) -> None:
    """Walk the records of a COLMAP binary file: pycolmap reads as many elements as a record's
    count says, past the end of the file (a corrupt track length of 10^12 makes it grow a vector
    until memory runs out)."""
    with open(path, "rb") as f:
        data = f.read()
    pos = 8
    for i in range(count):
        if name_at is not None:
            nul = data.find(b"\0", pos + name_at)
            at = (nul if nul >= 0 else len(data)) + 1 + count_at
        else:
            at = pos + count_at
        if at + 8 > len(data):
            raise FeatgsError(f"{path}: record {i} of {count} is cut off at byte {len(data)}; truncated or corrupt {path.name}")
        (n,) = struct.unpack_from("<Q", data, at)
        if n * element > len(data) - at - 8:
            raise FeatgsError(f"{path}: record {i} claims {n} {what}, more than the {len(data) - at - 8} bytes left "
                              f"can hold; truncated or corrupt {path.name}")
        pos = at + 8 + n * element


def _read_without_points(folder: Path, ext: str, pycolmap):
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="featgs-colmap-") as tmp:
        for name in ("cameras", "images", "rigs", "frames"):
            if (folder / f"{name}{ext}").is_file():
                shutil.copyfile(folder / f"{name}{ext}", Path(tmp) / f"{name}{ext}")
        (Path(tmp) / f"points3D{ext}").write_bytes(struct.pack("<Q", 0) if ext == ".bin" else b"")
        return pycolmap.Reconstruction(tmp)
