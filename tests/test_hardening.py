"""Hostile or careless input: config ranges, run.json after a failure, stale temporaries,
views that see nothing."""

from __future__ import annotations

import json
import math

import pytest

from featgs.camera import Camera, intrinsics_from_fov, look_at
from featgs.cli import main
from featgs.errors import FeatgsError
from featgs.gaussians.random import random_gaussians
from featgs.render import render
from featgs.train import SolveConfig, TrainConfig


@pytest.mark.parametrize("flag, value, message", [
    ("--init-opacity", "1.5", "--init-opacity: expected a number < 1"),
    ("--checkpoint-every", "0", "--checkpoint-every: expected a number >= 1"),
    ("--lr-sh0", "nan", "--lr-sh0: expected a finite number"),
    ("--iters", "0", "--iters: expected a number >= 1"),
    ("--sh-degree", "4", "--sh-degree: expected a number <= 3"),
    ("--top-k", "0", "--top-k: expected a number >= 1"),
])
def test_out_of_range_options_stop_before_anything_is_written(tmp_path, capsys, flag, value, message):
    out = tmp_path / "run"
    assert main(["train", str(tmp_path), "--out", str(out), flag, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "serve", "view"])
def test_threads_below_one_is_one_line(tmp_path, capsys, tabletop_run, command):
    args = [str(tmp_path), "--out", str(tmp_path / "run")] if command == "train" else [str(tabletop_run)]
    assert main([command, *args, "--threads", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["featgs: error: --threads must be >= 1, got 0"]
    assert not (tmp_path / "run").exists()


def test_configs_check_their_ranges():
    with pytest.raises(FeatgsError, match="--refine-stop-fraction"):
        TrainConfig(refine_stop_fraction=1.5)
    with pytest.raises(FeatgsError, match="--tol"):
        SolveConfig(tol=0.0)
    assert TrainConfig().init_opacity == 0.1 and math.isfinite(SolveConfig().reg)


def test_a_view_that_sees_nothing_has_empty_top_k():
    g = random_gaussians(50, feature_dim=4)
    away = Camera(look_at((0.0, 0.0, -50.0), (0.0, 0.0, -100.0)), intrinsics_from_fov(16, 12, 1.0), 16, 12)
    out = render(g, away, top_k=4)
    assert out.topk_ids.shape == (12, 16, 4) and bool((out.topk_ids == -1).all())
    assert float(out.topk_weights.abs().max()) == 0.0 and float(out.alpha.max()) == 0.0


def test_resume_removes_what_a_killed_write_left(tmp_path):
    from featgs.data.procedural import MakeConfig, make_scene, resolve_scene

    path = resolve_scene("tabletop")
    make_scene(path.read_text(), str(path), tmp_path / "data", MakeConfig(size=16, views=4, test_views=1, points=100))
    args = ["--teacher", "none", "--iters", "4", "--checkpoint-every", "2", "--quiet"]
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "data"), "--out", str(run), *args]) == 0
    stale = [run / ".checkpoint.pt.abc123.tmp", run / ".run.json.xyz.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
    keep = run / ".other.tmp"
    keep.write_bytes(b"not ours")
    assert main(["train", str(tmp_path / "data"), "--out", str(run), "--resume", *args]) == 0
    assert not any(p.exists() for p in stale) and keep.exists()
    assert json.loads((run / "run.json").read_text())["status"] == "done"


def test_output_into_a_closed_pipe_ends_quietly(tabletop_data):
    """`featgs data info DATA | head -0`: the reader is gone before featgs writes; no traceback,
    the shell's SIGPIPE code."""
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-m", "featgs", "data", "info", str(tabletop_data)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert err == ""
