"""Point and box prompts: which object did the user click or box?

Two paths (:meth:`featgs.query.FeatureField.prompt` picks one):

- a :class:`MaskDecoder` (SAM's prompt encoder + mask decoder run on the *rendered* SAM feature
  map), for runs distilled from SAM when the user supplies the SAM weights; its 2D mask is
  lifted to Gaussians by blend weight;
- feature affinity, always available: the rendered feature under a click is the seed; the
  Gaussians whose features lie within ``affinity`` (cosine) of it form candidate sets, and the
  selection is the groups of touching candidates that hold the Gaussians under the click. That
  picks one instance (the apple that was clicked, not both), in 3D, and its mask at any view.
  A box seeds with the dominant feature inside it: the feature that covers the box's centre
  region most while covering the band around the box least (the table fills a banana's box
  corners, but it also fills the band around it). On the demo's test views a box drawn
  around the table holds more floor than table in some views; weighting the centre
  (``focus`` 2) and the band (``penalty`` 2) took the table's mean box IoU from 0.70 to 0.93
  without changing the other objects'.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import List, Optional, Protocol, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians
from featgs.query.clean import radii, touching_groups
from featgs.query.features import FeatureSpace
from featgs.render import render as render_view

_MAX_SAMPLES = 1024  # box and band pixels compared pairwise when seeding from a box


class MaskDecoder(Protocol):
    """A promptable mask decoder run on a rendered feature map (e.g. SAM's).

    Attributes:
        teacher: name of the teacher whose feature space it decodes ("sam"); a field accepts
            a decoder only when its run was distilled from that teacher.
    """

    teacher: str

    def __call__(self, features: Tensor, *, points: Optional[Tensor], point_labels: Optional[Tensor],
                 box: Optional[Tensor]) -> Tensor:
        """A mask for the prompts on one rendered view.

        Args:
            features: [H, W, D] the rendered (decoded) feature map of the view; the decoder
                resamples it to its own embedding size (SAM: 64 x 64).
            points: [P, 2] pixel coordinates (x right, y down) or None.
            point_labels: [P] 1 = foreground, 0 = background, or None.
            box: [4] (x0, y0, x1, y1) in pixels, or None.
        Returns:
            [H, W] bool.
        """
        ...


class SamMaskDecoder:
    """:class:`MaskDecoder` through SAM's prompt encoder and mask decoder
    (:class:`featgs.teachers.sam_prompter.SamPrompter`), loaded from ``checkpoint`` on first use.

    A single click is ambiguous (part or whole?): SAM proposes three masks and the one it
    scores highest is returned; several points or a box give one mask.
    """

    teacher = "sam"

    def __init__(self, checkpoint: str | Path, *, model: Optional[str] = None,
                 device: str | torch.device = "auto", prompter: Optional[object] = None):
        self.checkpoint, self.model, self.device = Path(checkpoint), model, device
        self._prompter = prompter

    @property
    def prompter(self):
        if self._prompter is None:
            from featgs.teachers.sam_prompter import SamPrompter

            self._prompter = SamPrompter.from_checkpoint(self.checkpoint, self.model, self.device)
        return self._prompter

    def __call__(self, features: Tensor, *, points: Optional[Tensor], point_labels: Optional[Tensor],
                 box: Optional[Tensor]) -> Tensor:
        H, W = features.shape[:2]
        single_click = box is None and points is not None and len(points) == 1
        out = self.prompter.predict(features.permute(2, 0, 1).float(), (H, W), points=points, labels=point_labels,
                                    boxes=None if box is None else box.reshape(1, 4), multimask=single_click)
        return out.masks[int(out.scores.argmax())].cpu()


@dataclass(frozen=True)
class PromptConfig:
    """Parameters of the affinity path.

    Attributes:
        affinity: cosine to the seed feature a Gaussian needs to belong to the clicked object.
        link: Gaussians this close to the seed (but not ``affinity`` close) hold the object's
            touching groups together without joining it: on the demo, the lamp's pole, whose
            features wobble, split the lamp when clicked on its shade (IoU 0.66 at link 0.8,
            0.89 at 0.6).
        top_k: blend weights kept per pixel in the prompt's render.
        band: width of the band around a box, as a fraction of the box's larger side.
        focus: box pixels count for the seed by ``exp(-focus * r^2)``, r = 1 at the middle of
            an edge: the larger, the more the box's centre decides.
        penalty: weight of a feature's share of the band around the box against it (what
            surrounds the box, e.g. the floor around a table, is not what the box frames).
        overlap: Gaussians touch when closer than ``overlap`` times the sum of their radii.
        clean: add the Gaussians the selection hides (see :mod:`featgs.query.clean`).
    """

    affinity: float = 0.8
    link: float = 0.6
    top_k: int = 16
    band: float = 0.25
    focus: float = 2.0
    penalty: float = 2.0
    overlap: float = 3.0
    clean: bool = True

    def __post_init__(self) -> None:
        if not -1.0 < self.link <= self.affinity < 1.0 or self.top_k < 1 or not min(self.band, self.overlap) > 0 \
                or not min(self.focus, self.penalty) >= 0:
            raise FeatgsError("prompt: need -1 < link <= affinity < 1, top_k >= 1, band and overlap > 0, "
                              "focus and penalty >= 0")

    def with_affinity(self, affinity: float) -> "PromptConfig":
        """The same config taking Gaussians at cosine ``affinity``; the linking threshold
        follows a lower affinity down (it may not exceed it)."""
        return replace(self, affinity=affinity, link=min(self.link, affinity))


@dataclass(frozen=True)
class Prompt:
    """Validated prompts for one view (pixel units, x right, y down).

    Attributes:
        points: [P, 2] float64; point_labels: [P] int64 (1 foreground, 0 background).
        box: [4] float64 (x0, y0, x1, y1) with x0 < x1, y0 < y1, or None.
    """

    points: Tensor
    point_labels: Tensor
    box: Optional[Tensor] = None

    @classmethod
    def make(cls, width: int, height: int, points: Optional[Sequence] = None,
             point_labels: Optional[Sequence] = None, box: Optional[Sequence] = None) -> "Prompt":
        """Check prompts against a ``width`` x ``height`` view; labels default to foreground."""
        try:
            pts = torch.as_tensor([] if points is None else points, dtype=torch.float64).reshape(-1, 2)
            labels = torch.ones(len(pts), dtype=torch.int64) if point_labels is None else \
                torch.as_tensor(point_labels, dtype=torch.int64).reshape(-1)
            b = None if box is None else torch.as_tensor(box, dtype=torch.float64).reshape(-1)
        except (TypeError, ValueError, RuntimeError) as e:
            raise FeatgsError(f"prompt: points must be [[x, y], ...], point_labels [0|1, ...], "
                              f"box [x0, y0, x1, y1] ({e})") from None
        if len(labels) != len(pts):
            raise FeatgsError(f"prompt: {len(pts)} points but {len(labels)} point labels")
        if not bool(((labels == 0) | (labels == 1)).all()):
            raise FeatgsError("prompt: point labels must be 1 (foreground) or 0 (background)")
        inside = (pts >= 0) & (pts < torch.tensor([width, height]))
        if not torch.isfinite(pts).all() or not bool(inside.all()):
            raise FeatgsError(f"prompt: points must lie inside the {width}x{height} view")
        if b is not None:
            if len(b) != 4 or not torch.isfinite(b).all():
                raise FeatgsError("prompt: box must be four numbers x0, y0, x1, y1")
            b = torch.stack([b[0].clamp(0, width), b[1].clamp(0, height), b[2].clamp(0, width), b[3].clamp(0, height)])
            if not (b[2] - b[0] >= 1 and b[3] - b[1] >= 1):
                raise FeatgsError(f"prompt: box must have x0 < x1 and y0 < y1 and overlap the {width}x{height} "
                                  "view by a pixel")
        if not int((labels == 1).sum()) and b is None:
            raise FeatgsError("prompt: give at least one foreground point or a box")
        return cls(points=pts, point_labels=labels, box=b)

    def box_mask(self, width: int, height: int) -> Optional[Tensor]:
        """[H, W] bool of the pixels whose centres lie in the box, or None without a box."""
        if self.box is None:
            return None
        xs = torch.arange(width, dtype=torch.float64) + 0.5
        ys = torch.arange(height, dtype=torch.float64) + 0.5
        x0, y0, x1, y1 = self.box.tolist()
        return ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]


def box_regions(width: int, height: int, box: Tensor, band: float, focus: float) -> tuple[Tensor, Tensor, Tensor]:
    """Pixels of a box, of the band around it, and how central each pixel is.

    Args:
        box: [4] (x0, y0, x1, y1) pixels; band: the band's width as a fraction of the box's
            larger side; focus: how fast centrality falls off.
    Returns:
        in_box [H, W] bool, in_band [H, W] bool, centrality [H, W] in 0..1 (1 at the centre,
        exp(-focus) at the middle of an edge).
    """
    x0, y0, x1, y1 = box.tolist()
    ys = torch.arange(height, dtype=torch.float64) + 0.5
    xs = torch.arange(width, dtype=torch.float64) + 0.5
    cx, cy, hw, hh = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    dx, dy = (xs[None, :] - cx) / hw, (ys[:, None] - cy) / hh
    in_box = (dx.abs() <= 1) & (dy.abs() <= 1)
    pad = band * max(x1 - x0, y1 - y0)
    in_band = ((xs[None, :] - cx).abs() <= hw + pad) & ((ys[:, None] - cy).abs() <= hh + pad) & ~in_box
    return in_box, in_band, torch.exp(-focus * (dx**2 + dy**2)).float()


def dominant_feature(inner: Tensor, centrality: Tensor, outer: Tensor, affinity: float, penalty: float) -> Tensor:
    """The feature that dominates a box: [D] unit vector.

    Each box pixel's feature is scored by the centre-weighted share of box pixels within
    ``affinity`` (cosine) of it, minus ``penalty`` times the share of band pixels within
    ``affinity`` of it; the result is the mean feature of the box pixels near the best one.

    Args:
        inner: [B, D] unit features of (a sample of) the box pixels; centrality: [B].
        outer: [R, D] unit features of (a sample of) the band pixels (R may be 0).
    """
    near_in = (inner @ inner.T >= affinity).float()
    score = near_in @ centrality / centrality.sum().clamp_min(1e-12)
    if len(outer):
        score = score - penalty * (inner @ outer.T >= affinity).float().mean(1)
    best = int(score.argmax())
    return F.normalize(inner[near_in[best] > 0].mean(0), dim=0)


def sample_pixels(mask: Tensor, generator: torch.Generator) -> Tensor:
    """[M, 2] (row, column) of at most 1024 random pixels where ``mask`` [H, W] is True."""
    where = torch.nonzero(mask)
    if len(where) > _MAX_SAMPLES:
        where = where[torch.randperm(len(where), generator=generator)[:_MAX_SAMPLES]]
    return where


def affinity_select(g: Gaussians, space: FeatureSpace, camera: Camera, p: Prompt, config: PromptConfig) -> Tensor:
    """[N] bool: the Gaussians a point/box prompt picks by feature affinity (no mask decoder).

    Every prompt gives seeds (the Gaussians under a clicked pixel; for a box, the front
    Gaussians of its pixels whose feature matches its dominant one); the answer is the touching
    groups of feature-similar Gaussians that hold the seeds, foreground first.

    Args:
        g: the field's Gaussians; ``space``: the features that affinity compares.
    """
    out = render_view(g.with_features(g.features, None), camera, features=True, sh_degree=0, top_k=config.top_k)
    unit = lambda f: F.normalize(space.decode(f), dim=-1)  # noqa: E731
    seeds: List[Tuple[Tensor, Tensor, bool]] = []  # (feature [D], seed Gaussian ids, foreground)
    for (x, y), label in zip(p.points.tolist(), p.point_labels.tolist()):
        row, col = int(y), int(x)
        ids = out.topk_ids[row, col]
        seeds.append((unit(out.features[row, col]), ids[ids >= 0].cpu(), label == 1))
    if p.box is not None and not any(fg for _, _, fg in seeds):
        in_box, in_band, centrality = box_regions(camera.width, camera.height, p.box, config.band, config.focus)
        gen = torch.Generator().manual_seed(0)
        inner, outer = sample_pixels(in_box, gen), sample_pixels(in_band, gen)
        f_in = unit(out.features[inner[:, 0], inner[:, 1]])
        f_out = unit(out.features[outer[:, 0], outer[:, 1]])
        # the box's masks and weights are made on the CPU; the features are on the render's device
        weights = centrality[inner[:, 0], inner[:, 1]].to(f_in.device)
        seed = dominant_feature(f_in, weights, f_out, config.affinity, config.penalty)
        # the seed Gaussians: the front Gaussian of every box pixel whose feature matches
        rows, cols = torch.nonzero(in_box, as_tuple=True)
        match = (space.cosine_of(out.features[rows, cols], seed[None])[:, 0] >= config.affinity).cpu()
        front = out.topk_ids[rows[match], cols[match], 0]
        seeds.append((seed, front[front >= 0].cpu(), True))
    cos = space.cosine(torch.stack([s for s, _, _ in seeds])).cpu()
    keep = torch.zeros(len(g), dtype=torch.bool)
    means, r = g.means.detach().cpu(), radii(g).cpu()
    for j, (_, ids, foreground) in sorted(enumerate(seeds), key=lambda s: not s[1][2]):  # foreground first
        # Groups are found among the Gaussians within `link` of the seed, so that a thin part
        # whose features wobble (a lamp's pole) still joins what it holds together; only the
        # ones within `affinity` are taken.
        cand = torch.nonzero(cos[:, j] >= config.link).squeeze(1)
        strong = cos[cand, j] >= config.affinity
        held = torch.isin(cand, ids) & strong
        if not held.any():
            continue
        groups = torch.from_numpy(touching_groups(means[cand], r[cand], config.overlap))
        chosen = cand[torch.isin(groups, groups[held]) & strong]
        keep[chosen] = foreground
    return keep
