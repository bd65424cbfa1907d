"""The clip teacher on open_clip: MaskCLIP on open_clip's own modules, checkpoint layouts, a
ConvNeXt tower, tokenizers, and the one-line errors (tiny random-weight models, tests/foundation.py)."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from data_builders import make_tabletop
from featgs.cli import main
from featgs.errors import FeatgsError
from featgs.teachers import clip_model
from featgs.teachers.clip import ClipTeacher
from foundation import TINY_CLIP

TEXT = TINY_CLIP["text_cfg"]


def tiny_model(folder: Path, name: str, vision: dict, text: dict = TEXT) -> tuple[Path, Path]:
    """(config, weights) of an open_clip model ``name`` with these towers (default: the tiny text tower)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / f"{name}.json"
    config.write_text(json.dumps({"embed_dim": 32, "vision_cfg": vision, "text_cfg": text}))
    open_clip.add_model_config(config)
    torch.manual_seed(0)
    weights = folder / f"{name}.safetensors"
    save_file(open_clip.create_model(name).state_dict(), str(weights))
    return config, weights


def test_dense_path_is_maskclip_on_open_clips_modules(checkpoints):
    teacher = ClipTeacher(str(checkpoints.clip_config), checkpoints.clip, size=64, device="cpu")
    image = torch.rand(64, 64, 3)  # the native input: one window, open_clip's own positional embedding
    features = teacher.encode_view(image)
    # brute force, with open_clip's modules: every block, the last one's attention masked so that
    # each token attends only to itself (MaskCLIP), no residual, no MLP; then ln_post and proj
    model = teacher.model
    visual = model.visual
    cfg = open_clip.get_model_preprocess_cfg(model)
    mean, std = torch.tensor(cfg["mean"]).view(1, 3, 1, 1), torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    x = (image.permute(2, 0, 1)[None] - mean) / std
    with torch.no_grad():
        tokens = visual._embeds(x)
        for block in visual.transformer.resblocks[:-1]:
            tokens = block(tokens)
        last = visual.transformer.resblocks[-1]
        itself = torch.full((17, 17), float("-inf")).fill_diagonal_(0.0)
        attended = last.ls_1(last.attention(last.ln_1(tokens), attn_mask=itself))
        expected = (visual.ln_post(attended[:, 1:]) @ visual.proj)[0].T.reshape(32, 4, 4)
        mixed = last.ls_1(last.attention(last.ln_1(tokens)))  # the block's ordinary attention
        unmasked = (visual.ln_post(mixed[:, 1:]) @ visual.proj)[0].T.reshape(32, 4, 4)
    assert features.shape == (32, 4, 4)
    torch.testing.assert_close(features, expected)
    assert (features - unmasked).abs().max() > 0.1  # which the query-key mixing would change


def test_checkpoint_layouts_of_open_clip_load(checkpoints, tmp_path):
    weights = load_file(str(checkpoints.clip))
    # a training checkpoint: {"state_dict": ...} with DistributedDataParallel's "module." prefix, torch.save
    wrapped = tmp_path / "epoch_32.pt"
    torch.save({"epoch": 32, "state_dict": {f"module.{k}": v for k, v in weights.items()}}, wrapped)
    image = torch.rand(40, 56, 3)
    one = ClipTeacher(str(checkpoints.clip_config), checkpoints.clip, size=64, device="cpu")
    two = ClipTeacher(str(checkpoints.clip_config), wrapped, size=64, device="cpu")
    torch.testing.assert_close(one.encode_view(image), two.encode_view(image))
    assert one.model_id != two.model_id  # identified by the file's bytes


def test_a_hugging_face_folder_brings_its_preprocessing(checkpoints, tmp_path):
    # the layout of open_clip's Hugging Face repositories: open_clip_config.json beside the weights
    folder = tmp_path / "tiny-clip-webli"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    teacher = ClipTeacher(str(folder), checkpoints.clip, size=64, device="cpu")
    image = torch.rand(64, 64, 3)
    x = teacher._normalised(image, 4, 4)
    torch.testing.assert_close(x, image.permute(2, 0, 1)[None] * 2 - 1, atol=1e-5, rtol=0)  # (x - 0.5) / 0.5
    assert teacher.model_id.startswith("clip-tiny-clip-webli@sha256:") and teacher.dim == 32
    assert teacher.encode_view(image).shape == (32, 4, 4) and teacher.encode_text(["mug"]).shape == (1, 32)
    renamed = tmp_path / "copy.json"
    renamed.write_text((folder / "open_clip_config.json").read_text())
    with pytest.raises(FeatgsError, match="give the folder that holds it as open_clip_config.json"):
        ClipTeacher(str(renamed), checkpoints.clip)


def test_convnext_tower_pools_each_cell_through_the_head(tmp_path):
    vision = {"timm_model_name": "convnext_atto", "timm_model_pretrained": False, "timm_pool": "",
              "timm_proj": "linear", "image_size": 64}
    config, weights = tiny_model(tmp_path, "tiny-convnext", vision)
    teacher = ClipTeacher(str(config), weights, size=32, device="cpu")
    image = torch.rand(32, 32, 3)
    # one cell of 32 px: its feature is the image embedding (the head's pool over one cell)
    features = teacher.encode_view(image)
    assert teacher.resolution_for(32, 32) == (1, 1) and features.shape == (32, 1, 1)
    with torch.no_grad():
        pooled = teacher.model.encode_image(teacher._normalised(image, 1, 1))[0]
    torch.testing.assert_close(features[:, 0, 0], pooled, atol=1e-5, rtol=1e-4)
    # larger images: 32-px cells, windows of the native 64 px (2 x 2 cells)
    wide = ClipTeacher(str(config), weights, size=128, device="cpu")
    assert wide.encode_view(torch.rand(48, 96, 3)).shape == (32, 2, 4)


def test_tower_without_a_dense_path_is_one_line(tmp_path):
    resnet = {"layers": [1, 1, 1, 1], "width": 16, "head_width": 16, "image_size": 64}
    config, weights = tiny_model(tmp_path, "tiny-resnet", resnet)
    teacher = ClipTeacher(str(config), weights, size=64, device="cpu")
    with pytest.raises(FeatgsError, match="dense features need a ViT or ConvNeXt vision tower.*ModifiedResNet") as e:
        teacher.prepare()
    assert "\n" not in str(e.value)
    assert teacher.encode_text(["mug"]).shape == (1, 32)  # its text tower still works


def test_tokenizers_from_files(checkpoints, tmp_path):
    teacher = ClipTeacher(str(checkpoints.clip_config), checkpoints.clip, device="cpu")
    spec, model = teacher.spec, teacher.model
    # the BPE vocabulary as a file (open_clip's own here) gives open_clip's default tokens
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    texts = ["a photo of a mug.", "there is a table in the scene."]
    assert torch.equal(clip_model.tokenizer(spec, model, bpe)(texts), open_clip.get_tokenizer("tiny-clip")(texts))
    # a Hugging Face tokenizer folder (what SigLIP's and other Hugging Face text towers need offline)
    words = {"[PAD]": 0, "[UNK]": 1, "a": 2, "photo": 3, "of": 4, "mug": 5}
    fast = Tokenizer(models.WordLevel(words, unk_token="[UNK]"))
    fast.pre_tokenizer = pre_tokenizers.Whitespace()
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    fast.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]", "unk_token": "[UNK]"}))
    tokens = clip_model.tokenizer(spec, model, folder)(["a photo of a mug"])
    assert tokens.shape == (1, 77) and tokens[0, :6].tolist() == [2, 3, 4, 2, 5, 0]
    # a model whose text takes a Hugging Face tokenizer: never downloaded; without its files, one line
    text = {**TEXT, "hf_tokenizer_name": "featgs-tests/no-such-tokenizer"}
    config, weights = tiny_model(tmp_path, "tiny-hf-tokenizer", TINY_CLIP["vision_cfg"], text)
    with pytest.raises(FeatgsError, match=r"tokenizer \(featgs-tests/no-such-tokenizer\) from local files.*"
                                          r"--clip-tokenizer FOLDER") as e:
        ClipTeacher(str(config), weights, device="cpu").encode_text(["mug"])
    assert "\n" not in str(e.value)
    assert ClipTeacher(str(config), weights, tokenizer=folder, device="cpu").encode_text(["mug"]).shape == (1, 32)
    with pytest.raises(FeatgsError, match="expected a Hugging Face tokenizer folder or a BPE vocabulary"):
        ClipTeacher(str(checkpoints.clip_config), checkpoints.clip, tokenizer=tmp_path / "absent",
                    device="cpu").encode_text(["mug"])


def test_command_line_errors_are_one_line(checkpoints, tmp_path, capsys):
    data = make_tabletop(tmp_path / "data", size=32, views=2, test_views=1, points=100)
    args = ["features", "extract", str(data), "--teacher", "clip", "--checkpoint", str(checkpoints.clip), "--quiet"]
    wrong = {"ViT-Q-7": "unknown open_clip model 'ViT-Q-7'", "ViT-S-32": "not a CLIP ViT-S-32 checkpoint"}
    for model, message in wrong.items():
        capsys.readouterr()
        assert main(args + ["--model", model]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("featgs: error:") and message in err, err
