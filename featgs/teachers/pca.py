"""Principal components of teacher maps, streamed view by view (never all maps in memory)."""

from __future__ import annotations

from typing import Callable, Sequence, Tuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from featgs.errors import FeatgsError

TeacherMap = Callable[[], Tensor]  # () -> [D, h, w]


def flat_map(teacher_map: Tensor) -> Tensor:
    """[D, h, w] -> [h*w, D] float32, rejecting non-finite values."""
    t = teacher_map.float()
    if not torch.isfinite(t).all():
        raise FeatgsError("teacher map contains NaN or Inf; rebuild the feature cache")
    return t.reshape(t.shape[0], -1).T


@torch.no_grad()
def teacher_pca(maps: Sequence[TeacherMap], dim: int, *, progress: bool = True) -> Tuple[Tensor, Tensor, float]:
    """Top-``dim`` principal basis of the teacher features over all views, streamed.

    Returns:
        basis [D, dim] (orthonormal columns), mean [D], and the share of variance kept.
    """
    s = ss = None
    count = 0
    for load in tqdm(maps, desc="teacher PCA", unit="view", disable=not progress, leave=False):
        t = flat_map(load()).double()
        s = t.sum(0) if s is None else s + t.sum(0)
        ss = t.T @ t if ss is None else ss + t.T @ t
        count += t.shape[0]
    mean = s / count
    cov = ss / count - torch.outer(mean, mean)
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)[:dim]
    kept = float(evals[order].clamp_min(0).sum() / evals.clamp_min(0).sum().clamp_min(1e-30))
    return evecs[:, order].float(), mean.float(), kept
