"""LERF-OVS, as LangSplat (Qin et al., CVPR 2024) scores it: ``eval/evaluate_iou_loc.py``.

Annotations: a folder of one JSON per evaluated frame (LangSplat reads ``frame_*.json``; any
``*.json`` here), in labelme style::

    {"info": {"name": "frame_00041.jpg", "width": W, "height": H},
     "objects": [{"category": "green apple", "bbox": [x1, y1, x2, y2],
                  "segmentation": [[x, y], [x, y], ...]}, ...]}

Objects of one category in a frame are one query: their polygons are filled and united into
the query's mask (``polygon_to_mask``, ``stack_mask``), their boxes kept side by side. The
frame is the run's view whose name is the stem of ``info.name`` (else of the JSON file),
rendered at ``width`` x ``height``.

For each query (frame f, category text q), with R the per-pixel LERF relevancy of the
rendered feature to q against the negatives "object", "things", "stuff", "texture"
(``R = min_j sigmoid((cos(f, q) - cos(f, neg_j)) / 0.1)``, LangSplat's ``get_relevancy``), and
B = R averaged over a k x k window (``cv2.filter2D`` with ``ones(k, k) / k^2``, k = 30 there):

- localisation (``lerf_localization``): a hit when a pixel where B is largest (all of them, if
  tied) lies inside one of the query's boxes, bounds included. Accuracy = hits / queries.
- IoU (``activate_stream``): S = (B + R) / 2, normalised N = (S - min S) / (max (S - min S) +
  1e-9), V = clip(2 N - 1, 0, 1), mask = V > 0.4 (``--mask_thresh``), then LangSplat's
  ``smooth`` (majority over a 7 x 7 window that never reaches the last row or column); IoU
  with the query's mask. mIoU = mean IoU over the queries.

Per scene both are means over its queries; over several scenes, ``per_query`` pools all
queries and ``per_scene`` averages the scenes' numbers (LangSplat reports per scene and
their mean). Where we differ from LangSplat: one feature level (LangSplat renders three and
keeps, per query, the level whose relevancy peaks highest), cosine instead of the dot
product with an autoencoder's output, and PIL's polygon fill instead of OpenCV's (both fill
integer polygons with their outline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from tqdm.auto import tqdm

from featgs.atomic import atomic_write_text
from featgs.data.jsonfile import read_json
from featgs.errors import FeatgsError
from featgs.protocols.common import (ProtocolRun, box_filter, box_of, components, iou, majority_smooth, mean,
                                     outer_contour, per_category, pixel_relevancy, polygon_to_mask,
                                     rendered_features)
from featgs.query.relevancy import DEFAULT_NEGATIVES

NAME = "lerf-ovs"
KEYS = ("localization_accuracy", "miou")
EXPECTED = ('a LERF-OVS frame annotation: {"info": {"name", "width", "height"}, "objects": [{"category", '
            '"bbox": [x1, y1, x2, y2], "segmentation": [[x, y], ...]}]}')


@dataclass(frozen=True)
class LerfOvsConfig:
    """LangSplat's parameters.

    Attributes:
        kernel: side of the box filter in pixels (30 in ``evaluate_iou_loc.py``).
        threshold: ``--mask_thresh`` on the rescaled relevancy (0.4, the script's default).
        smooth: half-width of the majority filter (3: a 7 x 7 window).
        negatives: the canonical phrases the query competes against.
    """

    kernel: int = 30
    threshold: float = 0.4
    smooth: int = 3
    negatives: tuple = DEFAULT_NEGATIVES


@dataclass
class Query:
    """One category in one frame: its united mask [H, W] bool and its boxes [[x1, y1, x2, y2]]."""

    category: str
    mask: np.ndarray
    boxes: List[List[float]] = field(default_factory=list)


@dataclass
class Frame:
    name: str
    width: int
    height: int
    queries: Dict[str, Query]
    source: Path


def read_frames(folder: Path) -> List[Frame]:
    """The annotated frames of ``folder`` (sorted by file name); one-line errors name the file."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FeatgsError(f"{folder}: not a folder; expected the LERF-OVS label folder of one scene "
                          "(one frame_*.json per evaluated frame)")
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise FeatgsError(f"{folder}: no *.json frame annotations; expected {EXPECTED}")
    return [read_frame(p) for p in paths]


def read_frame(path: Path) -> Frame:
    data = read_json(path, EXPECTED)
    info = data.get("info") if isinstance(data, dict) else None
    objects = data.get("objects") if isinstance(data, dict) else None
    if not isinstance(info, dict) or not isinstance(objects, list):
        raise FeatgsError(f"{path}: no 'info' object or 'objects' list; expected {EXPECTED}")
    h, w = info.get("height"), info.get("width")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 1 << 15 for v in (h, w)):
        raise FeatgsError(f"{path}: info.width and info.height must be positive whole numbers; expected {EXPECTED}")
    name = info.get("name") if isinstance(info.get("name"), str) and info.get("name") else path.name
    queries: Dict[str, Query] = {}
    for i, obj in enumerate(objects):
        where = f"{path}: objects[{i}]"
        if not isinstance(obj, dict) or not isinstance(obj.get("category"), str) or not obj["category"].strip():
            raise FeatgsError(f"{where}: no 'category' text; expected {EXPECTED}")
        box = obj.get("bbox")
        seg = obj.get("segmentation")
        if not _numbers(box, 4):
            raise FeatgsError(f"{where}: 'bbox' must be [x1, y1, x2, y2]; expected {EXPECTED}")
        if not (isinstance(seg, list) and seg and all(_numbers(p, 2) for p in seg)):
            raise FeatgsError(f"{where}: 'segmentation' must be a polygon [[x, y], ...]; expected {EXPECTED}")
        q = queries.setdefault(obj["category"], Query(obj["category"], np.zeros((h, w), dtype=bool)))
        q.mask |= polygon_to_mask(h, w, seg)
        q.boxes.append([float(v) for v in box])
    return Frame(name=name, width=w, height=h, queries=queries, source=path)


def _numbers(x, n: int) -> bool:
    return (isinstance(x, list) and len(x) == n
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in x))


def localization_hit(relevancy: np.ndarray, boxes: Sequence[Sequence[float]], kernel: int) -> tuple[bool, List[int]]:
    """Whether a maximum of the box-filtered relevancy lies in one of ``boxes`` (inclusive);
    also the first maximum's [x, y]."""
    b = box_filter(relevancy, kernel)
    ys, xs = np.nonzero(b == b.max())
    for x1, y1, x2, y2 in boxes:
        x_lo, x_hi, y_lo, y_hi = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        if np.any((xs >= x_lo) & (xs <= x_hi) & (ys >= y_lo) & (ys <= y_hi)):
            return True, [int(xs[0]), int(ys[0])]
    return False, [int(xs[0]), int(ys[0])]


def relevancy_mask(relevancy: np.ndarray, config: LerfOvsConfig = LerfOvsConfig()) -> np.ndarray:
    """[H, W] bool: LangSplat's thresholded, smoothed relevancy mask (see the module doc)."""
    s = 0.5 * (box_filter(relevancy, config.kernel) + relevancy.astype(np.float64))
    s = s - s.min()
    s = s / (s.max() + 1e-9)
    v = np.clip(2.0 * s - 1.0, 0.0, 1.0)
    return majority_smooth((v > config.threshold).astype(np.uint8), config.smooth).astype(bool)


def score_query(relevancy: np.ndarray, query: Query, config: LerfOvsConfig = LerfOvsConfig()) -> dict:
    """One query's localisation hit and IoU from its relevancy map [H, W]."""
    hit, peak = localization_hit(relevancy, query.boxes, config.kernel)
    return {"category": query.category, "localization_accuracy": float(hit), "peak": peak,
            "miou": iou(relevancy_mask(relevancy, config), query.mask)}


def summarize(queries: List[dict], frames: int) -> dict:
    return {"num_frames": frames, "num_queries": len(queries),
            **{k: mean(q[k] for q in queries) for k in KEYS},
            "per_category": per_category(queries, KEYS), "queries": queries}


def score_frames(frames: Sequence[Frame], relevancy: Callable[[Frame, List[str]], np.ndarray],
                 config: LerfOvsConfig = LerfOvsConfig(), *, progress: bool = False) -> dict:
    """The scores of ``frames`` given ``relevancy(frame, texts)`` -> [T, H, W] maps (the
    rendering is the caller's: this is the protocol's arithmetic alone)."""
    records = []
    for fr in tqdm(frames, desc=NAME, unit="frame", disable=not progress, leave=False):
        texts = list(fr.queries)
        if not texts:
            continue
        maps = np.asarray(relevancy(fr, texts))
        if maps.shape != (len(texts), fr.height, fr.width):
            raise FeatgsError(f"{fr.source}: relevancy maps are {maps.shape}, expected {(len(texts), fr.height, fr.width)}")
        for t, r in zip(texts, maps):
            records.append({"frame": fr.name, **score_query(r, fr.queries[t], config)})
    return summarize(records, len(frames))


def evaluate(pr: ProtocolRun, folder: Path, config: LerfOvsConfig = LerfOvsConfig(), *,
             selection: bool = True, progress: bool = True) -> dict:
    """The LERF-OVS scores of one run on one scene's annotations (and, with ``selection``, the
    3D-selection scores of the same queries: :mod:`featgs.protocols.selection3d`)."""
    frames = read_frames(folder)

    def relevancy(fr: Frame, texts: List[str]) -> np.ndarray:
        cam = pr.camera(fr.name, fr.width, fr.height, source=str(fr.source))
        return pixel_relevancy(pr.field, rendered_features(pr.field, cam), texts, config.negatives).numpy()

    out = {"protocol": NAME, "scene": pr.name, **score_frames(frames, relevancy, config, progress=progress),
           "config": {"kernel": config.kernel, "threshold": config.threshold, "smooth": config.smooth,
                      "negatives": list(config.negatives)}}
    if selection:
        from featgs.protocols import selection3d

        out["selection_3d"] = selection3d.evaluate_queries(pr, lerf_queries(pr, frames), progress=progress)
    return out


def lerf_queries(pr: ProtocolRun, frames: List[Frame]):
    """(frame name, camera, category, mask) of every query, for the 3D-selection protocol."""
    for fr in frames:
        cam = pr.camera(fr.name, fr.width, fr.height, source=str(fr.source))
        for q in fr.queries.values():
            yield fr.name, cam, q.category, q.mask


# -- export -------------------------------------------------------------------------------------------
def write_annotations(scene, views, out: Path) -> int:
    """LERF-OVS annotations of ``views`` of a dataset with label maps: per view a JSON named
    after it, one object per 8-connected piece of every named label it shows (category: the
    label's name, bbox: the piece's inclusive pixel box, segmentation: its outer contour, so
    holes are filled as in a drawn outline). Returns the number of objects written."""
    names = scene.label_names or {}
    count = 0
    out.mkdir(parents=True, exist_ok=True)
    for v in views:
        labels = v.labels()
        if labels is None:
            raise FeatgsError(f"{v.image_path}: view {v.name} has no label map; expected a dataset with label maps")
        ids = labels.numpy()
        objects = []
        for label in sorted(int(i) for i in np.unique(ids)):
            if label not in names:
                continue
            for piece in components(ids == label):
                objects.append({"category": names[label], "bbox": box_of(piece), "segmentation": outer_contour(piece)})
        h, w = ids.shape
        # the view's name, not its image's: Blender-layout views are named test_r_0 for test/r_0.png
        # (train/r_0.png is another view), and the frame is found by the stem of this name
        doc = {"info": {"name": f"{v.name}{v.image_path.suffix}", "width": int(w), "height": int(h)},
               "objects": objects}
        atomic_write_text(out / f"{v.name}.json", json.dumps(doc))
        count += len(objects)
    return count


def scene_folders(labels: Path) -> Optional[Dict[str, Path]]:
    """Scene name -> its label folder when ``labels`` is a LERF-OVS label root (sub-folders of
    frame JSONs, as ``lerf_ovs/label/{figurines,ramen,...}``); None when it holds frames itself."""
    labels = Path(labels)
    if any(labels.glob("*.json")):
        return None
    subs = {p.name: p for p in sorted(labels.iterdir()) if p.is_dir() and any(p.glob("*.json"))} if labels.is_dir() else {}
    return subs or None


__all__ = ["LerfOvsConfig", "evaluate", "read_frames", "score_frames", "score_query", "write_annotations"]
