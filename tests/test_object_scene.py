"""`featgs scene make object`: a transparent scene written in NeRF-synthetic layout, its
alpha and labels, the sphere rig, and the `background` / `rig sphere` / `defaults` statements."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import maximum_filter, minimum_filter

from featgs.cli import main
from featgs.data import load_scene
from featgs.data.procedural import MakeConfig, make_scene, parse_scene_spec, resolve_scene
from featgs.data.procedural.rig import sphere_cameras
from featgs.errors import FeatgsError

SMALL = ["--size", "40", "--views", "6", "--test-views", "3"]
SPHERE_RIG = "rig sphere target=0,0,0 distance=4 elevation=10:60 fov=40"


@pytest.fixture(scope="module")
def obj(tmp_path_factory):
    out = tmp_path_factory.mktemp("scene") / "obj"
    assert main(["scene", "make", "object", "--out", str(out), *SMALL]) == 0
    return out


@pytest.fixture(scope="module")
def ball(tmp_path_factory):
    """A single textured sphere: convex, so its alpha can be checked exactly."""
    text = f"scene ball\nbackground transparent\n{SPHERE_RIG}\nlight dir=0,0,1 intensity=0.5 shadow=0.5\n"
    text += "object ball sphere center=0.1,0,0 radius=0.6 color=0.8,0.2,0.2 texture=checker scale=0.15 contrast=0.5\n"
    out = tmp_path_factory.mktemp("scene") / "ball"
    summary = make_scene(text, "ball.txt", out, MakeConfig(size=32, views=4, test_views=2, supersample=3))
    assert summary["format"] == "blender" and summary["num_points"] == 0 and summary["labels"] == ["background", "ball"]
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _views(root: Path):
    """(alpha [H, W] uint8, labels [H, W] uint8) of every image."""
    for split in ("train", "test"):
        for frame in json.loads((root / f"transforms_{split}.json").read_text())["frames"]:
            rgba = np.asarray(Image.open(root / (frame["file_path"] + ".png")))
            yield rgba[..., 3], np.asarray(Image.open(root / frame["label_file_path"]))


def _mixed(labels: np.ndarray) -> np.ndarray:
    """[H, W] pixels whose 3x3 neighbourhood has both background (0) and object centres."""
    fg = labels > 0
    return maximum_filter(fg, 3) & ~minimum_filter(fg, 3, mode="nearest")


def test_nerf_synthetic_layout(obj):
    names = set(_files(obj))
    expected = {"transforms_train.json", "transforms_test.json", "labels.json", "scene.txt"}
    expected |= {f"train/r_{i}{s}.png" for i in range(6) for s in ("", "_labels")}
    expected |= {f"test/r_{i}{s}.png" for i in range(3) for s in ("", "_labels")}
    assert names == expected  # no point cloud, no depth
    for split, count in (("train", 6), ("test", 3)):
        meta = json.loads((obj / f"transforms_{split}.json").read_text())
        assert set(meta) == {"camera_angle_x", "frames"} and math.isclose(meta["camera_angle_x"], 0.6911, abs_tol=1e-3)
        assert [f["file_path"] for f in meta["frames"]] == [f"./{split}/r_{i}" for i in range(count)]
        assert [f["label_file_path"] for f in meta["frames"]] == [f"{split}/r_{i}_labels.png" for i in range(count)]
        assert all(np.asarray(f["transform_matrix"]).shape == (4, 4) for f in meta["frames"])
    with Image.open(obj / "train/r_0.png") as rgba, Image.open(obj / "train/r_0_labels.png") as labels:
        assert (rgba.mode, rgba.size, labels.mode, labels.size) == ("RGBA", (40, 40), "L", (40, 40))
    names = json.loads((obj / "labels.json").read_text())
    assert names["0"] == "background" and list(names) == [str(i) for i in range(len(names))]
    assert {"pedestal", "body", "arms", "head", "antenna", "flag"} <= set(names.values())
    assert (obj / "scene.txt").read_text() == resolve_scene("object").read_text()


def test_load_scene_reads_it_as_blender(obj):
    scene = load_scene(obj)
    assert scene.format == "blender" and len(scene.train) == 6 and len(scene.test) == 3
    assert scene.points is None and scene.point_colors is None
    assert scene.label_names[0] == "background" and "pedestal" in scene.label_names.values()
    assert {v.image_path.parent.name for v in scene.test} == {"test"}
    view = scene.train[0]
    labels = view.labels()
    assert view.image().shape == (40, 40, 3) and labels.shape == (40, 40)
    assert labels.min() == 0 and 0 < labels.max() < len(scene.label_names)
    assert math.isclose(float(view.camera.K[0, 0]), 20 / math.tan(math.radians(39.6 / 2)), rel_tol=1e-9)


def test_alpha_and_labels_agree(obj):
    counts = {"partial": 0, "partial_at_silhouette": 0, "interior": 0, "interior_opaque": 0}
    for alpha, labels in _views(obj):
        # an odd supersample (the scene's 3) samples the pixel centre, as the label does
        assert ((alpha == 0) == (labels == 0))[labels > 0].all()  # labelled pixels are covered
        assert (alpha[labels == 0] < 255).all()  # empty pixel centres: never fully covered
        assert (alpha == 0).any() and (alpha == 255).any()
        partial = (alpha > 0) & (alpha < 255)
        counts["partial"] += partial.sum()
        counts["partial_at_silhouette"] += (partial & _mixed(labels)).sum()
        interior = minimum_filter(labels > 0, 3, mode="nearest")
        counts["interior"] += interior.sum()
        counts["interior_opaque"] += (interior & (alpha == 255)).sum()
    # thin parts and narrow gaps of the toy make a few exceptions
    assert counts["partial_at_silhouette"] >= 0.97 * counts["partial"] > 0
    assert counts["interior_opaque"] >= 0.99 * counts["interior"] > 0


def test_convex_object_alpha_is_exact(ball):
    for alpha, labels in _views(ball):
        partial = (alpha > 0) & (alpha < 255)
        assert partial.any() and not (partial & ~_mixed(labels)).any()  # fractional only at silhouettes
        assert (alpha[minimum_filter(labels > 0, 3, mode="nearest")] == 255).all()  # opaque inside
        assert (alpha[~maximum_filter(labels > 0, 3)] == 0).all()  # empty away from it
        assert set(np.unique(labels)) == {0, 1}


@pytest.mark.parametrize("root", ["obj", "ball"])
def test_white_and_black_backgrounds_differ_only_where_transparent(root, request):
    folder = request.getfixturevalue(root)
    white = load_scene(folder, background=(1, 1, 1), normalize=False)
    black = load_scene(folder, background=(0, 0, 0), normalize=False)
    for vw, vb in zip(white.views, black.views):
        alpha = np.asarray(Image.open(vw.image_path))[..., 3]
        diff = (vw.image() - vb.image()).numpy()
        assert (diff[alpha == 255] == 0).all()
        assert np.allclose(diff[alpha < 255], (1.0 - alpha[alpha < 255] / 255.0)[:, None], atol=1e-6)
        rgba = np.asarray(Image.open(vw.image_path))
        assert (rgba[alpha == 0] == 0).all()  # empty pixels are 0,0,0,0


def test_same_seed_same_bytes_other_seed_other_cameras(obj, tmp_path):
    again = tmp_path / "again"
    assert main(["scene", "make", "object", "--out", str(again), *SMALL]) == 0
    assert _files(again) == _files(obj)
    other = tmp_path / "other"
    assert main(["scene", "make", "object", "--out", str(other), *SMALL, "--seed", "1"]) == 0
    a = json.loads((obj / "transforms_train.json").read_text())["frames"]
    b = json.loads((other / "transforms_train.json").read_text())["frames"]
    assert a[0]["transform_matrix"] != b[0]["transform_matrix"]


def test_cameras_on_the_sphere_looking_at_the_target(obj):
    eyes = {}
    for split in ("train", "test"):
        eyes[split] = []
        for frame in json.loads((obj / f"transforms_{split}.json").read_text())["frames"]:
            c2w = np.asarray(frame["transform_matrix"])
            eye, up, backward = c2w[:3, 3], c2w[:3, 1], c2w[:3, 2]  # OpenGL axes: looks along -z
            assert math.isclose(np.linalg.norm(eye), 4.0, rel_tol=1e-9)
            assert -backward @ (-eye) / np.linalg.norm(eye) > 1 - 1e-9  # at the origin exactly
            assert 5 - 1e-9 <= math.degrees(math.asin(eye[2] / 4.0)) <= 85 + 1e-9
            assert up[2] > 0 and abs(c2w[2, 0]) < 1e-9  # z up in the image, no roll
            eyes[split].append(eye)
    gaps = np.linalg.norm(np.asarray(eyes["train"])[:, None] - np.asarray(eyes["test"])[None], axis=-1)
    assert gaps.min() > 0.05  # test views are new positions


def test_sphere_rig_spreads_cameras_evenly_by_area():
    spec = parse_scene_spec("scene s\nrig sphere target=1,2,3 distance=2:3 elevation=-20:70 fov=40\nobject a sphere center=0,0,0 radius=1 color=1,1,1\n")
    cams = sphere_cameras(spec.rig, 50, 16, np.random.default_rng(0), "v")
    again = sphere_cameras(spec.rig, 50, 16, np.random.default_rng(0), "v")
    assert all(np.array_equal(a.camtoworld.numpy(), b.camtoworld.numpy()) for a, b in zip(cams, again))
    offsets = np.stack([c.camtoworld.numpy()[:3, 3] for c in cams]) - [1, 2, 3]
    dist = np.linalg.norm(offsets, axis=1)
    assert ((dist >= 2) & (dist <= 3)).all()
    sin_elev = offsets[:, 2] / dist
    low, high = math.sin(math.radians(-20)), math.sin(math.radians(70))
    bands = np.floor((sin_elev - low) / (high - low) * 50).astype(int)  # equal-area bands
    assert sorted(bands) == list(range(50))  # one camera per band
    for c, offset, d in zip(cams, offsets, dist):  # OpenCV: the camera looks along +z, at the target
        assert c.camtoworld.numpy()[:3, 2] @ -offset / d > 1 - 1e-9


def test_near_vertical_cameras_are_well_defined():
    spec = parse_scene_spec("scene s\nrig sphere target=0,0,0 distance=4 elevation=89.99 fov=40\nobject a sphere center=0,0,0 radius=1 color=1,1,1\n")
    for c in sphere_cameras(spec.rig, 8, 16, np.random.default_rng(0), "v"):
        R = c.camtoworld.numpy()[:3, :3]
        assert np.isfinite(R).all() and np.allclose(R.T @ R, np.eye(3), atol=1e-9)


def test_scene_defaults_and_flags():
    spec = parse_scene_spec(resolve_scene("object").read_text())
    assert spec.transparent and spec.labels[0] == "background"
    assert MakeConfig.for_scene(spec) == MakeConfig(size=100, views=100, test_views=25, supersample=3)
    assert MakeConfig.for_scene(spec, size=40, views=None, test_views=3).size == 40
    assert MakeConfig.for_scene(spec, size=40, views=None, test_views=3).views == 100
    tabletop = parse_scene_spec(resolve_scene("tabletop").read_text())
    assert MakeConfig.for_scene(tabletop) == MakeConfig() and not tabletop.transparent


def test_no_test_views_writes_no_test_file(tmp_path):
    out = tmp_path / "o"
    assert main(["scene", "make", "object", "--out", str(out), "--size", "16", "--views", "2", "--test-views", "0"]) == 0
    assert not (out / "transforms_test.json").exists() and not (out / "test").exists()


def test_opaque_scene_with_a_sphere_rig_still_needs_walls(tmp_path, capsys):
    path = tmp_path / "open.txt"
    path.write_text(f"scene open\n{SPHERE_RIG}\nobject a sphere center=0,0,0 radius=0.3 color=1,1,1\n")
    assert main(["scene", "make", str(path), "--out", str(tmp_path / "out"), "--size", "8", "--views", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "empty background" in err[0] and "background transparent" in err[0]


@pytest.mark.parametrize(
    "line, message",
    [
        ("background purple", "t.txt:3: unknown background 'purple'; expected none or transparent"),
        ("background", "t.txt:3: expected: background none|transparent"),
        ("rig sphere target=0,0,0 distance=4 elevation=10:95 fov=40", "t.txt:3: elevation: expected degrees -90 < MIN <= MAX < 90"),
        ("rig sphere target=0,0,0 distance=4 elevation=60:30 fov=40", "t.txt:3: elevation: expected degrees -90 < MIN <= MAX < 90"),
        ("rig sphere target=0,0,0 distance=4 elevation=-90:10 fov=40", "t.txt:3: elevation: expected degrees -90 < MIN <= MAX < 90"),
        ("rig sphere target=0,0,0 distance=4 elevation=up fov=40", "t.txt:3: elevation: expected MIN:MAX in degrees"),
        ("rig sphere target=0,0,0 distance=0:4 elevation=10:80 fov=40", "t.txt:3: distance: expected 0 < MIN <= MAX"),
        ("rig sphere target=0,0,0 elevation=10:80 fov=40", "t.txt:3: rig sphere: missing distance="),
        ("rig sphere target=0,0,0 radius=4 elevation=10:80 fov=40", "t.txt:3: unknown key 'radius' for rig sphere"),
        ("rig dome target=0,0,0 distance=4 elevation=10:80 fov=40", "t.txt:3: unknown rig 'dome'; expected orbit or sphere"),
        ("defaults size=4", "t.txt:3: size: expected an integer >= 8"),
        ("defaults views=ten", "t.txt:3: views: expected an integer, got 'ten'"),
        ("defaults seed=3", "t.txt:3: unknown key 'seed' for defaults"),
        ("defaults", "t.txt:3: expected: defaults KEY=N..."),
        ("object background sphere center=0,0,0 radius=1 color=1,1,1", "t.txt:3: label 'background' is reserved"),
    ],
)
def test_bad_lines_name_file_and_line(line, message):
    text = f"scene t\nbackground transparent\n{line}\n{SPHERE_RIG}\nobject a sphere center=0,0,0 radius=1 color=1,1,1\n"
    with pytest.raises(FeatgsError) as e:
        parse_scene_spec(text, "t.txt")
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_scene_file_from_the_cli(tmp_path, capsys):
    path = tmp_path / "bad.txt"
    path.write_text(f"scene t\nbackground purple\n{SPHERE_RIG}\nobject a sphere center=0,0,0 radius=1 color=1,1,1\n")
    assert main(["scene", "make", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{path}:2: unknown background" in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_lists_the_object_and_documents_the_layout(capsys):
    assert main(["scene", "list"]) == 0
    out = capsys.readouterr().out
    assert "object: pedestal" in out and "NeRF-synthetic" in out and "tabletop:" in out
    with pytest.raises(SystemExit):
        main(["scene", "make", "--help"])
    help_text = capsys.readouterr().out
    assert "NeRF-synthetic" in help_text and "transforms_train.json" in help_text and "background transparent" in help_text


def test_lerf_ovs_export_names_blender_views_so_eval_finds_them(obj, tmp_path):
    """Blender-layout views are named after split and image (test_r_0 for test/r_0.png; train
    has its own r_0.png): the exported frame names must be those view names, which is how
    `featgs eval --protocol lerf-ovs` finds a frame's camera."""
    out = tmp_path / "lerf"
    assert main(["scene", "export", str(obj), "--format", "lerf-ovs", "--out", str(out)]) == 0
    views = {v.name for v in load_scene(obj).views}
    docs = sorted(out.glob("*.json"))
    assert docs
    for doc in docs:
        name = json.loads(doc.read_text())["info"]["name"]
        assert Path(name).stem == doc.stem and doc.stem in views, (doc.name, name)
