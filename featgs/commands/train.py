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

PROTOCOL_NAMES = ("lerf-ovs", "3d-ovs", "replica-seg", "selection-3d")  # featgs.protocols.PROTOCOLS

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

Started by torchrun (several processes, on one or more machines), the ranks share the teacher
extraction, the training (data parallel: each rank renders its own image of a step, so the
global batch is one image per rank) and the solve; rank 0 prints and writes RUN. DATA and
RUN must be on a filesystem every machine sees at the same path.
"""

TRAIN_EPILOG = """\
examples:
  featgs train scenes/tabletop --out runs/tabletop
  featgs train scenes/tabletop --out runs/joint --mode joint --feature-dim 16 --iters 3000
  featgs train scenes/tabletop --out runs/tabletop --resume          # after Ctrl-C
  torchrun --nproc_per_node 4 -m featgs train scenes/tabletop --out runs/tabletop   # 4 GPUs: 4 images per step
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
    e.add_argument("--protocol", choices=PROTOCOL_NAMES, default=None,
                   help="score by a benchmark's protocol instead: lerf-ovs (localization accuracy, mIoU of the "
                        "thresholded relevancy, as LangSplat), 3d-ovs (mIoU, accuracy, as 3D-OVS), replica-seg "
                        "(label maps with class names), selection-3d (text selects Gaussians in 3D, rendered "
                        "alone, against the object's mask, as OpenGaussian); writes RUN/metrics-<protocol>.json")
    e.add_argument("--labels", metavar="PATH", type=Path, default=None,
                   help="the protocol's annotations: a LERF-OVS scene label folder (frame JSONs), a 3D-OVS scene "
                        "(segmentations/), or label maps with labels.json (replica-seg; default: the dataset's). "
                        "With RUN a folder of runs and PATH a folder of scenes, every scene present in both")
    e.set_defaults(func=run_eval)


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    solve = config_from_args(SolveConfig, args)
    options = config_from_args(TeacherOptions, args)
    return config_from_args(TrainConfig, args, solve=solve, teacher_options=options)


def run_train(args: argparse.Namespace) -> int:
    from featgs.device import resolve_device
    from featgs.distributed import PeerFailed, process_group
    from featgs.train.run import train_run
    from featgs.train.trainer import Interrupted

    config = train_config_from_args(args)
    apply_threads(args)
    t0 = time.perf_counter()
    # under torchrun: one process per rank, joined here (a plain run: one rank, no process group)
    with process_group(resolve_device(config.device)) as ranks:
        try:
            info = train_run(args.data, args.out, config, resume=args.resume, progress=not args.quiet, ranks=ranks)
        except Interrupted as e:
            if ranks.is_main:
                print(f"featgs: interrupted at step {e.step}; checkpoint saved. Continue with: "
                      f"featgs train {args.data} --out {args.out} --resume")
            return 130
        except PeerFailed:  # the rank that failed says why
            return 2
    if not ranks.is_main:
        return 0
    d = info.get("distill") or {}
    extra = f", features {info['feature_dim']}->{info['output_feature_dim']}-dim" if info.get("teacher") else ""
    on = f" on {ranks.world_size} ranks ({ranks.backend})" if ranks.distributed else ""
    print(f"trained {info['num_gaussians']} Gaussians{on} in {time.perf_counter() - t0:.1f} s{extra} -> {args.out}")
    if d:
        kept = f"top-{d['top_k']} keeps {100 * d['topk_mass_kept']:.1f}% of the blend weight, {d['seconds']:.1f} s"
        if d.get("method") == "backproject":
            print(f"backproject: blend-weighted average of the teacher features, {kept}")
        else:
            print(f"solve: {d['cg_iterations']} CG iterations, residual {d['relative_residual']:.2e}, {kept}")
    return 0


def format_metrics(m: dict) -> str:
    def f(key, fmt):
        return "n/a" if m.get(key) is None else format(m[key], fmt)

    return (f"{m['split']} views: {m['num_views']}  PSNR {f('psnr', '.2f')} dB  SSIM {f('ssim', '.4f')}  "
            f"feature cosine {f('feature_cosine', '.4f')}  mIoU {f('miou', '.4f')}  accuracy {f('accuracy', '.4f')}  "
            f"render {f('fps', '.1f')} FPS")


def run_eval(args: argparse.Namespace) -> int:
    from featgs.train.evaluate import METRIC_KEYS, evaluate_run

    if args.protocol is not None or args.labels is not None:
        return run_protocol(args)
    import torch

    from featgs.distributed import PeerFailed, process_group

    # under torchrun the test views are shared out (gloo: a run's Gaussians are scored on the CPU)
    with process_group(torch.device("cpu")) as ranks:
        try:
            m = evaluate_run(args.run, pictures=not args.no_pictures, progress=not (args.quiet or args.json),
                             ranks=ranks)
        except PeerFailed:  # the rank that failed says why
            return 2
    if not ranks.is_main:
        return 0
    if args.json:
        print(json.dumps({k: m[k] for k in METRIC_KEYS}))
    else:
        print(format_metrics(m))
        if not args.no_pictures:
            print(f"contact sheets: {Path(args.run) / 'eval'}")
    return 0


def run_protocol(args: argparse.Namespace) -> int:
    """``featgs eval RUN --protocol NAME --labels PATH``: a benchmark's own metrics (featgs.protocols)."""
    from featgs.errors import FeatgsError
    from featgs.protocols import evaluate, format_result

    if args.protocol is None:
        raise FeatgsError("--labels needs --protocol: which benchmark's annotations they are "
                          f"({', '.join(PROTOCOL_NAMES)})")
    result = evaluate(args.protocol, args.run, args.labels, progress=not (args.quiet or args.json))
    print(json.dumps(result) if args.json else format_result(result))
    return 0
