"""Training that holds up on captures like the public ones: transparent (RGBA) object captures
without points, backgrounds, initialisation from what the cameras tell, divergence guards."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from featgs.camera import Camera, intrinsics_from_fov, look_at
from featgs.cli import main
from featgs.data import initial_points, load_scene
from featgs.data.camera_rig import rig_shape, seen_by
from featgs.errors import FeatgsError
from featgs.gaussians import load_ply
from featgs.render import render
from featgs.train import TrainConfig
from featgs.data.images import over
from featgs.train.background import eval_background, resolve_background, step_background
from featgs.train.evaluate import evaluate_run
from featgs.train.run import train_run
from featgs.train.trainer import Diverged

SMALL = dict(refine_start=30, refine_every=30, checkpoint_every=1000, random_init_points=8000)


@pytest.fixture(scope="module")
def obj(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("data") / "object"
    assert main(["scene", "make", "object", "--out", str(out), "--size", "40", "--views", "30", "--test-views", "4"]) == 0
    return out


def test_backgrounds():
    assert resolve_background("auto", transparent=True) == "random"
    assert resolve_background("auto", transparent=False) == "black"
    assert eval_background("black", transparent=True) == (1.0, 1.0, 1.0)  # NeRF-synthetic protocol
    assert eval_background("random", transparent=False) == (0.0, 0.0, 0.0)
    assert eval_background("white", transparent=False) == (1.0, 1.0, 1.0)
    a = step_background("random", 7, 0, torch.device("cpu"))
    assert torch.equal(a, step_background("random", 7, 0, torch.device("cpu")))  # resumable
    assert not torch.equal(a, step_background("random", 8, 0, torch.device("cpu")))
    rgba = torch.tensor([[[0.2, 0.4, 0.6, 1.0], [0.2, 0.4, 0.6, 0.0], [1.0, 0.0, 0.0, 0.5]]])
    out = over(rgba, torch.tensor([0.0, 1.0, 0.0]))
    assert torch.allclose(out, torch.tensor([[[0.2, 0.4, 0.6], [0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]]))
    assert over(rgba[..., :3], a) is not None and over(rgba[..., :3], a).shape == (1, 3, 3)


def test_object_rig_gets_points_in_the_volume_the_cameras_see(obj):
    scene = load_scene(obj)
    assert scene.points is None and scene.has_alpha()
    shape = rig_shape([v.camera for v in scene.train])
    assert shape.object_centric and shape.in_front == 1.0 and shape.spread > 0.3
    start = initial_points(scene, 3000, seed=0, transparent=True)
    assert start.kind == "object" and start.points.shape == (3000, 3)
    assert bool((seen_by(start.points, [v.camera for v in scene.train]) >= 0.9).all())
    # the volume is around the object, not out at the cameras: the cameras stay outside it
    dist = (torch.stack([v.camera.center for v in scene.train]).float() - shape.centre.float()).norm(dim=1)
    assert float((start.points - shape.centre.float()).norm(dim=1).max()) < 0.7 * float(dist.min())
    with pytest.raises(FeatgsError, match="--init points"):
        initial_points(scene, 100, init="points")


def test_forward_facing_rig_gets_frustum_points():
    K = intrinsics_from_fov(64, 48, math.radians(60))
    cams = [Camera(look_at((x, y, 0.0), (x, y, 5.0)), K, 64, 48, name=f"c{i}")
            for i, (x, y) in enumerate([(a * 0.1, b * 0.1) for a in range(3) for b in range(3)])]
    shape = rig_shape(cams)
    assert not shape.object_centric and shape.centre is None  # parallel axes: no common centre
    ring = [Camera(look_at((2 * math.cos(t), 2 * math.sin(t), 0.5), (0, 0, 0)), K, 64, 48, name=f"r{i}")
            for i, t in enumerate(torch.linspace(0, 2 * math.pi, 9)[:-1].tolist())]
    shape = rig_shape(ring)
    assert shape.object_centric and float(shape.centre.norm()) < 1e-6 and abs(shape.distance - math.sqrt(4.25)) < 1e-6


@pytest.mark.slow
def test_transparent_capture_trains_over_its_background_and_leaves_empty_space_empty(obj, tmp_path):
    untrained = tmp_path / "r0"
    train_run(obj, untrained, TrainConfig(iters=1, teacher="none", **SMALL), progress=False)
    info = train_run(obj, tmp_path / "r1", TrainConfig(iters=300, teacher="none", **SMALL), progress=False)
    assert info["init"]["kind"] == "object" and info["background"] == {"train": "random", "transparent": True,
                                                                        "eval": [1.0, 1.0, 1.0]}
    m0 = evaluate_run(untrained, pictures=False, progress=False)
    m1 = evaluate_run(tmp_path / "r1", pictures=False, progress=False)
    assert m1["psnr"] >= 22.0 and m1["psnr"] - m0["psnr"] >= 8.0, (m0["psnr"], m1["psnr"])
    # where the capture is empty the model is (nearly) transparent, and the object is opaque
    g = load_ply(tmp_path / "r1" / "point_cloud.ply")
    scene = load_scene(obj)
    empty, solid = [], []
    for v in scene.test:
        alpha = render(g, v.camera).alpha[..., 0]
        truth = v.rgba()[..., 3]
        empty.append(alpha[truth == 0])
        solid.append(alpha[truth == 1])
    assert float(torch.cat(empty).mean()) < 0.1 and float(torch.cat(solid).mean()) > 0.9
    log = [json.loads(x) for x in (tmp_path / "r1" / "log.jsonl").read_text().splitlines()]
    assert all(r["step_seconds"] > 0 and r["max_step_seconds"] >= r["step_seconds"] for r in log)


@pytest.mark.slow
def test_background_flag_is_recorded_and_white_trains_too(obj, tmp_path):
    info = train_run(obj, tmp_path / "w", TrainConfig(iters=150, teacher="none", background="white", init="random",
                                                      **SMALL), progress=False)
    assert info["background"]["train"] == "white" and info["config"]["init"] == "random"
    assert evaluate_run(tmp_path / "w", pictures=False, progress=False)["psnr"] >= 18.0


@pytest.mark.slow
def test_divergence_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(obj, tmp_path, monkeypatch, capsys):
    import featgs.train.trainer as trainer

    calls = {"n": 0}
    real = trainer.photometric_loss

    def poisoned(render_rgb, target, w):
        calls["n"] += 1
        loss = real(render_rgb, target, w)
        return loss * float("nan") if calls["n"] == 8 else loss

    monkeypatch.setattr(trainer, "photometric_loss", poisoned)
    cfg = ["--iters", "20", "--teacher", "none", "--checkpoint-every", "5", "--random-init-points", "2000", "--quiet"]
    assert main(["train", str(obj), "--out", str(tmp_path / "nan"), *cfg]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "diverged at step 7" in err[0] and "loss" in err[0]
    ck = torch.load(tmp_path / "nan" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 5 and all(bool(torch.isfinite(p).all()) for p in ck["params"].values())
    assert not (tmp_path / "nan" / "point_cloud.ply").exists()
    info = json.loads((tmp_path / "nan" / "run.json").read_text())
    assert info["status"] == "diverged" and info["stopped_at"] == 7 and "diverged at step 7" in info["error"]
    with pytest.raises(Diverged):
        calls["n"] = 0
        train_run(obj, tmp_path / "nan2", TrainConfig(iters=20, teacher="none", random_init_points=2000), progress=False)


def test_train_and_test_images_with_one_name_stay_apart(obj):
    scene = load_scene(obj)
    names = [v.name for v in scene.views]
    assert len(set(names)) == len(names)
    assert scene.train[0].name == "train_r_0" and scene.test[0].name == "test_r_0"
