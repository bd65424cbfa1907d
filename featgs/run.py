"""A run folder, opened once: what ``featgs train`` wrote, usable without its dataset.

The folder (every name relative to it)::

    run.json              config, the data folder it came from, teachers and their channels,
                          label names, normalisation, initialisation, backgrounds, status
    point_cloud.ply       the Gaussians (+ point_cloud.decoder.safetensors, the linear decoder)
    cameras.json          the train and test cameras in the run's frame, at the trained size
    checkpoint.pt         the training state (``--resume``)
    log.jsonl             one record every 10 steps
    metrics.json, eval/   written by ``featgs eval``
    edits/                PLYs saved by the viewer and the HTTP API

A :class:`Run` is what query, evaluation, the viewer, the server and the commands read; it
never imports training. Runs written before ``cameras.json`` existed get their cameras from
their dataset, if it is still where it was.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from featgs.atomic import atomic_write_text
from featgs.camera import Camera
from featgs.data.jsonfile import read_json
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians
from featgs.teachers.options import TeacherOptions

RUN_FILE = "run.json"
PLY_FILE = "point_cloud.ply"
CAMERAS_FILE = "cameras.json"
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.jsonl"
METRICS_FILE = "metrics.json"
EDITS_FOLDER = "edits"
SPLITS = ("train", "test")

Channels = Tuple[int, int]


@dataclass(frozen=True)
class RunPaths:
    """Where the files of the run folder ``root`` live."""

    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / RUN_FILE

    @property
    def ply(self) -> Path:
        return self.root / PLY_FILE

    @property
    def cameras(self) -> Path:
        return self.root / CAMERAS_FILE

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_FILE

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def edits(self) -> Path:
        return self.root / EDITS_FOLDER


def read_run(root: Path) -> dict:
    """The run.json of a run folder, or a one-line error saying the folder is not a run."""
    path = Path(root) / RUN_FILE
    if not Path(root).is_dir():
        raise FeatgsError(f"{root}: not a folder; expected a run folder made by `featgs train`")
    if not path.exists():
        raise FeatgsError(f"{root}: not a featgs run folder (no {RUN_FILE}); expected the --out folder of `featgs train`")
    info = read_json(path, "the run file JSON written by `featgs train`")
    if not isinstance(info, dict) or info.get("featgs_run") != 1:
        raise FeatgsError(f"{path}: not a featgs run file")
    return info


def teacher_channels(info: dict) -> Dict[str, Channels]:
    """Teacher name -> its channels ``[start, end)`` in a run's rendered (decoded) features.

    Reads ``teachers`` from run.json, or a run of one teacher written before it existed.
    """
    if info.get("teachers"):
        return {t["name"]: (int(t["channels"][0]), int(t["channels"][1])) for t in info["teachers"]}
    one = info.get("teacher")
    return {one["name"]: (0, int(one["dim"]))} if one else {}


def write_cameras(path: Path, cameras: Dict[str, list]) -> None:
    """``cameras.json``: split name -> list of :class:`Camera` (their ``to_dict``), atomically."""
    atomic_write_text(path, json.dumps({split: [c.to_dict() for c in cams] for split, cams in cameras.items()}))


def _read_cameras(path: Path) -> Dict[str, Tuple[Camera, ...]]:
    data = read_json(path, "the camera file JSON written by `featgs train`")
    if not isinstance(data, dict):
        raise FeatgsError(f"{path}: expected an object of camera lists per split")
    out = {}
    for split in SPLITS:
        items = data.get(split, [])
        if not isinstance(items, list):
            raise FeatgsError(f"{path}: {split!r} must be a list of cameras")
        out[split] = tuple(Camera.from_dict(d, source=f"{path}: {split}[{i}]") for i, d in enumerate(items))
    return out


@dataclass(frozen=True)
class Run:
    """A finished or unfinished run folder and its run.json, read once.

    Attributes:
        root: the folder.
        info: run.json's content.
    """

    root: Path
    info: dict

    @classmethod
    def open(cls, root: str | Path) -> "Run":
        """The run in folder ``root``; a one-line error if it is not one."""
        root = Path(root)
        return cls(root, read_run(root))

    @property
    def paths(self) -> RunPaths:
        return RunPaths(self.root)

    @property
    def config(self) -> dict:
        """The training configuration as run.json stores it (``featgs.train.TrainConfig.to_dict``)."""
        return self.info.get("config") or {}

    @property
    def data(self) -> Path:
        """The dataset folder the run was trained on (it may be gone)."""
        return Path(self.info.get("data", ""))

    @property
    def downscale(self) -> float:
        return float(self.config.get("downscale", 1.0))

    @property
    def teacher_options(self) -> TeacherOptions:
        return TeacherOptions.from_dict(self.config.get("teacher_options") or {})

    @property
    def teacher_channels(self) -> Dict[str, Channels]:
        return teacher_channels(self.info)

    @property
    def model_ids(self) -> Dict[str, Optional[str]]:
        """Teacher name -> the weights it was distilled from."""
        teachers = self.info.get("teachers") or [self.info.get("teacher")]
        return {t["name"]: t.get("model_id") for t in teachers if t}

    @property
    def label_names(self) -> Dict[int, str]:
        """Label id -> name (empty for runs without labels)."""
        return {int(k): v for k, v in sorted((self.info.get("label_names") or {}).items(), key=lambda kv: int(kv[0]))}

    @property
    def normalization(self) -> Optional[Tensor]:
        """The run's [4, 4] float64 dataset-to-run similarity, or None when it is the identity or unknown."""
        T = self.info.get("normalization")
        if T is None:
            return None
        try:
            T = torch.tensor(T, dtype=torch.float64)
        except (TypeError, ValueError):
            T = torch.full((0,), float("nan"), dtype=torch.float64)
        if T.shape != (4, 4) or not torch.isfinite(T).all():
            raise FeatgsError(f"{self.paths.run_json}: 'normalization' must be a finite 4x4 matrix of numbers")
        return None if torch.equal(T, torch.eye(4, dtype=torch.float64)) else T

    def gaussians(self, device: Optional[str | torch.device] = None) -> Gaussians:
        """The trained Gaussians (and decoder), on ``device`` (default CPU)."""
        from featgs.gaussians import load_ply

        if not self.paths.ply.exists():
            raise FeatgsError(f"{self.root}: run has no {PLY_FILE} yet (training unfinished? continue with "
                              "`featgs train ... --resume`)")
        g = load_ply(self.paths.ply)
        return g if device is None else g.to(device)

    def cameras(self) -> Dict[str, Tuple[Camera, ...]]:
        """"train" and "test" cameras in the run's frame: from cameras.json, else (older runs)
        from the dataset when it is still there, else none (with a warning)."""
        if self.paths.cameras.is_file():
            return _read_cameras(self.paths.cameras)
        empty: Dict[str, Tuple[Camera, ...]] = {s: () for s in SPLITS}
        if not self.data.is_dir():
            return empty
        from featgs.data import load_scene

        try:
            scene = load_scene(self.data, downscale=self.downscale)
        except FeatgsError as e:
            warnings.warn(f"{self.root}: no {CAMERAS_FILE}, and its data folder cannot be loaded ({e}); no views",
                          stacklevel=2)
            return empty
        return {"train": tuple(v.camera for v in scene.train), "test": tuple(v.camera for v in scene.test)}
