"""open_clip models for the clip teacher: the architecture, the user's weights, dense features, text.

The architecture (``--clip-model``) is one of open_clip's model names (``open_clip.list_models()``),
the path of an open_clip JSON model config (registered with ``open_clip.add_model_config``: its
file stem becomes its name), or a folder holding an ``open_clip_config.json`` as open_clip's
Hugging Face repositories do (open_clip's ``local-dir:`` schema: the model config, its
preprocessing and, for Hugging Face text towers, the tokenizer files). open_clip builds the
model with no weights of its own; the weights come from the user's checkpoint, read by
:func:`~featgs.teachers.checkpoint.read_state_dict` (tensors only) and loaded with every key and
shape checked.

Dense features follow MaskCLIP on open_clip's own modules. For a ViT tower (open_clip's
``VisionTransformer``) the patch tokens go through the patch embedding, the positional
embedding (resized to the input's grid), ``ln_pre`` and every block but the last; in the last
block each token takes only the value path of the attention, ``out_proj(v_proj(ln_1(x)))``
(attention to itself alone: no query-key mixing), with no residual and no MLP, then ``ln_post``
and ``proj`` as the pooled token would, which puts it in the space of the text embeddings. For
a ConvNeXt tower (timm's, in open_clip's ``TimmModel``) each cell of the trunk's last feature
map goes through the head that would have pooled the map (timm's head, then open_clip's
projection), as if it were the whole map. Other towers (ResNets, timm ViTs such as SigLIP's
and EVA's, attentional poolers) are refused with a one-line error.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import open_clip
import torch
import torch.nn.functional as F
from open_clip.convert import convert_state_dict
from open_clip.model import convert_to_custom_text_state_dict
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
from open_clip.timm_model import TimmModel
from open_clip.tokenizer import HFTokenizer, SimpleTokenizer
from open_clip.transformer import CustomResidualAttentionBlock, ResidualAttentionBlock, VisionTransformer
from torch import Tensor, nn

from featgs.errors import FeatgsError
from featgs.teachers.checkpoint import load_strict, read_state_dict

HUB_CONFIG = "open_clip_config.json"  # open_clip's config file in a Hugging Face repository
LIST_MODELS = "python -c 'import open_clip; print(open_clip.list_models())'"


@dataclass(frozen=True)
class ClipSpec:
    """An architecture the user named, resolved without building it.

    Attributes:
        name: the open_clip name, or the config file's stem, or the folder's name.
        source: what open_clip's ``create_model`` and ``get_tokenizer`` take: the name, or
            "local-dir:FOLDER".
        config: open_clip's model config (embed_dim, vision_cfg, text_cfg).
        config_file: a config file to register with open_clip before each use, or None.
    """

    name: str
    source: str
    config: dict
    config_file: Optional[Path] = None

    @property
    def embed_dim(self) -> int:
        """E, the shared image-text embedding dimension."""
        return int(self.config["embed_dim"])

    def register(self) -> None:
        """Make ``name`` mean this config in open_clip's registry. Repeated before each use: the
        latest registration of a file stem wins there, and other teachers may register theirs."""
        if self.config_file is not None:
            open_clip.add_model_config(self.config_file)


def resolve(model: str) -> ClipSpec:
    """``--clip-model``: an open_clip model name, a JSON model config file, or a folder with an
    open_clip_config.json (or that file itself); a one-line error for anything else."""
    if model.startswith("hf-hub:"):
        raise FeatgsError(f"--clip-model {model}: featgs does not download models; download the repository "
                          f"and give its folder (with {HUB_CONFIG}) and --clip-checkpoint")
    path = Path(model.removeprefix("local-dir:"))
    if path.name == HUB_CONFIG and path.is_file():
        path = path.parent
    if path.is_dir():
        full = _read_json(path / HUB_CONFIG, f"a folder with {HUB_CONFIG}")
        config = full.get("model_cfg")
        if not _is_model_config(config):
            raise FeatgsError(f"{path / HUB_CONFIG}: not an open_clip config (needs model_cfg with embed_dim, "
                              f"vision_cfg and text_cfg)")
        return ClipSpec(path.resolve().name, f"local-dir:{path.resolve()}", config)
    if path.suffix == ".json" or path.is_file():
        config = _read_json(path, "open_clip model config")
        if isinstance(config, dict) and "model_cfg" in config:
            raise FeatgsError(f"{path}: a Hugging Face repository's open_clip config: give the folder that holds it "
                              f"as {HUB_CONFIG}")
        if not _is_model_config(config):
            raise FeatgsError(f"{path}: not an open_clip model config (needs embed_dim, vision_cfg and text_cfg)")
        registered = open_clip.get_model_config(path.stem)
        if registered is not None and registered != config:
            raise FeatgsError(f"{path}: open_clip already has another model named {path.stem!r}; rename the file")
        return ClipSpec(path.stem, path.stem, config, path.resolve())
    config = open_clip.get_model_config(model)
    if config is None:
        raise FeatgsError(f"--clip-model: unknown open_clip model {model!r} ({LIST_MODELS} lists them); or give "
                          f"the path of an open_clip JSON model config")
    return ClipSpec(model, model, config)


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise FeatgsError(f"{path}: no such {what} file")
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise FeatgsError(f"{path}: unreadable {what} ({e.__class__.__name__})") from None


def _is_model_config(config: Any) -> bool:
    return isinstance(config, dict) and all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg"))


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """open_clip logs "No pretrained weights loaded ... initialized randomly" on building a model
    without weights: here the user's weights are loaded right after, so the warning is silenced."""
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(level)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{e.__class__.__name__}: {text[0][:200].rstrip('.')}" if text else e.__class__.__name__


def load(spec: ClipSpec, checkpoint: Path, device: torch.device) -> nn.Module:
    """open_clip's model of ``spec`` with the checkpoint's weights, on ``device``, in eval mode.

    The checkpoint may be any layout open_clip's ``load_checkpoint`` takes ("state_dict"
    wrapper, "module." prefix, the text tower at the top level or under "text."); unlike it,
    positional embeddings of another size are refused, not resized (that is another model).
    """
    spec.register()
    try:
        with _quiet_logging():
            model = open_clip.create_model(spec.source, load_weights=False, pretrained_image=False,
                                           pretrained_text=False, force_preprocess_cfg=_normalisation(spec))
    except Exception as e:  # a config open_clip cannot build: whatever it raises, one line
        raise FeatgsError(f"--clip-model {spec.name}: open_clip cannot build it ({_first_line(e)})") from None
    load_strict(model, _open_clip_layout(model, read_state_dict(checkpoint)), checkpoint, f"CLIP {spec.name}")
    return model.to(device).eval()


def _normalisation(spec: ClipSpec) -> Optional[dict]:
    """The input mean and std that every pretrained tag of an open_clip model name agrees on.

    open_clip takes them from the tag when it downloads the weights; from a file it would use
    its default, OpenAI's, which is wrong for e.g. SigLIP (0.5). Where tags disagree (ViT-L-14)
    or there are none, open_clip's default stands; a folder's open_clip_config.json brings its own.
    """
    if spec.source.startswith("local-dir:"):
        return None
    norms = set()
    for tag in list_pretrained_tags_by_model(spec.name):
        cfg = get_pretrained_cfg(spec.name, tag)
        norms.add((tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
                   tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))))
    if len(norms) != 1:
        return None
    ((mean, std),) = norms
    return {"mean": mean, "std": std}


def _open_clip_layout(model: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The state dict in ``model``'s key layout, by open_clip's own conversions."""
    state = convert_state_dict(model, state)  # third-party layouts (Apple's MobileCLIP)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)  # text tower at the top level -> under "text."
    for key in ("logit_scale", "logit_bias"):  # a scalar saved as [1] or the other way round
        own = getattr(model, key, None)
        if key in state and own is not None and state[key].numel() == own.numel():
            state[key] = state[key].reshape(own.shape)
    # buffers the model rebuilds (the text causal mask, Hugging Face position ids) that some exports keep
    rebuilt = {name for name, _ in model.named_buffers()} - set(model.state_dict())
    return {k: v for k, v in state.items() if k not in rebuilt}


def dense_geometry(visual: nn.Module, name: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """((sh, sw), (nh, nw)): the pixels per feature cell and the cells of the native input, or a
    one-line error for a tower without a dense path."""
    blocks = (ResidualAttentionBlock, CustomResidualAttentionBlock)  # whose value path _value_path knows
    if isinstance(visual, VisionTransformer) and visual.attn_pool is None and all(
            isinstance(b, blocks) for b in visual.transformer.resblocks):
        return tuple(visual.patch_size), tuple(visual.grid_size)
    if isinstance(visual, TimmModel):
        from timm.models.convnext import ConvNeXt  # timm is there: it built the tower

        if isinstance(visual.trunk, ConvNeXt) and "pool" not in visual.head:  # no attention pooling in the head
            stride = int(visual.trunk.feature_info[-1]["reduction"])
            return (stride, stride), (visual.image_size[0] // stride, visual.image_size[1] // stride)
    tower = type(getattr(visual, "trunk", visual))
    raise FeatgsError(f"--clip-model {name}: dense features need a ViT or ConvNeXt vision tower "
                      f"(open_clip's VisionTransformer without attentional pooling, or timm's ConvNeXt), not "
                      f"{tower.__module__}.{tower.__name__}")


def dense_features(visual: nn.Module, images: Tensor) -> Tensor:
    """[B, 3, h, w] normalised images (h, w multiples of the cell size) -> [B, E, h/sh, w/sw].

    ``visual`` is a tower that :func:`dense_geometry` accepts.
    """
    if isinstance(visual, TimmModel):
        maps = visual.trunk.forward_features(images)
        b, c, gh, gw = maps.shape
        # each cell as a 1 x 1 map: the head's global pool keeps it, its norm and projection apply
        cells = visual.head(visual.trunk.forward_head(maps.permute(0, 2, 3, 1).reshape(-1, c, 1, 1)))
        return cells.view(b, gh, gw, -1).permute(0, 3, 1, 2)
    patches = visual.conv1(images.to(visual.conv1.weight.dtype))
    b, c, gh, gw = patches.shape
    nh, nw = visual.grid_size
    pos = visual.positional_embedding
    grid = pos[1:].reshape(1, nh, nw, c).permute(0, 3, 1, 2)
    if (gh, gw) != (nh, nw):
        grid = F.interpolate(grid.float(), size=(gh, gw), mode="bicubic", align_corners=False,
                             antialias=gh < nh or gw < nw).to(pos.dtype)
    x = torch.cat([visual.class_embedding.view(1, 1, c).expand(b, 1, c), patches.flatten(2).transpose(1, 2)], dim=1)
    x = visual.ln_pre(x + torch.cat([pos[:1], grid.flatten(2)[0].T]))
    blocks = visual.transformer.resblocks
    for block in blocks[:-1]:
        x = block(x)
    tokens = visual.ln_post(_value_path(blocks[-1], x)[:, 1:]) @ visual.proj
    return tokens.transpose(1, 2).reshape(b, -1, gh, gw)


def _value_path(block: nn.Module, x: Tensor) -> Tensor:
    """MaskCLIP: the block's attention branch with every token attending only to itself."""
    attn, width = block.attn, x.shape[-1]
    bias = None if attn.in_proj_bias is None else attn.in_proj_bias[2 * width:]
    v = F.linear(block.ln_1(x), attn.in_proj_weight[2 * width:], bias)
    if isinstance(block, CustomResidualAttentionBlock):  # open_clip's Attention: head scale, inner norm
        if attn.head_scale is not None:
            v = (v.unflatten(-1, (attn.num_heads, -1)) * attn.head_scale.view(attn.num_heads, 1)).flatten(-2)
        return block.ls_1(block.ln_attn(attn.out_proj(attn.ln_inner(v))))
    return block.ls_1(attn.out_proj(v))


def tokenizer(spec: ClipSpec, model: nn.Module, folder: Optional[Path]) -> Callable[[list[str]], Tensor]:
    """Texts -> [n, context_length] token ids for ``model``'s text tower.

    By default open_clip's tokenizer for the model (``get_tokenizer``): OpenAI's BPE vocabulary,
    bundled with open_clip, or a Hugging Face tokenizer (SigLIP's and other Hugging Face text
    towers'), which is taken from the Hugging Face cache or the model's folder only, never
    downloaded. ``folder`` (--clip-tokenizer) replaces it: a local Hugging Face tokenizer folder,
    or a BPE vocabulary (.txt.gz) for open_clip's ``SimpleTokenizer``.
    """
    text_cfg = spec.config.get("text_cfg", {})
    kwargs = dict(text_cfg.get("tokenizer_kwargs") or {})
    context_length = open_clip.get_model_tokenize_cfg(model).get("context_length")
    try:
        if folder is None:
            spec.register()
            offline = {"local_files_only": True} if text_cfg.get("hf_tokenizer_name") else {}
            return open_clip.get_tokenizer(spec.source, context_length=context_length, **offline)
        if folder.is_dir():
            return HFTokenizer(str(folder), context_length=context_length,
                               tokenizer_mode=text_cfg.get("tokenizer_mode"), **kwargs)
        if folder.name.endswith(".gz") and folder.is_file():
            return SimpleTokenizer(str(folder), context_length=context_length, **kwargs)
    except Exception as e:  # files missing or of another kind, not in the cache: whatever it raises, one line
        source = folder if folder is not None else text_cfg.get("hf_tokenizer_name") or "open_clip's"
        raise FeatgsError(f"--clip-model {spec.name}: cannot load its tokenizer ({source}) from local files: "
                          f"{_first_line(e)}; --clip-tokenizer FOLDER takes a Hugging Face tokenizer folder") from None
    raise FeatgsError(f"--clip-tokenizer {folder}: expected a Hugging Face tokenizer folder or a BPE "
                      f"vocabulary .txt.gz")
