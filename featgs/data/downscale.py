"""Downscaled copies of a dataset's images, cached on disk beside the originals.

``ROOT/images/a.png`` downscaled by 2 lives at ``ROOT/images_2/a.png`` (the first folder
under the dataset root gets the suffix ``_{factor}``, as nerfstudio and mip-NeRF 360 name
theirs, so downscaled copies a dataset ships are reused); an image directly in the root, or
outside it, goes to ``ROOT/images_{factor}/NAME``. A cached file of the expected size is
reused; otherwise it is (re)made by area averaging (alpha-aware) and written atomically.
Intrinsics scale with the image size (:meth:`Camera.scaled`).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from featgs.atomic import atomic_open
from featgs.data.images import DECODE_ERRORS, image_size
from featgs.data.scene import Scene, View
from featgs.errors import FeatgsError

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def downscaled_path(root: Path, image: Path, factor: float) -> Path:
    """Where the copy of ``image`` downscaled by ``factor`` is cached."""
    tag = f"{factor:g}"
    try:
        rel = image.relative_to(root)
    except ValueError:
        rel = Path(image.name)
    if len(rel.parts) < 2:
        return root / f"images_{tag}" / rel.name
    return root / f"{rel.parts[0]}_{tag}" / Path(*rel.parts[1:])


def ensure_downscaled(source: Path, target: Path, width: int, height: int) -> None:
    """Make ``target``, ``source`` resized to ``width`` x ``height``, unless it already is."""
    if target.is_file():
        try:
            if image_size(target) == (width, height):
                return
        except FeatgsError:
            pass  # a damaged cache file is remade below
    try:
        with Image.open(source) as im:
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            small = im.resize((width, height), Image.Resampling.BOX)  # RGBA is premultiplied inside
    except FileNotFoundError:
        raise FeatgsError(f"{source}: file not found; expected a PNG or JPEG image") from None
    except DECODE_ERRORS as e:
        raise FeatgsError(f"{source}: cannot read image ({e.__class__.__name__}); expected a PNG or JPEG image") from None
    fmt = _FORMATS.get(target.suffix.lower(), "PNG")
    try:
        with atomic_open(target, "wb") as f:
            small.save(f, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    except OSError as e:
        raise FeatgsError(f"{target}: cannot write the downscaled copy ({e.__class__.__name__}); expected a writable folder beside the images") from None


def downscale_scene(scene: Scene, factor: float) -> Scene:
    """``scene`` with every image downscaled by ``factor`` (> 1) through the on-disk cache."""
    if not factor >= 1.0:
        raise FeatgsError(f"--downscale: expected a factor >= 1, got {factor:g}")
    if factor == 1.0:
        return scene
    bar = tqdm(total=len(scene.views), desc=f"downscaling images by {factor:g}", unit="image", disable=None)

    def shrink(view: View) -> View:
        camera = view.camera.scaled(1.0 / factor)
        target = downscaled_path(scene.root, view.image_path, factor)
        ensure_downscaled(view.image_path, target, camera.width, camera.height)
        bar.update()
        return replace(view, camera=camera, image_path=target)

    with bar:
        return replace(scene, train=[shrink(v) for v in scene.train], test=[shrink(v) for v in scene.test])
