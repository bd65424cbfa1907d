"""A training run end to end: data -> teacher cache -> geometry -> features -> run folder.

The run folder (its layout: :mod:`featgs.run`) is self-contained: it opens, is queried and
viewed without the dataset.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import List, Optional

import torch
from tqdm.auto import tqdm

from featgs import __version__
from featgs.atomic import atomic_open, atomic_write_text, remove_stale_temporaries
from featgs.camera import Camera
from featgs.device import resolve_device
from featgs.distributed import SINGLE, LostContact, Ranks
from featgs.errors import FeatgsError
from featgs.gaussians import save_ply
from featgs.run import (CAMERAS_FILE, CHECKPOINT_FILE, LOG_FILE, PLY_FILE, RUN_FILE, RunPaths, read_run,
                        teacher_channels, write_cameras)
from featgs.train.background import eval_background, resolve_background
from featgs.train.checkpoint import load_checkpoint, save_checkpoint
from featgs.train.config import TrainConfig
from featgs.train.init import gaussians_from_points, scene_extent
from featgs.teachers import TeacherOptions, teacher_names
from featgs.train.blocks import (blocks_info, build_caches, feature_cache, joint_targets, make_blocks, solve_blocks,
                                 stored_dims, too_few_dims)
from featgs.train.trainer import Diverged, Interrupted, TrainState, init_strategy_state, make_strategy, new_state, train_loop

logger = logging.getLogger(__name__)

# Write errors that more room cures: a full disk, a file size limit (ulimit -f), a quota.
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}

# Random points fill a volume, not a surface: splats as wide as their spacing make a fog that
# hides the scene from the gradients until it is peeled away layer by layer; half as wide
# gives a quarter of its optical depth.
RANDOM_INIT_SCALE = 0.5


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
    """Refuse an ``out`` that cannot become a new run folder (or, with ``resume``, is not a
    run), before anything is written."""
    if resume:
        read_run(out)
        return
    try:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise FeatgsError(f"{out}: exists and is not empty; pass --resume to continue that run or choose a new --out")
        if not out.exists():
            _check_creatable(out)
    except OSError as e:  # a name too long, a folder we may not list
        raise FeatgsError(f"{out}: cannot use it as the run folder ({e.strerror or e.__class__.__name__}); "
                          "expected a folder to create") from None


def _check_creatable(out: Path) -> None:
    """Refuse an ``out`` that mkdir would fail on: below a file, or in a folder not writable."""
    for parent in out.parents:  # nearest first
        if parent.exists():
            if not parent.is_dir():
                raise FeatgsError(f"{out}: {parent} is a file, not a folder; expected --out to name a folder to create")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise FeatgsError(f"{out}: cannot create it, {parent} is not writable; expected a writable place for the run folder")
            return
        if parent.is_symlink():  # a dangling link: mkdir would fail on it
            raise FeatgsError(f"{out}: {parent} is a broken symbolic link; expected --out to name a folder to create")


def _missing_folders(out: Path) -> List[Path]:
    """``out`` and the folders above it that do not exist yet, innermost first: what making
    the run folder creates, and what a failure before run.json is written removes again."""
    missing = []
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            break
        missing.append(p)
    return missing


def train_run(
    data: Path,
    out: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    progress: bool = True,
    ranks: Ranks = SINGLE,
    images_per_rank: int = 1,
) -> dict:
    """Train a feature field and write the run folder. Returns the final run.json content.

    ``ranks``: the processes of a ``torchrun`` launch (featgs.distributed), every one calling
    this with the same arguments. They share the teacher extraction (view i on rank
    i % world), the training (a step's global batch is ``world_size * images_per_rank``
    images, one per rank by default) and the solve; rank 0 alone prints progress and writes
    the run folder, and every rank returns the same run.json content.

    Raises:
        FeatgsError: bad input, before anything is written; or a write that failed (a full
            disk, a file size limit): then the folders this call made are removed if run.json
            was not yet written, else run.json's status is "failed", log.jsonl ends on a whole
            line and the last checkpoint (written atomically) is whole, so ``--resume``
            continues.
        Interrupted: Ctrl-C; the checkpoint is saved and ``--resume`` continues.
        LostContact: another rank died or stopped answering; ``--resume`` continues (with
            any number of ranks).
    """
    data, out = Path(data), Path(out)
    ranks.on_main(lambda: _prepare_out(out, resume))  # the others wait for rank 0's verdict
    made = _missing_folders(out) if ranks.is_main else []
    try:
        return _train(data, out, config, resume, progress and ranks.is_main, ranks, images_per_rank)
    except OSError as e:  # a full disk, a file size limit, a folder that went away
        raise FeatgsError(_failed_write(e, out, made)) from None


def _failed_write(error: OSError, out: Path, made: List[Path]) -> str:
    """The one-line message for a training stopped by ``error``; removes the folders this
    run made (``made``, innermost first) when it stopped before run.json was written."""
    where = error.filename or out
    what = f"{where}: {error.strerror or error}" + (f" ({errno.errorcode[error.errno]})" if error.errno in errno.errorcode else "")
    fix = "free some space (or raise the file size limit)" if error.errno in _NO_ROOM else "fix that"
    if (out / RUN_FILE).exists():
        marked = f"{out / RUN_FILE} marks the run failed" if _status(out) == "failed" else f"{out} is left as it was"
        return f"{what}; training stopped, {marked}: {fix} and continue with --resume"
    for folder in made:  # nothing of the run was written: leave no trace of it
        try:
            folder.rmdir()
        except OSError:
            break
    return f"{what}; training stopped before the run folder {out} was written: {fix} and run again"


def _status(out: Path) -> Optional[str]:
    """run.json's status, or None if it cannot be read."""
    try:
        return read_run(out).get("status")
    except FeatgsError:
        return None


def _mark_failed(paths: RunPaths, info: dict, error: OSError) -> None:
    """Best effort, after ``error`` stopped a run: run.json says so, and log.jsonl loses a
    line torn by the failed write. Both writes shrink or keep sizes, so a full disk or a file
    size limit rarely stops them; if one fails anyway, the original error is what counts."""
    with contextlib.suppress(OSError):
        _trim_torn_tail(paths.log)
    info.update(status="failed", error=f"{error.__class__.__name__}: {error}")
    with contextlib.suppress(OSError):
        atomic_write_text(paths.run_json, json.dumps(info, indent=2))


def _trim_torn_tail(path: Path) -> None:
    """Cut ``path`` after its last newline (a record the failed write left half-written)."""
    if not path.exists():
        return
    with open(path, "rb+") as f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            f.truncate(data.rfind(b"\n") + 1)


def _train(data: Path, out: Path, config: TrainConfig, resume: bool, progress: bool, ranks: Ranks = SINGLE,
           images_per_rank: int = 1) -> dict:
    """:func:`train_run` past the checks of ``out`` (OSError passes through, for its caller)."""
    from featgs.data import load_scene
    from featgs.data.points import initial_points

    if resume:  # rank 0 checks and tidies the run folder, the others take its verdict
        config, saved = ranks.on_main(lambda: _resume_checks(data, out, config), share=True)
    config = dataclasses.replace(config, teacher_options=config.teacher_options.resolved())
    # rank 0 first: it writes any downscaled copies of the images, the others then read them
    scene = ranks.on_main(lambda: load_scene(data, downscale=config.downscale))
    if not ranks.is_main:
        scene = load_scene(data, downscale=config.downscale)
    paths = RunPaths(out)

    blocks = make_blocks(scene, teacher_names(config.teacher), config.teacher_options, config.downscale)
    if ranks.is_main:
        for warning in too_few_dims(blocks, config.feature_dim):
            print(f"featgs: warning: {warning}", file=sys.stderr)
    if resume:  # never rebuild features under a run that was trained on them
        ranks.on_main(lambda: [b.cache.check(b.teacher, [v.name for v in scene.views]) for b in blocks])
    else:
        build_caches(blocks, scene.views, progress, ranks)
    for b in blocks:  # each rank checks the maps of its own views
        ranks.settle(lambda b=b: _check_maps(b.cache, ranks.shard([v.name for v in scene.train]), progress))
    if resume and blocks:
        trained = teacher_channels(saved)
        now = {b.teacher.name: b.channels for b in blocks}
        if trained != now:
            raise FeatgsError(f"{out}: run was trained on teacher channels {trained}, the caches give {now}")

    device = ranks.device if ranks.distributed else resolve_device(config.device)
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
        "world_size": ranks.world_size,
        "backend": ranks.backend,
        "images_per_step": ranks.world_size * images_per_rank,
    }

    def start_folder() -> None:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_text(paths.run_json, json.dumps(info, indent=2))
            paths.log.unlink(missing_ok=True)

    ranks.on_main(start_folder)
    try:  # from here on a failed write leaves run.json saying so
        joint = config.mode == "joint" and bool(blocks)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(config.seed)
            state = new_state(init, config, extent, feature_dim=d if joint else 0, teacher_dim=D)
            strategy = make_strategy(config, ranks)
            strategy.check_sanity(state.params, state.optimizers)
            state.strategy_state = init_strategy_state(strategy, extent)
            if resume and paths.checkpoint.exists():
                load_checkpoint(paths.checkpoint, state)
            if resume:  # without a checkpoint the run starts over at step 0, and so does its log
                ranks.on_main(lambda: _truncate_log(paths.log, state.step))

            names = [v.name for v in scene.train]
            with open(paths.log if ranks.is_main else os.devnull, "a") as log_file:  # rank 0 logs
                def log(rec: dict) -> None:
                    try:
                        log_file.write(json.dumps(rec) + "\n")
                        log_file.flush()
                    except OSError as e:  # name the file: a failed write() says only what went wrong
                        e.filename = e.filename or str(paths.log)
                        raise

                try:
                    train_loop(
                        state, strategy, cams, images, config, extent=extent, background=background,
                        teacher_maps=joint_targets(blocks, names) if joint else None,
                        save_checkpoint=lambda s: save_checkpoint(paths.checkpoint, s),
                        log=log, progress=progress, ranks=ranks, images_per_rank=images_per_rank,
                    )
                except (Diverged, Interrupted, LostContact) as e:  # run.json says what happened, not "training"
                    status = {Diverged: "diverged", Interrupted: "interrupted"}.get(type(e), "failed")
                    info.update(status=status, stopped_at=getattr(e, "step", state.step), error=str(e))
                    if ranks.is_main:
                        atomic_write_text(paths.run_json, json.dumps(info, indent=2))
                    raise

        g = state.gaussians().detach()
        distill = None
        if blocks and config.mode == "backproject":  # the solve's start alone: featgs.train.backproject
            from featgs.train.backproject import backproject_blocks

            result = backproject_blocks(g, cams, names, blocks, config.solve, config.feature_dim, progress, ranks)
            g = g.with_features(result.features, result.decoder)
            distill = result.stats
        if blocks and config.mode == "solve":
            result = solve_blocks(g, cams, names, blocks, config.solve, config.feature_dim, progress, ranks)
            g = g.with_features(result.features, result.decoder)
            distill = result.stats
        info.update(status="done", num_gaussians=len(g), steps=state.step, feature_dim=g.feature_dim,
                    output_feature_dim=g.output_feature_dim, distill=distill)
        if state.agreement is not None:  # every rank's Gaussian count, and how far they were from rank 0's
            info["rank_agreement"] = state.agreement

        def finish() -> None:
            write_cameras(paths.cameras, {"train": cams, "test": [v.camera for v in scene.test]})
            save_ply(paths.ply, g.to("cpu"))
            atomic_write_text(paths.run_json, json.dumps(info, indent=2))

        ranks.on_main(finish)
        return info
    except OSError as e:
        if ranks.is_main:
            _mark_failed(paths, info, e)
        raise


def _resume_checks(data: Path, out: Path, config: TrainConfig) -> tuple:
    """(the config to continue with, the saved run.json) of a run to resume; removes the
    temporaries of a killed write and a torn last log line."""
    # a run killed mid-write left a temporary beside the file it was writing
    remove_stale_temporaries(out, [RUN_FILE, CHECKPOINT_FILE, LOG_FILE, PLY_FILE, CAMERAS_FILE])
    saved = read_run(out)
    if not isinstance(saved.get("data"), str) or not isinstance(saved.get("config"), dict):
        raise FeatgsError(f"{out / RUN_FILE}: no 'data' path or 'config'; expected the run.json `featgs train` writes")
    if Path(saved["data"]).resolve() != data.resolve():
        raise FeatgsError(f"{out}: this run trains on {saved['data']}, not {data}")
    old = TrainConfig.from_dict(saved["config"])
    clash = [k for k in ("mode", "teacher", "feature_dim", "downscale", "strategy", "seed")
             if getattr(old, k) != getattr(config, k)]
    if clash:
        raise FeatgsError(f"{out}: --resume with different {', '.join(clash)} than the run was started with")
    if config.teacher_options == TeacherOptions():  # not given again: the run's own
        config = dataclasses.replace(config, teacher_options=old.teacher_options)
    _truncate_log(out / LOG_FILE, math.inf)  # a bad log stops the resume before any work
    return config, saved


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


def _truncate_log(path: Path, step: float) -> None:
    """Drop log lines past ``step`` (the checkpoint's), so a resumed log reads like an
    uninterrupted one.

    A kill or a full disk in the middle of a write leaves a torn last line: it is dropped with
    a warning. A line before the last that is not a JSON record was not torn by featgs, so it
    is an error naming the file and line, and the log is left as it is.
    """
    if not path.exists():
        return
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise FeatgsError(f"{path}: cannot read the training log ({e.strerror or e.__class__.__name__})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    keep = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        record = _log_record(line)
        if record is None and number == len(lines):
            logger.warning("%s: dropped its last line, %d bytes torn by an interrupted write", path, len(line))
            continue
        if record is None:
            raise FeatgsError(f"{path}: line {number} is not a JSON record with a numeric step; expected one JSON "
                              "object per line as `featgs train` writes them (only the last line can be torn)")
        if record.get("step", 0) <= step:
            keep.append(line)
    with atomic_open(path, "wb") as f:
        f.write(b"".join(line + b"\n" for line in keep))


def _log_record(line: bytes) -> Optional[dict]:
    """One log.jsonl line as a record, or None if it is not one (torn, or not ours)."""
    try:
        record = json.loads(line)  # the log is ours: NaN losses are written as NaN and read back
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict):
        return None
    step = record.get("step", 0)
    return record if isinstance(step, (int, float)) and not isinstance(step, bool) else None


__all__ = ["Interrupted", "TrainState", "train_run"]
