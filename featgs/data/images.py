"""Reading the per-view files of a dataset: colour images, label maps, depth maps and masks.

Every reader returns numpy arrays and turns an unreadable file into a one-line
:class:`FeatgsError` naming the path and what was expected.

A file's content must be in the format its extension names (``.png`` a PNG, ``.jpg``/``.jpeg``
a JPEG, ``.tif`` a TIFF, ... as Pillow registers them): a BMP, GIF or TIFF renamed to
``.png`` is refused with its real format named, rather than read by whatever decoder
recognises it (and then cached, downscaled and written back under the wrong name). A file
whose extension names no image format (or has none) is read in any format Pillow decodes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from featgs.errors import FeatgsError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


# Formats a camera may write under one extension: Pillow names a JPEG that carries more
# pictures (as many phones write) "MPO".
_SAME_FORMAT = {"JPEG": ("JPEG", "MPO")}


def check_format(path: Path, im: Image.Image) -> None:
    """Refuse ``im`` (opened from ``path``) unless it is in the format ``path``'s extension names."""
    claimed = Image.registered_extensions().get(path.suffix.lower())
    if claimed is None or im.format in _SAME_FORMAT.get(claimed, (claimed,)):
        return
    raise FeatgsError(f"{path}: file is a {im.format} image, not the {claimed} its extension {path.suffix} says; "
                      f"expected a {claimed} file (convert it, or name it for its format)")


def _open(path: Path, expected: str) -> Image.Image:
    """The decoded image (loading closes the file of a single-frame image)."""
    try:
        with open(path, "rb") as f:
            im = Image.open(f)
            check_format(path, im)
            im.load()
        return im
    except FileNotFoundError:
        raise FeatgsError(f"{path}: file not found; expected {expected}") from None
    except DECODE_ERRORS as e:
        raise FeatgsError(f"{path}: cannot read image ({e.__class__.__name__}); expected {expected}") from None


def find_image(base: Path) -> Path | None:
    """``base`` if it is a file, else ``base`` + .png/.jpg/.jpeg (any case); None if none exists.

    Dataset formats often leave the extension out of ``file_path`` (NeRF-synthetic does).
    """
    if base.is_file():
        return base
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        candidate = base.with_name(base.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def _header(path: Path, read):
    """``read(image)`` of the opened, undecoded image (header only); one-line errors."""
    try:
        with Image.open(path) as im:
            check_format(path, im)
            return read(im)
    except FileNotFoundError:
        raise FeatgsError(f"{path}: file not found; expected a PNG or JPEG image") from None
    except DECODE_ERRORS as e:
        raise FeatgsError(f"{path}: cannot read image ({e.__class__.__name__}); expected a PNG or JPEG image") from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    return _header(path, lambda im: im.size)


def read_rgba(path: Path) -> np.ndarray:
    """[H, W, 4] float32 colour and alpha in 0..1 (alpha 1 for images without an alpha channel)."""
    im = _open(path, "a PNG or JPEG colour image")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit grey
        grey = np.asarray(im, dtype=np.float32) / 65535.0
        return np.concatenate([np.repeat(grey[..., None], 3, axis=-1), np.ones_like(grey[..., None])], axis=-1)
    return np.asarray(im.convert("RGBA"), dtype=np.float32) / 255.0


def over(rgba: Tensor, background: Tensor) -> Tensor:
    """[..., 4] straight-alpha colour -> [..., 3] over ``background`` [3]; [..., 3] passes unchanged."""
    if rgba.shape[-1] == 3:
        return rgba
    alpha = rgba[..., 3:]
    return rgba[..., :3] * alpha + background * (1.0 - alpha)


def has_alpha(path: Path) -> bool:
    """Whether the image file carries an alpha channel (read from its header)."""
    return _header(path, lambda im: im.mode in ("RGBA", "LA", "PA", "RGBa", "La")
                   or (im.mode == "P" and "transparency" in im.info))


def read_label_map(path: Path) -> np.ndarray:
    """[H, W] int64 label ids from a single-channel 8- or 16-bit (or palette) PNG."""
    im = _open(path, "a single-channel label PNG")
    if im.mode not in ("L", "P", "I;16", "I;16B", "I;16L", "I"):
        raise FeatgsError(f"{path}: label image has mode {im.mode}; expected a single-channel 8- or 16-bit PNG of label ids")
    return np.asarray(im).astype(np.int64)


def read_depth(path: Path) -> np.ndarray:
    """[H, W] float32 depth in file units: a 16-bit PNG or a 2-D float ``.npy``."""
    if path.suffix.lower() == ".npy":
        try:
            depth = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise FeatgsError(f"{path}: file not found; expected a depth map (.npy or 16-bit PNG)") from None
        except (OSError, ValueError) as e:
            raise FeatgsError(f"{path}: cannot read depth map ({e.__class__.__name__}); expected a 2-D .npy array") from None
        if depth.ndim != 2 or depth.dtype.kind not in "fiu":
            raise FeatgsError(f"{path}: depth array has shape {depth.shape} and dtype {depth.dtype}; expected a 2-D numeric array")
        return depth.astype(np.float32)
    im = _open(path, "a depth map (16-bit PNG or .npy)")
    if im.mode not in ("I;16", "I;16B", "I;16L", "I", "F", "L"):
        raise FeatgsError(f"{path}: depth image has mode {im.mode}; expected a single-channel 16-bit PNG")
    return np.asarray(im).astype(np.float32)


def read_mask(path: Path) -> np.ndarray:
    """[H, W] bool: True where the pixel is used (non-zero in the mask image)."""
    im = _open(path, "a mask image (non-zero = keep)")
    return np.asarray(im.convert("L")) > 0


def resize_nearest(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W, ...] -> [height, width, ...], each output pixel taking the input pixel under its centre."""
    h, w = array.shape[:2]
    if (w, h) == (width, height):
        return array
    rows = np.minimum(((np.arange(height) + 0.5) * h / height).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * w / width).astype(np.int64), w - 1)
    return array[rows[:, None], cols[None, :]]
