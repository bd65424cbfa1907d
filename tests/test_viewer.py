"""The viewer's parts without a browser: cameras, the render thread, the shared scene, frames, CLI."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from featgs.camera import Camera, intrinsics_from_fov, look_at
from featgs.cli import main
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians
from featgs.viewer import frames, images
from featgs.viewer.cameras import matrix_to_quat, pose_of, quat_to_matrix, render_size, up_direction
from featgs.viewer.state import SharedScene
from featgs.viewer.worker import RenderWorker


# -- cameras ------------------------------------------------------------------------------------
def test_quaternion_round_trip():
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        q = torch.randn(4, generator=gen, dtype=torch.float64).numpy()
        q /= np.linalg.norm(q)
        R = quat_to_matrix(q)
        assert np.allclose(R @ R.T, np.eye(3), atol=1e-12) and np.isclose(np.linalg.det(R), 1.0)
        q2 = matrix_to_quat(R)
        assert np.allclose(q2, q if q[0] >= 0 else -q, atol=1e-9)


def test_browser_pose_gives_the_camera_that_sees_the_canvas():
    c2w = look_at((1.0, -2.0, 1.5), (0.0, 0.0, 0.5))
    cam = Camera(camtoworld=c2w, K=intrinsics_from_fov(160, 100, math.radians(60)), width=160, height=100)
    pose = pose_of(cam)
    assert math.isclose(pose.aspect, 1.6)
    again = pose.camera(160)
    assert (again.width, again.height) == (160, 100)
    assert torch.allclose(again.camtoworld, cam.camtoworld, atol=1e-9)
    assert torch.allclose(again.K, cam.K, atol=1e-9)
    # a point projects to the same relative canvas position at any resolution
    p = torch.tensor([[0.2, 0.1, 0.6]], dtype=torch.float64)
    uv_a, _ = cam.project(p)
    small = pose.camera(64)
    uv_b, _ = small.project(p)
    assert torch.allclose(uv_a[0] / torch.tensor([160.0, 100.0]), uv_b[0] / torch.tensor([small.width, small.height]), atol=2e-2)


def test_render_size_keeps_the_long_side_and_aspect():
    assert render_size(16 / 9, 256) == (256, 144)
    assert render_size(0.5, 256) == (128, 256)
    assert render_size(float("nan"), 100) == (100, 100)


def test_up_direction_is_minus_image_y():
    cams = [Camera(camtoworld=look_at((2 * math.cos(a), 2 * math.sin(a), 1.0), (0, 0, 0)), K=torch.eye(3) * 50 + torch.tensor([[0, 0, 0], [0, 0, 0], [0, 0, -49.0]]),
                   width=64, height=64) for a in np.linspace(0, 6, 8)]
    up = up_direction(cams)
    assert up[2] > 0.9


# -- the render thread --------------------------------------------------------------------------
def test_worker_latest_request_wins_and_refines_when_still():
    done = []
    gate = threading.Event()

    def draw(request, moving):
        if request == 0:
            gate.wait(5)
        done.append((request, moving))

    w = RenderWorker(draw, lambda e: None, still_delay=0.1)
    try:
        w.submit(0, moving=True)
        time.sleep(0.05)
        for i in range(1, 10):  # posted while 0 renders: only the newest survives
            w.submit(i, moving=True)
        gate.set()
        deadline = time.time() + 5
        while time.time() < deadline and (9, False) not in done:
            time.sleep(0.01)
    finally:
        w.close()
    assert done[0] == (0, True)
    assert (9, True) in done and (9, False) in done
    assert not any(r in range(1, 9) for r, _ in done), done


def test_worker_survives_a_failing_render():
    errors, done = [], []

    def draw(request, moving):
        if request == "bad":
            raise RuntimeError("boom")
        done.append(request)

    w = RenderWorker(draw, errors.append, still_delay=10)
    try:
        w.submit("bad")
        deadline = time.time() + 5
        while time.time() < deadline and not errors:
            time.sleep(0.01)
        w.submit("good")
        while time.time() < deadline and not done:
            time.sleep(0.01)
    finally:
        w.close()
    assert [str(e) for e in errors] == ["boom"] and done == ["good"]


# -- the shared scene ---------------------------------------------------------------------------
class _Field:
    def __init__(self, n):
        self.n = n

    def save(self, path):
        Path(path).write_text(str(self.n))


def test_shared_scene_edits_undo_and_saves_numbered_files(tmp_path):
    seen = []
    scene = SharedScene(_Field(10), tmp_path, save=lambda f, p: f.save(p))
    scene.on_change(seen.append)
    v = scene.apply(lambda f: _Field(f.n - 3))
    assert scene.snapshot()[0].n == 7 and v == 1 and seen == [1]
    with pytest.raises(FeatgsError, match="select again"):
        scene.apply(lambda f: _Field(0), expect_version=0)
    assert scene.save() == tmp_path / "edits" / "edited-1.ply"
    assert scene.undo() and scene.snapshot()[0].n == 10 and seen == [1, 2]
    assert not scene.undo()
    assert scene.save().name == "edited-2.ply"
    assert (tmp_path / "edits" / "edited-2.ply").read_text() == "10"


def test_shared_scene_serialises_concurrent_edits(tmp_path):
    scene = SharedScene(_Field(0), tmp_path, save=lambda f, p: None, max_undo=1000)

    def bump():
        for _ in range(50):
            scene.apply(lambda f: _Field(f.n + 1))

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert scene.snapshot()[0].n == 200 and scene.version == 200


# -- frames -------------------------------------------------------------------------------------
@pytest.fixture()
def two_blobs():
    means = torch.tensor([[-0.3, 0.0, 0.0], [0.3, 0.0, 0.0]])
    g = Gaussians.create(means, colors=torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), scales=torch.full((2,), 0.15),
                         opacity=0.95, feature_dim=4)
    g = g.with_features(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]))
    cam = Camera(camtoworld=look_at((0.0, -2.0, 0.0), (0.0, 0.0, 0.0)), K=intrinsics_from_fov(64, 48, math.radians(50)),
                 width=64, height=48)
    return g, cam


def test_frames_modes_and_selection_highlight(two_blobs):
    g, cam = two_blobs
    rgb = frames.draw(g, cam, "RGB", frames.Overlay()).image
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    left, right = rgb[24, 20], rgb[24, 44]
    assert left[0] > 150 and right[2] > 150  # red on the left, blue on the right
    sel = frames.draw(g, cam, "RGB", frames.Overlay(selected=torch.tensor([False, True]))).image
    assert np.array_equal(sel[24, 20], left)  # unselected: unchanged
    assert sel[24, 44][0] > 150 and sel[24, 44][1] > 30  # selected: tinted magenta
    depth = frames.draw(g, cam, "Depth", frames.Overlay()).image
    assert depth[0, 0].tolist() == [0, 0, 0] and depth[24, 20].sum() > 0
    pca = frames.draw(g, cam, "Features (PCA)", frames.Overlay(), feature_colours=frames.FeatureColours(g)).image
    assert np.abs(pca[24, 20].astype(int) - pca[24, 44].astype(int)).sum() > 100
    heat = frames.draw(g, cam, "Relevancy", frames.Overlay(relevancy=torch.tensor([0.0, 1.0]), relevancy_range=(0.2, 0.8))).image
    greyed = images.grey(rgb).astype(int)
    assert np.abs(heat[24, 20] - greyed[24, 20]).max() <= 1  # below the range: plain grey
    assert np.abs(heat[24, 44] - greyed[24, 44]).sum() > 150  # above it: the ramp's colour
    seg = frames.draw(g, cam, "Segmentation", frames.Overlay(), label_names=["a", "b"],
                      segment=lambda c: torch.where(torch.arange(c.width)[None, :].expand(c.height, -1) < 32, 0, 1))
    assert set(seg.legend) == {"a", "b"}
    mask = np.zeros((48, 64), bool)
    mask[10:30, 10:30] = True
    m = frames.draw(g, cam, "RGB", frames.Overlay(mask=mask)).image
    assert m[10, 15].tolist() == list(images.MASK)


def test_frames_reject_unknown_mode(two_blobs):
    with pytest.raises(ValueError, match="unknown mode"):
        frames.draw(*two_blobs, "X-ray", frames.Overlay())


def test_images_helpers():
    d = np.ones((4, 4), np.float32)
    a = np.ones((4, 4), np.float32)
    a[0, 0] = 0
    out = images.depth_image(d, a)
    assert out.dtype == np.uint8 and out[0, 0].tolist() == [0, 0, 0] and out[1, 1].sum() > 0
    m = np.zeros((5, 5), bool)
    m[1:4, 1:4] = True
    assert images.outline(m).sum() == 8
    assert images.resize_nearest(m, 10, 10).shape == (10, 10)
    assert "&lt;b&gt;" in images.legend_html(["<b>"], np.zeros((1, 3), np.uint8))


# -- the command ---------------------------------------------------------------------------------
def test_view_rejects_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["view", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a featgs run folder" in err


def test_view_help_mentions_prompts(capsys):
    with pytest.raises(SystemExit) as e:
        main(["view", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "--port" in out and "Shift+drag" in out


def test_fair_slots_serve_waiters_in_order():
    from featgs.viewer.worker import FairSlots

    slots = FairSlots(1)
    order, started = [], []
    slots.__enter__()  # hold the only slot

    def take(i):
        started.append(i)
        with slots:
            order.append(i)

    threads = []
    for i in range(5):
        t = threading.Thread(target=take, args=(i,))
        t.start()
        threads.append(t)
        while len(started) <= i:  # queue them one after another
            time.sleep(0.001)
        time.sleep(0.02)
    slots.__exit__(None, None, None)
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]


@pytest.mark.slow
def test_a_run_without_features_offers_colour_and_depth_only(tmp_path):
    from featgs.data.procedural import MakeConfig, make_scene, resolve_scene
    from featgs.train import TrainConfig
    from featgs.train.run import train_run
    from featgs.viewer import ViewerApp, ViewerConfig

    spec = resolve_scene("tabletop")
    make_scene(spec.read_text(), str(spec), tmp_path / "data", MakeConfig(size=16, views=4, test_views=1, points=200))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_run(tmp_path / "data", tmp_path / "run", TrainConfig(iters=2, teacher="none"), progress=False)
    finally:
        torch.set_num_threads(threads)
    app = ViewerApp(tmp_path / "run", ViewerConfig(port=0))
    assert app.modes == ["RGB", "Depth"]
    assert not (app.can_query or app.can_prompt or app.can_segment)
    assert len(app.cameras) == 4  # the training views, shown as frustums
    field, version = app.scene.snapshot()
    assert app.feature_colours(field, version) is None
    path = app.scene.save()
    assert path == tmp_path / "run" / "edits" / "edited-1.ply" and path.exists()
    assert main(["view", str(tmp_path / "run"), "--still-size", "8"]) == 2  # bad options: one line, exit 2
