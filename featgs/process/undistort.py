"""Write the reconstruction as a standard COLMAP dataset: ``images/`` and ``sparse/0``.

3DGS renders through a pinhole camera, so a model whose cameras carry lens distortion
(SIMPLE_RADIAL, RADIAL, OPENCV) is undistorted by COLMAP's image undistorter: every
registered image is resampled to a PINHOLE camera and the model follows. A model that is
already pinhole is written as it is, beside byte-for-byte copies of its images. Images the
mapper did not register are left out of ``images/``.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from tqdm.auto import tqdm

from featgs.errors import FeatgsError
from featgs.process.config import PINHOLE_MODELS
from featgs.process.inputs import JPEG_QUALITY


def needs_undistortion(model) -> bool:
    """Whether any camera of the pycolmap Reconstruction ``model`` has a distortion model."""
    return any(cam.model.name not in PINHOLE_MODELS for cam in model.cameras.values())


def write_dataset(model, images: Path, dataset: Path, work: Path, *, max_size: int, threads: int,
                  progress: bool = True) -> bool:
    """Write ``dataset/images/`` (the registered images of ``images``) and ``dataset/sparse/0``
    (the model, PINHOLE). ``work`` is an empty scratch folder; undistorted images are at most
    ``max_size`` px on their longest side (undistortion may otherwise enlarge them a little).
    Returns whether the images were undistorted."""
    import pycolmap

    (dataset / "sparse").mkdir(parents=True, exist_ok=True)
    names = [model.images[i].name for i in model.reg_image_ids()]
    undistort = needs_undistortion(model)
    with tqdm(total=len(names), desc="undistorting" if undistort else "copying images", unit="image",
              disable=not progress) as bar:
        if not undistort:
            (dataset / "images").mkdir(parents=True, exist_ok=True)
            for name in names:
                # a copy, never a link: the staged file may be a link to the user's own photo
                shutil.copyfile(images / name, dataset / "images" / name)
                bar.update()
            model.write(str(_made(dataset / "sparse" / "0")))
            return False
        distorted = _made(work / "distorted")
        model.write(str(distorted))
        out = work / "undistorted"
        options = pycolmap.UndistortCameraOptions()
        options.max_image_size = max_size
        try:
            pycolmap.undistort_images(out, distorted, images, output_type="COLMAP", undistort_options=options,
                                      jpeg_quality=JPEG_QUALITY, num_threads=threads)
        except (RuntimeError, ValueError, OSError) as e:
            raise FeatgsError(f"{images}: undistorting the images failed ({' '.join(str(e).split())[:200]}); "
                              "expected the registered images there") from None
        missing = [n for n in names if not (out / "images" / n).is_file()]
        if missing:
            raise FeatgsError(f"{images / missing[0]}: the undistorter wrote no image for it; expected all "
                              f"{len(names)} registered images")
        os.replace(out / "images", dataset / "images")
        # COLMAP writes the model to sparse/ (and scripts for dense stereo that we do not
        # ship); 3DGS and featgs look in sparse/0 first.
        os.replace(out / "sparse", dataset / "sparse" / "0")
        bar.update(len(names))
    return True


def _made(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return folder
