"""Distillation benchmark: the sparse solve against joint (Adam) feature training.

    python benchmarks/distill.py [--size 128] [--geometry-iters 1000] [--joint-steps 1500]

One run: make the tabletop scene, train its geometry once (no features), then, on that same
frozen geometry, distil the labels teacher (384-D) into 16-D features + a linear decoder:

- solve: the sparse least-squares solve of featgs (top-K blend weights, conjugate gradients);
- joint: the Feature 3DGS feature objective (L1 between the decoded rendered feature map and
  the teacher's, one random training view per step), optimised by Adam over the features and
  the decoder; evaluated every --eval-every steps (evaluation time is not counted).

Prints the feature-stage wall time, test-view mIoU and feature cosine of each, and how long
joint needed to come within 0.02 mIoU of its own final value and of the solve.
Writes benchmarks/results/distill-<cpu|cuda>.{txt,json}.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import device_name, print_table, save_results  # noqa: E402

from featgs.data import load_scene  # noqa: E402
from featgs.data.procedural import MakeConfig, make_scene, resolve_scene  # noqa: E402
from featgs.gaussians import LinearDecoder  # noqa: E402
from featgs.render import render  # noqa: E402
from featgs.train import SolveConfig, TrainConfig  # noqa: E402
from featgs.train.evaluate import evaluate_gaussians, make_judge  # noqa: E402
from featgs.run import Run  # noqa: E402
from featgs.train.blocks import teacher_for_scene  # noqa: E402
from featgs.device import resolve_device  # noqa: E402
from featgs.train.run import build_cache, train_run  # noqa: E402
from featgs.train.solve import solve_features  # noqa: E402


def joint_features(g, cams, load_map, *, dim: int, steps: int, lr: float, lr_decoder: float, seed: int,
                   eval_every: int, evaluate):
    """Adam on features [N, d] and a decoder d -> D, geometry frozen; returns the curve."""
    gen = torch.Generator().manual_seed(seed)
    D = load_map(0).shape[0]
    dev = g.device
    feats = torch.zeros(len(g), dim, device=dev, requires_grad=True)
    weight = (torch.randn(D, dim, generator=gen) / math.sqrt(dim)).to(dev).requires_grad_(True)
    bias = torch.zeros(D, device=dev, requires_grad=True)
    opt = torch.optim.Adam([{"params": [feats], "lr": lr}, {"params": [weight, bias], "lr": lr_decoder}], eps=1e-15)
    geometry = g.detach()
    curve, trained = [], 0.0
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        i = int(torch.randint(len(cams), (1,), generator=gen))
        out = render(geometry.with_features(feats, LinearDecoder(weight, bias)), cams[i])
        target = load_map(i).to(dev).float()
        loss = (out.features.permute(2, 0, 1) - target).abs().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        trained += time.perf_counter() - t0
        if step % eval_every == 0 or step == steps:
            dec = LinearDecoder(weight.detach(), bias.detach())
            m = evaluate(geometry.with_features(feats.detach().clone(), dec))
            curve.append({"step": step, "seconds": trained, "miou": m["miou"], "feature_cosine": m["feature_cosine"]})
            print(f"  joint step {step}: {trained:.1f} s, mIoU {m['miou']:.4f}, cosine {m['feature_cosine']:.4f}",
                  file=sys.stderr, flush=True)
    return curve


def first_within(curve, target: float):
    for c in curve:
        if c["miou"] >= target:
            return c
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--geometry-iters", type=int, default=1000)
    ap.add_argument("--joint-steps", type=int, default=1500)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--feature-dim", type=int, default=16)
    ap.add_argument("--joint-lr", type=float, default=TrainConfig.lr_features)
    ap.add_argument("--joint-lr-decoder", type=float, default=TrainConfig.lr_decoder)
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where to train and distil")
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="featgs-distill-"))
    data, run = work / "tabletop", work / "geometry"
    if not data.exists():
        path = resolve_scene("tabletop")
        make_scene(path.read_text(), str(path), data, MakeConfig(size=args.size, points=20_000))
    if not (run / "point_cloud.ply").exists():
        t0 = time.perf_counter()
        train_run(data, run, TrainConfig(iters=args.geometry_iters, teacher="none", device=args.device), progress=False)
        print(f"geometry: {args.geometry_iters} steps in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    scene = load_scene(data)
    device = resolve_device(args.device)
    g = Run.open(run).gaussians(device)
    teacher = teacher_for_scene("labels", scene)
    cache = build_cache(scene, teacher, 1.0, progress=False)
    judge = make_judge(scene, "labels", 1.0, scene.test)
    names = [v.name for v in scene.train]
    cams = [v.camera for v in scene.train]

    def evaluate(gs):
        return evaluate_gaussians(gs, scene.test, judge, progress=False)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    res = solve_features(g, cams, [lambda n=n: cache.load(n) for n in names],
                         [tuple(cache.load(n).shape[-2:]) for n in names], SolveConfig(),
                         feature_dim=args.feature_dim, progress=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    solve_s = time.perf_counter() - t0
    ms = evaluate(g.with_features(res.features, res.decoder))
    print(f"  solve: {solve_s:.1f} s, mIoU {ms['miou']:.4f}, cosine {ms['feature_cosine']:.4f}", file=sys.stderr)

    curve = joint_features(g, cams, lambda i: cache.load(names[i]), dim=args.feature_dim, steps=args.joint_steps,
                           lr=args.joint_lr, lr_decoder=args.joint_lr_decoder, seed=0,
                           eval_every=args.eval_every, evaluate=evaluate)
    final = curve[-1]
    near_own = first_within(curve, final["miou"] - 0.02)
    near_solve = first_within(curve, ms["miou"] - 0.02)
    rows = [
        ["solve (ours)", f"{solve_s:.1f}", f"{ms['miou']:.4f}", f"{ms['feature_cosine']:.4f}", "-"],
        [f"joint, {final['step']} Adam steps", f"{final['seconds']:.1f}", f"{final['miou']:.4f}",
         f"{final['feature_cosine']:.4f}", "-"],
        ["joint within 0.02 of its final mIoU", f"{near_own['seconds']:.1f}", f"{near_own['miou']:.4f}",
         f"{near_own['feature_cosine']:.4f}", f"step {near_own['step']}"],
        ["joint within 0.02 of the solve's mIoU",
         "never" if near_solve is None else f"{near_solve['seconds']:.1f}",
         "-" if near_solve is None else f"{near_solve['miou']:.4f}",
         "-" if near_solve is None else f"{near_solve['feature_cosine']:.4f}",
         "-" if near_solve is None else f"step {near_solve['step']}"],
    ]
    header = (f"distillation on tabletop {args.size}^2, {len(g)} Gaussians, {len(cams)} train / {len(scene.test)} test "
              f"views, labels teacher 384-D -> {args.feature_dim}-D + decoder; {device_name(device)}")
    print(header)
    table = print_table(["method", "feature-stage s", "test mIoU", "feature cosine", "note"], rows)
    verdict = (f"solve mIoU - joint final mIoU = {ms['miou'] - final['miou']:+.4f}; "
               f"joint time / solve time = {final['seconds'] / solve_s:.1f}x "
               f"(to its own plateau: {near_own['seconds'] / solve_s:.1f}x)")
    print(verdict)
    save_results("distill", {"device_kind": device.type, "device": device_name(device), "size": args.size,
                             "num_gaussians": len(g), "feature_dim": args.feature_dim, "solve_seconds": solve_s,
                             "solve": {k: ms[k] for k in ("miou", "feature_cosine", "accuracy")},
                             "solve_stats": res.stats, "joint_curve": curve, "verdict": verdict},
                 header + "\n" + table + "\n" + verdict)


if __name__ == "__main__":
    main()
