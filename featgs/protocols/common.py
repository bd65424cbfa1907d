"""What the benchmark protocols share: the run's views by name, per-pixel text relevancy and
segmentation of a rendered view, 3D selections rendered alone, masks from polygons (and
polygons from masks, for exporting), the image filters of the original scripts, and
aggregation over queries and scenes.

The protocols score a *run* against annotations the user brings; the run's cameras
(``cameras.json``: train and test) are matched to the annotated frames by name, and every
frame is rendered at the annotation's own resolution (the camera's intrinsics scaled).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.query import FeatureField
from featgs.query.relevancy import DEFAULT_NEGATIVES, QueryConfig, pairwise_relevancy
from featgs.render import render
from featgs.run import Run
from featgs.segmentation import segment_features

# LERF / LangSplat: softmax(10 * [cos_q, cos_neg]) is a sigmoid of the cosine margin at T = 0.1
TEMPERATURE = 0.1
# OpenGaussian writes the selection's silhouette as an 8-bit image and reads it back as > 10
SILHOUETTE_LEVEL = 10


@dataclass
class ProtocolRun:
    """A run opened for a protocol: its field and its cameras by name.

    Attributes:
        run: the run folder.
        field: the run's :class:`FeatureField` (text encoder, features, selections).
        cameras: view name -> camera (train and test views of the run, in its frame).
    """

    run: Run
    field: FeatureField
    cameras: Dict[str, Camera]

    @classmethod
    def open(cls, root: Path) -> "ProtocolRun":
        run = Run.open(root)
        field = FeatureField.load(run, device="cpu")
        if field.encoder is None:
            raise FeatgsError(f"{root}: {field.no_text_reason}; the open-vocabulary protocols query by text")
        cams = run.cameras()
        cameras = {c.name: c for split in ("train", "test") for c in cams[split]}
        if not cameras:
            raise FeatgsError(f"{root}: the run has no cameras (no {run.paths.cameras.name} and its data folder is "
                              "gone); expected the run folder `featgs train` wrote")
        return cls(run=run, field=field, cameras=cameras)

    @property
    def name(self) -> str:
        return self.run.root.name

    def sorted_names(self) -> List[str]:
        """All view names in sorted order (the image list that index-named frames point into)."""
        return sorted(self.cameras)

    def camera(self, frame: str, width: int, height: int, *, source: str) -> Camera:
        """The run's camera of the view named ``frame`` (the stem of an image file name, or
        an index into :meth:`sorted_names`), at ``width`` x ``height`` pixels."""
        cam = self.cameras.get(frame) or self.cameras.get(Path(frame).stem)
        if cam is None and frame.isdigit() and int(frame) < len(self.cameras):
            cam = self.cameras[self.sorted_names()[int(frame)]]
        if cam is None:
            some = ", ".join(self.sorted_names()[:4])
            raise FeatgsError(f"{source}: frame {frame!r} is none of the run's {len(self.cameras)} views "
                              f"({some}, ...); expected a view name (image file stem) or an index into them")
        return cam if (cam.width, cam.height) == (width, height) else cam.resized(width, height)


@torch.no_grad()
def rendered_features(field: FeatureField, camera: Camera) -> Tensor:
    """[H, W, d] the run's stored (undecoded) features rendered at ``camera``."""
    g = field.gaussians
    return render(g.with_features(g.features, None), camera, features=True, sh_degree=0).features


@torch.no_grad()
def pixel_relevancy(field: FeatureField, features: Tensor, texts: Sequence[str],
                    negatives: Sequence[str] = DEFAULT_NEGATIVES, temperature: float = TEMPERATURE) -> Tensor:
    """[T, H, W] LERF relevancy of each pixel's decoded feature to each text:
    ``min_j sigmoid((cos(f, q) - cos(f, neg_j)) / T)`` (LangSplat's ``get_relevancy``:
    ``softmax(10 [f.q, f.neg_j])[0]``, minimised over the negatives), with cosines."""
    vectors = field.embed([*texts, *negatives])
    cos = field.space.cosine_of(features, vectors)  # [H, W, T + J]
    h, w = cos.shape[:2]
    flat = cos.reshape(h * w, -1)
    neg = flat[:, len(texts):]
    return torch.stack([pairwise_relevancy(flat[:, t], neg, temperature).reshape(h, w) for t in range(len(texts))]).cpu()


@torch.no_grad()
def segment_view(field: FeatureField, camera: Camera, text: Tensor) -> Tensor:
    """[H, W] index of the most similar row of ``text`` [L, D] to each pixel's decoded feature,
    rendered and scored exactly as ``featgs eval`` does (the decoded feature's text block)."""
    out = render(field.gaussians, camera, features=True)
    feats = out.features if field.text_channels is None else out.features[..., slice(*field.text_channels)]
    return segment_features(feats, text).cpu()


def embed_together(field: FeatureField, texts: Sequence[str]) -> Tensor:
    """[L, D] embeddings of ``texts`` computed in one batch by the run's encoder (as
    ``featgs eval`` embeds its label names), so that the two score identical vectors."""
    field.embed(list(texts))  # the checks: texts, and the encoder the run was distilled with
    return field.encoder.encode_text(list(texts)).float().cpu()


@torch.no_grad()
def selection_mask(field: FeatureField, camera: Camera, text: str, *, clean: bool = True) -> Tuple[Tensor, int]:
    """The Gaussians that ``text`` selects in 3D (:meth:`FeatureField.query`, the run's own
    rule: on runs with label names the text must beat every other label name), rendered
    alone; returns the [H, W] bool silhouette (``round(255 alpha) > 10``, OpenGaussian's
    binarisation of its silhouette images) and how many Gaussians were selected."""
    sel = field.query(text, config=QueryConfig(clean=clean))
    if not len(sel):
        return torch.zeros(camera.height, camera.width, dtype=torch.bool), 0
    g = field.gaussians
    alpha = render(g.select(sel.ids.to(g.device)), camera, features=False).alpha[..., 0].cpu()
    return torch.round(255.0 * alpha.clamp(0, 1)) > SILHOUETTE_LEVEL, len(sel)


def iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """|pred & truth| / |pred | truth|, 0 when both are empty (LangSplat gives nan there,
    OpenGaussian 0; neither happens on non-empty annotations)."""
    union = np.logical_or(pred, truth).sum()
    return float(np.logical_and(pred, truth).sum() / union) if union else 0.0


# -- image filters of the original scripts ---------------------------------------------------------
def box_filter(image: np.ndarray, size: int) -> np.ndarray:
    """``cv2.filter2D(image, -1, np.ones((size, size)) / size**2)``: the mean over a size x size
    window whose anchor is at (size // 2, size // 2) (offsets -size//2 .. size-1-size//2), the
    border reflected without repeating the edge (OpenCV's default BORDER_REFLECT_101), in float64."""
    if size <= 1:
        return image.astype(np.float64)
    before, after = size // 2, size - 1 - size // 2
    padded = np.pad(image.astype(np.float64), ((before, after), (before, after)), mode="reflect")
    c = np.pad(padded.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    h, w = image.shape
    window = c[size:size + h, size:size + w] - c[:h, size:size + w] - c[size:size + h, :w] + c[:h, :w]
    return window / (size * size)


def majority_smooth(mask: np.ndarray, scale: int = 3) -> np.ndarray:
    """LangSplat's ``smooth``: each pixel takes the majority value of the 0/1 mask in the rows
    ``max(0, i - scale) : min(i + scale + 1, h - 1)`` and the same columns (its window never
    reaches the last row or column, as there), ties going to 0."""
    m = np.asarray(mask, dtype=np.int64)
    h, w = m.shape
    if h < 2 or w < 2 or scale <= 0:
        return m.astype(np.uint8)
    c = np.pad(m.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    r0 = np.maximum(0, np.arange(h) - scale)
    r1 = np.minimum(np.arange(h) + scale + 1, h - 1)
    c0 = np.maximum(0, np.arange(w) - scale)
    c1 = np.minimum(np.arange(w) + scale + 1, w - 1)
    ones = c[r1][:, c1] - c[r0][:, c1] - c[r1][:, c0] + c[r0][:, c0]
    size = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return (2 * ones > size).astype(np.uint8)


# -- polygons ----------------------------------------------------------------------------------------
def polygon_to_mask(height: int, width: int, points: Sequence[Sequence[float]]) -> np.ndarray:
    """[H, W] bool: the polygon through ``points`` [[x, y], ...] (pixel coordinates, truncated to
    integers as LangSplat's ``np.asarray(points, np.int32)`` does) filled together with its
    outline, as ``cv2.fillPoly`` fills integer polygons (here by PIL's ImageDraw)."""
    from PIL import Image, ImageDraw

    pts = [(int(x), int(y)) for x, y in points]
    img = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(img)
    if len(pts) >= 3:
        draw.polygon(pts, fill=1, outline=1)
    elif len(pts) == 2:
        draw.line(pts, fill=1)
    elif pts:
        draw.point(pts, fill=1)
    return np.asarray(img, dtype=bool).copy()


# the 8 neighbours clockwise (image rows down), starting west
_RING = ((0, -1), (-1, -1), (-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1))
_RING_INDEX = {d: k for k, d in enumerate(_RING)}


def outer_contour(component: np.ndarray) -> List[List[int]]:
    """The outer boundary of one 8-connected region ``component`` [H, W] bool, as polygon
    vertices [[x, y], ...] through its boundary pixels (Moore-neighbour tracing, straight runs
    reduced to their ends). :func:`polygon_to_mask` of it gives the region with its holes
    filled, as an outline drawn around an object would."""
    pad = np.pad(np.asarray(component, dtype=bool), 1)
    found = np.argwhere(pad)
    if not len(found):
        return []
    start = (int(found[0][0]), int(found[0][1]))  # top-most, then left-most: its west is empty
    cur, back = start, _RING_INDEX[(0, -1)]
    path = [start]
    seen = {(start, back)}
    while True:
        for k in range(1, 9):
            d = (back + k) % 8
            n = (cur[0] + _RING[d][0], cur[1] + _RING[d][1])
            if pad[n]:
                break
        else:  # a single pixel
            break
        prev = (cur[0] + _RING[(d - 1) % 8][0], cur[1] + _RING[(d - 1) % 8][1])
        back = _RING_INDEX[(prev[0] - n[0], prev[1] - n[1])]
        cur = n
        if (cur, back) in seen:
            break
        seen.add((cur, back))
        path.append(cur)
    if len(path) > 1 and path[-1] == start:
        path.pop()
    keep = [p for i, p in enumerate(path)
            if len(path) < 3 or _turns(path[i - 1], p, path[(i + 1) % len(path)])]
    return [[c - 1, r - 1] for r, c in keep]


def _turns(a, b, c) -> bool:
    return (b[0] - a[0], b[1] - a[1]) != (c[0] - b[0], c[1] - b[1])


def components(mask: np.ndarray) -> List[np.ndarray]:
    """The 8-connected regions of ``mask`` [H, W] bool, each as a bool mask, in raster order."""
    from scipy.ndimage import label

    lab, n = label(np.asarray(mask, dtype=bool), structure=np.ones((3, 3), dtype=int))
    return [lab == k for k in range(1, n + 1)]


def box_of(mask: np.ndarray) -> List[int]:
    """[x1, y1, x2, y2]: the inclusive pixel box of ``mask``."""
    rows, cols = np.nonzero(mask)
    return [int(cols.min()), int(rows.min()), int(cols.max()), int(rows.max())]


# -- aggregation -------------------------------------------------------------------------------------
def mean(xs: Iterable[float]) -> Optional[float]:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return sum(xs) / len(xs) if xs else None


def per_category(queries: List[dict], keys: Sequence[str]) -> Dict[str, dict]:
    """Category -> the mean of each of ``keys`` over that category's queries, and their count."""
    out: Dict[str, dict] = {}
    for cat in dict.fromkeys(q["category"] for q in queries):
        mine = [q for q in queries if q["category"] == cat]
        out[cat] = {k: mean(q[k] for q in mine) for k in keys}
        out[cat]["queries"] = len(mine)
    return out


def combine_scenes(scenes: Dict[str, dict], keys: Sequence[str]) -> dict:
    """Averages over several scenes' results (each with ``num_queries`` and ``keys``):
    ``per_query`` pools every query of every scene (each query weighs the same), ``per_scene``
    is the mean of the scenes' own values (each scene weighs the same)."""
    total = sum(s["num_queries"] for s in scenes.values())
    per_query = {k: (sum(s[k] * s["num_queries"] for s in scenes.values() if s[k] is not None) / total
                     if total else None) for k in keys}
    per_scene = {k: mean(s[k] for s in scenes.values()) for k in keys}
    return {"per_query": {**per_query, "num_queries": total}, "per_scene": {**per_scene, "num_scenes": len(scenes)}}
