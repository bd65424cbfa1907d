"""Tiny random-weight SAM and CLIP checkpoints, written as a user's would be.

No weights can be downloaded here, so the tests save models of the real architectures with
random weights and load them through the same paths a user's checkpoint takes: SAM's
``vit_tiny`` (a 2-block encoder registered for tests) as a .pth state dict, and a CLIP ViT
of open_clip's (width 64, 2 layers, patch 16, 64 px; text tower of open_clip's bundled BPE
vocabulary) as an open_clip JSON model config and its .safetensors weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
from safetensors.torch import save_file

from featgs.teachers import sam_model

# An open_clip model config (the format of open_clip's model_configs/*.json). The text tower
# takes open_clip's bundled BPE vocabulary (49408 tokens: a 49408 x 64 embedding, 12 MB).
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class Checkpoints:
    sam: Path  # vit_tiny state dict (.pth)
    clip_config: Path  # open_clip JSON model config (tiny-clip.json: the model is named "tiny-clip")
    clip: Path  # its weights (.safetensors), open_clip's random initialisation


def write_checkpoints(folder: Path, seed: int = 0) -> Checkpoints:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    sam = sam_model.build_sam("vit_tiny")
    torch.save(sam.state_dict(), folder / "sam_tiny.pth")
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    save_file(open_clip.create_model("tiny-clip").state_dict(), str(folder / "clip_tiny.safetensors"))
    return Checkpoints(sam=folder / "sam_tiny.pth", clip_config=config, clip=folder / "clip_tiny.safetensors")
