"""Tiny random-weight SAM and CLIP checkpoints, written as a user's would be.

No weights can be downloaded here, so the tests save models of the real architectures with
random weights and load them through the same paths a user's checkpoint takes: SAM's
``vit_tiny`` (a 2-block encoder registered for tests) as a .pth state dict, and a CLIP ViT
from an open_clip JSON config (width 64, 2 layers, patch 16, 64 px) as .safetensors, with a
BPE merges file of a few merges beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from featgs.teachers import clip_model, sam_model

# A few CLIP-style merges: whole words for the prompts the tests embed, the rest byte-level.
MERGES = ["p h", "ph o", "t o</w>", "pho to</w>", "o f</w>", "t h", "th e</w>", "m u", "mu g</w>", "c u", "cu p</w>",
          "t a", "ta b", "tab l", "tabl e</w>", "r e", "e n", "i n", "o n", "a n"]
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 512 + len(MERGES) + 2, "width": 64, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class Checkpoints:
    sam: Path  # vit_tiny state dict (.pth)
    clip_config: Path  # open_clip JSON model config
    clip: Path  # its weights (.safetensors), merges.txt beside it


def write_checkpoints(folder: Path, seed: int = 0) -> Checkpoints:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    sam = sam_model.build_sam("vit_tiny")
    torch.save(sam.state_dict(), folder / "sam_tiny.pth")
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    clip = clip_model.random_clip(clip_model.clip_arch(str(config)), seed=seed)
    save_file(clip.state_dict(), str(folder / "clip_tiny.safetensors"))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return Checkpoints(sam=folder / "sam_tiny.pth", clip_config=config, clip=folder / "clip_tiny.safetensors")
