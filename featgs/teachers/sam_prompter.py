"""Point and box prompts on a SAM feature map, through segment-anything's ``SamPredictor``.

The map need not come from SAM's image encoder: a SAM feature map rendered from the
Gaussians at any resolution works the same way, which is how a click in the viewer becomes
a mask. The map is laid out on SAM's 64 x 64 grid as the encoder would have produced it
(see :func:`featgs.teachers.sam_model.pad_embedding`) and set as the predictor's image
features; the predictor moves the prompts into SAM's 1024-pixel input frame
(``ResizeLongestSide``), runs the prompt encoder and mask decoder, and brings the masks back
at the image's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from segment_anything import SamPredictor
from segment_anything.modeling import Sam
from torch import Tensor

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
        sam: segment-anything's ``Sam`` module (its image encoder is not run).
    """

    def __init__(self, sam: Sam):
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
        return self.sam.device

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
        if boxes is not None:
            boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
            if not len(boxes):
                raise FeatgsError("SAM prompts: boxes must be [b, 4] with b >= 1")
        if points is not None:
            points = torch.as_tensor(points, dtype=torch.float32).reshape(-1, 2)
            labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
            if len(points) != len(labels) or not len(points):
                raise FeatgsError(f"SAM prompts: {len(points)} points but {len(labels)} labels")
        predictor = laid_out(self.sam, features, (H, W))
        dev, size, frame = predictor.device, predictor.original_size, predictor.transform
        box_input = None if boxes is None else frame.apply_boxes_torch(boxes.to(dev), size)
        n_prompts = 1 if box_input is None else len(box_input)
        coords = None if points is None else frame.apply_coords_torch(points.to(dev), size).expand(n_prompts, -1, -1)
        labels = None if labels is None else labels.to(dev).expand(n_prompts, -1)
        masks, scores, logits = predictor.predict_torch(coords, labels, box_input, multimask_output=multimask)
        return SamMasks(masks=masks.flatten(0, 1), scores=scores.flatten(), logits=logits.flatten(0, 1))


def laid_out(sam: Sam, features: Tensor, image_size: tuple[int, int]) -> SamPredictor:
    """A ``SamPredictor`` whose image is a given [256, h, w] map of an image of ``image_size`` (H, W).

    The map takes the place of the encoder's output: laid out on SAM's 64 x 64 grid, it fills
    the attributes that ``SamPredictor.set_torch_image`` fills from an image. A fresh
    predictor per call, as it holds the image: concurrent requests do not share one.
    """
    H, W = image_size
    predictor = SamPredictor(sam)
    predictor.original_size = (H, W)
    predictor.input_size = predictor.transform.get_preprocess_shape(H, W, predictor.transform.target_length)
    predictor.features = sam_model.pad_embedding(features.to(predictor.device), H, W)
    predictor.is_image_set = True
    return predictor
