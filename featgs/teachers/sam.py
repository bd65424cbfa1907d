"""Teacher ``sam``: Segment Anything's image embedding, 256 channels on a 64 x 64 grid.

The cached map is the part of the embedding that the image covers (the padding cells are
cropped, see :mod:`featgs.teachers.sam_model`), so a 4:3 image gives [256, 48, 64]. A map
rendered from the Gaussians goes back to SAM's prompt encoder and mask decoder through
:class:`featgs.teachers.sam_prompter.SamPrompter`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import torch
from torch import Tensor, nn

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
        self._sam: Optional[nn.Module] = None

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
    def sam(self) -> nn.Module:
        """segment-anything's ``Sam`` module, loaded on first use."""
        return self._load()[0]

    def _load(self) -> tuple[nn.Module, str]:
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
