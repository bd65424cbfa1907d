"""``featgs demo``: the whole pipeline on the built-in tabletop scene, in a few minutes on a CPU."""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from featgs.errors import FeatgsError

DESCRIPTION = """\
Make the built-in 'tabletop' scene (posed images, label maps, points), train a feature field
on it (geometry and colour, then label-embedding features by the sparse solve), evaluate it
on the held-out views and write contact sheets. Re-running reuses the generated scene and
replaces the previous demo run.
"""

MARKER = ".featgs-demo"


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="make, train and evaluate the built-in tabletop scene",
                              description=DESCRIPTION, epilog="example:\n  featgs demo --out out/demo",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", metavar="DIR", type=Path, default=Path("out/demo"), help="demo folder (default: %(default)s)")
    p.add_argument("--iters", type=int, default=1000, help="training steps (default: %(default)s)")
    p.add_argument("--size", type=int, default=128, help="image size of the scene (default: %(default)s)")
    p.add_argument("--feature-dim", type=int, default=16, help="stored feature dimension (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo)


def _claim(out: Path) -> None:
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise FeatgsError(f"{out}: exists and is not a featgs demo folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).touch()


def run_demo(args: argparse.Namespace) -> int:
    from featgs.commands.train import format_metrics
    from featgs.data.procedural import MakeConfig, make_scene, resolve_scene
    from featgs.train import TrainConfig
    from featgs.train.evaluate import evaluate_run
    from featgs.train.run import train_run

    if args.iters < 1 or args.size < 16 or args.feature_dim < 1:
        raise FeatgsError("--iters must be >= 1, --size >= 16 and --feature-dim >= 1")
    out = args.out
    _claim(out)
    data, run = out / "tabletop", out / "run"
    progress = not args.quiet
    t0 = time.perf_counter()
    config = MakeConfig(size=args.size, points=20_000)
    stamp = data / ".made-with"
    want = f"{config}"
    if not (stamp.exists() and stamp.read_text() == want):
        path = resolve_scene("tabletop")
        make_scene(path.read_text(encoding="utf-8"), str(path), data, config, force=True)
        stamp.write_text(want)
        print(f"[1/3] made the tabletop scene in {time.perf_counter() - t0:.1f} s -> {data}")
    else:
        print(f"[1/3] reusing the tabletop scene in {data}")
    if run.exists():
        shutil.rmtree(run)
    t1 = time.perf_counter()
    info = train_run(data, run, TrainConfig(iters=args.iters, feature_dim=args.feature_dim), progress=progress)
    print(f"[2/3] trained {info['num_gaussians']} Gaussians with {info['feature_dim']}-dim features "
          f"(decoded to {info['output_feature_dim']}) in {time.perf_counter() - t1:.1f} s -> {run}")
    t2 = time.perf_counter()
    metrics = evaluate_run(run, progress=progress)
    print(f"[3/3] evaluated in {time.perf_counter() - t2:.1f} s")
    print(format_metrics(metrics))
    print(f"total {time.perf_counter() - t0:.1f} s")
    print(f"contact sheets (ground truth | render | features | segmentation): {run / 'eval'}")
    print(f"next: featgs eval {run} --json    featgs render {run / 'point_cloud.ply'} --camera CAM.json --out view.png")
    return 0
