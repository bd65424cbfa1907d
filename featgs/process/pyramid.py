"""Downscaled copies of a dataset's images: ``images_2/``, ``images_4/``, ``images_8/`` (the
3DGS / mip-NeRF 360 convention).

Each copy has exactly the size ``featgs train --downscale F`` asks for
(``Camera.scaled(1 / F)``: ``max(1, round(width / F))`` by ``max(1, round(height / F))``),
the same file name and format (JPEG at quality 95, or PNG), and is made by area averaging
as :mod:`featgs.data.downscale` makes its own; so training at ``--downscale 2``, 4 or 8
reads these instead of building a cache.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from PIL import Image
from tqdm.auto import tqdm

from featgs.process.inputs import JPEG_QUALITY

FACTORS = (2, 4, 8)


def scaled_size(width: int, height: int, factor: int) -> tuple[int, int]:
    """The image size at ``1 / factor`` scale, rounded as :meth:`featgs.Camera.scaled` rounds it."""
    s = 1.0 / factor
    return max(1, int(round(width * s))), max(1, int(round(height * s)))


def write_pyramid(dataset: Path, *, factors: Sequence[int] = FACTORS, threads: int = 1, progress: bool = True) -> int:
    """Write ``dataset/images_F/NAME`` for every image ``dataset/images/NAME`` and factor F;
    returns the number of files written."""
    images = sorted(p for p in (dataset / "images").iterdir() if p.is_file())
    for f in factors:
        (dataset / f"images_{f}").mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(images) * len(factors), desc="downscaled copies", unit="file", disable=not progress)

    def one(path: Path) -> None:
        with Image.open(path) as im:
            im.load()
            jpeg = path.suffix.lower() in (".jpg", ".jpeg")  # the format the loader's cache would write
            for f in factors:
                small = im.resize(scaled_size(*im.size, f), Image.Resampling.BOX)
                target = dataset / f"images_{f}" / path.name
                if jpeg:
                    small.save(target, format="JPEG", quality=JPEG_QUALITY)
                else:
                    small.save(target, format="PNG")
                bar.update()

    with bar, ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(one, images))
    return len(images) * len(factors)
