"""NeRF-synthetic ("Blender") datasets: ``transforms_{train,val,test}.json``.

Each file has ``camera_angle_x`` and ``frames`` with ``file_path`` (usually without
extension, e.g. ``./train/r_0``) and an OpenGL ``transform_matrix``; the images are RGBA
PNGs, composited over the chosen background on loading. Frames are parsed as in
:mod:`featgs.data.transforms` (so per-file ``fl_x`` etc. work too). Test views come from
``transforms_test.json``, else ``transforms_val.json``, else every 8th train frame.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from featgs.data.jsonfile import read_json_object
from featgs.data.labels import label_names_beside
from featgs.data.scene import Scene
from featgs.data.transforms import check_usable, every_nth_split, parse_frames, unique_names, warn_missing

_EXPECTED = "a NeRF-synthetic transforms JSON object with camera_angle_x and 'frames'"


def load_blender(root: Path, background: Sequence[float]) -> Scene:
    """A NeRF-synthetic dataset folder (with ``transforms_train.json``), in its own frame."""
    path = root / "transforms_train.json"
    meta = read_json_object(path, _EXPECTED)
    views = parse_frames(path, meta, root, background)
    check_usable(path, meta, root, views)
    skipped = views.count(None)
    for name in ("transforms_test.json", "transforms_val.json"):
        if (root / name).is_file():
            test_meta = read_json_object(root / name, _EXPECTED)
            test_views = parse_frames(root / name, test_meta, root, background)
            warn_missing(root / name, test_views)  # no test views is allowed
            train = [v for v in views if v is not None]
            test = [v for v in test_views if v is not None]
            skipped += test_views.count(None)
            break
    else:
        train, test = every_nth_split(views)
    named = unique_names(train + test, root)
    train, test = named[: len(train)], named[len(train) :]
    return Scene(root, "blender", train, test, label_names=label_names_beside(root), num_skipped=skipped)
