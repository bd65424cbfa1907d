"""Bad datasets: one line on stderr naming the file and what was expected, exit code 2."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from featgs.cli import main
from featgs.data import load_scene
from featgs.errors import FeatgsError
from data_builders import make_tabletop, read_transforms, to_blender, to_colmap


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    root = tmp_path_factory.mktemp("good")
    src = make_tabletop(root / "transforms", size=16, views=4, test_views=1, points=50)
    return {"transforms": src, "colmap": to_colmap(src, root / "colmap", binary=False), "blender": to_blender(src, root / "blender")}


def _copy(good, fmt, tmp_path) -> Path:
    return Path(shutil.copytree(good[fmt], tmp_path / fmt))


def _edit_transforms(good, tmp_path, edit) -> Path:
    dst = _copy(good, "transforms", tmp_path)
    meta = read_transforms(dst)
    edit(meta)
    (dst / "transforms.json").write_text(json.dumps(meta))
    return dst


def _case_unknown_layout(good, tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", ["unknown dataset layout", "transforms.json", "sparse/"]


def _case_not_found(good, tmp_path):
    return tmp_path / "nowhere", ["dataset folder not found"]


def _case_malformed_json(good, tmp_path):
    dst = _copy(good, "transforms", tmp_path)
    (dst / "transforms.json").write_text('{"frames": [')
    return dst, ["transforms.json", "malformed JSON", "expected"]


def _case_json_not_object(good, tmp_path):
    dst = _copy(good, "transforms", tmp_path)
    (dst / "transforms.json").write_text("[1, 2]")
    return dst, ["transforms.json", "top level is an array"]


def _case_json_null(good, tmp_path):
    dst = _copy(good, "transforms", tmp_path)
    (dst / "transforms.json").write_text("null")
    return dst, ["transforms.json", "top level is null; expected"]


def _case_frame_without_matrix(good, tmp_path):
    return _edit_transforms(good, tmp_path, lambda m: m["frames"][2].pop("transform_matrix")), ["frames[2]", "transform_matrix"]


def _case_bad_matrix(good, tmp_path):
    def edit(m):
        m["frames"][1]["transform_matrix"] = [[1, 0], [0, 1]]

    return _edit_transforms(good, tmp_path, edit), ["frames[1]", "4x4"]


def _case_no_usable_frames(good, tmp_path):
    dst = _copy(good, "transforms", tmp_path)
    shutil.rmtree(dst / "images")
    return dst, ["transforms.json", "no usable frames"]


def _case_unreadable_image(good, tmp_path):
    dst = _copy(good, "transforms", tmp_path)
    (dst / "images" / "train_0001.png").write_bytes(b"this is not a PNG")
    return dst, ["train_0001.png", "cannot read image", "expected a PNG or JPEG"]


def _case_transforms_fisheye(good, tmp_path):
    def edit(m):
        m["camera_model"] = "OPENCV_FISHEYE"

    return _edit_transforms(good, tmp_path, edit), ["transforms.json", "OPENCV_FISHEYE", "expected one of"]


def _case_no_focal(good, tmp_path):
    def edit(m):
        m.pop("fl_x")
        m.pop("fl_y")

    return _edit_transforms(good, tmp_path, edit), ["frames[0]", "fl_x or camera_angle_x"]


def _case_size_mismatch(good, tmp_path):
    def edit(m):
        m["w"] = 20

    return _edit_transforms(good, tmp_path, edit), ["image is 16x16", "expected 20x16"]


def _case_missing_label_file(good, tmp_path):
    def edit(m):
        m["frames"][0]["label_file_path"] = "labels/nope.png"

    return _edit_transforms(good, tmp_path, edit), ["frames[0]", "label_file_path", "not found"]


def _case_bad_labels_json(good, tmp_path):
    dst = _copy(good, "transforms", tmp_path)
    (dst / "labels.json").write_text('{"zero": "floor"}')
    return dst, ["labels.json", "not an integer label id"]


def _case_bad_ply(good, tmp_path):
    dst = _copy(good, "transforms", tmp_path)
    (dst / "points3D.ply").write_bytes(b"garbage")
    return dst, ["points3D.ply"]


def _case_colmap_fisheye_txt(good, tmp_path):
    dst = _copy(good, "colmap", tmp_path)
    cams = dst / "sparse" / "0" / "cameras.txt"
    cams.write_text("1 OPENCV_FISHEYE 16 16 15 15 8 8 0.1 0.01 0 0\n")
    return dst, ["cameras.txt", "OPENCV_FISHEYE", "not supported"]


def _case_colmap_fisheye_bin(good, tmp_path):
    dst = to_colmap(good["transforms"], tmp_path / "fisheye", binary=True, model="OPENCV_FISHEYE")
    return dst, ["cameras.bin", "OPENCV_FISHEYE", "not supported"]


def _case_colmap_truncated_bin(good, tmp_path):
    dst = to_colmap(good["transforms"], tmp_path / "trunc", binary=True)
    cams = dst / "sparse" / "0" / "cameras.bin"
    cams.write_bytes(cams.read_bytes()[:20])
    return dst, ["cameras.bin", "truncated or corrupt"]


def _case_colmap_huge_point_count_bin(good, tmp_path):
    dst = to_colmap(good["transforms"], tmp_path / "huge", binary=True)
    points = dst / "sparse" / "0" / "points3D.bin"
    points.write_bytes(struct.pack("<Q", 2**40) + points.read_bytes()[8:])
    return dst, ["points3D.bin", "claims 1099511627776 records"]


def _case_colmap_nan_point_txt(good, tmp_path):
    dst = _copy(good, "colmap", tmp_path)
    (dst / "sparse" / "0" / "points3D.txt").write_text("1 nan 0 0 10 20 30 0.5\n")
    return dst, ["sparse/0", "unreadable COLMAP model"]


def _case_colmap_unknown_camera(good, tmp_path):
    dst = _copy(good, "colmap", tmp_path)
    (dst / "sparse" / "0" / "cameras.txt").write_text("7 PINHOLE 16 16 15 15 8 8\n")
    return dst, ["images.txt", "uses camera 1", "cameras.txt lacks"]


def _case_colmap_no_images(good, tmp_path):
    dst = _copy(good, "colmap", tmp_path)
    shutil.rmtree(dst / "images")
    return dst, ["images.txt", "no usable images"]


def _case_colmap_no_model(good, tmp_path):
    dst = _copy(good, "colmap", tmp_path)
    shutil.rmtree(dst / "sparse" / "0")
    (dst / "sparse").mkdir(exist_ok=True)
    return dst, ["cameras.txt", "file not found", "COLMAP model"]


def _case_blender_bad_angle(good, tmp_path):
    dst = _copy(good, "blender", tmp_path)
    meta = json.loads((dst / "transforms_train.json").read_text())
    meta["camera_angle_x"] = "wide"
    (dst / "transforms_train.json").write_text(json.dumps(meta))
    return dst, ["transforms_train.json", "camera_angle_x", "finite number"]


CASES = [v for k, v in sorted(globals().items()) if k.startswith("_case_")]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__[6:] for c in CASES])
def test_bad_dataset_is_one_line_exit_2(good, tmp_path, capsys, case):
    path, expected = case(good, tmp_path)
    assert main(["data", "info", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("featgs: error: ")
    for text in expected:
        assert text in lines[0], lines[0]
    with pytest.raises(FeatgsError):
        load_scene(path)


def test_bad_downscale_and_background(good, capsys):
    assert main(["data", "info", str(good["transforms"]), "--downscale", "0.5"]) == 2
    assert "--downscale" in capsys.readouterr().err
    with pytest.raises(FeatgsError, match="background"):
        load_scene(good["transforms"], background=(2.0, 0.0, 0.0))


def test_truncated_image_fails_when_read(good, tmp_path):
    dst = _copy(good, "transforms", tmp_path)
    path = dst / "images" / "train_0000.png"
    path.write_bytes(path.read_bytes()[:-40])  # header intact, pixel data cut
    scene = load_scene(dst)
    with pytest.raises(FeatgsError, match="train_0000.png: cannot read image"):
        scene.train[0].image()
