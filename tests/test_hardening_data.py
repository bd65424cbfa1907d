"""Hostile or careless datasets, camera files and run folders ("Hardening", data and training):
the downscale cache never writes over a user's file, and bad input is one line and exit 2
with nothing half-written."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from featgs.camera import Camera
from featgs.cli import main
from featgs.data import load_scene
from featgs.errors import FeatgsError
from data_builders import make_tabletop, read_transforms, to_colmap

TINY_TRAIN = ["--teacher", "none", "--iters", "4", "--checkpoint-every", "2", "--quiet"]


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """A 32-pixel tabletop dataset: 5 views, images/train_000N.png and images/test_0000.png."""
    return make_tabletop(tmp_path_factory.mktemp("small") / "data", size=32, views=4, test_views=1, points=50)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """A 16-pixel tabletop dataset for the training tests (1000 points: a checkpoint > 64 KiB)."""
    return make_tabletop(tmp_path_factory.mktemp("tiny") / "data", size=16, views=4, test_views=1, points=1000)


@pytest.fixture(autouse=True)
def user_cache(tmp_path, monkeypatch) -> Path:
    """Downscaled copies that go to the per-user cache go to this test's own folder."""
    cache = tmp_path / "xdg-cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return cache / "featgs" / "downscaled"


def _copy(src: Path, dst: Path) -> Path:
    return Path(shutil.copytree(src, dst))


def _edit(root: Path, edit) -> Path:
    meta = read_transforms(root)
    edit(meta)
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` and its hash."""
    return {str(p.relative_to(root)): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _area_half(path: Path) -> np.ndarray:
    """[H/2, W/2, 3] the RGB image at ``path`` averaged over 2x2 blocks, in 0..1."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    h, w = rgb.shape[:2]
    return rgb.reshape(h // 2, 2, w // 2, 2, 3).mean(axis=(1, 3))


def _one_line_error(capsys, *needles: str) -> str:
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featgs: error: "), captured.err
    assert "Traceback" not in captured.err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- 1. the downscale cache never writes where a source lives -------------------------------

def test_dotdot_path_never_overwrites_its_source(small, tmp_path):
    root = _copy(small, tmp_path / "ds")
    victim = root / "victim.png"
    shutil.copyfile(root / "images" / "train_0001.png", victim)
    before = _sha(victim)

    def edit(meta):
        frame = next(f for f in meta["frames"] if f["file_path"] == "images/train_0001.png")
        frame["file_path"] = "images/../victim.png"
        for key in ("train_filenames", "test_filenames"):
            meta[key] = ["images/../victim.png" if n == "images/train_0001.png" else n for n in meta.get(key, [])]

    _edit(root, edit)
    scene = load_scene(root, downscale=2, normalize=False)
    assert _sha(victim) == before and Image.open(victim).size == (32, 32)
    view = next(v for v in scene.views if v.name == "victim")
    assert view.image_path.resolve() != victim.resolve()
    assert np.abs(view.image().numpy() - _area_half(victim)).max() < 2.5 / 255


def test_same_file_names_outside_the_dataset_get_their_own_copies(small, tmp_path):
    root = _copy(small, tmp_path / "ds")
    outside = {}
    for folder, frame_image in (("a", "train_0001.png"), ("b", "train_0002.png")):
        (tmp_path / folder).mkdir()
        outside[folder] = tmp_path / folder / "img.png"
        shutil.copyfile(root / "images" / frame_image, outside[folder])
    assert _sha(outside["a"]) != _sha(outside["b"])

    def edit(meta):
        for frame in meta["frames"]:
            for folder, frame_image in (("a", "train_0001.png"), ("b", "train_0002.png")):
                if frame["file_path"] == f"images/{frame_image}":
                    frame["file_path"] = str(outside[folder])
        meta.pop("train_filenames", None)
        meta.pop("test_filenames", None)

    _edit(root, edit)
    scene = load_scene(root, downscale=2, normalize=False)
    views = {v.name: v for v in scene.views}
    assert {"a_img", "b_img"} <= set(views)
    for folder in ("a", "b"):
        view = views[f"{folder}_img"]
        assert np.abs(view.image().numpy() - _area_half(outside[folder])).max() < 2.5 / 255, folder
    assert views["a_img"].image_path != views["b_img"].image_path


@pytest.fixture
def read_only(monkeypatch):
    """Make a folder read-only (chmod -R a-w). Root ignores write permission bits, so for root
    ``os.access`` (what the cache checks) is made to answer as it would for another user:
    the folders are then as read-only as the code can tell. Restores the bits afterwards."""
    made = []

    def apply(root: Path) -> None:
        for p in [root, *root.rglob("*")]:
            os.chmod(p, stat.S_IMODE(p.stat().st_mode) & ~0o222)
        made.append(root)

    if os.geteuid() == 0:
        real = os.access

        def access(path, mode, *args, **kwargs):
            if mode & os.W_OK and not os.stat(path).st_mode & 0o222:
                return False
            return real(path, mode, *args, **kwargs)

        monkeypatch.setattr(os, "access", access)
    yield apply
    for root in made:
        for p in [root, *root.rglob("*")]:
            os.chmod(p, stat.S_IMODE(p.stat().st_mode) | 0o200)


def test_read_only_dataset_is_downscaled_into_the_user_cache(small, tmp_path, read_only, user_cache, capsys):
    root = _copy(small, tmp_path / "ds")
    read_only(root)
    before = _tree(root)
    scene = load_scene(root, downscale=2, normalize=False)
    assert _tree(root) == before  # nothing written into the dataset
    for view in scene.views:
        assert view.image_path.is_relative_to(user_cache) and view.image().shape == (16, 16, 3)
    assert main(["data", "info", str(root), "--downscale", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["width"] == 16
    assert _tree(root) == before


def test_a_symlinked_cache_folder_cannot_lead_to_the_sources(small, tmp_path):
    root = _copy(small, tmp_path / "ds")
    (root / "images_2").symlink_to("images")  # images_2/x.png *is* images/x.png
    before = _tree(root / "images")
    scene = load_scene(root, downscale=2, normalize=False)
    assert _tree(root / "images") == before
    assert all(v.image().shape == (16, 16, 3) for v in scene.views)


def test_a_foreign_file_where_a_copy_would_go_is_left_alone(small, tmp_path):
    root = _copy(small, tmp_path / "ds")
    (root / "images_2").mkdir()
    foreign = root / "images_2" / "train_0001.png"
    Image.new("RGB", (5, 7), (255, 0, 0)).save(foreign)  # not a copy: wrong size
    before = _sha(foreign)
    scene = load_scene(root, downscale=2, normalize=False)
    assert _sha(foreign) == before
    view = next(v for v in scene.views if v.name == "train_0001")
    assert np.abs(view.image().numpy() - _area_half(root / "images" / "train_0001.png")).max() < 2.5 / 255


@pytest.mark.parametrize("writable", [True, False], ids=["writable", "read-only"])
def test_colmap_images_2_a_dataset_ships_are_read(small, tmp_path, read_only, writable):
    root = to_colmap(small, tmp_path / "colmap", binary=False)
    (root / "images_2").mkdir()
    colours = {}
    for i, image in enumerate(sorted((root / "images").iterdir())):
        colours[image.stem] = (10 * i, 200, 255 - 10 * i)
        Image.new("RGB", (16, 16), colours[image.stem]).save(root / "images_2" / image.name)
    if not writable:
        read_only(root)
    before = _tree(root)
    scene = load_scene(root, downscale=2, normalize=False)
    assert _tree(root) == before
    for view in scene.views:
        assert view.image_path == root / "images_2" / f"{view.name}.png"
        expected = torch.tensor(colours[view.name], dtype=torch.float32) / 255.0
        assert torch.allclose(view.image(), expected.expand(16, 16, 3), atol=1e-6)


# -- 2. one line and exit 2, never a traceback -----------------------------------------------

def test_deeply_nested_transforms_json(small, tmp_path, capsys):
    root = _copy(small, tmp_path / "ds")
    (root / "transforms.json").write_text('{"frames": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert main(["data", "info", str(root)]) == 2
    _one_line_error(capsys, "transforms.json", "nested too deeply")


def test_huge_integer_in_transforms_json(small, tmp_path, capsys):
    root = _edit(_copy(small, tmp_path / "ds"), lambda m: m.update(w=10**400))
    assert main(["data", "info", str(root)]) == 2
    _one_line_error(capsys, "transforms.json", "out of the range")


def _write_camera(path: Path, **changes) -> Path:
    cam = {"width": 16, "height": 12, "K": [[20.0, 0.0, 8.0], [0.0, 20.0, 6.0], [0.0, 0.0, 1.0]],
           "camtoworld": torch.eye(4).tolist(), **changes}
    path.write_text(json.dumps(cam))  # allow_nan: writes NaN and Infinity as Python reads them
    return path


def test_infinite_width_in_a_camera_file_for_render(tmp_path, capsys):
    cam = _write_camera(tmp_path / "cam.json", width=float("inf"))
    assert "Infinity" in cam.read_text()
    assert main(["render", str(tmp_path / "scene.ply"), "--camera", str(cam), "--out", str(tmp_path / "o.png")]) == 2
    _one_line_error(capsys, "cam.json", "Infinity")
    assert not (tmp_path / "o.png").exists()


@pytest.mark.parametrize("changes, needle", [
    ({"width": float("nan")}, "NaN"),
    ({"width": 10**400}, "width and height must be"),
    ({"width": 10**30}, "width and height must be 1 to"),
    ({"height": "12"}, "width/height must be integers"),
    ({"K": "eye"}, "numeric matrices"),
    ({"K": [[1e308, 0, 8], [0, 1e308, 6], [0, 0, 1]], "width": 1.5}, "width/height must be integers"),
    ({"camtoworld": [[10**400] * 4] * 4}, "numeric matrices"),
    ({"K": {"fx": 20}}, "numeric matrices"),
    ({"distortion": [0.1, 0.2]}, "distortion must be 4 numbers"),
    ({"distortion": [0.1, float("inf"), 0, 0]}, "Infinity"),
], ids=["nan", "huge-int", "too-big", "string", "string-K", "fraction", "huge-matrix", "dict-K", "short-dist", "inf-dist"])
def test_bad_numbers_in_a_camera_file(tmp_path, changes, needle):
    path = _write_camera(tmp_path / "cam.json", **changes)
    with pytest.raises(FeatgsError, match=needle):
        Camera.load_json(path)


def test_deeply_nested_camera_file(tmp_path):
    path = tmp_path / "cam.json"
    path.write_text('{"K": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(FeatgsError, match="nested too deeply"):
        Camera.load_json(path)


def _train(data: Path, run: Path, *extra: str) -> int:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(["train", str(data), "--out", str(run), *TINY_TRAIN, *extra])
    finally:
        torch.set_num_threads(threads)


def test_resume_drops_a_torn_last_log_line(tiny, tmp_path, caplog):
    run = tmp_path / "run"
    assert _train(tiny, run) == 0
    log = run / "log.jsonl"
    whole = log.read_text()
    log.write_text(whole + '{"step": 3, "loss": 0.1')  # a kill mid-write
    assert _train(tiny, run, "--resume") == 0
    assert any("log.jsonl: dropped its last line" in r.getMessage() for r in caplog.records)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records and all(isinstance(r, dict) for r in records)


def test_resume_refuses_a_bad_line_in_the_middle_of_the_log(tiny, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(tiny, run) == 0
    log = run / "log.jsonl"
    first = log.read_text().splitlines()[0]
    log.write_text(first[: len(first) // 2] + "\n" + first + "\n")  # torn, then a whole record
    before = log.read_bytes()
    capsys.readouterr()
    assert _train(tiny, run, "--resume") == 2
    _one_line_error(capsys, str(log), "line 1")
    assert log.read_bytes() == before


def test_out_below_a_file(tiny, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("mine")
    assert _train(tiny, afile / "run") == 2
    _one_line_error(capsys, str(afile), "is a file")
    assert afile.read_text() == "mine"


def _train_with_file_size_limit(data: Path, run: Path, *extra: str, limit: int = 64 * 1024):
    """``featgs train`` in a child process under ``ulimit -f`` (bytes): a write past it fails
    with EFBIG (SIGXFSZ, which would kill the process first, is ignored)."""
    def limit_file_size():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([sys.executable, "-m", "featgs", "train", str(data), "--out", str(run), *extra],
                          capture_output=True, text=True, preexec_fn=limit_file_size, env=env, timeout=600)


def _no_temporaries(*folders: Path) -> None:
    for folder in folders:
        assert not [p for p in folder.rglob("*.tmp")], folder


def test_full_disk_while_training_marks_the_run_failed(tiny, tmp_path):
    """A checkpoint (> 64 KiB) cannot be written: run.json says "failed", nothing is
    half-written, and --resume (with room again) finishes the run."""
    run = tmp_path / "run"
    done = _train_with_file_size_limit(tiny, run, *TINY_TRAIN)
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("featgs: error: ") and "Traceback" not in done.stderr, done.stderr
    assert "File too large" in err[0] and "--resume" in err[0]
    _no_temporaries(run)
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "failed" and "File too large" in info["error"]
    log = run / "log.jsonl"
    assert not log.exists() or all(json.loads(line) for line in log.read_text().splitlines())
    assert not (run / "point_cloud.ply").exists()
    assert _train(tiny, run, "--resume") == 0
    assert json.loads((run / "run.json").read_text())["status"] == "done"


def test_full_disk_before_the_run_folder_leaves_no_run_folder(tiny, tmp_path):
    """The labels teacher's cache maps (> 64 KiB each) cannot be written: one line, no run folder."""
    data = _copy(tiny, tmp_path / "ds")
    run = tmp_path / "runs" / "run"
    done = _train_with_file_size_limit(data, run, "--iters", "4", "--quiet")
    assert done.returncode == 2, done.stderr
    err = done.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("featgs: error: ") and "Traceback" not in done.stderr, done.stderr
    assert "File too large" in err[0]
    assert not (tmp_path / "runs").exists()
    _no_temporaries(data)


@pytest.mark.parametrize("fmt, name", [("BMP", "train_0001.png"), ("GIF", "train_0001.png"), ("TIFF", "train_0001.png"),
                                       ("PNG", "train_0001.jpg"), ("JPEG", "train_0001.png")])
def test_image_whose_content_is_not_its_extensions_format(small, tmp_path, capsys, fmt, name):
    root = _copy(small, tmp_path / "ds")
    source = root / "images" / "train_0001.png"
    image = Image.open(source).convert("RGB")
    source.unlink()
    image.save(root / "images" / name, format=fmt)
    if name != source.name:
        _edit(root, lambda m: [f.update(file_path=f"images/{name}") for f in m["frames"] if f["file_path"] == "images/train_0001.png"])
    assert main(["data", "info", str(root)]) == 2
    _one_line_error(capsys, name, f"is a {fmt} image")


# -- 3. wrong types, NaN, Infinity and huge numbers in dataset JSON --------------------------

def _nan_matrix(meta):
    meta["frames"][1]["transform_matrix"][0][3] = float("nan")


@pytest.mark.parametrize("edit, needles", [
    (lambda m: m.update(fl_x="wide"), ["fl_x", "finite number"]),
    (lambda m: m.update(w=16.5), ["w is 16.5", "whole number"]),
    (lambda m: m.update(w=float("inf")), ["Infinity", "finite numbers"]),
    (lambda m: m.update(cx=float("-inf")), ["-Infinity", "finite numbers"]),
    (_nan_matrix, ["NaN", "finite numbers"]),
    (lambda m: m.update(frames={"0": m["frames"][0]}), ["no frames", "'frames' list"]),
    (lambda m: m["frames"].__setitem__(0, [1, 2]), ["frames[0]", "expected an object"]),
    (lambda m: m["frames"][0].update(file_path=["images/a.png"]), ["frames[0]", "file_path (a string)"]),
    (lambda m: m["frames"][0].update(file_path="x" * 5000), ["frames[0]", "not a usable path"]),
    (lambda m: m["frames"][0].update(mask_path="x" * 5000), ["frames[0]", "mask_path", "not a usable path"]),
    (lambda m: m.update(camera_model=["OPENCV"]), ["camera_model", "expected one of"]),
    (lambda m: m.update(depth_unit_scale_factor=[1]), ["depth_unit_scale_factor", "finite number"]),
    (lambda m: m.update(train_filenames="images/a.png"), ["train_filenames", "list of image paths"]),
    (lambda m: m.update(w=10**30), ["w, h are", "1 to"]),
], ids=["string", "fraction", "inf", "minus-inf", "nan", "dict-frames", "list-frame", "list-path",
        "long-path", "long-mask", "list-model", "list-scale", "string-split", "huge-w"])
def test_bad_values_in_transforms_json(small, tmp_path, capsys, edit, needles):
    root = _edit(_copy(small, tmp_path / "ds"), edit)
    assert main(["data", "info", str(root)]) == 2
    _one_line_error(capsys, "transforms.json", *needles)


@pytest.mark.parametrize("text, needle", [
    ('{"fl_x": 1e400, "frames": []}', "out of the range"),
    ('{"fl_x": ' + "9" * 5000 + ', "frames": []}', "5000 digits"),
    ('{"frames": [], "w": NaN}', "NaN is not a finite number"),
    ("\xff\xfe{}", "cannot read file"),
], ids=["float-overflow", "long-int", "nan", "not-utf8"])
def test_unreadable_numbers_in_transforms_json(small, tmp_path, capsys, text, needle):
    root = _copy(small, tmp_path / "ds")
    (root / "transforms.json").write_bytes(text.encode("latin-1"))
    assert main(["data", "info", str(root)]) == 2
    _one_line_error(capsys, "transforms.json", needle)


def test_nan_in_labels_json(small, tmp_path, capsys):
    root = _copy(small, tmp_path / "ds")
    (root / "labels.json").write_text('{"0": NaN}')
    assert main(["data", "info", str(root)]) == 2
    _one_line_error(capsys, "labels.json", "NaN")


def test_training_on_a_read_only_dataset_caches_teacher_maps_per_user(small, tmp_path, read_only, user_cache):
    root = _copy(small, tmp_path / "ds")
    read_only(root)
    before = _tree(root)
    out = tmp_path / "run"
    assert main(["train", str(root), "--out", str(out), "--teacher", "labels", "--iters", "20", "--quiet"]) == 0
    assert _tree(root) == before  # no features/ folder appeared in the dataset
    maps = list((user_cache.parent / "features").rglob("*.safetensors"))
    assert len(maps) == 5  # one map per view, in the per-user cache
    recorded = json.loads((out / "run.json").read_text())["teachers"][0]["cache"]
    assert Path(recorded).is_relative_to(user_cache.parent / "features")
