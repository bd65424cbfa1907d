"""A set of Gaussians picked by a query, a prompt or a 2D mask: what edits and masks act on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from featgs.errors import FeatgsError


@dataclass(frozen=True)
class Selection:
    """Gaussians of one field, with their extent.

    Attributes:
        ids: [M] int64, sorted and unique, indices into the field's Gaussians.
        num_gaussians: N, the size of the field the ids index (edits check it).
        bbox: [2, 3] float32 (min corner, max corner) of the selected centres, in the run's
            frame (the PLY's coordinates); None when nothing is selected.
        centroid: [3] float32 mean of the selected centres; None when nothing is selected.
        threshold: the score a Gaussian needed, in the units of ``rule`` (None: not a threshold).
        rule: how the selection was made: a text query's threshold rule ("labels",
            "relative", "absolute"), a prompt ("point", "box", "decoder"), a lifted 2D mask
            ("mask"), or given ids ("ids").
        text: the query text, when there was one.
    """

    ids: Tensor
    num_gaussians: int
    bbox: Optional[Tensor] = None
    centroid: Optional[Tensor] = None
    threshold: Optional[float] = None
    rule: str = "ids"
    text: Optional[str] = None

    @classmethod
    def from_mask(cls, means: Tensor, keep: Tensor, **details) -> "Selection":
        """The Gaussians where ``keep`` [N] bool is True; ``means`` [N, 3] gives the extent."""
        if keep.shape != means.shape[:1] or keep.dtype != torch.bool:
            raise ValueError(f"keep must be a bool [N] mask for {len(means)} Gaussians, "
                             f"got {keep.dtype} {tuple(keep.shape)}")
        return cls.from_ids(means, torch.nonzero(keep.cpu()).squeeze(1), **details)

    @classmethod
    def from_ids(cls, means: Tensor, ids: Tensor, **details) -> "Selection":
        """The Gaussians ``ids`` (any order, repeats allowed) of a field with centres ``means`` [N, 3].

        Raises:
            FeatgsError: an id outside 0..N-1.
        """
        n = len(means)
        ids = torch.unique(torch.as_tensor(ids, dtype=torch.int64).reshape(-1).cpu())
        if len(ids) and (int(ids[0]) < 0 or int(ids[-1]) >= n):
            raise FeatgsError(f"selection: Gaussian ids must lie in 0..{n - 1}, got {int(ids[0])}..{int(ids[-1])}")
        bbox = centroid = None
        if len(ids):
            pts = means.detach().cpu().float()[ids]
            bbox = torch.stack([pts.min(0).values, pts.max(0).values])
            centroid = pts.mean(0)
        return cls(ids=ids, num_gaussians=n, bbox=bbox, centroid=centroid, **details)

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self) -> Tensor:
        """[N] bool: True for the selected Gaussians."""
        keep = torch.zeros(self.num_gaussians, dtype=torch.bool)
        keep[self.ids] = True
        return keep

    def to_dict(self, *, with_ids: bool = False) -> dict:
        """JSON-ready summary: num_selected, num_gaussians, bbox [[x,y,z],[x,y,z]], centroid, ...

        ``with_ids`` adds the ids themselves (M integers).
        """
        out = {
            "num_selected": len(self),
            "num_gaussians": self.num_gaussians,
            "bbox": None if self.bbox is None else self.bbox.tolist(),
            "centroid": None if self.centroid is None else self.centroid.tolist(),
            "threshold": self.threshold,
            "rule": self.rule,
        }
        if self.text is not None:
            out["text"] = self.text
        if with_ids:
            out["ids"] = self.ids.tolist()
        return out
