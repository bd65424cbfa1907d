"""SAM's automatic masks: a grid of single-point prompts, filtered and de-duplicated.

The recipe of segment-anything's ``SamAutomaticMaskGenerator`` (one crop, no small-region
clean-up): each grid point is a foreground click giving three masks; masks whose predicted
IoU or stability score is low are dropped, and box non-maximum suppression removes
duplicates. The masks are judged at the decoder's own resolution (256 x 256 over SAM's input
frame, cropped to the image) and returned at the size the caller asks for.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featgs.teachers import sam_model

LOW_RES = 256  # side of the mask decoder's output over the 1024 x 1024 input frame


@dataclass(frozen=True)
class MaskConfig:
    """SAM's automatic mask generator settings (its defaults, but 16 points per side).

    Attributes:
        points_per_side: the grid of clicks is points_per_side^2.
        points_per_batch: clicks decoded at once (memory vs speed).
        pred_iou_thresh: keep masks whose predicted IoU is above this.
        stability_thresh: keep masks whose stability score (IoU of the mask thresholded at
            +-stability_offset around 0) is at least this.
        stability_offset: logit offset of the stability score.
        nms_thresh: box IoU above which the lower-scoring of two masks is dropped.
    """

    points_per_side: int = 16
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_thresh: float = 0.95
    stability_offset: float = 1.0
    nms_thresh: float = 0.7


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """[n, m] IoU of boxes [n, 4] and [m, 4] given as inclusive (x0, y0, x1, y1) pixel boxes."""
    lo = torch.maximum(a[:, None, :2], b[None, :, :2])
    hi = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (hi - lo + 1).clamp_min(0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2] + 1).prod(-1)
    area_b = (b[:, 2:] - b[:, :2] + 1).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def box_nms(boxes: Tensor, scores: Tensor, threshold: float) -> Tensor:
    """Indices of the boxes kept by greedy non-maximum suppression, best score first.

    A box is dropped when its IoU with a better-scoring kept box exceeds ``threshold``.
    """
    order = torch.argsort(scores, descending=True)
    iou = box_iou(boxes[order].float(), boxes[order].float())
    keep = torch.ones(len(order), dtype=torch.bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1:] &= iou[i, i + 1:] <= threshold
    return order[keep.to(order.device)]


def stability_score(logits: Tensor, offset: float) -> Tensor:
    """[...] IoU between a mask's logits thresholded at +offset and at -offset."""
    inner = (logits > offset).flatten(-2).sum(-1)
    outer = (logits > -offset).flatten(-2).sum(-1)
    return inner / outer.clamp_min(1)


@torch.no_grad()
def automatic_masks(sam: nn.Module, embedding: Tensor, image_size: tuple[int, int], out_size: tuple[int, int],
                    config: MaskConfig = MaskConfig()) -> tuple[Tensor, Tensor]:
    """SAM's automatic masks of one image.

    Args:
        embedding: [1, 256, 64, 64] the image's embedding laid out as SAM's encoder gives it.
        image_size: (H, W) of the image.
        out_size: (h, w) at which to return the masks.
    Returns:
        masks [m, h, w] bool and their predicted IoUs [m], best first.
    """
    H, W = image_size
    dev = embedding.device
    h_in, w_in = sam_model.input_size(H, W)
    crop = (-(-h_in * LOW_RES // sam_model.IMAGE_SIZE), -(-w_in * LOW_RES // sam_model.IMAGE_SIZE))
    n = config.points_per_side
    side = (torch.arange(n, device=dev, dtype=torch.float32) + 0.5) / n
    grid = torch.stack(torch.meshgrid(side, side, indexing="xy"), dim=-1).reshape(-1, 2)
    clicks = grid * torch.tensor([W, H], device=dev) * sam_model.input_scale(H, W, dev)
    kept_logits, kept_scores = [], []
    for start in range(0, len(clicks), config.points_per_batch):
        xy = clicks[start:start + config.points_per_batch, None, :]
        labels = torch.ones(len(xy), 1, dtype=torch.int64, device=dev)
        logits, scores = sam_model.decode(sam, embedding, (xy, labels), None, multimask=True)
        logits, scores = logits[..., :crop[0], :crop[1]].flatten(0, 1), scores.flatten()
        keep = (scores > config.pred_iou_thresh) & (
            stability_score(logits, config.stability_offset) >= config.stability_thresh)
        kept_logits.append(logits[keep])
        kept_scores.append(scores[keep])
    logits, scores = torch.cat(kept_logits), torch.cat(kept_scores)
    masks = logits > sam.mask_threshold
    nonempty = masks.flatten(1).any(1)
    logits, scores, masks = logits[nonempty], scores[nonempty], masks[nonempty]
    if len(masks):
        keep = box_nms(_mask_boxes(masks), scores, config.nms_thresh)
        logits, scores = logits[keep], scores[keep]
    resized = F.interpolate(logits[:, None].float(), size=out_size, mode="bilinear", align_corners=False,
                            antialias=True)[:, 0] if len(logits) else logits.new_zeros(0, *out_size)
    return resized > sam.mask_threshold, scores


def _mask_boxes(masks: Tensor) -> Tensor:
    """[m, 4] inclusive (x0, y0, x1, y1) boxes of non-empty masks [m, h, w]."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)
    ys = torch.arange(h, device=masks.device)
    xs = torch.arange(w, device=masks.device)
    y0 = torch.where(rows, ys, h).amin(-1)
    y1 = torch.where(rows, ys, -1).amax(-1)
    x0 = torch.where(cols, xs, w).amin(-1)
    x1 = torch.where(cols, xs, -1).amax(-1)
    return torch.stack([x0, y0, x1, y1], dim=-1)
