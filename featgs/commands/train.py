"""``featgs train`` and ``featgs eval``: fit a feature field to a dataset, and score it."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from featgs.commands.threads import add_threads_argument, apply_threads
from featgs.configargs import add_config_arguments, config_from_args
from featgs.teachers.options import TeacherOptions
from featgs.train.config import TrainConfig
from featgs.train.solve import SolveConfig

TRAIN_DESCRIPTION = """\
Train 3D Gaussians on posed images (geometry and colour, as 3DGS) and distil a teacher's
dense features into them. Mode 'solve' (default) trains the geometry first and then finds
every Gaussian's feature at once by a sparse least-squares solve; mode 'joint' trains
features alongside the geometry with a feature L1 loss, as Feature 3DGS does.

DATA is a dataset folder: transforms.json (nerfstudio / instant-ngp), transforms_train.json
(NeRF-synthetic) or sparse/ (COLMAP); `featgs scene make` writes one.

Teachers: 'labels' (scenes with per-pixel labels), 'sam' (Segment Anything's image embedding,
--sam-checkpoint), 'clip' (dense MaskCLIP features, --clip-model and --clip-checkpoint), or
several at once ('sam,clip'): each owns a block of the rendered channels, in the order given.
Checkpoints are local files; nothing is downloaded.
"""

TRAIN_EPILOG = """\
examples:
  featgs train scenes/tabletop --out runs/tabletop
  featgs train scenes/tabletop --out runs/joint --mode joint --feature-dim 16 --iters 3000
  featgs train scenes/tabletop --out runs/tabletop --resume          # after Ctrl-C
  featgs train scenes/tabletop --out runs/sam-clip --teacher sam,clip --feature-dim 32 \
      --sam-checkpoint sam_vit_b_01ec64.pth --clip-model ViT-B-16 --clip-checkpoint clip/open_clip_model.safetensors
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a feature field on a dataset", description=TRAIN_DESCRIPTION,
                              epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data", metavar="DATA", type=Path, help="dataset folder")
    p.add_argument("--out", metavar="RUN", type=Path, required=True, help="run folder to create (or continue with --resume)")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_threads_argument(p, default=None, why="training usually has the machine to itself; on a machine "
                                                 "that is busy with other work, fewer threads are faster")
    add_config_arguments(p, TrainConfig, title="training options")
    add_config_arguments(p, SolveConfig, title="solve options (mode 'solve')")
    add_config_arguments(p, TeacherOptions, title="teacher options (--teacher sam / clip)")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser("eval", help="evaluate a run on its test views",
                              description="Render the test views of a run and score them: PSNR, SSIM, feature "
                                          "cosine to the teacher, segmentation mIoU and accuracy, render FPS. "
                                          "Writes RUN/metrics.json and a contact sheet per view under RUN/eval/.",
                              epilog="example:\n  featgs eval runs/tabletop --json",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("run", metavar="RUN", type=Path, help="run folder made by `featgs train`")
    e.add_argument("--json", action="store_true", help="print one JSON object with the metrics")
    e.add_argument("--no-pictures", action="store_true", help="skip the contact sheets")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=run_eval)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    solve = config_from_args(SolveConfig, args)
    options = config_from_args(TeacherOptions, args)
    return config_from_args(TrainConfig, args, solve=solve, teacher_options=options)


def run_train(args: argparse.Namespace) -> int:
    from featgs.train.run import train_run
    from featgs.train.trainer import Interrupted

    config = train_config_from_args(args)
    apply_threads(args)
    t0 = time.perf_counter()
    try:
        info = train_run(args.data, args.out, config, resume=args.resume, progress=not args.quiet)
    except Interrupted as e:
        print(f"featgs: interrupted at step {e.step}; checkpoint saved. Continue with: "
              f"featgs train {args.data} --out {args.out} --resume")
        return 130
    d = info.get("distill") or {}
    extra = f", features {info['feature_dim']}->{info['output_feature_dim']}-dim" if info.get("teacher") else ""
    print(f"trained {info['num_gaussians']} Gaussians in {time.perf_counter() - t0:.1f} s{extra} -> {args.out}")
    if d:
        print(f"solve: {d['cg_iterations']} CG iterations, residual {d['relative_residual']:.2e}, "
              f"top-{d['top_k']} keeps {100 * d['topk_mass_kept']:.1f}% of the blend weight, {d['seconds']:.1f} s")
    return 0


def format_metrics(m: dict) -> str:
    def f(key, fmt):
        return "n/a" if m.get(key) is None else format(m[key], fmt)

    return (f"{m['split']} views: {m['num_views']}  PSNR {f('psnr', '.2f')} dB  SSIM {f('ssim', '.4f')}  "
            f"feature cosine {f('feature_cosine', '.4f')}  mIoU {f('miou', '.4f')}  accuracy {f('accuracy', '.4f')}  "
            f"render {f('fps', '.1f')} FPS")


def run_eval(args: argparse.Namespace) -> int:
    from featgs.train.evaluate import METRIC_KEYS, evaluate_run

    m = evaluate_run(args.run, pictures=not args.no_pictures, progress=not (args.quiet or args.json))
    if args.json:
        print(json.dumps({k: m[k] for k in METRIC_KEYS}))
    else:
        print(format_metrics(m))
        if not args.no_pictures:
            print(f"contact sheets: {Path(args.run) / 'eval'}")
    return 0
