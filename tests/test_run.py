"""A run folder is a thing: it opens, is queried and named without its dataset; layers point down."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch

from featgs.data.procedural import MakeConfig, make_scene, resolve_scene
from featgs.errors import FeatgsError
from featgs.query import FeatureField
from featgs.query.edit import Delete, Recolor, Translate, make_edit
from featgs.run import CAMERAS_FILE, Run
from featgs.train import TrainConfig
from featgs.train.run import train_run

FEATGS = Path(__file__).resolve().parent.parent / "featgs"


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    path = resolve_scene("tabletop")
    make_scene(path.read_text(), str(path), root / "data", MakeConfig(size=24, views=8, test_views=2, points=300))
    train_run(root / "data", root / "run", TrainConfig(iters=30, refine_start=10, refine_every=10, checkpoint_every=1000),
              progress=False)
    return root / "run"


@pytest.mark.slow
def test_a_copied_run_queries_without_its_dataset(small_run, tmp_path):
    here = FeatureField.load(small_run)
    moved = tmp_path / "elsewhere" / "run"
    shutil.copytree(small_run, moved)
    shutil.rmtree(small_run.parent / "data")  # the dataset is gone, as on another machine
    run = Run.open(moved)
    assert not run.data.exists() and (moved / CAMERAS_FILE).is_file()
    cams = run.cameras()
    assert [c.name for c in cams["test"]] == [c.name for c in here.test_cameras] and len(cams["train"]) == 8
    for a, b in zip(cams["test"], here.test_cameras):
        assert torch.equal(a.camtoworld, b.camtoworld) and torch.equal(a.K, b.K) and (a.width, a.height) == (b.width, b.height)
    there = FeatureField.load(moved)
    assert there.label_names == here.label_names and "red mug" in there.label_names
    a, b = here.query("red mug"), there.query("red mug")
    assert torch.equal(a.ids, b.ids) and len(a) > 0
    cam = there.camera(0)
    assert torch.equal(there.segment(cam), here.segment(cam))


def test_run_open_errors_are_one_line(tmp_path):
    with pytest.raises(FeatgsError, match="not a featgs run folder"):
        Run.open(tmp_path)
    (tmp_path / "run.json").write_text(json.dumps({"featgs_run": 1, "config": {}}))
    with pytest.raises(FeatgsError, match="no point_cloud.ply yet"):
        Run.open(tmp_path).gaussians()
    (tmp_path / CAMERAS_FILE).write_text("[1, 2")
    with pytest.raises(FeatgsError, match="cameras.json: malformed JSON.*camera file"):
        Run.open(tmp_path).cameras()


def test_edit_names_translate_once():
    assert make_edit("delete") == Delete()
    assert make_edit("recolor", rgb=[0.1, 0.2, 0.3]) == Recolor((0.1, 0.2, 0.3))
    assert make_edit("translate", offset=(0, 0, 1)) == Translate((0.0, 0.0, 1.0))
    for bad, kw, msg in (("paint", {}, "unknown edit"), ("recolor", {}, "needs 'rgb'"),
                         ("delete", {"offset": (1, 2, 3)}, "does not apply")):
        with pytest.raises(FeatgsError, match=msg):
            make_edit(bad, **kw)


def test_a_lower_affinity_pulls_the_link_threshold_down():
    from featgs.query import PromptConfig

    base = PromptConfig()
    low, high = base.with_affinity(0.5), base.with_affinity(0.9)
    assert (low.affinity, low.link) == (0.5, 0.5) and (high.affinity, high.link) == (0.9, base.link)
    with pytest.raises(FeatgsError):
        base.with_affinity(1.5)


# What each layer may import (featgs.<package>); the base never reaches up.
BASE = {"render", "data", "gaussians", "teachers", "camera", "errors", "atomic", "plyio", "pictures", "segmentation",
        "device", "rotations",
        "configargs", "usercache", "process", "distributed"}
FORBIDDEN = {
    **{b: {"train", "query", "viewer", "server", "commands", "run", "cli"} for b in BASE},
    "run": {"train", "query", "viewer", "server", "commands", "cli"},
    "train": {"query", "viewer", "server", "commands", "cli"},
    "query": {"train", "viewer", "server", "commands", "cli"},
    "viewer": {"train", "server", "commands", "cli"},
    "server": {"train", "viewer", "commands", "cli"},
}


def _imports(path: Path) -> set[str]:
    """featgs sub-packages/modules that a file imports (at any depth of its code)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names if node.module == "featgs"]
        out |= {n.split(".")[1] for n in names if n.startswith("featgs.")}
    return out


def test_layers_point_down():
    wrong = []
    for path in sorted(FEATGS.rglob("*.py")):
        layer = path.relative_to(FEATGS).parts[0].removesuffix(".py")
        for target in _imports(path) & FORBIDDEN.get(layer, set()):
            wrong.append(f"{path.relative_to(FEATGS.parent)} imports featgs.{target}")
    assert not wrong, "\n".join(wrong)
