"""The first stage of ``featgs process``: a folder of photos or a video -> a folder of images
ready for structure from motion (upright, at most ``max_size`` pixels on the longest side).

Photos: JPEG and PNG, and whatever else Pillow decodes by its extension (WebP, TIFF, BMP,
AVIF; HEIC/HEIF through the pillow-heif plugin). EXIF orientation is applied, so
the pixels are upright; the rest of the EXIF block (camera make, model, focal length, which
COLMAP reads as a prior on the focal length) is kept. A photo that needs no change is
copied byte for byte; others are written as PNG (from PNG) or JPEG at quality 95.

Video: decoded with PyAV (FFmpeg's libraries, shipped in its wheel), a frame taken every
1 / ``fps`` seconds of presentation time, turned upright by the stream's display matrix
(phones record portrait video sideways with a rotation flag), written as
``frame_00000.jpg``, ``frame_00001.jpg``, ... (JPEG at quality 95).

Label maps (photos only): a ``labels/`` folder in the photo folder with one single-channel PNG
of label ids per photo, named by the photo's stem (``IMG_1.jpg`` -> ``labels/IMG_1.png``), at
the photo's size (or its --max-size size), and ``labels.json`` beside the photos naming the
ids (``{"0": "floor", "1": "mug"}``). They are checked here and left where they are; the
pipeline copies those of the registered images into the dataset.

Every input is decoded whole here, so an unreadable file stops the run before the slow
stages, with a one-line error naming it.
"""

from __future__ import annotations

import math
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from featgs.data.images import DECODE_ERRORS, check_format, read_label_map
from featgs.data.labels import LABELS_FILE, read_label_names
from featgs.errors import FeatgsError
from featgs.process.config import ProcessConfig

# Extensions taken from a folder as photos (case-insensitive); other files are listed as ignored.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".heic", ".heif", ".webp", ".tif", ".tiff", ".bmp", ".avif")
HEIF_EXTENSIONS = (".heic", ".heif")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".mts", ".m2ts", ".3gp", ".wmv", ".ogv")
JPEG_QUALITY = 95
MIN_IMAGES = 3  # two views fix a scale-free pair; a third is the least that checks it
LABELS_FOLDER = "labels"  # INPUT/labels/<photo stem>.png with INPUT/labels.json: label maps

_ORIENTATION = 0x0112
_EXIF_IFD = 0x8769
_MAKE, _MODEL, _FOCAL, _FOCAL_35MM = 0x010F, 0x0110, 0x920A, 0xA405


@dataclass(frozen=True)
class StagedImage:
    """One image ready for SfM: its file ``name`` in the staging folder, where it came from
    (``source``: a path, or the video and the frame's time), its ``size`` (width, height)
    after orientation and resizing, and ``camera_key``: what must agree for two images to
    share intrinsics (size, EXIF make, model and focal lengths)."""

    name: str
    source: str
    size: tuple[int, int]
    camera_key: tuple
    resized: bool = False


@dataclass(frozen=True)
class StagedInputs:
    """The staged images (``images``, in matching order: file names sorted naturally, or
    frame order), the ``folder`` holding them, whether they come from a video, and the files
    of the input folder that were not taken as images (``ignored``, names). With label maps:
    ``labels`` maps each staged image name to its label map, ``label_names`` is labels.json."""

    folder: Path
    images: list[StagedImage]
    video: bool
    ignored: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    labels: dict[str, Path] = field(default_factory=dict)
    label_names: Optional[Path] = None

    @property
    def names(self) -> list[str]:
        return [im.name for im in self.images]

    def one_camera(self) -> bool:
        """Whether one set of intrinsics plausibly fits every image: a video, or photos of
        one size whose EXIF names one camera and focal length (or that have no EXIF at all)."""
        return self.video or len({im.camera_key for im in self.images}) == 1


def natural_key(name: str) -> list:
    """Sort key that orders IMG_2 before IMG_10 (digits compared as numbers), so sequential
    matching follows the order a camera numbered its shots."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def stage_inputs(source: Path, folder: Path, config: ProcessConfig, *, progress: bool = True) -> StagedInputs:
    """Turn ``source`` (a folder of photos or a video file) into upright images of at most
    ``config.max_size`` pixels in the existing, empty ``folder``.

    Raises:
        FeatgsError: ``source`` is missing, is a single image, holds no photos, a photo or the
            video does not decode, or fewer than 3 images come out.
    """
    source = Path(source)
    if not source.exists():
        raise FeatgsError(f"{source}: not found; expected a folder of photos (JPEG, PNG, ...) or a video file")
    if source.is_dir():
        staged = _stage_folder(source, folder, config, progress)
    elif source.suffix.lower() in IMAGE_EXTENSIONS:
        raise FeatgsError(f"{source}: is a single image; expected a folder of at least {MIN_IMAGES} overlapping "
                          "photos, or a video file")
    else:
        staged = _stage_video(source, folder, config, progress)
    if len(staged.images) < MIN_IMAGES:
        what = "frames at --fps {:g}".format(config.fps) if staged.video else "photos"
        hint = "; raise --fps" if staged.video else ""
        raise FeatgsError(f"{source}: {len(staged.images)} usable {what}; expected at least {MIN_IMAGES} overlapping "
                          f"views of the scene{hint}")
    return staged


# ----------------------------------------------------------------------------------- photos


def _list_photos(source: Path) -> tuple[list[Path], list[str]]:
    """(photos, ignored names) among the files directly in ``source``; hidden files are skipped."""
    photos, ignored = [], []
    for entry in sorted(source.iterdir(), key=lambda p: natural_key(p.name)):
        if entry.name.startswith("."):
            continue
        if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS:
            photos.append(entry)
        else:
            ignored.append(entry.name + ("/" if entry.is_dir() else ""))
    return photos, ignored


def _stage_folder(source: Path, folder: Path, config: ProcessConfig, progress: bool) -> StagedInputs:
    photos, ignored = _list_photos(source)
    if not photos:
        hint = ""
        if (source / "images").is_dir():
            hint = f" (it has a folder images/: pass {source / 'images'})"
        raise FeatgsError(f"{source}: no photos found{hint}; expected JPEG or PNG files ({', '.join(IMAGE_EXTENSIONS)})")
    if any(p.suffix.lower() in HEIF_EXTENSIONS for p in photos):
        _register_heif(next(p for p in photos if p.suffix.lower() in HEIF_EXTENSIONS))
    names = _staged_names(photos)
    label_names = source / LABELS_FILE
    has_labels = (source / LABELS_FOLDER).is_dir() or label_names.is_file()
    if has_labels:
        ignored = [n for n in ignored if n not in (LABELS_FOLDER + "/", LABELS_FILE)]
    bar = tqdm(total=len(photos), desc="reading photos", unit="image", disable=not progress)

    def one(args: tuple[Path, str]) -> StagedImage:
        path, name = args
        staged = _stage_photo(path, folder / name, config.max_size)
        bar.update()
        return staged

    # Decoding and encoding release the GIL: threads overlap them.
    with bar, ThreadPoolExecutor(max_workers=config.num_threads()) as pool:
        images = list(pool.map(one, zip(photos, names)))
    notes = []
    if ignored:
        shown = ", ".join(ignored[:5]) + (f" and {len(ignored) - 5} more" if len(ignored) > 5 else "")
        notes.append(f"ignored {len(ignored)} entries of {source} that are not photos: {shown}")
    resized = sum(im.resized for im in images)
    if resized:
        notes.append(f"resized {resized} of {len(images)} photos to at most {config.max_size} px (--max-size)")
    if not has_labels:
        return StagedInputs(folder, images, video=False, ignored=ignored, notes=notes)
    labels = _find_label_maps(source, photos, images)
    notes.append(f"label maps: {len(labels)} in {source / LABELS_FOLDER}, names in {label_names}")
    return StagedInputs(folder, images, video=False, ignored=ignored, notes=notes, labels=labels,
                        label_names=label_names)


def _find_label_maps(source: Path, photos: list[Path], images: list[StagedImage]) -> dict[str, Path]:
    """Staged image name -> its label map ``source/labels/<photo stem>.png``, each checked: a
    single-channel PNG at the photo's size (or its --max-size size) of ids that labels.json
    names. A one-line error for a missing or unusable one."""
    folder, names_file = source / LABELS_FOLDER, source / LABELS_FILE
    expected = (f"{folder}/<photo stem>.png (single-channel PNGs of label ids, one per photo) and {names_file} "
                '(e.g. {"0": "floor", "1": "mug"})')
    if not folder.is_dir():
        raise FeatgsError(f"{names_file}: label names but no label maps; expected {expected}")
    if not names_file.is_file():
        raise FeatgsError(f"{folder}: label maps but no {LABELS_FILE} beside the photos; expected {expected}")
    ids = set(read_label_names(names_file))
    labels: dict[str, Path] = {}
    missing = []
    for photo, staged in zip(photos, images):
        path = folder / (photo.stem + ".png")
        if not path.is_file():
            missing.append(path.name)
            continue
        label_map = read_label_map(path)
        h, w = label_map.shape[:2]
        if fit_size(w, h, max(staged.size)) != staged.size:
            raise FeatgsError(f"{path}: label map is {w}x{h}; expected the size of its photo {photo.name} "
                              f"(upright; {staged.size[0]}x{staged.size[1]} after --max-size)")
        unnamed = sorted(set(np.unique(label_map).tolist()) - ids)
        if unnamed:
            raise FeatgsError(f"{path}: label ids {', '.join(map(str, unnamed[:5]))} are not named in {names_file}; "
                              f"expected ids among {', '.join(map(str, sorted(ids)[:10]))}")
        labels[staged.name] = path
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise FeatgsError(f"{folder}: no label map for {len(missing)} of {len(photos)} photos ({shown}); "
                          f"expected {expected}")
    return labels


def _register_heif(example: Path) -> None:
    """Let Pillow open HEIC/HEIF files through the pillow-heif plugin, if it is installed."""
    try:
        import pillow_heif  # type: ignore[import-not-found]
    except ImportError:
        raise FeatgsError(f"{example}: HEIC/HEIF photos need the pillow-heif plugin, which is not installed; "
                          "expected JPEG or PNG photos (convert them, or pip install pillow-heif)") from None
    pillow_heif.register_heif_opener()


def _staged_names(photos: list[Path]) -> list[str]:
    """The staged file name of each photo: its own for PNG and JPEG, else the stem + .jpg
    (the full name + .jpg where that is taken: a.heic beside a.jpg)."""
    taken = {p.name.lower() for p in photos if p.suffix.lower() in (".png", ".jpg", ".jpeg")}
    names = []
    for p in photos:
        if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
            names.append(p.name)
            continue
        name = p.stem + ".jpg"
        if name.lower() in taken:
            name = p.name + ".jpg"
        taken.add(name.lower())
        names.append(name)
    return names


def fit_size(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(width, height) scaled down so the longest side is at most ``max_size`` (aspect kept)."""
    longest = max(width, height)
    if longest <= max_size:
        return width, height
    s = max_size / longest
    return max(1, round(width * s)), max(1, round(height * s))


def _camera_key(im: Image.Image, size: tuple[int, int]) -> tuple:
    exif = im.getexif()
    sub = exif.get_ifd(_EXIF_IFD)
    return (size, exif.get(_MAKE), exif.get(_MODEL), _number(sub.get(_FOCAL)), _number(sub.get(_FOCAL_35MM)))


def _number(value) -> Optional[float]:
    try:
        return None if value is None else round(float(value), 3)
    except (TypeError, ValueError, ZeroDivisionError):
        return None


def _stage_photo(path: Path, target: Path, max_size: int) -> StagedImage:
    """Decode ``path`` whole and write it upright, at most ``max_size`` px, to ``target``."""
    expected = "a JPEG or PNG photo"
    try:
        with Image.open(path) as im:
            check_format(path, im)
            im.load()
            orientation = im.getexif().get(_ORIENTATION, 1)
            upright = ImageOps.exif_transpose(im)  # a copy with the orientation tag cleared, when there is one
            size = fit_size(*upright.size, max_size)
            key = _camera_key(im, size)
            kind = path.suffix.lower()
            plain = kind in (".png", ".jpg", ".jpeg") and orientation in (1, None) and size == upright.size
            if plain and (upright.mode in ("RGB", "L") or (kind == ".png" and upright.mode == "RGBA")):
                _copy(path, target)  # byte for byte: no second JPEG compression
            else:
                _write_converted(upright, target, size)
    except FeatgsError:
        raise
    except FileNotFoundError:
        raise FeatgsError(f"{path}: file not found (removed while reading?); expected {expected}") from None
    except DECODE_ERRORS as e:
        raise FeatgsError(f"{path}: cannot read image ({e.__class__.__name__}: {_short(e)}); expected {expected}") from None
    return StagedImage(target.name, str(path), size, key, resized=size != upright.size)


def _short(error: Exception) -> str:
    return " ".join(str(error).split())[:120] or "no details"


def _copy(path: Path, target: Path) -> None:
    try:
        os.link(path, target)  # same file system: no copy (the staging folder is only read)
    except OSError:
        shutil.copyfile(path, target)


def _write_converted(im: Image.Image, target: Path, size: tuple[int, int]) -> None:
    """Write ``im`` resized to ``size`` (Lanczos: sharp, no aliasing) as PNG or JPEG by ``target``'s suffix."""
    png = target.suffix.lower() == ".png"
    keep = ("RGB", "RGBA", "L") if png else ("RGB", "L")
    if im.mode not in keep:
        im = im.convert("RGBA" if png and ("A" in im.mode or "transparency" in im.info) else "RGB")
    if size != im.size:
        im = im.resize(size, Image.Resampling.LANCZOS)
    if png:
        im.save(target, format="PNG")
    else:
        exif = im.getexif()
        exif.pop(_ORIENTATION, None)  # pixels are upright now
        im.save(target, format="JPEG", quality=JPEG_QUALITY, exif=exif.tobytes())


# ------------------------------------------------------------------------------------ video


def _stage_video(path: Path, folder: Path, config: ProcessConfig, progress: bool) -> StagedInputs:
    """Sample frames of the video ``path`` every 1 / fps seconds into ``folder``."""
    import av

    expected = f"a video file ({', '.join(e.lstrip('.').upper() for e in VIDEO_EXTENSIONS[:6])}, ...) or a folder of photos"
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as e:
        raise FeatgsError(f"{path}: cannot open as a video ({e.__class__.__name__}: {_short(e)}); expected {expected}") from None
    images: list[StagedImage] = []
    notes: list[str] = []
    with container:
        if not container.streams.video:
            raise FeatgsError(f"{path}: has no video stream; expected {expected}")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame-parallel decoding
        duration = _duration(container, stream)
        total = math.floor(duration * config.fps) + 1 if duration else None
        step = 1.0 / config.fps
        start: Optional[float] = None
        next_time = 0.0
        decoded = 0
        with tqdm(total=total, desc="sampling video frames", unit="frame", disable=not progress) as bar:
            try:
                for frame in container.decode(stream):
                    decoded += 1
                    t = frame.time if frame.time is not None else decoded / float(stream.average_rate or 30)
                    start = t if start is None else start
                    if t - start + 1e-6 < next_time:
                        continue
                    while next_time <= t - start + 1e-6:
                        next_time += step
                    name = f"frame_{len(images):05d}.jpg"
                    image = _upright(frame.to_image(), getattr(frame, "rotation", 0) or 0)
                    size = fit_size(*image.size, config.max_size)
                    _write_converted(image, folder / name, size)
                    images.append(StagedImage(name, f"{path}@{t - start:.3f}s", size, ("video", size), size != image.size))
                    bar.update()
            except (av.FFmpegError, OSError, ValueError, MemoryError) as e:
                if not images:
                    raise FeatgsError(f"{path}: cannot decode the video ({e.__class__.__name__}: {_short(e)}); "
                                      f"expected {expected}") from None
                notes.append(f"{path}: decoding stopped after {len(images)} frames ({e.__class__.__name__}); using those")
    if decoded == 0:
        raise FeatgsError(f"{path}: the video has no decodable frames; expected {expected}")
    notes.insert(0, f"sampled {len(images)} of {decoded} frames at {config.fps:g} fps")
    return StagedInputs(folder, images, video=True, notes=notes)


def _duration(container, stream) -> Optional[float]:
    """The video's length in seconds, if the file says (for the progress bar only)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def _upright(image: Image.Image, rotation: float) -> Image.Image:
    """A decoded frame as it is meant to be shown: the display matrix rotates it
    counterclockwise by ``rotation`` degrees (PyAV's ``VideoFrame.rotation``)."""
    turn = {90: Image.Transpose.ROTATE_90, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_270}
    quarter = int(round(rotation / 90.0)) * 90 % 360
    return image.transpose(turn[quarter]) if quarter else image
