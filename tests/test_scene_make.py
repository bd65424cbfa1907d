"""`featgs scene make`: the built-in tabletop scene, its files, determinism and errors."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featgs.cli import main
from featgs.data.procedural import load_scene_spec, resolve_scene
from featgs.plyio import read_ply_vertices

SMALL = ["--size", "32", "--views", "8", "--test-views", "2", "--points", "400"]


@pytest.fixture(scope="module")
def tabletop(tmp_path_factory):
    out = tmp_path_factory.mktemp("scene") / "tt"
    assert main(["scene", "make", "tabletop", "--out", str(out), *SMALL]) == 0
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _components(mask: np.ndarray) -> int:
    """Number of 4-connected regions of True pixels."""
    seen = np.zeros_like(mask)
    count = 0
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        count += 1
        seen[start] = True
        queue = deque([start])
        while queue:
            i, j = queue.popleft()
            for a, b in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                if 0 <= a < mask.shape[0] and 0 <= b < mask.shape[1] and mask[a, b] and not seen[a, b]:
                    seen[a, b] = True
                    queue.append((a, b))
    return count


def test_layout_and_transforms_json(tabletop):
    meta = json.loads((tabletop / "transforms.json").read_text())
    assert meta["camera_model"] == "OPENCV" and (meta["w"], meta["h"]) == (32, 32)
    assert meta["depth_unit_scale_factor"] == 0.001 and meta["ply_file_path"] == "points3D.ply"
    assert len(meta["frames"]) == 10 and len(meta["train_filenames"]) == 8 and len(meta["test_filenames"]) == 2
    fov = 2 * np.degrees(np.arctan(0.5 * meta["w"] / meta["fl_x"]))
    assert 50 <= fov <= 60
    for frame in meta["frames"]:
        for key in ("file_path", "depth_file_path", "label_file_path"):
            assert (tabletop / frame[key]).is_file()
        assert np.asarray(frame["transform_matrix"]).shape == (4, 4)
    modes = {}
    for key in ("file_path", "depth_file_path", "label_file_path"):
        with Image.open(tabletop / meta["frames"][0][key]) as image:
            assert image.size == (32, 32)
            modes[key] = image.mode
    assert modes["file_path"] == "RGB" and modes["depth_file_path"].startswith("I") and modes["label_file_path"] == "L"
    ply = read_ply_vertices(tabletop / "points3D.ply")
    assert set(ply) == {"x", "y", "z", "red", "green", "blue"} and len(ply["x"]) == 400
    assert ply["x"].dtype == np.float32 and ply["red"].dtype == np.uint8
    assert (np.abs(ply["x"]) < 2.6).all() and (ply["z"] > -0.05).all() and (ply["z"] < 2.45).all()
    assert (tabletop / "scene.txt").read_text() == resolve_scene("tabletop").read_text()


def test_cameras_look_at_the_table_from_above(tabletop):
    meta = json.loads((tabletop / "transforms.json").read_text())
    for frame in meta["frames"]:
        c2w = np.asarray(frame["transform_matrix"])
        eye, backward = c2w[:3, 3], c2w[:3, 2]  # OpenGL: the camera looks along -z
        assert 1.1 < eye[2] < 1.75 and 0.85 < np.hypot(eye[0], eye[1]) < 1.55
        to_target = np.array([0, 0, 0.8]) - eye
        cos = -backward @ to_target / np.linalg.norm(to_target)
        assert cos > 0.99  # looks at the table centre, up to the rig's jitter


def test_labels_cover_every_pixel_and_name_the_objects(tabletop):
    names = json.loads((tabletop / "labels.json").read_text())
    assert list(names) == [str(i) for i in range(len(names))]
    objects = set(names.values()) - {"floor", "wall", "ceiling", "table"}
    assert len(objects) >= 6 and {"green apple", "red mug", "tomato", "lamp"} <= objects
    for path in sorted((tabletop / "labels").glob("*.png")):
        labels = np.asarray(Image.open(path))
        assert labels.max() < len(names)  # no unlabelled background anywhere
        depth = np.asarray(Image.open(tabletop / "depth" / path.name))
        assert (depth > 0).all()


def test_one_label_has_two_separate_instances(tabletop):
    spec = load_scene_spec(resolve_scene("tabletop"))
    counts = spec.instances_per_label()
    assert counts["green apple"] == 2
    apple = spec.labels.index("green apple")
    # seen as two separate regions in some view (at a size where each apple spans pixels)
    out = tabletop.parent / "tt64"
    assert main(["scene", "make", "tabletop", "--out", str(out), "--size", "64", "--views", "6", "--test-views", "0", "--points", "0"]) == 0
    regions = [_components(np.asarray(Image.open(p)) == apple) for p in sorted((out / "labels").glob("*.png"))]
    assert 2 in regions


def test_similar_colours_with_different_labels():
    spec = load_scene_spec(resolve_scene("tabletop"))
    color = {spec.labels[p.label_id]: np.asarray(p.material.color) for p in spec.primitives}
    assert np.abs(color["red mug"] - color["tomato"]).max() < 0.1


def test_same_seed_same_bytes_other_seed_other_cameras(tabletop, tmp_path):
    again = tmp_path / "again"
    assert main(["scene", "make", "tabletop", "--out", str(again), *SMALL]) == 0
    assert _files(again) == _files(tabletop)
    other = tmp_path / "other"
    assert main(["scene", "make", "tabletop", "--out", str(other), *SMALL, "--seed", "1"]) == 0
    a = json.loads((tabletop / "transforms.json").read_text())["frames"]
    b = json.loads((other / "transforms.json").read_text())["frames"]
    assert a[0]["transform_matrix"] != b[0]["transform_matrix"]


def test_existing_folder_needs_force(tabletop, tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["scene", "make", "tabletop", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--force" in err[0] and str(out) in err[0]
    assert (out / "keep.txt").read_text() == "mine"
    assert main(["scene", "make", "tabletop", "--out", str(out), *SMALL, "--force"]) == 0
    assert not (out / "keep.txt").exists() and (out / "transforms.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]  # no temporary folders left


@pytest.mark.parametrize(
    "args, expected",
    [
        (["nosuchscene"], "unknown scene 'nosuchscene'"),
        (["tabletop", "--size", "2"], "--size"),
        (["tabletop", "--views", "0"], "--views"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path, capsys, args, expected):
    assert main(["scene", "make", *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0]
    assert not (tmp_path / "x").exists()


def test_scene_list(capsys):
    assert main(["scene", "list"]) == 0
    assert "tabletop:" in capsys.readouterr().out
