"""Semantic segmentation from label maps with class names (the Replica protocol of Semantic-NeRF
and Feature 3DGS), which is what plain ``featgs eval`` scores.

Annotations: a folder with ``labels.json`` (``{"id": "class name", ...}``) and one label map per
evaluated view, ``<view name>.png`` (8- or 16-bit ids; ids without a name are not scored).
Without a folder, the run's dataset's own label maps and names on its test views (then the
numbers equal ``featgs eval``'s).

Each pixel takes the class name whose text embedding has the largest cosine with its rendered
(decoded) feature. One confusion matrix over all views' scored pixels; mIoU = the mean over
classes that occur (in truth or prediction) of TP / (TP + FP + FN), accuracy = correct pixels /
scored pixels (:func:`featgs.segmentation.miou_and_accuracy`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from featgs.data.images import read_label_map
from featgs.data.labels import LABELS_FILE, read_label_names
from featgs.errors import FeatgsError
from featgs.protocols.common import ProtocolRun, embed_together, segment_view
from featgs.segmentation import confusion_matrix, miou_and_accuracy

NAME = "replica-seg"
KEYS = ("miou", "accuracy")


def _dataset_views(pr: ProtocolRun):
    """(name, camera, ids [H, W]) of the test views (else the train views) of the run's dataset,
    and its label names."""
    from featgs.data import load_scene

    data = pr.run.data
    if not data.is_dir():
        raise FeatgsError(f"{pr.run.root}: its data folder {data} is gone; pass --labels with label maps")
    scene = load_scene(data, downscale=pr.run.downscale)
    if not scene.label_names:
        raise FeatgsError(f"{data}: no labels.json; pass --labels with label maps and their names")
    views = []
    for v in scene.test or scene.train:
        ids = v.labels()
        if ids is not None:
            views.append((v.name, v.camera, ids.numpy()))
    return views, scene.label_names


def _folder_views(pr: ProtocolRun, folder: Path):
    names_path = folder / LABELS_FILE
    if not names_path.is_file():
        raise FeatgsError(f"{folder}: no {LABELS_FILE}; expected label maps <view>.png and their names in {LABELS_FILE}")
    names = read_label_names(names_path)
    views = []
    for png in sorted(folder.glob("*.png")):
        ids = np.asarray(read_label_map(png)).astype(np.int64)
        h, w = ids.shape[:2]
        views.append((png.stem, pr.camera(png.stem, w, h, source=str(png)), ids))
    if not views:
        raise FeatgsError(f"{folder}: no <view>.png label maps; expected one per evaluated view")
    return views, names


def evaluate(pr: ProtocolRun, folder: Optional[Path] = None, *, progress: bool = True) -> dict:
    views, label_names = _folder_views(pr, Path(folder)) if folder is not None else _dataset_views(pr)
    ids_sorted = sorted(label_names)
    names = [label_names[i] for i in ids_sorted]
    lut = np.full(max(ids_sorted) + 1, -1, dtype=np.int64)
    lut[ids_sorted] = np.arange(len(ids_sorted))
    text = embed_together(pr.field, names)
    conf, records = None, []
    for name, cam, ids in tqdm(views, desc=NAME, unit="view", disable=not progress, leave=False):
        truth = np.where((ids >= 0) & (ids < len(lut)), lut[np.clip(ids, 0, len(lut) - 1)], -1)
        pred = segment_view(pr.field, cam, text)
        c = confusion_matrix(pred, torch.from_numpy(truth), len(names))
        conf = c if conf is None else conf + c
        m, a, _ = miou_and_accuracy(c)
        records.append({"view": name, "miou": m, "accuracy": a})
    miou, acc, iou = miou_and_accuracy(conf)
    return {"protocol": NAME, "scene": pr.name, "num_views": len(records), "miou": miou, "accuracy": acc,
            "per_label_iou": {n: (None if math.isnan(x) else float(x)) for n, x in zip(names, iou.tolist())},
            "views": records}
