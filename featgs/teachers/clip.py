"""Teacher ``clip``: dense, language-aligned CLIP features (MaskCLIP), optionally sharpened by SAM.

An image is resized so its longest side is ``size`` pixels, each side rounded to whole
patches, and normalised with the model's mean and std. An image that fits the model's native
input in both directions is encoded in one pass (positional embeddings resized to its grid);
a larger one by a sliding window of the native size moved by half a window, each patch's
feature averaged over the windows that saw it. The map is one feature per patch:
[E, h, w], (h, w) the patch grid of the resized image.

``sharpen="sam"`` pools the features inside SAM's automatic masks, LangSplat-style: every
patch covered by a mask takes the mean feature of the smallest mask that covers it, so an
object's features become one crisp vector up to its boundary.

Texts are embedded with a few prompt templates through the same model's text tower; the
normalised template embeddings are averaged and normalised again.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from featgs.errors import FeatgsError
from featgs.teachers import clip_model
from featgs.teachers.base import Teacher, resolve_device
from featgs.teachers.checkpoint import checked_file, file_sha256
from featgs.teachers.labels import phrase
from featgs.teachers.sam import SamTeacher
from featgs.teachers.sam_masks import MaskConfig, automatic_masks
from featgs.teachers.sam_model import encode as encode_sam

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
    """An open_clip ViT from a local checkpoint.

    Args:
        model: architecture: a name of :data:`featgs.teachers.clip_model.CLIP_MODELS` (e.g.
            "ViT-B-16", "ViT-B-16-quickgelu" for OpenAI's weights) or an open_clip JSON config.
        checkpoint: the open_clip state dict (.pt/.bin/.safetensors).
        size: longest image side, in pixels, that the model sees.
        tokenizer: the BPE merges file for texts (default: found beside the checkpoint).
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
        self.arch = clip_model.clip_arch(model)
        self.checkpoint = checked_file(checkpoint, "CLIP checkpoint")
        if size < self.arch.patch_size:
            raise FeatgsError(f"--clip-size must be at least the patch size {self.arch.patch_size}, got {size}")
        if sharpen not in (None, *SHARPEN):
            raise FeatgsError(f"--clip-sharpen: unknown method {sharpen!r}; expected one of {', '.join(SHARPEN)}")
        if sharpen == "sam" and sam_checkpoint is None:
            raise FeatgsError("--clip-sharpen sam needs --sam-checkpoint PATH")
        if sharpen_points < 1:
            raise FeatgsError(f"--clip-sharpen-points must be >= 1, got {sharpen_points}")
        self.dim = self.arch.embed_dim
        self.size = int(size)
        self.tokenizer_path = tokenizer
        self.device = resolve_device(device)
        self.sharpener = SamTeacher(sam_checkpoint, sam_model, self.device) if sharpen == "sam" else None
        self.masks = MaskConfig(points_per_side=sharpen_points)
        self._model: Optional[clip_model.ClipModel] = None
        self._tokenizer = None

    @functools.cached_property
    def model_id(self) -> str:
        """e.g. "clip-ViT-B-16@sha256:..." (architecture name and the checkpoint's hash)."""
        return f"clip-{self.arch.name}@sha256:{file_sha256(self.checkpoint)[:16]}"

    def cache_key(self) -> str:
        key = f"{self.model_id} size:{self.size}"
        if self.sharpener is None:
            return key
        return f"{key} sharpen:{self.sharpener.model_id} points:{self.masks.points_per_side}"

    @property
    def model(self) -> clip_model.ClipModel:
        """The model, loaded on first use."""
        return self._load()

    def _load(self) -> clip_model.ClipModel:
        if self._model is None:
            self._model = clip_model.load_clip(self.checkpoint, self.arch, self.device)
        return self._model

    def prepare(self) -> None:
        self._load()
        if self.sharpener is not None:
            self.sharpener.prepare()

    def resolution_for(self, width: int, height: int) -> tuple[int, int]:
        scale, p = self.size / max(width, height), self.arch.patch_size
        return max(1, round(height * scale / p)), max(1, round(width * scale / p))

    @torch.no_grad()
    def encode_view(self, image: Tensor, labels: Optional[Tensor] = None) -> Tensor:
        """[E, h, w] float32 on the teacher's device, (h, w) = ``resolution_for(W, H)``."""
        H, W = image.shape[:2]
        gh, gw = self.resolution_for(W, H)
        features = self._dense(self._normalised(image.to(self.device), gh, gw))
        if self.sharpener is not None:
            embedding = encode_sam(self.sharpener.sam, image)
            masks, _ = automatic_masks(self.sharpener.sam, embedding, (H, W), (gh, gw), self.masks)
            features = pool_in_masks(features, masks.to(features.device))
        return features

    def _normalised(self, image: Tensor, gh: int, gw: int) -> Tensor:
        """[1, 3, gh*p, gw*p]: resized (bicubic, antialiased) and normalised."""
        p = self.arch.patch_size
        x = image.permute(2, 0, 1)[None].float()
        x = F.interpolate(x, size=(gh * p, gw * p), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
        mean = torch.tensor(self.arch.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.arch.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _dense(self, x: Tensor) -> Tensor:
        """[1, 3, gh*p, gw*p] -> [E, gh, gw], by sliding windows where the image exceeds the native size."""
        p, n = self.arch.patch_size, self.arch.grid
        gh, gw = x.shape[-2] // p, x.shape[-1] // p
        wh, ww = min(n, gh), min(n, gw)
        corners = [(r, c) for r in window_starts(gh, wh) for c in window_starts(gw, ww)]
        total = x.new_zeros(self.dim, gh, gw)
        count = x.new_zeros(1, gh, gw)
        for start in range(0, len(corners), WINDOW_BATCH):
            batch = corners[start:start + WINDOW_BATCH]
            crops = torch.cat([x[..., r * p:(r + wh) * p, c * p:(c + ww) * p] for r, c in batch])
            for (r, c), f in zip(batch, self.model.dense_features(crops).float()):
                total[:, r:r + wh, c:c + ww] += f
                count[:, r:r + wh, c:c + ww] += 1
        return total / count

    def encode_text(self, texts: list[str]) -> Tensor:
        """[n, E] float32 on the teacher's device, unit-norm rows: the mean over the prompt
        templates of the normalised text embeddings, normalised."""
        if isinstance(texts, str) or not all(isinstance(t, str) and t.strip() for t in texts):
            raise FeatgsError(f"text queries must be a list of non-empty strings, got {texts!r}")
        if self._tokenizer is None:
            from featgs.teachers.clip_tokenizer import ClipTokenizer, find_merges

            merges = find_merges(self.tokenizer_path, self.checkpoint)
            self._tokenizer = ClipTokenizer(merges, self.arch.vocab_size, self.arch.context_length)
        prompts = [template.format(phrase(t)) for t in texts for template in TEMPLATES]
        with torch.no_grad():
            embedded = self.model.encode_text(self._tokenizer(prompts).to(self.device)).float()
        per_template = F.normalize(embedded, dim=-1).view(len(texts), len(TEMPLATES), -1)
        return F.normalize(per_template.mean(1), dim=-1)
