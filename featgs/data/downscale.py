"""Downscaled copies of a dataset's images, cached on disk.

Where the copy of an image downscaled by ``F`` lives:

1. Beside the originals, as 3DGS, nerfstudio and mip-NeRF 360 datasets ship theirs:
   ``ROOT/images/a.png`` -> ``ROOT/images_F/a.png`` (the first folder below the dataset root
   gets the suffix ``_F``; an image directly in the root goes to ``ROOT/images_F/``). Paths
   are compared resolved (``images/../a.png`` is ``ROOT/a.png``). A file there of the right
   size is read, whoever made it (so a dataset's own ``images_2``/``images_4``/``images_8``
   are used as they are). featgs writes there only a *new* file, in a dataset folder it may
   write to, at a place where no image of the scene lives, to which no other image of the
   scene maps, and which stays inside the dataset folder (a symlinked ``images_2`` pointing
   at ``images`` is caught): it never overwrites a file of the dataset.
2. Otherwise in the per-user cache, ``$XDG_CACHE_HOME/featgs/downscaled`` (default
   ``~/.cache/featgs/downscaled``), in a folder named by a hash of the source's resolved path,
   modification time and size and of the factor: so a read-only (shared) dataset works, an
   image outside the dataset folder (an absolute ``file_path``) gets its own copy even when
   another has the same file name, an edited source gets a fresh copy, and a file already at
   the place of rule 1 that is not a copy of the right size (a damaged or foreign file) is
   left alone.

Copies are made by area averaging (alpha-aware), PNG or JPEG as the source's extension says
(PNG for other formats, the name then ending in ``.png``), and written atomically.
Intrinsics scale with the image size (:meth:`Camera.scaled`).
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Mapping, Optional

from PIL import Image
from tqdm import tqdm

from featgs import usercache
from featgs.atomic import atomic_open
from featgs.data.images import DECODE_ERRORS, IMAGE_SUFFIXES, check_format, image_size
from featgs.data.scene import Scene, View
from featgs.errors import FeatgsError

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}


def user_cache_dir(environ: Optional[Mapping[str, str]] = None) -> Path:
    """The per-user cache of downscaled copies: ``$XDG_CACHE_HOME/featgs/downscaled``."""
    return usercache.user_cache_dir("downscaled", environ)


def _copy_name(image: Path) -> str:
    """The file name of a copy: the source's, with ``.png`` added when its suffix names
    neither PNG nor JPEG (the copy is written as PNG and must be read back as one)."""
    return image.name if image.suffix.lower() in IMAGE_SUFFIXES else image.name + ".png"


def downscaled_path(root: Path, image: Path, factor: float) -> Optional[Path]:
    """Where the copy of ``image`` downscaled by ``factor`` goes beside the originals (rule 1
    of the module docstring, before the checks that may send it to the user cache); None for
    an image outside the dataset folder, whose copy only the user cache holds."""
    tag = f"{factor:g}"
    try:
        rel = image.resolve().relative_to(root.resolve())
    except ValueError:
        return None
    name = _copy_name(rel)
    if len(rel.parts) < 2:
        return root / f"images_{tag}" / name
    return root / f"{rel.parts[0]}_{tag}" / Path(*rel.parts[1:-1]) / name


def user_cache_path(cache: Path, image: Path, factor: float) -> Path:
    """Where the copy of ``image`` downscaled by ``factor`` goes in the user cache ``cache``:
    keyed by the source's resolved path, modification time and size, and the factor."""
    resolved = image.resolve()
    st = resolved.stat()
    key = hashlib.sha256(f"{resolved}\0{st.st_mtime_ns}\0{st.st_size}\0{factor!r}".encode()).hexdigest()[:32]
    return cache / key / _copy_name(image)


def _has_size(path: Path, width: int, height: int) -> bool:
    """Whether ``path`` is a readable image of ``width`` x ``height`` (False if it is not)."""
    try:
        return path.is_file() and image_size(path) == (width, height)
    except (FeatgsError, OSError):
        return False


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _may_write(target: Path, root: Path, taken: set[Path]) -> bool:
    """Whether a new copy may be written at ``target`` in the dataset ``root``: not where a
    file exists (the dataset's, not ours to replace), not at any file of the scene
    (``taken``, resolved), inside the dataset folder once symlinks are followed, in a folder
    this process may write to."""
    try:
        if target.exists() or target.is_symlink():
            return False
        resolved = _resolved(target)
        return (resolved is not None and resolved not in taken and _inside(resolved, root.resolve())
                and usercache.writable_folder(target.parent))
    except OSError:  # a name the OS refuses (too long): not a place for a copy
        return False


def _shrink(source: Path, width: int, height: int) -> Image.Image:
    """``source`` resized to ``width`` x ``height`` by area averaging."""
    try:
        with Image.open(source) as im:
            check_format(source, im)
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            return im.resize((width, height), Image.Resampling.BOX)  # RGBA is premultiplied inside
    except FileNotFoundError:
        raise FeatgsError(f"{source}: file not found; expected a PNG or JPEG image") from None
    except DECODE_ERRORS as e:
        raise FeatgsError(f"{source}: cannot read image ({e.__class__.__name__}); expected a PNG or JPEG image") from None


def _write(small: Image.Image, target: Path) -> None:
    fmt = _FORMATS.get(target.suffix.lower(), "PNG")
    with atomic_open(target, "wb") as f:
        small.save(f, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def ensure_downscaled(source: Path, root: Path, factor: float, width: int, height: int, *,
                      cache: Path, taken: set[Path], shared: bool) -> Path:
    """The path of a ``width`` x ``height`` copy of ``source`` (an image of the dataset
    ``root``) downscaled by ``factor``, made if there is none (rules of the module docstring).

    Args:
        cache: the user cache folder (:func:`user_cache_dir`).
        taken: resolved paths of every file of the scene, where no copy may go.
        shared: another image of the scene maps to the same place beside the originals, so
            neither may use it.
    """
    beside = downscaled_path(root, source, factor)
    place = _resolved(beside)
    small = None
    if place is not None and not shared and place not in taken:
        if _has_size(beside, width, height):
            return beside
        if _may_write(beside, root, taken):
            small = _shrink(source, width, height)
            try:
                _write(small, beside)
                return beside
            except OSError:
                pass  # a read-only or full dataset folder: the user cache below
    try:
        target = user_cache_path(cache, source, factor)
    except OSError as e:
        raise FeatgsError(f"{source}: cannot read file ({e.__class__.__name__}); expected a PNG or JPEG image") from None
    if _has_size(target, width, height):
        return target
    if small is None:
        small = _shrink(source, width, height)
    try:
        _write(small, target)
    except OSError as e:
        raise FeatgsError(f"{target}: cannot write the downscaled copy of {source} ({e.strerror or e.__class__.__name__}); "
                          "expected a writable cache folder (set XDG_CACHE_HOME) or dataset folder") from None
    return target


def _resolved(path: Optional[Path]) -> Optional[Path]:
    """``path`` resolved, or None for no path or one that cannot be (a symlink loop)."""
    try:
        return None if path is None else path.resolve()
    except (OSError, RuntimeError):
        return None


def _scene_files(scene: Scene) -> set[Path]:
    """Resolved paths of every file the scene's views read: no copy may be written there."""
    files = set()
    for v in scene.views:
        for p in (v.image_path, v.labels_path, v.depth_path, v.mask_path):
            if p is not None:
                files.add(p.resolve())
    return files


def downscale_scene(scene: Scene, factor: float, cache: Optional[Path] = None) -> Scene:
    """``scene`` with every image downscaled by ``factor`` (>= 1) through the on-disk caches
    (``cache``: the user cache folder, default :func:`user_cache_dir`)."""
    if not (factor >= 1.0 and math.isfinite(factor)):
        raise FeatgsError(f"--downscale: expected a finite factor >= 1, got {factor:g}")
    if factor == 1.0:
        return scene
    cache = user_cache_dir() if cache is None else cache
    taken = _scene_files(scene)
    sources = {v.image_path.resolve() for v in scene.views}
    # Two images mapping to one place beside the originals ("a.png" and "images/a.png"):
    # neither takes it, each gets its own copy in the user cache.
    places = Counter(_resolved(downscaled_path(scene.root, s, factor)) for s in sources)
    bar = tqdm(total=len(scene.views), desc=f"downscaling images by {factor:g}", unit="image", disable=None)

    def shrink(view: View) -> View:
        camera = view.camera.scaled(1.0 / factor)
        place = _resolved(downscaled_path(scene.root, view.image_path, factor))
        shared = place is not None and places[place] > 1
        target = ensure_downscaled(view.image_path, scene.root, factor, camera.width, camera.height,
                                   cache=cache, taken=taken, shared=shared)
        bar.update()
        return replace(view, camera=camera, image_path=target)

    with bar:
        return replace(scene, train=[shrink(v) for v in scene.train], test=[shrink(v) for v in scene.test])
