"""SAM and CLIP through the command line on a tiny scene: extraction (resumed, checked against
the checkpoint), compression, training on both teachers at once, evaluation, prompting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from featgs.cli import main
from featgs.data import load_scene
from featgs.data.procedural import MakeConfig, make_scene, resolve_scene
from featgs.errors import FeatgsError
from featgs.gaussians import load_ply
from featgs.render import render
from featgs.teachers import FeatureCache
from featgs.teachers.compress import CompressedCache
from featgs.teachers.sam import SamTeacher
from featgs.teachers.sam_prompter import SamPrompter
from featgs.train.evaluate import evaluate_run
from foundation import write_checkpoints

FAST = ["--refine-start", "10", "--refine-every", "10", "--checkpoint-every", "1000", "--quiet"]


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "tiny"
    path = resolve_scene("tabletop")
    make_scene(path.read_text(), str(path), out, MakeConfig(size=32, views=3, test_views=1, points=300))
    return out


def teacher_flags(checkpoints) -> list[str]:
    return ["--sam-checkpoint", str(checkpoints.sam), "--clip-model", str(checkpoints.clip_config),
            "--clip-checkpoint", str(checkpoints.clip), "--clip-size", "64"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("featgs: error:"), err
    return err


@pytest.mark.slow
def test_sam_extraction_resumes_and_knows_its_checkpoint(scene, checkpoints, monkeypatch, capsys, tmp_path):
    args = ["features", "extract", str(scene), "--teacher", "sam", "--checkpoint", str(checkpoints.sam), "--quiet"]
    encode = SamTeacher.encode_view
    calls = []

    def interrupted(self, image, labels=None):
        if len(calls) == 1:
            raise KeyboardInterrupt
        calls.append(1)
        return encode(self, image, labels)

    monkeypatch.setattr(SamTeacher, "encode_view", interrupted)
    assert main(args) == 130  # Ctrl-C after one image
    cache = FeatureCache(scene, "sam")
    assert cache.meta is None and len(list(cache.folder.glob("*.safetensors"))) == 1
    monkeypatch.setattr(SamTeacher, "encode_view", encode)
    capsys.readouterr()
    assert main(args) == 0
    assert "(3 computed" in capsys.readouterr().out  # the fourth map was kept
    meta = cache.meta
    teacher = SamTeacher(checkpoints.sam)
    assert meta["model_id"] == teacher.model_id and meta["dim"] == 256 and len(meta["images"]) == 4
    assert all(hw == [64, 64] for hw in meta["images"].values())
    cache.check(teacher, list(meta["images"]))
    # other weights of the same architecture: the cache knows they are not its own
    other = write_checkpoints(tmp_path / "other", seed=1)
    with pytest.raises(FeatgsError, match="model_id 'sam-vit_tiny@sha256:") as raised:
        cache.check(SamTeacher(other.sam))
    assert "\n" not in str(raised.value)
    # a checkpoint of another architecture, named as the user's: one line, exit 2
    before = {p.name: p.stat().st_mtime_ns for p in cache.folder.iterdir()}
    assert main(args + ["--checkpoint", str(checkpoints.clip), "--model", "vit_b"]) == 2
    err = one_line_error(capsys)
    assert str(checkpoints.clip) in err and "not a SAM vit_b checkpoint" in err
    assert {p.name: p.stat().st_mtime_ns for p in cache.folder.iterdir()} == before  # the cache is untouched


def test_clip_extraction_and_compression(scene, checkpoints, capsys):
    assert main(["features", "extract", str(scene), "--teacher", "clip", "--model", str(checkpoints.clip_config),
                 "--checkpoint", str(checkpoints.clip), "--clip-size", "64", "--quiet"]) == 0
    assert "32 x 4 x 4" in capsys.readouterr().out
    assert main(["features", "compress", str(scene), "--teacher", "clip", "--dim", "8", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "32 -> 8 channels over 4 images" in out and "x smaller" in out
    compressed = CompressedCache(scene / "features" / "clip.pca8")
    meta = compressed.meta
    assert meta["dim"] == 8 and meta["source"]["model_id"].startswith("clip-tiny-clip@sha256:")
    original = FeatureCache(scene, "clip").load("train_0000").float()
    rebuilt = compressed.load("train_0000").float()
    assert rebuilt.shape == original.shape == (32, 4, 4)
    error = float((rebuilt - original).norm() / original.norm())
    assert error < meta["relative_error"] * 3 + 1e-3 and 0 < meta["variance_kept"] <= 1
    assert main(["features", "compress", str(scene), "--teacher", "clip", "--dim", "32"]) == 2
    assert "--dim must be between 1 and 31" in one_line_error(capsys)
    assert main(["features", "extract", str(scene), "--teacher", "labels", "--checkpoint", "x.pth"]) == 2
    assert "--checkpoint does not apply to --teacher labels" in one_line_error(capsys)


@pytest.mark.slow
def test_training_on_sam_and_clip_at_once(scene, checkpoints, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(scene), "--out", str(run), "--teacher", "sam,clip", "--feature-dim", "8",
                 "--iters", "5"] + teacher_flags(checkpoints) + FAST) == 0
    info = json.loads((run / "run.json").read_text())
    assert [(t["name"], t["channels"]) for t in info["teachers"]] == [("sam", [0, 256]), ("clip", [256, 288])]
    assert info["teacher"]["name"] == "sam,clip" and info["teacher"]["dim"] == 288
    assert info["distill"]["feature_dim"] == 16 and set(info["distill"]["per_teacher"]) == {"sam", "clip"}
    g = load_ply(run / "point_cloud.ply")
    assert g.feature_dim == 16 and g.decoder.weight.shape == (288, 16)
    assert g.decoder.weight[:256, 8:].abs().max() == 0 and g.decoder.weight[256:, :8].abs().max() == 0  # blocks
    metrics = evaluate_run(run, pictures=False, progress=False)
    assert set(metrics["feature_cosine_per_teacher"]) == {"sam", "clip"} and metrics["miou"] is not None
    # the rendered SAM channels go back through SAM's decoder, as a click in the viewer does
    view = load_scene(scene).test[0]
    rendered = render(g, view.camera).features[..., :256].permute(2, 0, 1)
    masks = SamPrompter.from_checkpoint(checkpoints.sam, device="cpu").predict(
        rendered, (view.camera.height, view.camera.width), torch.tensor([[16.0, 16.0]]), torch.tensor([1]))
    assert masks.masks.shape == (3, 32, 32)


@pytest.mark.slow
def test_joint_training_shares_one_feature_between_teacher_heads(scene, checkpoints, tmp_path):
    run = tmp_path / "joint"
    assert main(["train", str(scene), "--out", str(run), "--teacher", "sam,clip", "--mode", "joint",
                 "--feature-dim", "8", "--iters", "10"] + teacher_flags(checkpoints) + FAST) == 0
    g = load_ply(run / "point_cloud.ply")
    assert g.feature_dim == 16 and g.decoder.weight.shape == (288, 16)
    assert g.decoder.weight[:256, 8:].abs().max() > 0  # one dense decoder: every head reads every dim
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 10 and 0 < log[-1]["feature_l1"] < float("inf")


def test_foundation_teachers_need_their_checkpoints(scene, tmp_path, capsys):
    assert main(["train", str(scene), "--out", str(tmp_path / "r"), "--teacher", "sam", "--quiet"]) == 2
    assert "--sam-checkpoint" in one_line_error(capsys) and not (tmp_path / "r").exists()
    assert main(["train", str(scene), "--out", str(tmp_path / "r"), "--teacher", "clip,clip", "--quiet"]) == 2
    assert "distinct names" in one_line_error(capsys)
