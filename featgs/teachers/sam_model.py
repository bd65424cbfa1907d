"""Segment Anything's model, built from segment-anything's own modules and a local checkpoint.

The package ``segment_anything`` imports torchvision from its ``__init__`` (for its predictor's
resize and its mask generator's NMS). torchvision has no CPU build on the registries this
project installs from, and a CUDA build beside a CPU torch fails on import (and then breaks
``transformers``), so featgs neither needs nor installs it: when the package cannot be
imported as a whole, :func:`segment_anything_module` imports the submodules featgs uses
(``build_sam``, ``modeling``, ``utils.amg``; none of them imports torchvision) without running
the package's ``__init__``. What torchvision did for featgs is done here in torch: resizing
(:func:`preprocess`) and box NMS (:mod:`featgs.teachers.sam_masks`).

Geometry (SAM's convention): an image is resized so its longest side is 1024 (aspect kept,
sides rounded to the nearest pixel), normalised with SAM's pixel mean and std, and padded
with zeros at the bottom and right to 1024 x 1024. The encoder's 64 x 64 embedding then
holds the image in its top-left ``ceil(h'/16) x ceil(w'/16)`` cells: that crop is the map
featgs caches; the rest saw only padding.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featgs.errors import FeatgsError
from featgs.teachers.checkpoint import load_strict, read_state_dict

IMAGE_SIZE = 1024  # SAM's input side
PATCH = 16  # encoder patch size: the embedding is 64 x 64
EMBED_SIZE = IMAGE_SIZE // PATCH
DIM = 256  # channels of the image embedding (SAM's prompt_embed_dim)
PIXEL_MEAN = (123.675, 116.28, 103.53)  # SAM's, on 0..255 pixels
PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class SamArch:
    """The image encoder's size; the prompt encoder and mask decoder are the same for all."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]


SAM_MODELS: dict[str, SamArch] = {
    "vit_b": SamArch(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArch(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArch(1280, 32, 16, (7, 15, 23, 31)),
    # Not a released model: a 2-block, 64-wide encoder (one global-attention block) that the
    # tests save with random weights and load as a user's checkpoint, at a fraction of the cost.
    "vit_tiny": SamArch(64, 2, 1, (1,)),
}


def segment_anything_module(name: str) -> ModuleType:
    """``segment_anything.<name>``, imported even where the package's ``__init__`` cannot be.

    Where the package imports (torchvision is there) this is a plain import. Otherwise the
    package is registered without executing its ``__init__`` (it only re-exports names),
    and the submodule is imported from it; the submodules featgs uses import torch only.
    """
    full = f"segment_anything.{name}"
    try:
        importlib.import_module("segment_anything")
    except ImportError as e:
        if e.name == "segment_anything":
            raise FeatgsError("the sam teacher needs the segment-anything package: "
                              "pip install segment-anything") from None
        spec = importlib.util.find_spec("segment_anything")
        sys.modules["segment_anything"] = importlib.util.module_from_spec(spec)
    return importlib.import_module(full)


def build_sam(model: str) -> nn.Module:
    """segment-anything's ``Sam`` of the named size, randomly initialised, in eval mode."""
    if model not in SAM_MODELS:
        raise FeatgsError(f"--sam-model: unknown SAM model {model!r}; expected one of {', '.join(SAM_MODELS)}")
    arch = SAM_MODELS[model]
    build = segment_anything_module("build_sam")
    return build._build_sam(
        encoder_embed_dim=arch.embed_dim,
        encoder_depth=arch.depth,
        encoder_num_heads=arch.num_heads,
        encoder_global_attn_indexes=list(arch.global_attn_indexes),
        checkpoint=None,
    )


def detect_model(state: dict[str, Tensor], path: Path) -> str:
    """The SAM size whose encoder width and depth match a checkpoint's tensors."""
    patch = state.get("image_encoder.patch_embed.proj.weight")
    if patch is None:
        raise FeatgsError(f"{path}: not a SAM checkpoint (no image_encoder.patch_embed.proj.weight)")
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks.")}
    width, depth = patch.shape[0], max(blocks, default=-1) + 1
    for name, arch in SAM_MODELS.items():
        if (arch.embed_dim, arch.depth) == (width, depth):
            return name
    raise FeatgsError(f"{path}: a SAM encoder of width {width} and depth {depth} is none of "
                      f"{', '.join(SAM_MODELS)}; pass --sam-model")


def load_sam(checkpoint: Path, model: Optional[str], device: torch.device) -> tuple[nn.Module, str]:
    """(Sam on ``device``, its size name) from a checkpoint; ``model`` None reads the size off it."""
    state = read_state_dict(checkpoint)
    name = model or detect_model(state, checkpoint)
    sam = build_sam(name)
    load_strict(sam, state, checkpoint, f"SAM {name}")
    return sam.to(device).eval(), name


def input_size(height: int, width: int) -> tuple[int, int]:
    """(h', w'): the image resized so its longest side is 1024 (SAM's ResizeLongestSide)."""
    scale = IMAGE_SIZE / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def embedding_size(height: int, width: int) -> tuple[int, int]:
    """(h, w): the cells of the 64 x 64 embedding that the image covers."""
    h, w = input_size(height, width)
    return math.ceil(h / PATCH), math.ceil(w / PATCH)


def preprocess(image: Tensor) -> Tensor:
    """[H, W, 3] float in 0..1 -> [1, 3, 1024, 1024], resized, normalised and padded as SAM does.

    Resizing is bilinear with antialiasing, as SAM's ``ResizeLongestSide.apply_image_torch``.
    """
    h, w = input_size(image.shape[0], image.shape[1])
    x = image.permute(2, 0, 1)[None].float() * 255.0
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(PIXEL_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD, device=x.device).view(1, 3, 1, 1)
    x = (x - mean) / std
    return F.pad(x, (0, IMAGE_SIZE - w, 0, IMAGE_SIZE - h))


@torch.no_grad()
def encode(sam: nn.Module, image: Tensor) -> Tensor:
    """[1, 256, 64, 64] float32: SAM's embedding of an [H, W, 3] image (0..1), padding cells included."""
    device = next(sam.parameters()).device
    return sam.image_encoder(preprocess(image.to(device))).float()


def crop_embedding(embedding: Tensor, height: int, width: int) -> Tensor:
    """[1, 256, 64, 64] -> [256, h, w]: the cells an image of ``height`` x ``width`` covers."""
    h, w = embedding_size(height, width)
    return embedding[0, :, :h, :w]


def pad_embedding(features: Tensor, height: int, width: int) -> Tensor:
    """[256, h, w] map of an image of ``height`` x ``width`` -> [1, 256, 64, 64] as SAM lays it out.

    A map at another resolution (a rendering) is first resized (bilinear) to the cells the
    image covers; the cells SAM would have filled from padding are set to zero.
    """
    h, w = embedding_size(height, width)
    x = features.float()[None]
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return F.pad(x, (0, EMBED_SIZE - w, 0, EMBED_SIZE - h))


def input_scale(height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
    """[2] factors taking (x, y) pixel coordinates of the image into SAM's input frame."""
    h, w = input_size(height, width)
    return torch.tensor([w / width, h / height], device=device)


@torch.no_grad()
def decode(sam: nn.Module, embedding: Tensor, points: Optional[tuple[Tensor, Tensor]], boxes: Optional[Tensor],
           multimask: bool) -> tuple[Tensor, Tensor]:
    """SAM's prompt encoder and mask decoder on a laid-out embedding.

    Args:
        embedding: [1, 256, 64, 64] (see :func:`pad_embedding`).
        points: coordinates [B, n, 2] in SAM's input frame and labels [B, n], or None.
        boxes: [B, 4] in SAM's input frame, or None.
        multimask: three masks per prompt instead of one.
    Returns:
        low-resolution mask logits [B, m, 256, 256] and predicted IoUs [B, m], m = 3 or 1.
    """
    sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
    return sam.mask_decoder(
        image_embeddings=embedding,
        image_pe=sam.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense,
        multimask_output=multimask,
    )
