"""Point and box prompts on a SAM feature map, through SAM's prompt encoder and mask decoder.

The map need not come from SAM's image encoder: a SAM feature map rendered from the
Gaussians at any resolution works the same way, which is how a click in the viewer becomes
a mask. The map is laid out on SAM's 64 x 64 grid as the encoder would have produced it
(see :func:`featgs.teachers.sam_model.pad_embedding`), prompts are moved into SAM's
1024-pixel input frame, and the low-resolution masks come back at the image's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

from featgs.errors import FeatgsError
from featgs.teachers import sam_model
from featgs.teachers.base import resolve_device


@dataclass(frozen=True)
class SamMasks:
    """Masks for one set of prompts.

    Attributes:
        masks: [k, H, W] bool, at the size of the image the prompts refer to.
        scores: [k] SAM's predicted IoU of each mask.
        logits: [k, 256, 256] low-resolution mask logits (SAM's ``mask_input`` for a refinement).
    """

    masks: Tensor
    scores: Tensor
    logits: Tensor


class SamPrompter:
    """SAM's prompt encoder and mask decoder, applied to a given (e.g. rendered) feature map.

    Args:
        sam: segment-anything's ``Sam`` module (only its prompt encoder, mask decoder and
            the encoder's input size are used).
    """

    def __init__(self, sam: nn.Module):
        self.sam = sam

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, model: Optional[str] = None,
                        device: str | torch.device = "auto") -> "SamPrompter":
        """Load SAM from a local checkpoint (the size read off it unless ``model`` is given)."""
        from featgs.teachers.checkpoint import checked_file

        path = checked_file(checkpoint, "SAM checkpoint")
        sam, _ = sam_model.load_sam(path, model, resolve_device(device))
        return cls(sam)

    @property
    def device(self) -> torch.device:
        return next(self.sam.parameters()).device

    @torch.no_grad()
    def predict(
        self,
        features: Tensor,
        image_size: tuple[int, int],
        points: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,
        boxes: Optional[Tensor] = None,
        multimask: bool = True,
    ) -> SamMasks:
        """Masks for the prompts, at the image's size.

        Args:
            features: [256, h, w] SAM feature map of the image (cached or rendered; any h, w).
            image_size: (H, W) of the image the prompt coordinates refer to; masks come at this size.
            points: [n, 2] (x, y) pixel coordinates (x the column, y the row, as SAM takes them).
            labels: [n] 1 for a foreground point, 0 for a background point.
            boxes: [b, 4] (x0, y0, x1, y1) pixel boxes. Several boxes are several prompts,
                each with all the points; one box or none is one prompt.
            multimask: three candidate masks per prompt (best for a single ambiguous click)
                instead of one.

        Returns:
            :class:`SamMasks` with k = prompts x (3 or 1) masks, prompt by prompt, in SAM's order.
        """
        H, W = (int(s) for s in image_size)
        if features.dim() != 3 or features.shape[0] != sam_model.DIM:
            raise FeatgsError(f"SAM prompts need a [{sam_model.DIM}, h, w] feature map, got {tuple(features.shape)}")
        if points is None and boxes is None:
            raise FeatgsError("SAM prompts need at least one point or box")
        if (points is None) != (labels is None):
            raise FeatgsError("SAM point prompts need both points and labels")
        dev = self.device
        h, w = sam_model.input_size(H, W)
        scale = sam_model.input_scale(H, W, dev)
        box_input = None
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=torch.float32, device=dev).reshape(-1, 4)
            if not len(boxes):
                raise FeatgsError("SAM prompts: boxes must be [b, 4] with b >= 1")
            box_input = boxes * scale.repeat(2)
        n_prompts = 1 if box_input is None else len(box_input)
        point_input = None
        if points is not None:
            points = torch.as_tensor(points, dtype=torch.float32, device=dev).reshape(-1, 2)
            labels = torch.as_tensor(labels, dtype=torch.int64, device=dev).reshape(-1)
            if len(points) != len(labels) or not len(points):
                raise FeatgsError(f"SAM prompts: {len(points)} points but {len(labels)} labels")
            point_input = ((points * scale).expand(n_prompts, -1, -1), labels.expand(n_prompts, -1))
        embedding = sam_model.pad_embedding(features.to(dev), H, W)
        logits, scores = sam_model.decode(self.sam, embedding, point_input, box_input, multimask)
        masks = self.sam.postprocess_masks(logits, input_size=(h, w), original_size=(H, W))
        return SamMasks(
            masks=(masks > self.sam.mask_threshold).flatten(0, 1),
            scores=scores.flatten(),
            logits=logits.flatten(0, 1),
        )
