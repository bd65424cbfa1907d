"""3D-OVS (Liu et al., NeurIPS 2023), as its ``renderer.py`` scores it
(``evaluation_segmentation_test``).

Annotations: a scene folder with ``segmentations/classes.txt`` (one category per line; the
list is sorted, as there) and, per evaluated view, ``segmentations/<view>/<category>.png`` for
every category (255 on it: ``(png / 255).astype(int8)``; the folder is named by the view's
index in the sorted list of all the scene's images, as 3D-OVS's are, or by the view's name).
Each view is rendered at its masks' resolution.

Per view, each pixel takes the category whose text embedding has the largest cosine with its
rendered (decoded) feature (3D-OVS: argmax of a softmax over the cosines, the same thing);
with ``gt`` the pixels' multi-hot masks and ``pred`` the one-hot prediction:

- IoU_c = |gt_c & pred_c| / |gt_c | pred_c| for every listed category, 0 when the union is
  empty (sklearn's ``jaccard_score(average=None)``, which 3D-OVS calls); the view's mIoU is
  their mean over all C categories;
- the view's accuracy: the share of pixels whose whole row ``gt == pred`` (sklearn's
  ``accuracy_score`` on multi-label rows: a pixel in no mask, or in two, never counts);
- ``miou`` and ``accuracy``: the means over views (3D-OVS's "overall").

Also reported, ``miou_pooled`` and ``accuracy_pooled``: one confusion matrix over all views'
pixels that lie in exactly one mask, mIoU over the categories that occur (in truth or
prediction) and pixel accuracy: ``featgs eval``'s definition, equal to it on the same views
and label maps.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from featgs.errors import FeatgsError
from featgs.protocols.common import ProtocolRun, embed_together, segment_view
from featgs.segmentation import confusion_matrix, miou_and_accuracy

NAME = "3d-ovs"
KEYS = ("miou", "accuracy")
CLASSES_FILE = "classes.txt"


@dataclass
class View:
    name: str
    masks: np.ndarray  # [C, H, W] bool, rows in the order of ``Annotations.classes``
    source: Path


@dataclass
class Annotations:
    classes: List[str]
    views: List[View]
    root: Path


def find_segmentations(path: Path) -> Optional[Path]:
    """The folder holding ``classes.txt``: ``path/segmentations`` or ``path`` itself; None if neither."""
    path = Path(path)
    for folder in (path / "segmentations", path):
        if (folder / CLASSES_FILE).is_file():
            return folder
    return None


def read_annotations(path: Path) -> Annotations:
    seg = find_segmentations(path)
    if seg is None:
        raise FeatgsError(f"{path}: no segmentations/{CLASSES_FILE}; expected a 3D-OVS scene folder "
                          f"(segmentations/{CLASSES_FILE} and segmentations/<view>/<category>.png)")
    try:
        lines = (seg / CLASSES_FILE).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise FeatgsError(f"{seg / CLASSES_FILE}: not a readable UTF-8 text file ({e.__class__.__name__})") from None
    classes = sorted(line.strip() for line in lines if line.strip())
    if not classes or len(set(classes)) != len(classes):
        raise FeatgsError(f"{seg / CLASSES_FILE}: expected one distinct category name per line")
    views = []
    for folder in sorted(p for p in seg.iterdir() if p.is_dir()):
        masks = []
        for c in classes:
            png = folder / f"{c}.png"
            if not png.is_file():
                raise FeatgsError(f"{png}: missing; expected a mask of every category of {CLASSES_FILE} in each view folder")
            try:
                with Image.open(png) as im:
                    masks.append((np.asarray(im.convert("L")) / 255.0).astype(np.int8) == 1)
            except OSError as e:
                raise FeatgsError(f"{png}: not a readable image ({e.__class__.__name__})") from None
        if len({m.shape for m in masks}) != 1:
            raise FeatgsError(f"{folder}: the category masks differ in size; expected one size per view")
        views.append(View(folder.name, np.stack(masks), folder))
    if not views:
        raise FeatgsError(f"{seg}: no view folders; expected segmentations/<view>/<category>.png")
    return Annotations(classes, views, seg)


def score_view(pred: np.ndarray, masks: np.ndarray) -> dict:
    """3D-OVS's per-view IoUs, mIoU and accuracy of ``pred`` [H, W] category indices against
    ``masks`` [C, H, W] bool; ``present``: how many categories occur (in truth or prediction)."""
    C = masks.shape[0]
    onehot = pred[None] == np.arange(C)[:, None, None]
    inter = (onehot & masks).sum((1, 2))
    union = (onehot | masks).sum((1, 2))
    ious = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    exact = (onehot == masks).all(0)
    return {"miou": float(ious.mean()), "accuracy": float(exact.mean()), "iou": ious.tolist(),
            "present": int((union > 0).sum())}


def single_truth(masks: np.ndarray) -> np.ndarray:
    """[H, W] the category of pixels in exactly one mask, -1 elsewhere."""
    count = masks.sum(0)
    return np.where(count == 1, masks.argmax(0), -1)


def evaluate(pr: ProtocolRun, path: Path, *, selection: bool = True, progress: bool = True) -> dict:
    ann = read_annotations(path)
    text = embed_together(pr.field, ann.classes)
    C = len(ann.classes)
    records, conf = [], torch.zeros(C, C, dtype=torch.long)
    for v in tqdm(ann.views, desc=NAME, unit="view", disable=not progress, leave=False):
        h, w = v.masks.shape[1:]
        cam = pr.camera(v.name, w, h, source=str(v.source))
        pred = segment_view(pr.field, cam, text).numpy()
        rec = {"view": v.name, "camera": cam.name, **score_view(pred, v.masks)}
        records.append(rec)
        conf += confusion_matrix(torch.from_numpy(pred), torch.from_numpy(single_truth(v.masks)), C)
    pooled_miou, pooled_acc, pooled_iou = miou_and_accuracy(conf)
    per_class = np.mean([r["iou"] for r in records], axis=0)
    out = {"protocol": NAME, "scene": pr.name, "num_views": len(records), "num_classes": C,
           "miou": float(np.mean([r["miou"] for r in records])),
           "accuracy": float(np.mean([r["accuracy"] for r in records])),
           "miou_pooled": pooled_miou, "accuracy_pooled": pooled_acc,
           "per_class_iou": dict(zip(ann.classes, per_class.tolist())),
           "per_class_iou_pooled": {c: (None if np.isnan(x) else float(x)) for c, x in zip(ann.classes, pooled_iou.tolist())},
           "views": records}
    if selection:
        from featgs.protocols import selection3d

        out["selection_3d"] = selection3d.evaluate_queries(pr, selection_queries(pr, ann), progress=progress)
    return out


def selection_queries(pr: ProtocolRun, ann: Annotations):
    """(view, camera, category, mask) of every category with a non-empty mask in a view."""
    for v in ann.views:
        h, w = v.masks.shape[1:]
        cam = pr.camera(v.name, w, h, source=str(v.source))
        for c, m in zip(ann.classes, v.masks):
            if m.any():
                yield v.name, cam, c, m


# -- export -------------------------------------------------------------------------------------------
_BAD_NAME = re.compile(r"[/\\\x00]|^\.{1,2}$")


def write_annotations(scene, views, out: Path) -> int:
    """3D-OVS annotations of ``views`` of a dataset with label maps: ``segmentations/classes.txt``
    (every label name) and ``segmentations/<index>/<name>.png`` (255 on the label's pixels, for
    every name, empty where it is absent), the index being the view's place among all the
    scene's views sorted by name. Returns the number of view folders written."""
    from featgs.atomic import atomic_open, atomic_write_text

    names = scene.label_names or {}
    if not names:
        raise FeatgsError(f"{scene.root}: no labels.json; expected a dataset with named label maps")
    classes = sorted(set(names.values()))
    for c in classes:
        if not c.strip() or _BAD_NAME.search(c):
            raise FeatgsError(f"{scene.root}: label name {c!r} cannot be a file name, which 3D-OVS's layout needs")
    order = {n: i for i, n in enumerate(sorted(v.name for v in scene.views))}
    seg = out / "segmentations"
    seg.mkdir(parents=True, exist_ok=True)
    atomic_write_text(seg / CLASSES_FILE, "".join(c + "\n" for c in classes))
    for v in views:
        labels = v.labels()
        if labels is None:
            raise FeatgsError(f"{v.image_path}: view {v.name} has no label map; expected a dataset with label maps")
        ids = labels.numpy()
        folder = seg / f"{order[v.name]:03d}"
        folder.mkdir(exist_ok=True)
        for c in classes:
            mine = [i for i, n in names.items() if n == c]
            mask = np.isin(ids, mine)
            with atomic_open(folder / f"{c}.png", "wb") as f:
                Image.fromarray((mask * 255).astype(np.uint8)).save(f, format="PNG")
    return len(views)
