"""Teacher ``sam``: Segment Anything's image embedding, 256 channels on a 64 x 64 grid.

The cached map is the part of the embedding that the image covers (the padding cells are
cropped, see :mod:`featgs.teachers.sam_model`), so a 4:3 image gives [256, 48, 64]. A map
rendered from the Gaussians goes back to SAM's prompt encoder and mask decoder through
:class:`featgs.teachers.sam_prompter.SamPrompter`. :meth:`SamTeacher.automatic_masks` gives
segment-anything's automatic masks of an image (CLIP's sharpening pools inside them).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from torch import Tensor

from featgs.errors import FeatgsError
from featgs.teachers import sam_model
from featgs.teachers.base import Teacher, resolve_device
from featgs.teachers.checkpoint import checked_file, file_sha256, read_state_dict


class SamTeacher(Teacher):
    """SAM's image encoder from a local checkpoint.

    Args:
        checkpoint: a SAM state dict (.pth as released, or .safetensors).
        model: vit_b, vit_l or vit_h (vit_tiny: tests only); None reads it off the checkpoint.
        device: where the model runs ("auto": the GPU if there is one).
    """

    name = "sam"
    dim = sam_model.DIM
    language_aligned = False

    def __init__(self, checkpoint: str | Path, model: Optional[str] = None, device: str | torch.device = "auto"):
        if checkpoint is None:
            raise FeatgsError("the sam teacher needs --sam-checkpoint PATH (a SAM .pth or .safetensors file)")
        if model is not None and model not in sam_model.SAM_MODELS:
            raise FeatgsError(f"--sam-model: unknown SAM model {model!r}; "
                              f"expected one of {', '.join(sam_model.SAM_MODELS)}")
        self.checkpoint = checked_file(checkpoint, "SAM checkpoint")
        self.model = model
        self.device = resolve_device(device)
        self._sam: Optional[Sam] = None

    @functools.cached_property
    def model_id(self) -> str:
        """e.g. "sam-vit_b@sha256:ec2df62732614e57" (the size as loaded, the file's hash)."""
        return f"sam-{self.sam_model_name}@sha256:{file_sha256(self.checkpoint)[:16]}"

    @property
    def sam_model_name(self) -> str:
        """The SAM size: as given, or as read off the checkpoint's tensor shapes."""
        if self.model is None:
            self.model = sam_model.detect_model(read_state_dict(self.checkpoint, mmap=True), self.checkpoint)
        return self.model

    @property
    def sam(self) -> Sam:
        """segment-anything's ``Sam`` module, loaded on first use."""
        return self._load()[0]

    def _load(self) -> tuple[Sam, str]:
        if self._sam is None:
            self._sam, self.model = sam_model.load_sam(self.checkpoint, self.model, self.device)
        return self._sam, self.model

    def prepare(self) -> None:
        self._load()

    def resolution_for(self, width: int, height: int) -> tuple[int, int]:
        return sam_model.embedding_size(height, width)

    def encode_view(self, image: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """[256, h, w] float32 on the teacher's device, (h, w) = ``resolution_for(W, H)``."""
        return sam_model.crop_embedding(sam_model.encode(self.sam, image), image.shape[0], image.shape[1])

    @torch.no_grad()
    def automatic_masks(self, image: Tensor, size: tuple[int, int], points_per_side: int, **settings: Any) -> Tensor:
        """segment-anything's automatic masks of an image (``SamAutomaticMaskGenerator``), at ``size``.

        The generator clicks a grid of points, keeps the masks whose predicted IoU and
        stability are high, and removes duplicates by box non-maximum suppression
        (torchvision's ``batched_nms``); by default on one crop (the whole image), with no
        clean-up of small regions. It encodes the image itself, as 8-bit RGB resized by
        ``ResizeLongestSide.apply_image`` (SAM's numpy input path, not :meth:`encode_view`'s).

        Args:
            image: [H, W, 3] float in 0..1, on any device.
            size: (h, w) at which to return the masks.
            points_per_side: the grid has points_per_side^2 clicks (each a decoder pass).
            **settings: other ``SamAutomaticMaskGenerator`` arguments, its defaults otherwise
                (e.g. ``pred_iou_thresh=0.0`` keeps masks whatever their predicted IoU).
        Returns:
            [m, h, w] bool on the CPU, highest predicted IoU first. Each mask is generated at
            H x W and resized by area: a cell is in the mask when at least half of its pixels
            are. Masks that cover no cell at (h, w) are left out.
        """
        settings = {"points_per_batch": _points_per_batch(self.sam.device), **settings}
        generator = SamAutomaticMaskGenerator(self.sam, points_per_side=points_per_side, **settings)
        pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        masks = [F.interpolate(torch.from_numpy(record["segmentation"])[None, None].float(), size=tuple(size),
                               mode="area")[0, 0] >= 0.5 for record in generator.generate(pixels)]
        masks = [m for m in masks if m.any()]
        return torch.stack(masks) if masks else torch.zeros(0, *size, dtype=torch.bool)


def _points_per_batch(device: torch.device) -> int:
    """Clicks the mask generator decodes at once.

    SAM's default, 64, on a GPU. On a CPU 16: each click's three masks are upsampled to the
    full image as float logits before they are filtered (24 MB a click for a 1080p image),
    memory that a larger batch does not buy speed with there.
    """
    return 64 if device.type == "cuda" else 16
