"""Loaders: the same generated scene read from every format gives the same cameras."""

from __future__ import annotations

import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from featgs.cli import main
from featgs.data import initial_points, load_scene
from featgs.data.distortion import distort_pixels, undistort_pixels
from featgs.data.scene import transform_points
from data_builders import (
    blender_alpha,
    distort_transforms,
    make_tabletop,
    read_transforms,
    to_blender,
    to_colmap,
)

DIST = (0.25, 0.05, 0.004, -0.003)  # pincushion: the pinhole image reaches past the original


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    src = make_tabletop(root / "transforms")
    return {
        "transforms": src,
        "blender": to_blender(src, root / "blender"),
        "colmap-bin": to_colmap(src, root / "colmap_bin", binary=True),
        "colmap-txt": to_colmap(src, root / "colmap_txt", binary=False, model="SIMPLE_PINHOLE", sparse="sparse"),
    }


def _by_name(scene):
    return {v.name: v for v in scene.views}


def test_transforms_reads_split_labels_depth_points(datasets):
    src = datasets["transforms"]
    meta = read_transforms(src)
    scene = load_scene(src, normalize=False)
    assert scene.format == "transforms" and scene.num_skipped == 0
    assert [f"images/{v.name}.png" for v in scene.train] == meta["train_filenames"]
    assert [f"images/{v.name}.png" for v in scene.test] == meta["test_filenames"]
    assert scene.label_names[0] == "floor" and "green apple" in scene.label_names.values()
    view = scene.train[0]
    image, labels, depth = view.image(), view.labels(), view.depth()
    assert image.shape == (32, 32, 3) and image.dtype == torch.float32 and 0 <= image.min() and image.max() <= 1
    assert labels.shape == (32, 32) and labels.dtype == torch.int64 and set(labels.unique().tolist()) <= set(scene.label_names)
    assert depth.shape == (32, 32) and bool((depth > 0).all())
    # depth is z-depth: the initial points, projected, land where the depth map agrees
    uv, z = view.camera.project(scene.points.double())
    inside = (z > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < 32) & (uv[:, 1] >= 0) & (uv[:, 1] < 32)
    at = depth[uv[inside, 1].long(), uv[inside, 0].long()]
    assert float((at - z[inside]).abs().median()) < 0.02
    assert scene.points.shape == (500, 3) and scene.point_colors.shape == (500, 3)


@pytest.mark.parametrize("fmt", ["blender", "colmap-bin", "colmap-txt"])
@pytest.mark.parametrize("normalize", [False, True])
def test_cameras_agree_across_formats(datasets, fmt, normalize):
    ref = load_scene(datasets["transforms"], normalize=normalize)
    other = load_scene(datasets[fmt], normalize=normalize)
    ref_views, other_views = _by_name(ref), _by_name(other)
    assert sorted(ref_views) == sorted(other_views)
    points = torch.tensor(np.random.default_rng(0).uniform(-1, 1, (50, 3)) * [1.0, 1.0, 0.3] + [0, 0, 0.8])
    for name, a in ref_views.items():
        b = other_views[name]
        assert (a.camera.width, a.camera.height) == (b.camera.width, b.camera.height)
        assert torch.allclose(ref.to_input_frame(a.camera.center), other.to_input_frame(b.camera.center), atol=1e-4)
        # the same input-frame points, moved into each scene's own frame, project alike
        uv_a, _ = a.camera.project(transform_points(ref.normalization, points))
        uv_b, _ = b.camera.project(transform_points(other.normalization, points))
        assert torch.allclose(uv_a, uv_b, atol=1e-4)
    if fmt.startswith("colmap"):
        assert torch.allclose(ref.to_input_frame(ref.points), other.to_input_frame(other.points), atol=1e-4)
        assert torch.allclose(ref.point_colors, other.point_colors)


def test_colmap_split_every_8th_by_name(datasets):
    scene = load_scene(datasets["colmap-bin"])
    names = sorted(v.name for v in scene.views)
    assert sorted(v.name for v in scene.test) == names[::8]
    assert scene.points is not None and scene.label_names is None


def test_blender_composites_rgba_on_background(datasets):
    src = datasets["transforms"]
    for background in ((1.0, 1.0, 1.0), (0.0, 0.5, 0.0)):
        scene = load_scene(datasets["blender"], background=background)
        assert scene.format == "blender" and scene.points is None
        view = _by_name(scene)["train_0001"]
        rgb = np.asarray(Image.open(src / "images/train_0001.png"), dtype=np.float32) / 255
        alpha = blender_alpha(np.asarray(Image.open(src / "labels/train_0001.png")))[..., None] / np.float32(255)
        expected = rgb * alpha + np.asarray(background, np.float32) * (1 - alpha)
        assert np.allclose(view.image().numpy(), expected, atol=1e-6)


def test_blender_without_test_file_holds_out_every_8th(datasets, tmp_path):
    dst = to_blender(datasets["transforms"], tmp_path / "b", with_test_file=False)
    scene = load_scene(dst)
    frames = json.loads((dst / "transforms_train.json").read_text())["frames"]
    assert len(scene.train) + len(scene.test) == len(frames) == 10
    assert [v.name for v in scene.test] == [f["file_path"].split("/")[-1] for f in frames[::8]]
    (dst / f"{frames[3]['file_path']}.png").unlink()  # a missing image never shifts the split
    again = load_scene(dst)
    assert again.num_skipped == 1 and [v.name for v in again.test] == [v.name for v in scene.test]
    assert len(again.train) == len(scene.train) - 1


def test_missing_frames_are_skipped_and_counted(datasets, tmp_path, caplog, capsys):
    dst = tmp_path / "missing"
    shutil.copytree(datasets["transforms"], dst)
    meta = read_transforms(dst)
    for k in range(3):
        meta["frames"].append(dict(meta["frames"][0], file_path=f"images/gone_{k}"))
    meta["frames"][1]["file_path"] = "images/train_0001"  # no extension: still found
    (dst / "transforms.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        scene = load_scene(dst)
    assert scene.num_skipped == 3 and len(scene.train) == 8 and len(scene.test) == 2
    assert len(caplog.records) == 1 and "skipped 3 of 13" in caplog.records[0].getMessage()
    assert main(["data", "info", str(dst), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["num_skipped"] == 3


def test_distortion_round_trip():
    K = np.array([[40.0, 0, 17.0], [0, 42.0, 15.0], [0, 0, 1]])
    uv = np.random.default_rng(0).uniform(0, 32, (100, 2))
    assert np.allclose(undistort_pixels(distort_pixels(uv, K, DIST), K, DIST), uv, atol=1e-8)


@pytest.mark.parametrize("fmt", ["transforms", "colmap"])
def test_distorted_images_are_undistorted(datasets, tmp_path, fmt):
    src = datasets["transforms"]
    dst = distort_transforms(src, tmp_path / "distorted", DIST)
    if fmt == "colmap":
        dst = to_colmap(dst, tmp_path / "distorted_colmap", binary=True, model="OPENCV", dist=DIST)
    scene = load_scene(dst, normalize=False)
    view = _by_name(scene)["train_0002"]
    assert torch.allclose(view.camera.distortion, torch.tensor(DIST, dtype=torch.float64))
    mask = view.mask()
    assert mask is not None and 0.5 < mask.float().mean() < 0.95  # the corners lie outside the original image
    m = mask.numpy()
    original = np.asarray(Image.open(src / "images/train_0002.png"), dtype=np.float32) / 255
    distorted = np.asarray(Image.open(dst / "images/train_0002.png"), dtype=np.float32) / 255
    error = np.abs(view.image().numpy() - original).max(-1)[m]
    assert error.mean() < 0.8 * np.abs(distorted - original).max(-1)[m].mean()  # resampled twice, bilinear
    if fmt == "transforms":
        labels = np.asarray(Image.open(src / "labels/train_0002.png"))
        assert (view.labels().numpy() == labels)[m].mean() > 0.99
        assert (np.asarray(Image.open(dst / "labels/train_0002.png")) == labels)[m].mean() < 0.98


def test_downscale_uses_an_on_disk_cache(datasets, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(datasets["transforms"], dst)
    full = load_scene(dst, normalize=False)
    half = load_scene(dst, downscale=2, normalize=False)
    v_full, v_half = full.train[3], half.train[3]
    assert (v_half.camera.width, v_half.camera.height) == (16, 16)
    assert torch.allclose(v_half.camera.K[:2], v_full.camera.K[:2] / 2)
    assert v_half.image_path == dst / "images_2" / v_full.image_path.name
    image = v_half.image()
    assert image.shape == (16, 16, 3)
    area = v_full.image().reshape(16, 2, 16, 2, 3).mean(dim=(1, 3))
    assert (image - area).abs().max() < 2.5 / 255
    assert v_half.labels().shape == (16, 16) and v_half.depth().shape == (16, 16)
    stamp = v_half.image_path.stat().st_mtime_ns
    load_scene(dst, downscale=2)
    assert v_half.image_path.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert main(["data", "info", str(dst), "--downscale", "2", "--json"]) == 0


def test_colmap_images_of_different_sizes(datasets, tmp_path):
    from data_builders import opencv_camtoworld, rotation_to_quat, write_colmap_model

    src = datasets["transforms"]
    meta = read_transforms(src)
    dst = tmp_path / "sizes"
    (dst / "images").mkdir(parents=True)
    cameras, images = [], []
    for i, frame in enumerate(meta["frames"][:3]):
        s = 1 + i % 2  # every other image at half size, with its own camera
        image = Image.open(src / frame["file_path"])
        image.resize((32 // s, 32 // s), Image.Resampling.BOX).save(dst / "images" / f"im{i}.png")
        f = meta["fl_x"] / s
        model = ("PINHOLE", "SIMPLE_RADIAL", "RADIAL")[i]
        params = {"PINHOLE": [f, f, 16 / s, 16 / s], "SIMPLE_RADIAL": [f, 16 / s, 16 / s, 0.01], "RADIAL": [f, 16 / s, 16 / s, 0.01, -0.002]}[model]
        cameras.append({"id": i + 1, "model": model, "width": 32 // s, "height": 32 // s, "params": params})
        c2w = opencv_camtoworld(frame)
        R = c2w[:3, :3].T
        images.append({"id": i + 1, "qvec": rotation_to_quat(R), "tvec": -R @ c2w[:3, 3], "camera_id": i + 1, "name": f"im{i}.png"})
    write_colmap_model(dst / "sparse" / "0", cameras, images, np.zeros((0, 3)), np.zeros((0, 3), np.uint8), binary=True)
    scene = load_scene(dst)
    sizes = {v.name: (v.camera.width, v.image().shape) for v in scene.views}
    assert sizes == {"im0": (32, (32, 32, 3)), "im1": (16, (16, 16, 3)), "im2": (32, (32, 32, 3))}
    dist = {v.name: v.camera.distortion for v in scene.views}
    assert dist["im0"] is None and dist["im1"].tolist() == [0.01, 0, 0, 0] and dist["im2"].tolist() == [0.01, -0.002, 0, 0]


def test_normalization_puts_cameras_in_the_unit_sphere(datasets):
    raw = load_scene(datasets["transforms"], normalize=False)
    scene = load_scene(datasets["transforms"])
    centres = torch.stack([v.camera.center for v in scene.views])
    assert abs(float(centres.norm(dim=1).max()) - 1.0) < 1e-9 and float(centres.mean(0).norm()) < 1e-9
    assert torch.allclose(scene.to_input_frame(scene.points), raw.points, atol=1e-5)
    scale = float(scene.normalization[0, 0])
    assert torch.allclose(scene.train[0].depth(), raw.train[0].depth() * scale)
    rot_raw, rot = raw.train[0].camera.camtoworld[:3, :3], scene.train[0].camera.camtoworld[:3, :3]
    assert torch.allclose(rot_raw, rot)


def test_initial_points(datasets):
    scene = load_scene(datasets["transforms"])
    start = initial_points(scene, 100)
    assert start.points is scene.points and start.colors is scene.point_colors and start.kind == "points"
    assert initial_points(scene, 100, init="random").kind in ("object", "frustum")
    blender = load_scene(datasets["blender"])
    first = initial_points(blender, 300, seed=1)
    a, ca = first.points, first.colors
    b = initial_points(blender, 300, seed=1).points
    assert a.shape == (300, 3) and ca.shape == (300, 3) and torch.equal(a, b)
    assert not torch.equal(a, initial_points(blender, 300, seed=2).points)
    seen = torch.zeros(300, dtype=torch.bool)
    for v in blender.train:
        uv, z = v.camera.project(a.double())
        seen |= (z > 0) & (uv >= 0).all(1) & (uv[:, 0] <= v.camera.width) & (uv[:, 1] <= v.camera.height)
    assert bool(seen.all())
    assert 0 <= float(ca.min()) and float(ca.max()) <= 1


def test_data_info_json_and_table(datasets, capsys):
    expected = {"transforms": (True, True), "blender": (False, False), "colmap-bin": (True, False), "colmap-txt": (True, False)}
    for fmt, path in datasets.items():
        assert main(["data", "info", str(path), "--json"]) == 0
        info = json.loads(capsys.readouterr().out)
        assert info["format"] == fmt.split("-")[0]
        assert (info["num_train"] + info["num_test"], info["num_skipped"], info["width"], info["height"]) == (10, 0, 32, 32)
        assert (info["has_points"], info["has_labels"]) == expected[fmt]
    assert main(["data", "info", str(datasets["transforms"])]) == 0
    table = capsys.readouterr().out
    assert "format" in table and "transforms" in table and "num_train" in table


def test_instant_ngp_style_masks_npy_depth_and_per_frame_intrinsics(datasets, tmp_path):
    """camera_angle_x without w/h, extensions in file_path, no split lists, per-frame
    overrides, nerfstudio masks and float .npy depth."""
    src = datasets["transforms"]
    meta = read_transforms(src)
    dst = tmp_path / "ngp"
    shutil.copytree(src / "images", dst / "images")
    (dst / "masks").mkdir()
    (dst / "depth").mkdir()
    frames = []
    for i, frame in enumerate(meta["frames"]):
        out = {"file_path": frame["file_path"], "transform_matrix": frame["transform_matrix"]}
        if i == 1:
            out["fl_x"] = 2 * meta["fl_x"]  # a per-frame override
        if i == 2:
            mask = np.full((32, 32), 255, np.uint8)
            mask[:, :10] = 0
            Image.fromarray(mask).save(dst / "masks" / "m2.png")
            out["mask_path"] = "masks/m2.png"
            np.save(dst / "depth" / "d2.npy", np.full((16, 16), 2.5, np.float32))  # any size: resized
            out["depth_file_path"] = "depth/d2.npy"
        frames.append(out)
    angle = 2 * np.arctan(0.5 * meta["w"] / meta["fl_x"])
    (dst / "transforms.json").write_text(json.dumps({"camera_angle_x": angle, "depth_unit_scale_factor": 1.0, "frames": frames}))
    scene = load_scene(dst, normalize=False)
    assert scene.format == "transforms" and scene.points is None and scene.label_names is None
    assert [v.name for v in scene.test] == ["train_0000", "test_0000"]  # frames 0 and 8
    cams = {v.name: v.camera for v in scene.views}
    assert abs(cams["train_0000"].fx - meta["fl_x"]) < 1e-9 and abs(cams["train_0001"].fx - 2 * meta["fl_x"]) < 1e-9
    assert abs(cams["train_0001"].fy - 2 * meta["fl_x"]) < 1e-9  # fl_y defaults to fl_x: square pixels
    view = _by_name(scene)["train_0002"]
    mask = view.mask()
    assert mask.shape == (32, 32) and not mask[:, :10].any() and mask[:, 10:].all()
    assert torch.equal(view.depth(), torch.full((32, 32), 2.5))
    assert _by_name(scene)["train_0003"].mask() is None and _by_name(scene)["train_0003"].depth() is None
