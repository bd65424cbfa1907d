"""Scale-out benchmark: 1 vs 2 ranks (torchrun, gloo, one thread each) for the teacher
extraction, the feature solve and geometry training.

    python benchmarks/distributed.py [--size 48] [--views 24] [--steps 500] [--ranks 2]

Makes the built-in tabletop scene at --size px (--views train + 4 test views), then runs,
under ``torchrun --nproc_per_node R`` for R = 1 and R = --ranks, each stage between two
barriers, timed on rank 0:

- extraction: the SAM teacher (the tests' random-weight vit_tiny checkpoint: the real
  encoder's cost per image, 1024 px input) over every view, into a fresh cache; view i on
  rank i % R;
- training: --steps geometry steps (no features). R ranks train on R images per step (one
  each); one process is timed at 1 and at R images per step, so the table shows both the
  same-batch speed-up and the throughput (images/s);
- solve: the labels teacher (384-D, full dimension, no PCA) on the trained geometry, 20 CG
  iterations, W's pixel rows split over the ranks (the labels maps are built untimed first).

One thread per rank: on a machine with C cores, R ranks use R of them. Writes
benchmarks/results/distributed-cpu.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _util import print_table, save_results  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker(args: argparse.Namespace) -> None:
    """One rank (started by torchrun): the stages, timed between barriers; rank 0 writes --result."""
    from featgs.data import load_scene
    from featgs.distributed import process_group
    from featgs.gaussians import load_ply
    from featgs.teachers import TeacherOptions
    from featgs.train import SolveConfig, TrainConfig
    from featgs.train.blocks import build_caches, make_blocks
    from featgs.train.run import train_run
    from featgs.train.solve import solve_features

    torch.set_num_threads(1)
    data, out = Path(args.data), Path(args.out)
    result = {}
    with process_group(torch.device("cpu")) as ranks:
        def timed(name, work):
            ranks.barrier()
            t0 = time.perf_counter()
            value = work()
            ranks.barrier()
            result[name] = time.perf_counter() - t0
            return value

        scene = load_scene(data)
        if not args.train_only:
            sam = make_blocks(scene, ["sam"], TeacherOptions(sam_checkpoint=args.sam).resolved(), 1.0)
            timed("extract", lambda: build_caches(sam, scene.views, progress=False, ranks=ranks))
        config = TrainConfig(iters=args.steps, teacher="none", refine_start=100, refine_every=100,
                             checkpoint_every=10 ** 9, device="cpu")
        info = timed("train", lambda: train_run(data, out, config, progress=False, ranks=ranks,
                                                images_per_rank=args.images_per_rank))
        result["num_gaussians"] = info["num_gaussians"]
        if not args.train_only:
            labels = make_blocks(scene, ["labels"], TeacherOptions(), 1.0)
            build_caches(labels, scene.views, progress=False, ranks=ranks)
            g = load_ply(out / "point_cloud.ply")
            cache = labels[0].cache
            names = [v.name for v in scene.train]
            sizes = [tuple(cache.meta["images"][n]) for n in names]
            maps = [lambda n=n: cache.load(n) for n in names]
            solved = timed("solve", lambda: solve_features(g, [v.camera for v in scene.train], maps, sizes,
                                                           SolveConfig(), progress=False, ranks=ranks))
            result["cg_iterations"] = solved.stats["cg_iterations"]
        if ranks.is_main:
            result.update(world_size=ranks.world_size, images_per_rank=args.images_per_rank)
            Path(args.result).write_text(json.dumps(result))


def launch(nproc: int, data: Path, out: Path, result: Path, sam: Path, steps: int, images_per_rank: int = 1,
           train_only: bool = False) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
           "127.0.0.1", "--master_port", str(_free_port()), str(Path(__file__).resolve()), "--worker",
           "--data", str(data), "--out", str(out), "--result", str(result), "--sam", str(sam),
           "--steps", str(steps), "--images-per-rank", str(images_per_rank)] + (["--train-only"] if train_only else [])
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"torchrun --nproc_per_node {nproc} failed:\n{done.stderr[-4000:]}")
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=48, help="image size of the tabletop scene")
    parser.add_argument("--views", type=int, default=24, help="training views (plus 4 test views)")
    parser.add_argument("--steps", type=int, default=500, help="training steps")
    parser.add_argument("--ranks", type=int, default=2, help="the ranks to compare with one")
    # the worker's own arguments (torchrun starts this file again with --worker)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--data", "--out", "--result", "--sam"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--images-per-rank", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--train-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    from foundation import write_checkpoints

    from featgs.data.procedural import MakeConfig, make_scene, resolve_scene

    R = args.ranks
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sam = write_checkpoints(tmp / "checkpoints").sam
        spec = resolve_scene("tabletop")
        make_scene(spec.read_text(), str(spec), tmp / "scene", MakeConfig(size=args.size, views=args.views, test_views=4))

        def run(tag: str, nproc: int, images_per_rank: int = 1, train_only: bool = False) -> dict:
            data = tmp / f"data-{tag}"
            shutil.copytree(tmp / "scene", data)  # a fresh dataset: no cached maps
            t0 = time.perf_counter()
            r = launch(nproc, data, tmp / f"run-{tag}", tmp / f"{tag}.json", sam, args.steps, images_per_rank,
                       train_only)
            print(f"{tag}: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in r.items()})} "
                  f"({time.perf_counter() - t0:.0f} s with start-up)", flush=True)
            return r

        one = run("1-rank", 1)
        one_batch = run(f"1-rank-{R}-per-step", 1, images_per_rank=R, train_only=True)
        many = run(f"{R}-ranks", R)

    n_views = args.views + 4
    steps = args.steps
    rows = [
        ["extraction", f"SAM vit_tiny, {n_views} views", f"{one['extract']:.1f}", f"{many['extract']:.1f}",
         f"{one['extract'] / many['extract']:.2f}x"],
        ["solve", f"labels 384-D, {args.views} views, 20 CG", f"{one['solve']:.1f}", f"{many['solve']:.1f}",
         f"{one['solve'] / many['solve']:.2f}x"],
        ["training", f"{steps} steps, {R} images/step", f"{one_batch['train']:.1f}", f"{many['train']:.1f}",
         f"{one_batch['train'] / many['train']:.2f}x"],
        ["training", f"{steps} steps, 1 image/step/rank: images/s", f"{steps / one['train']:.1f}",
         f"{R * steps / many['train']:.1f}", f"{R * one['train'] / many['train']:.2f}x"],
    ]
    title = (f"scale-out, tabletop {args.size} px ({args.views} train views); torchrun, gloo, 1 thread per rank; "
             f"{os.cpu_count()} CPU cores (shared); seconds unless stated")
    print(title)
    table = title + "\n" + print_table(["stage", "work", "1 rank", f"{R} ranks", "speed-up"], rows)
    note = (f"1 rank at {R} images/step: {one_batch['num_gaussians']} Gaussians; {R} ranks: {many['num_gaussians']}; "
            f"1 rank at 1 image/step ({one['train']:.1f} s): {one['num_gaussians']}")
    print(note)
    save_results("distributed", {"device_kind": "cpu", "cpu_count": os.cpu_count(), "size": args.size,
                                 "views": args.views, "steps": steps, "ranks": R, "one_rank": one,
                                 "one_rank_same_batch": one_batch, "many_ranks": many}, table + "\n" + note)


if __name__ == "__main__":
    main()
