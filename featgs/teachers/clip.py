"""Teacher ``clip``: dense, language-aligned CLIP features (MaskCLIP), optionally sharpened by SAM.

The model is open_clip's (:mod:`featgs.teachers.clip_model`). An image is resized so its
longest side is ``size`` pixels, each side rounded to whole cells (a ViT's patches, a
ConvNeXt's 32-pixel strides), and normalised with the mean and std of the model's
preprocessing config. An image that fits the model's native input in both directions is
encoded in one pass (a ViT's positional embeddings resized to its grid); a larger one by a
sliding window of the native size moved by half a window, each cell's feature averaged over
the windows that saw it. The map is one feature per cell: [E, h, w], (h, w) the cell grid of
the resized image.

``sharpen="sam"`` pools the features inside SAM's automatic masks (segment-anything's
``SamAutomaticMaskGenerator``), LangSplat-style: every cell covered by a mask takes the mean
feature of the smallest mask that covers it, so an object's features become one crisp vector
up to its boundary.

Texts are embedded with a few prompt templates through the same model's text tower; the
normalised template embeddings are averaged and normalised again.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable, Optional

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featgs.errors import FeatgsError
from featgs.teachers import clip_model
from featgs.teachers.base import Teacher, resolve_device
from featgs.teachers.checkpoint import checked_file, file_sha256
from featgs.teachers.labels import phrase
from featgs.teachers.sam import SamTeacher

TEMPLATES = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a rendering of a {}.",
    "a close-up photo of a {}.",
    "there is a {} in the scene.",
)
SHARPEN = ("sam",)
WINDOW_BATCH = 16  # sliding windows encoded at once


def window_starts(length: int, window: int) -> list[int]:
    """Starts of windows of ``window`` cells covering ``length`` cells, half a window apart."""
    if length <= window:
        return [0]
    stride = max(1, window // 2)
    return [*range(0, length - window, stride), length - window]


def pool_in_masks(features: Tensor, masks: Tensor) -> Tensor:
    """[D, h, w] features with each masked cell set to the mean over the smallest mask covering it.

    Args:
        features: [D, h, w].
        masks: [m, h, w] bool; cells in no mask keep their feature.
    """
    if not len(masks):
        return features
    flat = features.flatten(1)
    m = masks.flatten(1)
    area = m.sum(1)
    m, area = m[area > 0], area[area > 0]
    m = m[torch.argsort(area)]  # smallest first: argmax below finds the smallest covering mask
    means = (flat @ m.T.to(flat.dtype)) / m.sum(1).to(flat.dtype)
    covered = m.any(0)
    out = flat.clone()
    out[:, covered] = means[:, m.int().argmax(0)[covered]]
    return out.view_as(features)


class ClipTeacher(Teacher):
    """An open_clip model from a local checkpoint.

    Args:
        model: the architecture: an open_clip model name (e.g. "ViT-B-16", "ViT-B-16-quickgelu"
            for OpenAI's weights, "convnext_base_w"), the path of an open_clip JSON model config,
            or a folder with an open_clip_config.json (see :func:`featgs.teachers.clip_model.resolve`).
        checkpoint: the open_clip state dict (.pt/.pth/.bin/.safetensors).
        size: longest image side, in pixels, that the model sees.
        tokenizer: for text: a local Hugging Face tokenizer folder or a BPE vocabulary .txt.gz
            (default: open_clip's tokenizer for the model).
        sharpen: "sam" to pool features inside SAM's automatic masks (needs ``sam_checkpoint``).
        sharpen_points: SAM's automatic masks click a grid of sharpen_points^2 points (each
            click is a mask-decoder pass: cheap on a GPU, about a second each on a CPU).
        sam_checkpoint, sam_model: the SAM for sharpening.
        device: where the models run ("auto": the GPU if there is one).
    """

    name = "clip"
    language_aligned = True

    def __init__(self, model: Optional[str], checkpoint: str | Path, size: int = 448,
                 tokenizer: Optional[str | Path] = None, sharpen: Optional[str] = None, sharpen_points: int = 16,
                 sam_checkpoint: Optional[str | Path] = None, sam_model: Optional[str] = None,
                 device: str | torch.device = "auto"):
        if model is None or checkpoint is None:
            raise FeatgsError("the clip teacher needs --clip-model NAME and --clip-checkpoint PATH")
        self.spec = clip_model.resolve(model)
        self.checkpoint = checked_file(checkpoint, "CLIP checkpoint")
        if size < 1:
            raise FeatgsError(f"--clip-size must be >= 1, got {size}")
        if sharpen not in (None, *SHARPEN):
            raise FeatgsError(f"--clip-sharpen: unknown method {sharpen!r}; expected one of {', '.join(SHARPEN)}")
        if sharpen == "sam" and sam_checkpoint is None:
            raise FeatgsError("--clip-sharpen sam needs --sam-checkpoint PATH")
        if sharpen_points < 1:
            raise FeatgsError(f"--clip-sharpen-points must be >= 1, got {sharpen_points}")
        self.dim = self.spec.embed_dim
        self.size = int(size)
        self.tokenizer_path = None if tokenizer is None else Path(tokenizer)
        self.device = resolve_device(device)
        self.sharpener = SamTeacher(sam_checkpoint, sam_model, self.device) if sharpen == "sam" else None
        self.sharpen_points = int(sharpen_points)
        self._model: Optional[nn.Module] = None
        self._tokenizer: Optional[Callable[[list[str]], Tensor]] = None

    @functools.cached_property
    def model_id(self) -> str:
        """e.g. "clip-ViT-B-16@sha256:..." (architecture name and the checkpoint's hash)."""
        return f"clip-{self.spec.name}@sha256:{file_sha256(self.checkpoint)[:16]}"

    def cache_key(self) -> str:
        key = f"{self.model_id} size:{self.size}"
        if self.sharpener is None:
            return key
        return f"{key} sharpen:{self.sharpener.model_id} automatic-masks:{self.sharpen_points}"

    @property
    def model(self) -> nn.Module:
        """open_clip's model, loaded on first use."""
        if self._model is None:
            self._model = clip_model.load(self.spec, self.checkpoint, self.device)
        return self._model

    @functools.cached_property
    def cells(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """((sh, sw), (nh, nw)): pixels per feature cell, cells of the model's native input (loads
        the model; a one-line error if its vision tower has no dense path)."""
        cell, grid = clip_model.dense_geometry(self.model.visual, self.spec.name)
        if self.size < max(cell):
            raise FeatgsError(f"--clip-size must be at least the model's cell size, {max(cell)} px, got {self.size}")
        return cell, grid

    def prepare(self) -> None:
        self.cells  # loads the model and checks that its vision tower has a dense path
        if self.sharpener is not None:
            self.sharpener.prepare()

    def resolution_for(self, width: int, height: int) -> tuple[int, int]:
        (sh, sw), _ = self.cells
        scale = self.size / max(width, height)
        return max(1, round(height * scale / sh)), max(1, round(width * scale / sw))

    @torch.no_grad()
    def encode_view(self, image: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """[E, h, w] float32 on the teacher's device, (h, w) = ``resolution_for(W, H)``."""
        H, W = image.shape[:2]
        gh, gw = self.resolution_for(W, H)
        features = self._dense(self._normalised(image.to(self.device), gh, gw))
        if self.sharpener is not None:
            masks = self.sharpener.automatic_masks(image, (gh, gw), self.sharpen_points)
            features = pool_in_masks(features, masks.to(features.device))
        return features

    def _normalised(self, image: Tensor, gh: int, gw: int) -> Tensor:
        """[1, 3, gh*sh, gw*sw]: resized (bicubic, antialiased) and normalised with the mean and
        std of the model's preprocessing config."""
        (sh, sw), _ = self.cells
        x = image.permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(gh * sh, gw * sw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        preprocess = open_clip.get_model_preprocess_cfg(self.model)
        mean = torch.tensor(preprocess["mean"], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(preprocess["std"], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return (x - mean) / std

    def _dense(self, x: Tensor) -> Tensor:
        """[1, 3, gh*sh, gw*sw] -> [E, gh, gw], by sliding windows where the image exceeds the native size."""
        visual = self.model.visual
        (sh, sw), (nh, nw) = self.cells
        gh, gw = x.shape[-2] // sh, x.shape[-1] // sw
        wh, ww = min(nh, gh), min(nw, gw)
        corners = [(r, c) for r in window_starts(gh, wh) for c in window_starts(gw, ww)]
        total = x.new_zeros(self.dim, gh, gw)
        count = x.new_zeros(1, gh, gw)
        for start in range(0, len(corners), WINDOW_BATCH):
            batch = corners[start:start + WINDOW_BATCH]
            crops = torch.cat([x[..., r * sh:(r + wh) * sh, c * sw:(c + ww) * sw] for r, c in batch])
            for (r, c), f in zip(batch, clip_model.dense_features(visual, crops).float()):
                total[:, r:r + wh, c:c + ww] += f
                count[:, r:r + wh, c:c + ww] += 1
        return total / count

    def encode_text(self, texts: list[str]) -> Tensor:
        """[n, E] float32 on the teacher's device, unit-norm rows: the mean over the prompt
        templates of the normalised text embeddings, normalised."""
        if isinstance(texts, str) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise FeatgsError(f"text queries must be a list of non-empty strings, got {texts!r}")
        if self._tokenizer is None:
            self._tokenizer = clip_model.tokenizer(self.spec, self.model, self.tokenizer_path)
        prompts = [template.format(phrase(t)) for t in texts for template in TEMPLATES]
        with torch.no_grad():
            embedded = self.model.encode_text(self._tokenizer(prompts).to(self.device)).float()
        per_template = F.normalize(embedded, dim=-1).view(len(texts), len(TEMPLATES), -1)
        return F.normalize(per_template.mean(1), dim=-1)
