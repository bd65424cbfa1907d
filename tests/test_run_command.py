"""`featgs run`: photos -> structure from motion -> training -> evaluation, in one command."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest

from featgs.cli import main
from featgs.commands.run import _check_photo_options, resolve_teacher
from featgs.errors import FeatgsError
from featgs.teachers.options import TeacherOptions
from test_process import make_textured_tabletop

SHORT = ["--iters", "30", "--refine-start", "10", "--refine-every", "10", "--checkpoint-every", "1000",
         "--threads", "1", "--quiet"]


@pytest.mark.slow
def test_run_from_photos_makes_an_evaluated_run(tmp_path, capsys):
    data = make_textured_tabletop(tmp_path / "scene")
    photos = data / "images"  # the images only: no poses, no label maps
    run = tmp_path / "runs" / "table"
    assert main(["run", str(photos), "--out", str(run), "--downscale", "4", *SHORT]) == 0
    out = capsys.readouterr().out
    processed = tmp_path / "runs" / "table-data"
    assert (processed / "sparse" / "0").is_dir() and (processed / "images_4").is_dir()
    info = json.loads((run / "run.json").read_text())
    assert info["teacher"] is None  # auto: no checkpoints, no label maps -> none
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["psnr"] > 10 and metrics["num_views"] >= 4  # every 8th of 36 images is a test view
    assert "[1/3] structure from motion" in out and "registered 36 of 36 images" in out
    assert "teacher none" in out and f"featgs view {run}" in out and "seconds: process" in out
    # the run is what `featgs eval` scores
    assert main(["eval", str(run), "--json", "--no-pictures"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["psnr"] == pytest.approx(metrics["psnr"], abs=1e-3)

    # again into a new run: the processed dataset is reused, not redone
    again = tmp_path / "runs" / "again"
    assert main(["run", str(photos), "--out", str(again), "--data", str(processed), "--no-eval", *SHORT]) == 0
    assert f"reusing {processed}" in capsys.readouterr().out
    # a RUN that exists is refused before any work
    assert main(["run", str(photos), "--out", str(run), *SHORT]) == 2
    assert "exists and is not empty" in capsys.readouterr().err


def test_auto_teacher_is_what_works_without_files(tabletop_data, tmp_path):
    none = TeacherOptions()
    assert resolve_teacher("auto", none, tabletop_data, processed=False) == "labels"  # label maps
    assert resolve_teacher("auto", none, tmp_path, processed=True) == "none"  # photos: no label maps
    sam = TeacherOptions(sam_checkpoint="sam.pth")
    assert resolve_teacher("auto", sam, tmp_path, processed=True) == "sam"
    both = TeacherOptions(sam_checkpoint="sam.pth", clip_checkpoint="clip.pt")
    assert resolve_teacher("auto", both, tmp_path, processed=True) == "sam,clip"
    assert resolve_teacher("clip", none, tmp_path, processed=True) == "clip"


@pytest.mark.slow
def test_run_on_a_dataset_skips_structure_from_motion(tabletop_data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", str(tabletop_data), "--out", str(run), "--no-eval", "--feature-dim", "16", *SHORT]) == 0
    out = capsys.readouterr().out
    assert "is a dataset: no structure from motion" in out and "teacher labels" in out
    assert f'featgs query {run} "' in out
    assert not (tmp_path / "run-data").exists()


def test_run_refuses_before_the_slow_stages(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    run = tmp_path / "run"
    assert main(["run", str(photos), "--out", str(run), "--teacher", "labels", "--quiet"]) == 2
    assert "without label maps" in capsys.readouterr().err
    assert main(["run", str(photos), "--out", str(run), "--data", str(run), "--quiet"]) == 2
    assert "name the same folder" in capsys.readouterr().err
    assert main(["run", str(photos), "--out", str(run), "--quiet"]) == 2  # no photos: process's own error
    assert "no photos found" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


@pytest.mark.slow
def test_run_from_photos_with_label_maps_finds_each_object(tmp_path, capsys):
    scene = make_textured_tabletop(tmp_path / "scene")
    photos = tmp_path / "photos"  # images (no poses), labels/<stem>.png and labels.json
    shutil.copytree(scene / "images", photos)
    shutil.copytree(scene / "labels", photos / "labels")
    shutil.copyfile(scene / "labels.json", photos / "labels.json")
    run = tmp_path / "run"
    short = ["--iters", "100", "--refine-start", "30", "--refine-every", "30", "--checkpoint-every", "1000",
             "--threads", "2", "--quiet"]
    assert main(["run", str(photos), "--out", str(run), "--teacher", "labels", "--downscale", "4",
                 "--feature-dim", "16", "--no-eval", *short]) == 0
    out = capsys.readouterr().out
    data = tmp_path / "run-data"
    summary = json.loads((data / "process.json").read_text())["summary"]
    assert summary["camera_model"] == "PINHOLE" and not summary["undistorted"]  # auto: no undistortion
    assert summary["labels"] == summary["registered"] == len(list((data / "labels").iterdir()))
    assert "teacher labels" in out
    room = {"floor", "wall", "ceiling", "background"}  # the room around the objects, not objects
    names = [n for n in json.loads((photos / "labels.json").read_text()).values() if n not in room]
    assert len(names) >= 5
    centroids = {}
    for name in names:
        assert main(["query", str(run), name, "--json"]) == 0
        found = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert found["num_selected"] > 0, name
        centroids[name] = np.array(found["centroid"])
    for a, b in itertools.combinations(centroids, 2):
        assert np.linalg.norm(centroids[a] - centroids[b]) > 1e-3, (a, b)


def test_teacher_labels_for_photos_needs_their_label_maps(tmp_path):
    photos = tmp_path / "photos"
    (photos / "labels").mkdir(parents=True)
    with pytest.raises(FeatgsError, match="without label maps"):
        _check_photo_options(photos, tmp_path / "run", tmp_path / "data", "labels")
    (photos / "labels.json").write_text('{"0": "floor"}')
    _check_photo_options(photos, tmp_path / "run", tmp_path / "data", "labels")  # accepted
    data = tmp_path / "data"  # as `featgs process` leaves it with label maps
    (data / "labels").mkdir(parents=True)
    (data / "labels.json").write_text('{"0": "floor"}')
    assert resolve_teacher("auto", TeacherOptions(), data, processed=True) == "labels"
