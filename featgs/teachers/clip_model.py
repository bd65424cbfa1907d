"""A CLIP ViT with open_clip's architecture and parameter names, and its dense (MaskCLIP) path.

featgs builds the model itself instead of importing ``open_clip``: every open_clip module
imports torchvision, which has no CPU build on the registries this project installs from
(and whose CUDA build breaks ``transformers`` beside a CPU torch). The modules below have the
names and shapes of open_clip's ``CLIP`` (``visual.conv1``, ``visual.transformer.resblocks.0
.attn.in_proj_weight``, ``token_embedding``, ``text_projection``, ...), so an open_clip
checkpoint (its state dict, .bin/.pt/.safetensors) loads with every key and shape checked.

Architectures are open_clip model configs: the standard ViT names are built in
(:data:`CLIP_MODELS`), and any open_clip JSON config file (the format of open_clip's
``model_configs/*.json``) can be given by path, which is also how the tests build a tiny
model. Configs that need other code (timm or Hugging Face towers, ResNets, attentional
pooling, custom attention blocks) are refused by name.

Dense features follow MaskCLIP: in the last transformer block, each patch token takes only
the value path of the attention, ``out_proj(v_proj(ln_1(x)))``, with no query-key mixing, no
residual and no MLP, then ``ln_post`` and ``proj`` as the pooled token would; the result
lives in the same space as the text embeddings.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from featgs.errors import FeatgsError
from featgs.teachers.checkpoint import load_strict, read_state_dict

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _vit(embed_dim: int, image: int, layers: int, width: int, patch: int, text_width: int, text_heads: int,
         text_layers: int, head_width: int = 64, mlp_ratio: float = 4.0) -> dict[str, Any]:
    vision = {"image_size": image, "layers": layers, "width": width, "patch_size": patch,
              "head_width": head_width, "mlp_ratio": mlp_ratio}
    text = {"context_length": 77, "vocab_size": 49408, "width": text_width, "heads": text_heads, "layers": text_layers}
    return {"embed_dim": embed_dim, "vision_cfg": vision, "text_cfg": text}


# open_clip's configs of the standard CLIP ViTs; "<name>-quickgelu" variants are derived.
CLIP_MODELS: dict[str, dict[str, Any]] = {
    "ViT-B-32": _vit(512, 224, 12, 768, 32, 512, 8, 12),
    "ViT-B-16": _vit(512, 224, 12, 768, 16, 512, 8, 12),
    "ViT-L-14": _vit(768, 224, 24, 1024, 14, 768, 12, 12),
    "ViT-L-14-336": _vit(768, 336, 24, 1024, 14, 768, 12, 12),
    "ViT-H-14": _vit(1024, 224, 32, 1280, 14, 1024, 16, 24, head_width=80),
    "ViT-g-14": _vit(1024, 224, 40, 1408, 14, 1024, 16, 24, head_width=88, mlp_ratio=4.3637),
    "ViT-bigG-14": _vit(1280, 224, 48, 1664, 14, 1280, 20, 32, head_width=104, mlp_ratio=4.9231),
}

# Config fields that do not change the inference-time architecture, or that it implements.
_TOP_FIELDS = {"embed_dim", "quick_gelu", "vision_cfg", "text_cfg", "init_logit_bias", "init_logit_scale",
               "custom_text", "nonscalar_logit_scale", "preprocess_cfg"}
_VISION_FIELDS = {"image_size", "layers", "width", "head_width", "mlp_ratio", "patch_size", "ls_init_value",
                  "patch_dropout", "no_ln_pre", "pos_embed_type", "final_ln_after_pool", "pool_type",
                  "output_tokens"}
_TEXT_FIELDS = {"context_length", "vocab_size", "width", "heads", "layers", "mlp_ratio", "ls_init_value",
                "pad_id", "eos_id", "no_causal_mask", "pool_type", "proj_bias", "proj_type", "output_tokens",
                "final_ln_after_pool", "embed_cls"}


@dataclass(frozen=True)
class ClipArch:
    """The parts of an open_clip config that fix the architecture featgs builds.

    Attributes:
        name: registry name or config file stem.
        embed_dim: E, the shared image-text embedding dimension (the teacher's D).
        image_size, patch_size: the native input side and the patch side, in pixels.
        mean, std: per-channel input normalisation on 0..1 pixels.
    """

    name: str
    embed_dim: int
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp_ratio: float
    vision_layer_scale: bool
    ln_pre: bool
    context_length: int
    vocab_size: int
    text_width: int
    text_heads: int
    text_layers: int
    text_mlp_ratio: float
    text_layer_scale: bool
    causal: bool
    text_pool: str
    eos_id: int
    text_proj: str  # "parameter", "linear" (with bias) or "none"
    quick_gelu: bool
    logit_bias: bool
    logit_scale_shape: tuple[int, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def grid(self) -> int:
        """Patches per side at the native input size."""
        return self.image_size // self.patch_size


def clip_arch(model: str) -> ClipArch:
    """The architecture named ``model``: a built-in name, "<name>-quickgelu", or the path of
    an open_clip JSON model config."""
    if model.endswith(".json") or Path(model).is_file():
        path = Path(model)
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise FeatgsError(f"{path}: unreadable open_clip model config ({e.__class__.__name__})") from None
        return _arch(path.stem, config, str(path))
    base, quick = (model[: -len("-quickgelu")], True) if model.endswith("-quickgelu") else (model, False)
    if base not in CLIP_MODELS:
        raise FeatgsError(f"--clip-model: unknown CLIP model {model!r}; expected one of "
                          f"{', '.join(CLIP_MODELS)} (optionally -quickgelu) or an open_clip JSON config path")
    return _arch(model, {**CLIP_MODELS[base], "quick_gelu": quick}, model)


def _arch(name: str, config: Any, source: str) -> ClipArch:
    def fields(d: Any, allowed: set, where: str) -> dict:
        if not isinstance(d, dict):
            raise FeatgsError(f"{source}: {where} must be a JSON object")
        extra = sorted(k for k, v in d.items() if k not in allowed and v not in (None, False, 0, "", {}, []))
        if extra:
            raise FeatgsError(f"{source}: {where} field {extra[0]!r} is not supported by featgs's CLIP "
                              f"(a plain ViT with a transformer text tower)")
        return d

    top = fields(config, _TOP_FIELDS, "config")
    vision = fields(top.get("vision_cfg"), _VISION_FIELDS, "vision_cfg")
    text = fields(top.get("text_cfg"), _TEXT_FIELDS, "text_cfg")
    if text.get("embed_cls"):
        raise FeatgsError(f"{source}: text_cfg field 'embed_cls' (CoCa) is not supported by featgs's CLIP")
    size, patch, layers = vision.get("image_size", 224), vision.get("patch_size", 16), vision.get("layers", 12)
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise FeatgsError(f"{source}: only square vision_cfg.image_size is supported, got {size}")
        size = size[0]
    if not isinstance(layers, int):
        raise FeatgsError(f"{source}: vision_cfg.layers {layers!r} is a ResNet; featgs's CLIP needs a ViT")
    try:
        width = int(vision.get("width", 768))
        pool = text.get("pool_type", "argmax")
        proj_type = text.get("proj_type", "linear")
        if pool not in ("argmax", "first", "last", "eos") or proj_type not in ("linear", "none"):
            raise ValueError
        pre = top.get("preprocess_cfg") or {}
        return ClipArch(
            name=name,
            embed_dim=int(top["embed_dim"]),
            image_size=int(size),
            patch_size=int(patch),
            vision_width=width,
            vision_layers=layers,
            vision_heads=width // int(vision.get("head_width", 64)),
            vision_mlp_ratio=float(vision.get("mlp_ratio", 4.0)),
            vision_layer_scale=vision.get("ls_init_value") is not None,
            ln_pre=not vision.get("no_ln_pre", False),
            context_length=int(text.get("context_length", 77)),
            vocab_size=int(text.get("vocab_size", 49408)),
            text_width=int(text.get("width", 512)),
            text_heads=int(text.get("heads", 8)),
            text_layers=int(text.get("layers", 12)),
            text_mlp_ratio=float(text.get("mlp_ratio", 4.0)),
            text_layer_scale=text.get("ls_init_value") is not None,
            causal=not text.get("no_causal_mask", False),
            text_pool=pool,
            eos_id=int(text.get("eos_id", 2)),
            text_proj="none" if proj_type == "none" else ("linear" if text.get("proj_bias") else "parameter"),
            quick_gelu=bool(top.get("quick_gelu", False)),
            logit_bias=top.get("init_logit_bias") is not None,
            logit_scale_shape=(1,) if top.get("nonscalar_logit_scale") else (),
            mean=tuple(float(x) for x in pre.get("mean", OPENAI_MEAN)),
            std=tuple(float(x) for x in pre.get("std", OPENAI_STD)),
        )
    except (KeyError, TypeError, ValueError):
        raise FeatgsError(f"{source}: not an open_clip model config (needs embed_dim, vision_cfg, text_cfg "
                          f"with a supported pool_type and proj_type)") from None


class _QuickGELU(nn.Module):
    """The sigmoid GELU approximation that OpenAI's CLIP weights were trained with."""

    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class _LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class _Block(nn.Module):
    """Pre-norm residual attention block (open_clip's ``ResidualAttentionBlock``)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, layer_scale: bool, quick_gelu: bool):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ls_1 = _LayerScale(width) if layer_scale else nn.Identity()
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([
            ("c_fc", nn.Linear(width, hidden)),
            ("gelu", _QuickGELU() if quick_gelu else nn.GELU()),
            ("c_proj", nn.Linear(hidden, width)),
        ]))
        self.ls_2 = _LayerScale(width) if layer_scale else nn.Identity()

    def forward(self, x: Tensor, attn_mask: Optional[Tensor] = None) -> Tensor:
        y = self.ln_1(x)
        x = x + self.ls_1(self.attn(y, y, y, need_weights=False, attn_mask=attn_mask)[0])
        return x + self.ls_2(self.mlp(self.ln_2(x)))

    def value_path(self, x: Tensor) -> Tensor:
        """MaskCLIP: the attention branch with every token attending only to itself."""
        width = x.shape[-1]
        y = self.ln_1(x)
        v = F.linear(y, self.attn.in_proj_weight[2 * width:], self.attn.in_proj_bias[2 * width:])
        return self.ls_1(self.attn.out_proj(v))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float, layer_scale: bool, quick_gelu: bool):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [_Block(width, heads, mlp_ratio, layer_scale, quick_gelu) for _ in range(layers)])


class _Visual(nn.Module):
    def __init__(self, a: ClipArch):
        super().__init__()
        w = a.vision_width
        self.conv1 = nn.Conv2d(3, w, kernel_size=a.patch_size, stride=a.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(w))
        self.positional_embedding = nn.Parameter(torch.zeros(a.grid * a.grid + 1, w))
        self.ln_pre = nn.LayerNorm(w) if a.ln_pre else nn.Identity()
        self.transformer = _Transformer(w, a.vision_layers, a.vision_heads, a.vision_mlp_ratio,
                                        a.vision_layer_scale, a.quick_gelu)
        self.ln_post = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.zeros(w, a.embed_dim))


class ClipModel(nn.Module):
    """open_clip's ``CLIP`` for a ViT with a transformer text tower (same state-dict keys).

    Use :func:`random_clip` or :func:`load_clip` to make one; :meth:`dense_features` and
    :meth:`encode_text` are what the teacher needs.
    """

    def __init__(self, arch: ClipArch):
        super().__init__()
        a = self.arch = arch
        self.visual = _Visual(a)
        self.transformer = _Transformer(a.text_width, a.text_layers, a.text_heads, a.text_mlp_ratio,
                                        a.text_layer_scale, a.quick_gelu)
        self.token_embedding = nn.Embedding(a.vocab_size, a.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(a.context_length, a.text_width))
        self.ln_final = nn.LayerNorm(a.text_width)
        if a.text_proj == "linear":
            self.text_projection = nn.Linear(a.text_width, a.embed_dim)
        elif a.text_proj == "parameter":
            self.text_projection = nn.Parameter(torch.zeros(a.text_width, a.embed_dim))
        else:
            self.text_projection = None
        self.logit_scale = nn.Parameter(torch.full(a.logit_scale_shape, math.log(1 / 0.07)))
        if a.logit_bias:
            self.logit_bias = nn.Parameter(torch.zeros(a.logit_scale_shape))
        mask = torch.full((a.context_length, a.context_length), float("-inf")).triu_(1) if a.causal else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def dense_features(self, images: Tensor) -> Tensor:
        """[B, 3, h, w] normalised images (h, w multiples of the patch) -> [B, E, h/p, w/p].

        The positional embedding is resized (bicubic) from the native grid to the input's.
        """
        v, a = self.visual, self.arch
        patches = v.conv1(images.to(v.conv1.weight.dtype))
        b, c, gh, gw = patches.shape
        pos = v.positional_embedding
        grid = pos[1:].reshape(1, a.grid, a.grid, c).permute(0, 3, 1, 2)
        if (gh, gw) != (a.grid, a.grid):
            grid = F.interpolate(grid.float(), size=(gh, gw), mode="bicubic", align_corners=False,
                                 antialias=gh < a.grid or gw < a.grid).to(pos.dtype)
        x = torch.cat([v.class_embedding.expand(b, 1, c), patches.flatten(2).transpose(1, 2)], dim=1)
        x = x + torch.cat([pos[:1], grid.flatten(2)[0].T])
        x = v.ln_pre(x)
        blocks = v.transformer.resblocks
        for block in blocks[:-1]:
            x = block(x)
        tokens = v.ln_post(blocks[-1].value_path(x)[:, 1:]) @ v.proj
        return tokens.transpose(1, 2).reshape(b, -1, gh, gw)

    def encode_text(self, tokens: Tensor) -> Tensor:
        """[n, context_length] token ids -> [n, E] text embeddings (not normalised)."""
        x = self.token_embedding(tokens) + self.positional_embedding
        for block in self.transformer.resblocks:
            x = block(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        rows = torch.arange(len(tokens), device=tokens.device)
        pool = self.arch.text_pool
        if pool == "argmax":  # the end-of-text token has the largest id
            x = x[rows, tokens.argmax(-1)]
        elif pool == "eos":
            x = x[rows, (tokens == self.arch.eos_id).int().argmax(-1)]
        else:
            x = x[:, 0] if pool == "first" else x[:, -1]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(x)
        return x if self.text_projection is None else x @ self.text_projection


def random_clip(arch: ClipArch, seed: int = 0) -> ClipModel:
    """A model with small random weights (tests and benchmarks: no weights are downloaded)."""
    model = ClipModel(arch)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight",
                              "gamma")):
                p.fill_(1.0)
            elif name != "logit_scale":
                p.copy_(torch.randn(p.shape, generator=gen) * (p.shape[-1] ** -0.5 if p.dim() > 1 else 0.02))
    return model.eval()


def load_clip(checkpoint: Path, arch: ClipArch, device: torch.device) -> ClipModel:
    """The model of ``arch`` with an open_clip checkpoint's weights, on ``device``, in eval mode."""
    state = {}
    for key, value in read_state_dict(checkpoint).items():
        # CustomTextCLIP keeps the text tower under "text."; CLIP has it at the top level.
        state[key.removeprefix("text.")] = value
    state.pop("attn_mask", None)  # a buffer some exports keep
    model = ClipModel(arch)
    load_strict(model, state, checkpoint, f"CLIP {arch.name}")
    return model.to(device).eval()
