"""A training run end to end: data -> teacher cache -> geometry -> features -> run folder.

The run folder is self-contained: ``run.json`` (config, the data folder it came from, the
teacher and label names), ``point_cloud.ply`` (+ ``point_cloud.decoder.safetensors``),
``checkpoint.pt``, ``log.jsonl``; ``featgs eval`` adds ``metrics.json`` and ``eval/``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from tqdm.auto import tqdm

from featgs import __version__
from featgs.atomic import atomic_open, atomic_write_text
from featgs.camera import Camera
from featgs.errors import FeatgsError
from featgs.gaussians import Gaussians, save_ply
from featgs.train.background import eval_background, resolve_background
from featgs.train.checkpoint import load_checkpoint, save_checkpoint
from featgs.train.config import TrainConfig
from featgs.train.init import gaussians_from_points, scene_extent
from featgs.teachers import TeacherOptions, teacher_names
from featgs.train.blocks import (blocks_info, build_caches, feature_cache, joint_targets, make_blocks, solve_blocks,
                                 stored_dims, teacher_channels, teacher_for_scene)
from featgs.train.trainer import Interrupted, TrainState, init_strategy_state, make_strategy, new_state, train_loop

RUN_FILE = "run.json"
PLY_FILE = "point_cloud.ply"
CHECKPOINT_FILE = "checkpoint.pt"
LOG_FILE = "log.jsonl"
# Random points fill a volume, not a surface: splats as wide as their spacing make a fog that
# hides the scene from the gradients until it is peeled away layer by layer; half as wide
# gives a quarter of its optical depth.
RANDOM_INIT_SCALE = 0.5


@dataclass
class RunPaths:
    root: Path

    @property
    def run_json(self) -> Path:
        return self.root / RUN_FILE

    @property
    def ply(self) -> Path:
        return self.root / PLY_FILE

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_FILE

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE


def read_run(root: Path) -> dict:
    """The run.json of a run folder, or a one-line error saying the folder is not a run."""
    path = Path(root) / RUN_FILE
    if not Path(root).is_dir():
        raise FeatgsError(f"{root}: not a folder; expected a run folder made by `featgs train`")
    try:
        info = json.loads(path.read_text())
    except FileNotFoundError:
        raise FeatgsError(f"{root}: not a featgs run folder (no {RUN_FILE}); expected the --out folder of `featgs train`") from None
    except (OSError, ValueError) as e:
        raise FeatgsError(f"{path}: unreadable run file ({e.__class__.__name__}); expected JSON written by `featgs train`") from None
    if not isinstance(info, dict) or info.get("featgs_run") != 1:
        raise FeatgsError(f"{path}: not a featgs run file")
    return info


def _teacher_for(name: str, scene, options: TeacherOptions = TeacherOptions()):
    return teacher_for_scene(name, scene, options)


def build_cache(scene, teacher, downscale: float, progress: bool):
    """Teacher maps for every train and test view, computed once and reused."""
    from featgs.teachers import CacheItem

    cache = feature_cache(scene, teacher, downscale)
    items = [CacheItem(v.name, v.image, v.labels) for v in scene.views]
    cache.ensure(teacher, items, progress=progress)
    return cache


def _check_maps(cache, names: List[str], progress: bool) -> None:
    for name in tqdm(names, desc="check teacher maps", unit="map", disable=not progress, leave=False):
        m = cache.load(name)
        if not torch.isfinite(m).all():
            raise FeatgsError(f"{cache.path(name)}: teacher map contains NaN or Inf; delete it to rebuild the cache")


def _prepare_out(out: Path, resume: bool) -> None:
    if resume:
        read_run(out)
        return
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FeatgsError(f"{out}: exists and is not empty; pass --resume to continue that run or choose a new --out")


def train_run(
    data: Path,
    out: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train a feature field and write the run folder. Returns the final run.json content.

    Raises:
        FeatgsError: bad input, before anything is written.
        Interrupted: Ctrl-C; the checkpoint is saved and ``--resume`` continues.
    """
    from featgs.data import load_scene
    from featgs.data.points import initial_points

    data, out = Path(data), Path(out)
    _prepare_out(out, resume)
    if resume:
        saved = read_run(out)
        if Path(saved["data"]).resolve() != data.resolve():
            raise FeatgsError(f"{out}: this run trains on {saved['data']}, not {data}")
        old = TrainConfig.from_dict(saved["config"])
        clash = [k for k in ("mode", "teacher", "feature_dim", "downscale", "strategy", "seed")
                 if getattr(old, k) != getattr(config, k)]
        if clash:
            raise FeatgsError(f"{out}: --resume with different {', '.join(clash)} than the run was started with")
        if config.teacher_options == TeacherOptions():  # not given again: the run's own
            config = dataclasses.replace(config, teacher_options=old.teacher_options)
    config = dataclasses.replace(config, teacher_options=config.teacher_options.resolved())
    scene = load_scene(data, downscale=config.downscale)
    paths = RunPaths(out)

    blocks = make_blocks(scene, teacher_names(config.teacher), config.teacher_options, config.downscale)
    if resume:  # never rebuild features under a run that was trained on them
        for b in blocks:
            b.cache.check(b.teacher, [v.name for v in scene.views])
    else:
        build_caches(blocks, scene.views, progress)
    for b in blocks:
        _check_maps(b.cache, [v.name for v in scene.train], progress)
    if resume and blocks:
        trained = teacher_channels(saved)
        now = {b.teacher.name: b.channels for b in blocks}
        if trained != now:
            raise FeatgsError(f"{out}: run was trained on teacher channels {trained}, the caches give {now}")

    device = resolve_device(config.device)
    cams: List[Camera] = [v.camera for v in scene.train]
    transparent = scene.has_alpha()
    background = resolve_background(config.background, transparent)
    read = (lambda v: v.rgba()) if transparent else (lambda v: v.image())
    images = [read(v).to(device) for v in tqdm(scene.train, desc="load images", unit="img", disable=not progress, leave=False)]
    extent = scene_extent(torch.stack([c.center for c in cams]))
    start = initial_points(scene, config.random_init_points, seed=config.seed, init=config.init, transparent=transparent)
    init = gaussians_from_points(start.points, start.colors, sh_degree=config.sh_degree, opacity=config.init_opacity,
                                 max_points=config.max_init_points, seed=config.seed,
                                 scale_factor=1.0 if start.kind == "points" else RANDOM_INIT_SCALE).to(device)
    D = sum(b.dim for b in blocks)
    d = sum(stored_dims(blocks, config.feature_dim))

    info = {
        "featgs_run": 1,
        "featgs_version": __version__,
        "data": str(data.resolve()),
        "config": config.to_dict(),
        "status": "training",
        "teacher": _teacher_summary(blocks),
        "teachers": blocks_info(blocks),
        "label_names": {str(k): v for k, v in (scene.label_names or {}).items()},
        "normalization": scene.normalization.tolist(),
        "init": {"kind": start.kind, **start.info},
        "background": {"train": background, "transparent": transparent,
                       "eval": list(eval_background(config.background, transparent))},
    }
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        atomic_write_text(paths.run_json, json.dumps(info, indent=2))
        paths.log.unlink(missing_ok=True)

    joint = config.mode == "joint" and bool(blocks)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        state = new_state(init, config, extent, feature_dim=d if joint else 0, teacher_dim=D)
        strategy = make_strategy(config)
        strategy.check_sanity(state.params, state.optimizers)
        state.strategy_state = init_strategy_state(strategy, extent)
        if resume and paths.checkpoint.exists():
            load_checkpoint(paths.checkpoint, state)
            _truncate_log(paths.log, state.step)

        names = [v.name for v in scene.train]
        with open(paths.log, "a") as log_file:
            def log(rec: dict) -> None:
                log_file.write(json.dumps(rec) + "\n")
                log_file.flush()

            train_loop(
                state, strategy, cams, images, config, extent=extent, background=background,
                teacher_maps=joint_targets(blocks, names) if joint else None,
                save_checkpoint=lambda s: save_checkpoint(paths.checkpoint, s),
                log=log, progress=progress,
            )

    g = state.gaussians().detach()
    distill = None
    if blocks and config.mode == "solve":
        result = solve_blocks(g, cams, names, blocks, config.solve, config.feature_dim, progress)
        g = g.with_features(result.features, result.decoder)
        distill = result.stats
    save_ply(paths.ply, g.to("cpu"))
    info.update(status="done", num_gaussians=len(g), steps=state.step, feature_dim=g.feature_dim,
                output_feature_dim=g.output_feature_dim, distill=distill)
    atomic_write_text(paths.run_json, json.dumps(info, indent=2))
    return info


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; 'cuda' without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FeatgsError("--device cuda: no CUDA GPU here; use --device cpu")
    return torch.device(name)


def _teacher_summary(blocks) -> Optional[dict]:
    """run.json's "teacher": the one teacher as before "teachers" existed; several are summed up
    (names and model ids joined by commas, the total dim)."""
    if not blocks:
        return None
    if len(blocks) == 1:
        b = blocks[0]
        return {"name": b.teacher.name, "model_id": b.teacher.model_id, "dim": b.dim, "cache": str(b.cache.folder)}
    return {"name": ",".join(b.teacher.name for b in blocks), "model_id": ",".join(b.teacher.model_id for b in blocks),
            "dim": sum(b.dim for b in blocks), "cache": None}


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines past the checkpoint, so a resumed log reads like an uninterrupted one."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    with atomic_open(path, "w") as f:
        f.write("".join(line + "\n" for line in keep))


def load_run_gaussians(root: Path) -> Gaussians:
    from featgs.gaussians import load_ply

    read_run(root)
    path = Path(root) / PLY_FILE
    if not path.exists():
        raise FeatgsError(f"{root}: run has no {PLY_FILE} yet (training unfinished? continue with `featgs train ... --resume`)")
    return load_ply(path)


__all__ = ["Interrupted", "RunPaths", "TrainState", "load_run_gaussians", "read_run", "train_run"]
