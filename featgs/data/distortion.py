"""The OpenCV radial-tangential lens model (k1, k2, p1, p2) and image remapping.

Loaders undistort images to the pinhole camera with the same K: each output pixel samples
the original image where the lens model sends it (:func:`distort_pixels`, closed form).
Going the other way, from an original pixel to the pinhole image, needs the inverse of the
model, which has no closed form: :func:`undistort_pixels` iterates it. With it,
:func:`distort_image` maps a pinhole image (e.g. a render) back onto the original lens.
"""

from __future__ import annotations

import numpy as np


def _distort_normalized(x: np.ndarray, y: np.ndarray, dist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k1, k2, p1, p2 = dist
    r2 = x * x + y * y
    radial = 1.0 + k1 * r2 + k2 * r2 * r2
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return xd, yd


def distort_pixels(uv: np.ndarray, K: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Pinhole pixel positions [..., 2] -> where the lens ``dist`` [4] images them [..., 2]."""
    x = (uv[..., 0] - K[0, 2]) / K[0, 0]
    y = (uv[..., 1] - K[1, 2]) / K[1, 1]
    xd, yd = _distort_normalized(x, y, np.asarray(dist, dtype=np.float64))
    return np.stack([xd * K[0, 0] + K[0, 2], yd * K[1, 1] + K[1, 2]], axis=-1)


def undistort_pixels(uv_distorted: np.ndarray, K: np.ndarray, dist: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Inverse of :func:`distort_pixels` by fixed-point iteration (as OpenCV's undistortPoints).

    Converges for the moderate distortion of ordinary lenses; ``iterations`` bounds the work.
    """
    dist = np.asarray(dist, dtype=np.float64)
    k1, k2, p1, p2 = dist
    xd = (uv_distorted[..., 0] - K[0, 2]) / K[0, 0]
    yd = (uv_distorted[..., 1] - K[1, 2]) / K[1, 1]
    x, y = xd.copy(), yd.copy()
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1.0 + k1 * r2 + k2 * r2 * r2
        dx = 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
        dy = p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
        x, y = (xd - dx) / radial, (yd - dy) / radial
    return np.stack([x * K[0, 0] + K[0, 2], y * K[1, 1] + K[1, 2]], axis=-1)


def _pixel_centres(width: int, height: int) -> np.ndarray:
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    return np.stack([jj, ii], axis=-1)  # [H, W, 2]


def remap(image: np.ndarray, source_uv: np.ndarray, *, nearest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``image`` [h, w, ...] at pixel positions ``source_uv`` [H, W, 2] (centres at +0.5).

    Bilinear, or nearest for ids (labels) and masks. Returns the samples [H, W, ...] (zero
    outside the image) and a [H, W] bool map of the positions that fall inside the image.
    """
    h, w = image.shape[:2]
    u, v = source_uv[..., 0], source_uv[..., 1]
    valid = (u >= 0) & (u <= w) & (v >= 0) & (v <= h)
    if nearest:
        cols = np.clip(np.floor(u).astype(np.int64), 0, w - 1)
        rows = np.clip(np.floor(v).astype(np.int64), 0, h - 1)
        out = image[rows, cols]
    else:
        x, y = u - 0.5, v - 0.5  # continuous index space: pixel centres at integers
        x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        fx, fy = (x - x0).astype(np.float32), (y - y0).astype(np.float32)
        if image.ndim == 3:
            fx, fy = fx[..., None], fy[..., None]
        c0, c1 = np.clip(x0, 0, w - 1), np.clip(x0 + 1, 0, w - 1)
        r0, r1 = np.clip(y0, 0, h - 1), np.clip(y0 + 1, 0, h - 1)
        top = image[r0, c0] * (1 - fx) + image[r0, c1] * fx
        bottom = image[r1, c0] * (1 - fx) + image[r1, c1] * fx
        out = (top * (1 - fy) + bottom * fy).astype(image.dtype)
    mask = valid if out.ndim == 2 else valid[..., None]
    return np.where(mask, out, np.zeros((), dtype=out.dtype)), valid


def undistort_image(image: np.ndarray, K: np.ndarray, dist: np.ndarray, *, nearest: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Original-lens image [H, W, ...] -> the pinhole image with the same K and size.

    Returns the image and a [H, W] bool map of the pixels the original image covers.
    """
    h, w = image.shape[:2]
    return remap(image, distort_pixels(_pixel_centres(w, h), K, dist), nearest=nearest)


def distort_image(image: np.ndarray, K: np.ndarray, dist: np.ndarray, *, nearest: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole image [H, W, ...] -> as the original lens ``dist`` would see it (same K, size)."""
    h, w = image.shape[:2]
    return remap(image, undistort_pixels(_pixel_centres(w, h), K, dist), nearest=nearest)
