"""Semantic segmentation of rendered features by text (argmax of cosine similarity), and its
scores: confusion matrix, mIoU, pixel accuracy. A base module: queries segment with it,
evaluation scores with it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def segment_features(features: Tensor, text_embeddings: Tensor) -> Tensor:
    """Per-pixel index of the most similar text.

    Args:
        features: [H, W, D] rendered (decoded) features.
        text_embeddings: [L, D] one row per label.
    Returns:
        [H, W] int64 in 0..L-1.
    """
    f = F.normalize(features.float(), dim=-1)
    t = F.normalize(text_embeddings.float(), dim=-1)
    return (f @ t.T).argmax(dim=-1)


def confusion_matrix(pred: Tensor, truth: Tensor, num_classes: int) -> Tensor:
    """[L, L] counts, rows = truth, columns = prediction; pixels with truth < 0 are ignored."""
    keep = truth >= 0
    idx = truth[keep] * num_classes + pred[keep]
    return torch.bincount(idx.reshape(-1), minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou_and_accuracy(confusion: Tensor) -> tuple[float, float, Tensor]:
    """Mean IoU over classes that occur (in truth or prediction), pixel accuracy, per-class IoU [L]."""
    c = confusion.double()
    tp = c.diag()
    union = c.sum(0) + c.sum(1) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    present = union > 0
    miou = float(iou[present].mean()) if present.any() else float("nan")
    acc = float(tp.sum() / c.sum().clamp_min(1))
    return miou, acc, iou
