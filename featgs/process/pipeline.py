"""``process_input``: photos or a video -> a posed COLMAP dataset, stage by stage.

Stages (each timed, each with a progress bar): inputs (:mod:`.inputs`), features, matching
and mapping (:mod:`.sfm`), undistort (:mod:`.undistort`), pyramid (:mod:`.pyramid`).

Nothing is half-written: everything, scratch files included, goes into a hidden folder
beside ``out`` (``.NAME.processing-XXXX``), which is renamed to ``out`` at the very end, or
removed on any error or Ctrl-C. A process killed outright (``kill -9``, power loss) cannot
remove it; the folder names its owner (``owner``: host and process id), and the next run for
the same ``out`` removes the folders of owners on this host that no longer run. The dataset
folder holds::

    images/            the registered images, undistorted (PINHOLE), at most --max-size px
    images_2/ _4/ _8/  the same at 1/2, 1/4, 1/8 size (featgs train --downscale 2|4|8 reads them)
    sparse/0/          the COLMAP model: cameras, images, points3D, rigs, frames (.bin)
    labels/ labels.json  only when INPUT has label maps (see :mod:`.inputs`): the label map of
                       each registered image, ``labels/<image stem>.png``, at the photo's size
                       (the loader resizes it, nearest, to the camera), and the label names
    process.json       the summary (ProcessSummary) and the options used
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

from featgs import __version__
from featgs.atomic import atomic_write_text
from featgs.data.labels import LABELS_FILE
from featgs.errors import FeatgsError
from featgs.process import sfm
from featgs.process.config import ProcessConfig
from featgs.process.inputs import LABELS_FOLDER, stage_inputs
from featgs.process.pyramid import write_pyramid
from featgs.process.summary import MIN_REGISTERED_FRACTION, ProcessSummary, names_shown, registration_warning
from featgs.process.undistort import needs_undistortion, write_dataset

SUMMARY_FILE = "process.json"


def check_out(source: Path, out: Path, *, force: bool) -> None:
    """Refuse an ``out`` that cannot become the dataset folder, before any work is done."""
    if out.exists() and not out.is_dir():
        raise FeatgsError(f"{out}: exists and is not a folder; expected --out to name a folder to create")
    try:
        src, dst = source.resolve(), out.resolve()
    except OSError as e:
        raise FeatgsError(f"{out}: cannot resolve the path ({e.strerror or e.__class__.__name__})") from None
    if dst == src or dst in src.parents:
        raise FeatgsError(f"{out}: holds the input {source}; expected --out to name another folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FeatgsError(f"{out}: folder exists and is not empty; choose another --out or pass --force")
    for parent in out.parents:  # the nearest existing folder above must take a new entry
        if parent.exists():
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise FeatgsError(f"{out}: cannot create it, {parent} is not a writable folder")
            break


def _missing_folders(out: Path) -> list[Path]:
    """The folders above ``out`` that do not exist yet, innermost first."""
    missing = []
    for p in out.parents:
        if p.exists() or p.is_symlink():
            break
        missing.append(p)
    return missing


def process_input(source: str | os.PathLike, out: str | os.PathLike, config: ProcessConfig = ProcessConfig(), *,
                  force: bool = False, progress: bool = True) -> ProcessSummary:
    """Run structure from motion on ``source`` (a folder of photos or a video) and write the
    dataset folder ``out`` (module docstring). Returns the summary (also in ``out/process.json``).

    Raises:
        FeatgsError: bad input (see :func:`featgs.process.inputs.stage_inputs`), no
            reconstruction, or one that registers fewer than half the images; ``out`` is then
            left as it was.
    """
    source, out = Path(source), Path(out)
    check_out(source, out, force=force)
    made = _missing_folders(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_scratch(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.processing-", dir=out.parent))
    try:
        (tmp / OWNER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        summary = _process(source, tmp, config, progress)
        _replace(tmp / "dataset", out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in made:  # leave no trace of this run
            try:
                folder.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    return summary


OWNER = "owner"  # in a scratch folder: "<host> <pid>" of the process that made it


def _remove_abandoned_scratch(out: Path) -> None:
    """Remove the scratch folders beside ``out`` left by runs on this host that were killed
    (their process is gone); a live run's, another host's or an unreadable one's stay."""
    host = socket.gethostname()
    for folder in out.parent.glob(f".{out.name}.processing-*"):
        try:
            owner_host, pid = (folder / OWNER).read_text().split()
            pid = int(pid)
        except (OSError, ValueError):
            continue
        if owner_host == host and pid != os.getpid() and not _running(pid):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        pass
    return True


def _process(source: Path, tmp: Path, config: ProcessConfig, progress: bool) -> ProcessSummary:
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    clock = [start]

    def lap(stage: str) -> None:
        now = time.perf_counter()
        seconds[stage] = now - clock[0]
        clock[0] = now

    config.resolve_matcher(0, video=False)  # a bad --vocab-tree fails now, not after reading every photo
    staged_dir = tmp / "work" / "input"
    staged_dir.mkdir(parents=True)
    staged = stage_inputs(source, staged_dir, config, progress=progress)
    names = staged.names
    # Label maps cannot be undistorted with the images: fit a pinhole camera ('auto').
    config = replace(config, camera_model=config.resolve_camera_model(labels=bool(staged.labels)))
    matcher = config.resolve_matcher(len(names), staged.video)
    lap("inputs")

    database = tmp / "work" / "database.db"
    with sfm.colmap_log_silenced():
        sfm.extract_features(database, staged_dir, names, one_camera=_one_camera(config, staged),
                             config=config, progress=progress)
        lap("features")
        sfm.match_features(database, matcher, config=config, progress=progress)
        lap("matching")
        models = sfm.map_images(database, staged_dir, tmp / "work" / "models", len(names), config=config,
                                progress=progress)
        lap("mapping")
        if not models:
            raise FeatgsError(_no_model_message(source, database, len(names)))
        best = models[0]
        registered = sfm.registered_names(best)
        if len(registered) < MIN_REGISTERED_FRACTION * len(names):
            raise FeatgsError(
                f"{source}: structure from motion registered only {len(registered)} of {len(names)} images "
                f"({100 * len(registered) / len(names):.0f}%, at least {100 * MIN_REGISTERED_FRACTION:.0f}% needed)"
                f"{_more_models(models)}; expected overlapping views of a static, textured scene"
                + ("" if matcher == "exhaustive" else " (try --matcher exhaustive)"))
        if staged.labels and needs_undistortion(best):
            raise FeatgsError(f"{source}: the label maps cannot follow the undistortion that camera model "
                              f"{config.camera_model} needs; expected --camera-model auto, PINHOLE or SIMPLE_PINHOLE "
                              "with label maps")
        dataset = tmp / "dataset"
        undistorted = write_dataset(best, staged_dir, dataset, tmp / "work", max_size=config.max_size,
                                    threads=config.num_threads(), progress=progress)
        if staged.labels:
            _copy_label_maps(staged, registered, dataset)
        lap("undistort")
    write_pyramid(dataset, threads=config.num_threads(), progress=progress)
    lap("pyramid")
    seconds["total"] = time.perf_counter() - start

    posed = set(registered)
    left_out = [n for n in names if n not in posed]
    warning = registration_warning(len(names), len(registered), left_out)
    first = best.images[best.reg_image_ids()[0]]
    cam = best.cameras[first.camera_id]
    summary = ProcessSummary(
        source=str(source), kind="video" if staged.video else "photos", given=len(names), registered=len(registered),
        left_out=left_out, models=len(models), matcher=matcher, cameras=best.num_cameras(),
        camera_model=config.camera_model, undistorted=undistorted,
        mean_reprojection_error=sfm.mean_reprojection_error(best), points=best.num_points3D(),
        image_size=_image_size(dataset / "images" / first.name, cam), seconds=seconds, notes=list(staged.notes),
        warnings=[w for w in [warning] if w], labels=len(registered) if staged.labels else 0)
    record = {"featgs_process": 1, "featgs_version": __version__, "summary": summary.to_dict(), "config": asdict(config),
              "sources": {im.name: im.source for im in staged.images}}
    atomic_write_text(dataset / SUMMARY_FILE, json.dumps(record, indent=2) + "\n")
    return summary


def _copy_label_maps(staged, registered: list[str], dataset: Path) -> None:
    """``dataset/labels/<image stem>.png`` for each registered image, and ``labels.json``."""
    folder = dataset / LABELS_FOLDER
    folder.mkdir()
    for name in registered:
        shutil.copyfile(staged.labels[name], (folder / name).with_suffix(".png"))
    shutil.copyfile(staged.label_names, dataset / LABELS_FILE)


def _one_camera(config: ProcessConfig, staged) -> bool:
    if config.camera == "single":
        return True
    if config.camera == "per-image":
        return False
    return staged.one_camera()


def _image_size(path: Path, cam) -> list[int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return list(im.size)
    except OSError:
        return [int(cam.width), int(cam.height)]


def _more_models(models: list) -> str:
    if len(models) < 2:
        return ""
    sizes = ", ".join(str(m.num_reg_images()) for m in models[:5])
    return f"; the images fell into {len(models)} separate models ({sizes} images)"


def _no_model_message(source: Path, database: Path, num_images: int) -> str:
    counts = sfm.keypoint_counts(database)
    few = sorted(n for n, c in counts.items() if c < 100)
    detail = f"; {len(few)} of {num_images} images have under 100 SIFT features ({names_shown(few)})" if few else ""
    return (f"{source}: structure from motion found no reconstruction: the {num_images} images share too few "
            f"matching features{detail}; expected overlapping views of a static, textured scene")


def _replace(dataset: Path, out: Path) -> None:
    """Move the finished ``dataset`` folder to ``out``, replacing an existing ``out`` (empty,
    or allowed by --force, as :func:`check_out` decided)."""
    if out.is_dir():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
        os.replace(dataset, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(dataset, out)
