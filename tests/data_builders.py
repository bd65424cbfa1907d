"""Test helpers (no tests here): make small datasets in every supported format.

Everything starts from a generated tabletop scene (nerfstudio transforms.json), converted
into NeRF-synthetic (RGBA, camera_angle_x), COLMAP (.bin / .txt), and distorted variants.
Used by tests/test_data_formats.py and tests/test_data_errors.py; it can build the same
datasets at full size for benchmarks.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import numpy as np
from PIL import Image

from featgs.data.distortion import distort_image
from featgs.data.procedural import MakeConfig, make_scene
from featgs.data.procedural.builtin import resolve_scene
from featgs.plyio import read_ply_vertices

FLIP_YZ = np.diag([1.0, -1.0, -1.0, 1.0])
COLMAP_MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4, "OPENCV_FISHEYE": 5}


def make_tabletop(out: Path, size: int = 32, views: int = 8, test_views: int = 2, seed: int = 0, points: int = 500) -> Path:
    path = resolve_scene("tabletop")
    make_scene(path.read_text(), str(path), out, MakeConfig(size=size, views=views, test_views=test_views, seed=seed, points=points))
    return out


def read_transforms(src: Path) -> dict:
    return json.loads((src / "transforms.json").read_text())


def opencv_camtoworld(frame: dict) -> np.ndarray:
    return np.asarray(frame["transform_matrix"], dtype=np.float64) @ FLIP_YZ


def stem(frame: dict) -> str:
    return Path(frame["file_path"]).stem


def blender_alpha(labels: np.ndarray) -> np.ndarray:
    """Alpha for the RGBA fixture: walls transparent, the ceiling half, the rest opaque."""
    alpha = np.full(labels.shape, 255, dtype=np.uint8)
    alpha[labels == 1] = 0
    alpha[labels == 2] = 128
    return alpha


def to_blender(src: Path, dst: Path, *, with_test_file: bool = True) -> Path:
    """NeRF-synthetic layout: train/ and test/ RGBA PNGs, transforms_{train,test}.json,
    camera_angle_x only, file paths without extension."""
    meta = read_transforms(src)
    test_names = set(meta["test_filenames"])
    angle = 2.0 * math.atan(0.5 * meta["w"] / meta["fl_x"])
    splits: dict[str, list] = {"train": [], "test": []}
    for frame in meta["frames"]:
        split = "test" if frame["file_path"] in test_names else "train"
        if split == "test" and not with_test_file:
            split = "train"
        rgb = np.asarray(Image.open(src / frame["file_path"]).convert("RGB"))
        alpha = blender_alpha(np.asarray(Image.open(src / frame["label_file_path"])))
        (dst / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.dstack([rgb, alpha])).save(dst / split / f"{stem(frame)}.png")
        splits[split].append({"file_path": f"./{split}/{stem(frame)}", "rotation": 0.0, "transform_matrix": frame["transform_matrix"]})
    for split, frames in splits.items():
        if frames:
            (dst / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}, indent=1))
    return dst


def rotation_to_quat(R: np.ndarray) -> np.ndarray:
    """[3, 3] rotation -> (w, x, y, z) with w >= 0."""
    m = R
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k])
        q = [0.0] * 4
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.asarray(q)
    return q if q[0] >= 0 else -q


def _colmap_params(model: str, fx: float, fy: float, cx: float, cy: float, dist) -> list[float]:
    k1, k2, p1, p2 = dist
    return {
        "SIMPLE_PINHOLE": [fx, cx, cy],
        "PINHOLE": [fx, fy, cx, cy],
        "SIMPLE_RADIAL": [fx, cx, cy, k1],
        "RADIAL": [fx, cx, cy, k1, k2],
        "OPENCV": [fx, fy, cx, cy, k1, k2, p1, p2],
        "OPENCV_FISHEYE": [fx, fy, cx, cy, k1, k2, 0.0, 0.0],
    }[model]


def write_colmap_model(folder: Path, cameras: list[dict], images: list[dict], xyz: np.ndarray, rgb: np.ndarray, *, binary: bool) -> None:
    """cameras: {id, model, width, height, params}; images: {id, qvec, tvec, camera_id, name}."""
    folder.mkdir(parents=True, exist_ok=True)
    if binary:
        data = struct.pack("<Q", len(cameras))
        for c in cameras:
            data += struct.pack("<iiQQ", c["id"], COLMAP_MODEL_IDS[c["model"]], c["width"], c["height"])
            data += struct.pack(f"<{len(c['params'])}d", *c["params"])
        (folder / "cameras.bin").write_bytes(data)
        data = struct.pack("<Q", len(images))
        for im in images:
            data += struct.pack("<i7di", im["id"], *im["qvec"], *im["tvec"], im["camera_id"])
            data += im["name"].encode() + b"\0"
            data += struct.pack("<Q", 1) + struct.pack("<ddq", 1.5, 2.5, -1)  # one unmatched 2D point
        (folder / "images.bin").write_bytes(data)
        data = struct.pack("<Q", len(xyz))
        for i, (p, c) in enumerate(zip(xyz, rgb)):
            # No tracks: a track must match the images' 2D points, which record none (-1).
            data += struct.pack("<Q3d3Bd", i + 1, *p, *c, 0.5) + struct.pack("<Q", 0)
        (folder / "points3D.bin").write_bytes(data)
    else:
        lines = ["# Camera list with one line of data per camera:"]
        lines += [f"{c['id']} {c['model']} {c['width']} {c['height']} " + " ".join(repr(float(p)) for p in c["params"]) for c in cameras]
        (folder / "cameras.txt").write_text("\n".join(lines) + "\n")
        lines = ["# Image list with two lines of data per image:"]
        for n, im in enumerate(images):
            lines.append(f"{im['id']} " + " ".join(repr(float(v)) for v in [*im["qvec"], *im["tvec"]]) + f" {im['camera_id']} {im['name']}")
            lines.append("" if n % 2 else "1.5 2.5 -1")  # empty 2D-point lines must not shift the parse
        (folder / "images.txt").write_text("\n".join(lines) + "\n")
        lines = ["# 3D point list with one line of data per point:"]
        lines += [f"{i + 1} {p[0]!r} {p[1]!r} {p[2]!r} {c[0]} {c[1]} {c[2]} 0.5" for i, (p, c) in enumerate(zip(xyz.tolist(), rgb.tolist()))]
        (folder / "points3D.txt").write_text("\n".join(lines) + "\n")


def to_colmap(src: Path, dst: Path, *, binary: bool, model: str = "PINHOLE", dist=(0.0, 0.0, 0.0, 0.0), sparse: str = "sparse/0") -> Path:
    """COLMAP layout: images/NAME.png, one shared camera, poses as world-to-camera quaternions."""
    meta = read_transforms(src)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    images = []
    for i, frame in enumerate(meta["frames"]):
        name = Path(frame["file_path"]).name
        shutil.copyfile(src / frame["file_path"], dst / "images" / name)
        c2w = opencv_camtoworld(frame)
        R = c2w[:3, :3].T
        images.append({"id": i + 1, "qvec": rotation_to_quat(R).tolist(), "tvec": (-R @ c2w[:3, 3]).tolist(), "camera_id": 1, "name": name})
    params = _colmap_params(model, meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"], dist)
    cameras = [{"id": 1, "model": model, "width": meta["w"], "height": meta["h"], "params": params}]
    ply = read_ply_vertices(src / "points3D.ply")
    xyz = np.stack([ply["x"], ply["y"], ply["z"]], 1).astype(np.float64)
    rgb = np.stack([ply["red"], ply["green"], ply["blue"]], 1)
    write_colmap_model(dst / sparse, cameras, images[::-1], xyz, rgb, binary=binary)  # COLMAP order is arbitrary
    return dst


def distort_transforms(src: Path, dst: Path, dist) -> Path:
    """transforms.json with OpenCV k1 k2 p1 p2, images and label maps re-imaged through that lens."""
    meta = read_transforms(src)
    K = np.array([[meta["fl_x"], 0, meta["cx"]], [0, meta["fl_y"], meta["cy"]], [0, 0, 1.0]])
    for frame in meta["frames"]:
        for key, nearest in (("file_path", False), ("label_file_path", True)):
            image = np.asarray(Image.open(src / frame[key]))
            out, _ = distort_image(image.astype(np.float32) if not nearest else image, K, np.asarray(dist), nearest=nearest)
            (dst / frame[key]).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.round(out).astype(np.uint8) if not nearest else out).save(dst / frame[key])
        frame.pop("depth_file_path")
    meta.update(dict(zip(("k1", "k2", "p1", "p2"), dist)))
    for name in ("labels.json", "points3D.ply"):
        shutil.copyfile(src / name, dst / name)
    (dst / "transforms.json").write_text(json.dumps(meta))
    return dst
