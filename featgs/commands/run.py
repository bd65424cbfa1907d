"""``featgs run``: photos, a video or a dataset -> a trained, evaluated run, in one command."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

from featgs.commands.threads import add_threads_argument, apply_threads
from featgs.configargs import add_config_arguments, config_from_args
from featgs.data.labels import LABELS_FILE
from featgs.errors import FeatgsError

DESCRIPTION = """\
The whole pipeline in one command: structure from motion (as `featgs process`), training (as
`featgs train`), evaluation (as `featgs eval`); then the seconds of each stage and the
commands to look at the result.

INPUT is a folder of photos, a video file, or a dataset featgs already loads (transforms.json,
NeRF-synthetic, COLMAP sparse/: then structure from motion is skipped). The processed dataset
goes to --data (default: RUN-data beside RUN); running again with the same INPUT and --data
reuses it, so a failed or interrupted training does not redo structure from motion.

--teacher auto (the default) picks what works without extra files: 'sam' and/or 'clip' when
their checkpoints are given (--sam-checkpoint, --clip-checkpoint); else 'labels' when the
dataset has label maps (scenes made by `featgs scene make`, or a folder of photos with
label maps, see below); else 'none': geometry and colour only, a run to view, render and
evaluate but with no features to query. Without label maps, text queries on photos and
videos need --teacher clip (with a local open_clip checkpoint); nothing is downloaded.

Label maps for photos: INPUT/labels/<photo stem>.png (single-channel PNGs of label ids, at
the photo's size) and INPUT/labels.json ({"0": "floor", "1": "mug", ...}); `featgs process`
carries them into the dataset (fitting a PINHOLE camera, so that no undistortion moves the
images away from them) and --teacher labels (or auto) trains on them.

Training uses `featgs train`'s defaults (2000 steps at full size): on a CPU, photos train
much faster with --downscale 4 (the dataset ships images_4/) and fewer --iters.
"""

EPILOG = """\
examples:
  featgs run photos/ --out runs/garden --downscale 4
  featgs run walk.mp4 --out runs/walk --fps 3 --downscale 2 --iters 3000
  featgs run photos/ --out runs/garden --teacher clip --clip-model ViT-B-16 \\
      --clip-checkpoint clip/open_clip_model.safetensors --feature-dim 32 --downscale 4
  featgs run scenes/tabletop --out runs/tabletop          # a dataset: no structure from motion
"""

TEACHER_HELP = ("feature teacher(s): 'auto' (default: sam/clip when their checkpoints are given, else labels "
                "when the dataset has label maps, else none), 'labels', 'sam', 'clip', several joined by commas, "
                "or 'none' (geometry and colour only)")


def register(subparsers) -> None:
    from featgs.process import ProcessConfig
    from featgs.teachers.options import TeacherOptions
    from featgs.train.config import TrainConfig
    from featgs.train.solve import SolveConfig

    p = subparsers.add_parser("run", help="photos / video / dataset -> trained and evaluated run, in one command",
                              description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", metavar="INPUT", type=Path, help="folder of photos, video file, or dataset folder")
    p.add_argument("--out", metavar="RUN", type=Path, required=True, help="run folder to create")
    p.add_argument("--data", metavar="DATA", type=Path,
                   help="where structure from motion writes the dataset (default: RUN-data beside RUN)")
    p.add_argument("--teacher", default="auto", help=TEACHER_HELP)
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation on the test views")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads_argument(p, default=None, why="for torch and for structure from motion; on a machine that is busy "
                                               "with other work, fewer threads are faster")
    add_config_arguments(p, ProcessConfig, skip=("threads", "seed"),
                         title="structure from motion options (photos and videos; see featgs process --help)")
    add_config_arguments(p, TrainConfig, skip=("teacher",), title="training options (see featgs train --help)")
    add_config_arguments(p, SolveConfig, title="solve options (mode 'solve')")
    add_config_arguments(p, TeacherOptions, title="teacher options (--teacher sam / clip)")
    p.set_defaults(func=run_run)


def is_dataset(path: Path) -> bool:
    """Whether ``path`` is a dataset folder featgs loads (so structure from motion is skipped)."""
    from featgs.data.load import detect_format

    try:
        detect_format(path)
    except FeatgsError:
        return False
    return True


def _check_run_folder(out: Path) -> None:
    """Refuse a RUN that training would refuse, before the slow stages."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FeatgsError(f"{out}: exists and is not empty; choose a new --out "
                          f"(or continue that training with: featgs train DATA --out {out} --resume)")


def _check_photo_options(source: Path, run: Path, data: Path, teacher: str) -> None:
    """Refuse, before structure from motion, what would fail after it."""
    if data.resolve() == run.resolve():
        raise FeatgsError(f"{data}: --data and --out name the same folder; expected two folders (the dataset, the run)")
    if "labels" in {n.strip() for n in teacher.split(",")} and not _photos_with_labels(source):
        raise FeatgsError(f"--teacher labels: {source} is photos or a video without label maps; expected a dataset "
                          f"with label maps, photos with {source / 'labels'}/<photo stem>.png and "
                          f"{source / LABELS_FILE}, or --teacher auto, none, sam or clip")


def _photos_with_labels(source: Path) -> bool:
    """Whether ``source`` is a folder of photos with label maps (labels/ and labels.json)."""
    return source.is_dir() and (source / "labels").is_dir() and (source / LABELS_FILE).is_file()


def _processed_from(data: Path, source: Path) -> bool:
    """Whether ``data`` is a dataset that `featgs process` made from ``source`` (to reuse it)."""
    from featgs.process import SUMMARY_FILE

    try:
        record = json.loads((data / SUMMARY_FILE).read_text(encoding="utf-8"))
        return Path(record["summary"]["source"]).resolve() == source.resolve() and is_dataset(data)
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _has_label_maps(data: Path, processed: bool) -> bool:
    """Whether the dataset ``data`` has label maps; for one `featgs process` made, whether it
    carried label maps (labels/ and labels.json) over from the photos."""
    from featgs.data import load_scene

    if processed:
        return (data / "labels").is_dir() and (data / LABELS_FILE).is_file()
    scene = load_scene(data, normalize=False)
    return any(v.labels_path is not None for v in scene.views)


def resolve_teacher(spec: str, options, data: Path, processed: bool) -> str:
    """The --teacher value to train with: ``spec``, or for 'auto' the teachers that need no
    file the user did not give (see TEACHER_HELP)."""
    if spec != "auto":
        return spec
    found = [name for name, given in (("sam", options.sam_checkpoint), ("clip", options.clip_checkpoint)) if given]
    if found:
        return ",".join(found)
    if _has_label_maps(data, processed):
        return "labels"
    return "none"


def run_run(args: argparse.Namespace) -> int:
    from featgs.commands.process import print_warnings
    from featgs.commands.train import format_metrics
    from featgs.process import ProcessConfig, format_summary, process_input
    from featgs.teachers.options import TeacherOptions
    from featgs.train.config import TrainConfig
    from featgs.train.solve import SolveConfig

    apply_threads(args)
    progress = not args.quiet
    run, source = args.out, args.input
    _check_run_folder(run)
    train_seed = args.seed if args.seed is not None else TrainConfig.seed
    process_config = config_from_args(ProcessConfig, args, threads=args.threads or 0, seed=train_seed)
    options = config_from_args(TeacherOptions, args)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()

    processed = False
    if is_dataset(source):
        data = source
        print(f"[1/3] {source} is a dataset: no structure from motion")
    else:
        data = args.data or run.with_name(run.name + "-data")
        _check_photo_options(source, run, data, args.teacher)
        if _processed_from(data, source):
            print(f"[1/3] reusing {data}, processed from {source} before")
        else:
            summary = process_input(source, data, process_config, progress=progress)
            for note in summary.notes:
                print(note)
            print_warnings(summary)
            print("[1/3] structure from motion:\n" + "\n".join("      " + line for line in format_summary(summary, str(data)).splitlines()))
        processed = True
    seconds["process"] = time.perf_counter() - t0

    teacher = resolve_teacher(args.teacher, options, data, processed)
    config = config_from_args(TrainConfig, args, solve=config_from_args(SolveConfig, args), teacher_options=options,
                              teacher=teacher)
    t1 = time.perf_counter()
    info = _train(data, run, config, progress)
    if info is None:
        return 130
    seconds["train"] = time.perf_counter() - t1
    print(f"[2/3] trained {info['num_gaussians']} Gaussians, teacher {teacher}, in {seconds['train']:.1f} s -> {run}")

    metrics: Optional[dict] = None
    if not args.no_eval:
        from featgs.train.evaluate import evaluate_run

        t2 = time.perf_counter()
        metrics = evaluate_run(run, progress=progress)
        seconds["eval"] = time.perf_counter() - t2
        print(f"[3/3] evaluated in {seconds['eval']:.1f} s: {format_metrics(metrics)}")
    seconds["total"] = time.perf_counter() - t0
    print("seconds: " + "  ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    print(_next_commands(run, teacher))
    return 0


def _train(data: Path, run: Path, config, progress: bool) -> Optional[dict]:
    from featgs.train.run import train_run
    from featgs.train.trainer import Interrupted

    try:
        return train_run(data, run, config, progress=progress)
    except Interrupted as e:
        print(f"featgs: interrupted at step {e.step}; checkpoint saved. Continue with: "
              f"featgs train {data} --out {run} --resume   then: featgs eval {run}")
        return None


def _next_commands(run: Path, teacher: str) -> str:
    lines = [f"next: featgs view {run}"]
    names = {n.strip() for n in teacher.split(",")}
    if names & {"labels", "clip"}:
        example = _a_label(run) or "red mug"
        lines.append(f"      featgs query {run} \"{example}\"")
    else:
        lines.append("      (text queries need a language teacher: featgs run ... --teacher clip --clip-model NAME "
                     "--clip-checkpoint FILE)")
    return "\n".join(lines)


def _a_label(run: Path) -> Optional[str]:
    """A label name of the run to show in the example query (not floor, wall or ceiling)."""
    from featgs.run import Run

    try:
        names = list(Run.open(run).label_names.values())
    except FeatgsError:
        return None
    room = {"floor", "wall", "ceiling", "background"}
    return next((n for n in names if n not in room), names[0] if names else None)
