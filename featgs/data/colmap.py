"""COLMAP datasets: ``images/`` and a sparse model in ``sparse/0/`` or ``sparse/``.

Camera models PINHOLE, SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL and OPENCV are read (the radial
ones are undistorted on loading, as OpenCV k1 k2 p1 p2); images may differ in size. Poses
are COLMAP's world-to-camera quaternion and translation, turned into OpenCV camtoworld. The
model's 3D points and colours become the initial points.

Label maps (featgs): with ``labels.json`` in the folder (label id -> name, as for transforms
datasets), an image ``images/NAME.jpg`` whose ``labels/NAME.png`` exists has that label map
(a single-channel PNG of label ids, at any size: it is resized, nearest, to the camera).

Split: images sorted by name, every 8th (0, 8, 16, ...) is a test view, as in the 3DGS and
mip-NeRF 360 evaluations. The split is decided before missing image files are skipped, so
a missing file never shifts it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch

from featgs.camera import Camera
from featgs.data.colmap_model import ColmapCamera, ColmapImage, read_model
from featgs.data.conventions import colmap_to_camtoworld
from featgs.data.images import image_size
from featgs.data.labels import label_names_beside
from featgs.data.scene import Scene, View
from featgs.errors import FeatgsError

log = logging.getLogger(__name__)

TEST_EVERY = 8


def _intrinsics(cam: ColmapCamera, cameras_path: Path) -> tuple[list[float], list[float]]:
    """([fx, fy, cx, cy], [k1, k2, p1, p2]) of a supported COLMAP camera."""
    p = list(cam.params)
    if cam.model == "SIMPLE_PINHOLE":
        return [p[0], p[0], p[1], p[2]], [0.0] * 4
    if cam.model == "PINHOLE":
        return p[:4], [0.0] * 4
    if cam.model == "SIMPLE_RADIAL":
        return [p[0], p[0], p[1], p[2]], [p[3], 0.0, 0.0, 0.0]
    if cam.model == "RADIAL":
        return [p[0], p[0], p[1], p[2]], [p[3], p[4], 0.0, 0.0]
    if cam.model == "OPENCV":
        return p[:4], p[4:8]
    raise FeatgsError(
        f"{cameras_path}: camera {cam.id} uses model {cam.model}, which is not supported; "
        "expected PINHOLE, SIMPLE_PINHOLE, SIMPLE_RADIAL, RADIAL or OPENCV (undistort fisheye images first)"
    )


def colmap_camera(cam: ColmapCamera, image: ColmapImage, path: Path, cameras_path: Path) -> Camera:
    """The OpenCV camera of one registered image whose file is ``path``."""
    (fx, fy, cx, cy), dist = _intrinsics(cam, cameras_path)
    size = image_size(path)
    if size != (cam.width, cam.height):
        raise FeatgsError(f"{path}: image is {size[0]}x{size[1]}; expected {cam.width}x{cam.height} as camera {cam.id} in {cameras_path} says")
    K = torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)
    c2w = colmap_to_camtoworld(torch.tensor(image.qvec), torch.tensor(image.tvec))
    try:
        return Camera(c2w, K, cam.width, cam.height, distortion=torch.tensor(dist, dtype=torch.float64) if any(dist) else None, name=path.stem)
    except FeatgsError as e:
        raise FeatgsError(f"{cameras_path}: camera {cam.id}: {e}") from None


def sparse_folder(root: Path) -> Path:
    return root / "sparse" / "0" if (root / "sparse" / "0").is_dir() else root / "sparse"


def load_colmap(root: Path, background: Sequence[float]) -> Scene:
    """A COLMAP dataset folder, in COLMAP's world frame."""
    model = read_model(sparse_folder(root))
    label_names = label_names_beside(root)
    train: list[View] = []
    test: list[View] = []
    skipped = 0
    for i, image in enumerate(sorted(model.images, key=lambda im: im.name)):
        path = root / "images" / image.name
        try:
            found = path.is_file()
        except (OSError, ValueError) as e:  # a name too long for the OS, say
            raise FeatgsError(f"{model.images_path}: image name {image.name[:60]!r} is not a usable path ({e.__class__.__name__}); "
                              f"expected a file under {root / 'images'}") from None
        if not found:
            skipped += 1
            continue
        if image.camera_id not in model.cameras:
            raise FeatgsError(f"{model.images_path}: image {image.name} uses camera {image.camera_id}, which {model.cameras_path} lacks")
        camera = colmap_camera(model.cameras[image.camera_id], image, path, model.cameras_path)
        labels = (root / "labels" / image.name).with_suffix(".png") if label_names is not None else None
        view = View(camera, path, labels_path=labels if labels is not None and labels.is_file() else None,
                    background=tuple(background))
        (test if i % TEST_EVERY == 0 else train).append(view)
    if not train and not test:
        raise FeatgsError(f"{model.images_path}: no usable images; expected the {len(model.images)} registered images under {root / 'images'}")
    if skipped:
        log.warning("%s: skipped %d of %d images whose file is missing from %s", model.images_path, skipped, len(model.images), root / "images")
    points = colors = None
    if model.points is not None:
        points = torch.from_numpy(model.points.astype("float32"))
        colors = torch.from_numpy(model.colors.astype("float32") / 255.0)
    return Scene(root, "colmap", train, test, points, colors, label_names, num_skipped=skipped)
