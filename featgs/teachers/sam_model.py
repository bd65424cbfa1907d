"""Segment Anything's model from a local checkpoint, and where its image embedding lies.

The released sizes (vit_b, vit_l, vit_h) are segment-anything's ``sam_model_registry``
builders, called without a checkpoint: the weights are read by featgs's own reader
(:mod:`featgs.teachers.checkpoint`: tensors only, onto the CPU) and loaded strictly. The
registry's builder would ``torch.load`` the file itself, unpickling whatever it holds and
without ``map_location``, so a checkpoint saved from a GPU would not load on a CPU.

Geometry (SAM's convention, ``ResizeLongestSide``): an image is resized so its longest side
is 1024 (aspect kept, sides rounded to the nearest pixel); ``Sam.preprocess`` normalises it
with SAM's pixel mean and std and pads it with zeros at the bottom and right to 1024 x 1024.
The encoder's 64 x 64 embedding then holds the image in its top-left
``ceil(h'/16) x ceil(w'/16)`` cells: that crop is the map featgs caches; the rest saw only
padding.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from segment_anything import SamPredictor, sam_model_registry
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide
from torch import Tensor, nn

from featgs.errors import FeatgsError
from featgs.teachers.checkpoint import load_strict, read_state_dict

IMAGE_SIZE = 1024  # SAM's input side, in pixels
PATCH = 16  # encoder patch size: the embedding is 64 x 64
EMBED_SIZE = IMAGE_SIZE // PATCH
DIM = 256  # channels of the image embedding (SAM's prompt_embed_dim)

# (encoder width, depth) of each size: how a checkpoint's tensor shapes tell them apart.
SAM_MODELS: dict[str, tuple[int, int]] = {
    "vit_b": (768, 12),
    "vit_l": (1024, 24),
    "vit_h": (1280, 32),
    # Not a released model (see build_tiny_sam): what the tests save with random weights.
    "vit_tiny": (64, 2),
}


def build_tiny_sam() -> Sam:
    """SAM with a 2-block, 64-wide encoder (one global-attention block), randomly initialised.

    Not a released model: the tests save it with random weights and load it as a user's
    checkpoint, through the same code as the released sizes at a fraction of their cost. The
    prompt encoder, mask decoder and pixel normalisation are the released ones (as
    segment-anything's ``_build_sam`` makes them).
    """
    return Sam(
        image_encoder=ImageEncoderViT(
            img_size=IMAGE_SIZE, patch_size=PATCH, embed_dim=64, depth=2, num_heads=1, mlp_ratio=4,
            out_chans=DIM, qkv_bias=True, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
            use_rel_pos=True, window_size=14, global_attn_indexes=(1,),
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=DIM, image_embedding_size=(EMBED_SIZE, EMBED_SIZE),
            input_image_size=(IMAGE_SIZE, IMAGE_SIZE), mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=DIM, mlp_dim=2048, num_heads=8),
            transformer_dim=DIM, iou_head_depth=3, iou_head_hidden_dim=256,
        ),
    ).eval()


def build_sam(model: str) -> Sam:
    """segment-anything's ``Sam`` of the named size, randomly initialised, in eval mode."""
    if model not in SAM_MODELS:
        raise FeatgsError(f"--sam-model: unknown SAM model {model!r}; expected one of {', '.join(SAM_MODELS)}")
    if model == "vit_tiny":
        return build_tiny_sam()
    return sam_model_registry[model](checkpoint=None)


def detect_model(state: dict[str, Tensor], path: Path) -> str:
    """The SAM size whose encoder width and depth match a checkpoint's tensors."""
    patch = state.get("image_encoder.patch_embed.proj.weight")
    if patch is None:
        raise FeatgsError(f"{path}: not a SAM checkpoint (no image_encoder.patch_embed.proj.weight)")
    blocks = {int(k.split(".")[2]) for k in state if k.startswith("image_encoder.blocks.")}
    width, depth = patch.shape[0], max(blocks, default=-1) + 1
    for name, shape in SAM_MODELS.items():
        if shape == (width, depth):
            return name
    raise FeatgsError(f"{path}: a SAM encoder of width {width} and depth {depth} is none of "
                      f"{', '.join(SAM_MODELS)}; pass --sam-model")


def load_sam(checkpoint: Path, model: Optional[str], device: torch.device) -> tuple[Sam, str]:
    """(Sam on ``device``, its size name) from a checkpoint; ``model`` None reads the size off it."""
    state = read_state_dict(checkpoint)
    name = model or detect_model(state, checkpoint)
    sam = build_sam(name)
    load_strict(sam, state, checkpoint, f"SAM {name}")
    return sam.to(device).eval(), name


def embedding_size(height: int, width: int) -> tuple[int, int]:
    """(h, w): the cells of the 64 x 64 embedding that an image of ``height`` x ``width`` covers."""
    h, w = ResizeLongestSide.get_preprocess_shape(height, width, IMAGE_SIZE)
    return math.ceil(h / PATCH), math.ceil(w / PATCH)


def resize(image: Tensor) -> Tensor:
    """[H, W, 3] float in 0..1 -> [1, 3, h', w'] on 0..255, longest side 1024: SAM's
    ``ResizeLongestSide`` on a tensor (bilinear, antialiased).

    ``ResizeLongestSide.apply_image_torch`` would do this resize, but in segment-anything 1.0 it
    reads the target size off the tensor's batch and channel sizes (its issue #218), so the
    size comes from its ``get_preprocess_shape`` and the interpolation is the one it means.
    """
    size = ResizeLongestSide.get_preprocess_shape(image.shape[0], image.shape[1], IMAGE_SIZE)
    x = image.permute(2, 0, 1)[None].float() * 255.0
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


@torch.no_grad()
def encode(sam: Sam, image: Tensor) -> Tensor:
    """[1, 256, 64, 64] float32: SAM's embedding of an [H, W, 3] image (0..1), padding cells included.

    Through ``SamPredictor.set_torch_image``: ``Sam.preprocess`` (normalise, pad) and the encoder.
    """
    predictor = SamPredictor(sam)
    predictor.set_torch_image(resize(image.to(sam.device)), tuple(image.shape[:2]))
    return predictor.get_image_embedding().float()


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
